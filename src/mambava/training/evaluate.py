"""Evaluation the official way (ABAW's: CCC over all frames; the paper §4.3 gives the CCC and P_VA formulas): whole
videos, cut into overlapping windows (w 300, s 200, the authors' code's values; the stitching is ours: the paper
does not say how it scores), run through the temporal model, stitched back to one (valence, arousal) per frame (mean
over overlapping windows); CCC per dimension over all valid frames (label != -5) of all videos concatenated, P_VA =
(CCC_v + CCC_a) / 2, plus the same scores per video.

`protocol="authors"` scores instead as the authors' validation loop does (FreedomPuppy77/Charon,
VA/vaestimation.py:268-324 over the windows of VA/data/dataset.py and preprocess/split_VA_fold.py): see
`authors_windows`. Its numbers and ours are not the same quantity; `mambava cv --both-protocols` prints both.

Checkpoints are loaded by `mambava.temporal.load_temporal_model`: our `model.safetensors` (the paper
model or any baseline), a Lightning checkpoint of a run (`checkpoints/best.ckpt`), or a reference `.pth`.
"""

from __future__ import annotations

import contextlib
import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from mambava.core.errors import MambavaError
from mambava.core.fileio import atomic_open
from mambava.core.metrics import ccc_numpy, va_scores
from mambava.core.progress import track_items
from mambava.core.quantize import check_int8_device
from mambava.core.runtime import resolve_device
from mambava.data.timebase import model_fps, stored_grid
from mambava.data.windows import authors_keep, authors_window_dataset, check_windowing, predict_sequence
from mambava.temporal import LoadedModel, check_finite, load_temporal_model, model_input_dim
from mambava.temporal.tcn import quantize_tcn
from mambava.training.config import TrainConfig
from mambava.training.data import load_fold_data, open_store

# ---------------------------------------------------------------------------------------------------------
# The authors' protocol

PROTOCOLS = ("videos", "authors")


@torch.no_grad()
def evaluate_windows_authors(
    loaded: LoadedModel,
    store,
    names: Sequence[str],
    labels: dict[str, np.ndarray],
    window: int | None = None,
    stride: int | None = None,
    batch_size: int = 16,
    device: str = "auto",
    precision: str = "32",
) -> EvalResult:
    """Score `loaded.model` by the authors' protocol: CCC over the frames of every kept window concatenated
    (a frame in two windows counts twice); `frames` counts those frame instances. Per-video rows score each
    video's kept windows alone."""
    window = window or loaded.window
    stride = stride or loaded.stride
    dev = resolve_device(device)
    model = _runner(loaded.model, dev, precision)
    dataset = authors_window_dataset(store, names, labels, window, stride, batch_size)
    preds: dict[str, list[np.ndarray]] = {n: [] for n in names}
    targets: dict[str, list[np.ndarray]] = {n: [] for n in names}
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if precision == "bf16-mixed" else contextlib.nullcontext()
    for first in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(first, min(first + batch_size, len(dataset)))]
        x = torch.stack([item["x"] for item in items]).to(dev)
        with autocast:
            out = model(x).float().cpu()
        for item, pred in zip(items, out):
            keep = authors_keep(item["y"], item["mask"]).numpy()
            preds[item["name"]].append(pred.numpy()[keep])
            targets[item["name"]].append(item["y"].numpy()[keep])
    rows = []
    for name in names:
        pred = np.concatenate(preds[name]) if preds[name] else np.zeros((0, 2), np.float32)
        target = np.concatenate(targets[name]) if targets[name] else np.zeros((0, 2), np.float32)
        rows.append(_scored_row(name, pred, target, len(target)))  # the kept frames are the valid ones
    pred = np.concatenate([p for n in names for p in preds[n]])
    target = np.concatenate([t for n in names for t in targets[n]])
    v, a = ccc_numpy(pred[:, 0], target[:, 0]), ccc_numpy(pred[:, 1], target[:, 1])
    return EvalResult(v, a, (v + a) / 2, len(target), rows)


# ---------------------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class EvalResult:
    """Scores over all frames concatenated, and one row per video."""

    ccc_valence: float
    ccc_arousal: float
    p_va: float
    frames: int
    per_video: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "ccc_valence": self.ccc_valence,
            "ccc_arousal": self.ccc_arousal,
            "p_va": self.p_va,
            "frames": self.frames,
            "videos": len(self.per_video),
        }


def _scored_row(name: str, pred: np.ndarray, target: np.ndarray, frames: int) -> dict[str, Any]:
    """A per-video row from its valid frames only: CCCs, or None where fewer than 2 frames are valid."""
    row: dict[str, Any] = {"video": name, "frames": frames, "valid_frames": len(target)}
    if len(target) >= 2:
        v, a = ccc_numpy(pred[:, 0], target[:, 0]), ccc_numpy(pred[:, 1], target[:, 1])
        row.update(ccc_valence=v, ccc_arousal=a, p_va=(v + a) / 2)
    else:
        row.update(ccc_valence=None, ccc_arousal=None, p_va=None)
    return row


def video_row(name: str, pred: np.ndarray, target: np.ndarray) -> dict[str, Any]:
    valid = (target != -5).all(1) & np.isfinite(target).all(1)
    return _scored_row(name, pred[valid], target[valid], len(target))


def evaluate_videos(
    loaded: LoadedModel,
    store,
    names: Sequence[str],
    labels: dict[str, np.ndarray],
    window: int | None = None,
    stride: int | None = None,
    batch_size: int = 32,
    device: str = "auto",
    precision: str = "32",
    progress: bool = False,
) -> EvalResult:
    """Score `loaded.model` on whole videos `names` of a feature store against `labels` (aligned (T, 2))."""
    window, stride = check_windowing(
        loaded.window if window is None else window, loaded.stride if stride is None else stride
    )
    dev = resolve_device(device)
    expected = model_input_dim(loaded.model)
    for name in names:
        dim = int(store.meta(name)["dim"])
        if expected is not None and dim != expected:
            raise MambavaError(
                f"{store.root / name}: {dim}-d features, but the model {loaded.source} takes "
                f"{expected}-d (features of another backbone?)"
            )
    model = _runner(loaded.model, dev, precision)
    fps = model_fps(model)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if precision == "bf16-mixed" else contextlib.nullcontext()
    preds, targets, rows = [], [], []
    for name in track_items(names, "evaluating", enabled=progress):
        target = np.asarray(labels[name], dtype=np.float32)
        features, _ = store.read(name).window(0, len(target))
        # an entry stored at another rate: the model runs on its own grid, each stored frame takes its tick's value
        grid = stored_grid(len(features), store.meta(name).get("fps"), fps)
        with autocast:
            x = features if grid is None else features[grid.held]
            pred = predict_sequence(
                model, torch.from_numpy(np.ascontiguousarray(x)).to(dev), window, stride, batch_size
            )
        pred = pred.float().cpu().numpy()
        if grid is not None:
            pred = pred[grid.tick]
        check_finite(pred, loaded.source, name, features=features)
        preds.append(pred)
        targets.append(target)
        rows.append(video_row(name, pred, target))
    if not preds:
        raise MambavaError("no videos to evaluate")
    scores = va_scores(np.concatenate(preds), np.concatenate(targets))
    frames = int(sum(r["valid_frames"] for r in rows))
    return EvalResult(scores["ccc_valence"], scores["ccc_arousal"], scores["p_va"], frames, rows)


def write_per_video(result: EvalResult, path: str | os.PathLike) -> Path:
    """CSV: video, frames, valid_frames, ccc_valence, ccc_arousal, p_va; a last row `ALL` with the scores over
    all frames concatenated (the official number, not the mean of the rows)."""
    path = Path(path)
    columns = ["video", "frames", "valid_frames", "ccc_valence", "ccc_arousal", "p_va"]
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in result.per_video:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in columns})
        writer.writerow(
            {
                "video": "ALL",
                "frames": sum(r["frames"] for r in result.per_video),
                "valid_frames": result.frames,
                "ccc_valence": result.ccc_valence,
                "ccc_arousal": result.ccc_arousal,
                "p_va": result.p_va,
            }
        )
    return path


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    features: str | None = None,
    annotations: str | None = None,
    split: str = "validation",
    fold: int | None = None,
    folds: str | None = None,
    window: int | None = None,
    stride: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    precision: str = "32",
    out: str | os.PathLike | None = None,
    progress: bool = False,
    protocol: str = "videos",
    audio_features: str | None = None,
) -> tuple[EvalResult, Path]:
    """`mambava evaluate`: score a checkpoint on one side ("train" or "validation") of a fold.

    Data paths and fold default to those of the run the checkpoint belongs to (its config.yaml or the
    Lightning checkpoint's hyper-parameters); a fusion model's audio store is `audio_features` or the run's. Writes the
    per-video CSV to `out` (default: beside the
    checkpoint, `eval_<split>_fold<k>.csv`, `eval_<split>_fold<k>_authors.csv` for the authors' protocol) and
    returns (result, csv path). `batch_size` (windows per forward pass) defaults to 32; under the authors'
    protocol it also sets which windows the dropped last batch holds, and defaults to the run's
    `eval_batch_size`, else 16 (the reference's test_batch_size, VA/config/config_fold*.yml:8)."""

    if split not in ("train", "validation"):
        raise MambavaError(f"--split must be 'train' or 'validation', got {split!r}")
    if protocol not in PROTOCOLS:
        raise MambavaError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    loaded = load_temporal_model(checkpoint)
    data = dict((loaded.run_config or {}).get("data") or {})
    for key, value in (
        ("features", features),
        ("annotations", annotations),
        ("folds", folds),
        ("fold", fold),
        ("audio_features", audio_features),
    ):
        if value is not None:
            data[key] = value
    for key in ("features", "annotations"):
        if not data.get(key):
            raise MambavaError(f"{checkpoint}: pass --{key} (no run config beside the checkpoint to take it from)")
    try:
        cfg = TrainConfig.from_dict({"model": {}, "data": data})
    except MambavaError as error:
        raise MambavaError(f"{checkpoint}: {error}") from None
    if loaded.kind == "fusion" and not data.get("audio_features"):
        raise MambavaError(
            f"{checkpoint}: a fusion model (visual + audio): pass --audio-features (no run config "
            f"beside the checkpoint names its audio store)"
        )
    fold_data = load_fold_data(cfg, sides=(split,))
    names = fold_data.train if split == "train" else fold_data.validation
    store = open_store(cfg)
    if window is None and loaded.run_config:
        window = cfg.data.window
    if stride is None and loaded.run_config:
        stride = cfg.data.stride
    if protocol == "authors":
        if batch_size is None:
            batch_size = int((loaded.run_config or {}).get("eval_batch_size") or 16)
        result = evaluate_windows_authors(
            loaded, store, names, fold_data.labels, window, stride, batch_size, device, precision
        )
    else:
        result = evaluate_videos(
            loaded, store, names, fold_data.labels, window, stride, batch_size or 32, device, precision, progress
        )
    if out is None:
        suffix = "_authors" if protocol == "authors" else ""
        out = Path(checkpoint).parent / f"eval_{split}_fold{cfg.data.fold}{suffix}.csv"
    return result, write_per_video(result, out)


def _runner(model, device: torch.device, precision: str):
    """The model in eval mode on `device`; with precision "int8", its TCN in int8 on the CPU (`quantize_tcn`)."""
    if precision == "int8":
        check_int8_device(device)
        return quantize_tcn(model)
    return model.to(device).eval()
