"""Cross-validation as in the paper's Table 1: fold 0 (the official train/validation split) and folds 1-5 (a
5-fold cross-validation over train + validation), one training run per fold, then a table of each fold's
validation CCC_v, CCC_a and their average (at the best validation P_VA, the run's model selection),
with mean ± std over the folds (sample std, ddof = 1).

Layout: `out_dir/folds.yaml` (the folds used, written once so every fold reads the same partition),
`out_dir/fold<k>/` (a complete training run each), `out_dir/cv_results.csv` and `out_dir/cv_summary.json`.
`run_cv(..., config_for=...)` takes each fold's config from a function (the authors' recipe has its own values
on fold 0), and `rescore` scores each fold's best model again under a given protocol ("videos": whole videos
stitched, "authors": the reference's validation windows; `mambava cv --both-protocols` prints both tables).
Each fold is resumable (`checkpoints/last.ckpt`) and skipped once finished (`summary.json`), so re-running
the same command after an interruption picks up where it stopped.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mambava.core.errors import MambavaError
from mambava.core.fileio import atomic_open
from mambava.data.folds import load_folds, save_folds
from mambava.training.config import TrainConfig
from mambava.training.data import resolve_folds
from mambava.training.evaluate import evaluate_checkpoint
from mambava.training.outputs import read_summary
from mambava.training.run import train

COLUMNS = ("fold", "ccc_valence", "ccc_arousal", "p_va")


def fold_config(cfg: TrainConfig, fold: int, folds_file: str) -> TrainConfig:
    """The config of one fold's run: same recipe, `data.fold`, the shared folds file, `out_dir/fold<k>`."""
    data = dataclasses.replace(cfg.data, fold=fold, folds=folds_file)
    return dataclasses.replace(cfg, data=data, out_dir=str(Path(cfg.out_dir) / f"fold{fold}"), model=dict(cfg.model))


def prepare_folds(cfg: TrainConfig) -> tuple[str, list[int]]:
    """The folds file every fold reads (cfg.data.folds, or folds made from the Aff-Wild2 splits and saved to
    out_dir/folds.yaml) and the fold ids it holds."""

    out = Path(cfg.out_dir)
    if cfg.data.folds:
        return cfg.data.folds, sorted(load_folds(cfg.data.folds))
    path = out / "folds.yaml"
    if path.is_file():  # a resumed cv keeps the partition it started with
        return str(path), sorted(load_folds(path))
    folds = resolve_folds(cfg)
    save_folds(path, folds)
    return str(path), sorted(folds)


def run_cv(
    cfg: TrainConfig,
    folds: Sequence[int] | None = None,
    callbacks: Sequence = (),
    echo=print,
    config_for: Callable[[int], TrainConfig] | None = None,
) -> list[dict[str, Any]]:
    """Train every fold (skipping finished ones, resuming interrupted ones) and return the table rows.
    `config_for(k)`, when given, is fold k's recipe (out_dir and folds still come from `cfg`)."""
    folds_file, available = prepare_folds(cfg)
    chosen = list(available if folds is None else folds)
    missing = [k for k in chosen if k not in available]
    if missing:
        raise MambavaError(f"{folds_file}: no fold {missing[0]} (folds: {available})")
    for k in chosen:
        fold_cfg = fold_config(cfg if config_for is None else config_for(k), k, folds_file)
        fold_cfg = dataclasses.replace(fold_cfg, out_dir=str(Path(cfg.out_dir) / f"fold{k}"))
        done = read_summary(fold_cfg.out_dir)
        if done and done.get("finished"):
            echo(f"fold {k}: finished earlier, skipped ({fold_cfg.out_dir})")
            continue
        echo(f"fold {k}: training in {fold_cfg.out_dir}")
        summary = train(fold_cfg, resume="auto", callbacks=callbacks)  # a fold not started yet starts
        if summary is None:
            raise MambavaError(f"fold {k}: interrupted; run the same command again to resume")
    return collect(cfg.out_dir, chosen)


def collect(out_dir: str, folds: Sequence[int]) -> list[dict[str, Any]]:
    """Table rows (fold, ccc_valence, ccc_arousal, p_va) from each fold's summary.json."""
    rows = []
    for k in folds:
        summary = read_summary(Path(out_dir) / f"fold{k}")
        if not summary or not summary.get("finished") or not summary.get("best"):
            raise MambavaError(f"{Path(out_dir) / f'fold{k}'}: fold {k} has no finished run")
        best = summary["best"]
        rows.append(
            {"fold": k, "ccc_valence": best["ccc_valence"], "ccc_arousal": best["ccc_arousal"], "p_va": best["p_va"]}
        )
    return rows


def rescore(out_dir: str, folds: Sequence[int], protocol: str, device: str = "auto") -> list[dict[str, Any]]:
    """Table rows from each fold's best model (`fold<k>/model.safetensors`) scored on its validation videos
    under `protocol`; the per-video CSVs go beside each model (`eval_validation_fold<k>[_authors].csv`)."""
    rows = []
    for k in folds:
        model = Path(out_dir) / f"fold{k}" / "model.safetensors"
        if not model.is_file():
            raise MambavaError(f"{model}: fold {k} has no finished run")
        result, _ = evaluate_checkpoint(model, split="validation", device=device, protocol=protocol)
        rows.append(
            {"fold": k, "ccc_valence": result.ccc_valence, "ccc_arousal": result.ccc_arousal, "p_va": result.p_va}
        )
    return rows


def mean_std(rows: Sequence[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    stats = {}
    for key in COLUMNS[1:]:
        values = np.array([r[key] for r in rows], dtype=np.float64)
        stats[key] = (float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0)
    return stats


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The table in the form of the paper's Table 1, plus a mean ± std line."""
    lines = [f"{'Fold':<10}{'Valence(CCC)':>16}{'Arousal(CCC)':>16}{'Average(CCC)':>16}"]
    for r in rows:
        lines.append(f"{r['fold']:<10}{r['ccc_valence']:>16.4f}{r['ccc_arousal']:>16.4f}{r['p_va']:>16.4f}")
    stats = mean_std(rows)
    cells = "".join(f"{f'{m:.4f} ± {s:.4f}':>16}" for m, s in (stats[k] for k in COLUMNS[1:]))
    lines.append(f"{'Mean ± std':<10}{cells}")
    return "\n".join(lines)


def write_results(out_dir: str, rows: Sequence[dict[str, Any]], suffix: str = "") -> tuple[Path, Path]:
    """cv_results<suffix>.csv and cv_summary<suffix>.json in out_dir."""
    out = Path(out_dir)
    csv_path, json_path = out / f"cv_results{suffix}.csv", out / f"cv_summary{suffix}.json"
    with atomic_open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    stats = mean_std(rows)
    with atomic_open(json_path, "w") as handle:
        json.dump(
            {
                "folds": list(rows),
                "mean": {k: v[0] for k, v in stats.items()},
                "std": {k: v[1] for k, v in stats.items()},
            },
            handle,
            indent=1,
        )
    return csv_path, json_path
