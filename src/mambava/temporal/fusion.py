"""Audio-visual Mamba-VA, the registered kind `fusion` (also chosen by `modalities: [visual, audio]` with
`kind: mamba_va`).

Input (B, T, input_dim + audio_dim + 1): the visual features, the audio features, and last the audio mask (1 =
the frame has sound, 0 = none; the audio values of a masked frame are ignored, NaN included). `fusion: early`
concatenates [visual, audio * mask, mask] per frame before the one TCN; `fusion: mid` runs the visual TCN and a
causal audio TCN (`audio_tcn_channels`, then a last block as wide as the visual TCN's last) on [audio * mask,
mask], and a per-frame, per-channel sigmoid gate g computed from both and the mask mixes them,
(1 - m g) h_visual + m g h_audio, before the Mamba encoder. Causal throughout, with `init_state`/`step`.
`modality_dropout`: in training, the probability that a window's audio is masked whole (the model learns to do
without it).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from mambava.core.errors import MambavaError
from mambava.temporal.base import TemporalBaseline, paper_mamba_encoder, paper_tcn, regression_head
from mambava.temporal.registry import register_temporal_model
from mambava.temporal.tcn import STEP_PRECISIONS, TCNState

MODALITIES = ("visual", "audio")
FUSIONS = ("early", "mid")
FUSION_FIELDS = (
    ("modalities", list[str], dataclasses.field(default_factory=lambda: ["visual"])),
    ("fusion", str, "early"),
    ("audio_dim", int, 89),  # `extract --audio`'s default sets: 25 eGeMAPS + 64 log-mel
    # the audio TCN's blocks before its last, which is as wide as the visual TCN's last (the gate mixes them)
    ("audio_tcn_channels", list[int], dataclasses.field(default_factory=lambda: [128])),
    ("modality_dropout", float, 0.0),
)
FUSION_KEYS = tuple(name for name, *_ in FUSION_FIELDS)


def check_fusion_keys(c: dict[str, Any]) -> None:
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
        return FusionState(
            self.tcn.fresh(n),
            None if self.audio is None else self.audio.fresh(n),
            [layer.fresh(n) for layer in self.mamba],
            self.frames,
        )

    def extend(self, other: "FusionState") -> "FusionState":
        self.tcn.extend(other.tcn)
        if self.audio is not None:
            other.audio.frames = self.audio.frames = self.tcn.frames
            self.audio.extend(other.audio)
        for layer, new in zip(self.mamba, other.mamba):
            layer.extend(new)
        return self


@register_temporal_model("fusion", fields=FUSION_FIELDS, check=check_fusion_keys)
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
            self.temporal = paper_tcn(c)
            channels = [*c["audio_tcn_channels"], d]
            self.audio_temporal = paper_tcn({**c, "input_dim": self.audio_dim + 1, "tcn_channels": channels})
            self.gate = nn.Linear(2 * d + 1, d)
        else:
            self.temporal = paper_tcn({**c, "input_dim": self.visual_dim + self.audio_dim + 1})
        self.mamba = paper_mamba_encoder(c)
        self.head = regression_head(d, c["head_hidden"], c["n_outputs"])
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
            raise MambavaError(
                f"the fusion model expects {self.width} input columns ({self.visual_dim} visual, "
                f"{self.audio_dim} audio, 1 audio mask), got {tuple(x.shape)}"
            )
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
        if precision not in STEP_PRECISIONS:
            raise MambavaError(f"step precision {precision!r}: expected one of {', '.join(STEP_PRECISIONS)}")
        audio = self.audio_temporal.init_state(batch_size, device, dtype, precision) if self.mid else None
        return FusionState(
            self.temporal.init_state(batch_size, device, dtype, precision),
            audio,
            self.mamba.init_state(batch_size, device, dtype),
        )

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
