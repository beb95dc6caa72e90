"""`mambava train`, `mambava evaluate`, `mambava cv` (see mambava.train, mambava.evaluate, mambava.cv)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

SET_HELP = "Override a config key: --set lr=1e-4 --set model.kind=tcn --set data.features=feats/ (repeatable)."


def _config(config: Optional[Path], overrides: List[str], **flags) -> "object":
    from mambava.train import load_config

    extra = [f"{key}={value}" for key, value in flags.items() if value is not None]
    return load_config(config, [*extra, *overrides])


def _score(value) -> str:
    """A CCC to 4 decimals; a NaN/Inf one (no variance, nothing finite to score) is never shown as a number."""
    import math

    return f"{value:.4f}" if value is not None and math.isfinite(value) else "undefined"


def _rank_zero() -> bool:
    """False in the extra processes of a DDP run (each runs the whole command; only rank 0 reports)."""
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def train_command(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (default: the paper's recipe)."),
    overrides: List[str] = typer.Option([], "--set", help=SET_HELP),
    out_dir: Optional[str] = typer.Option(None, "--out-dir", "-o", help="Run folder (config key out_dir)."),
    fold: Optional[int] = typer.Option(None, "--fold", help="Fold: 0 official split, 1-5 cross-validation."),
    devices: Optional[str] = typer.Option(None, "--devices", help="Lightning devices: 1, 2, 'auto', '[0,1]'."),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="Lightning strategy: auto, ddp, ..."),
    precision: Optional[str] = typer.Option(None, "--precision", help="32 or bf16-mixed (or 16-mixed on GPU)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in out_dir from its last checkpoint."),
) -> None:
    """Train a temporal model with the paper's recipe on a feature store + annotations.

    Writes to out_dir: checkpoints/best.ckpt (best validation P_VA), checkpoints/last.ckpt, model.safetensors,
    metrics.csv, summary.json, curves.png."""
    from mambava.train import train

    cfg = _config(config, overrides, out_dir=out_dir, **{"data.fold": fold}, devices=devices, strategy=strategy, precision=precision)
    summary = train(cfg, resume=resume)
    if not _rank_zero():
        return
    if summary is None:
        typer.echo("interrupted: run again with --resume to continue")
        raise typer.Exit(1)
    best = summary["best"]
    typer.echo(
        f"best epoch {best['epoch'] + 1}: CCC_v {_score(best['ccc_valence'])}  CCC_a {_score(best['ccc_arousal'])}  "
        f"P_VA {_score(best['p_va'])}\nmodel: {summary['outputs']['model']}"
    )


def evaluate_command(
    checkpoint: Path = typer.Argument(..., help="model.safetensors, a run's .ckpt, or a reference .pth."),
    features: Optional[str] = typer.Option(None, "--features", help="Feature store (default: the run's)."),
    annotations: Optional[str] = typer.Option(None, "--annotations", help="Aff-Wild2 root or labels folder (default: the run's)."),
    split: str = typer.Option("validation", "--split", help="'validation' or 'train' side of the fold."),
    fold: Optional[int] = typer.Option(None, "--fold", help="Fold (default: the run's, else 0 = official split)."),
    folds: Optional[str] = typer.Option(None, "--folds", help="Folds file (default: the run's, else from the Aff-Wild2 splits)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Per-video CSV (default: eval_<split>_fold<k>.csv beside CKPT)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Windows per forward pass."),
    window: Optional[int] = typer.Option(None, "--window", help="Window (default: the run's, else 300)."),
    stride: Optional[int] = typer.Option(None, "--stride", help="Stride (default: the run's, else 200)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ..."),
    precision: str = typer.Option("32", "--precision", help="32 or bf16-mixed."),
) -> None:
    """Score a checkpoint on whole videos: prints CCC_v, CCC_a, P_VA over all frames, writes per-video CCCs."""
    from mambava.evaluate import evaluate_checkpoint

    result, path = evaluate_checkpoint(
        checkpoint, features=features, annotations=annotations, split=split, fold=fold, folds=folds,
        window=window, stride=stride, batch_size=batch_size, device=device, precision=precision, out=out,
        progress=True,
    )
    typer.echo(f"CCC_v {_score(result.ccc_valence)}")
    typer.echo(f"CCC_a {_score(result.ccc_arousal)}")
    typer.echo(f"P_VA  {_score(result.p_va)}")
    typer.echo(f"({len(result.per_video)} videos, {result.frames} valid frames; per-video CCCs: {path})")


def cv_command(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (default: the paper's recipe)."),
    overrides: List[str] = typer.Option([], "--set", help=SET_HELP),
    out_dir: Optional[str] = typer.Option(None, "--out-dir", "-o", help="Folder of the folds' runs (config key out_dir)."),
    folds: Optional[str] = typer.Option(None, "--folds", help="Only these folds, e.g. '0,1,2' (default: all)."),
    devices: Optional[str] = typer.Option(None, "--devices", help="Lightning devices."),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="Lightning strategy."),
    precision: Optional[str] = typer.Option(None, "--precision", help="32 or bf16-mixed."),
) -> None:
    """Fold 0 (official split) and folds 1-5, then the paper's Table 1 (V, A, average per fold, mean ± std).

    Finished folds are skipped and an interrupted fold resumes: re-run the same command to continue."""
    from mambava.cv import format_table, run_cv, write_results
    from mambava.errors import MambavaError

    cfg = _config(config, overrides, out_dir=out_dir, devices=devices, strategy=strategy, precision=precision)
    chosen = None
    if folds:
        try:
            chosen = [int(k) for k in folds.split(",") if k.strip()]
        except ValueError:
            raise MambavaError(f"--folds {folds!r}: expected comma-separated fold numbers") from None
    rows = run_cv(cfg, chosen, echo=typer.echo if _rank_zero() else (lambda *_: None))
    if not _rank_zero():
        return
    csv_path, _ = write_results(cfg.out_dir, rows)
    typer.echo(format_table(rows))
    typer.echo(f"(table: {csv_path})")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
    app.command("evaluate")(evaluate_command)
    app.command("cv")(cv_command)
