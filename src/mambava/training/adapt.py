"""Fine-tune a trained temporal model on a lab's own videos and ratings, and measure the gain honestly.

What is trained (`mode`): `head` (the regression head only), `encoder` (the Mamba encoder and the head; the
TCN stays as trained) or `all`. Parameters the model itself keeps frozen stay frozen.

Labels: each video's continuous ratings on its frames (`mambava.analysis.ratings.read_ratings`), moved earlier by the
raters' lag (`mambava.analysis.ratings.shift_labels`): `lag="auto"` estimates it with the model before adaptation
(`mambava.analysis.ratings.estimate_lag` per video and dimension; the median over all of them), a number is seconds.
Frames without a rating are left out of the loss and the scores (-5, the Aff-Wild2 marker).

Cross-validation by participant: the participants are dealt (seeded shuffle, round robin) into `folds`
groups; for each group, the model is adapted on the other participants' videos and both the model before and
the adapted one are scored on this group's videos (CCC per video, against the same lag-shifted labels). The
adapted model scored is the one after the last epoch: no epoch is chosen on the held-out people. Finally the
model is adapted on every participant and written as `adapted.safetensors` (a normal checkpoint for
`mambava predict -c`), with its `config.yaml` beside it (window and stride for predict).

The training itself is `mambava.training`'s: the same Lightning module (AdamW, warmup + cosine, CCC loss,
gradient clipping), data module (windows over a feature store) and trainer; adapt only writes its data as a
feature store, `<video>.txt` labels and a folds file in `OUT/work`, and loads the trained weights first.

Outputs in the output folder: `adapted.safetensors`, `config.yaml`, `per_video.csv` (video, participant,
fold, valid_frames, ccc_valence/ccc_arousal/p_va before and after, gain = p_va_after - p_va_before),
`summary.json` (lag, mode, folds, mean per-video P_VA before/after and its gain), and each fit's run folder
(`fold<k>/`, `final/`: metrics.csv, checkpoints).
"""

from __future__ import annotations

import copy
import json
import os
import re
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import lightning as L
import numpy as np
import pandas as pd
import torch

from mambava.analysis.ratings import estimate_lag, read_ratings, shift_labels
from mambava.analysis.summaries import write_csv
from mambava.core.errors import MambavaError
from mambava.core.fileio import atomic_open, make_folder
from mambava.data.folds import save_folds
from mambava.data.store import FeatureStore, load_features_file
from mambava.data.windows import predict_sequence
from mambava.temporal import load_temporal_model, model_kind, resolve_model_config, save_temporal_model
from mambava.training.config import DataConfig, TrainConfig, save_config
from mambava.training.evaluate import video_row
from mambava.training.module import VADataModule, VAModule
from mambava.training.outputs import RunPaths
from mambava.training.run import build_trainer

MODES = ("head", "encoder", "all")
MONITOR = "~final-monitor"


@dataclass
class AdaptConfig:
    """Adaptation settings. Fewer epochs and a higher rate than training from scratch: the model starts
    trained and the lab's data are small."""

    mode: str = "head"
    epochs: int = 20
    warmup_epochs: int = 1
    lr: float = 1e-3
    weight_decay: float = 1e-3
    batch_size: int = 8
    window: int | None = None  # default: the checkpoint's run, else 300
    stride: int | None = None  # default: the checkpoint's run, else 200
    lag: float | str = "auto"  # seconds, or "auto"
    folds: int = 3  # cross-validation groups of participants; 0: no cross-validation
    fps: float = 30.0  # frame rate of the features (lag seconds <-> frames)
    seed: int = 0
    accelerator: str = "cpu"
    progress_bar: bool = False

    def check(self) -> None:
        if self.mode not in MODES:
            raise MambavaError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.fps <= 0:
            raise MambavaError("epochs and batch_size must be >= 1, lr and fps > 0")
        if self.folds == 1 or self.folds < 0:
            raise MambavaError(f"folds must be 0 (none) or >= 2, got {self.folds}")
        if self.lag != "auto" and not isinstance(self.lag, (int, float)):
            raise MambavaError(f"lag must be 'auto' or seconds, got {self.lag!r}")


@dataclass
class AdaptVideo:
    name: str
    participant: str
    features: np.ndarray  # (T, D) float32
    present: np.ndarray  # (T,) bool
    labels: np.ndarray  # (T, 2) float, NaN where not rated


@dataclass
class AdaptResult:
    model_path: Path
    lag_frames: int
    rows: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- data


def participant_folds(participants: Sequence[str], n_folds: int, seed: int) -> list[list[str]]:
    """Participants dealt into n_folds groups after a seeded shuffle (sorted first, so the order of the
    input does not matter)."""
    people = sorted(set(participants))
    if n_folds > len(people):
        raise MambavaError(f"{n_folds} folds but only {len(people)} participants: use fewer folds")
    order = np.random.default_rng(seed).permutation(len(people))
    return [sorted(people[i] for i in order[k::n_folds]) for k in range(n_folds)]


def load_adapt_data(
    features: str | os.PathLike,
    ratings: str | os.PathLike,
    participants: str | os.PathLike | None = None,
    pattern: str = r"^([^_-]+)",
    fps: float = 30.0,
    value_range=None,
) -> list[AdaptVideo]:
    """Videos with features (a feature store folder, or a folder of `<video>.npy`) and ratings (a folder of
    `<video>.csv`, `<video>.frames.csv` or Aff-Wild2 `<video>.txt`); participant from a CSV (`video`,
    `participant` columns) or from the first group of `pattern` matched on the video name."""

    features, ratings = Path(features), Path(ratings)
    if not features.is_dir():
        raise MambavaError(f"{features}: no such features folder")
    if not ratings.is_dir():
        raise MambavaError(f"{ratings}: no such ratings folder")
    store = FeatureStore(features)
    names = store.names()
    arrays = {}
    if names:
        for name in names:
            record = store.read(name)
            arrays[name] = (np.array(record.features, np.float32), np.array(record.mask, bool))
    else:
        for path in sorted(features.glob("*.npy")):
            arrays[path.stem] = load_features_file(path)
    if not arrays:
        raise MambavaError(f"{features}: neither a feature store nor a folder of <video>.npy files")
    table = None
    if participants is not None:
        try:
            table = pd.read_csv(participants, dtype=str)
        except (OSError, ValueError) as error:
            raise MambavaError(f"{participants}: not a readable participants CSV ({error})") from None
        if not {"video", "participant"} <= set(table.columns):
            raise MambavaError(f"{participants}: needs the columns video and participant")
        table = dict(zip(table["video"].str.strip(), table["participant"].str.strip()))
    regex = re.compile(pattern)
    videos = []
    for name, (x, present) in arrays.items():
        rating = next(
            (
                ratings / f"{name}{suffix}"
                for suffix in (".csv", ".frames.csv", ".txt")
                if (ratings / f"{name}{suffix}").is_file()
            ),
            None,
        )
        if rating is None:
            continue
        if table is not None:
            if name not in table:
                raise MambavaError(f"{participants}: no participant for video {name!r}")
            person = table[name]
        else:
            match = regex.search(name)
            if match is None:
                raise MambavaError(f"{name}: the participant pattern {pattern!r} does not match; pass --participants")
            person = match.group(1) if match.groups() else match.group(0)
        frames = np.arange(len(x))
        labels = read_ratings(rating, frames, frames / fps, value_range)
        videos.append(AdaptVideo(name, person, x, present, labels))
    if not videos:
        raise MambavaError(f"{ratings}: no ratings file for any of the {len(arrays)} videos in {features}")
    return videos


def _write_workspace(work: Path, videos: Sequence[AdaptVideo], labels: dict[str, np.ndarray], folds: dict) -> None:
    store = FeatureStore(work / "features")
    make_folder(work / "labels")
    for video in videos:
        store.remove(video.name)
        store.write(video.name, video.features, video.present, fps=30.0, backbone="adapt", dtype="float32")
        values = np.where(np.isfinite(labels[video.name]), labels[video.name], -5.0)
        with atomic_open(work / "labels" / f"{video.name}.txt") as handle:
            handle.write("valence,arousal\n")
            handle.writelines(f"{v:.6f},{a:.6f}\n" for v, a in values)
    save_folds(work / "folds.json", folds)


# ---------------------------------------------------------------------------------------------- model


def model_config(model) -> dict:
    """The flat `TrainConfig.model` dict that rebuilds `model` (any kind)."""

    config = model.config
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()}
    values["kind"] = model_kind(model)
    return resolve_model_config(values)


def freeze(model, mode: str) -> list[str]:
    """Set requires_grad for `mode`; returns the names of the trainable top-level parts."""
    head = "dual_reg" if hasattr(model, "dual_reg") else "head"
    encoder = next((n for n in ("mamba", "encoder") if hasattr(model, n)), None)
    if mode == "encoder" and encoder is None:
        raise MambavaError(f"mode 'encoder': a {type(model).__name__} has no Mamba/sequence encoder; use head or all")
    parts = {"head": [head], "encoder": [encoder, head], "all": None}[mode]
    for name, parameter in model.named_parameters():
        if getattr(parameter, "_adapt_frozen", None) is None:
            parameter._adapt_frozen = not parameter.requires_grad  # the model's own frozen parameters
        top = name.split(".")[0]
        parameter.requires_grad = (not parameter._adapt_frozen) and (parts is None or top in parts)
    return sorted({n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad})


def predict_video(model, features: np.ndarray, window: int, stride: int) -> np.ndarray:
    with torch.inference_mode():
        return (
            predict_sequence(model.eval(), torch.from_numpy(np.ascontiguousarray(features)), window, stride)
            .float()
            .numpy()
        )


def _fit(base, cfg: AdaptConfig, work: Path, fold: int, out: Path, window: int, stride: int):
    """Adapt a copy of `base` on fold `fold`'s train side with mambava.training's module, data and trainer."""

    tcfg = TrainConfig(
        model=model_config(base),
        data=DataConfig(
            features=str(work / "features"),
            annotations=str(work / "labels"),
            folds=str(work / "folds.json"),
            fold=fold,
            window=window,
            stride=stride,
        ),
        batch_size=cfg.batch_size,
        epochs=cfg.epochs,
        warmup_epochs=min(cfg.warmup_epochs, cfg.epochs),
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        accelerator=cfg.accelerator,
        devices=1,
        seed=cfg.seed,
        val_every_n_epochs=cfg.epochs,
        progress_bar=cfg.progress_bar,
        out_dir=str(out),
    )
    tcfg.check()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = VAModule(tcfg.to_dict())
    module.model.load_state_dict(copy.deepcopy(base.state_dict()))
    module.fit_input_statistics = False  # the base's audio statistics, if any
    freeze(module.model, cfg.mode)
    datamodule = VADataModule(tcfg)
    trainer = build_trainer(tcfg, RunPaths(out))
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=r".*(does not have many workers|It is recommended to use|smaller than the logging interval).*",
        )
        trainer.fit(module, datamodule=datamodule)
    return module.model.to("cpu").float().eval(), tcfg


def _scores(pred: np.ndarray, target: np.ndarray) -> dict:
    row = video_row("", pred, np.where(np.isfinite(target), target, -5.0).astype(np.float32))
    return {
        "valid_frames": row["valid_frames"],
        "ccc_valence": row["ccc_valence"],
        "ccc_arousal": row["ccc_arousal"],
        "p_va": row["p_va"],
    }


def estimate_rater_lag(model, videos: Sequence[AdaptVideo], window: int, stride: int, fps: float) -> int:
    """Median over videos and dimensions of the lag (frames) that maximises CCC of the model's predictions
    with the ratings (`mambava.analysis.ratings.estimate_lag`)."""

    lags = []
    for video in videos:
        pred = predict_video(model, video.features, window, stride)
        for d in range(2):
            if np.isfinite(video.labels[:, d]).sum() >= 2 * 10:
                try:
                    lags.append(estimate_lag(pred[:, d], video.labels[:, d], fps).frames)
                except MambavaError:
                    continue
    if not lags:
        raise MambavaError("lag auto: no video has enough rated frames to estimate the raters' lag; pass --lag SECONDS")
    return int(round(float(np.median(lags))))


def adapt(
    checkpoint, videos: Sequence[AdaptVideo], out_dir: str | os.PathLike, cfg: AdaptConfig | None = None
) -> AdaptResult:
    """Cross-validated adaptation and the final adapted checkpoint (see the module doc)."""

    cfg = cfg or AdaptConfig()
    cfg.check()
    out = Path(out_dir)
    loaded = load_temporal_model(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else None
    base = (loaded.model if loaded else checkpoint).to("cpu").float().eval()
    window = int(cfg.window or (loaded.window if loaded else 300))
    stride = int(cfg.stride or (loaded.stride if loaded else 200))
    dims = {v.features.shape[1] for v in videos}
    input_dim = model_config(base)["input_dim"]
    if dims != {input_dim}:
        raise MambavaError(f"features are {sorted(dims)}-d but the model takes {input_dim}-d")
    lag = (
        estimate_rater_lag(base, videos, window, stride, cfg.fps)
        if cfg.lag == "auto"
        else int(round(float(cfg.lag) * cfg.fps))
    )
    labels = {v.name: shift_labels(v.labels, lag) for v in videos}
    participants = [v.participant for v in videos]
    groups = participant_folds(participants, cfg.folds, cfg.seed) if cfg.folds else []
    everyone = [v.name for v in videos]
    # The final fit trains on everyone; the trainer still wants a validation video, so it gets a copy of the
    # first one under another name (its score is only logged: the weights after the last epoch are kept).
    monitor = replace(videos[0], name=MONITOR)
    folds = {0: {"train": everyone, "validation": [MONITOR]}}
    for k, group in enumerate(groups, start=1):
        held = [v.name for v in videos if v.participant in group]
        folds[k] = {"train": [n for n in everyone if n not in held], "validation": held}
    work = out / "work"
    _write_workspace(work, [*videos, monitor], {**labels, MONITOR: labels[videos[0].name]}, folds)

    rows = []
    by_name = {v.name: v for v in videos}
    for k in range(1, len(groups) + 1):
        adapted, _ = _fit(base, cfg, work, k, out / f"fold{k}", window, stride)
        for name in folds[k]["validation"]:
            video = by_name[name]
            before = _scores(predict_video(base, video.features, window, stride), labels[name])
            after = _scores(predict_video(adapted, video.features, window, stride), labels[name])
            row = {"video": name, "participant": video.participant, "fold": k, "valid_frames": before["valid_frames"]}
            for key in ("ccc_valence", "ccc_arousal", "p_va"):
                row[f"{key}_before"], row[f"{key}_after"] = before[key], after[key]
            row["gain"] = (
                (after["p_va"] - before["p_va"]) if before["p_va"] is not None and after["p_va"] is not None else None
            )
            rows.append(row)
    final, tcfg = _fit(base, cfg, work, 0, out / "final", window, stride)
    model_path = save_temporal_model(final, out / "adapted.safetensors")
    save_config(tcfg, out / "config.yaml")

    summary = {
        "checkpoint": str(checkpoint) if loaded else type(checkpoint).__name__,
        "mode": cfg.mode,
        "trainable": freeze(copy.deepcopy(base), cfg.mode),
        "lag_frames": lag,
        "lag_s": lag / cfg.fps,
        "lag_source": "estimated" if cfg.lag == "auto" else "given",
        "videos": len(videos),
        "participants": len(set(participants)),
        "folds": [sorted(g) for g in groups],
        "window": window,
        "stride": stride,
        "config": asdict(cfg),
        "model": str(model_path),
    }
    if rows:
        frame = pd.DataFrame(rows)
        write_csv(frame, out / "per_video.csv")
        summary.update(
            p_va_before=float(frame["p_va_before"].mean()),
            p_va_after=float(frame["p_va_after"].mean()),
            gain=float(frame["p_va_after"].mean() - frame["p_va_before"].mean()),
        )

    with atomic_open(out / "summary.json") as handle:
        json.dump(summary, handle, indent=2, default=str)
        handle.write("\n")
    return AdaptResult(model_path, lag, rows, summary)


__all__ = [
    "AdaptConfig",
    "AdaptVideo",
    "AdaptResult",
    "MODES",
    "adapt",
    "load_adapt_data",
    "participant_folds",
    "freeze",
    "model_config",
    "estimate_rater_lag",
]
