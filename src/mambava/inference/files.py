"""What `mambava predict` reads and writes besides the model: the inputs a command line names (videos, feature
files, folders of them), and each input's files: `<name>.csv` (+ `.parquet` with pyarrow), the valence/arousal
and circumplex plots, the overlay video. Written atomically (`mambava.core.fileio`)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np

from mambava.analysis.plots import OverlayVideoWriter, draw_overlay, plot_circumplex, plot_va_over_time
from mambava.core.errors import MambavaError
from mambava.core.fileio import atomic_path
from mambava.core.progress import track_items
from mambava.media.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES, open_video

FEATURE_SUFFIXES = (".npy",)


def output_paths(out_dir: str | os.PathLike, stem: str) -> dict[str, Path]:
    out_dir = Path(out_dir)
    return {
        "csv": out_dir / f"{stem}.csv",
        "parquet": out_dir / f"{stem}.parquet",
        "va_plot": out_dir / f"{stem}.va.png",
        "circumplex_plot": out_dir / f"{stem}.circumplex.png",
        "overlay": out_dir / f"{stem}.overlay.mp4",
    }


def write_table(table, out_dir: str | os.PathLike, stem: str, plots: bool = True) -> dict[str, Path]:
    """Write the per-frame table as CSV (and Parquet when pyarrow is installed) and, with `plots`, the two
    PNGs; every file atomically. Returns {kind: path} of what was written."""

    paths = output_paths(out_dir, stem)
    written = {}
    with atomic_path(paths["csv"]) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    written["csv"] = paths["csv"]
    if importlib.util.find_spec("pyarrow") is not None:
        with atomic_path(paths["parquet"]) as tmp:
            table.to_parquet(tmp, index=False)
        written["parquet"] = paths["parquet"]
    if plots:
        title = str(table["video"].iloc[0]) if len(table) else stem
        written["va_plot"] = plot_va_over_time(table, paths["va_plot"], title=title)
        written["circumplex_plot"] = plot_circumplex(table, paths["circumplex_plot"], title=title)
    return written


def write_overlay(
    video: str | os.PathLike, table, path: str | os.PathLike, fps: float | None = None, progress: bool = False
) -> Path:
    """Re-read `video` (with the same `fps` sampling as the prediction) and write it with each track's box and
    valence/arousal bars drawn (`mambava.analysis.plots.draw_overlay`); a track whose face is missing in a frame keeps
    its last box, in grey."""

    by_frame = {frame: rows for frame, rows in table.groupby("frame", sort=False)}
    last_box: dict[str, np.ndarray] = {}
    several = table["track"].nunique() > 1
    with open_video(video, fps=fps) as reader, OverlayVideoWriter(path, reader.fps) as writer:
        for frame in track_items(reader, f"overlay {Path(str(video)).name}", reader.n_output_frames, progress):
            image = np.ascontiguousarray(frame.image)
            rows = by_frame.get(frame.index)
            if rows is not None:
                for row in rows.itertuples(index=False):
                    box = np.array([row.x1, row.y1, row.x2, row.y2], np.float32)
                    if np.isfinite(box).all():
                        last_box[row.track] = box
                    draw_overlay(
                        image,
                        last_box.get(row.track),
                        row.valence,
                        row.arousal,
                        label=str(row.track) if several else None,
                        face=bool(row.face),
                    )
            writer.write(image)
    return Path(path)


def find_inputs(paths) -> list:
    """Expand the inputs of `mambava predict`: a file stays as is (a URL too, as a string); a folder holding
    videos or .npy files gives those (sorted); a folder of images only is one image-sequence video."""

    found: list = []
    for text in map(str, paths):
        if "://" in text:
            found.append(text)
            continue
        path = Path(text)
        if not path.exists():
            raise MambavaError(f"{path}: no such file or folder")
        if not path.is_dir():
            found.append(path)
            continue
        entries = sorted(p for p in path.iterdir() if p.is_file())
        inputs = [p for p in entries if p.suffix.lower() in VIDEO_SUFFIXES or p.suffix.lower() in FEATURE_SUFFIXES]
        if inputs:
            found.extend(inputs)
        elif any(p.suffix.lower() in IMAGE_SUFFIXES for p in entries):
            found.append(path)
        else:
            raise MambavaError(f"{path}: no videos, .npy feature files or images in this folder")
    return found
