"""The Lightning callback and checkpoint writer of a run (Lightning is imported here, where it is used)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mambava.core.checkpoint import load_lightning_checkpoint
from mambava.core.fileio import atomic_torch_save
from mambava.training.outputs import read_metrics, write_metrics


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
            write_metrics(self.path, self.rows)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written beside their target, fsynced and renamed (mambava.core.fileio.atomic_path).
    Lightning's own writer stages the file in the system temporary folder and moves it across file
    systems, which on a full disk leaves a truncated best.ckpt in place of the good one."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("storage_options are not supported by AtomicCheckpointIO")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path, map_location=None, weights_only=None) -> dict:
        # Whatever Lightning asks for: a planted last.ckpt must never run its pickled code on resume.
        return load_lightning_checkpoint(path, map_location=map_location)
