"""Training on Lightning, the paper's recipe by default, validation the official way (paper §4.3).

Recipe (the defaults of `TrainConfig`, written out in `configs/paper.yaml`). From the paper (§4.2): AdamW,
lr 3e-4, weight decay 1e-3, 50 epochs, 5-epoch warmup, dropout 0.3, CCC loss. The paper states no batch size,
no window/stride values (only ⌊n/s⌋ + 1 segments, §3.2), no clipping and no schedule after the warmup; those
come from the authors' code (FreedomPuppy77/Charon): batch 32 and windows 300/200 from its VA/config/config.yml,
gradient clipping at norm 1.0 from VA/vaestimation.py:243-247. Weight decay is on every parameter, as there.
Loss (1 - CCC_v) + (1 - CCC_a) over all valid frames of the batch (-5 and padding masked). The learning rate
is stepped once per optimizer step: linear warmup from lr/W to lr over the first W = warmup_epochs *
steps_per_epoch steps, then a cosine from lr down to 0 at the last step (ours; `schedule: cosine`).

The authors' recipe as their code runs it is `configs/authors.yaml` (folds 1-5) and `configs/authors_fold0.yaml`
(fold 0), chosen by `recipe_config("authors", fold)` (`mambava train --recipe authors`): per-fold values,
AdamW eps 1e-7, warmup from ~0 then CosineAnnealingWarmRestarts stepped per iteration (`schedule:
warm_restarts`, `warm_restarts_lrs`), drop_last, their split of windows (`data.tails: drop`), seed 42 and
their validation protocol (`protocol: authors`). Each value is cited to its file and line in those configs.

Validation (every `val_every_n_epochs`), `protocol: videos` (ours): each validation video is run whole, as
overlapping windows stitched back to one prediction per frame (`mambava.windows.predict_sequence`), and CCC
per dimension is computed over all valid frames of all validation videos concatenated; P_VA = (CCC_v + CCC_a)
/ 2. `protocol: authors`: CCC over the frames of the windows the reference's validation loop sees
(`mambava.windows.authors_windows`: its split, its file order, its last partial batch dropped, overlapping
frames counted once per window). The metric (`mambava.metrics.ConcordanceCCC`) keeps float64 sufficient
statistics whose DDP reduction is a sum, so ranks that each validated a share give exactly the
single-process number (torchmetrics' `ConcordanceCorrCoef` uses sample, n-1, moments where ABAW uses
population moments).

Reproducibility and resume: `seed` seeds the model's initialisation; the training windows are shuffled by a
sampler seeded with (seed, epoch) and the global RNG (dropout) is re-seeded from (seed, epoch, batch, rank)
before every batch, so a run resumed from `checkpoints/last.ckpt` (written at the end of every epoch) goes
on bit for bit as the uninterrupted run would have (on CPU; CUDA kernels may add their own nondeterminism
unless `deterministic: true`). Progress inside an interrupted epoch is redone. Checkpoints are written beside
their target, fsynced and renamed (`AtomicCheckpointIO`), so a full disk never truncates one; a missing or
unreadable last.ckpt stops `resume=True` with a one-line MambavaError.

Outputs in `out_dir`: `config.yaml` (the resolved config), `checkpoints/best.ckpt` (best validation P_VA) and
`checkpoints/last.ckpt`, `model.safetensors` (the best model, loadable by `mambava.temporal_models.load_temporal_model`
and, for the paper model, `MambaVA.load`), `metrics.csv` (one row per epoch), `logs/` (Lightning's per-step CSV
log), `tensorboard/` (when tensorboard is installed), `summary.json`, `curves.png`.
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import importlib.util
import json
import math
import os
import time
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader, Dataset, Sampler

from mambava.errors import MambavaError
from mambava.fileio import atomic_open, atomic_path, atomic_torch_save, is_output_failure, output_error

PAPER_CONFIG = Path(__file__).parent / "configs" / "paper.yaml"
# Recipes by name: (config of folds 1-5, config of fold 0). The authors' code uses other values on fold 0.
RECIPES = {
    "paper": (PAPER_CONFIG, PAPER_CONFIG),
    "authors": (PAPER_CONFIG.parent / "authors.yaml", PAPER_CONFIG.parent / "authors_fold0.yaml"),
}
SCHEDULES = ("cosine", "warm_restarts")
PROTOCOLS = ("videos", "authors")
TAILS = ("cover", "drop")
PRECISIONS = ("32", "bf16-mixed", "16-mixed")
MONITOR = "val/p_va"


# ---------------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class DataConfig:
    """Where the data comes from and how it is cut.

    `features`: a feature store folder (`mambava.features.FeatureStore`). `annotations`: an Aff-Wild2 root
    (`VA_Estimation_Challenge/{Train_Set,Validation_Set}/<video>.txt`, or that folder itself), or any folder of
    `<video>.txt` files in the same `valence,arousal` format (searched recursively). `folds`: a folds file
    (`mambava.folds.save_folds`); without one the folds are made from the Aff-Wild2 splits with
    `make_folds(train, validation, n_folds, fold_seed)`. `fold` 0 is the official split, 1..n_folds the
    cross-validation folds.
    """

    features: str | None = None
    annotations: str | None = None
    folds: str | None = None
    fold: int = 0
    n_folds: int = 5
    fold_seed: int = 0
    window: int = 300
    stride: int = 200
    tails: str = "cover"
    num_workers: int = 0


@dataclass
class TrainConfig:
    """Everything a training run needs; the defaults are the paper's recipe (see the module docstring).

    `model` holds the temporal model: `kind` ("mamba_va" the paper model, or an ablation baseline "tcn",
    "mamba", "mlp", "transformer") and its sizes (`mambava.temporal_models.default_model_config`). Missing model keys
    take their defaults; unknown keys are an error.
    """

    model: dict = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    batch_size: int = 32
    epochs: int = 50
    warmup_epochs: int = 5
    lr: float = 3e-4
    weight_decay: float = 1e-3
    grad_clip: float = 1.0
    schedule: str = "cosine"
    adam_eps: float = 1e-8
    drop_last: bool = False
    protocol: str = "videos"
    precision: str = "32"
    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    seed: int = 0
    deterministic: bool = False
    val_every_n_epochs: int = 1
    eval_batch_size: int = 32
    progress_bar: bool = True
    out_dir: str = "runs/mambava"

    def __post_init__(self) -> None:
        from mambava.temporal_models import resolve_model_config

        if isinstance(self.data, Mapping):
            self.data = _dataclass_from_dict(DataConfig, self.data, "data")
        self.model = resolve_model_config(self.model)

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        try:
            return _dataclass_from_dict(cls, values, "")
        except MambavaError as error:
            raise MambavaError(f"{source}: {error}") from None

    def check(self) -> None:
        """Value checks that do not need the data (MambavaError naming the key)."""
        problems = []
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for key in ("batch_size", "epochs", "eval_batch_size", "val_every_n_epochs"):
            if getattr(self, key) < 1:
                problems.append(f"{key} must be >= 1, got {getattr(self, key)}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            problems.append(f"warmup_epochs must be in 0..epochs, got {self.warmup_epochs}")
        if self.lr <= 0 or self.weight_decay < 0 or self.grad_clip < 0 or self.adam_eps <= 0:
            problems.append("lr and adam_eps must be > 0, weight_decay and grad_clip >= 0")
        for key, allowed, value in (
            ("schedule", SCHEDULES, self.schedule), ("protocol", PROTOCOLS, self.protocol), ("data.tails", TAILS, self.data.tails),
        ):
            if value not in allowed:
                problems.append(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
        d = self.data
        if not 0 < d.stride <= d.window:
            problems.append(f"data.stride must be in 1..data.window, got window={d.window}, stride={d.stride}")
        if d.num_workers < 0:
            problems.append("data.num_workers must be >= 0")
        if problems:
            raise MambavaError("; ".join(problems))


def _plain(value):
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, kind: Any, key: str) -> Any:
    """Check/convert a config value against its annotated type; MambavaError naming the key."""
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if kind is Any:
        return value
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except MambavaError as error:
                errors.append(str(error))
        raise MambavaError(errors[0] if errors else f"{key}: bad value {value!r}")
    if kind is bool:
        if isinstance(value, bool):
            return value
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif kind is dict:
        if isinstance(value, Mapping):
            return dict(value)
    elif dataclasses.is_dataclass(kind):
        if isinstance(value, Mapping):
            return _dataclass_from_dict(kind, value, key)
        if isinstance(value, kind):
            return value
    else:
        return value
    name = getattr(kind, "__name__", str(kind))
    raise MambavaError(f"key '{key}' must be {name}, got {value!r}")


def _dataclass_from_dict(cls, values: Mapping[str, Any], prefix: str):
    if not isinstance(values, Mapping):
        raise MambavaError(f"'{prefix or 'config'}' must be a mapping, got {values!r}")
    types = _field_types(cls)
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in types:
            known = ", ".join(sorted(types))
            raise MambavaError(f"unknown key '{full}' (known keys{' of ' + prefix if prefix else ''}: {known})")
        if key == "model":
            if not isinstance(value, Mapping):
                raise MambavaError(f"'model' must be a mapping, got {value!r}")
            kwargs[key] = dict(value)
            continue
        kwargs[key] = _coerce(value, types[key], full)
    return cls(**kwargs)


def _set_nested(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise MambavaError(f"--set {dotted}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", value parsed as YAML: 3 -> int, 3e-4/0.5 -> float, [1,2] -> list, null -> None)."""
    if "=" not in text:
        raise MambavaError(f"--set {text!r}: expected key=value (e.g. --set lr=1e-4 or --set model.kind=tcn)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise MambavaError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """A TrainConfig from a YAML file (None: the paper defaults) plus `key=value` overrides (dotted keys).

    Unknown keys are a MambavaError naming the key and the file (or the --set option)."""
    tree: dict = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except OSError as error:
            raise MambavaError(f"{path}: cannot read config ({error})") from error
        except yaml.YAMLError as error:
            raise MambavaError(f"{path}: not valid YAML ({error})") from error
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise MambavaError(f"{path}: a config must be a mapping of keys to values")
        tree = copy.deepcopy(loaded)
    try:
        TrainConfig.from_dict(tree, source)
    except TypeError as error:  # pragma: no cover - defensive
        raise MambavaError(f"{source}: {error}") from None
    for item in overrides:
        key, value = parse_override(item)
        _set_nested(tree, key, value)
        try:
            TrainConfig.from_dict(tree, f"--set {item}")
        except MambavaError as error:
            raise MambavaError(str(error)) from None
    cfg = TrainConfig.from_dict(tree, source)
    try:
        cfg.check()
    except MambavaError as error:
        raise MambavaError(f"{source}: {error}") from None
    return cfg


def recipe_config(recipe: str, fold: int) -> Path:
    """The config file of a named recipe for a fold ("paper": paper.yaml for every fold; "authors":
    authors_fold0.yaml on fold 0, authors.yaml on folds 1-5, as the reference's per-fold configs differ)."""
    if recipe not in RECIPES:
        raise MambavaError(f"--recipe {recipe!r}: known recipes are {', '.join(RECIPES)}")
    folds_1_to_5, fold_0 = RECIPES[recipe]
    return fold_0 if fold == 0 else folds_1_to_5


def config_items(path: str | os.PathLike) -> list[str]:
    """A config file's keys as `key=value` overrides (to lay a user's file, e.g. its data paths, over a recipe).
    The file is checked first, so a bad key is an error naming it."""
    load_config(path)
    tree = yaml.safe_load(Path(path).read_text()) or {}
    return [f"{key}={json.dumps(value)}" for key, value in _flatten(tree).items()]


def load_recipe(recipe: str, overrides: Sequence[str] = (), fold: int | None = None) -> TrainConfig:
    """A named recipe's config for `fold` (default: the fold the overrides set, else 0), overrides applied
    on top of the fold's file."""
    if fold is None:
        fold = load_config(recipe_config(recipe, 1), overrides).data.fold
    return load_config(recipe_config(recipe, fold), [*overrides, f"data.fold={fold}"])


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> None:
    with atomic_open(path, "w") as handle:
        yaml.safe_dump(cfg.to_dict(), handle, sort_keys=False, default_flow_style=None, width=120)


# ---------------------------------------------------------------------------------------------------------
# Data: labels, folds, datasets, samplers


class LabelSource:
    """Per-frame VA labels of videos, from an Aff-Wild2 root (with its train/validation splits) or from any
    folder of `<video>.txt` annotation files (searched recursively, no splits: a folds file is then needed)."""

    def __init__(self, root: str | os.PathLike):
        from mambava.affwild2 import ANNOTATION_DIR, SPLIT_DIRS, AffWild2

        self.root = Path(root)
        if not self.root.is_dir():
            raise MambavaError(f"{self.root}: annotation folder not found")
        self.affwild2 = None
        if (self.root / ANNOTATION_DIR).is_dir() or all((self.root / d).is_dir() for d in SPLIT_DIRS.values()):
            self.affwild2 = AffWild2(self.root)
            self.paths = {v: self.affwild2.annotation_path(v) for v in self.affwild2.splits["train"] + self.affwild2.splits["validation"]}
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
        from mambava.affwild2 import read_va_annotation

        if video not in self.paths:
            raise MambavaError(f"{self.root}: no annotation for video {video!r}")
        return read_va_annotation(self.paths[video])


def resolve_folds(cfg: TrainConfig, labels: LabelSource | None = None) -> dict[int, dict[str, list[str]]]:
    """All folds of this config: the folds file, or folds made from the Aff-Wild2 splits."""
    from mambava.folds import load_folds, make_folds

    if cfg.data.folds:
        return load_folds(cfg.data.folds)
    labels = labels or LabelSource(_need(cfg.data.annotations, "data.annotations"))
    if labels.splits is None:
        raise MambavaError(
            f"{labels.root}: not an Aff-Wild2 root (no VA_Estimation_Challenge/Train_Set, Validation_Set), so the "
            f"split cannot be read from it: set data.folds to a folds file (mambava.folds.save_folds)"
        )
    return make_folds(labels.splits["train"], labels.splits["validation"], cfg.data.n_folds, cfg.data.fold_seed)


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


def load_fold_data(cfg: TrainConfig, fold: int | None = None, sides: Sequence[str] = ("train", "validation")) -> FoldData:
    """Resolve the fold's videos, keep those with features (a warning lists the others) and read their
    labels aligned to the features' length (mambava.windows.load_labels' policy)."""
    from mambava.affwild2 import align_lengths
    from mambava.features import FeatureStore

    store = FeatureStore(_need(cfg.data.features, "data.features"))
    if not store.root.is_dir():
        raise MambavaError(f"{store.root}: feature store not found")
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
            raise MambavaError(f"{store.root}: none of the {len(folds[fold][side])} {side} videos of fold {fold} has features")
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
    """Whole videos for full-video validation: item = dict(x (T, D) float32, y (T, 2), name)."""

    def __init__(self, store, names: Sequence[str], labels: Mapping[str, np.ndarray]):
        self.store = store
        self.names = list(names)
        self.labels = labels
        self.lengths = [len(labels[n]) for n in self.names]

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        name = self.names[index]
        n = self.lengths[index]
        features, _present = self.store.read(name).window(0, n)
        return {
            "x": torch.from_numpy(np.ascontiguousarray(features)),
            "y": torch.from_numpy(np.ascontiguousarray(self.labels[name][:n], dtype=np.float32)),
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
            generator = torch.Generator().manual_seed(_mix_seed(self.seed, self.epoch, 0x5EED))
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


def _mix_seed(*values: int) -> int:
    seed = 0x9E3779B9
    for value in values:
        seed = (seed * 1_000_003 + int(value)) % (2**63 - 1)
    return seed % (2**32)


def _collate_windows(items: list[dict]) -> dict:
    return {
        "x": torch.stack([i["x"] for i in items]),
        "y": torch.stack([i["y"] for i in items]),
        "mask": torch.stack([i["mask"] for i in items]),
        "name": [i["name"] for i in items],
        "start": [i["start"] for i in items],
    }


def _collate_video(items: list[dict]) -> dict:
    return items[0]


# ---------------------------------------------------------------------------------------------------------
# Lightning


def _lightning():
    import lightning

    return lightning


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based): linear warmup (step+1)/warmup_steps over
    the first warmup_steps steps, then cosine from 1 to 0 over the remaining steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    remaining = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / remaining)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


# The authors' schedule (FreedomPuppy77/Charon, VA/vaestimation.py): during the first W = warmup_epochs *
# steps_per_epoch steps lr = 1e-8 + lr * j / (W + 1e-8) (WarmUpLR, lines 21-41, built with start_lr=1e-8 at
# lines 115-117 and reset to step 0 at line 146); from then on torch's CosineAnnealingWarmRestarts with
# T_0 = epochs - warmup_epochs + 1, T_mult 2, eta_min 1e-8 (lines 119-125), stepped once per iteration
# (lines 251-255), so T_0 counts iterations, not epochs: the cosine restarts after 46, 92, 184, ... steps.
WARMUP_START_LR = 1e-8
RESTARTS_ETA_MIN = 1e-8
RESTARTS_T_MULT = 2


def warm_restarts_lrs(lr: float, warmup_steps: int, total_steps: int, period: int) -> list[float]:
    """The learning rate at each optimizer step 0..total_steps-1 of the authors' schedule (see above): the
    warmup formula for steps 0..W, then torch's CosineAnnealingWarmRestarts(T_0=period) stepped once per step."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=period, T_mult=RESTARTS_T_MULT, eta_min=RESTARTS_ETA_MIN
    )
    lrs = []
    for step in range(total_steps):
        if step <= warmup_steps:  # step W uses the warmup's last value; the cosine steps after it
            lrs.append(WARMUP_START_LR + lr * step / (warmup_steps + 1e-8))
        else:
            cosine.step()
            lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


def _make_datamodule_class():
    L = _lightning()

    class VADataModule(L.LightningDataModule):
        """Training windows (WindowDataset, shuffled by EpochShuffleSampler) and whole validation videos."""

        def __init__(self, cfg: TrainConfig, fold_data: FoldData | None = None):
            super().__init__()
            self.cfg = cfg
            self.fold_data = fold_data or load_fold_data(cfg)
            self.train_set = None
            self.val_set = None

        def setup(self, stage: str | None = None) -> None:
            from mambava.features import FeatureStore
            from mambava.windows import WindowDataset

            if self.train_set is not None:
                return
            store = FeatureStore(self.cfg.data.features)
            data = self.fold_data
            self.train_set = WindowDataset(
                store, data.train, {n: data.labels[n] for n in data.train}, self.cfg.data.window, self.cfg.data.stride,
                tails=self.cfg.data.tails,
            )
            if self.cfg.protocol == "authors":
                from mambava.windows import authors_window_dataset

                self.val_set = authors_window_dataset(
                    store, data.validation, data.labels, self.cfg.data.window, self.cfg.data.stride, self.cfg.eval_batch_size
                )
            else:
                self.val_set = VideoDataset(store, data.validation, data.labels)

        def _rank_world(self) -> tuple[int, int]:
            trainer = self.trainer
            if trainer is None:
                return 0, 1
            return trainer.global_rank, trainer.world_size

        def _loader_kwargs(self) -> dict:
            workers = self.cfg.data.num_workers
            return {"num_workers": workers, "persistent_workers": workers > 0, "pin_memory": False}

        def train_dataloader(self) -> DataLoader:
            rank, world = self._rank_world()
            sampler = EpochShuffleSampler(len(self.train_set), self.cfg.seed, rank, world)
            return DataLoader(
                self.train_set, batch_size=self.cfg.batch_size, sampler=sampler, collate_fn=_collate_windows,
                drop_last=self.cfg.drop_last, **self._loader_kwargs(),
            )

        def val_dataloader(self) -> DataLoader:
            rank, world = self._rank_world()
            if self.cfg.protocol == "authors":
                # Windows in the reference's order, already cut to whole batches; dealt to ranks without repeats.
                sampler = ShardSampler([1] * len(self.val_set), rank, world)
                return DataLoader(
                    self.val_set, batch_size=self.cfg.eval_batch_size, sampler=sampler, collate_fn=_collate_windows,
                    **self._loader_kwargs(),
                )
            sampler = ShardSampler(self.val_set.lengths, rank, world)
            return DataLoader(self.val_set, batch_size=1, sampler=sampler, collate_fn=_collate_video, **self._loader_kwargs())

    return VADataModule


def _make_module_class():
    L = _lightning()

    class VAModule(L.LightningModule):
        """The temporal model, the CCC loss, the AdamW + warmup/cosine schedule and full-video validation."""

        def __init__(self, config: dict):
            super().__init__()
            from mambava.temporal_models import build_temporal_model
            from mambava.metrics import ConcordanceCCC

            self.save_hyperparameters({"config": config})
            self.cfg = TrainConfig.from_dict(config)
            self.model = build_temporal_model(self.cfg.model)
            self.val_ccc = ConcordanceCCC(num_outputs=2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x)

        def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
            # Dropout noise depends on (seed, epoch, batch, rank) only: a resumed run continues exactly.
            torch.manual_seed(_mix_seed(self.cfg.seed, self.current_epoch, batch_idx, self.global_rank))

        def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
            from mambava.metrics import ccc_loss

            pred = self.model(batch["x"])
            loss = ccc_loss(pred.float(), batch["y"], batch["mask"])
            # Stop at the first non-finite loss (any rank, so no rank waits in a collective the others left),
            # before backward: the weights and the checkpoints of earlier epochs stay as they were.
            if self.trainer.strategy.reduce_boolean_decision(not bool(torch.isfinite(loss)), all=False):
                raise Diverged(self.current_epoch, self.global_step, f"training loss is {float(loss.detach())}")
            n = batch["x"].shape[0]
            self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
            self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False, prog_bar=True, batch_size=n)
            return loss

        def validation_step(self, batch: dict, batch_idx: int) -> None:
            from mambava.windows import authors_keep, predict_sequence

            if self.cfg.protocol == "authors":
                pred = self.model(batch["x"])
                self.val_ccc.update(pred.float(), batch["y"], keep=authors_keep(batch["y"], batch["mask"]))
                return
            pred = predict_sequence(
                self.model, batch["x"], self.cfg.data.window, self.cfg.data.stride, self.cfg.eval_batch_size
            )
            self.val_ccc.update(pred.float(), batch["y"])

        def on_validation_epoch_end(self) -> None:
            values = self.val_ccc.compute()  # synced across DDP ranks
            self.val_ccc.reset()
            ccc_v, ccc_a = float(values[0]), float(values[1])
            if not (math.isfinite(ccc_v) and math.isfinite(ccc_a)):  # (same on every rank: synced above)
                raise Diverged(self.current_epoch, self.global_step - 1, f"validation CCC_v {ccc_v}, CCC_a {ccc_a}")
            self.log("val/ccc_valence", ccc_v, sync_dist=False)
            self.log("val/ccc_arousal", ccc_a, sync_dist=False)
            self.log(MONITOR, (ccc_v + ccc_a) / 2, prog_bar=True, sync_dist=False)

        def on_train_epoch_end(self) -> None:
            # Runs before the checkpoint callbacks' hook: weights that went non-finite in the last steps of an
            # epoch (with no validation after them) are never written as last.ckpt.
            bad = next((name for name, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())), None)
            if bad is not None:
                raise Diverged(self.current_epoch, self.global_step - 1, f"parameter {bad} is not finite")

        def configure_optimizers(self):
            trainable = [p for p in self.parameters() if p.requires_grad]  # (MambaVA's unused adaptor is frozen)
            optimizer = torch.optim.AdamW(
                trainable, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay, eps=self.cfg.adam_eps
            )
            total = int(self.trainer.estimated_stepping_batches)
            steps_per_epoch = max(1, total // max(1, self.cfg.epochs))
            warmup = self.cfg.warmup_epochs * steps_per_epoch
            if self.cfg.schedule == "warm_restarts":
                period = self.cfg.epochs - self.cfg.warmup_epochs + 1  # vaestimation.py:121, in steps
                lrs = warm_restarts_lrs(self.cfg.lr, warmup, max(1, total), period)
                factors = [value / self.cfg.lr for value in lrs]
                scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: factors[min(step, len(factors) - 1)])
            else:
                scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, total))
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    return VAModule


class Diverged(MambavaError):
    """Training went non-finite (NaN/Inf loss, weights or validation score); `train` adds what was kept."""

    def __init__(self, epoch: int, step: int, what: str):
        self.epoch, self.step, self.what = epoch, step, what
        super().__init__(f"epoch {epoch + 1}, step {step + 1}: {what}")


def _diverged_message(error: Diverged, paths: RunPaths) -> str:
    """One line: where it went non-finite, what to try, and which checkpoints of earlier epochs are kept."""
    kept = [p for p in (paths.best, paths.last) if p.is_file()]
    best = [r for r in read_metrics(paths.metrics) if r.get("val_p_va") is not None]
    if kept:
        top = max(best, key=lambda r: r["val_p_va"]) if best else None
        note = f" (best: epoch {top['epoch'] + 1}, P_VA {top['val_p_va']:.4f})" if top and paths.best.is_file() else ""
        keep = f"kept the checkpoints of the earlier epochs: {', '.join(str(p) for p in kept)}{note}"
    else:
        keep = "no epoch finished before, so no checkpoint was saved"
    return (f"{paths.out}: training stopped at {error} (the model diverged: lower lr, or set grad_clip > 0); "
            f"{keep}")


_CLASSES: dict[str, type] = {}


def _classes() -> dict[str, type]:
    """The Lightning classes, built on first use so that `import mambava.train` does not import Lightning."""
    if not _CLASSES:
        _CLASSES["VAModule"] = _make_module_class()
        _CLASSES["VADataModule"] = _make_datamodule_class()
        _CLASSES["EpochLog"] = _make_epoch_log_class()
        _CLASSES["AtomicCheckpointIO"] = _make_checkpoint_io_class()
    return _CLASSES


def __getattr__(name: str):
    if name in ("VAModule", "VADataModule", "EpochLog"):
        return _classes()[name]
    raise AttributeError(name)


# ---------------------------------------------------------------------------------------------------------
# Per-epoch log, curves, summary


METRIC_COLUMNS = ["epoch", "step", "lr", "train_loss", "val_ccc_valence", "val_ccc_arousal", "val_p_va", "time_s"]


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a run's metrics.csv with numbers parsed (empty cells -> None)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            parsed: dict[str, Any] = {}
            for key, value in row.items():
                if value in ("", None):
                    parsed[key] = None
                elif key in ("epoch", "step"):
                    parsed[key] = int(float(value))
                else:
                    parsed[key] = float(value)
            rows.append(parsed)
    return rows


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in METRIC_COLUMNS})


def _make_epoch_log_class():
    L = _lightning()

    class EpochLog(L.Callback):
        """metrics.csv in out_dir, one row per epoch, rewritten atomically; on resume the rows of epochs that
        will be redone are dropped."""

        def __init__(self, path: Path):
            self.path = Path(path)
            self.rows: list[dict[str, Any]] = []
            self.val: tuple[int, dict[str, float]] | None = None
            self.start = time.monotonic()

        def on_train_start(self, trainer, pl_module) -> None:
            first = trainer.current_epoch  # after a resume: the first epoch to run
            self.rows = [r for r in read_metrics(self.path) if r["epoch"] is not None and r["epoch"] < first]
            self.offset = self.rows[-1]["time_s"] if self.rows and self.rows[-1].get("time_s") else 0.0
            self.start = time.monotonic()

        def on_validation_end(self, trainer, pl_module) -> None:
            # (not on_validation_epoch_end: callbacks' hooks run before the module's, which logs the scores)
            if trainer.sanity_checking:
                return
            metrics = trainer.callback_metrics
            self.val = (
                trainer.current_epoch,
                {k: float(metrics[f"val/{k}"]) for k in ("ccc_valence", "ccc_arousal", "p_va") if f"val/{k}" in metrics},
            )

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            epoch = trainer.current_epoch
            loss = trainer.callback_metrics.get("train/loss_epoch")
            row = {
                "epoch": epoch,
                "step": trainer.global_step,
                "lr": trainer.optimizers[0].param_groups[0]["lr"],
                "train_loss": None if loss is None else float(loss),
                "time_s": round(self.offset + time.monotonic() - self.start, 3),
            }
            if self.val is not None and self.val[0] == epoch:
                row.update({f"val_{k}": v for k, v in self.val[1].items()})
            self.rows = [r for r in self.rows if r["epoch"] != epoch] + [row]
            if trainer.is_global_zero:
                _write_metrics(self.path, self.rows)

    return EpochLog


def plot_curves(rows: list[dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """curves.png: training loss, validation CCCs and P_VA, and the learning rate, per epoch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    figure = Figure(figsize=(12, 3.6), dpi=100)  # fixed margins: constrained layout costs ~1 s per figure
    FigureCanvasAgg(figure)
    ax_loss, ax_val, ax_lr = figure.subplots(1, 3)
    figure.subplots_adjust(left=0.05, right=0.99, bottom=0.14, top=0.82 if title else 0.9, wspace=0.25)
    epochs = [r["epoch"] + 1 for r in rows]

    def series(key):
        pairs = [(e, r[key]) for e, r in zip(epochs, rows) if r.get(key) is not None]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    ax_loss.plot(*series("train_loss"), marker="o", ms=3, color="black")
    ax_loss.set(title="training loss (2 - CCC_v - CCC_a)", xlabel="epoch")
    for key, label, color in (
        ("val_ccc_valence", "CCC valence", "#1f77b4"),
        ("val_ccc_arousal", "CCC arousal", "#d62728"),
        ("val_p_va", "P_VA", "black"),
    ):
        xs, ys = series(key)
        ax_val.plot(xs, ys, marker="o", ms=3, label=label, color=color)
    best = [r for r in rows if r.get("val_p_va") is not None]
    if best:
        top = max(best, key=lambda r: r["val_p_va"])
        ax_val.axvline(top["epoch"] + 1, color="gray", ls=":", lw=1)
    ax_val.set(title="validation (full videos)", xlabel="epoch")
    ax_val.legend(loc="lower right", fontsize=8)
    ax_lr.plot(*series("lr"), marker="o", ms=3, color="#2ca02c")
    ax_lr.set(title="learning rate (end of epoch)", xlabel="epoch")
    ax_lr.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.1e}"))
    for ax in (ax_loss, ax_val, ax_lr):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        figure.suptitle(title)
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path


def _write_json(path: Path, data: Mapping) -> None:
    with atomic_open(path, "w") as handle:
        json.dump(data, handle, indent=1)
        handle.write("\n")


def read_summary(out_dir: str | os.PathLike) -> dict | None:
    path = Path(out_dir) / "summary.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------------------
# The run


@dataclass
class RunPaths:
    out: Path

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.ckpt"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def model(self) -> Path:
        return self.out / "model.safetensors"

    @property
    def metrics(self) -> Path:
        return self.out / "metrics.csv"

    @property
    def summary(self) -> Path:
        return self.out / "summary.json"

    @property
    def curves(self) -> Path:
        return self.out / "curves.png"

    @property
    def config(self) -> Path:
        return self.out / "config.yaml"


def _make_checkpoint_io_class():
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        """Checkpoints written beside their target, fsynced and renamed (mambava.fileio.atomic_path).
        Lightning's own writer stages the file in the system temporary folder and moves it across file
        systems, which on a full disk leaves a truncated best.ckpt in place of the good one."""

        def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
            if storage_options is not None:
                raise TypeError("storage_options are not supported by AtomicCheckpointIO")
            atomic_torch_save(checkpoint, path)

    return AtomicCheckpointIO


def check_resume_checkpoint(path: Path) -> None:
    """MambavaError (one line, saying what to do) unless `path` is a complete Lightning checkpoint."""
    if not path.is_file():
        raise MambavaError(
            f"{path}: no checkpoint to resume from (none written yet, or removed); "
            f"run again without --resume to start from the beginning"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        complete = isinstance(checkpoint, dict) and {"state_dict", "epoch", "optimizer_states"} <= checkpoint.keys()
    except Exception as error:  # torch reports a truncated zip as a RuntimeError, a bad pickle as others
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        complete = False
    else:
        reason = "not a training checkpoint"
    if not complete:
        raise MambavaError(
            f"{path}: unreadable checkpoint, cannot resume ({reason}); restore it, or delete it and run again "
            f"without --resume to start from the beginning"
        )


def build_trainer(cfg: TrainConfig, paths: RunPaths, callbacks: Sequence = ()):
    """The Lightning Trainer of a run: checkpoints (best by val P_VA, last every epoch), loggers, progress."""
    L = _lightning()
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger

    best = ModelCheckpoint(
        dirpath=paths.checkpoints, filename="best", monitor=MONITOR, mode="max", save_top_k=1,
        auto_insert_metric_name=False, enable_version_counter=False,
    )
    # The latest epoch, every epoch (monitor None + top 1 = keep the newest; Lightning's save_last only follows
    # a top-k save, which a monitored callback skips when the score did not improve).
    last = ModelCheckpoint(
        dirpath=paths.checkpoints, filename="last", monitor=None, save_top_k=1, every_n_epochs=1,
        save_on_train_epoch_end=True, enable_version_counter=False,
    )
    loggers = [CSVLogger(paths.out, name="logs", version=None)]
    if importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(paths.out, name="tensorboard", default_hp_metric=False))
    all_callbacks = [_classes()["EpochLog"](paths.metrics), *callbacks, best, last]
    if cfg.progress_bar:
        all_callbacks.append(TQDMProgressBar(refresh_rate=1))
    return L.Trainer(
        max_epochs=cfg.epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy=cfg.strategy,
        precision=cfg.precision,
        gradient_clip_val=cfg.grad_clip or None,
        gradient_clip_algorithm="norm",
        check_val_every_n_epoch=cfg.val_every_n_epochs,
        callbacks=all_callbacks,
        plugins=[_classes()["AtomicCheckpointIO"]()],
        logger=loggers,
        log_every_n_steps=1,
        deterministic=cfg.deterministic,
        use_distributed_sampler=False,
        enable_progress_bar=cfg.progress_bar,
        enable_model_summary=cfg.progress_bar,
        num_sanity_val_steps=0,
        default_root_dir=str(paths.out),
    )


def _info(message: str) -> None:
    from lightning.pytorch.utilities import rank_zero_info

    rank_zero_info(message)


def train(cfg: TrainConfig, resume: bool | str = False, callbacks: Sequence = ()) -> dict | None:
    """Run (or resume) one training run; returns the summary (None if it was interrupted).

    `resume=True` continues from `out_dir/checkpoints/last.ckpt` (a finished run is skipped and its summary
    returned); a missing or unreadable last.ckpt is then a MambavaError, never a silent restart.
    `resume="auto"` (cross-validation) resumes when last.ckpt exists and starts the run otherwise. Without
    resume, an out_dir that already holds a run is an error."""
    L = _lightning()
    cfg.check()
    paths = RunPaths(Path(cfg.out_dir))
    finished = read_summary(paths.out)
    if resume and finished and finished.get("finished"):
        _info(f"{paths.out}: finished run, skipped (best val P_VA {finished['best']['p_va']:.4f})")
        return finished
    if not resume and (paths.last.exists() or paths.summary.exists()):
        raise MambavaError(f"{paths.out}: holds a previous run; pass --resume to continue it, or choose another out_dir")
    if resume and (resume != "auto" or paths.last.exists()):
        check_resume_checkpoint(paths.last)
    ckpt_path = str(paths.last) if resume and paths.last.exists() else None
    if ckpt_path and paths.config.is_file():
        _warn_config_changes(paths.config, cfg)

    fold_data = load_fold_data(cfg)
    if fold_data.dim != cfg.model["input_dim"]:
        raise MambavaError(
            f"{cfg.data.features}: features are {fold_data.dim}-d but model.input_dim is {cfg.model['input_dim']} "
            f"(--set model.input_dim={fold_data.dim})"
        )
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = _classes()["VAModule"](cfg.to_dict())
    datamodule = _classes()["VADataModule"](cfg, fold_data)
    trainer = build_trainer(cfg, paths, callbacks)
    if trainer.is_global_zero:
        paths.out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, paths.config)
    # The validation scores are synced by ConcordanceCCC itself; Lightning cannot know and suggests sync_dist.
    warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('val/")
    started = time.monotonic()
    if ckpt_path:
        _info(f"resuming from {ckpt_path}")
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except Diverged as error:
        raise MambavaError(_diverged_message(error, paths)) from None
    except OSError as error:  # e.g. Lightning's own logs on a full disk: one line naming the run folder
        if is_output_failure(error, paths.out):
            raise output_error(error, paths.out) from None
        raise
    if trainer.interrupted:
        return None
    summary = None
    if trainer.is_global_zero:
        summary = finish_run(cfg, paths, module, fold_data, trainer, time.monotonic() - started)
    trainer.strategy.barrier()
    return summary if summary is not None else read_summary(paths.out)


_RUNTIME_KEYS = {"out_dir", "devices", "strategy", "accelerator", "progress_bar", "data.num_workers", "eval_batch_size"}


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _warn_config_changes(saved_path: Path, cfg: TrainConfig) -> None:
    """A resumed run whose config differs from the one it started with (other than where/how it runs)."""
    try:
        saved = _flatten(yaml.safe_load(saved_path.read_text()) or {})
    except (OSError, yaml.YAMLError):
        return
    now = _flatten(cfg.to_dict())
    changed = sorted(k for k in set(saved) | set(now) if k not in _RUNTIME_KEYS and saved.get(k) != now.get(k))
    if changed:
        warnings.warn(
            f"{saved_path}: resuming with a config that differs from the run's: "
            + ", ".join(f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:8]),
            stacklevel=3,
        )


def finish_run(cfg: TrainConfig, paths: RunPaths, module, fold_data: FoldData, trainer, wall_s: float) -> dict:
    """After fit: export the best model to model.safetensors, write summary.json and curves.png."""
    from mambava.temporal_models import count_parameters, save_temporal_model

    state = torch.load(paths.best, map_location="cpu", weights_only=True)["state_dict"]
    model = module.model.to("cpu").float()
    model.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
    save_temporal_model(model, paths.model)
    rows = read_metrics(paths.metrics)
    validated = [r for r in rows if r.get("val_p_va") is not None]
    best_row = max(validated, key=lambda r: r["val_p_va"]) if validated else None

    def scores(row):
        if row is None:
            return None
        return {
            "epoch": row["epoch"], "step": row["step"], "ccc_valence": row["val_ccc_valence"],
            "ccc_arousal": row["val_ccc_arousal"], "p_va": row["val_p_va"],
        }

    summary = {
        "finished": True,
        "fold": cfg.data.fold,
        "kind": cfg.model["kind"],
        "protocol": cfg.protocol,
        "best": scores(best_row),
        "last": scores(validated[-1] if validated else None),
        "epochs": cfg.epochs,
        "global_step": trainer.global_step,
        "parameters": count_parameters(model),
        "train_videos": len(fold_data.train),
        "validation_videos": len(fold_data.validation),
        "train_windows": len(trainer.datamodule.train_set),
        "validation_frames": int(sum(len(fold_data.labels[n]) for n in fold_data.validation)),
        "validation_windows": len(trainer.datamodule.val_set) if cfg.protocol == "authors" else None,
        "skipped_videos": fold_data.skipped,
        "train_time_s": round(rows[-1]["time_s"], 1) if rows and rows[-1].get("time_s") is not None else round(wall_s, 1),
        "outputs": {
            "best_checkpoint": str(paths.best), "last_checkpoint": str(paths.last), "model": str(paths.model),
            "metrics": str(paths.metrics), "curves": str(paths.curves), "config": str(paths.config),
        },
        "config": cfg.to_dict(),
    }
    plot_curves(rows, paths.curves, title=f"{cfg.model['kind']} fold {cfg.data.fold}")
    _write_json(paths.summary, summary)
    return summary
