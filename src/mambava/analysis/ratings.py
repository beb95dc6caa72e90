"""Continuous ratings as labs record them, brought onto a video's frames, and each rater's lag against the
model's predictions.

Two file formats are read (`read_ratings`):
- a CSV with a time column in seconds (`time`, `timestamp`, `t`, `seconds` or `time_s`, any case) and a
  `valence` and/or `arousal` column, at any rate (e.g. joystick ratings at 10 Hz): linearly interpolated at the
  video's frame times, NaN before the first and after the last rating (never extrapolated). `value_range`
  (lo, hi) maps a rating scale linearly onto [-1, 1] first (e.g. (-1000, 1000) for a joystick);
- the Aff-Wild2 per-frame format (first line `valence,arousal`, one line per frame, -5 = invalid,
  `mambava.data.affwild2.read_va_annotation`): line k is frame k.
After scaling, every value must lie in [-1, 1]; one that does not is a MambavaError naming the file and line.

Lag (`estimate_lag`): raters respond late. For each lag k frames within +-`max_lag_s` (3 s), CCC between the
prediction at frame t and the rating at frame t + k, over the frames where both are known; the lag is the k
with the highest CCC (positive: the rater is behind the model). The curve is kept for the plot.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mambava.analysis.plots import AROUSAL_COLOR, VALENCE_COLOR, new_figure, save_figure
from mambava.core.errors import MambavaError
from mambava.core.metrics import ccc_numpy
from mambava.data.affwild2 import ANNOTATION_HEADER, INVALID_LABEL, read_va_annotation

TIME_COLUMNS = ("time", "timestamp", "t", "seconds", "time_s")
MAX_LAG_S = 3.0
MIN_OVERLAP = 10  # frames both known, for a lag's CCC to count


def _read_text(path: Path) -> str:
    """A ratings file's text, checked: not empty, not binary, UTF-8 (a BOM allowed); MambavaError naming the
    file (and the line of a byte that is not UTF-8) otherwise."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise MambavaError(f"{path}: cannot read ratings ({error.strerror or error})") from None
    if not data.strip():
        raise MambavaError(f"{path}: an empty file (a ratings CSV with a header line is expected)")
    if b"\x00" in data[:65536]:
        raise MambavaError(f"{path}: a binary file, not a ratings CSV (text with a time and valence/arousal columns)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise MambavaError(
            f"{path}: line {line}: byte 0x{data[error.start]:02x} is not UTF-8 text (save the file as UTF-8)"
        ) from None


def read_ratings(
    path: str | os.PathLike, frames: np.ndarray, times: np.ndarray, value_range: tuple[float, float] | None = None
) -> np.ndarray:
    """(T, 2) float64 valence/arousal of one rater at the given frames (0-based numbers) and times
    (seconds); NaN where the rater gave none (a dimension not rated, outside the rated span, -5)."""
    path = Path(path)
    frames = np.asarray(frames, np.int64)
    times = np.asarray(times, float)
    out = np.full((len(frames), 2), np.nan)
    if not path.is_file():
        raise MambavaError(f"{path}: no such ratings file")
    text = _read_text(path)
    if text.splitlines()[0].strip().replace(" ", "").lower() == ANNOTATION_HEADER:
        values = read_va_annotation(path).astype(float)
        values[values == INVALID_LABEL] = np.nan
        inside = frames < len(values)
        out[inside] = values[frames[inside]]
        return out

    try:
        table = pd.read_csv(io.StringIO(text), sep=None, engine="python", dtype=str, keep_default_na=False)
    except (OSError, ValueError, csv.Error, pd.errors.ParserError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MambavaError(f"{path}: not a readable ratings CSV ({first})") from None
    lower = {c.strip().lower(): c for c in table.columns}
    time_column = next((lower[c] for c in TIME_COLUMNS if c in lower), None)
    if time_column is None:
        raise MambavaError(
            f"{path}: no time column in seconds ({', '.join(TIME_COLUMNS)}), and not the "
            "Aff-Wild2 per-frame format (first line 'valence,arousal')"
        )
    dims = [(i, lower[name]) for i, name in enumerate(("valence", "arousal")) if name in lower]
    if not dims:
        raise MambavaError(f"{path}: no 'valence' or 'arousal' column")

    def numbers(column: str, blank_ok: bool) -> np.ndarray:
        text = table[column].str.strip()
        values = pd.to_numeric(text, errors="coerce").to_numpy(float)
        blank = text.isin(["", "n/a", "NaN", "nan", "NA"]).to_numpy()
        bad = ~np.isfinite(values) & ~(blank & blank_ok)
        if bad.any():
            row = int(np.argmax(bad))
            raise MambavaError(f"{path}: line {row + 2}: {column} {table[column].iloc[row]!r} is not a number")
        return values

    t = numbers(time_column, blank_ok=False)
    if len(t) < 2:
        raise MambavaError(f"{path}: fewer than two ratings")
    if np.any(np.diff(t) <= 0):
        row = int(np.argmax(np.diff(t) <= 0)) + 1
        raise MambavaError(f"{path}: line {row + 2}: time {t[row]:g} does not increase (previous {t[row - 1]:g})")
    for index, column in dims:
        x = numbers(column, blank_ok=True)
        if value_range is not None:
            lo, hi = value_range
            x = 2.0 * (x - lo) / (hi - lo) - 1.0
        out_of_range = np.isfinite(x) & (np.abs(x) > 1.0 + 1e-9)
        if out_of_range.any():
            row = int(np.argmax(out_of_range))
            raise MambavaError(
                f"{path}: line {row + 2}: {column} {table[column].iloc[row]} is outside [-1, 1]"
                + (" after --range" if value_range else " (pass --range LO HI for another scale)")
            )
        known = np.isfinite(x)
        if known.sum() < 2:
            continue
        resampled = np.interp(times, t[known], x[known])
        resampled[(times < t[known][0]) | (times > t[known][-1])] = np.nan
        out[:, index] = resampled
    return out


@dataclass
class Lag:
    frames: int  # best lag, frames (positive: the rater is behind the model)
    seconds: float
    ccc: float  # CCC at the best lag
    ccc_zero: float  # CCC at lag 0
    lags: np.ndarray  # (K,) frames tried
    curve: np.ndarray  # (K,) CCC per lag (NaN where too few frames overlap)
    fps: float


def lag_curve(prediction: np.ndarray, rating: np.ndarray, max_lag: int) -> tuple[np.ndarray, np.ndarray]:
    """(lags, CCC per lag) for lags -max_lag..max_lag frames: CCC(prediction[t], rating[t + k])."""

    p = np.asarray(prediction, float)
    r = np.asarray(rating, float)
    n = len(p)
    lags = np.arange(-max_lag, max_lag + 1)
    curve = np.full(len(lags), np.nan)
    for i, k in enumerate(lags):
        if k >= 0:
            a, b = p[: n - k], r[k:]
        else:
            a, b = p[-k:], r[: n + k]
        both = np.isfinite(a) & np.isfinite(b)
        if both.sum() >= MIN_OVERLAP:
            curve[i] = ccc_numpy(a[both], b[both])
    return lags, curve


def estimate_lag(prediction: np.ndarray, rating: np.ndarray, fps: float, max_lag_s: float = MAX_LAG_S) -> Lag:
    """The lag (see the module doc) of one rating series against one prediction series, both per frame."""
    max_lag = max(0, min(int(round(max_lag_s * fps)), len(prediction) - MIN_OVERLAP))
    lags, curve = lag_curve(prediction, rating, max_lag)
    if not np.isfinite(curve).any():
        raise MambavaError(f"fewer than {MIN_OVERLAP} frames where both prediction and rating are known")
    best = int(np.nanargmax(curve))
    zero = curve[lags == 0]
    return Lag(
        int(lags[best]),
        float(lags[best] / fps),
        float(curve[best]),
        float(zero[0]) if len(zero) else float("nan"),
        lags,
        curve,
        float(fps),
    )


def shift_labels(labels: np.ndarray, lag_frames: int) -> np.ndarray:
    """Labels moved `lag_frames` earlier (a rater `lag_frames` behind: frame t gets the rating at t + lag);
    frames left without a rating become NaN. A negative lag moves them later."""
    labels = np.asarray(labels, float)
    out = np.full_like(labels, np.nan)
    k = int(lag_frames)
    n = len(labels)
    if k >= 0:
        out[: n - k] = labels[k:]
    else:
        out[-k:] = labels[: n + k]
    return out


def frame_rate(times: np.ndarray) -> float:
    times = np.asarray(times, float)
    if len(times) < 2:
        raise MambavaError("a prediction with fewer than two frames has no frame rate")
    step = float(np.median(np.diff(times)))
    if step <= 0:
        raise MambavaError("prediction times do not increase")
    return 1.0 / step


def plot_lag_curves(results: list[tuple[str, str, Lag]], path: str | os.PathLike, title: str | None = None) -> Path:
    """CCC against lag (seconds) for each (rater, dimension), the best lag marked."""

    figure = new_figure(7, 4)
    ax = figure.subplots()
    styles = ["-", "--", ":", "-."]
    raters = list(dict.fromkeys(r for r, _, _ in results))
    for rater, dim, lag in results:
        colour = VALENCE_COLOR if dim == "valence" else AROUSAL_COLOR
        style = styles[raters.index(rater) % len(styles)]
        ax.plot(lag.lags / lag.fps, lag.curve, style, color=colour, label=f"{rater} {dim}: {lag.seconds:+.2f} s")
        ax.plot([lag.seconds], [lag.ccc], "o", color=colour)
    ax.axvline(0.0, color="0.5", lw=0.6)
    ax.set_xlabel("lag (s; positive: rater behind the model)")
    ax.set_ylabel("CCC")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    return save_figure(figure, path)


__all__ = [
    "read_ratings",
    "estimate_lag",
    "lag_curve",
    "shift_labels",
    "frame_rate",
    "plot_lag_curves",
    "Lag",
    "TIME_COLUMNS",
    "MAX_LAG_S",
]
