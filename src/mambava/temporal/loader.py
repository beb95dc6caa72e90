"""A temporal model's file: `save_temporal_model` writes any kind (`mambava.core.checkpoint`, format
mambava.temporal, with its kind and config), and `load_temporal_model` is the one loader of a checkpoint file:
ours (any kind), a run's Lightning checkpoint or the authors' .pth, as a `LoadedModel` (the model in eval mode
and what it was trained on).

What predict and evaluate both need of a model's input and output lives here too (`model_input_dim`,
`check_finite`), below both: evaluate is training's, predict inference's, and training never imports inference.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import yaml
from torch import nn

from mambava.core.checkpoint import CheckpointError, is_safetensors, load_checkpoint, load_torch_file, read_header
from mambava.core.errors import MambavaError
from mambava.data.timebase import model_fps
from mambava.temporal.mamba_va import TEMPORAL_FORMAT, MambaVA
from mambava.temporal.registry import build_temporal_model, is_registered_kind, model_kind, resolve_model_config


def save_temporal_model(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write any temporal model to safetensors (atomically) with what is needed to rebuild it."""
    result = model.save(path)
    return Path(result) if result is not None else Path(path)


def lightning_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The temporal model's weights from a run's Lightning state_dict (the module holds it as `model`)."""
    return {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}


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
    kind = read_header(path).get("kind")
    if kind is None or kind == "mamba_va":
        return MambaVA.load(path, map_location)
    if not is_registered_kind(kind):
        raise MambavaError(f"{path}: a temporal model of kind {kind!r}, which this version of mambava does not know")
    checkpoint = load_checkpoint(path, TEMPORAL_FORMAT, map_location, what="a temporal model (save_temporal_model)")
    model = build_temporal_model(kind, checkpoint.config)
    missing, unexpected = model.load_state_dict(checkpoint.tensors, strict=False)
    if missing or unexpected:
        raise MambavaError(
            f"{path}: weights do not match a {kind} model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model


def _load_lightning(path: Path, map_location) -> LoadedModel:
    """The model of a run's Lightning checkpoint, built from the run config it holds."""
    try:
        checkpoint = load_torch_file(path, map_location, what="a mambava Lightning checkpoint")
        run_config = checkpoint["hyper_parameters"]["config"]
        state = checkpoint["state_dict"]
    except CheckpointError as error:
        raise MambavaError(f"{path}: not a mambava Lightning checkpoint ({error.reason})") from None
    except (KeyError, TypeError) as error:
        raise MambavaError(f"{path}: not a mambava Lightning checkpoint (no {error})") from None
    try:
        model_cfg = resolve_model_config(run_config.get("model"))
    except MambavaError as error:
        raise MambavaError(f"{path}: {error}") from None
    model = build_temporal_model(model_cfg)
    model.load_state_dict(lightning_state_dict(state))
    return LoadedModel(model, model_cfg["kind"], str(path), run_config=run_config)


def _run_config_near(path: Path) -> dict | None:
    """The config.yaml of the run a checkpoint belongs to (same folder or its parent), if any."""
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
    if hasattr(model, "width"):  # the fusion model: visual, audio and mask columns
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
