"""Live valence/arousal: frame by frame, with the temporal model in its recurrent form.

Each new frame costs one step of the model, not a window: the causal TCN keeps a buffer of its past inputs per
layer and the Mamba layers keep their convolution and SSM states (`MambaVA.init_state` / `MambaVA.step`).
Starting from frame 0, the stepped outputs equal ONE causal pass over the whole sequence, which is what
`Predictor(windowing="full")` computes offline (to float32 rounding, <= 1e-4). They do NOT equal the default
offline pass (`windowing="windows"`, 300/200 windows stitched by averaging): every window starts
from an empty state, so frames late in a window see less history than the stream has seen.

Time base, like the offline pipeline (`mambava.data.timebase`): the model steps once per tick of its own frame
grid (its config's `fps`, 30 for Aff-Wild2 models), not once per frame of the source: a 60 fps video steps on
every other frame (the frames between take the last output), and a frame that comes after a gap (`--fps`, a
dropped frame, a slower video) first steps through the ticks it skipped with the last feature held.

Per track, like the offline pipeline: a frame where the track's face is not found carries the last feature
over (flag `face=False`). All tracks step together, one batched step per tick (`StreamBatch`): one read of
the model's weights serves every face, which a batch-1 step is bound by. A stream cannot look ahead, so a
track starts at the first frame its face is found (offline, earlier frames take that first feature instead).

Real time: a live source (webcam, capture device, network stream; a file with `realtime=True`) is read by a
background thread that keeps only the newest frame. When face detection and the backbone are slower than the
source, the frames that arrive meanwhile are dropped: they are neither detected nor encoded, but the temporal
model still steps through them with the last feature (cheap), so it keeps the source's time scale; their rows
carry `dropped=True`. `FrameDropper.dropped` counts them. Frames skipped by `fps` get rows the same way, with
`dropped=True` (not processed), so a file gives one row per source frame.

Sound (an audio-visual fusion model, `mambava.temporal.FusionMambaVA`): a video file's sound track is
decoded and turned into per-frame features before the first frame (`mambava.audio.frame_features`, on the
video's frame grid, as `predict --audio` computes them); each processed frame joins every track's visual
feature (a track without a face there holds its last one) to that frame's own sound and mask, as offline, and
its rows carry `voice`. A live source's sound is not read: a fusion model streams it only with the sound masked.

Persons (`stream --persons`/`--identities`, `mambava.faces.identity.OnlinePersons`): each track is given a person
at its first face, from the gallery's names and the persons seen earlier in this stream, and keeps it; every row
of the track carries it (`person`). A batch's person ids (`predict --persons`) are found once every track is
known; a stream's cannot wait for that.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import threading
import time as _time
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch

from mambava.audio import audio_of_frames
from mambava.core.errors import MambavaError
from mambava.core.runtime import torch_threads
from mambava.data.timebase import GridClock, model_fps
from mambava.faces import FaceTracker, iter_tracked_faces
from mambava.faces.identity import OnlinePersons
from mambava.media.video import open_video, source_name
from mambava.temporal import model_input_dim


@dataclass(frozen=True)
class StreamResult:
    """One frame of one track. `face`: the track's face was found in this frame (otherwise its last feature was
    carried over); `dropped`: the frame did not go through faces and backbone, skipped to keep up with real
    time or by `fps` (also carried over); `confidence`: the detector's score for the face (0 without one, NaN
    for features, which have no detector)."""

    frame: int
    time: float
    track: str
    valence: float
    arousal: float
    face: bool = True
    dropped: bool = False
    confidence: float = math.nan
    voice: bool | None = None  # the frame's sound was used (a fusion model fed sound; None otherwise)
    # the face's 68 points ((68, 2) frame pixels) and head pose ((6,) Rx, Ry, Rz, Tx, Ty, Tz) with `--landmarks
    # dlib68`; None where the track has no face in this frame or the landmark source gives none
    landmarks68: np.ndarray | None = None
    pose: np.ndarray | None = None
    person: str | None = None  # the track's person (`--persons`: `mambava.faces.identity.OnlinePersons`)
    # the seven expression probabilities (`mambava.faces.expression.EXPRESSIONS` order) where the face was found and
    # expressions were asked for (always with expression-va); None otherwise
    expressions: tuple[float, ...] | None = None


def check_streamable(model) -> None:
    """A MambavaError unless `model` has the recurrent form (init_state / step)."""
    if not (hasattr(model, "init_state") and hasattr(model, "step")):
        raise MambavaError(
            f"{type(model).__name__} has no recurrent (step-by-step) form; `stream` needs a Mamba-VA checkpoint"
        )


# A step (batch 1) is a chain of small products: on one thread it costs the weight reads and little more, while
# two OpenMP threads wait at every op's barrier as soon as the other core is busy. Measured here at a load
# average of 2.5 on 2 CPUs: the paper model 15.5 ms/step on one thread vs 49 ms on two, a small Mamba-VA 0.45
# vs 16 ms; the streaming benchmark's one-thread step is within 3 ms of reading the TCN's weights alone.
STEP_THREADS = 1


def _recurrent_state(model, batch_size: int, precision: str):
    """(torch, model, its device, its dtype, a fresh recurrent state of `batch_size` rows) for a streamable model."""

    check_streamable(model)
    parameter = next(model.parameters())
    state = model.init_state(batch_size=batch_size, device=parameter.device, dtype=parameter.dtype, precision=precision)
    return torch, model, parameter.device, parameter.dtype, state


class TemporalStream:
    """The temporal model stepped one frame at a time for one sequence (B=1), in eval mode, without grad, on
    STEP_THREADS torch threads. `precision`: the TCN's step weights, "fp32" | "bf16" | "int8"
    (`mambava.temporal.tcn`)."""

    def __init__(self, model, precision: str = "fp32"):
        self._torch, self.model, self.device, self.dtype, self.state = _recurrent_state(model, 1, precision)
        self.last_feature = None
        self.last_output: np.ndarray | None = None
        self.tick = -1  # the last grid tick stepped (`TrackStreams`)

    def step(self, feature: np.ndarray | None = None) -> np.ndarray:
        """Advance one frame with this feature (D,), or with the last one when None; returns the raw
        (unclipped) (valence, arousal) as a float32 array of shape (2,)."""
        torch = self._torch
        if feature is None:
            if self.last_feature is None:
                raise MambavaError("a stream needs a first feature before it can carry one over")
            x = self.last_feature
        else:
            x = torch.as_tensor(np.asarray(feature, dtype=np.float32)).to(self.device, self.dtype).reshape(1, -1)
            self.last_feature = x
        with torch.inference_mode(), torch_threads(STEP_THREADS):
            y, self.state = self.model.step(x, self.state)
        self.last_output = y[0].float().cpu().numpy()
        return self.last_output

    def step_to(self, tick: int, feature: np.ndarray | None = None) -> np.ndarray:
        """Step through the grid ticks after the last one up to `tick`: the ones skipped over hold the last
        feature, `tick` itself takes `feature` (None: hold). A tick already stepped returns its output."""
        if tick <= self.tick and self.last_output is not None:
            return self.last_output
        if self.last_output is not None:
            for _ in range(tick - self.tick - 1):
                self.step(None)
        self.tick = tick
        return self.step(feature)


class StreamBatch:
    """Many streams of one model stepped together, one row of a batched state each: a step reads the model's
    weights once for all of them (a batch-1 step costs about its weight reads). Streams join (a fresh state row,
    zero history) and leave (their row dropped) between steps; every stream in the batch steps at each `step`,
    with its new feature or, without one, its last feature held. Stream i's outputs equal those of a
    `TemporalStream` fed the same features from the step it joined (to float32 rounding).

        batch = StreamBatch(model, precision="bf16")
        batch.join("a"); batch.step({"a": fa})          # -> {"a": (valence, arousal)}
        batch.join("b"); batch.step({"a": fa, "b": fb})
        batch.leave("a"); batch.step({"b": fb})
    """

    def __init__(self, model, precision: str = "fp32"):
        self._torch, self.model, self.device, self.dtype, self.state = _recurrent_state(model, 0, precision)
        torch = self._torch
        self.keys: list = []

        self._last = torch.zeros(0, model_input_dim(model), device=self.device, dtype=self.dtype)
        self._fed: list[bool] = []  # whether each row has had a feature (one to hold)

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key) -> bool:
        return key in self.keys

    def join(self, key) -> None:
        """A new stream `key` with a fresh state, stepping from the next `step` on."""
        if key in self.keys:
            raise MambavaError(f"stream {key!r} is already in the batch")
        self.state.join(1)
        self._last = self._torch.cat([self._last, self._last.new_zeros(1, self._last.shape[1])])
        self.keys.append(key)
        self._fed.append(False)

    def leave(self, key) -> None:
        """Stream `key` ends: its row is dropped."""
        if key not in self.keys:
            raise MambavaError(f"stream {key!r} is not in the batch")
        i = self.keys.index(key)
        rows = [j for j in range(len(self.keys)) if j != i]
        self.state.keep(rows)
        self._last = self._last[rows]
        del self.keys[i], self._fed[i]

    def step(self, features: dict | None = None) -> dict:
        """One step of every stream: `features` {key: (D,) feature}; a stream without one holds its last.
        Returns {key: raw (valence, arousal), float32 (2,)} for every stream in the batch."""
        torch = self._torch
        features = features or {}
        unknown = [key for key in features if key not in self.keys]
        if unknown:
            raise MambavaError(f"stream(s) {', '.join(map(repr, unknown))} not in the batch: join them first")
        for i, key in enumerate(self.keys):
            feature = features.get(key)
            if feature is not None:
                self._last[i] = torch.as_tensor(np.asarray(feature, dtype=np.float32)).reshape(-1)
                self._fed[i] = True
            elif not self._fed[i]:
                raise MambavaError(f"stream {key!r} needs a first feature before it can carry one over")
        if not self.keys:
            return {}
        y = self._step_all()
        return {key: y[i] for i, key in enumerate(self.keys)}

    def _step_all(self) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode(), torch_threads(STEP_THREADS):
            y, self.state = self.model.step(self._last.clone(), self.state)
        return y.float().cpu().numpy()

    def step_some(self, features: dict) -> dict:
        """One step of the streams named in `features` only ({key: (D,) feature, or None to hold its last}); a
        key not in the batch joins it (a fresh state; it needs a feature). The others sit the step out: their
        rows are copied before it and put back after, the TCN's ring buffers turned one slot (the ring position
        is the batch's), so their states are as if it had not happened. Streams that advance at their own pace
        (`mambava.serve`) share one batch this way, one weight read per step for all that take part; each
        stream's outputs equal a `TemporalStream` fed its own features (to float32 rounding).
        Returns {key: raw (valence, arousal)} of the named streams."""
        if not hasattr(self.state, "rows"):
            raise MambavaError(f"{type(self.model).__name__} cannot step part of a batch (a Mamba-VA model can)")
        for key, feature in features.items():
            if key not in self.keys:
                if feature is None:
                    raise MambavaError(f"stream {key!r} needs a first feature before it can carry one over")
                self.join(key)
        for i, key in enumerate(self.keys):
            feature = features.get(key)
            if feature is not None:
                self._last[i] = self._torch.as_tensor(np.asarray(feature, dtype=np.float32)).reshape(-1)
                self._fed[i] = True
            elif key in features and not self._fed[i]:
                raise MambavaError(f"stream {key!r} needs a first feature before it can carry one over")
        if not features:
            return {}
        idle = [i for i, key in enumerate(self.keys) if key not in features]
        saved = self.state.rows(idle) if idle else None
        y = self._step_all()
        if idle:
            self.state.put(idle, saved, turn=1)
        return {key: y[i] for i, key in enumerate(self.keys) if key in features}

    def join_last(self, features: dict) -> dict:
        """New streams {key: first feature} that take part in the step the batch took last: they step once, on
        their own, at that step's position, and join the batch in step with the others. Returns their outputs.
        (A batch that has not stepped yet: they join and step alone.)"""
        torch = self._torch
        if any(key in self.keys for key in features):
            known = ", ".join(repr(key) for key in features if key in self.keys)
            raise MambavaError(f"stream(s) {known} already in the batch")
        if not features:
            return {}
        x = torch.stack([torch.as_tensor(np.asarray(f, dtype=np.float32)).reshape(-1) for f in features.values()])
        x = x.to(self.device, self.dtype)
        rows = self.state.fresh(len(features))
        if self.state.tcn.frames > 0:
            rows.tcn.frames -= 1  # the ring position of the batch's last step
        with torch.inference_mode(), torch_threads(STEP_THREADS):
            y, rows = self.model.step(x, rows)
        if self.state.tcn.frames == 0:  # nothing stepped yet: the batch is at the new rows' frame count
            self.state.tcn.frames = rows.tcn.frames
        self.state.extend(rows)
        self._last = torch.cat([self._last, x])
        self.keys.extend(features)
        self._fed.extend([True] * len(features))
        y = y.float().cpu().numpy()
        return {key: y[i] for i, key in enumerate(features)}


def stream_features(model, features: np.ndarray, present: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """Raw (valence, arousal) per frame of a (T, D) feature sequence, one recurrent step each. Rows where
    `present` is False carry the last present feature over; leading absent rows are skipped (nothing to carry)."""
    stream = TemporalStream(model)
    for t in range(len(features)):
        if present is not None and not present[t]:
            if stream.last_feature is None:
                continue
            yield stream.step(None)
        else:
            yield stream.step(features[t])


def is_live_source(source) -> bool:
    """Webcam indices, capture devices and network URLs are real time; files and folders are not."""
    if isinstance(source, int):
        return True
    text = str(source)
    if text.isdigit() or text.startswith("/dev/video"):
        return True
    return "://" in text and not text.startswith("file://")


class FrameDropper:
    """Hands out the frames of a source without falling behind it.

    With `live=False` every frame is handed out, in order (a file processed as fast as possible). With
    `live=True` a background thread reads the source (and, with `pace=True`, waits until each frame's
    timestamp, to replay a file in real time) and keeps only the newest frame; frames that are replaced
    before the consumer takes them are dropped. Iterating yields `(frame, dropped_before)`, where
    `dropped_before` lists `(index, time)` of the frames dropped since the previous one.
    """

    def __init__(self, frames: Iterable, live: bool, pace: bool = False):
        self._frames = frames
        self.live = live
        self.pace = pace
        self.dropped = 0
        self._cond = threading.Condition()
        self._newest = None
        self._pending: list[tuple[int, float]] = []
        self._done = False
        self._stop = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def _read(self) -> None:
        start = None
        try:
            for frame in self._frames:
                if self.pace:
                    if start is None:
                        start = _time.monotonic() - frame.time
                    delay = start + frame.time - _time.monotonic()
                    if delay > 0:
                        _time.sleep(delay)
                with self._cond:
                    if self._stop:
                        return
                    if self._newest is not None:
                        self._pending.append((self._newest.index, self._newest.time))
                        self.dropped += 1
                    self._newest = frame
                    self._cond.notify()
        except BaseException as error:  # handed to the consumer, raised there
            self._error = error
        finally:
            with self._cond:
                self._done = True
                self._cond.notify()

    def __iter__(self) -> Iterator[tuple[object, list[tuple[int, float]]]]:
        if not self.live:
            for frame in self._frames:
                yield frame, []
            return
        self._thread = threading.Thread(target=self._read, name="mambava-frames", daemon=True)
        self._thread.start()
        try:
            while True:
                with self._cond:
                    while self._newest is None and not self._done:
                        self._cond.wait()
                    if self._newest is None:
                        break
                    frame, self._newest = self._newest, None
                    dropped, self._pending = self._pending, []
                yield frame, dropped
            if self._error is not None:
                raise self._error
        finally:
            self.close()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()


class TrackStreams:
    """The face tracks of a source, one stream each, all stepped together (`StreamBatch`: one step of the model
    per tick for all the faces, reading its weights once); a track joins when its face is first found.
    `advance` moves every known track to this frame's tick of the model's grid (`mambava.data.timebase.GridClock`;
    tracks without a feature this frame carry their last one over) and returns their rows; with no track at
    all, one row with `track=""` and NaN values. Each track's values are those of a `TemporalStream` of its own
    (`TemporalStream.step_to`), to float32 rounding. `precision`: the TCN's step weights ("fp32" | "bf16" |
    "int8"). `hears`: a fusion model fed each frame's sound (`advance`'s `audio`)."""

    def __init__(self, model, precision: str = "fp32", hears: bool = False):
        check_streamable(model)
        self.model = model
        self.hears = hears
        self._visual: dict[str, np.ndarray] = {}  # each track's last visual feature (joined to the frame's sound)
        self.precision = precision
        self.clock = GridClock(model_fps(model))
        self.batch = StreamBatch(model, precision)
        self.tick: int | None = None  # the last grid tick stepped
        self.outputs: dict[str, np.ndarray] = {}  # each track's output at that tick
        self.persons: dict[str, str] = {}  # each track's person, where known

    def retire(self, keep: Iterable[str]) -> list[str]:
        """Forget every track not in `keep`; returns them."""
        keep = set(keep)
        gone = [t for t in self.batch.keys if t not in keep]
        for track in gone:
            self.batch.leave(track)
            del self.outputs[track]
            self._visual.pop(track, None)
            self.persons.pop(track, None)
        return gone

    def _step_to(self, tick: int, features: dict) -> None:
        """Every track to `tick` (ticks skipped since the last hold the last features); new tracks start there."""
        new = {track: feature for track, feature in features.items() if track not in self.batch}
        if self.tick is not None and tick <= self.tick:  # this tick is stepped: only new tracks take part in it
            self.outputs.update(self.batch.join_last(new))
            return
        if self.tick is not None and self.batch.keys:
            for _ in range(tick - self.tick - 1):
                self.batch.step()
        for track in new:
            self.batch.join(track)
        self.outputs = self.batch.step(features)
        self.tick = tick

    def advance(
        self,
        index: int,
        time: float,
        features: dict[str, np.ndarray],
        dropped: bool = False,
        scores: dict[str, float] | None = None,
        audio: np.ndarray | None = None,
        geometry: dict[str, tuple] | None = None,
        persons: dict[str, str] | None = None,
    ) -> list[StreamResult]:
        """One frame: step every live track to the frame's grid tick (`features` {track: feature} of the faces
        found; `scores` their detector scores, None for features without a detector). With `hears`, `audio` is
        the frame's (audio features, mask) row, joined to every track's visual feature (its last where its face
        is not found); None (a dropped frame) holds the last joined rows, as offline. `geometry`: {track: (68
        points, pose)} of the faces found (`--landmarks dlib68`), put on their rows; `persons`: {track: person},
        kept for all the track's later rows."""
        tick = self.clock.tick(time)
        self.persons.update(persons or {})
        found = features
        voice = None
        if self.hears:
            voice = audio is not None and bool(audio[-1] > 0.5)
            if audio is not None:
                self._visual.update(features)
                tracks = [*self.batch.keys, *(t for t in features if t not in self.batch)]
                features = {t: np.concatenate([self._visual[t], audio]) for t in tracks}
        if features or self.batch.keys:
            self._step_to(tick, features)
        if not self.batch.keys:
            return [StreamResult(index, float(time), "", math.nan, math.nan, face=False, dropped=dropped, voice=voice)]
        results = []
        for track in self.batch.keys:
            feature = found.get(track)
            raw = self.outputs[track]
            if not np.isfinite(raw).all():  # a diverged model: refused, as predict and evaluate do
                raise MambavaError(
                    f"the model's output is not finite ({raw[0]:g}, {raw[1]:g}) for track {track}, "
                    f"frame {index}: a diverged model, or features it was not trained on"
                )
            y = np.clip(raw, -1.0, 1.0)
            confidence = math.nan if scores is None else float(scores.get(track, 0.0))
            points, pose = (geometry or {}).get(track, (None, None)) if feature is not None else (None, None)
            results.append(
                StreamResult(
                    index,
                    float(time),
                    track,
                    float(y[0]),
                    float(y[1]),
                    face=feature is not None,
                    dropped=dropped,
                    confidence=confidence,
                    voice=voice,
                    landmarks68=points,
                    pose=pose,
                    person=self.persons.get(track),
                )
            )
        return results


class LiveStream:
    """Per-frame StreamResult rows from a live source, a video file or a feature sequence; iterate once.

    Video sources go frame -> faces (tracked, `mambava.faces.FaceTracker`) -> backbone feature -> one recurrent step
    per track. A track's rows stop once the tracker drops it (unseen for longer than its `max_gap`, 1 s, or at a
    cut: `mambava.faces.track.CutDetector`); a face that comes back later starts a new track with a fresh state. A
    frame with no live track gives one row with `track=""`, NaN values and `face=False`. Tracks are named as
    `predict` names them, after the source (`mambava.media.video.source_name`): the first `<name>`, later ones
    `<name>_2`, `<name>_3`, ... in order of appearance (`predict`, seeing the whole video, can also join a track the
    tracker lost and name two people seen together `_left`/`_right`; a live stream cannot know either in advance).

    `step_precision`: the TCN's step weights, "fp32" (default) | "bf16" | "int8" (`mambava.temporal.tcn`): fewer weight
    bytes read per step, outputs within 1e-2 of fp32.

    `audio`: a fusion model's sound of a video file, ((N, D_audio) features, (N,) mask) per source frame
    (`Predictor.source_audio`; N = 0: every frame masked); each processed frame steps with its own.

    `expressions`: a function (crops (N, H, W, 3), their features (N, D)) -> (N, 7) expression probabilities
    (`Predictor.crop_expressions`), whose rows go into the found faces' StreamResult `expressions`; None: none.

    Counters, updated while iterating: `frames` (source frames given rows), `processed` (frames that went
    through faces and backbone), `dropped` (frames skipped to keep up with real time, see `FrameDropper`).
    """

    def __init__(
        self,
        model,
        source,
        detector=None,
        extractor=None,
        realtime: bool = False,
        fps: float | None = None,
        step_precision: str = "fp32",
        detect_every: int = 1,
        audio: tuple | None = None,
        persons: OnlinePersons | None = None,
        expressions=None,
    ):
        check_streamable(model)
        self.audio = audio
        self.persons = persons
        self.expressions = expressions
        self.detect_every = detect_every
        self.model = model
        self.step_precision = step_precision
        self.source = source
        self.detector = detector
        self.extractor = extractor
        self.realtime = realtime
        self.fps = fps
        self.frames = 0
        self.processed = 0
        self._features: tuple | None = None
        self._dropper: FrameDropper | None = None

    @classmethod
    def from_features(
        cls,
        model,
        features: np.ndarray,
        present: np.ndarray | None,
        name: str,
        fps: float = 30.0,
        step_precision: str = "fp32",
    ) -> "LiveStream":
        """Stream a (T, D) feature sequence as one track `name`, frame t at time t / fps, without dropping.
        Rows where `present` is False carry the last feature over, like a frame without a face."""
        stream = cls(model, name, step_precision=step_precision)
        stream._features = (np.asarray(features, np.float32), present, name, fps)
        return stream

    @property
    def dropped(self) -> int:
        return self._dropper.dropped if self._dropper is not None else 0

    def __iter__(self) -> Iterator[StreamResult]:
        tracks = TrackStreams(self.model, self.step_precision, hears=self.audio is not None)
        if self._features is not None:
            features, present, name, fps = self._features
            for t in range(len(features)):
                found = {name: features[t]} if present is None or present[t] else {}
                self.frames += 1
                self.processed += 1
                rows = tracks.advance(t, t / fps, found)
                yield from with_expressions(rows, self._expressions(None, found))
            return
        yield from self._iter_video(tracks)

    def _expressions(self, crops: np.ndarray | None, found: dict) -> dict:
        """{track: (7,) probabilities} of the faces found in a frame ({} when not asked or none found)."""
        if self.expressions is None or not found:
            return {}
        probabilities = self.expressions(crops, np.stack(list(found.values())))
        return {} if probabilities is None else dict(zip(found, probabilities))

    def _audio_row(self, index: int) -> np.ndarray | None:
        """Source frame `index`'s (audio features, mask) row for a fusion model fed sound, else None."""
        if self.audio is None:
            return None

        audio, voice = audio_of_frames(*self.audio, np.array([index]))
        return np.concatenate([audio[0], voice.astype(np.float32)])

    def _iter_video(self, tracks: TrackStreams) -> Iterator[StreamResult]:
        reader = open_video(self.source, fps=self.fps)
        base, names_by_id = source_name(self.source), {}

        def track_name(track_id: int) -> str:
            if track_id not in names_by_id:
                names_by_id[track_id] = base if not names_by_id else f"{base}_{len(names_by_id) + 1}"
            return names_by_id[track_id]

        self._dropper = FrameDropper(reader, live=is_live_source(self.source) or self.realtime, pace=self.realtime)
        tracker = FaceTracker()

        def frames():
            for frame, _ in self._dropper:  # the frames dropped before it are in reader.decoded()
                yield frame

        read = 0  # frames of reader.decoded() given rows so far

        def not_processed_before(index: int) -> list[tuple[int, float]]:
            """The frames read before `index` that get no detection: dropped for real time or skipped by fps."""
            nonlocal read
            indices, times = reader.decoded(read)
            before = int(np.searchsorted(indices, index))
            read += before + (before < len(indices))  # and `index` itself, which is processed
            return list(zip(indices[:before].tolist(), times[:before].tolist()))

        try:
            for item in iter_tracked_faces(
                frames(),
                self.detector,
                tracker=tracker,
                batch_size=1,
                keep_images=self.persons is not None,  # a track's first face is described on its frame
                detect_every=self.detect_every,
            ):
                for index, time in not_processed_before(item.index):
                    self.frames += 1
                    yield from tracks.advance(index, time, {}, dropped=True, scores={})
                names = [track_name(face.track_id) for face in item.faces]
                found, crops = {}, None
                if item.faces:
                    crops = np.stack([face.crop for face in item.faces])
                    features = self.extractor.features(crops)
                    found = dict(zip(names, features))
                for gone in tracks.retire(track_name(tid) for tid in tracker.active_ids):
                    if self.persons is not None:
                        self.persons.retire(gone)
                persons = None
                if self.persons is not None:
                    persons = {
                        name: self.persons.person(name, item.index, item.image, face, live=names)
                        for name, face in zip(names, item.faces)
                    }
                self.frames += 1
                self.processed += 1
                rows = tracks.advance(
                    item.index,
                    item.time,
                    found,
                    scores={name: face.score for name, face in zip(names, item.faces)},
                    audio=self._audio_row(item.index),
                    geometry={name: (face.landmarks68, face.pose) for name, face in zip(names, item.faces)},
                    persons=persons,
                )
                yield from with_expressions(rows, self._expressions(crops, found))
            for index, time in not_processed_before(sys.maxsize):  # skipped after the last processed frame
                self.frames += 1
                yield from tracks.advance(index, time, {}, dropped=True, scores={})
        finally:
            self._dropper.close()
            reader.close()


def with_expressions(rows: list[StreamResult], expressions: dict) -> list[StreamResult]:
    """The rows with each found track's expression probabilities ({track: (7,)}) set."""
    if not expressions:
        return rows
    return [
        dataclasses.replace(r, expressions=tuple(float(p) for p in expressions[r.track]))
        if r.track in expressions
        else r
        for r in rows
    ]


__all__ = [
    "with_expressions",
    "StreamResult",
    "LiveStream",
    "TemporalStream",
    "StreamBatch",
    "TrackStreams",
    "FrameDropper",
    "stream_features",
    "is_live_source",
    "check_streamable",
]
