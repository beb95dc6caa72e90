"""The registry of temporal models, the paper's and the ablations', selected by `model.kind`:

- `mamba_va`     the paper model (`mambava.temporal.mamba_va.MambaVA`): causal TCN -> Mamba encoder -> head
- `tcn`          TCN only: the same TCN -> the same head (no Mamba)
- `mamba`        Mamba only: Linear(input_dim, d_model) -> the same Mamba encoder -> head (no TCN)
- `mlp`          frame-wise MLP: one frame at a time, Linear/PReLU/Dropout layers as wide as the TCN's
                 channels -> head; no temporal context at all
- `transformer`  the same TCN -> a Transformer encoder of about the Mamba encoder's size in place of Mamba
                 (per-frame normalisation, sinusoidal positions, `transformer_layers` post-norm layers of
                 `transformer_heads` heads and `transformer_ff` feed-forward width, final Linear) -> head.
                 Causal attention by default (`transformer_causal`), like the causal TCN and Mamba, so a frame
                 never sees the future and padding at a window's end changes nothing. With the defaults (2
                 layers, 4 heads, ff 320) it has 923,008 parameters against the Mamba encoder's 919,296.
- `fusion`       audio-visual Mamba-VA (`FusionMambaVA`), also chosen by `modalities: [visual, audio]` with
                 `kind: mamba_va`. Input (B, T, input_dim + audio_dim + 1): the visual features, the audio
                 features, and last the audio mask (1 = the frame has sound, 0 = none; the audio values of a
                 masked frame are ignored, NaN included). `fusion: early` concatenates [visual, audio * mask,
                 mask] per frame before the one TCN; `fusion: mid` runs the visual TCN and a causal audio TCN
                 (`audio_tcn_channels`, then a last block as wide as the visual TCN's last) on [audio * mask, mask], and a per-frame, per-channel sigmoid gate g
                 computed from both and the mask mixes them, (1 - m g) h_visual + m g h_audio, before the Mamba
                 encoder. Causal throughout, with `init_state`/`step`. `modality_dropout`: in training, the
                 probability that a window's audio is masked whole (the model learns to do without it).

All but `fusion` take (B, T, input_dim) and return (B, T, n_outputs). The configuration is one flat dict: `kind`,
the fields of `MambaVAConfig`, the `transformer_*` keys and the fusion keys; its schema is `ModelConfig` (OmegaConf, like the rest of
a training config), its defaults `default_model_config`.

Files: `save_temporal_model(model, path)` writes safetensors with the kind and config in its metadata (the
paper model through `MambaVA.save`). `load_temporal_model(path)` is the one loader of a checkpoint file: ours
(any kind), a run's Lightning checkpoint or the authors' .pth, as a `LoadedModel` (the model in eval mode and
what it was trained on). What predict and evaluate both need of a model lives here too (`model_input_dim`,
`check_finite`), below both.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from mambava.core import config as schema
from mambava.core.errors import MambavaError
from mambava.temporal.mamba_va import CHECKPOINT_FORMAT, MambaVA, MambaVAConfig, is_safetensors
from mambava.temporal.tcn import TCNState

KINDS = ("mamba_va", "tcn", "mamba", "mlp", "transformer", "fusion")
MODALITIES = ("visual", "audio")
FUSIONS = ("early", "mid")
FUSION_KEYS = ("modalities", "fusion", "audio_dim", "audio_tcn_channels", "modality_dropout")
BASELINE_DEFAULTS: dict[str, Any] = {
    "transformer_layers": 2,
    "transformer_heads": 4,
    "transformer_ff": 320,
    "transformer_dropout": 0.1,
    "transformer_causal": True,
}


def _model_schema() -> type:
    """The `model:` section's schema for OmegaConf (`mambava.core.config`): `kind`, every `MambaVAConfig` field with
    its type and default (its tuple of channels as a list), and the `transformer_*` keys typed by their defaults.
    Built from MambaVAConfig, so the two never differ."""
    hints = typing.get_type_hints(MambaVAConfig)
    fields: list[tuple] = [("kind", str, dataclasses.field(default="mamba_va"))]
    for f in dataclasses.fields(MambaVAConfig):
        kind, default = hints[f.name], f.default
        if typing.get_origin(kind) is tuple:
            kind, default = list[int], dataclasses.field(default_factory=lambda d=default: list(d))
        elif isinstance(kind, types.UnionType):
            kind = typing.Union[typing.get_args(kind)]  # (OmegaConf reads typing.Union, not `int | str`)
        fields.append((f.name, kind, default))
    fields += [(key, type(value), value) for key, value in BASELINE_DEFAULTS.items()]
    fusion_fields = [
        ("modalities", list[str], dataclasses.field(default_factory=lambda: ["visual"])),
        ("fusion", str, "early"),
        ("audio_dim", int, 89),  # `extract --audio`'s default sets: 25 eGeMAPS + 64 log-mel
        # the audio TCN's blocks before its last, which is as wide as the visual TCN's last (the gate mixes them)
        ("audio_tcn_channels", list[int], dataclasses.field(default_factory=lambda: [128])),
        ("modality_dropout", float, 0.0),
    ]
    assert tuple(name for name, *_ in fusion_fields) == FUSION_KEYS
    fields += fusion_fields
    return dataclasses.make_dataclass("ModelConfig", fields)


ModelConfig = _model_schema()


def default_model_config(kind: str = "mamba_va") -> dict[str, Any]:
    """Every key of a temporal model config with its default (the paper's sizes)."""
    return {**schema.to_dict(schema.structured(ModelConfig)), "kind": kind}


def resolve_model_config(values: Mapping[str, Any] | None) -> dict[str, Any]:
    """`values` over the defaults, typed by `ModelConfig` through OmegaConf like the rest of a config;
    MambavaError naming an unknown key, a wrong type or an unknown kind."""
    values = dict(values or {})
    kind = values.get("kind", "mamba_va")
    if kind not in KINDS:
        raise MambavaError(f"key 'model.kind' must be one of {', '.join(KINDS)}, got {kind!r}")
    resolved = schema.to_dict(schema.merge(schema.structured(ModelConfig), values, "model"))
    if resolved["dt_rank"] != "auto" and not isinstance(resolved["dt_rank"], int):
        raise MambavaError(f"key 'model.dt_rank' must be int or 'auto', got {resolved['dt_rank']!r}")
    _check_fusion_keys(resolved)
    return resolved


def _check_fusion_keys(c: dict[str, Any]) -> None:
    """The modality keys: `[visual, audio]` selects the fusion model (from `mamba_va`, the default kind)."""
    modalities = list(c["modalities"])
    if modalities not in (["visual"], ["visual", "audio"]):
        raise MambavaError(f"key 'model.modalities' must be [visual] or [visual, audio], got {modalities}")
    if modalities == ["visual", "audio"] and c["kind"] == "mamba_va":
        c["kind"] = "fusion"
    if c["kind"] == "fusion":
        c["modalities"] = ["visual", "audio"]
    elif "audio" in modalities:
        raise MambavaError(f"key 'model.modalities': kind {c['kind']!r} takes visual features only")
    if c["fusion"] not in FUSIONS:
        raise MambavaError(f"key 'model.fusion' must be one of {', '.join(FUSIONS)}, got {c['fusion']!r}")
    if c["audio_dim"] <= 0:
        raise MambavaError(f"key 'model.audio_dim' must be positive, got {c['audio_dim']}")
    if not 0.0 <= c["modality_dropout"] < 1.0:
        raise MambavaError(f"key 'model.modality_dropout' must be in [0, 1), got {c['modality_dropout']}")
    channels = list(c["audio_tcn_channels"])
    if channels and min(channels) <= 0:
        raise MambavaError(f"key 'model.audio_tcn_channels' must be positive channel counts, got {channels}")


def _mamba_va_config(cfg: Mapping[str, Any]):
    fields = MambaVAConfig().to_dict()
    return MambaVAConfig.from_dict({k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in fields})


def _head(d_in: int, hidden: int, n_outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, n_outputs))


def _tcn(c: Mapping[str, Any]) -> nn.Module:
    """The paper model's TCN, built as MambaVA builds it (same init choice)."""
    from mambava.temporal.tcn import TCN

    init = "reference" if c["init"] == "reference" else "normal"
    return TCN(c["input_dim"], tuple(c["tcn_channels"]), c["kernel_size"], c["dropout"], init=init)


def _mamba_encoder(c: Mapping[str, Any]) -> nn.Module:
    """The paper model's Mamba encoder, built as MambaVA builds it."""
    from mambava.temporal.mamba import MambaEncoder

    dt_rank = math.ceil(c["d_model"] / 16) if c["dt_rank"] == "auto" else c["dt_rank"]
    init = "reference" if c["init"] == "reference" else "mamba"
    return MambaEncoder(c["d_model"], c["n_layers"], c["d_state"], c["d_conv"], c["expand"], dt_rank, c["scan"], init=init)


class TemporalBaseline(nn.Module):
    """Common part of the ablation models: the kind, the config dict and `save`."""

    kind = ""

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__()
        self.config = resolve_model_config({**cfg, "kind": self.kind})

    def save(self, path: str | os.PathLike) -> Path:
        return save_temporal_model(self, path)


class TCNOnly(TemporalBaseline):
    """TCN -> head: the paper model without its Mamba encoder."""

    kind = "tcn"

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        c = self.config
        self.temporal = _tcn(c)
        self.head = _head(c["tcn_channels"][-1], c["head_hidden"], c["n_outputs"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.temporal(x))


class MambaOnly(TemporalBaseline):
    """Linear(input_dim, d_model) -> Mamba encoder -> head: the paper model without its TCN."""

    kind = "mamba"

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        c = self.config
        self.proj = nn.Linear(c["input_dim"], c["d_model"])
        self.drop = nn.Dropout(c["dropout"])
        self.mamba = _mamba_encoder(c)
        self.head = _head(c["d_model"], c["head_hidden"], c["n_outputs"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mamba(self.drop(self.proj(x))))


class FrameMLP(TemporalBaseline):
    """Each frame on its own: Linear -> PReLU -> Dropout per TCN width, then the head."""

    kind = "mlp"

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        c = self.config
        layers: list[nn.Module] = []
        width = c["input_dim"]
        for channels in c["tcn_channels"]:
            layers += [nn.Linear(width, channels), nn.PReLU(), nn.Dropout(c["dropout"])]
            width = channels
        self.mlp = nn.Sequential(*layers)
        self.head = _head(width, c["head_hidden"], c["n_outputs"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mlp(x))


def sinusoidal_positions(length: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(length, dim) sine/cosine position codes (Vaswani et al.), computed on the fly (no buffer)."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    codes = torch.zeros(length, dim, device=device, dtype=torch.float32)
    codes[:, 0::2] = torch.sin(position * frequency)
    codes[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return codes.to(dtype)


class TransformerEncoder(nn.Module):
    """In place of the Mamba encoder: per-frame normalisation, positions, post-norm Transformer layers, Linear."""

    def __init__(self, d_model: int, n_layers: int, n_heads: int, d_ff: int, dropout: float, causal: bool):
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, d_ff, dropout, batch_first=True, norm_first=False, activation="gelu"
        )
        self.layers = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.proj = nn.Linear(d_model, d_model)
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        x = nn.functional.layer_norm(x, x.shape[-1:])
        x = x + sinusoidal_positions(t, x.shape[-1], x.device, x.dtype)
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=x.device) if self.causal else None
        return self.proj(self.layers(x, mask=mask, is_causal=self.causal))


class TCNTransformer(TemporalBaseline):
    """TCN -> Transformer encoder -> head: the paper model with attention in place of Mamba."""

    kind = "transformer"

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        c = self.config
        self.temporal = _tcn(c)
        last = c["tcn_channels"][-1]
        self.adapt = nn.Identity() if last == c["d_model"] else nn.Linear(last, c["d_model"])
        self.encoder = TransformerEncoder(
            c["d_model"], c["transformer_layers"], c["transformer_heads"], c["transformer_ff"],
            c["transformer_dropout"], c["transformer_causal"],
        )
        self.head = _head(c["d_model"], c["head_hidden"], c["n_outputs"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.adapt(self.temporal(x))))


@dataclass
class FusionState:
    """Streaming state of `FusionMambaVA`: the (visual or early) TCN's, the audio TCN's (mid fusion) and the
    Mamba layers'. The audio TCN steps at the visual TCN's position (`tcn.frames`), so the rows API (`keep`,
    `join`, `fresh`, `extend`) and `mambava.inference.stream.StreamBatch` treat it as one TCN."""

    tcn: TCNState
    audio: TCNState | None
    mamba: list
    frames: int = 0

    @property
    def batch_size(self) -> int:
        return self.tcn.batch_size

    def keep(self, rows) -> "FusionState":
        rows = list(rows)
        for part in (self.tcn, self.audio, *self.mamba):
            if part is not None:
                part.keep(rows)
        return self

    def join(self, n: int = 1) -> "FusionState":
        return self.extend(self.fresh(n))

    def fresh(self, n: int) -> "FusionState":
        return FusionState(self.tcn.fresh(n), None if self.audio is None else self.audio.fresh(n),
                           [layer.fresh(n) for layer in self.mamba], self.frames)

    def extend(self, other: "FusionState") -> "FusionState":
        self.tcn.extend(other.tcn)
        if self.audio is not None:
            other.audio.frames = self.audio.frames = self.tcn.frames
            self.audio.extend(other.audio)
        for layer, new in zip(self.mamba, other.mamba):
            layer.extend(new)
        return self


class FusionMambaVA(TemporalBaseline):
    """Audio-visual Mamba-VA (the module docstring's `fusion`): (B, T, input_dim + audio_dim + 1) -> (B, T, 2).
    Submodules: `temporal` (the TCN of the visual or, early, the joined features), `audio_temporal` and `gate`
    (mid), `mamba`, `head`. Buffers `audio_mean`, `audio_std`: the audio columns are z-scored with them inside
    the model (set from the training videos when training starts, kept in the checkpoint), so features from
    `extract --audio`, `predict --audio` and `stream --audio` go in as extracted (eGeMAPS columns span ~0.1 to
    ~3000); a checkpoint without them (made before) loads as mean 0, std 1."""

    kind = "fusion"

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        c = self.config
        self.visual_dim, self.audio_dim = c["input_dim"], c["audio_dim"]
        self.mid = c["fusion"] == "mid"
        d = c["tcn_channels"][-1]
        if self.mid:
            self.temporal = _tcn(c)
            channels = [*c["audio_tcn_channels"], d]
            self.audio_temporal = _tcn({**c, "input_dim": self.audio_dim + 1, "tcn_channels": channels})
            self.gate = nn.Linear(2 * d + 1, d)
        else:
            self.temporal = _tcn({**c, "input_dim": self.visual_dim + self.audio_dim + 1})
        self.mamba = _mamba_encoder(c)
        self.head = _head(d, c["head_hidden"], c["n_outputs"])
        self.register_buffer("audio_mean", torch.zeros(self.audio_dim))
        self.register_buffer("audio_std", torch.ones(self.audio_dim))

    @property
    def audio_normalised(self) -> bool:
        """Whether the audio statistics were set (training sets them once; a resumed or adapted run keeps them)."""
        return bool(self.audio_mean.ne(0).any() or self.audio_std.ne(1).any())

    def set_audio_normalisation(self, mean, std) -> None:
        """The per-column mean and std of the training audio features (a column with std ~0 is only centred)."""
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        std = torch.as_tensor(std, dtype=torch.float32).reshape(-1)
        if mean.numel() != self.audio_dim or std.numel() != self.audio_dim:
            raise MambavaError(f"audio statistics of {mean.numel()} columns for a model of audio_dim {self.audio_dim}")
        self.audio_mean.copy_(mean)
        self.audio_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name, fill in (("audio_mean", 0.0), ("audio_std", 1.0)):  # checkpoints made before the buffers
            state_dict.setdefault(prefix + name, torch.full((self.audio_dim,), fill))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def width(self) -> int:
        """The input's last dimension: visual, audio, mask."""
        return self.visual_dim + self.audio_dim + 1

    def _split(self, x: torch.Tensor):
        """(visual, audio with masked frames zeroed, mask as 0/1) of (..., width) input."""
        if x.shape[-1] != self.width:
            raise MambavaError(f"the fusion model expects {self.width} input columns ({self.visual_dim} visual, "
                               f"{self.audio_dim} audio, 1 audio mask), got {tuple(x.shape)}")
        visual = x[..., : self.visual_dim]
        audio = (x[..., self.visual_dim : -1] - self.audio_mean.to(x.dtype)) / self.audio_std.to(x.dtype)
        mask = (x[..., -1:] > 0.5).to(x.dtype)
        if self.training and self.config["modality_dropout"] > 0:  # a window's audio dropped whole
            keep = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device) >= self.config["modality_dropout"]
            mask = mask * keep.to(x.dtype)
        audio = torch.where(mask > 0, audio, torch.zeros((), dtype=x.dtype, device=x.device))
        return visual, audio, mask

    def _join(self, hv: torch.Tensor, ha: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        g = mask * torch.sigmoid(self.gate(torch.cat([hv, ha, mask], dim=-1)))
        return (1 - g) * hv + g * ha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        visual, audio, mask = self._split(x)
        if self.mid:
            h = self._join(self.temporal(visual), self.audio_temporal(torch.cat([audio, mask], -1)), mask)
        else:
            h = self.temporal(torch.cat([visual, audio, mask], -1))
        return self.head(self.mamba(h))

    def init_state(self, batch_size: int = 1, device=None, dtype=None, precision: str = "fp32") -> FusionState:
        """A fresh streaming state (zero history, as the causal padding); see `MambaVA.init_state`."""
        from mambava.temporal.tcn import STEP_PRECISIONS

        if precision not in STEP_PRECISIONS:
            raise MambavaError(f"step precision {precision!r}: expected one of {', '.join(STEP_PRECISIONS)}")
        audio = self.audio_temporal.init_state(batch_size, device, dtype, precision) if self.mid else None
        return FusionState(self.temporal.init_state(batch_size, device, dtype, precision), audio,
                           self.mamba.init_state(batch_size, device, dtype))

    @torch.no_grad()
    def step(self, x: torch.Tensor, state: FusionState) -> tuple[torch.Tensor, FusionState]:
        """One frame (batch, width) -> ((batch, n_outputs), state): `forward` in eval mode, frame by frame."""
        visual, audio, mask = self._split(x)
        if self.mid:
            state.audio.frames = state.tcn.frames
            ha = self.audio_temporal.step(torch.cat([audio, mask], -1), state.audio)
            h = self._join(self.temporal.step(visual, state.tcn), ha, mask)
        else:
            h = self.temporal.step(torch.cat([visual, audio, mask], -1), state.tcn)
        state.frames += 1
        return self.head(self.mamba.step(h, state.mamba)), state


BASELINES: dict[str, type[TemporalBaseline]] = {
    "tcn": TCNOnly,
    "mamba": MambaOnly,
    "mlp": FrameMLP,
    "transformer": TCNTransformer,
    "fusion": FusionMambaVA,
}


def build_temporal_model(kind: str | Mapping[str, Any], cfg: Mapping[str, Any] | None = None) -> nn.Module:
    """The temporal model of `kind` ("mamba_va", "tcn", "mamba", "mlp", "transformer") with config `cfg` (a
    flat dict, missing keys at their defaults). `build_temporal_model(cfg)` with `cfg["kind"]` works too."""
    if isinstance(kind, Mapping):
        cfg, kind = kind, kind.get("kind", "mamba_va")
    resolved = resolve_model_config({**(cfg or {}), "kind": kind})
    kind = resolved["kind"]  # (`modalities: [visual, audio]` makes mamba_va the fusion model)
    if kind == "mamba_va":
        return MambaVA(_mamba_va_config(resolved))
    return BASELINES[kind](resolved)


def model_kind(model: nn.Module) -> str:
    return getattr(model, "kind", "") or "mamba_va"


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_temporal_model(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write any temporal model to safetensors (atomically) with what is needed to rebuild it."""
    path = Path(path)
    if isinstance(model, TemporalBaseline):
        from safetensors.torch import save_file

        from mambava.core.fileio import atomic_path

        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        metadata = {"format": CHECKPOINT_FORMAT, "kind": model.kind, "config": json.dumps(model.config)}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        return path
    result = model.save(path)
    return Path(result) if result is not None else path


def lightning_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The temporal model's weights from a run's Lightning state_dict (the module holds it as `model`)."""
    return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}


@dataclass
class LoadedModel:
    """A temporal model in eval mode and what it was trained on: `window`/`stride` (the run's, else 300/200),
    `run_config` (the run's config, when the checkpoint has or sits beside one), `config` (the model's) and
    `fps` (the time base of its features, `mambava.data.timebase.model_fps`)."""

    model: torch.nn.Module
    kind: str
    source: str
    window: int = 300
    stride: int = 200
    run_config: dict | None = None

    @property
    def config(self) -> dict[str, Any]:
        config = getattr(self.model, "config", None)
        if isinstance(config, Mapping):
            return dict(config)
        return {"kind": self.kind, **config.to_dict()} if hasattr(config, "to_dict") else {"kind": self.kind}

    @property
    def fps(self) -> float:
        from mambava.data.timebase import model_fps

        return model_fps(self.model)


def load_temporal_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> LoadedModel:
    """The one way to load a temporal model: our safetensors (any kind, `save_temporal_model`/`MambaVA.save`),
    a run's Lightning checkpoint (`checkpoints/best.ckpt`) or the authors' `.pth` state_dict. Bad files are a
    one-line MambavaError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise MambavaError(f"{path}: checkpoint not found")
    try:
        if path.suffix == ".ckpt":
            loaded = _load_lightning(path, map_location)
        elif path.suffix == ".safetensors" or is_safetensors(path):
            model = _load_safetensors(path, map_location)
            loaded = LoadedModel(model, model_kind(model), str(path), run_config=_run_config_near(path))
        else:
                loaded = LoadedModel(MambaVA.load_reference(path, map_location=map_location), "mamba_va", str(path))
    except MambavaError as error:
        lines = str(error).strip().splitlines()
        if len(lines) <= 1:
            raise
        raise MambavaError(lines[0] + (")" if lines[0].count("(") > lines[0].count(")") else "")) from None
    except (RuntimeError, ValueError, KeyError, TypeError, OSError, EOFError, AttributeError) as error:
        # torch.load / load_state_dict errors on a file that is not a temporal model, or one of another config
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        raise MambavaError(f"{path}: cannot load as a temporal model checkpoint ({first})") from None
    data = (loaded.run_config or {}).get("data")
    if isinstance(data, dict):
        loaded.window = int(data.get("window", loaded.window))
        loaded.stride = int(data.get("stride", loaded.stride))
    loaded.model.eval()
    return loaded


def _load_safetensors(path: Path, map_location) -> nn.Module:
    """A model written by `save_temporal_model` (any kind) or `MambaVA.save`."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
    except Exception as error:  # safetensors raises its own error types
        raise MambavaError(f"{path}: not a safetensors file ({error})") from error
    kind = metadata.get("kind")
    if metadata.get("format") == CHECKPOINT_FORMAT and kind in BASELINES:
        from safetensors.torch import load_file

        try:
            cfg = json.loads(metadata["config"])
        except (KeyError, ValueError) as error:
            raise MambavaError(f"{path}: unreadable model config in the metadata ({error})") from error
        model = BASELINES[kind](cfg)
        state = load_file(str(path), device=str(map_location))
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise MambavaError(f"{path}: weights do not match a {kind} model (missing {missing[:3]}, unexpected {unexpected[:3]})")
        return model
    return MambaVA.load(path, map_location)


def _load_lightning(path: Path, map_location) -> LoadedModel:
    """The model of a run's Lightning checkpoint, built from the run config it holds."""
    from mambava.core.errors import torch_load_reason

    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)  # never code from a file
        run_config = checkpoint["hyper_parameters"]["config"]
        state = checkpoint["state_dict"]
    except Exception as error:  # torch raises several types for a bad file
        raise MambavaError(f"{path}: not a mambava Lightning checkpoint ({torch_load_reason(error)})") from None
    try:
        model_cfg = resolve_model_config(run_config.get("model"))
    except MambavaError as error:
        raise MambavaError(f"{path}: {error}") from None
    model = build_temporal_model(model_cfg)
    model.load_state_dict(lightning_state_dict(state))
    return LoadedModel(model, model_cfg["kind"], str(path), run_config=run_config)


def _run_config_near(path: Path) -> dict | None:
    """The config.yaml of the run a checkpoint belongs to (same folder or its parent), if any."""
    import yaml

    for folder in (path.parent, path.parent.parent):
        candidate = folder / "config.yaml"
        if candidate.is_file():
            try:
                data = yaml.safe_load(candidate.read_text())
            except (OSError, yaml.YAMLError):
                return None
            return data if isinstance(data, dict) else None
    return None


def model_input_dim(model) -> int | None:
    """The feature size a temporal model takes (`config.input_dim` or `config["input_dim"]`; the fusion model's
    visual, audio and mask columns together)."""
    if isinstance(model, FusionMambaVA):
        return model.width
    config = getattr(model, "config", None)
    if isinstance(config, Mapping):
        return config.get("input_dim")
    return getattr(config, "input_dim", None)


def check_finite(pred: np.ndarray, model: str, video: str, frames=None, features=None) -> None:
    """MambavaError naming the model, the video and the first frame where the (T, 2) output is NaN/Inf: a
    diverged model's output is refused, never scored as a weak CCC or written as blank cells. `frames` maps
    positions to frame numbers (default: the positions); `features` (T, D) adds the largest input value."""
    bad = ~np.isfinite(pred).all(axis=1)
    if not bad.any():
        return
    i = int(np.argmax(bad))
    frame = int(frames[i]) if frames is not None else i
    hint = "a diverged model, e.g. trained with too high a learning rate"
    if features is not None:
        finite = np.abs(np.asarray(features, np.float64)[np.isfinite(features)])
        if finite.size and finite.max() > 1e6:
            hint = f"the features reach {finite.max():.3g}: not features of the backbone it was trained on?"
    raise MambavaError(
        f"{model}: the model's output is not finite ({pred[i, 0]:g}, {pred[i, 1]:g}) for video {video}, frame "
        f"{frame} ({int(bad.sum())} of {len(bad)} frames); refusing to score it ({hint})"
    )
