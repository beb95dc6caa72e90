"""Mamba-VA, the temporal model: causal TCN -> Mamba encoder -> head, per frame (valence, arousal).

    from mambava.temporal.mamba_va import MambaVA, MambaVAConfig
    model = MambaVA(MambaVAConfig())            # the paper's configuration, 67,155,598 parameters
    y = model(x)                                # x (batch, T, 1024) -> y (batch, T, 2) = (valence, arousal)

Checkpoints:
- ours: `model.save(path)` writes a safetensors file whose metadata holds the config (JSON, with `fps`, the
  frame rate the model's features were made at; files without it load with 30);
  `MambaVA.load(path)` rebuilds the model from it; `model.load_weights(path)` loads into an existing model and
  raises MambavaError naming the file and the differing fields if the file was built for another config.
- the authors' reference code (FreedomPuppy77/Charon): a torch state_dict (.pt/.pth), optionally with the
  `module.` prefix of DDP; `MambaVA.load_reference(path)` (config inferred from the tensor shapes) or
  `model.load_reference_state_dict(state_dict)`. Loaded with weights_only=True; missing/unexpected keys are
  reported by name.
- `mambava.temporal.load_temporal_model(path)` takes either kind (and any model kind, and a run's
  Lightning checkpoint), told apart by content: the one loader of a checkpoint file.

Streaming (eval semantics, no dropout): `state = model.init_state(batch_size)`, then per frame
`y_t, state = model.step(x_t, state)` with x_t (batch, input_dim) -> y_t (batch, n_outputs).
`init_state(precision="bf16" | "int8")` holds the TCN's step weights in fewer bytes (`mambava.temporal.tcn`); the rows
of a
state are independent streams, which `state.join(n)` / `state.keep(rows)` add and drop between steps.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from mambava.core.checkpoint import LoadReport, is_safetensors, load_checkpoint, load_torch_file, save_checkpoint
from mambava.core.errors import MambavaError
from mambava.temporal.mamba import MambaEncoder, MambaLayerState
from mambava.temporal.ops.selective_scan import IMPLEMENTATIONS
from mambava.temporal.tcn import STEP_PRECISIONS, TCN, TCNState

__all__ = ["MambaVA", "MambaVAConfig", "MambaVAState", "LoadReport", "TEMPORAL_FORMAT"]

TEMPORAL_FORMAT = "mambava.temporal"  # core.checkpoint writes "mambava.temporal/1"

# Fields that do not change the weights: a checkpoint loads into a model that differs only in these.
# `fps` is the time base (the rate of the features the model was made for), not a weight shape.
_RUNTIME_FIELDS = ("dropout", "scan", "fps")


@dataclass
class MambaVAConfig:
    """The temporal model's configuration; the defaults are the paper's (and the reference code's)."""

    input_dim: int = 1024
    tcn_channels: tuple[int, ...] = (1024, 768, 512, 256)
    kernel_size: int = 15
    dropout: float = 0.3
    d_model: int = 256
    n_layers: int = 4
    d_state: int = 8
    d_conv: int = 4
    expand: int = 1
    dt_rank: int | str = 16
    head_hidden: int = 128
    n_outputs: int = 2
    scan: str = "auto"  # selective scan: "auto" | "chunked" | "reference" | "cuda"
    init: str = "reference"  # "reference" (the authors' init, quirks included) | "standard" (see docs/model.md)
    # Frame rate of the features the model was trained on (Aff-Wild2: 30): its receptive field and windows are
    # counted in frames of this rate, so `predict`/`stream` put any video on this grid (`mambava.data.timebase`).
    # Checkpoints written before this field load with 30.
    fps: float = 30.0

    def __post_init__(self):
        self.tcn_channels = tuple(int(c) for c in self.tcn_channels)
        problems = []
        if not self.tcn_channels:
            problems.append("tcn_channels is empty")
        elif self.d_model != self.tcn_channels[-1]:
            problems.append(f"d_model ({self.d_model}) must equal the last TCN channel count ({self.tcn_channels[-1]})")
        if self.scan not in IMPLEMENTATIONS:
            problems.append(f"scan {self.scan!r} is not one of {IMPLEMENTATIONS}")
        if self.init not in ("reference", "standard"):
            problems.append(f"init {self.init!r} is not 'reference' or 'standard'")
        if not (self.dt_rank == "auto" or (isinstance(self.dt_rank, int) and self.dt_rank > 0)):
            problems.append(f"dt_rank {self.dt_rank!r} must be a positive integer or 'auto'")
        if isinstance(self.fps, bool) or not isinstance(self.fps, (int, float)) or not (0 < self.fps < math.inf):
            problems.append(f"fps {self.fps!r} must be a positive number of frames per second")
        else:
            self.fps = float(self.fps)
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout {self.dropout} is not in [0, 1)")
        for name in ("input_dim", "kernel_size", "n_layers", "d_state", "d_conv", "expand", "head_hidden", "n_outputs"):
            if int(getattr(self, name)) <= 0:
                problems.append(f"{name} must be positive")
        if problems:
            raise MambavaError("invalid MambaVAConfig: " + "; ".join(problems))

    @property
    def resolved_dt_rank(self) -> int:
        return math.ceil(self.d_model / 16) if self.dt_rank == "auto" else int(self.dt_rank)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["tcn_channels"] = list(self.tcn_channels)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "MambaVAConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise MambavaError(f"unknown MambaVAConfig field(s): {', '.join(unknown)}")
        return cls(**data)

    def architecture(self) -> dict:
        """The fields that decide the weights (all but dropout and scan), dt_rank resolved."""
        out = {k: v for k, v in self.to_dict().items() if k not in _RUNTIME_FIELDS and k != "init"}
        out["dt_rank"] = self.resolved_dt_rank
        return out

    def differences(self, other: "MambaVAConfig") -> list[str]:
        """'field: self vs other' for every architecture field that differs."""
        a, b = self.architecture(), other.architecture()
        return [f"{k}: {a[k]} vs {b[k]}" for k in a if a[k] != b[k]]

    @classmethod
    def from_state_dict(cls, state_dict: dict, **overrides) -> "MambaVAConfig":
        """Infer the architecture from the tensor shapes of a (reference-format or our) state_dict."""
        sd = _normalise_reference_keys(state_dict)[0]
        try:
            channels, i = [], 0
            while f"temporal.network.{i}.conv1.weight_v" in sd:
                channels.append(sd[f"temporal.network.{i}.conv1.weight_v"].shape[0])
                i += 1
            first = sd["temporal.network.0.conv1.weight_v"]
            n_layers = 0
            while f"mamba.mamba.layers.{n_layers}.0.A_log" in sd:
                n_layers += 1
            d_inner, d_state = sd["mamba.mamba.layers.0.0.A_log"].shape
            d_model = sd["mamba.mamba.layers.0.0.in_proj.weight"].shape[1]
            values = dict(
                input_dim=first.shape[1],
                tcn_channels=tuple(channels),
                kernel_size=first.shape[2],
                d_model=d_model,
                n_layers=n_layers,
                d_state=d_state,
                d_conv=sd["mamba.mamba.layers.0.0.conv1d.weight"].shape[2],
                expand=d_inner // d_model,
                dt_rank=sd["mamba.mamba.layers.0.0.dt_proj.weight"].shape[1],
                head_hidden=sd["dual_reg.0.weight"].shape[0],
                n_outputs=sd["dual_reg.2.weight"].shape[0],
            )
        except (KeyError, IndexError) as error:
            raise MambavaError(f"not a Mamba-VA state_dict: no tensor {error}") from None
        values.update(overrides)
        return cls(**values)


@dataclass
class MambaVAState:
    """Streaming state of the whole model (see MambaVA.init_state)."""

    tcn: TCNState
    mamba: list[MambaLayerState]
    frames: int = 0  # steps of the batch (a row that joined later has seen fewer)

    @property
    def batch_size(self) -> int:
        return self.tcn.batch_size

    def keep(self, rows) -> "MambaVAState":
        """Keep only these rows (indices, in the new order): the other streams leave the batch."""
        rows = list(rows)
        self.tcn.keep(rows)
        for layer in self.mamba:
            layer.keep(rows)
        return self

    def join(self, n: int = 1) -> "MambaVAState":
        """Append n fresh streams (zero history, as a new state's) as the last rows; they can join at any frame."""
        return self.extend(self.fresh(n))

    def fresh(self, n: int) -> "MambaVAState":
        """n fresh rows at this state's frame count, sharing its step weights: step them on their own (e.g. with
        `frames` set one back, to take part in the step the batch has just taken), then `extend` the batch."""
        return MambaVAState(tcn=self.tcn.fresh(n), mamba=[layer.fresh(n) for layer in self.mamba], frames=self.frames)

    def rows(self, rows) -> "MambaVAState":
        """A copy of these rows (indices): put it back with `put` to undo a step for them."""
        rows = list(rows)
        return MambaVAState(
            tcn=self.tcn.rows(rows), mamba=[layer.rows(rows) for layer in self.mamba], frames=self.frames
        )

    def put(self, rows, other: "MambaVAState", turn: int = 0) -> "MambaVAState":
        """Write the copy `other` of these rows back, after `turn` steps of the batch that those rows sat out:
        their states are then as if they had not stepped (`mambava.inference.stream.StreamBatch.step_some`)."""
        rows = list(rows)
        self.tcn.put(rows, other.tcn, turn)
        for layer, saved in zip(self.mamba, other.mamba):
            layer.put(rows, saved)
        return self

    def extend(self, other: "MambaVAState") -> "MambaVAState":
        """Append the rows of `other` (from `fresh`, at the same frame count of the TCN's ring buffers)."""
        self.tcn.extend(other.tcn)
        for layer, new in zip(self.mamba, other.mamba):
            layer.extend(new)
        return self


# The reference's TemporalBlock also registers its layers in `net` (a Sequential), so its state_dict holds
# each of them twice: net.0 = conv1, net.2 = relu1, net.4 = conv2, net.6 = relu2.
_NET_ALIASES = {"0": "conv1", "2": "relu1", "4": "conv2", "6": "relu2"}
_NET_KEY = re.compile(r"^(temporal\.network\.\d+\.)net\.(\d+)\.(.+)$")
# torch.nn.utils.parametrizations.weight_norm names g and v differently from the old weight_norm.
_PARAMETRIZED = re.compile(r"^(.+)\.parametrizations\.weight\.original([01])$")


def _normalise_reference_keys(state_dict: dict) -> tuple[dict, list[str]]:
    """Strip `module.`, map parametrization names to weight_g/weight_v, drop TemporalBlock.net.* duplicates."""
    out, aliases = {}, {}
    for key, value in state_dict.items():
        if key.startswith("module."):
            key = key[len("module.") :]
        m = _PARAMETRIZED.match(key)
        if m:
            key = f"{m.group(1)}.weight_{'g' if m.group(2) == '0' else 'v'}"
        m = _NET_KEY.match(key)
        if m and m.group(2) in _NET_ALIASES:
            aliases[f"{m.group(1)}{_NET_ALIASES[m.group(2)]}.{m.group(3)}"] = (key, value)
            continue
        out[key] = value
    ignored = []
    for key, (alias, value) in aliases.items():
        if key not in out:  # only the duplicate is there: use it
            out[key] = value
        else:
            ignored.append(alias)
    return out, ignored


def _read_safetensors(path: Path, device: str):
    checkpoint = load_checkpoint(path, TEMPORAL_FORMAT, device, what="a Mamba-VA checkpoint (written by MambaVA.save)")
    try:
        config = MambaVAConfig.from_dict(checkpoint.config)
    except (ValueError, TypeError) as error:
        raise MambavaError(f"{path}: bad config in the checkpoint metadata ({error})") from None
    return config, checkpoint.tensors


def _read_torch_state_dict(path: Path, map_location) -> dict:
    obj = load_torch_file(path, map_location, what="a torch state_dict")
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model"):
            if wrapper in obj and isinstance(obj[wrapper], dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise MambavaError(f"{path}: does not hold a state_dict (a dict of tensors)")
    return obj


def _check_path(path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise MambavaError(f"{path}: no such checkpoint file")
    return path


class MambaVA(nn.Module):
    """TCN -> Mamba encoder -> head; (batch, T, input_dim) -> (batch, T, n_outputs).

    Submodule names follow the reference (`temporal`, `mamba`, `dual_reg`), so state_dict keys are its keys.
    """

    def __init__(self, config: MambaVAConfig | None = None):
        super().__init__()
        self.config = config = config if config is not None else MambaVAConfig()
        self.temporal = TCN(
            config.input_dim,
            config.tcn_channels,
            config.kernel_size,
            config.dropout,
            init="reference" if config.init == "reference" else "normal",
        )
        self.mamba = MambaEncoder(
            config.d_model,
            config.n_layers,
            config.d_state,
            config.d_conv,
            config.expand,
            config.resolved_dt_rank,
            config.scan,
            init="reference" if config.init == "reference" else "mamba",
        )
        self.dual_reg = nn.Sequential(
            nn.Linear(config.d_model, config.head_hidden), nn.ReLU(), nn.Linear(config.head_hidden, config.n_outputs)
        )

    # ---------------------------------------------------------------------------------------------- compute

    def forward(self, x: torch.Tensor, scan: str | None = None) -> torch.Tensor:
        """x (batch, T, input_dim) -> (batch, T, n_outputs); `scan` overrides config.scan for this call."""
        if x.dim() != 3 or x.shape[-1] != self.config.input_dim:
            raise MambavaError(f"MambaVA expects (batch, T, {self.config.input_dim}) features, got {tuple(x.shape)}")
        h = self.mamba(self.temporal(x), scan)
        with torch.autocast(h.device.type, enabled=False):  # the head in full precision (33k parameters)
            return self.dual_reg(h.to(self.dual_reg[0].weight.dtype))

    def set_scan(self, scan: str) -> "MambaVA":
        """Switch the selective-scan implementation of every layer (and config.scan)."""
        self.mamba.scan = scan
        self.config = dataclasses.replace(self.config, scan=scan)
        return self

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part: temporal (TCN), mamba (encoder), head, total."""
        counts = {
            "temporal": sum(p.numel() for p in self.temporal.parameters()),
            "mamba": sum(p.numel() for p in self.mamba.parameters()),
            "head": sum(p.numel() for p in self.dual_reg.parameters()),
        }
        counts["total"] = sum(counts.values())
        return counts

    # ---------------------------------------------------------------------------------------------- streaming

    def init_state(self, batch_size: int = 1, device=None, dtype=None, precision: str = "fp32") -> MambaVAState:
        """A fresh streaming state (as if preceded by zeros, like the causal padding).

        The TCN's weight-normed kernels are computed here once, so make a new state after changing weights;
        `precision` ("fp32" | "bf16" | "int8" weight-only) is the dtype they are held and read in at each step.
        """
        if precision not in STEP_PRECISIONS:
            raise MambavaError(f"step precision {precision!r}: expected one of {', '.join(STEP_PRECISIONS)}")
        return MambaVAState(
            tcn=self.temporal.init_state(batch_size, device, dtype, precision),
            mamba=self.mamba.init_state(batch_size, device, dtype),
        )

    @torch.no_grad()
    def step(self, x: torch.Tensor, state: MambaVAState) -> tuple[torch.Tensor, MambaVAState]:
        """One frame: x (batch, input_dim) -> (y (batch, n_outputs), state), eval semantics (no dropout).

        The outputs equal those of `model.eval()(x_sequence)` frame by frame; `state` is updated in place.
        """
        h = self.temporal.step(x, state.tcn)
        h = self.mamba.step(h, state.mamba)
        state.frames += 1
        return self.dual_reg(h), state

    # ---------------------------------------------------------------------------------------------- checkpoints

    def save(self, path) -> Path:
        """Write weights + config as safetensors (atomically). Returns the path."""
        return save_checkpoint(path, self.state_dict(), TEMPORAL_FORMAT, self.config.to_dict())

    @classmethod
    def load(cls, path, map_location="cpu", config: MambaVAConfig | None = None) -> "MambaVA":
        """A model from our checkpoint; with `config`, the file must have been built for it (else MambavaError)."""
        path = _check_path(path)
        file_config, tensors = _read_safetensors(path, map_location)
        if config is not None:
            _require_same_architecture(path, file_config, config)
        model = cls(config if config is not None else file_config)
        model._load_tensors(tensors, path, strict=True)
        return model.to(map_location)

    def load_weights(self, path, strict: bool = True) -> LoadReport:
        """Load a checkpoint of either format into this model; it must be for this model's architecture."""
        path = _check_path(path)
        if is_safetensors(path):
            file_config, tensors = _read_safetensors(path, "cpu")
            _require_same_architecture(path, file_config, self.config)
            return self._load_tensors(tensors, path, strict=strict)
        state_dict = _read_torch_state_dict(path, "cpu")
        _require_same_architecture(path, MambaVAConfig.from_state_dict(state_dict), self.config)
        return self.load_reference_state_dict(state_dict, strict=strict, source=path)

    @classmethod
    def load_reference(
        cls, path, config: MambaVAConfig | None = None, strict: bool = True, map_location="cpu"
    ) -> "MambaVA":
        """A model from a state_dict saved by the authors' reference code (torch.save(model.state_dict())).

        The config is inferred from the tensor shapes unless given (then the file must match it).
        """
        path = _check_path(path)
        state_dict = _read_torch_state_dict(path, "cpu")
        inferred = MambaVAConfig.from_state_dict(state_dict)
        if config is not None:
            _require_same_architecture(path, inferred, config)
        model = cls(config if config is not None else inferred)
        model.load_reference_state_dict(state_dict, strict=strict, source=path)
        return model.to(map_location)

    def load_reference_state_dict(self, state_dict: dict, strict: bool = True, source="state_dict") -> LoadReport:
        """Load a reference-format state_dict (`module.` prefix, weight_g/weight_v, net.* duplicates allowed).

        strict=True raises MambavaError naming every missing and unexpected key; strict=False loads what
        matches and returns the report.
        """
        tensors, ignored = _normalise_reference_keys(state_dict)
        report = self._load_tensors(tensors, source, strict)
        report.dropped = ignored
        return report

    def _load_tensors(self, tensors: dict, source, strict: bool) -> LoadReport:
        own = self.state_dict()
        report = LoadReport(
            missing=[k for k in own if k not in tensors], unexpected=[k for k in tensors if k not in own]
        )
        bad_shapes = [
            f"{k} {tuple(tensors[k].shape)} vs model {tuple(own[k].shape)}"
            for k in own
            if k in tensors and tensors[k].shape != own[k].shape
        ]
        if bad_shapes:
            raise MambavaError(f"{source}: tensor shapes differ from the model's: " + "; ".join(bad_shapes))
        if strict and not report.ok:
            raise MambavaError(f"{source}: {report}")
        self.load_state_dict({k: v for k, v in tensors.items() if k in own}, strict=False)
        return report


def _require_same_architecture(path, file_config: MambaVAConfig, config: MambaVAConfig) -> None:
    diffs = file_config.differences(config)
    if diffs:
        raise MambavaError(f"{path}: checkpoint was built for another config (file vs model): " + "; ".join(diffs))
