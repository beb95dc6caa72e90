"""The demo's temporal recipe, shared by its visual models (`mambava.demo.run`) and its audio-visual ablation
(`mambava.demo.ablation`): one training run at the demo's sizes, and its score on the held-out subjects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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


def score_run(run: dict, store, names: list[str], labels: dict, cfg: DemoConfig):
    """A trained run's model on whole held-out videos of `store` (windows stitched), its per-video scores written
    beside it (eval_test.csv): (the loaded model, the evaluation result)."""

    loaded = load_temporal_model(run["outputs"]["model"])
    result = evaluate_videos(loaded, store, names, labels, cfg.window, cfg.stride, device="cpu")
    write_per_video(result, Path(run["outputs"]["model"]).parent / "eval_test.csv")
    return loaded, result
