"""Distillation: a small student ViT trained to reproduce a teacher's per-frame CLS features, on Lightning.

    from mambava.backbone.distill import DistillConfig, distill, student_config
    teacher = load_encoder("encoder.safetensors")
    result = distill(videos, teacher, student_config(teacher.config, "vit_tiny_patch16_112"), DistillConfig(),
                     out="runs/distill", heldout=heldout_videos)
    # -> runs/distill/student.safetensors, which `extract`, `predict` and `stream` load as any backbone

- Targets: the teacher's features of each training crop (the features `extract` stores), computed once before
  training (or read from a feature store the teacher filled); the student sees the crops at its own size.
- Loss: (1 - cosine) + mse_weight * MSE / (the targets' mean variance per channel), so the MSE term does not
  depend on the teacher's feature scale. bf16 mixed precision where the hardware runs it (Lightning).
- The student ends in a linear adapter (`ViTConfig.out_dim` = the teacher's feature width) trained jointly;
  with `adapter="lstsq"` it is then refitted in closed form (ridge least squares of the teacher's features on
  the student's normed CLS tokens over the training crops), the linear map of least squared error. The saved
  file is an ordinary mambava encoder whose features have the teacher's width and meaning, so a temporal model
  trained on the teacher's features runs on it unchanged.
- The weights kept are those of the best held-out cosine (epochs are scored on held-out videos' crops).
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from mambava.backbone.extractor import FeatureExtractor, normalize, resize_crop
from mambava.backbone.finetune import BackboneTrainConfig, adamw_warmup_cosine, backbone_trainer, evenly_spaced
from mambava.backbone.vit import ViTConfig, ViTEncoder, vit_config
from mambava.core.errors import MambavaError
from mambava.core.fileio import atomic_open, make_folder
from mambava.core.runtime import resolve_device
from mambava.data.affwild2 import read_crop
from mambava.data.crops import CropVideo

STUDENT_FILE = "student.safetensors"


@dataclass
class DistillConfig(BackboneTrainConfig):
    """Student training settings (AdamW, warmup + cosine); `precision` is Lightning's."""

    lr: float = 1e-3
    weight_decay: float = 0.05
    epochs: int = 10
    batch_size: int = 64
    frames_per_video: int | None = 256  # evenly spaced crops per video (None: every crop)
    hflip: bool = False  # the targets are the teacher's features of the crop as it is
    mse_weight: float = 1.0
    adapter: str = "lstsq"  # "lstsq": refit the adapter in closed form after training; "joint": keep the trained one
    ridge: float = 1e-4  # of the closed form, relative to the mean eigenvalue of the students' feature covariance
    preload_mb: int = 1024  # decode the crops once into memory when they fit in this many MB
    precision: str = "bf16-mixed"

    def __post_init__(self):
        if self.adapter not in ("lstsq", "joint"):
            raise MambavaError(f"distill: adapter must be lstsq or joint, got {self.adapter!r}")
        if self.epochs < 1:
            raise MambavaError(f"distill: epochs must be at least 1, got {self.epochs}")


def student_config(teacher: ViTConfig, arch: str | ViTConfig | None = None, **overrides) -> ViTConfig:
    """The student's shape: a preset (`vit_tiny_patch16_112`, ...) or a ViTConfig, or the teacher's shape when
    None, with keyword overrides (img_size, embed_dim, depth, num_heads, ...). Its adapter maps onto the
    teacher's feature width; it normalises crops as the teacher does."""
    base = vit_config(arch) if arch is not None else replace(teacher, out_dim=0, drop_path=0.0)
    given = {k: v for k, v in overrides.items() if v is not None}
    cfg = replace(base, **given)
    name = cfg.name if arch is not None and not given else f"student_d{cfg.embed_dim}_l{cfg.depth}_{cfg.img_size}px"
    return replace(cfg, out_dim=teacher.feature_dim, mean=teacher.mean, std=teacher.std, name=name)


# --------------------------------------------------------------------------------------------------------------
# The adapter's closed form


def fit_adapter(h: torch.Tensor, t: torch.Tensor, ridge: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge least squares t ~ h @ W.T + b over rows (h: (N, d) student features, t: (N, D) teacher features):
    W = (Hc'Hc + lam I)^-1 Hc'Tc on the centred data (the bias unpenalised), b = mean(t) - W mean(h), with
    lam = ridge * trace(Hc'Hc) / d. Returns (W (D, d), b (D,)) in float32; computed in float64."""
    h64, t64 = h.double(), t.double()
    if h64.ndim != 2 or t64.ndim != 2 or len(h64) != len(t64) or len(h64) < 2:
        raise MambavaError(
            f"adapter fit: need (N, d) and (N, D) with N >= 2 rows, got {tuple(h.shape)} and {tuple(t.shape)}"
        )
    hm, tm = h64.mean(0), t64.mean(0)
    hc, tc = h64 - hm, t64 - tm
    gram = hc.T @ hc
    lam = ridge * float(torch.trace(gram)) / gram.shape[0]
    gram = gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype)
    w = torch.linalg.solve(gram, hc.T @ tc).T  # (D, d)
    return w.float(), (tm - w @ hm).float()


# --------------------------------------------------------------------------------------------------------------
# Data


def crop_items(videos: list[CropVideo], frames_per_video: int | None) -> list[tuple[str, int, Path]]:
    """(video, 0-based frame row, crop path) of at most `frames_per_video` evenly spaced crops per video."""
    items = []
    for video in videos:
        if video.error:
            raise MambavaError(video.error)
        for k in evenly_spaced(len(video.frames), frames_per_video):
            items.append((video.name, int(video.frames[k]) - 1, video.path(int(k))))
    return items


class CropTargets(Dataset):
    """(uint8 (3, S, S) crop, float32 target row) over crop paths; the crops decoded once into memory
    (`preload`) or read per item."""

    def __init__(self, paths: list[Path], targets: np.ndarray | None, size: int, preload: bool = False):
        self.paths, self.targets, self.size = paths, targets, size
        self.images = torch.stack([self._read(i) for i in range(len(paths))]) if preload and paths else None

    def _read(self, index: int) -> torch.Tensor:
        return torch.from_numpy(resize_crop(read_crop(self.paths[index]), self.size)).permute(2, 0, 1)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = self.images[index] if self.images is not None else self._read(index)
        target = self.targets[index] if self.targets is not None else np.zeros(0, np.float32)
        return image, torch.from_numpy(np.asarray(target, np.float32))


def _fits(n: int, size: int, limit_mb: int) -> bool:
    return n * size * size * 3 <= limit_mb * 2**20


def _loader(dataset: Dataset, config: DistillConfig, train: bool) -> DataLoader:
    workers = 0 if getattr(dataset, "images", None) is not None else config.num_workers
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=train,
        drop_last=train and len(dataset) > config.batch_size,
        num_workers=workers,
        persistent_workers=train and workers > 0,
    )


def teacher_features(
    teacher: ViTEncoder | FeatureExtractor,
    paths: list[Path],
    config: DistillConfig,
    device: str | torch.device = "cpu",
    precision: str = "auto",
) -> np.ndarray:
    """The teacher's features (N, D) of crops, as `extract` computes them (its preprocessing, bf16 where fast)."""
    extractor = (
        teacher
        if isinstance(teacher, FeatureExtractor)
        else FeatureExtractor(teacher, batch_size=config.batch_size, device=device, precision=precision)
    )
    data = CropTargets(paths, None, extractor.config.img_size)
    loader = DataLoader(data, batch_size=config.batch_size, num_workers=config.num_workers)
    out = np.empty((len(paths), extractor.dim), np.float32)
    done = 0
    for images, _ in loader:
        out[done : done + len(images)] = extractor.features_from_resized(images).cpu().numpy()
        done += len(images)
    return out


def store_features(store, items: list[tuple[str, int, Path]]) -> np.ndarray:
    """The rows of `items` from a feature store the teacher filled (`extract`); a row the store marks as
    without a face is an error (its stored value is a neighbour's, not this crop's feature)."""
    rows: dict[str, list[int]] = {}
    for name, row, _ in items:
        rows.setdefault(name, []).append(row)
    got: dict[tuple[str, int], np.ndarray] = {}
    for name, wanted in rows.items():
        if not store.has(name):
            raise MambavaError(f"{store.root}: no features for video {name!r} (extract it with the teacher first)")
        features, mask = store.read(name).window(0, store.n_frames(name))
        bad = [r for r in wanted if r >= len(features) or not mask[r]]
        if bad:
            raise MambavaError(f"{store.root / name}: frame {bad[0] + 1} has a crop but no stored feature")
        for r in wanted:
            got[(name, r)] = np.asarray(features[r], np.float32)
    return np.stack([got[(name, row)] for name, row, _ in items])


# --------------------------------------------------------------------------------------------------------------
# The Lightning module


def distill_loss(pred: torch.Tensor, target: torch.Tensor, target_var: float, mse_weight: float) -> torch.Tensor:
    cos = F.cosine_similarity(pred, target, dim=-1)
    return (1 - cos).mean() + mse_weight * F.mse_loss(pred, target) / target_var


class FeatureDistiller(L.LightningModule):
    """A student ViT (with its adapter) regressed onto the teacher's features; logs the held-out cosine."""

    def __init__(self, student: ViTEncoder, config: DistillConfig, target_var: float):
        super().__init__()
        self.student = student
        self.cfg = config
        self.target_var = max(float(target_var), 1e-12)
        self._cos_sum = self._cos_n = 0.0
        self.train()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.student(normalize(images, self.student.config.mean, self.student.config.std)).float()

    def training_step(self, batch, batch_idx):
        images, target = batch
        loss = distill_loss(self(images), target, self.target_var, self.cfg.mse_weight)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(images))
        return loss

    def validation_step(self, batch, batch_idx):
        images, target = batch
        cos = F.cosine_similarity(self(images), target, dim=-1)
        self._cos_sum += float(cos.sum())
        self._cos_n += len(cos)

    def on_validation_epoch_end(self):
        self.log("val_cosine", self._cos_sum / max(self._cos_n, 1), prog_bar=True)
        self._cos_sum = self._cos_n = 0.0

    def configure_optimizers(self):
        return adamw_warmup_cosine(self.student, self.cfg, self.cfg.lr, self.trainer)


class _KeepBest(L.Callback):
    """The student's weights at the best held-out cosine (in memory), and every epoch's scores."""

    def __init__(self):
        self.best = -math.inf
        self.state: dict | None = None
        self.history: list[dict] = []

    def on_validation_end(self, trainer, module):
        if trainer.sanity_checking or "val_cosine" not in trainer.callback_metrics:
            return
        cos = float(trainer.callback_metrics["val_cosine"])
        loss = trainer.callback_metrics.get("train_loss_epoch")
        self.history.append(
            {"epoch": trainer.current_epoch, "val_cosine": cos, "train_loss": float(loss) if loss is not None else None}
        )
        if cos > self.best:
            self.best, self.state = cos, copy.deepcopy(module.student.state_dict())


# --------------------------------------------------------------------------------------------------------------
# Running it


@torch.inference_mode()
def student_cls(student: ViTEncoder, images: torch.Tensor | DataLoader, batch_size: int = 256) -> torch.Tensor:
    """The student's normed CLS tokens, before the adapter (N, embed_dim), float32 on the CPU, of uint8 images
    (N, 3, S, S) or of the (image, target) batches of a DataLoader; run on the student's device."""
    device = student.cls_token.device
    batches = (
        (images[i : i + batch_size] for i in range(0, len(images), batch_size))
        if isinstance(images, torch.Tensor)
        else (batch[0] for batch in images)
    )
    out = []
    for batch in batches:
        x = student.embed(normalize(batch.to(device), student.config.mean, student.config.std))
        for block in student.blocks:
            x = block(x)
        out.append(student.norm(x[:, 0]).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, student.embed_dim)


def _cls_of(student: ViTEncoder, data: CropTargets, config: DistillConfig) -> torch.Tensor:
    """student_cls over a dataset: from memory when preloaded, else read by DataLoader workers in order."""
    if data.images is not None:
        return student_cls(student, data.images)
    return student_cls(student, DataLoader(data, batch_size=256, num_workers=config.num_workers))


def mean_cosine(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    a, b = (torch.tensor(np.asarray(x, np.float64)) for x in (a, b))  # copies: a store's rows are read-only
    return float(F.cosine_similarity(a, b, dim=-1).mean())


def explained_variance(pred: np.ndarray, target: np.ndarray, mean: np.ndarray) -> float:
    """1 - squared error / the targets' squared deviation from `mean` (the training targets' mean): the
    share of the teacher's frame-to-frame variation the student reproduces. Cosine alone flatters: a feature
    with a large constant part has a high cosine with the constant."""
    pred, target = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    return float(1 - ((pred - target) ** 2).sum() / max(((target - mean) ** 2).sum(), 1e-300))


@dataclass
class DistillResult:
    student_path: Path
    heldout_cosine: float  # mean cosine of the saved student's features with the teacher's, held-out crops
    train_cosine: float
    joint_heldout_cosine: float  # with the jointly trained adapter, before the closed-form refit
    heldout_explained: float  # explained_variance on the held-out crops
    mean_cosine: float  # cosine of the training targets' mean with the held-out targets: what a constant scores
    history: list[dict]
    teacher_flops: int
    student_flops: int
    train_crops: int
    heldout_crops: int
    student_config: dict = field(default_factory=dict)


def distill(
    train: list[CropVideo],
    teacher: ViTEncoder,
    student: ViTConfig | ViTEncoder,
    config: DistillConfig | None = None,
    out: str | os.PathLike = "runs/distill",
    heldout: list[CropVideo] | None = None,
    teacher_store=None,
    progress: bool = True,
) -> DistillResult:
    """Train a student on the crops of `train` to reproduce `teacher`'s features, score it on the crops of
    `heldout`, and write OUT/student.safetensors and OUT/distill.json. `teacher_store`: a FeatureStore holding
    the teacher's features of these videos (skips running the teacher over the crops)."""
    config = config or DistillConfig()
    out = Path(out)
    make_folder(out)
    L.seed_everything(config.seed, workers=True, verbose=False)
    train_items = crop_items(train, config.frames_per_video)
    held_items = crop_items(heldout or [], config.frames_per_video)
    if len(train_items) < 2:
        names = ", ".join(v.name for v in train[:3]) or "no videos"
        raise MambavaError(f"distill: fewer than 2 training crops ({names})")
    model = student if isinstance(student, ViTEncoder) else ViTEncoder(student)
    if model.config.feature_dim != teacher.feature_dim:
        raise MambavaError(
            f"distill: the student gives {model.config.feature_dim}-d features, the teacher "
            f"{teacher.feature_dim}-d (give the student out_dim={teacher.feature_dim})"
        )
    device = resolve_device("cpu" if config.accelerator == "cpu" else "auto")

    def targets(items):
        if not items:
            return np.zeros((0, teacher.feature_dim), np.float32)
        if teacher_store is not None:
            return store_features(teacher_store, items)
        return teacher_features(teacher, [p for *_, p in items], config, device)

    t_train, t_held = targets(train_items), targets(held_items)
    size = model.config.img_size
    train_data = CropTargets(
        [p for *_, p in train_items], t_train, size, _fits(len(train_items), size, config.preload_mb)
    )
    held_data = CropTargets([p for *_, p in held_items], t_held, size, _fits(len(held_items), size, config.preload_mb))
    target_var = float(t_train.var(0).mean())

    module = FeatureDistiller(model, config, target_var)
    keep = _KeepBest()
    trainer = backbone_trainer(config, out, [keep], progress, validate=bool(held_items))
    trainer.fit(module, _loader(train_data, config, True), _loader(held_data, config, False) if held_items else None)
    if keep.state is not None:
        model.load_state_dict(keep.state)
    model = model.float().to(device).eval()
    h_train = _cls_of(model, train_data, config)
    h_held = _cls_of(model, held_data, config) if held_items else None
    model = model.cpu()
    adapter = model.adapter

    def features(h):
        with torch.no_grad():
            return adapter(h).numpy()

    joint_held = mean_cosine(features(h_held), t_held) if h_held is not None else float("nan")
    if config.adapter == "lstsq":
        w, b = fit_adapter(h_train, torch.from_numpy(t_train), config.ridge)
        with torch.no_grad():
            adapter.weight.copy_(w)
            adapter.bias.copy_(b)
    result = DistillResult(
        out / STUDENT_FILE,
        mean_cosine(features(h_held), t_held) if h_held is not None else float("nan"),
        mean_cosine(features(h_train), t_train),
        joint_held,
        explained_variance(features(h_held), t_held, t_train.mean(0)) if h_held is not None else float("nan"),
        mean_cosine(np.broadcast_to(t_train.mean(0), t_held.shape), t_held) if h_held is not None else float("nan"),
        keep.history,
        teacher.config.flops(),
        model.config.flops(),
        len(train_items),
        len(held_items),
        asdict(model.config),
    )
    if trainer.is_global_zero:
        model.save(result.student_path)
        with atomic_open(out / "distill.json") as handle:
            json.dump(
                {
                    "config": asdict(config),
                    **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()},
                },
                handle,
                indent=1,
            )
    return result
