"""The Lightning module (temporal model, CCC loss, AdamW + schedule, validation) and data module of a run;
Lightning is imported here, where it is used."""

from __future__ import annotations

import math

import lightning as L
import torch
from torch.utils.data import ConcatDataset, DataLoader

from mambava.core.ccc_metric import ConcordanceCCC
from mambava.core.errors import MambavaError
from mambava.core.metrics import authors_ccc_loss, ccc_loss
from mambava.core.schedule import lr_factor, warm_restarts_lrs
from mambava.data.windows import WindowDataset, authors_keep, authors_window_dataset, predict_sequence
from mambava.temporal import build_temporal_model
from mambava.training.config import MONITOR, TrainConfig
from mambava.training.data import (
    EpochShuffleSampler,
    FoldData,
    ShardSampler,
    VideoDataset,
    collate_video,
    collate_windows,
    load_fold_data,
    mix_seed,
    open_extra_stores,
    open_store,
)


class Diverged(MambavaError):
    """Training went non-finite (NaN/Inf loss, weights or validation score); `train` adds what was kept."""

    def __init__(self, epoch: int, step: int, what: str):
        self.epoch, self.step, self.what = epoch, step, what
        super().__init__(f"epoch {epoch + 1}, step {step + 1}: {what}")


class VADataModule(L.LightningDataModule):
    """Training windows (WindowDataset, shuffled by EpochShuffleSampler) and whole validation videos."""

    def __init__(self, cfg: TrainConfig, fold_data: FoldData | None = None):
        super().__init__()
        self.cfg = cfg
        self.fold_data = fold_data or load_fold_data(cfg)
        self.train_set = None
        self.val_set = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        store = open_store(self.cfg)
        data = self.fold_data
        # the training windows of every store (data.extra_features: the same videos from other crops)
        sets = [
            WindowDataset(
                s,
                data.train,
                {n: data.labels[n] for n in data.train},
                self.cfg.data.window,
                self.cfg.data.stride,
                tails=self.cfg.data.tails,
                fps=self._model_fps(),
                span=self.cfg.data.span,
            )
            for s in [store, *open_extra_stores(self.cfg, data.train, data.dim)]
        ]
        self.train_set = sets[0] if len(sets) == 1 else ConcatDataset(sets)
        if self.cfg.protocol == "authors":
            self.val_set = authors_window_dataset(
                store,
                data.validation,
                data.labels,
                self.cfg.data.window,
                self.cfg.data.stride,
                self.cfg.eval_batch_size,
            )
        else:
            self.val_set = VideoDataset(store, data.validation, data.labels, fps=self._model_fps())

    def audio_statistics(self):
        """The training videos' audio feature mean and std (`AudioVisualStore.audio_statistics`); None without
        `data.audio_features`."""
        store = open_store(self.cfg)
        return store.audio_statistics(self.fold_data.train) if hasattr(store, "audio_statistics") else None

    def _model_fps(self) -> float | None:
        """The rate the model counts its frames at (`model.fps`): the grid the store's entries are put on; None
        with `data.resample: false` (the authors' recipe), where windows are cut from the stored frames."""
        if not self.cfg.data.resample:
            return None
        model = self.cfg.model
        return float((model.get("fps") if isinstance(model, dict) else getattr(model, "fps", None)) or 30.0)

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
            self.train_set,
            batch_size=self.cfg.batch_size,
            sampler=sampler,
            collate_fn=collate_windows,
            drop_last=self.cfg.drop_last,
            **self._loader_kwargs(),
        )

    def val_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        if self.cfg.protocol == "authors":
            # Windows in the reference's order, already cut to whole batches; dealt to ranks without repeats.
            sampler = ShardSampler([1] * len(self.val_set), rank, world)
            return DataLoader(
                self.val_set,
                batch_size=self.cfg.eval_batch_size,
                sampler=sampler,
                collate_fn=collate_windows,
                **self._loader_kwargs(),
            )
        sampler = ShardSampler(self.val_set.lengths, rank, world)
        return DataLoader(
            self.val_set, batch_size=1, sampler=sampler, collate_fn=collate_video, **self._loader_kwargs()
        )


class VAModule(L.LightningModule):
    """The temporal model, the CCC loss, the AdamW + warmup/cosine schedule and full-video validation."""

    def __init__(self, config: dict):
        super().__init__()
        self.save_hyperparameters({"config": config})
        self.cfg = TrainConfig.from_dict(config)
        self.model = build_temporal_model(self.cfg.model)
        self.val_ccc = ConcordanceCCC(num_outputs=2)
        # a fresh fusion model takes its audio statistics from the training data when fit starts; a caller that
        # loads trained weights into `model` (adapt, distill) sets this False so they stay the base model's
        self.fit_input_statistics = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def on_fit_start(self) -> None:
        # a fusion model z-scores its audio input with the training videos' statistics, set once: a resumed run
        # has them from its checkpoint, an adapted model keeps its base's
        datamodule = self.trainer.datamodule
        resumed = self.trainer.ckpt_path is not None  # its statistics (or a run from before them: none) stay
        fresh = self.fit_input_statistics and not resumed and not getattr(self.model, "audio_normalised", True)
        if fresh and hasattr(self.model, "set_audio_normalisation") and datamodule:
            statistics = datamodule.audio_statistics()
            if statistics is not None:
                self.model.set_audio_normalisation(*statistics)

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        # Dropout noise depends on (seed, epoch, batch, rank) only: a resumed run continues exactly.
        torch.manual_seed(mix_seed(self.cfg.seed, self.current_epoch, batch_idx, self.global_rank))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        pred = self.model(batch["x"])
        loss = (authors_ccc_loss if self.cfg.loss == "authors" else ccc_loss)(pred.float(), batch["y"], batch["mask"])
        # Stop at the first non-finite loss (any rank, so no rank waits in a collective the others left),
        # before backward: the weights and the checkpoints of earlier epochs stay as they were.
        if self.trainer.strategy.reduce_boolean_decision(not bool(torch.isfinite(loss)), all=False):
            raise Diverged(self.current_epoch, self.global_step, f"training loss is {float(loss.detach())}")
        n = batch["x"].shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        self.log(
            "lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False, prog_bar=True, batch_size=n
        )
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
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

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Lightning refuses to clip for a fused optimizer under a mixed-precision plugin, since such an optimizer
        # may unscale gradients inside its step; bf16 has no scaler, so the gradients are the true ones here and
        # clipping them directly is the same clip_grad_norm_ as the reference's (vaestimation.py:243-247).
        if gradient_clip_val and self.cfg.precision != "16-mixed":
            torch.nn.utils.clip_grad_norm_([p for p in self.parameters() if p.grad is not None], gradient_clip_val)
        else:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        trainable = [p for p in self.parameters() if p.requires_grad]  # (MambaVA's unused adaptor is frozen)
        # fused: one kernel over all parameters; on one CPU core 0.11 s per step for the paper model's 67M
        # parameters against 0.74 s for the per-parameter loop (same update, to rounding)
        # (not under fp16's GradScaler, which must unscale the gradients before they are clipped)
        fused = all(p.device.type in ("cpu", "cuda") for p in trainable) and self.cfg.precision != "16-mixed"
        optimizer = torch.optim.AdamW(
            trainable, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay, eps=self.cfg.adam_eps, fused=fused
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
