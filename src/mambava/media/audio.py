"""A video's sound on the video's clock (16 kHz mono), and the video's frame grid it is pooled onto. See
`mambava.audio`."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import av
import numpy as np

from mambava.core.errors import MambavaError
from mambava.media.video import error_reason, open_container

SAMPLE_RATE = 16000
SILENCE_DBFS = -80.0  # a frame whose peak is below this is digital silence (no recording), not a quiet room
MIN_COVERAGE = 0.5  # a frame needs at least this share of its interval covered by decoded sound
GAP_SECONDS = 0.01  # a jump in the audio timestamps larger than this is a gap (masked), not jitter


class AudioWarning(UserWarning):
    """A video's sound is missing in part or whole (no track, silent, starts late, ends early, damaged)."""


@dataclass
class AudioTrack:
    """Decoded sound: `samples` (N,) float32 mono at `sample_rate`, samples[0] at `start` seconds on the video's
    clock; `segments` (K, 2) the [start, end) seconds actually decoded (between them the samples are zeros)."""

    path: str
    samples: np.ndarray
    sample_rate: int
    start: float
    segments: np.ndarray
    codec: str = ""
    announced_end: float | None = None  # where the container says the stream ends (seconds, video clock)

    @property
    def end(self) -> float:
        return self.start + len(self.samples) / self.sample_rate

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate

    def covered(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Seconds of decoded sound inside each interval [lo[k], hi[k])."""
        lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
        if not len(self.segments):
            return np.zeros(len(lo))
        s, e = self.segments[:, 0], self.segments[:, 1]

        def before(t):  # seconds of sound before each time t
            return np.clip(t[:, None] - s[None, :], 0, (e - s)[None, :]).sum(1)

        return before(hi) - before(lo)


def _video_origin(container) -> float:
    """The time (seconds) the video stage counts from: the video stream's start; 0 without a video stream."""
    if container.streams.video:
        stream = container.streams.video[0]
        if stream.start_time is not None and stream.time_base is not None:
            return float(stream.start_time * stream.time_base)
    return 0.0


def decode_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> AudioTrack | None:
    """A file's first audio stream as mono float32 at `sample_rate`, on the video's clock; None when the file has
    no audio stream. A stream that breaks mid-way is kept up to the break, with an AudioWarning."""

    with open_container(path) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        origin = _video_origin(container)
        announced_end = None
        if stream.duration is not None and stream.time_base is not None:
            first = stream.start_time if stream.start_time is not None else 0
            announced_end = float((first + stream.duration) * stream.time_base) - origin
        segments: list[tuple[float, list[np.ndarray]]] = []  # (start seconds, resampled chunks) per contiguous run
        resampler = None
        expected = None  # where the next input frame should start if the stream is contiguous
        decoded_to = None

        def flush():
            if resampler is not None:
                for out in resampler.resample(None):
                    segments[-1][1].append(out.to_ndarray().reshape(-1))

        frames = container.decode(stream)
        while True:
            try:
                frame = next(frames)
            except (StopIteration, av.error.EOFError):
                break
            except Exception as error:  # a damaged or truncated stream
                where = f"after t={decoded_to:.3f} s" if decoded_to is not None else "before the first sample"
                warnings.warn(
                    f"{path}: audio decoding stopped {where}: {error_reason(error)}; the sound after it is masked",
                    AudioWarning,
                    stacklevel=2,
                )
                break
            if frame.samples == 0 or not frame.sample_rate:
                continue
            time_base = frame.time_base or stream.time_base
            t = float(frame.pts * time_base) - origin if frame.pts is not None and time_base else expected
            if t is None:
                t = 0.0
            if expected is None or t > expected + GAP_SECONDS:
                flush()  # a new contiguous run: a fresh resampler, placed at its own timestamp
                resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
                segments.append((t, []))
            else:
                t = expected  # overlaps and timestamp jitter: the stream is taken as contiguous
            expected = t + frame.samples / frame.sample_rate
            decoded_to = expected
            for out in resampler.resample(frame):
                segments[-1][1].append(out.to_ndarray().reshape(-1))
        flush()
        codec = stream.codec_context.name or ""
    runs = [(t, np.concatenate(chunks).astype(np.float32, copy=False)) for t, chunks in segments if chunks]
    runs = [(t, x) for t, x in runs if len(x)]
    if not runs:
        return AudioTrack(str(path), np.zeros(0, np.float32), sample_rate, 0.0, np.zeros((0, 2)), codec, announced_end)
    start = runs[0][0]
    offsets = [int(round((t - start) * sample_rate)) for t, _ in runs]
    total = max(o + len(x) for o, (_, x) in zip(offsets, runs))
    samples = np.zeros(total, np.float32)
    bounds = []
    for o, (_, x) in zip(offsets, runs):
        samples[o : o + len(x)] = x
        bounds.append((start + o / sample_rate, start + (o + len(x)) / sample_rate))
    return AudioTrack(str(path), samples, sample_rate, start, np.array(bounds, np.float64), codec, announced_end)


# ---------------------------------------------------------------------------------------------------------
# The video's frame grid


@dataclass
class FrameGrid:
    """Frame k of a video spans [edges[k], edges[k+1]) seconds (the video stage's clock)."""

    edges: np.ndarray  # (T + 1,)
    fps: float

    @property
    def n_frames(self) -> int:
        return len(self.edges) - 1


def frame_grid(path: str | os.PathLike, n_frames: int | None = None) -> FrameGrid:
    """The video's frame intervals from its demuxed packets' presentation times (nothing is decoded), in the
    video stage's clock: the frames and times `mambava.media.video.open_video` yields. `n_frames`: make the grid this
    long (the frame count the visual features use, e.g. the container's header count): missing frames continue
    at 1/fps, extra ones are dropped."""
    with open_container(path) as container:
        if not container.streams.video:
            raise MambavaError(f"{path}: contains no video stream (the audio features follow the video's frames)")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        tb = stream.time_base
        origin = stream.start_time or 0
        try:
            # packets the decoder discards (an edit list's lead-in) are no frames of the video
            pts = [
                p.pts
                for p in container.demux(stream)
                if p.size > 0 and p.pts is not None and not getattr(p, "is_discard", False)
            ]
        except Exception as error:
            raise MambavaError(f"{path}: cannot read the video's frame times ({error_reason(error)})") from None
    times = np.sort((np.asarray(pts, np.float64) - origin) * float(tb)) if pts and tb is not None else np.zeros(0)
    if not len(times) and not n_frames:
        raise MambavaError(f"{path}: the video stream has no frames")
    step = float(np.median(np.diff(times))) if len(times) > 1 else 0.0
    fps = float(rate) if rate else (1.0 / step if step > 0 else 30.0)
    return grid_from_times(times, fps, n_frames)


def grid_from_times(times, fps: float, n_frames: int | None = None) -> FrameGrid:
    """A FrameGrid from frame timestamps (seconds, sorted; e.g. `VideoReader.decoded()[1]`) and the frame rate."""
    times = np.asarray(times, np.float64)
    n = len(times) if n_frames is None else int(n_frames)
    if n < 1:
        raise MambavaError("the frame grid needs at least one frame")
    if len(times) < n:
        last = times[-1] if len(times) else -1.0 / fps
        times = np.concatenate([times, last + np.arange(1, n - len(times) + 1) / fps])
    times = times[:n]
    return FrameGrid(np.concatenate([times, [times[-1] + 1.0 / fps]]), float(fps))


def pool_frames(values: np.ndarray, times: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Mean of the rows of `values` (M, D) whose time (M,) lies in each [edges[k], edges[k+1]); an interval
    that holds none takes the row nearest its middle. Returns (T, D) float32."""
    values = np.asarray(values, np.float64)
    times = np.asarray(times, np.float64)
    edges = np.asarray(edges, np.float64)
    n_out = len(edges) - 1
    if len(values) == 0:
        return np.zeros((n_out, values.shape[1] if values.ndim == 2 else 0), np.float32)
    lo = np.searchsorted(times, edges[:-1], side="left")
    hi = np.searchsorted(times, edges[1:], side="left")
    cumulative = np.concatenate([np.zeros((1, values.shape[1])), np.cumsum(values, axis=0)])
    counts = hi - lo
    out = (cumulative[hi] - cumulative[lo]) / np.maximum(counts, 1)[:, None]
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        middle = (edges[empty] + edges[empty + 1]) / 2
        right = np.clip(np.searchsorted(times, middle), 0, len(times) - 1)
        left = np.clip(right - 1, 0, len(times) - 1)
        nearest = np.where(np.abs(times[left] - middle) <= np.abs(times[right] - middle), left, right)
        out[empty] = values[nearest]
    return out.astype(np.float32)


def frame_peaks(track: AudioTrack, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The largest |sample| inside each interval [lo[k], hi[k]) (0 where it holds no sample)."""
    n = len(track.samples)

    def index(t):
        return np.clip(np.round((np.asarray(t, np.float64) - track.start) * track.sample_rate).astype(np.int64), 0, n)

    starts, stops = index(lo), index(hi)
    peaks = np.zeros(len(starts), np.float32)
    nonempty = np.flatnonzero(stops > starts)
    if len(nonempty):
        # reduceat over [start, stop) pairs: the even results are the intervals' maxima (a sentinel for stop = n)
        bounds = np.stack([starts[nonempty], stops[nonempty]], 1).reshape(-1)
        peaks[nonempty] = np.maximum.reduceat(np.concatenate([np.abs(track.samples), [0.0]]), bounds)[::2]
    return peaks
