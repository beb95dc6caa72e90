"""The training config: `TrainConfig` (the paper's recipe as defaults, `configs/paper.yaml`), YAML + `--set`
overrides (OmegaConf structured configs, `mambava.core.config`), the named recipes (`paper`, `authors`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from mambava.core import config as schema
from mambava.core.errors import MambavaError
from mambava.core.fileio import atomic_open
from mambava.temporal import resolve_model_config

PAPER_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "paper.yaml"
# Recipes by name: (config of folds 1-5, config of fold 0). The authors' code uses other values on fold 0.
RECIPES = {
    "paper": (PAPER_CONFIG, PAPER_CONFIG),
    "authors": (PAPER_CONFIG.parent / "authors.yaml", PAPER_CONFIG.parent / "authors_fold0.yaml"),
}
SCHEDULES = ("cosine", "warm_restarts")
PROTOCOLS = ("videos", "authors")
TAILS = ("cover", "drop")
SPANS = ("video", "crops")
LOSSES = ("ccc", "authors")
VAL_CHECKS = ("epoch", "authors")
PRECISIONS = ("32", "bf16-mixed", "16-mixed")
MONITOR = "val/p_va"


@dataclass
class DataConfig:
    """Where the data comes from and how it is cut.

    `features`: a feature store folder (`mambava.data.store.FeatureStore`). `annotations`: an Aff-Wild2 root
    (`VA_Estimation_Challenge/{Train_Set,Validation_Set}/<video>.txt`, or that folder itself), or any folder of
    `<video>.txt` files in the same `valence,arousal` format (searched recursively). `folds`: a folds file
    (`mambava.data.folds.save_folds`); without one the folds are made from the Aff-Wild2 splits with
    `make_folds(train, validation, n_folds, fold_seed)`. `fold` 0 is the official split, 1..n_folds the
    cross-validation folds. `audio_features`: an audio feature store (`mambava extract --audio`), joined to
    `features` per frame (visual, audio, audio mask: `mambava.data.store.AudioVisualStore`) for a fusion model.
    `extra_features`: more feature stores of the same videos (the same backbone on another aligner's crops):
    the training windows are cut from every store (each training video once per store), validation reads
    `features` only. `span`: the frames of a video that are cut into training windows, "video" (all of them,
    ours) or "crops" (the authors': from its first frame with a face up to, not including, its last:
    `mambava.data.windows.crop_span`). `resample`: put an entry stored at another frame rate on the model's
    grid (`model.fps`) for training and whole-video validation (true, ours), or cut its stored frames as they
    are (false: the authors', who never resample).
    """

    features: str | None = None
    extra_features: list[str] = field(default_factory=list)
    audio_features: str | None = None
    annotations: str | None = None
    folds: str | None = None
    fold: int = 0
    n_folds: int = 5
    fold_seed: int = 0
    window: int = 300
    stride: int = 200
    tails: str = "cover"
    span: str = "video"
    resample: bool = True
    num_workers: int = 0


@dataclass
class TrainConfig:
    """Everything a training run needs; the defaults are the paper's recipe (see the module docstring).

    `model` holds the temporal model: `kind` ("mamba_va" the paper model, or an ablation baseline "tcn",
    "mamba", "mlp", "transformer"; or "fusion", the audio-visual model, with `data.audio_features`) and its sizes
    (`mambava.temporal.default_model_config`). Missing model keys
    take their defaults; unknown keys are an error.

    `loss`: "ccc" ((1 - CCC_v) + (1 - CCC_a), population moments, frames with -5 in either label left out:
    `mambava.core.metrics.ccc_loss`) or "authors" (their CCCLoss on the frames whose valence is not -5:
    `mambava.core.metrics.authors_ccc_loss`). `val_check`: when validation runs, "epoch" (every
    `val_every_n_epochs` epochs, at the epoch's end) or "authors" (four times an epoch, on the weights before the
    update of iterations ⌊N/4⌋+1, 2(⌊N/4⌋+1), 3(⌊N/4⌋+1) and N, the best of all selecting the model:
    `mambava.training.callbacks.validate_like_the_authors`).
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
    loss: str = "ccc"
    protocol: str = "videos"
    val_check: str = "epoch"
    precision: str = "32"
    accelerator: str = "auto"
    devices: Any = 1
    num_nodes: int = 1  # machines of a multi-node run (torchrun or SLURM starts one process per device on each)
    strategy: str = "auto"
    seed: int = 0
    deterministic: bool = False
    val_every_n_epochs: int = 1
    eval_batch_size: int = 32
    progress_bar: bool = True
    out_dir: str = "runs/mambava"

    def __post_init__(self) -> None:
        if isinstance(self.data, Mapping):
            self.data = DataConfig(**schema.to_dict(schema.merge(schema.structured(DataConfig), self.data, "data")))
        self.model = resolve_model_config(self.model)  # the model section's own schema (`model.kind`'s keys)

    def to_dict(self) -> dict:
        return schema.to_dict(schema.structured(self))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> "TrainConfig":
        """A config from nested values over the defaults; MambavaError naming `source` and the key."""
        return _with_source(source, lambda: _build(schema.merge(schema.structured(cls), values)))

    def check(self) -> None:
        """Value checks that do not need the data (MambavaError naming the key)."""
        problems = []
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for key in ("batch_size", "epochs", "eval_batch_size", "val_every_n_epochs", "num_nodes"):
            if getattr(self, key) < 1:
                problems.append(f"{key} must be >= 1, got {getattr(self, key)}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            problems.append(f"warmup_epochs must be in 0..epochs, got {self.warmup_epochs}")
        if self.lr <= 0 or self.weight_decay < 0 or self.grad_clip < 0 or self.adam_eps <= 0:
            problems.append("lr and adam_eps must be > 0, weight_decay and grad_clip >= 0")
        for key, allowed, value in (
            ("schedule", SCHEDULES, self.schedule),
            ("protocol", PROTOCOLS, self.protocol),
            ("data.tails", TAILS, self.data.tails),
            ("data.span", SPANS, self.data.span),
            ("loss", LOSSES, self.loss),
            ("val_check", VAL_CHECKS, self.val_check),
        ):
            if value not in allowed:
                problems.append(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
        if self.val_check == "authors" and self.val_every_n_epochs != 1:
            problems.append("val_check: authors validates four times every epoch, so val_every_n_epochs must be 1")
        d = self.data
        if not 0 < d.stride <= d.window:
            problems.append(f"data.stride must be in 1..data.window, got window={d.window}, stride={d.stride}")
        if d.num_workers < 0:
            problems.append("data.num_workers must be >= 0")
        if problems:
            raise MambavaError("; ".join(problems))


def _build(conf) -> TrainConfig:
    return TrainConfig(**schema.to_dict(conf))


def _with_source(source: str, make):
    try:
        return make()
    except MambavaError as error:
        raise MambavaError(f"{source}: {error}") from None


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """A TrainConfig from a YAML file (None: the paper defaults) plus `key=value` overrides (dotted keys, values
    parsed as YAML). OmegaConf merges each over the `TrainConfig` schema (`mambava.core.config`); an unknown key or
    a bad value is a MambavaError naming the key and the file (or the --set option)."""
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
        tree = loaded

    def merged(conf, values, where):  # checked after each layer, so an error names the layer that caused it
        conf = _with_source(where, lambda: schema.merge(conf, values))
        _with_source(where, lambda: _build(conf))
        return conf

    conf = merged(schema.structured(TrainConfig), tree, source)
    for item in overrides:
        conf = merged(conf, schema.dotted(item), f"--set {item}")
    cfg = _build(conf)
    _with_source(source, cfg.check)
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
    return [f"{key}={json.dumps(value)}" for key, value in flatten_keys(tree).items()]


def load_recipe(recipe: str, overrides: Sequence[str] = (), fold: int | None = None) -> TrainConfig:
    """A named recipe's config for `fold` (default: the fold the overrides set, else 0), overrides applied
    on top of the fold's file."""
    if fold is None:
        fold = load_config(recipe_config(recipe, 1), overrides).data.fold
    return load_config(recipe_config(recipe, fold), [*overrides, f"data.fold={fold}"])


def save_config(cfg: TrainConfig, path: str | os.PathLike) -> None:
    with atomic_open(path, "w") as handle:
        yaml.safe_dump(cfg.to_dict(), handle, sort_keys=False, default_flow_style=None, width=120)


def flatten_keys(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_keys(value, name + "."))
        else:
            flat[name] = value
    return flat
