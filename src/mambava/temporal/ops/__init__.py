"""Math kernels, apart from the layers that use them (as mamba_ssm keeps ops/ apart from modules/)."""

from mambava.temporal.ops.selective_scan import (
    IMPLEMENTATIONS,
    choose_chunking,
    mamba_ssm_available,
    selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
    selective_state_update,
)

__all__ = [
    "IMPLEMENTATIONS",
    "choose_chunking",
    "mamba_ssm_available",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_ref",
    "selective_state_update",
]
