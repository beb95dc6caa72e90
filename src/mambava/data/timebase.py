"""One time base: a temporal model's features on its own frame grid, whatever the video's rate or `--fps`.

A temporal model counts its receptive field and its windows in frames, so it has a frame rate: the rate of
the features it was trained on (`MambaVAConfig.fps`, kept in the checkpoint; Aff-Wild2: 30). Fed 10 fps frames
(`--fps 10`) as if they were consecutive, its 300-frame window and its TCN's receptive field would span three
times the time they were trained on; fed a 60 fps video, half.

The grid: ticks at `t0 + k / fps` (k = 0, 1, ...), t0 the first processed frame's timestamp. Tick k takes the
feature of the first processed frame in its slot [t0 + (k - 0.05)/fps, t0 + (k + 0.95)/fps) (the 5% for
timestamps rounded to the millisecond), and where a slot has none (the
frame was not processed, or the video is slower than the grid) it holds the previous tick's feature:
sample-and-hold, the same first-of-each-slot rule as `mambava.media.video`'s `--fps` sampling. Each source frame
gets the prediction of the tick of its slot. First-of-slot rather than last-of-slot keeps it causal for the
stream: a tick is stepped as soon as its first frame arrives, with no look-ahead.

So a 30 fps video with every frame processed maps one to one onto a 30 fps grid (nothing changes); a 60 fps
video gives each tick its even frames and each odd frame the prediction of the even frame before it; with
`--fps 10` each processed frame is held for three ticks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from mambava.core.errors import MambavaError

MODEL_FPS = 30.0  # the rate of Aff-Wild2's features; checkpoints written before the field existed have it
# A frame on a tick must not fall into the slot before it, and container timestamps are often rounded to the
# millisecond (Matroska stores 1/30 s as 0.033 s, 1/60 s short of its tick): slots start 5% of a tick early.
_EPS_TICKS = 0.05


def model_fps(model) -> float:
    """The frame rate a temporal model's features were made at: its config's `fps` (object or dict), else 30."""
    config = getattr(model, "config", None)
    value = config.get("fps") if isinstance(config, Mapping) else getattr(config, "fps", None)
    return float(value) if value else MODEL_FPS


def check_fps(fps, what: str = "fps") -> float:
    """A positive finite frame rate as float, else MambavaError naming `what`."""
    try:
        value = float(fps)
    except (TypeError, ValueError):
        value = float("nan")
    if not (np.isfinite(value) and value > 0):
        raise MambavaError(f"{what} must be a positive number of frames per second, got {fps!r}")
    return value


@dataclass(frozen=True)
class Grid:
    """The mapping between source frames and model-grid ticks (see the module doc)."""

    fps: float
    t0: float  # seconds, the time of tick 0
    held: np.ndarray  # (G,) int64: for each tick, the position (among the processed frames) whose feature it takes
    tick: np.ndarray  # (N,) int64: for each source frame, the tick whose prediction it gets

    @property
    def n_ticks(self) -> int:
        return len(self.held)


def slots(times, t0: float, fps: float) -> np.ndarray:
    """The grid slot (tick index) of each timestamp; times before t0 fall in slot 0, and a timestamp that goes
    back in time (a damaged stream) stays in the slot of the frame before it."""
    times = np.asarray(times, np.float64)
    ticks = np.floor((times - t0) * fps + _EPS_TICKS).astype(np.int64)
    return np.maximum.accumulate(np.maximum(ticks, 0)) if len(ticks) else ticks


def to_grid(processed_times, fps: float, source_times=None) -> Grid:
    """Map processed frames (their timestamps, seconds, in order) onto the model's `fps` grid, and every source
    frame (`source_times`, default: the processed ones) onto its tick. The model then runs on
    `features[grid.held]` and each source frame takes `predictions[grid.tick]`."""
    fps = check_fps(fps)
    processed = np.asarray(processed_times, np.float64)
    if processed.ndim != 1 or len(processed) == 0:
        raise MambavaError("the time base needs at least one processed frame")
    source = processed if source_times is None else np.asarray(source_times, np.float64)
    t0 = float(processed[0])
    p_slot = slots(processed, t0, fps)
    s_slot = slots(source, t0, fps)
    n_ticks = int(max(p_slot[-1], s_slot[-1] if len(s_slot) else 0)) + 1
    # the first processed frame of each slot; empty slots hold the tick before (slot 0 always has frame 0)
    first = np.full(n_ticks, -1, np.int64)
    unique_slots, first_index = np.unique(p_slot, return_index=True)
    first[unique_slots] = first_index
    held = np.maximum.accumulate(first)
    return Grid(fps=fps, t0=t0, held=held, tick=s_slot)


def stored_grid(n_frames: int, stored_fps: float | None, fps: float) -> Grid | None:
    """The model's `fps` grid over a stored video of `n_frames` made at `stored_fps` (frame k at k / stored_fps):
    for training and evaluation on a feature store, whose entries keep the video's own rate. None where the
    rates agree (within 0.1%) or the entry has no rate: then frame k is tick k, nothing to map."""
    if not stored_fps or n_frames <= 0 or abs(float(stored_fps) - float(fps)) <= 1e-3 * float(fps):
        return None
    return to_grid(np.arange(n_frames) / float(stored_fps), fps)


class GridClock:
    """The same grid, one frame at a time (for the stream): `tick(time)` is the tick of the frame's slot,
    counted from the first frame seen (never going back). A stream steps the model once per new tick: the
    frame that opens a tick gives it its feature, ticks skipped over (slots no frame fell in) hold the last
    one, and a frame whose slot already has its tick takes that tick's output
    (`mambava.inference.stream.TrackStreams`)."""

    def __init__(self, fps: float):
        self.fps = check_fps(fps)
        self.t0: float | None = None
        self.last = 0

    def tick(self, time: float) -> int:
        if self.t0 is None:
            self.t0 = float(time)
        self.last = max(self.last, int(np.floor((float(time) - self.t0) * self.fps + _EPS_TICKS)))
        return self.last


__all__ = ["MODEL_FPS", "Grid", "GridClock", "model_fps", "check_fps", "slots", "to_grid"]
