"""A run's outputs: where they go (`RunPaths`), metrics.csv, curves.png, summary.json."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from mambava.core.fileio import atomic_open, atomic_path


@dataclass
class RunPaths:
    out: Path

    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.ckpt"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def model(self) -> Path:
        return self.out / "model.safetensors"

    @property
    def metrics(self) -> Path:
        return self.out / "metrics.csv"

    @property
    def validations(self) -> Path:
        return self.out / "validations.csv"

    @property
    def summary(self) -> Path:
        return self.out / "summary.json"

    @property
    def curves(self) -> Path:
        return self.out / "curves.png"

    @property
    def config(self) -> Path:
        return self.out / "config.yaml"


METRIC_COLUMNS = ["epoch", "step", "lr", "train_loss", "val_ccc_valence", "val_ccc_arousal", "val_p_va", "time_s"]
VALIDATION_COLUMNS = ["epoch", "step", "val_ccc_valence", "val_ccc_arousal", "val_p_va"]


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a run's metrics.csv with numbers parsed (empty cells -> None)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            parsed: dict[str, Any] = {}
            for key, value in row.items():
                if value in ("", None):
                    parsed[key] = None
                elif key in ("epoch", "step"):
                    parsed[key] = int(float(value))
                else:
                    parsed[key] = float(value)
            rows.append(parsed)
    return rows


def write_metrics(path: Path, rows: list[dict[str, Any]], columns: list[str] = METRIC_COLUMNS) -> None:
    """Rows as a CSV of `columns` (metrics.csv; validations.csv with VALIDATION_COLUMNS), atomically."""
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})


def plot_curves(rows: list[dict[str, Any]], path: str | os.PathLike, title: str = "") -> Path:
    """curves.png: training loss, validation CCCs and P_VA, and the learning rate, per epoch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    figure = Figure(figsize=(12, 3.6), dpi=100)  # fixed margins: constrained layout costs ~1 s per figure
    FigureCanvasAgg(figure)
    ax_loss, ax_val, ax_lr = figure.subplots(1, 3)
    figure.subplots_adjust(left=0.05, right=0.99, bottom=0.14, top=0.82 if title else 0.9, wspace=0.25)
    epochs = [r["epoch"] + 1 for r in rows]

    def series(key):
        pairs = [(e, r[key]) for e, r in zip(epochs, rows) if r.get(key) is not None]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    ax_loss.plot(*series("train_loss"), marker="o", ms=3, color="black")
    ax_loss.set(title="training loss (2 - CCC_v - CCC_a)", xlabel="epoch")
    for key, label, color in (
        ("val_ccc_valence", "CCC valence", "#1f77b4"),
        ("val_ccc_arousal", "CCC arousal", "#d62728"),
        ("val_p_va", "P_VA", "black"),
    ):
        xs, ys = series(key)
        ax_val.plot(xs, ys, marker="o", ms=3, label=label, color=color)
    best = [r for r in rows if r.get("val_p_va") is not None]
    if best:
        top = max(best, key=lambda r: r["val_p_va"])
        ax_val.axvline(top["epoch"] + 1, color="gray", ls=":", lw=1)
    ax_val.set(title="validation (full videos)", xlabel="epoch")
    ax_val.legend(loc="lower right", fontsize=8)
    ax_lr.plot(*series("lr"), marker="o", ms=3, color="#2ca02c")
    ax_lr.set(title="learning rate (end of epoch)", xlabel="epoch")
    ax_lr.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.1e}"))
    for ax in (ax_loss, ax_val, ax_lr):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        figure.suptitle(title)
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path


def write_json(path: Path, data: Mapping) -> None:
    with atomic_open(path, "w") as handle:
        json.dump(data, handle, indent=1)
        handle.write("\n")


def read_summary(out_dir: str | os.PathLike) -> dict | None:
    path = Path(out_dir) / "summary.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
