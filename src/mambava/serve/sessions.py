"""Live sessions of `mambava serve`: many streams, one model, one worker thread.

Each WebSocket session is a live stream: the client sends frames (JPEG/PNG images, or the model's float32
features), the server answers each with its valence/arousal. One worker thread serves every session in
rounds; a round takes each session's oldest waiting frame, decodes them, runs the face detector on all of
them in one batch, the backbone on all the faces in one batch, and steps the temporal model for all sessions
together: one `StreamBatch.step_some` call per step, every session's tracks one row of the batch (sessions
advance at their own pace, so a session with nothing to do sits the step out with its state untouched).

Per session the time base and the tracks are those of `mambava stream` (`mambava.inference.stream.TrackStreams`): the
model steps once per tick of its own frame grid from the frames' timestamps (ticks skipped hold the last
feature), faces are tracked (`FaceTracker`) and named after the session, a track's state starts when its face
is first found and ends when the tracker drops it (or at a cut, `CutDetector`). So a session's values equal
`stream`'s on the same frames. With a landmark source that gives 68 points (`--landmarks auto`/`dlib68`), every
track row carries `landmarks` (68 [x, y]) and `pose` ([Rx, Ry, Rz, Tx, Ty, Tz]), null where the track has no face.

Overload: each session holds at most `queue_frames` frames waiting; a new frame beyond that drops the oldest
one, which gets a row with `dropped: true` and is counted in the session's `dropped`. The model steps through
dropped frames with the last feature, as `stream` does with frames it cannot keep up with, but at most
`queue_frames` of them per round: a step is not free (the paper model's is 16-50 ms on a small CPU), and
stepping every dropped frame would let the work owed grow without bound. Dropped frames past that take the last
values without a step, and the session's clock moves past them (`skipped` counts the grid ticks its model
lost), so a session's latency stays bounded by the queue under any load. A gap in one session's timestamps is
stepped through the same way up to `max_gap_ticks` steps; the rest of a longer gap is skipped, so no message
costs the worker more than a bounded number of steps.

Hostile input: every message is checked before it joins a round (`Session.parse_time`: a finite time that
does not go back; `SessionHub.put`: the bytes; the worker: an image's size from its header before it is
decoded), and whatever still fails is that session's alone: a frame's error is answered to its session, a
failure in a session's own work closes that session (`{"error": ..., "close": code}`), and the other sessions
of the round get their answers as if it had not been there (`tests/security/test_serve_live.py`).
"""

from __future__ import annotations

import io
import itertools
import json
import math
import sys
import threading
import traceback
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from mambava.core.errors import MambavaError
from mambava.core.runtime import fixed_threads
from mambava.data.timebase import GridClock, check_fps, model_fps
from mambava.faces import FaceTracker, face_crop
from mambava.faces.columns import gives_landmarks68
from mambava.faces.expression import EXPRESSIONS
from mambava.faces.track import CutDetector
from mambava.inference.stream import StreamBatch, check_streamable
from mambava.media.video import read_image
from mambava.temporal import model_input_dim

# The first bytes of the images a session accepts (decoded as `mambava.media.video.read_image` decodes files).
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")
MAX_TIME_S = 1e9  # |time| a session may send (31 years: any clock in seconds; larger values lose the ms digits)
# Close codes a failed session is closed with: 1008 its input (a model state no longer finite), 1011 a failure
# in the server's work for it.
CLOSE_POLICY, CLOSE_INTERNAL = 1008, 1011


@dataclass(frozen=True)
class ServeLimits:
    """What the server accepts.

    Attributes:
        max_sessions: live sessions at once.
        queue_frames: frames a session may have waiting before the oldest is dropped.
        max_upload_mb: one video of POST /predict (counted while it is read).
        max_frame_mb: one frame of a session; a larger one is answered with an error. The connection itself
            takes messages up to `ws_max_bytes` (4x this), and closes with 1009 beyond.
        max_frame_pixels: width x height of a session's image, read from its header before decoding
            (default 3840x2160, a 4K frame).
        max_gap_ticks: model steps a gap in a session's timestamps may cost (the last feature held, as
            `stream` does); the rest of a longer gap is skipped (`skipped_total`).
        threads: torch threads of the worker and of each upload, whatever the load, so that results never
            depend on it (`mambava.core.runtime.fixed_threads`); None: torch's count when the app is made.
    """

    max_sessions: int = 8
    queue_frames: int = 2
    max_upload_mb: float = 200.0
    max_frame_mb: float = 8.0
    max_frame_pixels: int = 3840 * 2160
    max_gap_ticks: int = 15
    threads: int | None = None

    def __post_init__(self):
        if self.threads is not None and (int(self.threads) != self.threads or self.threads < 1):
            raise MambavaError(f"--threads must be a whole number >= 1, got {self.threads}")
        for name in ("max_sessions", "queue_frames", "max_frame_pixels", "max_gap_ticks"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise MambavaError(f"--{name.replace('_', '-')} must be a whole number >= 1, got {value}")
        for name in ("max_upload_mb", "max_frame_mb"):
            if not getattr(self, name) > 0:
                raise MambavaError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")

    @property
    def ws_max_bytes(self) -> int:
        """The largest WebSocket message the server reads: 4x `max_frame_mb`, so that a frame somewhat over the
        limit is answered with its error rather than closing the connection (1009)."""
        return int(4 * self.max_frame_mb * 1024 * 1024) + 4096


class Session:
    """One live stream: its waiting frames, its tracker and clock, its tracks' rows in the shared batch.
    `deliver(message)` hands a JSON-able dict to the client (called from the worker thread)."""

    def __init__(
        self,
        sid: int,
        name: str,
        fps: float,
        deliver: Callable[[dict], None],
        model_fps: float,
        hold_budget: int = 2,
        max_gap_ticks: int = 15,
        geometry: bool = False,
    ):
        self.id = sid
        self.name = name
        self.fps = check_fps(fps, "fps")
        self.deliver = deliver
        self.inbox: deque[tuple[int, float, bytes]] = deque()
        self.overflow: list[tuple[int, float]] = []  # dropped from the inbox, rows not yet sent
        self.received = 0
        self.dropped = 0
        self.served = 0  # frames answered (processed, dropped or refused)
        self.tracker = FaceTracker()
        self.cut = CutDetector()  # a new shot: no face continues a track by its place, as in `stream`
        self.geometry = geometry  # the rows carry `landmarks` and `pose` (the detector gives 68 points)
        self._names: dict[int, str] = {}
        self.clock = GridClock(model_fps)
        self.tick: int | None = None
        self.hold_budget = hold_budget
        self.max_gap_ticks = max_gap_ticks
        self.skipped = 0  # grid ticks the model did not step (dropped frames past the hold budget, long gaps)
        self.last_time: float | None = None  # the last frame's time (frames' times never go back)
        self._origin = (0, 0.0)  # (index, time) of the last frame given a time: the next come 1/fps apart
        self.closed = False  # failed and closed by the worker
        self.poisoned: str | None = None  # why the model's state of a track is no longer usable (not finite)
        self.tracks: list[str] = []  # in the batch, in order of joining
        self.outputs: dict[str, np.ndarray] = {}

    def track_name(self, track_id: int) -> str:
        """As `stream` names tracks: the session's name, then <name>_2, <name>_3, ... in order of appearance."""
        if track_id not in self._names:
            self._names[track_id] = self.name if not self._names else f"{self.name}_{len(self._names) + 1}"
        return self._names[track_id]

    def key(self, track: str) -> tuple[int, str]:
        return (self.id, track)

    def parse_time(self, value) -> float:
        """The time of a {"time": seconds} message, checked: a finite number of seconds within +-MAX_TIME_S,
        not before the previous frame's. MambavaError (one line) otherwise; the session goes on.

        Args:
            value: the message's "time" (any JSON value).

        Returns:
            The time, seconds.
        """
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MambavaError(f'{{"time": ...}} must be a number of seconds, got {type(value).__name__}')
        try:
            time = float(value)
        except OverflowError:
            time = math.inf
        if not (math.isfinite(time) and abs(time) <= MAX_TIME_S):
            digits = str(value)
            shown = f"{value:g}" if isinstance(value, float) else digits if len(digits) <= 20 else f"{digits[:20]}..."
            raise MambavaError(f"time {shown}: a time must be a finite number of seconds within +-{MAX_TIME_S:g}")
        if self.last_time is not None and time < self.last_time:
            raise MambavaError(
                f"time {time:g}: before the previous frame's {self.last_time:g} (a session's times never go back)"
            )
        return time

    def next_time(self, index: int, time: float | None) -> float:
        """Frame `index`'s time: `time` when given, else 1/fps after the last frame given one (index/fps when none
        was: `stream`'s time base)."""
        if time is not None:
            self._origin = (index, float(time))
        start, t0 = self._origin
        value = t0 + (index - start) / self.fps
        if self.last_time is not None and value < self.last_time:  # a default time after a later given one
            value = self.last_time
        self.last_time = value
        return value

    def advance(self, events: list) -> Iterator[tuple[str, object]]:
        """The temporal model's work for this round's frames, as a coroutine: yields ("leave", [keys]),
        ("join", {key: feature}) or ("step", {key: feature or None}) and is sent back the batch's outputs of its
        keys; returns the rows (one message per frame). Each frame: `TrackStreams.advance`'s steps."""
        messages = []
        holds = self.hold_budget  # dropped frames stepped through this round; the rest are skipped
        for event in events:
            if event.dropped and self.tick is not None:
                if holds <= 0:  # no step: the clock moves past the frame, the model's time loses its ticks
                    skip = self.clock.tick(event.time) - self.tick
                    if skip > 0:
                        self.clock.t0 += skip / self.clock.fps
                        self.clock.last = self.tick
                        self.skipped += skip
                    messages.append(self._message(event))
                    continue
                holds -= 1
            if event.retire is not None:
                gone = [t for t in self.tracks if t not in event.retire]
                if gone:
                    yield ("leave", [self.key(t) for t in gone])
                    self.tracks = [t for t in self.tracks if t not in gone]
                    for track in gone:
                        del self.outputs[track]
            tick = self.clock.tick(event.time)
            if self.tick is not None and self.tracks and tick - self.tick - 1 > self.max_gap_ticks:
                # a long gap: step through max_gap_ticks of it, move the clock past the rest
                skip = tick - self.tick - 1 - self.max_gap_ticks
                self.clock.t0 += skip / self.clock.fps
                self.clock.last = tick = tick - skip
                self.skipped += skip
            found = event.features
            if found or self.tracks:
                new = [t for t in found if t not in self.tracks]
                if self.tick is not None and tick <= self.tick:  # stepped already: only new tracks take part
                    if new:
                        out = yield ("join", {self.key(t): found[t] for t in new})
                        self.tracks += new
                        self.outputs.update({k[1]: v for k, v in out.items()})
                else:
                    if self.tick is not None and self.tracks:
                        for _ in range(tick - self.tick - 1):
                            out = yield ("step", {self.key(t): None for t in self.tracks})
                            self.outputs.update({k[1]: v for k, v in out.items()})
                    self.tracks += new
                    out = yield ("step", {self.key(t): found.get(t) for t in self.tracks})
                    self.outputs.update({k[1]: v for k, v in out.items()})
                    self.tick = tick
            messages.append(self._message(event))
        return messages

    def _message(self, event) -> dict:
        rows = []
        for track in self.tracks:
            raw = self.outputs[track]
            if not np.isfinite(raw).all():  # the track's recurrent state is lost for good: the session is closed
                self.poisoned = (
                    f"the model's state of track {track} is no longer finite (features it was not trained on, "
                    "or a diverged model): the session is closed"
                )
                return {
                    "frame": event.index,
                    "error": f"frame {event.index}: the model's output is not finite for "
                    f"track {track}: a diverged model, or features it was not trained on",
                }
            y = np.clip(raw, -1.0, 1.0)
            box = event.boxes.get(track)
            score = event.scores.get(track) if event.scores is not None else None
            rows.append(
                {
                    "track": track,
                    "valence": round(float(y[0]), 6),
                    "arousal": round(float(y[1]), 6),
                    "face": track in event.features,
                    "box": None if box is None else [round(float(v), 2) for v in box],
                    "confidence": None if score is None else round(float(score), 4),
                    **(
                        _geometry_fields(event.geometry.get(track) if track in event.features else None)
                        if self.geometry
                        else {}
                    ),
                    **expression_entry(event.expressions, track),
                }
            )
        return {"frame": event.index, "time": round(event.time, 6), "dropped": event.dropped, "tracks": rows}


@dataclass
class _Event:
    """One frame of a session in a round: the faces' features by track (empty: none found / dropped)."""

    index: int
    time: float
    features: dict
    dropped: bool = False
    boxes: dict | None = None
    scores: dict | None = None
    retire: set | None = None  # the tracks the tracker still follows (a processed image)
    geometry: dict | None = None  # {track: (68 points, pose)} with `--landmarks dlib68`
    expressions: dict | None = None  # {track: (7,) probabilities} of the faces found (the server's expressions)

    def __post_init__(self):
        self.boxes = self.boxes or {}
        self.geometry = self.geometry or {}


def expression_entry(expressions: dict | None, track: str) -> dict:
    """A track row's `expressions` ({name: probability}) where its face was found and the server gives them:
    always the key when the server gives them (null without a face), none otherwise."""
    if expressions is None:
        return {}
    values = expressions.get(track)
    return {"expressions": None if values is None else {n: round(float(p), 4) for n, p in zip(EXPRESSIONS, values)}}


class SessionHub:
    """The sessions of one server and the worker thread that serves them (see the module doc).

    `model`: a streamable temporal model (eval); `detector` and `extractor`: the faces stage and the backbone
    (None: the sessions take features only); `expressions`: (crops or None, features) -> (N, 7) expression
    probabilities (`Predictor.crop_expressions`), which the rows then carry, or None. `open` / `close_session` /
    `put` are called from the server's event loop; the batch, trackers and clocks are touched by the worker only."""

    def __init__(
        self,
        model,
        detector=None,
        extractor=None,
        limits: ServeLimits = ServeLimits(),
        step_precision: str = "fp32",
        crop_size: int = 112,
        expressions=None,
    ):
        self.check_model(model)
        self.expressions = expressions
        self.model = model
        self.detector = detector
        self.extractor = extractor
        self.limits = limits
        self.crop_size = crop_size
        self.input_dim = model_input_dim(model)
        self.model_fps = model_fps(model)
        self.batch = StreamBatch(model, step_precision)
        self.sessions: dict[int, Session] = {}
        self._ids = itertools.count(1)
        self._leaving: list[Session] = []
        self._cond = threading.Condition()
        self._paused = False
        self._stop = False
        self.step_calls = 0  # step_some calls, and the batch rows they stepped (their ratio: the batching)
        self.stepped_rows = 0
        self.rounds = 0
        self._thread = threading.Thread(target=self._run, name="mambava-serve", daemon=True)
        self._thread.start()

    @staticmethod
    def check_model(model) -> None:
        """MambavaError unless `model` can serve live sessions (streamable, not a fusion model): checked before
        the server starts, so that a bad model is one line, not a failed start.

        Args:
            model: the temporal model.
        """
        check_streamable(model)
        if getattr(model, "kind", "") == "fusion":
            raise MambavaError(
                "serve: a fusion model needs each frame's sound, which a live session does not send; "
                "serve a visual model (predict takes fusion models)"
            )

    # ------------------------------------------------------------------ called from the event loop

    def open(self, name: str, fps: float, deliver: Callable[[dict], None]) -> Session:
        """A new session; a MambavaError when the server is full or closed."""
        with self._cond:
            if self._stop:
                raise MambavaError("the server is shutting down")
            if len(self.sessions) >= self.limits.max_sessions:
                raise MambavaError(
                    f"server full: {len(self.sessions)} of {self.limits.max_sessions} live sessions "
                    f"in use; try again later"
                )
            session = Session(
                next(self._ids),
                name,
                fps,
                deliver,
                self.model_fps,
                self.limits.queue_frames,
                self.limits.max_gap_ticks,
                geometry=gives_landmarks68(self.detector),
            )
            self.sessions[session.id] = session
            return session

    def close_session(self, session: Session) -> None:
        """The client left: its waiting frames are discarded, its tracks leave the batch (next round)."""
        with self._cond:
            if self.sessions.pop(session.id, None) is not None:
                self._leaving.append(session)
                self._cond.notify()

    def put(self, session: Session, payload: bytes, time: float | None = None) -> int:
        """Queue one frame of `session` (its index is the count of frames received); past `queue_frames`
        waiting, the oldest is dropped. `time`: checked by `Session.parse_time` (None: 1/fps after the last
        frame). Returns the frame's index."""
        with self._cond:
            index = session.received
            session.received += 1
            time = session.next_time(index, time)
            if session.closed:  # failed and closed by the worker: its socket is closing, nothing more is served
                return index
            session.inbox.append((index, time, payload))
            while len(session.inbox) > self.limits.queue_frames:
                old_index, old_time, _ = session.inbox.popleft()
                session.overflow.append((old_index, old_time))
                session.dropped += 1
            self._cond.notify()
            return index

    def refuse(self, session: Session, reason: str) -> int:
        """A frame that is not queued (too large): it takes its index (and its time, 1/fps after the last) and
        is answered with `reason`."""
        with self._cond:
            index = session.received
            session.received += 1
            session.served += 1
            session.next_time(index, None)
        session.deliver({"frame": index, "error": f"frame {index}: {reason}"})
        return index

    def pause(self) -> None:
        """Hold the worker after its current round (frames queue up, and drop past the limit) until `resume`."""
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify()

    def close(self, timeout: float = 10.0) -> None:
        """Stop the worker (its current round finishes) and join it; every session is closed."""
        with self._cond:
            self._stop = True
            self._leaving.extend(self.sessions.values())
            self.sessions.clear()
            self._cond.notify()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ------------------------------------------------------------------ the worker

    def _run(self) -> None:
        with fixed_threads(self.limits.threads):
            self._serve()

    def _serve(self) -> None:
        while True:
            with self._cond:
                while (
                    not self._stop
                    and (self._paused or not any(s.inbox or s.overflow for s in self.sessions.values()))
                    and not self._leaving
                ):
                    self._cond.wait()
                if self._stop:
                    return
                leaving, self._leaving = self._leaving, []
                taken = []
                for session in self.sessions.values():
                    if self._paused or not (session.inbox or session.overflow):
                        continue
                    overflow, session.overflow = session.overflow, []
                    taken.append((session, overflow, session.inbox.popleft() if session.inbox else None))
            for session in leaving:
                self._leave(session)
            if taken:
                try:
                    self._round(taken)
                except Exception as error:  # a bug in the shared work (not one session's input): each is told
                    traceback.print_exc(file=sys.stderr)
                    for session, _, _ in taken:
                        if not session.closed:
                            session.deliver({"error": f"internal error in this round ({error_kind(error)})"})

    def _leave(self, session: Session) -> None:
        """The session's tracks leave the batch (those that joined it: a failed session may be half way)."""
        for track in session.tracks:
            if session.key(track) in self.batch.keys:
                self.batch.leave(session.key(track))
        session.tracks = []

    def _fail(self, session: Session, reason: str, code: int = CLOSE_INTERNAL) -> None:
        """Close `session` after a failure of its own: it is told (one line and the close code), its frames
        are discarded and its tracks leave the batch; the other sessions go on."""
        session.closed = True
        with self._cond:
            self.sessions.pop(session.id, None)
            session.inbox.clear()
            session.overflow = []
        self._leave(session)
        session.deliver({"error": reason, "close": code})

    def _round(self, taken: list) -> None:
        self.rounds += 1
        events: dict[int, list[_Event]] = {}
        images = []  # (session, index, time, image)
        for session, overflow, frame in taken:
            events[session.id] = [_Event(i, t, {}, dropped=True) for i, t in overflow]
            if frame is None:
                continue
            index, time, payload = frame
            try:
                kind, value = self._decode(payload, index)
            except MambavaError as error:
                session.served += 1
                session.deliver({"frame": index, "error": str(error)})
                continue
            except Exception as error:  # a decoder's own failure on hostile bytes: this frame's error only
                session.served += 1
                session.deliver({"frame": index, "error": f"frame {index}: cannot decode ({type(error).__name__})"})
                continue
            if kind == "features":
                event = _Event(index, time, {session.name: value})
                if self.expressions is not None:
                    probabilities = self.expressions(None, value[None])
                    event.expressions = {} if probabilities is None else {session.name: probabilities[0]}
                events[session.id].append(event)
            else:
                images.append((session, index, time, value))
        if images:
            for event, session in self._faces(images):
                events[session.id].append(event)
        self._step([item for item in taken if not item[0].closed], events)

    def _decode(self, payload: bytes, index: int):
        if payload.startswith(IMAGE_MAGIC):
            if self.extractor is None:
                raise MambavaError(
                    f"frame {index}: this server has no backbone (started without --backbone): "
                    f"send {self.input_dim} float32 features per frame"
                )

            try:
                image = read_image(io.BytesIO(payload), self.limits.max_frame_pixels, name=f"frame {index}")
            except MambavaError as error:
                reason = str(error).split(": ", 1)[-1]
                if "pixels" in reason:
                    raise MambavaError(f"frame {index}: {reason} (--max-frame-pixels)") from None
                raise MambavaError(f"frame {index}: a broken image ({reason})") from None
            return "image", image
        if self.input_dim is not None and len(payload) == 4 * self.input_dim:
            features = np.frombuffer(payload, dtype="<f4").astype(np.float32)
            if not np.isfinite(features).all():
                raise MambavaError(f"frame {index}: features with NaN or infinite values")
            return "features", features
        raise MambavaError(
            f"frame {index}: {len(payload)} bytes are neither a JPEG/PNG image nor "
            f"{self.input_dim} float32 features ({4 * (self.input_dim or 0)} bytes)"
        )

    def _faces(self, images: list) -> Iterator[tuple[_Event, Session]]:
        """Faces of every session's image in one detector batch, their crops in one backbone batch. Should the
        batch fail, each image is tried alone, so that an image that breaks the detector fails its frame only."""

        try:
            detections = self.detector.detect_batch([image for _, _, _, image in images])
            kept = images
        except Exception:
            detections, kept = [], []
            for item in images:
                session, index = item[0], item[1]
                try:
                    detections.append(self.detector.detect_batch([item[3]])[0])
                    kept.append(item)
                except Exception as error:
                    session.served += 1
                    session.deliver(
                        {"frame": index, "error": f"frame {index}: face detection failed ({error_kind(error)})"}
                    )
        crops, owners = [], []
        tracked = []
        for (session, index, time, image), faces in zip(kept, detections):
            if session.cut(image):
                session.tracker.cut()
            ids = session.tracker.update(faces, time)
            names = [session.track_name(tid) for tid in ids]
            tracked.append(
                (session, index, time, names, faces, {session.track_name(t) for t in session.tracker.active_ids})
            )
            for face in faces:
                crops.append(face_crop(image, face, self.crop_size))
                owners.append(len(tracked) - 1)
        features = self.extractor.features(np.stack(crops)) if crops else np.zeros((0, 0), np.float32)
        expressions = self.expressions(np.stack(crops), features) if crops and self.expressions else None
        per_image: list[list] = [[] for _ in tracked]
        per_image_expressions: list[list] = [[] for _ in tracked]
        for i, (owner, feature) in enumerate(zip(owners, features)):
            per_image[owner].append(feature)
            if expressions is not None:
                per_image_expressions[owner].append(expressions[i])
        for (session, index, time, names, faces, active), feats, probabilities in zip(
            tracked, per_image, per_image_expressions
        ):
            yield (
                _Event(
                    index,
                    time,
                    dict(zip(names, feats)),
                    boxes={n: f.box for n, f in zip(names, faces)},
                    scores={n: f.score for n, f in zip(names, faces)},
                    retire=active,
                    geometry={n: (f.landmarks68, f.pose) for n, f in zip(names, faces)},
                    expressions=None if self.expressions is None else dict(zip(names, probabilities)),
                ),
                session,
            )

    def _step(self, taken: list, events: dict) -> None:
        """Drive every session's coroutine in lockstep: per step, the leaves, then one `join_last` for the new
        tracks, then one `step_some` for every session that steps."""
        running = {}
        for session, _, _ in taken:
            coroutine = session.advance(events[session.id])
            running[session.id] = (session, coroutine, None)
        replies: dict[int, dict] = {sid: None for sid in running}
        while running:
            if self._stop:  # shutting down: the round is abandoned (its sessions are closed)
                return
            ops = {}
            for sid, (session, coroutine, _) in list(running.items()):
                try:
                    ops[sid] = coroutine.send(replies[sid])
                except StopIteration as done:
                    del running[sid]
                    for message in done.value:
                        session.served += 1
                        message["dropped_total"] = session.dropped
                        message["skipped_total"] = session.skipped
                        session.deliver(message)
                    if session.poisoned:
                        self._fail(session, session.poisoned, CLOSE_POLICY)
                except Exception as error:  # this session's own work failed: it alone is closed
                    del running[sid]
                    log(f"session {session.id}: internal error ({type(error).__name__}: {error})")
                    self._fail(session, f"internal error in this session ({error_kind(error)}); it is closed")
            replies = {}
            for sid, (kind, keys) in ops.items():
                if kind == "leave":
                    for key in keys:
                        self.batch.leave(key)
                    replies[sid] = {}
            joins = {k: v for kind, keys in ops.values() if kind == "join" for k, v in keys.items()}
            out = self.batch.join_last(joins) if joins else {}
            steps = {k: v for kind, keys in ops.values() if kind == "step" for k, v in keys.items()}
            if steps:
                out.update(self.batch.step_some(steps))
                self.step_calls += 1
                self.stepped_rows += len(steps)
            for sid, (kind, keys) in ops.items():
                if kind != "leave":
                    replies[sid] = {k: out[k] for k in keys}


def _geometry_fields(geometry: tuple | None) -> dict:
    """A track row's `landmarks` ([[x, y]] × 68, frame pixels) and `pose` ([Rx, Ry, Rz] radians, [Tx, Ty, Tz] mm)
    where its face has them (`--landmarks dlib68`), None where not (a JSON row has no NaN)."""
    points, pose = (None, None) if geometry is None else geometry
    fields = {"landmarks": None if points is None else np.round(np.asarray(points, np.float64), 1).tolist()}
    fields["pose"] = [round(float(v), 4) for v in pose] if pose is not None and np.isfinite(pose).all() else None
    return fields


def error_kind(error: BaseException) -> str:
    """An unexpected exception in a few words for a client: its type and the first line of its message."""
    text = str(error).strip().splitlines()[0][:120] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def log(line: str) -> None:
    """One line to the server's log (stderr): no traceback for a client's bad input."""
    print(f"mambava serve: {line}", file=sys.stderr, flush=True)


def message_line(message: dict) -> str:
    """A session's message as one compact JSON line (NaN cannot occur: rows without a track are empty)."""

    return json.dumps(message, separators=(",", ":"), allow_nan=False)


__all__ = ["ServeLimits", "Session", "SessionHub", "IMAGE_MAGIC", "MAX_TIME_S", "error_kind", "message_line"]
