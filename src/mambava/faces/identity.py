"""Who is who: dlib's face descriptors (`mambava.faces.dlib_models`, the `faces` extra) for a few faces of each
track, used to join one person's tracks inside a video, to give one set of person ids to a whole batch of
videos, and to name people from a gallery.

    sampler = TrackSampler()                                  # while tracking: the best few faces per track
    sampler.offer(track_id, frame_index, image, face)
    descriptors = sampler.descriptors()                       # {track id: (k, 128)}
    finish_tracks(video, hits, n, identity=identity_distance(descriptors))   # joins by position, then by face
    people = assign_persons(tracks, gallery=load_gallery("people/"))          # {(video, track): person}
    write_persons_csv("out/persons.csv", tracks, people)

A face's descriptor costs ~0.1 s on one core, so not every frame gets one: `TrackSampler` keeps, per track, the
`per_track` faces with the highest detector score × face size (× the cosines of yaw and pitch where the head pose
is known: frontal faces describe a person best), at least `spacing` frames apart, as dlib's 150×150 chips;
their descriptors are computed once, when the video is done.

Distances are Euclidean between 128-d descriptors; between two tracks, the mean over their descriptors' pairs.
dlib reads two faces within 0.6 as one person (99.38% on LFW); we use `SAME_PERSON` = 0.5 (dlib's own face
clustering example's threshold), measured on the test media in docs/faces.md. Clustering is ours (average
linkage, nearest pair first, below `SAME_PERSON`) because it must respect what position already knows: two tracks
seen in the same frame are two people (cannot-link), which no clustering routine of dlib or scipy takes.
"""

from __future__ import annotations

import csv
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np

from mambava.core.errors import MambavaError
from mambava.core.fileio import atomic_open
from mambava.faces.dlib_models import face_chip, face_descriptors, face_recognizer
from mambava.faces.track import FinishedTrack, finish_tracks
from mambava.media.video import read_image

SAME_PERSON = 0.5
PERSONS_COLUMNS = ["person", "videos", "tracks", "frames", "thumbnail"]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def track_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Euclidean distance over the pairs of two sets of descriptors ((k, 128) and (m, 128))."""
    a, b = np.asarray(a, np.float64).reshape(-1, 128), np.asarray(b, np.float64).reshape(-1, 128)
    if not len(a) or not len(b):
        return math.inf
    return float(np.linalg.norm(a[:, None] - b[None], axis=2).mean())


@dataclass
class _Sample:
    key: float
    index: int
    chip: np.ndarray


@dataclass
class TrackSampler:
    """The best `per_track` faces of each track (see the module doc), kept as dlib chips.

    Args:
        per_track: faces described per track.
        spacing: frames between two kept faces of a track (a better face within it replaces the kept one).
        detector: the detector's name, for dlib's 5-point chip on a face without 68 points (`dlib_models.dlib_box`).
    """

    per_track: int = 3
    spacing: int = 10
    detector: str = "mtcnn"
    samples: dict[int, list[_Sample]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        face_recognizer()  # a missing extra fails before the first frame

    @staticmethod
    def quality(face) -> float:
        """Detector score × face size × cos(yaw) · cos(pitch) (1 without a pose)."""
        size = math.sqrt(max(float(face.box[2] - face.box[0]), 1e-6) * max(float(face.box[3] - face.box[1]), 1e-6))
        frontal = 1.0
        pose = getattr(face, "pose", None)
        if pose is not None and np.isfinite(pose[:2]).all():
            frontal = max(math.cos(float(pose[0])) * math.cos(float(pose[1])), 0.0)
        return float(face.score) * size * frontal

    def offer(self, track_id: int, index: int, image: np.ndarray, face) -> None:
        """Consider the face of track `track_id` in frame `index` (of the RGB `image`)."""
        key = self.quality(face)
        kept = self.samples.setdefault(track_id, [])
        near = [s for s in kept if abs(s.index - index) < self.spacing]
        if near:
            worst = min(near, key=lambda s: s.key)
            if key <= worst.key or len(near) > 1:
                return
            kept.remove(worst)
        elif len(kept) >= self.per_track:
            worst = min(kept, key=lambda s: s.key)
            if key <= worst.key:
                return
            kept.remove(worst)
        chip = face_chip(image, face.box, getattr(face, "landmarks68", None), self.detector)
        kept.append(_Sample(key, index, chip))

    def descriptors(self, track_ids: Iterable[int] | None = None) -> dict[int, np.ndarray]:
        """{track id: (k, 128) float32} for the given tracks (default: all), computed now."""
        ids = list(self.samples) if track_ids is None else [t for t in track_ids if t in self.samples]
        return {t: face_descriptors([s.chip for s in self.samples[t]]) for t in ids}

    def thumbnail(self, track_ids: Iterable[int]) -> np.ndarray | None:
        """The best chip (150×150 RGB) among the tracks' kept faces."""
        best = max((s for t in track_ids for s in self.samples.get(t, [])), key=lambda s: s.key, default=None)
        return None if best is None else best.chip


def identity_distance(descriptors: dict[int, np.ndarray]) -> Callable[[Sequence[int], int], float | None]:
    """For `finish_tracks(identity=...)`: the distance between a chain of tracks (their ids) and a track, or None
    where either has no descriptor."""

    def distance(chain: Sequence[int], track: int) -> float | None:
        pooled = [descriptors[t] for t in chain if t in descriptors and len(descriptors[t])]
        if not pooled or track not in descriptors or not len(descriptors[track]):
            return None
        return track_distance(np.concatenate(pooled), descriptors[track])

    return distance


# ------------------------------------------------------------------------------------------- live persons


@dataclass
class OnlinePersons:
    """Person ids given as a live stream's tracks appear (`stream --persons`, one source): a batch's ids need every
    track first (`assign_persons`), a stream's rows cannot wait. A track is described at its first face (one
    descriptor, ~0.1 s) and takes the nearest of the gallery's names and the persons this stream has seen, within
    `threshold` and not held by another track live at the same time (two faces in one frame are two people), else
    a new `unknown-N`; it keeps that person to its end. While it lives its best faces are kept (`TrackSampler`);
    when it ends (`retire`) they are described and join its person's descriptors, so that a person who leaves and
    comes back, after a cut or any gap, is recognised by more than one face.

    Args:
        gallery: {name: (k, 128) descriptors} (`load_gallery`), or None.
        detector: the detector's name (`TrackSampler`).
        threshold: the largest descriptor distance for one person (`SAME_PERSON`).
    """

    gallery: dict[str, np.ndarray] | None = None
    detector: str = "mtcnn"
    threshold: float = SAME_PERSON
    persons: dict = field(default_factory=dict)  # {track: person}

    def __post_init__(self) -> None:
        self.sampler = TrackSampler(detector=self.detector)  # a missing extra fails here, before the first frame
        self.known: dict[str, list[np.ndarray]] = {name: [d] for name, d in (self.gallery or {}).items()}
        self._unknown = 0

    def person(self, track, index: int, image: np.ndarray, face, live: Iterable = ()) -> str:
        """The person of `track`, whose face `face` is in frame `index` (the RGB `image`); `live`: the tracks live
        in this frame (their persons are not this track's)."""
        self.sampler.offer(track, index, image, face)
        if track in self.persons:
            return self.persons[track]
        descriptor = face_descriptors([face_chip(image, face.box, getattr(face, "landmarks68", None), self.detector)])
        taken = {self.persons[t] for t in live if t != track and t in self.persons}
        options = [
            (track_distance(np.concatenate(found), descriptor), person)
            for person, found in self.known.items()
            if person not in taken
        ]
        distance, person = min(options, default=(math.inf, ""), key=lambda o: o[0])
        if distance >= self.threshold:
            person = self._new_unknown()
        self.persons[track] = person
        self.known.setdefault(person, []).append(descriptor)
        return person

    def _new_unknown(self) -> str:
        while True:
            self._unknown += 1
            name = f"unknown-{self._unknown}"
            if name not in self.known:
                return name

    def retire(self, track) -> None:
        """`track` ended: its kept faces are described and join its person's descriptors."""
        if track in self.persons and track in self.sampler.samples:
            self.known[self.persons[track]].append(self.sampler.descriptors([track])[track])
        self.sampler.samples.pop(track, None)


# ------------------------------------------------------------------------------------------- persons


@dataclass
class TrackIdentity:
    """One finished track of one video with what identifies it: its descriptors, the frames it spans (for
    the cannot-link: two tracks of one video seen at once are two people), how many faces it has, the best chip."""

    video: str
    track: str
    descriptors: np.ndarray  # (k, 128)
    frames: set[int]
    face_frames: int
    thumbnail: np.ndarray | None = None


def finish_identified_tracks(
    video: str,
    hits: dict[int, list],
    n_frames: int,
    sampler: TrackSampler | None,
    min_track_frames: int = 3,
    box=lambda row: row[2],
) -> tuple[list[FinishedTrack], int, list[TrackIdentity] | None]:
    """`mambava.faces.track.finish_tracks` with the sampler's faces: each kept track described (not the spurious
    ones), tracks joined by face where place cannot tell (`stitch_tracks`' identity), and the finished tracks'
    `TrackIdentity` (None without a sampler). Rows' first item is the frame position (as finish_tracks)."""
    if sampler is None:
        return (*finish_tracks(video, hits, n_frames, min_track_frames, box), None)
    needed = min(min_track_frames, n_frames)
    descriptors = sampler.descriptors([t for t, rows in hits.items() if len(rows) >= needed])
    finished, dropped = finish_tracks(video, hits, n_frames, min_track_frames, box, identity_distance(descriptors))
    identities = [
        TrackIdentity(
            video,
            track.name,
            np.concatenate([descriptors[t] for t in track.members if t in descriptors] or [np.zeros((0, 128))]),
            {r[0] for r in track.rows},
            len(track.rows),
            sampler.thumbnail(track.members),
        )
        for track in finished
    ]
    return finished, dropped, identities


def _conflict(a: list[TrackIdentity], b: list[TrackIdentity]) -> bool:
    return any(x.video == y.video and x.frames & y.frames for x in a for y in b)


def cluster_tracks(tracks: Sequence[TrackIdentity], threshold: float = SAME_PERSON) -> list[int]:
    """A cluster number per track (0, 1, ... in order of first appearance): average linkage on `track_distance`,
    the nearest pair of clusters merged first while nearer than `threshold`, never two tracks of one video that
    share a frame."""
    clusters: list[list[int]] = [[i] for i in range(len(tracks))]
    pair = {
        (i, j): track_distance(tracks[i].descriptors, tracks[j].descriptors)
        for i in range(len(tracks))
        for j in range(i + 1, len(tracks))
    }

    def linkage(a: list[int], b: list[int]) -> float:
        return float(np.mean([pair[min(i, j), max(i, j)] for i in a for j in b]))

    while len(clusters) > 1:
        best = None
        for x in range(len(clusters)):
            for y in range(x + 1, len(clusters)):
                d = linkage(clusters[x], clusters[y])
                if d < threshold and (best is None or d < best[0]):
                    if not _conflict([tracks[i] for i in clusters[x]], [tracks[i] for i in clusters[y]]):
                        best = (d, x, y)
        if best is None:
            break
        _, x, y = best
        clusters[x] = sorted(clusters[x] + clusters[y])
        del clusters[y]
    clusters.sort(key=lambda c: c[0])
    labels = [0] * len(tracks)
    for k, members in enumerate(clusters):
        for i in members:
            labels[i] = k
    return labels


def assign_persons(
    tracks: Sequence[TrackIdentity], gallery: dict[str, np.ndarray] | None = None, threshold: float = SAME_PERSON
) -> list[str]:
    """A person id per track for a whole batch: clusters of tracks (`cluster_tracks`), each named after its
    nearest gallery person when nearer than `threshold` (each name to one cluster per frame of a video), else
    `unknown-1`, `unknown-2`, ... in order of first appearance."""
    labels = cluster_tracks(tracks, threshold)
    members: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        members.setdefault(label, []).append(i)
    names: dict[int, str] = {}
    if gallery:
        options = sorted(
            (track_distance(np.concatenate([tracks[i].descriptors for i in idx]), photos), label, name)
            for label, idx in members.items()
            for name, photos in gallery.items()
        )
        for distance, label, name in options:
            if distance >= threshold or label in names:
                continue
            taken = [i for other, given in names.items() if given == name for i in members[other]]
            if not _conflict([tracks[i] for i in members[label]], [tracks[i] for i in taken]):
                names[label] = name
    unknown = 0
    for label in sorted(members):
        if label not in names:
            unknown += 1
            names[label] = f"unknown-{unknown}"
    return [names[label] for label in labels]


def write_persons_csv(
    out_dir: str | os.PathLike, tracks: Sequence[TrackIdentity], persons: Sequence[str], name: str = "persons"
) -> Path:
    """OUT/<name>.csv (`PERSONS_COLUMNS`: person, videos and tracks `;`-separated, face frames, thumbnail) and each
    person's best face as OUT/<name>/<person>.jpg (the thumbnail, relative to OUT). Written atomically."""
    out_dir = Path(out_dir)
    by_person: dict[str, list[TrackIdentity]] = {}
    for track, person in zip(tracks, persons):
        by_person.setdefault(person, []).append(track)
    thumbs = out_dir / name
    rows = []
    for person, members in by_person.items():
        chips = [t.thumbnail for t in members if t.thumbnail is not None]
        image = ""
        if chips:
            path = thumbs / f"{_safe(person)}.jpg"
            ok, data = cv2.imencode(".jpg", np.ascontiguousarray(chips[0][:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 95])
            if not ok:
                raise MambavaError(f"{path}: JPEG encoding failed")
            with atomic_open(path, "wb") as handle:
                handle.write(data.tobytes())
            image = path.relative_to(out_dir).as_posix()
        rows.append(
            [
                person,
                ";".join(dict.fromkeys(t.video for t in members)),
                ";".join(t.track for t in members),
                sum(t.face_frames for t in members),
                image,
            ]
        )
    path = out_dir / f"{name}.csv"
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(PERSONS_COLUMNS)
        writer.writerows(rows)
    return path


def _safe(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", name) or "person"


# ------------------------------------------------------------------------------------------- gallery


def gallery_photos(directory: str | os.PathLike) -> dict[str, list[Path]]:
    """{name: photos} of a gallery folder: `DIR/<name>.jpg` (one photo) or `DIR/<name>/*.jpg` (several)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise MambavaError(f"{directory}: no such gallery folder (--identities takes a folder of photos)")
    found: dict[str, list[Path]] = {}
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            photos = sorted(p for p in entry.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not photos:
                raise MambavaError(f"{entry}: no photo in this gallery folder")
            found[entry.name] = photos
        elif entry.suffix.lower() in IMAGE_SUFFIXES:
            found.setdefault(entry.stem, []).append(entry)
    if not found:
        raise MambavaError(f"{directory}: no photos (one photo or one folder of photos per name)")
    return found


def load_gallery(directory: str | os.PathLike, detector) -> dict[str, np.ndarray]:
    """{name: (k, 128) descriptors} of a gallery folder (`gallery_photos`), each photo holding exactly one face
    found by `detector`. A photo that cannot be read, has no face or has several is a one-line MambavaError
    naming it (checked before anything is written)."""
    gallery = {}
    name = getattr(detector, "name", "mtcnn")
    for person, photos in gallery_photos(directory).items():
        chips = []
        for photo in photos:
            try:
                image = read_image(photo)
            except MambavaError as error:
                raise MambavaError(f"{photo}: not a readable gallery photo ({str(error).split(': ', 1)[-1]})") from None
            faces = detector.detect(image)
            if len(faces) != 1:
                raise MambavaError(
                    f"{photo}: "
                    + ("no face found" if not faces else f"{len(faces)} faces found")
                    + f" in a gallery photo of {person!r}; it needs exactly one"
                )
            face = faces[0]
            chips.append(face_chip(image, face.box, getattr(face, "landmarks68", None), name))
        gallery[person] = face_descriptors(chips)
    return gallery
