"""The demo's temporal recipe, shared by its visual models (`mambava.demo.run`) and its audio-visual ablation
(`mambava.demo.ablation`): one training run at the demo's sizes, and its score on the held-out subjects."""

from __future__ import annotations

import logging
import multiprocessing
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

from mambava.core.errors import MambavaError
from mambava.temporal import load_temporal_model
from mambava.training import DataConfig, TrainConfig, train
from mambava.training.evaluate import evaluate_videos, write_per_video

# the run's DemoConfig (`mambava.demo.run`), passed in: this module is below the run
DemoConfig = Any


def train_temporal(
    out_dir: Path,
    data_root: Path,
    features: Path,
    model: dict,
    cfg: DemoConfig,
    progress: bool,
    *,
    epochs: int | None = None,
    audio: Path | None = None,
    extra: list[Path] = (),
) -> dict:
    """Train a temporal model with the demo's recipe and sizes (`model` adds to or overrides Mamba-VA's) on
    `features` (with the `audio` store joined, and `extra` stores of the same videos), into `out_dir`; its
    summary."""

    model = dict(
        dict(
            kind="mamba_va",
            tcn_channels=list(cfg.tcn_channels),
            kernel_size=cfg.kernel_size,
            dropout=cfg.dropout,
            d_model=cfg.d_model,
            n_layers=cfg.n_layers,
            d_state=cfg.d_state,
            dt_rank="auto",
            head_hidden=cfg.head_hidden,
        ),
        **model,
    )
    tcfg = TrainConfig(
        model=model,
        data=DataConfig(
            features=str(features),
            audio_features=str(audio) if audio else None,
            annotations=str(data_root),
            window=cfg.window,
            stride=cfg.stride,
            extra_features=[str(p) for p in extra],
        ),
        batch_size=cfg.batch_size,
        epochs=epochs or cfg.epochs,
        warmup_epochs=cfg.warmup_epochs,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
        accelerator="cpu",
        precision=cfg.training_precision(),
        progress_bar=progress,
        out_dir=str(out_dir),
    )
    summary = train(tcfg)
    if summary is None:
        raise MambavaError(f"training {Path(out_dir).name} was interrupted")
    return summary


def train_side_by_side(jobs: dict[str, dict], workers: int = 2) -> dict[str, dict]:
    """Train several temporal models at once, one process each (at most `workers` at a time): each trains on
    one thread (the demo's models are small: one OpenMP thread each beats two sharing a model), so on a 2-core
    machine two models train in the time of one. `jobs`: {name: train_temporal's keyword arguments}; returns
    {name: summary}, as training them one after the other would (each run depends only on its seed).
    With `workers` 1, or one job, they run here, in turn."""
    if workers <= 1 or len(jobs) <= 1:
        return {name: train_temporal(**kwargs) for name, kwargs in jobs.items()}
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context, initializer=_one_thread) as pool:
        futures = {name: pool.submit(train_temporal, **{**kwargs, "progress": False}) for name, kwargs in jobs.items()}
        return {name: future.result() for name, future in futures.items()}


def _one_thread() -> None:
    torch.set_num_threads(1)
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


def score_run(run: dict, store, names: list[str], labels: dict, cfg: DemoConfig):
    """A trained run's model on whole held-out videos of `store` (windows stitched), its per-video scores written
    beside it (eval_test.csv): (the loaded model, the evaluation result)."""

    loaded = load_temporal_model(run["outputs"]["model"])
    result = evaluate_videos(loaded, store, names, labels, cfg.window, cfg.stride, device="cpu")
    write_per_video(result, Path(run["outputs"]["model"]).parent / "eval_test.csv")
    return loaded, result
