"""Partial-freeze fine-tuning of the ViT (the freezing is the paper's, §3.1) on frame-level valence/arousal (the
objective and head are ours: the paper names neither), on Lightning.

    from mambava.backbone.finetune import FinetuneConfig, finetune
    finetune("affwild2/", load_encoder("mae_pretrain_vit_large.pth"), FinetuneConfig(), out="runs/vit_ft")
    # -> runs/vit_ft/encoder.safetensors, which `mambava extract --checkpoint` reads

- Frozen: the patch embedding (with the CLS token and position embedding) and the first `freeze_blocks`
  transformer blocks (16 of ViT-L's 24, as the paper). Trained: the remaining blocks, the final norm and a
  small head (Linear(D, 256) -> GELU -> Linear(256, 2)), with the CCC loss (1 - CCC_v) + (1 - CCC_a).
  The frozen prefix runs under no_grad (no activations kept), and the frozen parameters are not given to the
  optimiser, so they stay bit-identical.
- Data: Aff-Wild2 crops with their frame's label (frames labelled -5 and frames without a crop are left
  out), from the official Train_Set (training) and Validation_Set (model selection by validation P_VA).
  Consecutive frames are near-duplicates: `frames_per_video` keeps that many evenly spaced frames per video.
- bf16 mixed precision and DDP come from Lightning (`precision`, `devices`, `strategy`).
- `pretrain_mae` (optional): MAE's masked-reconstruction objective on face crops, to adapt MAE to faces
  before fine-tuning; it writes a facebookresearch/mae-format checkpoint that `load_encoder` reads.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from mambava.backbone.augment import AlignJitter, warp_crop
from mambava.backbone.extractor import normalize, resize_crop
from mambava.backbone.vit import Block, ViTConfig, ViTEncoder, sincos_pos_embed
from mambava.backbone.weights import read_state_dict
from mambava.core.ccc_metric import ConcordanceCCC
from mambava.core.errors import MambavaError
from mambava.core.fileio import atomic_open, atomic_torch_save, make_folder
from mambava.core.metrics import ccc_loss, valid_mask
from mambava.core.schedule import warmup_cosine
from mambava.data.affwild2 import CROPS_DIR, AffWild2, read_crop
from mambava.data.crops import CropVideo, find_crop_videos, scan_crop_folder

log = logging.getLogger(__name__)

ENCODER_FILE = "encoder.safetensors"


@dataclass
class BackboneTrainConfig:
    """Settings shared by fine-tuning and MAE pretraining (Lightning, data, optimiser)."""

    lr: float = 1e-4  # peak, AdamW, linear warmup then cosine decay
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    epochs: int = 5
    batch_size: int = 64
    frames_per_video: int | None = 512  # evenly spaced frames per video (None: every usable frame)
    hflip: bool = True  # random horizontal flip of training crops
    # random shift (px at 112), log-scale and rotation (degrees) ranges for training crops (`AlignJitter`): 0
    # keeps the crops as aligned; a few px teaches features that do not move with an aligner's per-face error
    align_jitter: tuple[float, float, float] = (0.0, 0.0, 0.0)
    precision: str = "bf16-mixed"
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    num_workers: int = 4
    seed: int = 0
    max_steps: int = -1  # stop after this many optimiser steps (-1: run all epochs)


@dataclass
class FinetuneConfig(BackboneTrainConfig):
    """Fine-tuning settings; the defaults follow the paper where it gives a value (freeze 16 blocks)."""

    freeze_blocks: int = 16
    head_lr: float = 1e-3
    drop_path: float = 0.1  # stochastic depth in the trained blocks
    head_hidden: int = 256
    # more crop roots of the same videos (another aligner's `cropped_aligned/`, an Aff-Wild2 root or a crop tree
    # `<root>/<video>/`), labelled from the main root: each training video's frames are taken from every root,
    # so the backbone sees one face as several aligners crop it; validation stays on the main root's crops
    extra_crops: tuple[str, ...] = ()


@dataclass
class PretrainConfig(BackboneTrainConfig):
    """MAE pretraining settings (MAE's defaults: 75% masking, 8-block 512-d decoder, normalised-pixel loss)."""

    lr: float = 1.5e-4
    mask_ratio: float = 0.75
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    norm_pix_loss: bool = True


# --------------------------------------------------------------------------------------------------------------
# Freezing


def freeze_prefix(encoder: ViTEncoder, freeze_blocks: int) -> list[str]:
    """Freeze the patch embedding (+ CLS token, position embedding) and blocks [0, freeze_blocks); the rest
    trains. Returns the names of the trainable parameters."""
    if not 0 <= freeze_blocks <= len(encoder.blocks):
        raise MambavaError(f"freeze_blocks must be in 0..{len(encoder.blocks)}, got {freeze_blocks}")
    frozen = ("patch_embed.", "cls_token", "pos_embed") + tuple(f"blocks.{i}." for i in range(freeze_blocks))
    trainable = []
    for name, param in encoder.named_parameters():
        param.requires_grad_(not name.startswith(frozen))
        if param.requires_grad:
            trainable.append(name)
    return trainable


# --------------------------------------------------------------------------------------------------------------
# Data


def evenly_spaced(n: int, k: int | None) -> np.ndarray:
    """Indices of at most k evenly spaced items out of n."""
    if k is None or n <= k:
        return np.arange(n)
    return np.linspace(0, n - 1, k).round().astype(np.int64)


def extra_crops_dir(root: str | os.PathLike, video: str) -> Path:
    """A video's crop folder in an extra crop root: `root/cropped_aligned/<video>` when that folder exists
    (a dataset root), else `root/<video>` (a `cropped_aligned/` folder or any crop tree)."""
    root = Path(root)
    return (root / CROPS_DIR if (root / CROPS_DIR).is_dir() else root) / video


def labelled_frames(
    dataset: AffWild2, video: str, frames_per_video: int | None = None, folder: Path | None = None
) -> list[tuple[Path, np.ndarray]]:
    """(crop path, (valence, arousal)) of the frames of `video` that have a crop and a valid label, at most
    `frames_per_video` of them, evenly spaced; the crops from `folder` (default: the dataset's own)."""
    labels = dataset.read_annotation(video)
    folder = dataset.crops_dir(video) if folder is None else folder
    if not folder.is_dir():
        raise MambavaError(f"{folder}: no crop folder for video {video!r}")
    frames, files, suffix = scan_crop_folder(folder)
    crops = CropVideo(video, folder, frames, len(labels), files=files, suffix=suffix)
    keep = np.flatnonzero(frames <= len(labels))
    keep = keep[valid_mask(torch.from_numpy(labels[frames[keep] - 1])).numpy()]
    keep = keep[evenly_spaced(len(keep), frames_per_video)]
    return [(crops.path(k), labels[frames[k] - 1]) for k in keep]


class CropImages(Dataset):
    """(uint8 (3, S, S) crop, float32 (2,) label) for a list of (crop path, label) items."""

    def __init__(
        self, items: list[tuple[Path, np.ndarray]], size: int, hflip: bool = False, jitter: AlignJitter | None = None
    ):
        self.items = items
        self.size = size
        self.hflip = hflip
        self.jitter = jitter if jitter is not None and jitter.active else None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, label = self.items[index]
        crop = read_crop(path)
        if self.jitter is not None:  # on the stored crop, before the resize, as if the aligner had erred
            crop = warp_crop(crop, self.jitter.sample(crop.shape[0], lambda: torch.rand(4).numpy()))
        image = torch.from_numpy(resize_crop(crop, self.size)).permute(2, 0, 1)
        if self.hflip and torch.rand(()) < 0.5:
            image = image.flip(-1)
        return image, torch.from_numpy(np.asarray(label, np.float32))


def _loader(items, size: int, config: BackboneTrainConfig, train: bool) -> DataLoader:
    jitter = AlignJitter(*config.align_jitter) if train else None
    return DataLoader(
        CropImages(items, size, hflip=train and config.hflip, jitter=jitter),
        batch_size=config.batch_size,
        shuffle=train,
        drop_last=train and len(items) > config.batch_size,
        num_workers=config.num_workers,
        persistent_workers=config.num_workers > 0,
    )


def backbone_trainer(
    config: BackboneTrainConfig, out: Path, callbacks: list, progress: bool, validate: bool = True
) -> L.Trainer:
    return L.Trainer(
        max_epochs=config.epochs,
        max_steps=config.max_steps,
        accelerator=config.accelerator,
        devices=config.devices,
        strategy=config.strategy,
        precision=config.precision,
        callbacks=callbacks,
        logger=L.pytorch.loggers.CSVLogger(out, name="logs"),
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        gradient_clip_val=1.0,
        limit_val_batches=None if validate else 0,
        log_every_n_steps=10,
    )


def adamw_warmup_cosine(module: nn.Module, config: BackboneTrainConfig, lr: float, trainer: L.Trainer, extra_groups=()):
    """AdamW (no weight decay on biases, norms and 1-d/embedding-like tensors) with warmup + cosine per step."""
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if param.requires_grad:
            plain = param.ndim < 2 or name.split(".")[-1] in ("cls_token", "pos_embed", "mask_token")
            (no_decay if plain else decay).append(param)
    groups = [
        {"params": decay, "lr": lr, "weight_decay": config.weight_decay},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0},
        *extra_groups,
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]])
    total = max(1, int(trainer.estimated_stepping_batches))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, config.warmup_fraction))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


# --------------------------------------------------------------------------------------------------------------
# The Lightning module


class VARegressor(L.LightningModule):
    """ViT (frozen prefix) + small head -> (valence, arousal) per crop, trained with the CCC loss."""

    def __init__(self, encoder: ViTEncoder, config: FinetuneConfig):
        super().__init__()
        self.encoder = encoder
        self.cfg = config
        for i, block in enumerate(encoder.blocks):  # stochastic depth only where training happens
            block.drop_path = config.drop_path if i >= config.freeze_blocks else 0.0
        freeze_prefix(encoder, config.freeze_blocks)
        d, h = encoder.feature_dim, config.head_hidden
        self.head = nn.Sequential(nn.Linear(d, h), nn.GELU(), nn.Linear(h, 2)) if h else nn.Linear(d, 2)
        self.val_ccc = ConcordanceCCC()
        self.train()  # a loaded encoder comes in eval mode; Lightning keeps modules' modes as it finds them

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        enc, k = self.encoder, self.cfg.freeze_blocks
        x = normalize(images, enc.config.mean, enc.config.std)
        with torch.no_grad():  # the frozen prefix keeps no activations for backward
            x = enc.embed(x)
            for block in enc.blocks[:k]:
                x = block(x)
        for block in enc.blocks[k:]:
            x = block(x)
        return self.head(enc.cls_feature(x)).float()

    def training_step(self, batch, batch_idx):
        images, target = batch
        loss = ccc_loss(self(images), target)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(images), sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        images, target = batch
        self.val_ccc.update(self(images), target)

    def on_validation_epoch_end(self):
        ccc = self.val_ccc.compute()
        self.val_ccc.reset()
        # already over all ranks (ConcordanceCCC reduces its sums); sync_dist only averages equal values
        self.log_dict(
            {"val_ccc_v": ccc[0].float(), "val_ccc_a": ccc[1].float(), "val_pva": ccc.mean().float()},
            prog_bar=True,
            sync_dist=True,
        )

    def configure_optimizers(self):
        head = {"params": list(self.head.parameters()), "lr": self.cfg.head_lr, "weight_decay": self.cfg.weight_decay}
        return adamw_warmup_cosine(self.encoder, self.cfg, self.cfg.lr, self.trainer, [head])


class ExportEncoder(L.Callback):
    """Writes the encoder (mambava format) whenever validation P_VA improves, and at the end of training when
    there is no validation set."""

    def __init__(self, path: Path):
        self.path = path
        self.best = -math.inf
        self.history: list[dict] = []

    def on_validation_end(self, trainer, module):
        if trainer.sanity_checking or "val_pva" not in trainer.callback_metrics:
            return
        scores = {k: float(trainer.callback_metrics[k]) for k in ("val_ccc_v", "val_ccc_a", "val_pva")}
        self.history.append({"epoch": trainer.current_epoch, **scores})
        if scores["val_pva"] > self.best:
            self.best = scores["val_pva"]
            if trainer.is_global_zero:
                module.encoder.save(self.path)

    def on_train_end(self, trainer, module):
        if not self.history and trainer.is_global_zero:
            module.encoder.save(self.path)


@dataclass
class FinetuneResult:
    encoder_path: Path
    best_val_pva: float | None
    history: list[dict]
    trainable_parameters: int
    frozen_parameters: int
    is_global_zero: bool = True  # False in the other DDP processes


def finetune(
    root: str | os.PathLike | AffWild2,
    encoder: ViTEncoder,
    config: FinetuneConfig | None = None,
    out: str | os.PathLike = "runs/finetune_backbone",
    train_videos: list[str] | None = None,
    val_videos: list[str] | None = None,
    progress: bool = True,
) -> FinetuneResult:
    """Fine-tune `encoder` in place on Aff-Wild2 frame-level VA; writes OUT/encoder.safetensors (best validation
    P_VA) and OUT/finetune.json. Videos default to the official Train_Set / Validation_Set."""
    config = config or FinetuneConfig()
    dataset = root if isinstance(root, AffWild2) else AffWild2(root)
    train_videos = dataset.splits["train"] if train_videos is None else train_videos
    val_videos = dataset.splits["validation"] if val_videos is None else val_videos
    if not train_videos:
        raise MambavaError(f"{dataset.root}: no training videos (VA_Estimation_Challenge/Train_Set/*.txt)")
    out = Path(out)
    make_folder(out)
    L.seed_everything(config.seed, workers=True, verbose=False)
    size = encoder.config.img_size
    train_items = [item for v in train_videos for item in labelled_frames(dataset, v, config.frames_per_video)]
    for extra in config.extra_crops:  # the same videos and labels, another aligner's crops
        train_items += [
            item
            for v in train_videos
            for item in labelled_frames(dataset, v, config.frames_per_video, extra_crops_dir(extra, v))
        ]
    val_items = [item for v in val_videos for item in labelled_frames(dataset, v, config.frames_per_video)]
    if len(train_items) < 2:
        raise MambavaError(f"{dataset.root}: fewer than 2 labelled frames with crops in the training videos")
    module = VARegressor(encoder, config)
    export = ExportEncoder(out / ENCODER_FILE)
    trainer = backbone_trainer(config, out, [export], progress, validate=bool(val_items))
    trainer.fit(
        module, _loader(train_items, size, config, True), _loader(val_items, size, config, False) if val_items else None
    )
    n_train = sum(p.numel() for p in module.parameters() if p.requires_grad)
    n_frozen = sum(p.numel() for p in module.parameters() if not p.requires_grad)
    result = FinetuneResult(
        out / ENCODER_FILE,
        export.best if export.history else None,
        export.history,
        n_train,
        n_frozen,
        trainer.is_global_zero,
    )
    if trainer.is_global_zero:
        with atomic_open(out / "finetune.json") as handle:
            json.dump(
                {
                    "config": asdict(config),
                    "encoder": str(result.encoder_path),
                    "best_val_pva": result.best_val_pva,
                    "history": result.history,
                    "trainable_parameters": n_train,
                    "frozen_parameters": n_frozen,
                    "train_frames": len(train_items),
                    "val_frames": len(val_items),
                },
                handle,
                indent=1,
            )
    return result


# --------------------------------------------------------------------------------------------------------------
# Optional: MAE pretraining on face crops


def random_masking(x: torch.Tensor, mask_ratio: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's per-sample random masking of (N, L, D) tokens: (kept tokens, mask (N, L) with 1 = masked,
    ids_restore)."""
    n, length, d = x.shape
    keep = max(1, int(length * (1 - mask_ratio)))
    ids_shuffle = torch.argsort(torch.rand(n, length, device=x.device), dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    kept = torch.gather(x, 1, ids_shuffle[:, :keep, None].expand(-1, -1, d))
    mask = torch.ones(n, length, device=x.device)
    mask[:, :keep] = 0
    return kept, torch.gather(mask, 1, ids_restore), ids_restore


class MAEPretrainer(L.LightningModule):
    """MAE (He et al. 2022) around a ViTEncoder: mask 75% of the patches, encode the rest, reconstruct the
    masked patches' (normalised) pixels with a light decoder. The decoder's parameter names are MAE's
    (`decoder_embed, mask_token, decoder_pos_embed, decoder_blocks, decoder_norm, decoder_pred`), so
    `mae_state_dict()` is a facebookresearch/mae checkpoint's "model"."""

    def __init__(self, encoder: ViTEncoder, config: PretrainConfig):
        super().__init__()
        enc = encoder.config
        self.encoder = encoder
        self.cfg = config
        for param in encoder.parameters():
            param.requires_grad_(True)
        encoder.pos_embed.requires_grad_(False)  # MAE keeps the sin-cos position embedding fixed
        dec = ViTConfig(
            img_size=enc.img_size,
            patch_size=enc.patch_size,
            embed_dim=config.decoder_dim,
            depth=config.decoder_depth,
            num_heads=config.decoder_heads,
            mlp_ratio=enc.mlp_ratio,
            ln_eps=enc.ln_eps,
        )
        self.decoder_embed = nn.Linear(enc.embed_dim, dec.embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec.embed_dim))
        self.decoder_pos_embed = nn.Parameter(sincos_pos_embed(dec.embed_dim, dec.grid), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(Block(dec) for _ in range(dec.depth))
        self.decoder_norm = nn.LayerNorm(dec.embed_dim, eps=dec.ln_eps)
        self.decoder_pred = nn.Linear(dec.embed_dim, enc.patch_size**2 * enc.in_chans)
        nn.init.normal_(self.mask_token, std=0.02)
        for module in (self.decoder_embed, self.decoder_pred, *self.decoder_blocks.modules()):
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        self.train()

    def decoder_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("encoder.")}

    def mae_state_dict(self) -> dict[str, torch.Tensor]:
        return {**self.encoder.state_dict(), **self.decoder_state_dict()}

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        p = self.encoder.config.patch_size
        n, c, h, w = images.shape
        x = images.reshape(n, c, h // p, p, w // p, p)
        return torch.einsum("nchpwq->nhwpqc", x).reshape(n, (h // p) * (w // p), p * p * c)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Loss of one batch of uint8 crops (N, 3, S, S)."""
        enc = self.encoder
        x_img = normalize(images, enc.config.mean, enc.config.std)
        x = enc.patch_embed(x_img) + enc.pos_embed[:, 1:]
        x, mask, ids_restore = random_masking(x, self.cfg.mask_ratio)
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for block in enc.blocks:
            x = block(x)
        x = self.decoder_embed(enc.norm(x))
        n, length = ids_restore.shape
        tokens = torch.cat([x[:, 1:], self.mask_token.expand(n, length + 1 - x.shape[1], -1)], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore[..., None].expand(-1, -1, x.shape[2]))
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:].float()
        target = self.patchify(x_img)
        if self.cfg.norm_pix_loss:
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
        per_patch = ((pred - target) ** 2).mean(-1)
        return (per_patch * mask).sum() / mask.sum()

    def training_step(self, batch, batch_idx):
        loss = self(batch[0])
        self.log(
            "train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch[0]), sync_dist=True
        )
        return loss

    def configure_optimizers(self):
        return adamw_warmup_cosine(self, self.cfg, self.cfg.lr, self.trainer)


class _EpochLosses(L.Callback):
    def __init__(self):
        self.losses: list[float] = []

    def on_train_epoch_end(self, trainer, module):
        if "train_loss_epoch" in trainer.callback_metrics:
            self.losses.append(float(trainer.callback_metrics["train_loss_epoch"]))


@dataclass
class PretrainResult:
    checkpoint: Path
    epoch_losses: list[float]
    frames: int
    is_global_zero: bool = True  # False in the other DDP processes


def load_mae_decoder(module: MAEPretrainer, path: str | os.PathLike) -> list[str]:
    """Start the decoder from a facebookresearch/mae checkpoint that has one (the `visualize` ones do);
    returns the names loaded ([] when the file has no decoder or its shapes differ)."""
    if Path(path).is_dir():
        return []
    state = read_state_dict(path)
    mine = module.decoder_state_dict()
    found = {k: v for k, v in state.items() if k in mine}
    if set(found) != set(mine) or any(v.shape != mine[k].shape for k, v in found.items()):
        return []
    module.load_state_dict({**module.state_dict(), **found})
    return sorted(found)


def pretrain_mae(
    source: str | os.PathLike,
    encoder: ViTEncoder,
    config: PretrainConfig | None = None,
    out: str | os.PathLike = "runs/pretrain_mae",
    decoder_from: str | os.PathLike | None = None,
    progress: bool = True,
) -> PretrainResult:
    """MAE self-supervised pretraining of `encoder` (in place) on the crops of a crop source (an Aff-Wild2 root,
    cropped_aligned/, or any <dir>/<video>/<NNNNN>.jpg tree); writes OUT/mae_pretrain.pth, a
    facebookresearch/mae-format checkpoint ({"model": encoder + decoder}) for `finetune-backbone -c` or
    `extract -c`. `decoder_from`: an MAE checkpoint whose decoder to start from, when it has one."""
    config = config or PretrainConfig()
    out = Path(out)
    make_folder(out)
    L.seed_everything(config.seed, workers=True, verbose=False)
    zero = np.zeros(2, np.float32)
    videos = find_crop_videos(source)
    bad = next((video.error for video in videos if video.error), None)
    if bad:  # (no crop folder, two crops for one frame): said, not pretrained without it
        raise MambavaError(bad)
    items = [
        (video.path(k), zero) for video in videos for k in evenly_spaced(len(video.frames), config.frames_per_video)
    ]
    if len(items) < 2:
        raise MambavaError(f"{source}: fewer than 2 crops to pretrain on")
    module = MAEPretrainer(encoder, config)
    if decoder_from is not None and load_mae_decoder(module, decoder_from):
        log.info("MAE decoder initialised from %s", decoder_from)
    losses = _EpochLosses()
    trainer = backbone_trainer(config, out, [losses], progress, validate=False)
    trainer.fit(module, _loader(items, encoder.config.img_size, config, True))
    path = out / "mae_pretrain.pth"
    if trainer.is_global_zero:
        state = {k: v.detach().cpu().contiguous() for k, v in module.mae_state_dict().items()}
        atomic_torch_save({"model": state, "epoch": trainer.current_epoch, "config": asdict(config)}, path)
    return PretrainResult(path, losses.losses, len(items), trainer.is_global_zero)
