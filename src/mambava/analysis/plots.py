"""Pictures of a prediction: valence/arousal over time, the trajectory in the valence-arousal circumplex, and
an annotated copy of the video (face box and two VA bars drawn on every frame).

All functions take the per-frame table that `mambava.inference.predict` produces (columns `track`, `time`, `valence`,
`arousal`, `face`; one row per frame and track) and write their file atomically. matplotlib is used through
its object API with the Agg canvas, so nothing here touches pyplot's global state or needs a display.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Mapping, Sequence

import av
import cv2
import numpy as np

from mambava.core.fileio import atomic_path, make_folder

VALENCE_COLOR = "#1f77b4"
AROUSAL_COLOR = "#d62728"
_VALENCE_RGB = (31, 119, 180)
_AROUSAL_RGB = (214, 39, 40)

# Russell's circumplex: valence on x, arousal on y; one word per quadrant, at 45 degrees.
_QUADRANT_WORDS = {(1, 1): "excited", (-1, 1): "tense", (-1, -1): "sad", (1, -1): "calm"}


def new_figure(width: float, height: float):
    """A matplotlib Figure on the Agg canvas (no pyplot state, safe in threads and headless), laid out."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure, path: str | os.PathLike) -> Path:
    """Write `figure` as a PNG at `path`, atomically (its folder made if needed)."""
    path = Path(path)
    make_folder(path.parent)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path


def _tracks(table) -> list[tuple[str, "object"]]:
    """(track name, its rows sorted by time) for each track, in order of first appearance."""
    if "track" not in table.columns:
        return [("", table.sort_values("time"))]
    names = list(dict.fromkeys(table["track"].astype(str)))
    return [(name, table[table["track"].astype(str) == name].sort_values("time")) for name in names]


def _no_face_spans(time: np.ndarray, face: np.ndarray) -> list[tuple[float, float]]:
    """Time spans [start, end) of consecutive frames without a face (end = the next frame's time)."""
    spans = []
    missing = ~face.astype(bool)
    if not missing.any():
        return spans
    step = float(np.median(np.diff(time))) if len(time) > 1 else 1.0
    edges = np.diff(np.concatenate([[0], missing.astype(np.int8), [0]]))
    for start, end in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
        t_end = time[end] if end < len(time) else time[end - 1] + step
        spans.append((float(time[start]), float(t_end)))
    return spans


def plot_va_over_time(
    table, path: str | os.PathLike, title: str | None = None, truth=None, truth_label: str = "truth", events=None
) -> Path:
    """One panel per track: valence and arousal against time (seconds), y in [-1, 1]; frames without a face
    (values carried over from the last face, see `mambava.inference.predict`) are shaded grey. `truth`, when known: a
    (T, 2) array for a one-track table, or {track: (T, 2)}, one row per row of the track in time order; drawn
    dashed and named `truth_label` in the legend (NaN or -5 rows are left out). `events`: a BIDS events table
    (`mambava.analysis.summaries.read_events`) whose segments are shaded, one colour per trial_type."""
    tracks = _tracks(table)
    if truth is not None and not isinstance(truth, Mapping):
        truth = {tracks[0][0]: truth}
    figure = new_figure(10, 1.0 + 2.2 * len(tracks))
    axes = figure.subplots(len(tracks), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (name, rows) in zip(axes, tracks):
        time = rows["time"].to_numpy(dtype=float)
        ax.plot(time, rows["valence"].to_numpy(), color=VALENCE_COLOR, lw=1.4, label="valence")
        ax.plot(time, rows["arousal"].to_numpy(), color=AROUSAL_COLOR, lw=1.4, label="arousal")
        if truth is not None and name in truth:
            values = np.array(truth[name], dtype=float)
            values[(values <= -5) | ~np.isfinite(values)] = np.nan
            ax.plot(time, values[:, 0], color=VALENCE_COLOR, lw=1.0, ls="--", label=f"valence ({truth_label})")
            ax.plot(time, values[:, 1], color=AROUSAL_COLOR, lw=1.0, ls="--", label=f"arousal ({truth_label})")
        if "face" in rows.columns:
            spans = _no_face_spans(time, rows["face"].to_numpy())
            for i, (t0, t1) in enumerate(spans):
                ax.axvspan(t0, t1, color="0.85", zorder=0, label="no face" if i == 0 else None)
        if events is not None:
            _shade_events(ax, events)
            if len(time):  # events outside the video are reported in events.csv, not drawn
                ax.set_xlim(float(time.min()), float(time.max()))
        ax.axhline(0.0, color="0.5", lw=0.6)
        ax.set_ylim(-1.05, 1.05)
        ax.set_ylabel(name or "value")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize="small", ncols=3)
    axes[-1].set_xlabel("time (s)")
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)


def _shade_events(ax, events) -> None:
    from matplotlib import colormaps

    types = list(dict.fromkeys(events["trial_type"].astype(str)))
    colours = colormaps["Pastel2"]
    for index, kind in enumerate(types):
        rows = events[events["trial_type"].astype(str) == kind]
        for i, (onset, duration) in enumerate(zip(rows["onset"], rows["duration"])):
            ax.axvspan(
                float(onset),
                float(onset) + float(duration),
                color=colours(index % 8),
                alpha=0.45,
                zorder=0,
                label=kind if i == 0 else None,
            )


def plot_event_bars(aggregated, path: str | os.PathLike, title: str | None = None) -> Path:
    """Per-event bar chart of `mambava.analysis.summaries.aggregate_events` rows: mean valence and arousal of each event
    (baseline-normalised when the table has `v_mean_norm`), error bars one SD, one panel per track."""
    names = list(dict.fromkeys(aggregated["track"].astype(str)))
    norm = "v_mean_norm" in aggregated.columns
    figure = new_figure(max(5.0, 0.6 * aggregated["event"].nunique() + 2), 1.0 + 2.6 * len(names))
    axes = figure.subplots(len(names), 1, squeeze=False)[:, 0]
    for ax, name in zip(axes, names):
        rows = aggregated[aggregated["track"].astype(str) == name]
        x = np.arange(len(rows))
        for offset, (prefix, label, colour) in zip(
            (-0.2, 0.2), (("v", "valence", VALENCE_COLOR), ("a", "arousal", AROUSAL_COLOR))
        ):
            mean = rows[f"{prefix}_mean_norm" if norm else f"{prefix}_mean"].to_numpy(float)
            sd = rows[f"{prefix}_sd"].to_numpy(float)
            if norm and rows["normalisation"].iloc[0] == "zscore":
                sd = sd / rows[f"{prefix}_baseline_sd"].to_numpy(float)
            ax.bar(x + offset, mean, 0.4, yerr=np.nan_to_num(sd), capsize=3, color=colour, label=label)
        ax.axhline(0.0, color="0.5", lw=0.6)
        ax.set_xticks(x)
        ax.set_xticklabels(
            [f"{e}: {t}" for e, t in zip(rows["event"], rows["trial_type"].astype(str))],
            rotation=30,
            ha="right",
            fontsize="small",
        )
        what = f"{rows['normalisation'].iloc[0]} from '{rows['baseline'].iloc[0]}'" if norm else "mean"
        ax.set_ylabel(f"{name}\n{what} (±1 SD)" if name else f"{what} (±1 SD)")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(loc="upper right", fontsize="small")
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)


def plot_circumplex(table, path: str | os.PathLike, title: str | None = None) -> Path:
    """One panel per track: the (valence, arousal) trajectory inside the unit circle, coloured from the first
    frame (dark) to the last (light), with the start and end marked."""
    from matplotlib.collections import LineCollection

    tracks = _tracks(table)
    n = len(tracks)
    figure = new_figure(4.6 * n + (0.8 if n else 0), 4.8)
    axes = figure.subplots(1, n, squeeze=False)[0]
    for ax, (name, rows) in zip(axes, tracks):
        v = rows["valence"].to_numpy(dtype=float)
        a = rows["arousal"].to_numpy(dtype=float)
        time = rows["time"].to_numpy(dtype=float)
        theta = np.linspace(0, 2 * np.pi, 361)
        ax.plot(np.cos(theta), np.sin(theta), color="0.6", lw=0.8)
        ax.axhline(0.0, color="0.6", lw=0.6)
        ax.axvline(0.0, color="0.6", lw=0.6)
        for (sx, sy), word in _QUADRANT_WORDS.items():
            ax.text(0.78 * sx, 0.78 * sy, word, ha="center", va="center", color="0.45", fontsize="small")
        if len(v) > 1:
            points = np.stack([v, a], axis=1)
            segments = np.stack([points[:-1], points[1:]], axis=1)
            lines = LineCollection(segments, cmap="viridis", linewidths=1.6)
            lines.set_array(time[:-1])
            ax.add_collection(lines)
            figure.colorbar(lines, ax=ax, shrink=0.7, label="time (s)")
        if len(v):
            ax.plot(v[0], a[0], "o", color="black", ms=5, label="start")
            ax.plot(v[-1], a[-1], "s", color="black", ms=5, mfc="white", label="end")
            ax.legend(loc="lower left", fontsize="small")
        ax.set_xlim(-1.1, 1.1)
        ax.set_ylim(-1.1, 1.1)
        ax.set_xticks([-1, -0.5, 0, 0.5, 1])
        ax.set_yticks([-1, -0.5, 0, 0.5, 1])
        ax.set_aspect("equal")
        ax.set_xlabel("valence")
        ax.set_ylabel("arousal")
        if name and name != title:
            ax.set_title(name)
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)


def draw_overlay(
    image: np.ndarray,
    box: Sequence[float] | None,
    valence: float,
    arousal: float,
    label: str | None = None,
    face: bool = True,
) -> np.ndarray:
    """Draw, in place on an RGB uint8 image, the face box (grey when the face was not found in this frame and
    the values are carried over) and two bars under it: valence and arousal, each from -1 (left) to +1 (right)
    with a tick at 0. With no box the bars go to the top-left corner. Returns the image."""

    height, width = image.shape[:2]
    scale = max(0.5, min(width, height) / 480)
    thickness = max(1, round(1.5 * scale))
    bar_h, gap = max(6, int(12 * scale)), max(4, int(7 * scale))
    needed = 2 * bar_h + gap  # the two bars' height
    if box is not None:
        x0, y0, x1, y1 = (int(round(c)) for c in box[:4])
        color = (0, 220, 0) if face else (150, 150, 150)
        cv2.rectangle(image, (x0, y0), (x1, y1), color, thickness)
        bar_w = max(int(100 * scale), (x1 - x0) // 2)
        bx = min(max(x0, 0), max(width - bar_w - int(80 * scale), 0))
        below = y1 + gap + needed <= height
        by = y1 + gap if below else max(y0 - gap - needed, 0)  # under the box, else above it
        label_y = y0 - gap if below else by - gap  # the label goes above the box, or above the bars
    else:
        bar_w = int(120 * scale)
        bx, by = int(10 * scale), int(10 * scale)
    font, font_scale = cv2.FONT_HERSHEY_SIMPLEX, 0.45 * scale
    label_w = cv2.getTextSize("V", font, font_scale, thickness)[0][0] + gap
    for row, (name, value, rgb) in enumerate((("V", valence, _VALENCE_RGB), ("A", arousal, _AROUSAL_RGB))):
        top = by + row * (bar_h + gap)
        left = bx + label_w
        cv2.rectangle(image, (left, top), (left + bar_w, top + bar_h), (40, 40, 40), -1)
        mid = left + bar_w // 2
        end = mid + int(round(float(np.clip(value, -1, 1)) * bar_w / 2))
        cv2.rectangle(image, (min(mid, end), top), (max(mid, end), top + bar_h), rgb, -1)
        cv2.line(image, (mid, top - 1), (mid, top + bar_h + 1), (255, 255, 255), 1)
        cv2.putText(image, name, (bx, top + bar_h), font, font_scale, (255, 255, 255), thickness, cv2.LINE_AA)
        cv2.putText(
            image,
            f"{value:+.2f}",
            (left + bar_w + gap, top + bar_h),
            font,
            font_scale,
            (255, 255, 255),
            thickness,
            cv2.LINE_AA,
        )
    if label and box is not None:
        cv2.putText(image, label, (bx, max(bar_h, label_y)), font, font_scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return image


class OverlayVideoWriter:
    """H.264 MP4 written with PyAV (its wheels carry libx264), frame by frame, atomically: the file appears
    at `path` only when `close()` runs after a complete write. Odd frame sizes are padded by one pixel."""

    def __init__(self, path: str | os.PathLike, fps: float | None):
        self.path = Path(path)
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        self._fps = Fraction(fps or 30.0).limit_denominator(1001)
        self._container = None
        self._stream = None

    def write(self, image: np.ndarray) -> None:
        if image.shape[0] % 2 or image.shape[1] % 2:
            image = np.pad(image, ((0, image.shape[0] % 2), (0, image.shape[1] % 2), (0, 0)), mode="edge")
        if self._container is None:
            self._container = av.open(str(self._tmp), mode="w", format="mp4")
            self._stream = self._container.add_stream("libx264", rate=self._fps)
            self._stream.width, self._stream.height = image.shape[1], image.shape[0]
            self._stream.pix_fmt = "yuv420p"
            self._stream.options = {"crf": "23", "preset": "veryfast"}
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def close(self, ok: bool = True, error: BaseException | None = None) -> None:
        """Finish the file (ok=True) or throw the partial file away (ok=False; `error` is what went wrong, an
        OSError writing the file comes back as an OutputError naming `path`)."""
        finished = False
        try:
            if self._container is not None:
                if ok:
                    for packet in self._stream.encode():
                        self._container.mux(packet)
                self._container.close()
            finished = True
        except BaseException as exc:
            error = error or exc
            raise
        finally:
            if ok and finished and self._container is not None:
                self._ctx.__exit__(None, None, None)
            else:  # throwing into atomic_path removes the temporary file and leaves `path` as it was
                error = error or RuntimeError("overlay video not completed")
                self._ctx.__exit__(type(error), error, error.__traceback__)

    def __enter__(self) -> "OverlayVideoWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(ok=exc_type is None, error=exc)


__all__ = ["plot_va_over_time", "plot_event_bars", "plot_circumplex", "draw_overlay", "OverlayVideoWriter"]
