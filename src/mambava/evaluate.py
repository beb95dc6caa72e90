"""Evaluation the official way (ABAW, paper §4.3: CCC over all frames): whole videos, cut into overlapping windows
(w 300, s 200, the authors' code's values; the stitching is ours: the paper does not say how it scores), run
through the temporal model, stitched back to one (valence, arousal) per frame (mean over overlapping windows);
CCC per dimension over all valid frames (label != -5) of all videos concatenated, P_VA = (CCC_v + CCC_a) / 2,
plus the same scores per video.

`protocol="authors"` scores instead as the authors' validation loop does (FreedomPuppy77/Charon,
VA/vaestimation.py:268-324 over the windows of VA/data/dataset.py and preprocess/split_VA_fold.py): see
`authors_windows`. Its numbers and ours are not the same quantity; `mambava cv --both-protocols` prints both.

`load_for_eval(path)` accepts our `model.safetensors` (the paper model or any baseline), a Lightning checkpoint
of a run (`checkpoints/best.ckpt`), or a reference `.pth` (via `MambaVA.from_checkpoint`).
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

from mambava.errors import MambavaError
from mambava.runtime import resolve_device
from mambava.fileio import atomic_open
from mambava.metrics import ccc_numpy, va_scores


@torch.no_grad()
def predict_sequence(
    model: torch.nn.Module,
    features: torch.Tensor,
    window: int = 300,
    stride: int = 200,
    batch_size: int = 32,
    stitching: str = "mean",
) -> torch.Tensor:
    """Per-frame predictions (T, C) of one video's features (T, D) by overlapping windows and stitching
    (`mambava.windows.stitch`: "mean", the paper's, or "most_history").

    Full-length windows run in batches of `batch_size`; a video shorter than the window runs as one shorter
    sequence (no padding, so no model, causal or not, sees padding). Returns float32 on the features' device.
    The caller puts the model in eval mode (Lightning does during validation).
    """
    from mambava.windows import make_windows, stitch

    if features.ndim != 2:
        raise ValueError(f"features must be (T, D), got {tuple(features.shape)}")
    n = features.shape[0]
    windows = make_windows(n, window, stride)
    preds: list[torch.Tensor | None] = [None] * len(windows)
    full = [i for i, (start, stop) in enumerate(windows) if stop - start == window]
    for chunk in range(0, len(full), batch_size):
        index = full[chunk : chunk + batch_size]
        x = torch.stack([features[windows[i][0] : windows[i][1]] for i in index])
        out = model(x).float()
        for j, i in enumerate(index):
            preds[i] = out[j]
    for i, (start, stop) in enumerate(windows):
        if preds[i] is None:
            preds[i] = model(features[start:stop][None]).float()[0]
    if not windows:
        return features.new_zeros((0, 2), dtype=torch.float32)
    stitched = stitch(preds, windows, n, stitching)
    return torch.from_numpy(np.ascontiguousarray(stitched, dtype=np.float32)).to(features.device)


def check_windowing(window: int, stride: int) -> tuple[int, int]:
    """(window, stride) as ints, or a MambavaError naming the option: window >= 1 and 1 <= stride <= window
    (a stride past the window would leave frames without a prediction)."""
    if int(window) < 1:
        raise MambavaError(f"--window must be >= 1 frame, got {window}")
    if not 1 <= int(stride) <= int(window):
        raise MambavaError(f"--stride must be in 1..window ({window}), got {stride}")
    return int(window), int(stride)


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


# ---------------------------------------------------------------------------------------------------------
# Loading a model to evaluate


@dataclass
class LoadedModel:
    model: torch.nn.Module
    kind: str
    source: str
    window: int = 300
    stride: int = 200
    run_config: dict | None = None


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


def load_for_eval(path: str | os.PathLike) -> LoadedModel:
    """A model in eval mode from our safetensors export, a Lightning run checkpoint or a reference .pth."""
    from mambava.baselines import build_temporal_model, load_temporal_model

    path = Path(path)
    if not path.is_file():
        raise MambavaError(f"{path}: checkpoint not found")
    run_config = None
    if path.suffix == ".safetensors":
        model = load_temporal_model(path)
        kind = getattr(model, "kind", "mamba_va")
        run_config = _run_config_near(path)
    elif path.suffix == ".ckpt":
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            run_config = checkpoint["hyper_parameters"]["config"]
            state = checkpoint["state_dict"]
        except Exception as error:  # torch raises several types for a bad file
            from mambava.errors import torch_load_reason

            raise MambavaError(f"{path}: not a mambava Lightning checkpoint ({torch_load_reason(error)})") from None
        from mambava.train import TrainConfig

        model_cfg = TrainConfig.from_dict(run_config, str(path)).model
        model = build_temporal_model(model_cfg)
        model.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
        kind = model_cfg["kind"]
    else:
        from mambava.model import MambaVA

        model = MambaVA.from_checkpoint(path)
        kind = "mamba_va"
    window, stride = 300, 200
    if run_config and isinstance(run_config.get("data"), dict):
        window = int(run_config["data"].get("window", window))
        stride = int(run_config["data"].get("stride", stride))
    model.eval()
    return LoadedModel(model=model, kind=kind, source=str(path), window=window, stride=stride, run_config=run_config)


# ---------------------------------------------------------------------------------------------------------
# The authors' protocol

PROTOCOLS = ("videos", "authors")


def authors_windows(
    windows: Sequence[tuple[str, int, int]], stride: int, batch_size: int
) -> list[tuple[str, int, int]]:
    """The validation windows in the order the reference's loop sees them, cut to whole batches.

    Its windows are files `<video>_<i:04d>.npz`, i = start // stride (preprocess/split_VA_fold.py:61), listed by a
    sorted glob (VA/data/dataset.py:23-24) and batched without shuffling and with drop_last=True
    (VA/data/dataset.py:64-71), so the last partial batch, in that name order, never counts."""
    ordered = sorted(windows, key=lambda w: f"{w[0]}_{w[1] // stride:04d}.npz")
    return ordered[: len(ordered) // batch_size * batch_size]


def authors_keep(target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Frames the reference's validation counts: valence label != -5 (VA/vaestimation.py:302-314; the arousal
    label is not checked), within the window's real frames."""
    keep = target[..., 0] != -5
    return keep if mask is None else keep & mask.bool()


def authors_window_dataset(store, names: Sequence[str], labels, window: int, stride: int, batch_size: int):
    """A WindowDataset of the validation videos cut by the authors' split (`mambava.windows.split_windows`),
    its windows in `authors_windows` order. MambavaError when not one whole batch is left."""
    from mambava.windows import WindowDataset

    dataset = WindowDataset(store, names, {n: labels[n] for n in names}, window, stride, tails="drop")
    cut = len(dataset.windows)
    dataset.windows = authors_windows(dataset.windows, stride, batch_size)
    if not dataset.windows:
        raise MambavaError(
            f"{store.root}: the authors' protocol leaves no window ({cut} windows of {window} frames in "
            f"{len(names)} videos, batches of {batch_size} with the last partial one dropped)"
        )
    return dataset


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
    model = loaded.model.to(dev).eval()
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
        row: dict[str, Any] = {"video": name, "frames": len(target), "valid_frames": len(target)}
        if len(target) >= 2:
            v, a = ccc_numpy(pred[:, 0], target[:, 0]), ccc_numpy(pred[:, 1], target[:, 1])
            row.update(ccc_valence=v, ccc_arousal=a, p_va=(v + a) / 2)
        else:
            row.update(ccc_valence=None, ccc_arousal=None, p_va=None)
        rows.append(row)
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
            "ccc_valence": self.ccc_valence, "ccc_arousal": self.ccc_arousal, "p_va": self.p_va,
            "frames": self.frames, "videos": len(self.per_video),
        }


def _video_row(name: str, pred: np.ndarray, target: np.ndarray) -> dict[str, Any]:
    valid = (target != -5).all(1) & np.isfinite(target).all(1)
    row: dict[str, Any] = {"video": name, "frames": len(target), "valid_frames": int(valid.sum())}
    if valid.sum() >= 2:
        v = ccc_numpy(pred[valid, 0], target[valid, 0])
        a = ccc_numpy(pred[valid, 1], target[valid, 1])
        row.update(ccc_valence=v, ccc_arousal=a, p_va=(v + a) / 2)
    else:
        row.update(ccc_valence=None, ccc_arousal=None, p_va=None)
    return row


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
    window, stride = check_windowing(loaded.window if window is None else window,
                                     loaded.stride if stride is None else stride)
    dev = resolve_device(device)
    from mambava.predict import model_input_dim

    expected = model_input_dim(loaded.model)
    for name in names:
        dim = int(store.meta(name)["dim"])
        if expected is not None and dim != expected:
            raise MambavaError(f"{store.root / name}: {dim}-d features, but the model {loaded.source} takes "
                               f"{expected}-d (features of another backbone?)")
    model = loaded.model.to(dev).eval()
    preds, targets, rows = [], [], []
    iterator: Any = names
    if progress:
        from rich.progress import track

        iterator = track(names, description="evaluating", transient=True)
    for name in iterator:
        target = np.asarray(labels[name], dtype=np.float32)
        features, _ = store.read(name).window(0, len(target))
        autocast = (
            torch.autocast(dev.type, dtype=torch.bfloat16) if precision == "bf16-mixed" else contextlib.nullcontext()
        )
        with autocast:
            pred = predict_sequence(model, torch.from_numpy(features).to(dev), window, stride, batch_size)
        pred = pred.float().cpu().numpy()
        check_finite(pred, loaded.source, name, features=features)
        preds.append(pred)
        targets.append(target)
        rows.append(_video_row(name, pred, target))
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
        writer.writerow({
            "video": "ALL", "frames": sum(r["frames"] for r in result.per_video), "valid_frames": result.frames,
            "ccc_valence": result.ccc_valence, "ccc_arousal": result.ccc_arousal, "p_va": result.p_va,
        })
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
) -> tuple[EvalResult, Path]:
    """`mambava evaluate`: score a checkpoint on one side ("train" or "validation") of a fold.

    Data paths and fold default to those of the run the checkpoint belongs to (its config.yaml or the
    Lightning checkpoint's hyper-parameters). Writes the per-video CSV to `out` (default: beside the
    checkpoint, `eval_<split>_fold<k>.csv`, `eval_<split>_fold<k>_authors.csv` for the authors' protocol) and
    returns (result, csv path). `batch_size` (windows per forward pass) defaults to 32; under the authors'
    protocol it also sets which windows the dropped last batch holds, and defaults to the run's
    `eval_batch_size`, else 16 (the reference's test_batch_size, VA/config/config_fold*.yml:8)."""
    from mambava.features import FeatureStore
    from mambava.train import TrainConfig, load_fold_data

    if split not in ("train", "validation"):
        raise MambavaError(f"--split must be 'train' or 'validation', got {split!r}")
    if protocol not in PROTOCOLS:
        raise MambavaError(f"--protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    loaded = load_for_eval(checkpoint)
    data = dict((loaded.run_config or {}).get("data") or {})
    for key, value in (("features", features), ("annotations", annotations), ("folds", folds), ("fold", fold)):
        if value is not None:
            data[key] = value
    for key in ("features", "annotations"):
        if not data.get(key):
            raise MambavaError(f"{checkpoint}: pass --{key} (no run config beside the checkpoint to take it from)")
    try:
        cfg = TrainConfig.from_dict({"model": {}, "data": data})
    except MambavaError as error:
        raise MambavaError(f"{checkpoint}: {error}") from None
    fold_data = load_fold_data(cfg, sides=(split,))
    names = fold_data.train if split == "train" else fold_data.validation
    store = FeatureStore(cfg.data.features)
    if window is None and loaded.run_config:
        window = cfg.data.window
    if stride is None and loaded.run_config:
        stride = cfg.data.stride
    if protocol == "authors":
        if batch_size is None:
            batch_size = int((loaded.run_config or {}).get("eval_batch_size") or 16)
        result = evaluate_windows_authors(loaded, store, names, fold_data.labels, window, stride, batch_size, device, precision)
    else:
        result = evaluate_videos(
            loaded, store, names, fold_data.labels, window, stride, batch_size or 32, device, precision, progress
        )
    if out is None:
        suffix = "_authors" if protocol == "authors" else ""
        out = Path(checkpoint).parent / f"eval_{split}_fold{cfg.data.fold}{suffix}.csv"
    return result, write_per_video(result, out)
