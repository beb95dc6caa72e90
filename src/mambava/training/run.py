"""One training run: check/resume, the Trainer, fit, and the outputs written after it."""

from __future__ import annotations

import importlib.util
import time
import warnings
from pathlib import Path
from typing import Sequence

import lightning as L
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from mambava.core.checkpoint import CheckpointError, load_lightning_checkpoint
from mambava.core.errors import MambavaError
from mambava.core.fileio import is_output_failure, make_folder, output_error
from mambava.temporal import count_parameters, lightning_state_dict, save_temporal_model
from mambava.training.callbacks import AtomicCheckpointIO, EpochLog, validate_like_the_authors
from mambava.training.config import MONITOR, TrainConfig, flatten_keys, save_config
from mambava.training.data import FoldData, check_model_input, load_fold_data
from mambava.training.module import Diverged, VADataModule, VAModule
from mambava.training.outputs import RunPaths, plot_curves, read_metrics, read_summary, write_json


def check_resume_checkpoint(path: Path) -> None:
    """MambavaError (one line, saying what to do) unless `path` is a complete Lightning checkpoint."""
    if not path.is_file():
        raise MambavaError(
            f"{path}: no checkpoint to resume from (none written yet, or removed); "
            f"run again without --resume to start from the beginning"
        )
    try:
        checkpoint = load_lightning_checkpoint(path)
    except CheckpointError as error:
        reason, complete = error.reason, False
    else:
        reason, complete = "not a training checkpoint", {"state_dict", "epoch", "optimizer_states"} <= checkpoint.keys()
    if not complete:
        raise MambavaError(
            f"{path}: unreadable checkpoint, cannot resume ({reason}); restore it, or delete it and run again "
            f"without --resume to start from the beginning"
        )


def build_trainer(cfg: TrainConfig, paths: RunPaths, callbacks: Sequence = ()):
    """The Lightning Trainer of a run: checkpoints (best by val P_VA, last every epoch), loggers, progress;
    with `val_check: authors`, validation when the authors' trainer validates, every one a candidate for best."""

    authors = cfg.val_check == "authors"
    best = ModelCheckpoint(
        dirpath=paths.checkpoints,
        filename="best",
        monitor=MONITOR,
        mode="max",  # a later validation replaces the best only when strictly higher, as vaestimation.py:327
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
        # several validations an epoch: compare after each, not once at the epoch's end
        save_on_train_epoch_end=False if authors else None,
    )
    # The latest epoch, every epoch (monitor None + top 1 = keep the newest; Lightning's save_last only follows
    # a top-k save, which a monitored callback skips when the score did not improve).
    last = ModelCheckpoint(
        dirpath=paths.checkpoints,
        filename="last",
        monitor=None,
        save_top_k=1,
        every_n_epochs=1,
        save_on_train_epoch_end=True,
        enable_version_counter=False,
    )
    loggers = [CSVLogger(paths.out, name="logs", version=None)]
    if importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None:
        loggers.append(TensorBoardLogger(paths.out, name="tensorboard", default_hp_metric=False))
    all_callbacks = [EpochLog(paths.metrics, paths.validations if authors else None), *callbacks, best, last]
    if cfg.progress_bar:
        all_callbacks.append(TQDMProgressBar(refresh_rate=1))
    trainer = L.Trainer(
        max_epochs=cfg.epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=cfg.precision,
        gradient_clip_val=cfg.grad_clip or None,
        gradient_clip_algorithm="norm",
        check_val_every_n_epoch=cfg.val_every_n_epochs,
        callbacks=all_callbacks,
        plugins=[AtomicCheckpointIO()],
        logger=loggers,
        log_every_n_steps=1,
        deterministic=cfg.deterministic,
        use_distributed_sampler=False,
        enable_progress_bar=cfg.progress_bar,
        enable_model_summary=cfg.progress_bar,
        num_sanity_val_steps=0,
        default_root_dir=str(paths.out),
    )
    if authors:
        validate_like_the_authors(trainer)
    return trainer


def _info(message: str) -> None:
    rank_zero_info(message)


def train(cfg: TrainConfig, resume: bool | str = False, callbacks: Sequence = ()) -> dict | None:
    """Run (or resume) one training run; returns the summary (None if it was interrupted).

    `resume=True` continues from `out_dir/checkpoints/last.ckpt` (a finished run is skipped and its summary
    returned); a missing or unreadable last.ckpt is then a MambavaError, never a silent restart.
    `resume="auto"` (cross-validation) resumes when last.ckpt exists and starts the run otherwise. Without
    resume, an out_dir that already holds a run is an error."""

    cfg.check()
    paths = RunPaths(Path(cfg.out_dir))
    finished = read_summary(paths.out)
    if resume and finished and finished.get("finished"):
        _info(f"{paths.out}: finished run, skipped (best val P_VA {finished['best']['p_va']:.4f})")
        return finished
    if not resume and (paths.last.exists() or paths.summary.exists()):
        raise MambavaError(
            f"{paths.out}: holds a previous run; pass --resume to continue it, or choose another out_dir"
        )
    if resume and (resume != "auto" or paths.last.exists()):
        check_resume_checkpoint(paths.last)
    ckpt_path = str(paths.last) if resume and paths.last.exists() else None
    if ckpt_path and paths.config.is_file():
        _warn_config_changes(paths.config, cfg)

    fold_data = load_fold_data(cfg)
    check_model_input(cfg, fold_data.dim)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module = VAModule(cfg.to_dict())
    datamodule = VADataModule(cfg, fold_data)
    trainer = build_trainer(cfg, paths, callbacks)
    if trainer.is_global_zero:
        make_folder(paths.out)
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


_RUNTIME_KEYS = {
    "out_dir",
    "devices",
    "num_nodes",
    "strategy",
    "accelerator",
    "progress_bar",
    "data.num_workers",
    "eval_batch_size",
}


def _warn_config_changes(saved_path: Path, cfg: TrainConfig) -> None:
    """A resumed run whose config differs from the one it started with (other than where/how it runs)."""
    try:
        saved = flatten_keys(yaml.safe_load(saved_path.read_text()) or {})
    except (OSError, yaml.YAMLError):
        return
    now = flatten_keys(cfg.to_dict())
    changed = sorted(k for k in set(saved) | set(now) if k not in _RUNTIME_KEYS and saved.get(k) != now.get(k))
    if changed:
        warnings.warn(
            f"{saved_path}: resuming with a config that differs from the run's: "
            + ", ".join(f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in changed[:8]),
            stacklevel=3,
        )


def finish_run(cfg: TrainConfig, paths: RunPaths, module, fold_data: FoldData, trainer, wall_s: float) -> dict:
    """After fit: export the best model to model.safetensors, write summary.json and curves.png."""
    state = load_lightning_checkpoint(paths.best)["state_dict"]
    model = module.model.to("cpu").float()
    model.load_state_dict(lightning_state_dict(state))
    save_temporal_model(model, paths.model)
    rows = read_metrics(paths.metrics)
    # every validation (val_check: authors), so that the best's step is its own, not its epoch's end
    validations = read_metrics(paths.validations) if cfg.val_check == "authors" else rows
    validated = [r for r in validations if r.get("val_p_va") is not None]
    best_row = max(validated, key=lambda r: r["val_p_va"]) if validated else None  # the first of equals

    def scores(row):
        if row is None:
            return None
        return {
            "epoch": row["epoch"],
            "step": row["step"],
            "ccc_valence": row["val_ccc_valence"],
            "ccc_arousal": row["val_ccc_arousal"],
            "p_va": row["val_p_va"],
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
        "train_time_s": round(rows[-1]["time_s"], 1)
        if rows and rows[-1].get("time_s") is not None
        else round(wall_s, 1),
        "outputs": {
            "best_checkpoint": str(paths.best),
            "last_checkpoint": str(paths.last),
            "model": str(paths.model),
            "metrics": str(paths.metrics),
            **({"validations": str(paths.validations)} if cfg.val_check == "authors" else {}),
            "curves": str(paths.curves),
            "config": str(paths.config),
        },
        "config": cfg.to_dict(),
    }
    plot_curves(rows, paths.curves, title=f"{cfg.model['kind']} fold {cfg.data.fold}")
    write_json(paths.summary, summary)
    return summary


def _diverged_message(error, paths: RunPaths) -> str:
    """One line: where it went non-finite, what to try, and which checkpoints of earlier epochs are kept."""
    kept = [p for p in (paths.best, paths.last) if p.is_file()]
    best = [r for r in read_metrics(paths.metrics) if r.get("val_p_va") is not None]
    if kept:
        top = max(best, key=lambda r: r["val_p_va"]) if best else None
        note = f" (best: epoch {top['epoch'] + 1}, P_VA {top['val_p_va']:.4f})" if top and paths.best.is_file() else ""
        keep = f"kept the checkpoints of the earlier epochs: {', '.join(str(p) for p in kept)}{note}"
    else:
        keep = "no epoch finished before, so no checkpoint was saved"
    return f"{paths.out}: training stopped at {error} (the model diverged: lower lr, or set grad_clip > 0); {keep}"


_CLASSES: dict[str, type] = {}
