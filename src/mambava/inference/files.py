"""What `mambava predict` reads and writes besides the model: the inputs a command line names (videos, feature
files, folders of them), and each input's files: `<name>.csv` (+ `.parquet` with pyarrow), the valence/arousal
and circumplex plots, the overlay video. Written atomically (`mambava.core.fileio`).

`write_input` writes one input's files and says what it did (an `InputReport`): the one writer of every engine
(`predict_input` in this process, a Ray task in `mambava.distributed`), so both write the same files."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mambava.analysis.plots import OverlayVideoWriter, draw_overlay, plot_circumplex, plot_va_over_time
from mambava.analysis.summaries import write_analysis
from mambava.core.errors import MambavaError, error_line
from mambava.core.fileio import atomic_group, atomic_path
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


@dataclass
class OutputOptions:
    """What `predict` writes for each input besides its CSV.

    Attributes:
        out: the output folder.
        plots: the VA-over-time and circumplex PNGs.
        overlay: `<name>.overlay.mp4` for videos.
        fps: the sampling of the prediction (the overlay re-reads the video with it).
        events: a BIDS events .tsv or a folder of them (`<name>.events.csv`).
        baseline: the events' baseline trial_type.
        normalise: against the baseline: "difference" or "zscore".
    """

    out: Path
    plots: bool = True
    overlay: bool = False
    fps: float | None = None
    events: Path | None = None
    baseline: str | None = None
    normalise: str = "difference"


@dataclass
class InputReport:
    """What predict did with one input: `lines` to show, in order, as (text, "out" for stdout or "warn" for a
    yellow line on stderr); `error` the one-line message of a failed input (nothing of it was written);
    `frames` the rows' frames."""

    path: str
    lines: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None
    frames: int = 0


def describe_table(table) -> str:
    """`N frames, K track(s): name (face in a/b), ...` for a predict table."""
    tracks = table.groupby("track", sort=False)["face"]
    parts = [f"{name} (face in {int(faces.sum())}/{len(faces)})" for name, faces in tracks]
    return f"{table['frame'].nunique()} frames, {len(parts)} track(s): " + ", ".join(parts)


def write_input(
    path, table, options: OutputOptions, video: bool, progress: bool = False, label: str | None = None
) -> InputReport:
    """Write one input's files (the CSV, summaries, plots and overlay appear together or not at all) and
    report them. `video`: the input is a video (an overlay can be drawn); `label`: the input as the report
    names it (default: `path`)."""
    name = Path(path).stem
    shown = str(path) if label is None else label
    with atomic_group():
        written = write_table(table, options.out, name, plots=options.plots)
        written.update(
            write_analysis(
                table, options.out, name, options.events, options.baseline, options.normalise, plots=options.plots
            )
        )
        if options.overlay and video:
            overlay_path = output_paths(options.out, name)["overlay"]
            written["overlay"] = write_overlay(path, table, overlay_path, fps=options.fps, progress=progress)
    report = InputReport(shown, frames=int(table["frame"].nunique()))
    if options.events is not None and "events" not in written:
        report.lines.append((f"{shown}: no {name}_events.tsv or {name}.tsv in {options.events}", "warn"))
    report.lines.append((f"{shown}: {describe_table(table)} -> " + ", ".join(str(p) for p in written.values()), "out"))
    stale = [str(p) for kind, p in output_paths(options.out, name).items() if kind not in written and p.exists()]
    if stale:
        report.lines.append((f"note: {', '.join(stale)} from an earlier run, not rewritten", "warn"))
    return report


def predict_input(predictor, path, options: OutputOptions, progress: bool = False) -> InputReport:
    """`predictor.predict(path)` and its files (`write_input`); a MambavaError or OSError (a bad input, an
    output that cannot be written) is the report's `error`, and the batch goes on."""
    try:
        table = predictor.predict(path)
        return write_input(path, table, options, Path(str(path)).suffix.lower() not in FEATURE_SUFFIXES, progress)
    except (MambavaError, OSError) as error:
        return InputReport(str(path), error=error_line(error))
