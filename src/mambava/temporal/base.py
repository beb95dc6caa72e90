"""What every kind other than `mamba_va` is made of: the base class (its kind, its flat config, `save`) and the
paper model's parts built from a flat config, exactly as `MambaVA` builds them (same init choices)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

from torch import nn

from mambava.core.checkpoint import save_checkpoint
from mambava.temporal.mamba import MambaEncoder
from mambava.temporal.mamba_va import TEMPORAL_FORMAT
from mambava.temporal.registry import resolve_model_config
from mambava.temporal.tcn import TCN


class TemporalBaseline(nn.Module):
    """Common part of the registered kinds besides the paper model: `kind`, the resolved config dict and `save`."""

    kind = ""

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__()
        self.config = resolve_model_config({**cfg, "kind": self.kind})

    def save(self, path: str | os.PathLike) -> Path:
        """Write the weights with the kind and config (`mambava.core.checkpoint`, format mambava.temporal)."""
        return save_checkpoint(
            path, {k: v.cpu() for k, v in self.state_dict().items()}, TEMPORAL_FORMAT, self.config, kind=self.kind
        )


def regression_head(d_in: int, hidden: int, n_outputs: int) -> nn.Sequential:
    """Linear -> ReLU -> Linear: the paper's head."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, n_outputs))


def paper_tcn(c: Mapping[str, Any]) -> TCN:
    """The paper model's TCN, built as MambaVA builds it (same init choice)."""
    init = "reference" if c["init"] == "reference" else "normal"
    return TCN(c["input_dim"], tuple(c["tcn_channels"]), c["kernel_size"], c["dropout"], init=init)


def paper_mamba_encoder(c: Mapping[str, Any]) -> MambaEncoder:
    """The paper model's Mamba encoder, built as MambaVA builds it."""
    dt_rank = math.ceil(c["d_model"] / 16) if c["dt_rank"] == "auto" else c["dt_rank"]
    init = "reference" if c["init"] == "reference" else "mamba"
    return MambaEncoder(
        c["d_model"], c["n_layers"], c["d_state"], c["d_conv"], c["expand"], dt_rank, c["scan"], init=init
    )
