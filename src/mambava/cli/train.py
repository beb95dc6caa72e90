"""`mambava train`, `mambava evaluate`, `mambava cv` (see mambava.training: run, evaluate, cv)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from mambava.cli.options import lightning_precision, precision_option

SET_HELP = "Override a config key: --set lr=1e-4 --set model.kind=tcn --set data.features=feats/ (repeatable)."


NUM_NODES_HELP = (
    "Machines of a multi-node DDP run, each running --devices processes (started by torchrun or SLURM's srun; "
    "docs/scaling.md)."
)
RECIPE_HELP = "Named recipe: 'paper' (default) or 'authors' (their code's per-fold values); a --config is laid over it."


def _config(config: Optional[Path], overrides: List[str], recipe: Optional[str] = None, **flags) -> "object":
    from mambava.training import config_items, load_config, load_recipe

    extra = [f"{key}={value}" for key, value in flags.items() if value is not None]
    if recipe is not None:  # a --config given too is laid over the recipe (e.g. its data paths)
        layer = config_items(config) if config is not None else []
        return load_recipe(recipe, [*layer, *extra, *overrides])
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
    recipe: Optional[str] = typer.Option(None, "--recipe", help=RECIPE_HELP),
    overrides: List[str] = typer.Option([], "--set", help=SET_HELP),
    out_dir: Optional[str] = typer.Option(None, "--out-dir", "-o", help="Run folder (config key out_dir)."),
    fold: Optional[int] = typer.Option(None, "--fold", help="Fold: 0 official split, 1-5 cross-validation."),
    devices: Optional[str] = typer.Option(None, "--devices", help="Lightning devices: 1, 2, 'auto', '[0,1]'."),
    num_nodes: Optional[int] = typer.Option(None, "--num-nodes", min=1, help=NUM_NODES_HELP),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="Lightning strategy: auto, ddp, ..."),
    precision: Optional[str] = precision_option(None, lightning=True, what="Default: the config's. "),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in out_dir from its last checkpoint."),
) -> None:
    """Train a temporal model with the paper's recipe on a feature store + annotations.

    Writes to out_dir: checkpoints/best.ckpt (best validation P_VA), checkpoints/last.ckpt, model.safetensors,
    metrics.csv, summary.json, curves.png."""
    from mambava.training import train

    cfg = _config(
        config,
        overrides,
        recipe,
        out_dir=out_dir,
        **{"data.fold": fold},
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        precision=lightning_precision(precision),
    )
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
    annotations: Optional[str] = typer.Option(
        None, "--annotations", help="Aff-Wild2 root or labels folder (default: the run's)."
    ),
    audio_features: Optional[str] = typer.Option(
        None, "--audio-features", help="Audio feature store of a fusion model (extract --audio; default: the run's)."
    ),
    split: str = typer.Option("validation", "--split", help="'validation' or 'train' side of the fold."),
    fold: Optional[int] = typer.Option(None, "--fold", help="Fold (default: the run's, else 0 = official split)."),
    folds: Optional[str] = typer.Option(
        None, "--folds", help="Folds file (default: the run's, else from the Aff-Wild2 splits)."
    ),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Per-video CSV (default: eval_<split>_fold<k>.csv beside CKPT)."
    ),
    batch_size: Optional[int] = typer.Option(
        None,
        "--batch-size",
        help="Windows per forward pass (default 32; --protocol authors: the run's eval_batch_size, else 16).",
    ),
    protocol: str = typer.Option(
        "videos", "--protocol", help="videos (whole videos, stitched) or authors (the reference's windows)."
    ),
    window: Optional[int] = typer.Option(None, "--window", help="Window (default: the run's, else 300)."),
    stride: Optional[int] = typer.Option(None, "--stride", help="Stride (default: the run's, else 200)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ..."),
    precision: str = precision_option(
        "fp32", lightning=True, int8=True, what="The temporal model's; int8 runs its TCN in int8 on the CPU. "
    ),
) -> None:
    """Score a checkpoint on whole videos (or --protocol authors: on the reference's validation windows): prints
    CCC_v, CCC_a, P_VA over all frames, writes per-video CCCs."""
    from mambava.training.evaluate import evaluate_checkpoint

    result, path = evaluate_checkpoint(
        checkpoint,
        features=features,
        annotations=annotations,
        split=split,
        fold=fold,
        folds=folds,
        window=window,
        stride=stride,
        batch_size=batch_size,
        device=device,
        precision=lightning_precision(precision, device),
        out=out,
        progress=True,
        protocol=protocol,
        audio_features=audio_features,
    )
    typer.echo(f"CCC_v {_score(result.ccc_valence)}")
    typer.echo(f"CCC_a {_score(result.ccc_arousal)}")
    typer.echo(f"P_VA  {_score(result.p_va)}")
    counted = "valid frames" if protocol == "videos" else "frames counted over windows"
    typer.echo(f"({len(result.per_video)} videos, {result.frames} {counted}; per-video CCCs: {path})")


def cv_command(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (default: the paper's recipe)."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help=RECIPE_HELP),
    overrides: List[str] = typer.Option([], "--set", help=SET_HELP),
    out_dir: Optional[str] = typer.Option(
        None, "--out-dir", "-o", help="Folder of the folds' runs (config key out_dir)."
    ),
    folds: Optional[str] = typer.Option(None, "--folds", help="Only these folds, e.g. '0,1,2' (default: all)."),
    both_protocols: bool = typer.Option(
        False,
        "--both-protocols",
        help="Also score each fold's best model under both protocols (videos, authors): two more tables.",
    ),
    devices: Optional[str] = typer.Option(None, "--devices", help="Lightning devices."),
    num_nodes: Optional[int] = typer.Option(None, "--num-nodes", min=1, help=NUM_NODES_HELP),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="Lightning strategy."),
    precision: Optional[str] = precision_option(None, lightning=True, what="Default: the config's. "),
    gather: bool = typer.Option(
        False,
        "--gather",
        help="Train nothing: the table of the folds finished in out_dir (after one `cv --folds K` job per fold, "
        "run in parallel; docs/scaling.md).",
    ),
) -> None:
    """Fold 0 (official split) and folds 1-5, then the paper's Table 1 (V, A, average per fold, mean ± std).

    Finished folds are skipped and an interrupted fold resumes: re-run the same command to continue. Folds in
    parallel: one `cv --folds K` job per fold (a node or GPU each), then `cv --gather` for the table."""
    from mambava.core.errors import MambavaError
    from mambava.training.cv import collect, format_table, prepare_folds, rescore, run_cv, write_results

    flags = {
        "out_dir": out_dir,
        "devices": devices,
        "num_nodes": num_nodes,
        "strategy": strategy,
        "precision": lightning_precision(precision),
    }
    cfg = _config(config, overrides, recipe, **flags)
    config_for = None
    if recipe is not None:

        def config_for(k: int):
            return _config(config, overrides, recipe, **flags, **{"data.fold": k})

    chosen = None
    if folds:
        try:
            chosen = [int(k) for k in folds.split(",") if k.strip()]
        except ValueError:
            raise MambavaError(f"--folds {folds!r}: expected comma-separated fold numbers") from None
    if gather:
        _, available = prepare_folds(cfg)  # the folds file the fold jobs shared
        rows = collect(cfg.out_dir, chosen if chosen is not None else available)
    else:
        rows = run_cv(cfg, chosen, echo=typer.echo if _rank_zero() else (lambda *_: None), config_for=config_for)
    if not _rank_zero():
        return
    csv_path, _ = write_results(cfg.out_dir, rows)
    typer.echo(f"Table 1 (validation protocol: {cfg.protocol}, at each fold's best validation)")
    typer.echo(format_table(rows))
    typer.echo(f"(table: {csv_path})")
    if both_protocols:
        for protocol in ("videos", "authors"):
            scored = rescore(cfg.out_dir, [r["fold"] for r in rows], protocol)
            path, _ = write_results(cfg.out_dir, scored, suffix=f"_{protocol}")
            typer.echo(f"\nTable 1, protocol {protocol} (each fold's best model, scored again)")
            typer.echo(format_table(scored))
            typer.echo(f"(table: {path})")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
    app.command("evaluate")(evaluate_command)
    app.command("cv")(cv_command)
