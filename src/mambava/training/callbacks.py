"""The Lightning callback, checkpoint writer and validation timing of a run (Lightning is imported here, where
it is used)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mambava.core.checkpoint import load_lightning_checkpoint
from mambava.core.errors import MambavaError
from mambava.core.fileio import atomic_torch_save
from mambava.training.outputs import VALIDATION_COLUMNS, read_metrics, write_metrics


class EpochLog(L.Callback):
    """metrics.csv in out_dir, one row per epoch, rewritten atomically; on resume the rows of epochs that
    will be redone are dropped. An epoch that validates more than once (`val_check: authors`) gets the scores
    of its best validation (the first of equals); `validations`, when given, is a CSV of every validation
    (epoch, step: the optimizer steps taken before it, scores)."""

    def __init__(self, path: Path, validations: Path | None = None):
        self.path = Path(path)
        self.validations_path = None if validations is None else Path(validations)
        self.rows: list[dict[str, Any]] = []
        self.validations: list[dict[str, Any]] = []
        self.val: tuple[int, dict[str, float]] | None = None
        self.start = time.monotonic()

    def on_train_start(self, trainer, pl_module) -> None:
        first = trainer.current_epoch  # after a resume: the first epoch to run
        self.rows = [r for r in read_metrics(self.path) if r["epoch"] is not None and r["epoch"] < first]
        if self.validations_path is not None:
            done = read_metrics(self.validations_path)
            self.validations = [r for r in done if r["epoch"] is not None and r["epoch"] < first]
        self.offset = self.rows[-1]["time_s"] if self.rows and self.rows[-1].get("time_s") else 0.0
        self.start = time.monotonic()

    def on_validation_end(self, trainer, pl_module) -> None:
        # (not on_validation_epoch_end: callbacks' hooks run before the module's, which logs the scores)
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        scores = {
            k: float(metrics[f"val/{k}"]) for k in ("ccc_valence", "ccc_arousal", "p_va") if f"val/{k}" in metrics
        }
        epoch = trainer.current_epoch
        kept = self.val[1].get("p_va") if self.val is not None and self.val[0] == epoch else None
        if kept is None or scores.get("p_va", float("-inf")) > kept:
            self.val = (epoch, scores)
        if self.validations_path is not None:
            self.validations.append(
                {"epoch": epoch, "step": trainer.global_step, **{f"val_{k}": v for k, v in scores.items()}}
            )
            if trainer.is_global_zero:
                write_metrics(self.validations_path, self.validations, VALIDATION_COLUMNS)

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


def authors_validation_iterations(n_batches: int) -> list[int]:
    """The iterations (1-based) of an epoch of `n_batches` at which the authors' trainer validates, each before
    that iteration's backward pass and update: every (⌊N/4⌋ + 1)-th and the last (FreedomPuppy77/Charon,
    VA/vaestimation.py:111, 228-240; the update follows at lines 242-255).

    Args:
        n_batches: the training batches of an epoch (N).

    Returns:
        The iterations k, in order: 4 of them for N >= 13 (N = 100: 26, 52, 78, 100); for smaller N as few
        as 1 (N = 4: 2 and 4; N = 12: 4, 8, 12).
    """
    every = n_batches // 4 + 1
    return [k for k in range(1, n_batches + 1) if k % every == 0 or k == n_batches]


def validate_like_the_authors(trainer) -> None:
    """Make `trainer` validate when the authors' trainer does (`authors_validation_iterations`).

    Theirs validates at iteration k before its update, so on the weights after k - 1 updates of the epoch;
    Lightning validates after a batch's optimizer and scheduler steps, so here validation runs after batch
    k - 1 (1-based): the same weights (the learning rate, stepped in between, plays no part in validation).
    k = 1 (only when N <= 3) is after the previous epoch's last batch; on the first epoch that would score the
    untrained model, which is not done here. As theirs, the weights after the last update of the run are never
    scored. Lightning has no public setting for such points (`val_check_interval` takes one fixed interval and
    validates after, not before, an update), so this replaces the epoch loop's private `_should_check_val_fx`
    (Lightning 2.x); MambavaError where this Lightning has none.

    Args:
        trainer: a `lightning.Trainer` built with `check_val_every_n_epoch=1`.
    """
    loop = trainer.fit_loop.epoch_loop
    if not callable(getattr(loop, "_should_check_val_fx", None)):
        raise MambavaError(
            f"val_check: authors needs Lightning's epoch-loop hook _should_check_val_fx, which lightning "
            f"{L.__version__} lacks: use val_check: epoch, or a Lightning 2.x"
        )

    def should_check(data_fetcher) -> bool:
        n = trainer.num_training_batches
        updates = {k - 1 for k in authors_validation_iterations(int(n))}  # updates of the epoch before each
        done = loop.batch_idx + 1  # this epoch's updates so far (this runs after the batch's step)
        if done in updates:
            return True
        return 0 in updates and done == n and trainer.current_epoch < trainer.max_epochs - 1

    loop._should_check_val_fx = should_check
