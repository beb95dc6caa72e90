"""The kinds of temporal model, by name: a kind registers itself with `@register_temporal_model(NAME)` (as timm's
`@register_model`), with the config keys it adds and a check of them, and `build_temporal_model` makes one
from a flat config dict.

Built in (`mambava.temporal` imports every module that registers one):

- `mamba_va`     the paper model (`mambava.temporal.mamba_va.MambaVA`): causal TCN -> Mamba encoder -> head
- `tcn`, `mamba`, `mlp`, `transformer`: the ablations (`mambava.temporal.baselines`)
- `fusion`       audio-visual Mamba-VA (`mambava.temporal.fusion`), also chosen by `modalities: [visual, audio]`

The configuration is one flat dict: `kind`, every field of `MambaVAConfig`, then each kind's own keys in the
order the kinds registered; its schema is `model_schema()` (OmegaConf, like the rest of a training config),
its defaults `default_model_config`.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from torch import nn

from mambava.core import config as schema
from mambava.core.errors import MambavaError
from mambava.temporal.mamba_va import MambaVA, MambaVAConfig


@dataclass
class TemporalKind:
    """A registered kind: `build(resolved config) -> module`, the config keys it adds (name, type, default or
    dataclasses.field), and `check(config)`, run on every resolved config (it may raise or adjust keys)."""

    name: str
    build: Callable[[dict[str, Any]], nn.Module]
    fields: tuple[tuple, ...] = ()
    check: Callable[[dict[str, Any]], None] | None = None


_KINDS: dict[str, TemporalKind] = {}


def register_temporal_model(name: str, fields: tuple[tuple, ...] = (), check: Callable | None = None):
    """Decorator: register a class (or a function) that takes the resolved config dict and returns the model.

    Args:
        name: the `model.kind` that selects it.
        fields: config keys this kind adds, as (name, type, default) triples.
        check: called with every resolved config (any kind's), to validate this kind's keys.

    Returns:
        The decorator, which returns what it decorates unchanged.
    """

    def register(builder):
        if name in _KINDS and _KINDS[name].build is not builder:
            raise ValueError(f"temporal model kind {name!r} is registered twice")
        _KINDS[name] = TemporalKind(name, builder, tuple(fields), check)
        model_schema.cache_clear()
        return builder

    return register


def temporal_kinds() -> tuple[str, ...]:
    """The registered kinds, in registration order (`mamba_va` first)."""
    return tuple(_KINDS)


@functools.lru_cache(maxsize=None)
def model_schema() -> type:
    """The `model:` section's schema for OmegaConf (`mambava.core.config`): `kind`, every `MambaVAConfig` field
    with its type and default (its tuple of channels as a list), then each registered kind's keys. Built from
    MambaVAConfig, so the two never differ."""
    hints = typing.get_type_hints(MambaVAConfig)
    fields: list[tuple] = [("kind", str, dataclasses.field(default="mamba_va"))]
    for f in dataclasses.fields(MambaVAConfig):
        kind, default = hints[f.name], f.default
        if typing.get_origin(kind) is tuple:
            kind, default = list[int], dataclasses.field(default_factory=lambda d=default: list(d))
        elif isinstance(kind, types.UnionType):
            kind = typing.Union[typing.get_args(kind)]  # (OmegaConf reads typing.Union, not `int | str`)
        fields.append((f.name, kind, default))
    for registered in _KINDS.values():
        fields += list(registered.fields)
    return dataclasses.make_dataclass("ModelConfig", fields)


def default_model_config(kind: str = "mamba_va") -> dict[str, Any]:
    """Every key of a temporal model config with its default (the paper's sizes)."""
    return {**schema.to_dict(schema.structured(model_schema())), "kind": kind}


def resolve_model_config(values: Mapping[str, Any] | None) -> dict[str, Any]:
    """`values` over the defaults, typed by `model_schema()` through OmegaConf like the rest of a config;
    MambavaError naming an unknown key, a wrong type or an unknown kind."""
    values = dict(values or {})
    kind = values.get("kind", "mamba_va")
    if kind not in _KINDS:
        raise MambavaError(f"key 'model.kind' must be one of {', '.join(_KINDS)}, got {kind!r}")
    resolved = schema.to_dict(schema.merge(schema.structured(model_schema()), values, "model"))
    if resolved["dt_rank"] != "auto" and not isinstance(resolved["dt_rank"], int):
        raise MambavaError(f"key 'model.dt_rank' must be int or 'auto', got {resolved['dt_rank']!r}")
    for registered in list(_KINDS.values()):
        if registered.check is not None:
            registered.check(resolved)
    return resolved


def build_temporal_model(kind: str | Mapping[str, Any], cfg: Mapping[str, Any] | None = None) -> nn.Module:
    """The temporal model of `kind` (a registered name) with config `cfg` (a flat dict, missing keys at their
    defaults). `build_temporal_model(cfg)` with `cfg["kind"]` works too."""
    if isinstance(kind, Mapping):
        cfg, kind = kind, kind.get("kind", "mamba_va")
    resolved = resolve_model_config({**(cfg or {}), "kind": kind})
    return _KINDS[resolved["kind"]].build(resolved)  # (a check may have changed the kind: mamba_va -> fusion)


def is_registered_kind(kind: str | None) -> bool:
    return kind in _KINDS


def model_kind(model: nn.Module) -> str:
    return getattr(model, "kind", "") or "mamba_va"


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def mamba_va_config(cfg: Mapping[str, Any]) -> MambaVAConfig:
    """The `MambaVAConfig` of a flat config dict (the keys it has; lists as tuples)."""
    fields = MambaVAConfig().to_dict()
    return MambaVAConfig.from_dict({k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in fields})


@register_temporal_model("mamba_va")
def build_mamba_va(cfg: Mapping[str, Any]) -> MambaVA:
    """The paper model (registered here, beside the schema built from its config)."""
    return MambaVA(mamba_va_config(cfg))
