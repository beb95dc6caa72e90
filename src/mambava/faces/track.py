"""Tracking faces across frames: each detection joins the track it overlaps (IoU) or, after a short gap,
the recently lost track whose landmarks (or box centre) it lies close to; otherwise it starts a new track.

    tracker = FaceTracker()
    for frame in frames:
        ids = tracker.update(faces_of(frame), time=frame.time)   # one track id per face, same order

`stitch_tracks` and `name_tracks` finish a whole video: join tracks that follow each other at the same
place, and name them the Aff-Wild2 way (`<video>`, `<video>_left`/`<video>_right`, `<video>_<k>`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np

from mambava.faces.detect import Face


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _size(box: np.ndarray) -> float:
    return float(np.sqrt(max(box[2] - box[0], 1e-6) * max(box[3] - box[1], 1e-6)))


def _center(box: np.ndarray) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2], dtype=np.float64)


def relative_distance(a: Face, box: np.ndarray, landmarks: np.ndarray | None) -> float:
    """How far face `a` is from a track's last position, in units of face size: mean landmark distance when
    both have landmarks, box-centre distance otherwise."""
    size = max(np.sqrt(a.size * _size(box)), 1e-6)
    if a.landmarks is not None and landmarks is not None:
        return float(np.linalg.norm(a.landmarks - landmarks, axis=1).mean() / size)
    return float(np.linalg.norm(_center(a.box) - _center(box)) / size)


@dataclass
class _Track:
    track_id: int
    box: np.ndarray
    landmarks: np.ndarray | None
    last_time: float
    hits: int = 1


@dataclass
class FaceTracker:
    """Online multi-face tracker.

    iou_threshold: a detection overlapping a live track's last box at least this much continues it.
    max_gap: seconds a track may go unseen and still be resumed (re-identification over short gaps).
    max_distance: a detection not overlapping enough may still continue a track (live, or lost for at most
        max_gap) when its landmarks lie within this many face sizes of the track's last ones and its size is
        within max_size_ratio of the track's.
    """

    iou_threshold: float = 0.3
    max_gap: float = 1.0
    max_distance: float = 0.5
    max_size_ratio: float = 1.5
    _tracks: list[_Track] = field(default_factory=list, repr=False)
    _next_id: int = field(default=0, repr=False)

    def reset(self) -> None:
        self._tracks.clear()
        self._next_id = 0

    def cut(self) -> None:
        """A cut in the video: where a face was tells nothing of who is where now, so no face after it continues
        a track by place (new ids; `stitch_tracks` joins them again, by face where it can). Ids keep counting."""
        self._tracks.clear()

    @property
    def active_ids(self) -> list[int]:
        return [t.track_id for t in self._tracks]

    def update(self, faces: list[Face], time: float) -> list[int]:
        """Assign a track id to each face of the frame at `time` (seconds); returns ids in the faces' order."""
        self._tracks = [t for t in self._tracks if time - t.last_time <= self.max_gap + 1e-9]
        pairs = []
        for ti, track in enumerate(self._tracks):
            for fi, face in enumerate(faces):
                overlap = iou(track.box, face.box)
                if overlap >= self.iou_threshold:
                    pairs.append((1.0 - overlap, ti, fi))
                    continue
                ratio = face.size / _size(track.box)
                if not 1 / self.max_size_ratio <= ratio <= self.max_size_ratio:
                    continue
                distance = relative_distance(face, track.box, track.landmarks)
                if distance <= self.max_distance:
                    pairs.append((1.0 + distance, ti, fi))
        pairs.sort(key=lambda p: p[0])
        ids: list[int | None] = [None] * len(faces)
        used: set[int] = set()
        for _, ti, fi in pairs:
            if ti in used or ids[fi] is not None:
                continue
            used.add(ti)
            track = self._tracks[ti]
            ids[fi] = track.track_id
            track.box, track.landmarks, track.last_time = faces[fi].box, faces[fi].landmarks, time
            track.hits += 1
        for fi, face in enumerate(faces):
            if ids[fi] is None:
                track = _Track(self._next_id, face.box, face.landmarks, time)
                self._next_id += 1
                self._tracks.append(track)
                ids[fi] = track.track_id
        return ids  # type: ignore[return-value]


@dataclass
class TrackSummary:
    """What a finished track looks like from outside, for stitching and naming."""

    track_id: int
    frames: list[int]  # frame indices where the track has a face, ascending
    first_box: np.ndarray
    last_box: np.ndarray
    mean_x: float  # mean box-centre x over the track

    @property
    def start(self) -> int:
        return self.frames[0]

    @property
    def end(self) -> int:
        return self.frames[-1]


def stitch_tracks(
    tracks: list[TrackSummary],
    max_distance: float = 1.0,
    max_size_ratio: float = 1.5,
    identity: Callable[[list[int], int], float | None] | None = None,
    max_identity: float = 0.5,
) -> dict[int, int]:
    """Join tracks that follow one another in time at the same place (the face left the frame or went
    undetected for longer than the tracker's gap, then came back where it was). Returns {track_id: kept id};
    tracks that overlap in time are never joined.

    identity: where it gives a distance between a chain's tracks (their ids) and a later track (face descriptors,
    `mambava.faces.identity.identity_distance`), it decides instead of place, whatever the gap (a cut, a person who
    left and came back elsewhere, or someone else now where that person was): the nearest chain below
    `max_identity`. Tracks it knows nothing of are joined by place, as without it."""
    order = sorted(tracks, key=lambda t: t.start)
    chains: list[TrackSummary] = []  # the last piece of each chain
    owner: dict[int, int] = {}
    spans: dict[int, list[tuple[int, int]]] = {}
    members: dict[int, list[int]] = {}
    for track in order:
        best, best_distance = None, None
        for chain_last in chains:
            root = owner[chain_last.track_id]
            if any(not (track.start > e or track.end < s) for s, e in spans[root]):
                continue  # overlaps in time with some piece of that chain
            if chain_last.end >= track.start:
                continue
            known = identity(members[root], track.track_id) if identity is not None else None
            if known is not None:
                if known < max_identity and (best_distance is None or known < best_distance):
                    best, best_distance = chain_last, known
                continue
            a, b = chain_last.last_box, track.first_box
            ratio = _size(b) / _size(a)
            if not 1 / max_size_ratio <= ratio <= max_size_ratio:
                continue
            distance = float(np.linalg.norm(_center(a) - _center(b)) / np.sqrt(_size(a) * _size(b)))
            if distance <= max_distance and (best_distance is None or distance < best_distance):
                best, best_distance = chain_last, distance
        if best is None:
            owner[track.track_id] = track.track_id
            spans[track.track_id] = [(track.start, track.end)]
            members[track.track_id] = [track.track_id]
            chains.append(track)
        else:
            root = owner[best.track_id]
            owner[track.track_id] = root
            spans[root].append((track.start, track.end))
            members[root].append(track.track_id)
            chains[chains.index(best)] = track
    return owner


def name_tracks(video: str, tracks: list[TrackSummary]) -> dict[int, str]:
    """Aff-Wild2 names: one track → `<video>`; two tracks seen together → `<video>_left` / `<video>_right`
    by mean horizontal position in the image; otherwise `<video>_1`, `<video>_2`, ... by first appearance."""
    if not tracks:
        return {}
    if len(tracks) == 1:
        return {tracks[0].track_id: video}
    if len(tracks) == 2:
        a, b = tracks
        if set(a.frames) & set(b.frames):
            left, right = sorted(tracks, key=lambda t: t.mean_x)
            return {left.track_id: f"{video}_left", right.track_id: f"{video}_right"}
    ordered = sorted(tracks, key=lambda t: (t.start, t.mean_x))
    return {t.track_id: f"{video}_{k}" for k, t in enumerate(ordered, start=1)}


@dataclass
class FinishedTrack:
    """A track of a whole video after `finish_tracks`: its name, the tracker ids joined into it (time
    order; the first is its `track_id`) and the rows of all of them, sorted by frame."""

    name: str
    track_id: int
    members: list[int]
    rows: list


def finish_tracks(
    video: str,
    hits: dict[int, list],
    n_frames: int,
    min_track_frames: int = 3,
    box=lambda row: row[2],
    identity: Callable[[list[int], int], float | None] | None = None,
) -> tuple[list[FinishedTrack], int]:
    """Finish the tracks of a whole video, the way the crop writer does: drop tracks with fewer than
    `min_track_frames` faces (fewer than n_frames for very short inputs) as spurious, join tracks that follow
    one another at the same place (`stitch_tracks`), and name them (`name_tracks`).

    hits: {tracker id: rows}, each row a tuple whose first item is the frame index (or any increasing
    position) and from which `box(row)` gives the (x1, y1, x2, y2) box. `identity`: see `stitch_tracks` (by
    tracker id). Returns the tracks sorted by name and the number of tracks dropped."""

    def summary(tid: int, rows: list) -> TrackSummary:
        boxes = [np.asarray(box(r), dtype=np.float64) for r in rows]
        return TrackSummary(
            tid, [r[0] for r in rows], boxes[0], boxes[-1], float(np.mean([(b[0] + b[2]) / 2 for b in boxes]))
        )

    needed = min(min_track_frames, n_frames)
    kept = {tid: sorted(rows, key=lambda r: r[0]) for tid, rows in hits.items() if len(rows) >= needed}
    owner = stitch_tracks([summary(tid, rows) for tid, rows in kept.items()], identity=identity)
    members: dict[int, list[int]] = {}
    for tid in sorted(kept, key=lambda t: kept[t][0][0]):
        members.setdefault(owner[tid], []).append(tid)
    merged = {
        root: sorted((r for tid in tids for r in kept[tid]), key=lambda r: r[0]) for root, tids in members.items()
    }
    names = name_tracks(video, [summary(root, rows) for root, rows in merged.items()])
    finished = [FinishedTrack(names[root], root, members[root], merged[root]) for root in merged]
    natural = lambda t: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", t.name)]  # noqa: E731
    return sorted(finished, key=natural), len(hits) - len(kept)


# ------------------------------------------------------------------------ following faces between detections


def _follow_points(face: Face) -> np.ndarray:
    """The points optical flow follows: the 5 landmarks, or (no landmarks) the box centre and four points
    half-way to its corners."""
    if face.landmarks is not None:
        return np.asarray(face.landmarks, np.float32).reshape(5, 2)
    cx, cy = face.center
    w, h = (face.box[2] - face.box[0]) / 4, (face.box[3] - face.box[1]) / 4
    return np.array([[cx, cy], [cx - w, cy - h], [cx + w, cy - h], [cx - w, cy + h], [cx + w, cy + h]], np.float32)


def follow_faces(
    previous: np.ndarray, current: np.ndarray, faces: list[Face], max_fb_error: float = 0.05
) -> list[Face] | None:
    """Move `faces` found in the grey frame `previous` to the grey frame `current` with pyramidal
    Lucas-Kanade flow of their landmarks, then moved by the similarity fitted to those points: landmarks
    and box move rigidly (box: shift and scale, upright), so an expression changing between detections does
    not drag the mouth corners, which measured better on the demo's videos than the raw flow. A face's 68 points
    (`landmarks68`) move by the same similarity; its `pose` is dropped, for the landmark source to fit again
    (`Dlib68Detector.annotate`). Returns None when any
    face is lost: a point the flow cannot
    follow, or whose forward-backward error exceeds `max_fb_error` face sizes (a cut, an occlusion, a
    flat card) — the caller then runs the detector."""

    if not faces:
        return []
    points = np.concatenate([_follow_points(f) for f in faces]).reshape(-1, 1, 2)
    params = dict(winSize=(21, 21), maxLevel=3, criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
    moved, ok, _ = cv2.calcOpticalFlowPyrLK(previous, current, points, None, **params)
    if moved is None:
        return None
    back, ok_back, _ = cv2.calcOpticalFlowPyrLK(current, previous, moved, None, **params)
    if back is None:
        return None
    fb = np.linalg.norm((back - points).reshape(-1, 2), axis=1)
    good = (ok.reshape(-1) == 1) & (ok_back.reshape(-1) == 1)
    out: list[Face] = []
    for i, face in enumerate(faces):
        rows = slice(5 * i, 5 * i + 5)
        if not good[rows].all() or fb[rows].max() > max(1.0, max_fb_error * face.size):
            return None
        src, dst = points[rows].reshape(5, 2), moved[rows].reshape(5, 2)
        matrix, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)
        if matrix is None:
            return None
        scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
        centre = matrix[:, :2] @ face.center.astype(np.float64) + matrix[:, 2]
        half = (face.box[2:] - face.box[:2]) * scale / 2
        box = np.concatenate([centre - half, centre + half]).astype(np.float32)
        landmarks = (src @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32) if face.landmarks is not None else None
        points68 = None
        if face.landmarks68 is not None:
            points68 = (np.asarray(face.landmarks68, np.float64) @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)
        out.append(Face(box=box, landmarks=landmarks, score=face.score, landmarks68=points68))
    return out


# ---------------------------------------------------------------------------------------------------- cuts


@dataclass
class CutDetector:
    """Finds cuts (a new shot) between consecutive frames: the mean absolute difference of the two frames' grey
    thumbnails (64 px wide, area-averaged, each scaled to a standard deviation of 64 levels about its mean, so
    that a change of light is not a cut) at least `threshold`, and at least `ratio` times the median of the last
    differences (so a fast pan, which moves every frame, is not a cut). Hand-written: a scene-detection library
    for one comparison a frame is not worth a dependency. Measured in docs/faces.md (Identities)."""

    threshold: float = 25.0
    ratio: float = 4.0
    width: int = 64
    _last: np.ndarray | None = field(default=None, repr=False)
    _recent: list[float] = field(default_factory=list, repr=False)

    def __call__(self, frame: np.ndarray) -> bool:
        """Whether the frame (grey, or RGB) starts a new shot (False for the first frame)."""
        h, w = frame.shape[:2]
        thumb = cv2.resize(
            np.ascontiguousarray(frame), (self.width, max(1, round(h * self.width / w))), interpolation=cv2.INTER_AREA
        )
        if thumb.ndim == 3:
            thumb = cv2.cvtColor(thumb, cv2.COLOR_RGB2GRAY)
        thumb = thumb.astype(np.float32)
        thumb = (thumb - thumb.mean()) * (64.0 / max(float(thumb.std()), 1.0))  # a change of light is no cut
        last, self._last = self._last, thumb
        if last is None or last.shape != thumb.shape:
            self._recent.clear()
            return last is not None
        change = float(np.abs(thumb - last).mean())
        usual = float(np.median(self._recent)) if self._recent else 0.0
        self._recent = (self._recent + [change])[-15:]
        return change >= self.threshold and change >= self.ratio * usual
