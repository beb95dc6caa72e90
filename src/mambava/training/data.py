"""Training data: per-frame labels, the folds, whole validation videos and the samplers that make a run's data
order depend on (seed, epoch) only."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from mambava.core.errors import MambavaError
from mambava.data.affwild2 import AffWild2, align_lengths, find_annotations, read_va_annotation
from mambava.data.folds import load_folds, make_folds
from mambava.data.store import AudioVisualStore, FeatureStore
from mambava.data.timebase import stored_grid
from mambava.training.config import TrainConfig


class LabelSource:
    """Per-frame VA labels of videos, from an Aff-Wild2 root (with its train/validation splits) or from any
    folder of `<video>.txt` annotation files (searched recursively, no splits: a folds file is then needed)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        if not self.root.is_dir():
            raise MambavaError(f"{self.root}: annotation folder not found")
        self.affwild2 = None
        if find_annotations(self.root) is not None:
            self.affwild2 = AffWild2(self.root)
            self.paths = {
                v: self.affwild2.annotation_path(v)
                for v in self.affwild2.splits["train"] + self.affwild2.splits["validation"]
            }
        else:
            self.paths = {}
            for path in sorted(self.root.rglob("*.txt")):
                if path.stem in self.paths:
                    raise MambavaError(f"{path}: video {path.stem!r} annotated twice (also {self.paths[path.stem]})")
                self.paths[path.stem] = path
        if not self.paths:
            raise MambavaError(f"{self.root}: no <video>.txt annotation files found")

    @property
    def splits(self) -> dict[str, list[str]] | None:
        return None if self.affwild2 is None else self.affwild2.splits

    def read(self, video: str) -> np.ndarray:
        if video not in self.paths:
            raise MambavaError(f"{self.root}: no annotation for video {video!r}")
        return read_va_annotation(self.paths[video])


def resolve_folds(cfg: TrainConfig, labels: LabelSource | None = None) -> dict[int, dict[str, list[str]]]:
    """All folds of this config: the folds file, or folds made from the Aff-Wild2 splits."""
    if cfg.data.folds:
        return load_folds(cfg.data.folds)
    labels = labels or LabelSource(_need(cfg.data.annotations, "data.annotations"))
    if labels.splits is None:
        raise MambavaError(
            f"{labels.root}: not an Aff-Wild2 root (no VA_Estimation_Challenge/Train_Set, Validation_Set), so the "
            f"split cannot be read from it: set data.folds to a folds file (mambava.data.folds.save_folds)"
        )
    return make_folds(labels.splits["train"], labels.splits["validation"], cfg.data.n_folds, cfg.data.fold_seed)


def open_store(cfg: TrainConfig) -> FeatureStore | AudioVisualStore:
    """The run's features: `data.features`, joined with `data.audio_features` when that is set."""
    store = FeatureStore(_need(cfg.data.features, "data.features"))
    if not store.root.is_dir():
        raise MambavaError(f"{store.root}: feature store not found")
    return AudioVisualStore(store, FeatureStore(cfg.data.audio_features)) if cfg.data.audio_features else store


def open_extra_stores(cfg: TrainConfig, names: Sequence[str], dim: int) -> list:
    """`data.extra_features`, each joined with `data.audio_features` like `open_store`; MambavaError naming the
    store when it lacks one of `names` (the fold's training videos) or its features are not `dim`-d."""
    stores = []
    for path in cfg.data.extra_features:
        store = FeatureStore(path)
        if not store.root.is_dir():
            raise MambavaError(f"{store.root}: feature store not found (data.extra_features)")
        missing = [name for name in names if not store.has(name)]
        if missing:
            raise MambavaError(
                f"{store.root}: no features for training video {missing[0]!r} "
                f"({len(missing)} of {len(names)} missing; data.extra_features)"
            )
        if cfg.data.audio_features:
            store = AudioVisualStore(store, FeatureStore(cfg.data.audio_features))
        found = {int(store.meta(name)["dim"]) for name in names}
        if found != {dim}:
            raise MambavaError(
                f"{path}: features are {sorted(found)}-d, data.features' are {dim}-d (data.extra_features)"
            )
        stores.append(store)
    return stores


def check_model_input(cfg: TrainConfig, dim: int) -> None:
    """MambavaError unless the features' size is what the model takes (a fusion model: visual, audio, mask)."""
    m = cfg.model
    if m["kind"] != "fusion":
        if cfg.data.audio_features:
            raise MambavaError(
                f"{cfg.data.audio_features}: data.audio_features is set but model kind {m['kind']!r} "
                f"takes visual features only (set model.modalities=[visual,audio])"
            )
        if dim != m["input_dim"]:
            raise MambavaError(
                f"{cfg.data.features}: features are {dim}-d but model.input_dim is {m['input_dim']} "
                f"(--set model.input_dim={dim})"
            )
        return
    if not cfg.data.audio_features:
        raise MambavaError(
            "model.modalities includes audio: set data.audio_features to an audio feature store "
            "(mambava extract --audio)"
        )
    if dim != m["input_dim"] + m["audio_dim"] + 1:
        audio = FeatureStore(cfg.data.audio_features)
        audio_dim = AudioVisualStore(FeatureStore(cfg.data.features), audio).audio_dim
        visual = dim - audio_dim - 1
        raise MambavaError(
            f"{cfg.data.features} + {cfg.data.audio_features}: features are {visual}-d visual and {audio_dim}-d audio, "
            f"the model takes {m['input_dim']} and {m['audio_dim']} (--set model.input_dim={visual} "
            f"model.audio_dim={audio_dim})"
        )


def _need(value, key: str):
    if value in (None, ""):
        raise MambavaError(f"{key} is not set (set it in the config or with --set {key}=PATH)")
    return value


@dataclass
class FoldData:
    """The resolved videos of one fold: names present in the feature store, their aligned labels."""

    train: list[str]
    validation: list[str]
    labels: dict[str, np.ndarray]
    dim: int
    skipped: list[str]


def load_fold_data(
    cfg: TrainConfig, fold: int | None = None, sides: Sequence[str] = ("train", "validation")
) -> FoldData:
    """Resolve the fold's videos, keep those with features (a warning lists the others) and read their
    labels aligned to the features' length (mambava.data.windows.load_labels' policy)."""
    store = open_store(cfg)
    labels = LabelSource(_need(cfg.data.annotations, "data.annotations"))
    folds = resolve_folds(cfg, labels)
    fold = cfg.data.fold if fold is None else fold
    if fold not in folds:
        raise MambavaError(f"{cfg.data.folds or labels.root}: no fold {fold} (folds: {sorted(folds)})")
    chosen: dict[str, list[str]] = {"train": [], "validation": []}
    skipped = []
    for side in sides:
        for name in folds[fold][side]:
            (chosen[side] if store.has(name) else skipped).append(name)
        if not chosen[side]:
            raise MambavaError(
                f"{store.root}: none of the {len(folds[fold][side])} {side} videos of fold {fold} has features"
            )
    if skipped:
        warnings.warn(
            f"{store.root}: {len(skipped)} videos of fold {fold} have no features and are left out "
            f"({', '.join(skipped[:5])}{', ...' if len(skipped) > 5 else ''})",
            stacklevel=2,
        )
    values = {}
    dims = set()
    for name in chosen["train"] + chosen["validation"]:
        meta = store.meta(name)
        dims.add(int(meta["dim"]))
        annotation = labels.read(name)
        values[name] = annotation[: align_lengths(name, int(meta["n_frames"]), len(annotation))]
    if len(dims) > 1:
        raise MambavaError(f"{store.root}: entries of different feature sizes {sorted(dims)}")
    return FoldData(chosen["train"], chosen["validation"], values, dims.pop(), skipped)


class VideoDataset(Dataset):
    """Whole videos for full-video validation: item = dict(x (T, D) float32, y (T, 2), name). `fps` (the model's
    rate): an entry stored at another rate is put on the model's grid, features and labels alike."""

    def __init__(self, store, names: Sequence[str], labels: Mapping[str, np.ndarray], fps: float | None = None):
        self.store = store
        self.names = list(names)
        self.labels = labels
        self.lengths = [len(labels[n]) for n in self.names]
        self.grids = {}
        for name, n in zip(self.names, self.lengths):
            grid = stored_grid(n, store.meta(name).get("fps"), fps) if fps else None
            if grid is not None:
                self.grids[name] = grid.held

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        name = self.names[index]
        n = self.lengths[index]
        features, _present = self.store.read(name).window(0, n)
        labels = self.labels[name][:n]
        if name in self.grids:
            features, labels = features[self.grids[name]], labels[self.grids[name]]
        return {
            "x": torch.from_numpy(np.ascontiguousarray(features)),
            "y": torch.from_numpy(np.ascontiguousarray(labels, dtype=np.float32)),
            "name": name,
        }


class EpochShuffleSampler(Sampler[int]):
    """A permutation drawn from (seed, epoch) only, split across DDP ranks as DistributedSampler does (padded
    by repetition to a multiple of the world size, every rank the same number of items). Lightning calls
    `set_epoch` before each epoch, so the order of epoch e is the same in a resumed run."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1, shuffle: bool = True):
        self.n, self.seed, self.rank, self.world, self.shuffle = n, seed, rank, world, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.n / self.world)

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, 0x5EED))
            order = torch.randperm(self.n, generator=generator).tolist()
        else:
            order = list(range(self.n))
        total = len(self) * self.world
        order += order[: total - len(order)]
        return iter(order[self.rank : total : self.world])


class ShardSampler(Sampler[int]):
    """Validation videos split across ranks without repetition (a repeated video would count twice in the
    CCC): longest first, dealt round-robin."""

    def __init__(self, lengths: Sequence[int], rank: int = 0, world: int = 1):
        order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
        self.indices = order[rank::world]

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)


def mix_seed(*values: int) -> int:
    seed = 0x9E3779B9
    for value in values:
        seed = (seed * 1_000_003 + int(value)) % (2**63 - 1)
    return seed % (2**32)


def collate_windows(items: list[dict]) -> dict:
    return {
        "x": torch.stack([i["x"] for i in items]),
        "y": torch.stack([i["y"] for i in items]),
        "mask": torch.stack([i["mask"] for i in items]),
        "name": [i["name"] for i in items],
        "start": [i["start"] for i in items],
    }


def collate_video(items: list[dict]) -> dict:
    return items[0]
