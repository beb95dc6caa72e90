"""The temporal models.

- `tcn`, `mamba`, `ops/`: the causal TCN, the Mamba layer and encoder, the selective-scan kernels
- `mamba_va`: the paper model (`MambaVA`, `MambaVAConfig`, save/load, the recurrent step)
- `registry`: kinds by name (`@register_temporal_model`), the `model:` config schema, `build_temporal_model`
- `base`, `baselines`, `fusion`: the ablations and audio-visual Mamba-VA, each a registered kind
- `loader`: `save_temporal_model`, and `load_temporal_model`, the one loader of a checkpoint file

Importing this package registers every built-in kind.
"""

from mambava.temporal import baselines, fusion  # noqa: F401  (they register their kinds)
from mambava.temporal.base import TemporalBaseline
from mambava.temporal.fusion import FusionMambaVA, FusionState
from mambava.temporal.loader import (
    LoadedModel,
    check_finite,
    lightning_state_dict,
    load_temporal_model,
    model_input_dim,
    save_temporal_model,
)
from mambava.temporal.mamba_va import MambaVA, MambaVAConfig, MambaVAState
from mambava.temporal.registry import (
    build_temporal_model,
    count_parameters,
    default_model_config,
    model_kind,
    model_schema,
    register_temporal_model,
    resolve_model_config,
    temporal_kinds,
)

__all__ = [
    "FusionMambaVA",
    "FusionState",
    "LoadedModel",
    "MambaVA",
    "MambaVAConfig",
    "MambaVAState",
    "TemporalBaseline",
    "build_temporal_model",
    "check_finite",
    "count_parameters",
    "default_model_config",
    "lightning_state_dict",
    "load_temporal_model",
    "model_input_dim",
    "model_kind",
    "model_schema",
    "register_temporal_model",
    "resolve_model_config",
    "save_temporal_model",
    "temporal_kinds",
]
