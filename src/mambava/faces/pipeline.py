"""Video → tracked, aligned face crops: the streaming generator that predict/stream consume, and the
Aff-Wild2-layout crop writer (`extract_faces`) with its per-frame CSV and contact sheet."""

from __future__ import annotations

import csv
import dataclasses
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np
from PIL import Image, ImageDraw

from mambava.core.errors import MambavaError
from mambava.core.fileio import atomic_open, atomic_path, is_output_failure, make_folder, output_error
from mambava.core.progress import rate_progress
from mambava.faces.align import LANDMARK_COLUMNS, face_crop
from mambava.faces.columns import GEOMETRY_COLUMNS, geometry_row, gives_landmarks68
from mambava.faces.detect import FaceDetector, get_detector
from mambava.faces.identity import TrackSampler, assign_persons, finish_identified_tracks
from mambava.faces.track import CutDetector, FaceTracker, follow_faces
from mambava.media.video import VideoFrame, VideoReader, open_video, source_name

CSV_COLUMNS = ["frame", "time", "track", "present", "image", "score", "x1", "y1", "x2", "y2", *LANDMARK_COLUMNS]


@dataclass(frozen=True, eq=False)
class TrackedFace:
    """A face in one frame with its track. `crop`: size×size×3 uint8 RGB (aligned), or None if not asked."""

    track_id: int
    box: np.ndarray
    landmarks: np.ndarray | None
    score: float
    crop: np.ndarray | None
    landmarks68: np.ndarray | None = None  # (68, 2) with a landmark source that gives them (`dlib68`)
    pose: np.ndarray | None = None  # (6,) Rx, Ry, Rz, Tx, Ty, Tz with the 68 points (`mambava.faces.pose`)


@dataclass(frozen=True, eq=False)
class FrameFaces:
    """The faces of one frame. `index`: 0-based frame number in the source; `image`: the frame (RGB), kept
    so that a live view can draw on it (None when iter_tracked_faces(keep_images=False))."""

    index: int
    time: float
    faces: list[TrackedFace]
    image: np.ndarray | None = None


def _is_live(reader) -> bool:
    return bool(getattr(reader, "live", False))


def iter_tracked_faces(
    reader: VideoReader | Iterable[VideoFrame] | str | os.PathLike | int,
    detector: FaceDetector | str | None = None,
    *,
    tracker: FaceTracker | None = None,
    fps: float | None = None,
    batch_size: int | None = None,
    crop_size: int = 112,
    crops: bool = True,
    keep_images: bool = True,
    detect_every: int = 1,
    search_every: int = 6,
    cuts: bool = True,
) -> Iterator[FrameFaces]:
    """Detect, track and align faces frame by frame, streaming: yields one FrameFaces per frame read, in
    order, holding at most `batch_size` frames at once (frames are detected in batches; 1 for live sources).

    reader: a VideoReader (or any iterable of VideoFrame), or a source for `open_video(source, fps)` (`fps`
        applies only then), which is closed at the end.
    detector: a FaceDetector or a registered name (default "mtcnn").
    tracker: a FaceTracker to continue (default: a new one); crops=False skips alignment (crop=None).
    detect_every: run the detector on every k-th frame only and follow the faces in between with optical
        flow (`follow_faces`); a frame where a face is lost runs the detector at once. 1: every frame.
    search_every: with detect_every > 1 and a detector that can `verify` faces (MTCNN: O-Net alone on the
        followed boxes), one scheduled detection in this many searches the whole frame (for faces that
        appear); the others only check the followed faces, and a face that fails the check sends that frame
        to the whole-frame search. 1: always the whole frame.
    cuts: at a cut (`CutDetector`: a new shot) no face continues a track by its place (`FaceTracker.cut`).
    """
    if int(detect_every) != detect_every or detect_every < 1:
        raise MambavaError(f"--detect-every must be a whole number >= 1, got {detect_every}")
    det = get_detector(detector or "mtcnn")
    tracker = tracker or FaceTracker()
    cut = CutDetector() if cuts else None
    own = not isinstance(reader, VideoReader) and isinstance(reader, (str, os.PathLike, int))
    frames_in = open_video(reader, fps=fps) if own else reader
    if batch_size is None:
        batch_size = 1 if _is_live(frames_in) else 8
    try:
        if detect_every > 1:
            yield from _detect_every(
                frames_in,
                det,
                tracker,
                int(detect_every),
                max(1, int(search_every)),
                crop_size,
                crops,
                keep_images,
                cut,
            )
            return
        batch: list[VideoFrame] = []

        def flush() -> Iterator[FrameFaces]:
            detections = det.detect_batch([f.image for f in batch])
            for frame, faces in zip(batch, detections):
                if cut is not None and cut(frame.image):
                    tracker.cut()
                tracked = _tracked(frame.image, tracker.update(faces, frame.time), faces, crop_size, crops)
                yield FrameFaces(frame.index, frame.time, tracked, frame.image if keep_images else None)
            batch.clear()

        for frame in frames_in:
            batch.append(frame)
            if len(batch) >= batch_size:
                yield from flush()
        if batch:
            yield from flush()
    finally:
        if own:
            frames_in.close()


def _tracked(image: np.ndarray, ids: list[int], faces: list, crop_size: int, crops: bool) -> list[TrackedFace]:
    return [
        TrackedFace(
            track_id=tid,
            box=face.box,
            landmarks=face.landmarks,
            score=face.score,
            crop=face_crop(image, face, crop_size) if crops else None,
            landmarks68=face.landmarks68,
            pose=face.pose,
        )
        for tid, face in zip(ids, faces)
    ]


def _detect_every(
    frames_in,
    det: FaceDetector,
    tracker: FaceTracker,
    k: int,
    search_every: int,
    crop_size: int,
    crops: bool,
    keep_images: bool,
    cut: CutDetector | None = None,
) -> Iterator[FrameFaces]:
    """iter_tracked_faces with the detector on every k-th frame (frame by frame: whether a frame needs the
    detector depends on the flow of the one before). Without a face the detector still runs every k frames,
    so a face that appears is found at most k-1 frames late (k * search_every - 1 while others are followed),
    and a followed face outlives its last detection by at most k-1 frames."""

    verify = getattr(det, "verify", None)  # MTCNN's O-Net check of followed faces; None: search every time
    # what a landmark source adds to the faces the flow followed (`dlib68`: the head pose of the 68 points the flow
    # moved; its predictor runs only where the detector does); None: the followed faces as they are
    annotate = getattr(det, "annotate", None)
    previous, followed, since, searches = None, [], k, 0
    for frame in frames_in:
        grey = cv2.cvtColor(np.ascontiguousarray(frame.image), cv2.COLOR_RGB2GRAY)
        faces = None
        if cut is not None and cut(grey):
            tracker.cut()
            since = k  # the faces followed were in another shot: detect
        if since < k and previous is not None and previous.shape == grey.shape:
            faces = follow_faces(previous, grey, followed)
        if faces is not None and annotate is not None:
            faces = annotate(frame.image, faces)
        if faces is None:
            searches += 1
            if followed and verify is not None and searches % search_every and previous.shape == grey.shape:
                checked = verify(frame.image, followed)
                faces = None if any(face is None for face in checked) else checked
            if faces is None:
                faces, searches = det.detect(frame.image), 0
            since = 1
        else:
            since += 1
        tracked = _tracked(frame.image, tracker.update(faces, frame.time), faces, crop_size, crops)
        previous, followed = grey, faces
        yield FrameFaces(frame.index, frame.time, tracked, frame.image if keep_images else None)


# ------------------------------------------------------------------------------------------ crop writer


@dataclass
class TrackResult:
    """One output track: its folder and, over the processed frames, where it has a crop and where not."""

    name: str
    track_id: int
    directory: Path
    present: list[int]  # 0-based frame indices with a crop (<directory>/<index+1:05d>.jpg)
    missing: list[int]  # processed frames without a face for this track

    @property
    def coverage(self) -> float:
        total = len(self.present) + len(self.missing)
        return len(self.present) / total if total else 0.0

    def crop_path(self, index: int) -> Path:
        return self.directory / f"{index + 1:05d}.jpg"

    def mask(self, frames: Iterable[int]) -> np.ndarray:
        """Boolean presence for the given frame indices."""
        present = set(self.present)
        return np.array([f in present for f in frames], dtype=bool)


@dataclass
class FacesResult:
    video: str  # the name used for the crop folders
    source: str
    out_dir: Path
    frames: list[int]  # the processed frames (all decoded frames, or those kept by fps), 0-based
    times: list[float]  # their timestamps, seconds
    tracks: list[TrackResult]
    csv_path: Path
    preview_path: Path | None = None
    fps: float | None = None  # the source's frame rate
    dropped_tracks: int = 0  # short tracks discarded as spurious
    detector: str = ""
    landmarks68: bool = False  # the CSV has the 68 points and the head pose (`--landmarks dlib68`)
    identities: list | None = None  # with `persons`: each track's `mambava.faces.identity.TrackIdentity`
    persons: dict[str, str] | None = None  # with `persons`: {track name: person}; `write_csv` sets it again
    rows: dict = dataclasses.field(default_factory=dict, repr=False)  # {track id: {frame: row}}, for write_csv

    def write_csv(self, persons: dict[str, str] | None = None) -> Path:
        """(Re)write the per-frame CSV, with `persons` ({track name: person}, e.g. a whole batch's) as its `person`
        column (default: those found for this video alone, if any)."""
        if persons is not None:
            self.persons = dict(persons)
        _write_csv(self, self.out_dir)
        return self.csv_path

    def track(self, name: str) -> TrackResult:
        for track in self.tracks:
            if track.name == name:
                return track
        raise KeyError(name)

    @property
    def frames_with_face(self) -> int:
        present: set[int] = set()
        for track in self.tracks:
            present.update(track.present)
        return len(present)


def _write_jpeg(path: Path, rgb: np.ndarray, quality: int) -> None:
    ok, data = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise MambavaError(f"{path}: JPEG encoding failed")
    path.write_bytes(data.tobytes())


def extract_faces(
    video_path: str | os.PathLike | int,
    out_dir: str | os.PathLike,
    fps: float | None = None,
    *,
    detector: FaceDetector | str | None = None,
    tracker: FaceTracker | None = None,
    name: str | None = None,
    crop_size: int = 112,
    jpeg_quality: int = 95,
    min_track_frames: int = 3,
    batch_size: int | None = None,
    preview: bool = False,
    progress: bool = False,
    on_frame: Callable[[FrameFaces], None] | None = None,
    detect_every: int = 1,
    persons: bool = False,
    gallery: dict | None = None,
) -> FacesResult:
    """Write the crops of `video_path` in the Aff-Wild2 `cropped_aligned` layout and a per-frame CSV.

    out_dir/<video>/<NNNNN>.jpg (one track; NNNNN = 1-based frame number), or <video>_left and _right
    (two people seen together, by position), or <video>_1, _2, ... (otherwise); out_dir/<video>.faces.csv
    (one row per processed frame and track, `present` 0 where the track has no face; a video with no face
    at all has one row per frame with an empty track); with `preview`, out_dir/<video>.preview.png.
    Tracks with fewer than `min_track_frames` faces (fewer than the number of processed frames for very
    short inputs) are discarded as spurious; tracks that follow one another at the same place are joined.
    detect_every: see iter_tracked_faces.
    persons: describe a few faces of each track (`mambava.faces.identity`, the `faces` extra), join one person's
    tracks by face where place cannot tell, and add a `person` column (this video's persons, named from
    `gallery` ({name: descriptors}, `identity.load_gallery`) where they match; `result.write_csv(persons)` rewrites
    it with a whole batch's).
    Crops go to a hidden staging folder first and are renamed into place at the end.
    """
    out_dir = Path(out_dir)
    video = name or source_name(video_path)
    det = get_detector(detector or "mtcnn")
    sampler = TrackSampler(detector=getattr(det, "name", "")) if persons else None
    staging = _fresh_staging(out_dir, video)
    try:
        with open_video(video_path, fps=fps) as reader:
            source_fps = reader.fps
            frames, times, rows = _stage_crops(
                reader,
                det,
                staging,
                f"faces {video}",
                tracker=tracker,
                batch_size=batch_size,
                crop_size=crop_size,
                jpeg_quality=jpeg_quality,
                progress=progress,
                on_frame=on_frame,
                detect_every=detect_every,
                sampler=sampler,
            )
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError) and is_output_failure(error, out_dir):  # a full disk: name the folder
            raise output_error(error, out_dir) from None
        raise
    if not frames:
        shutil.rmtree(staging, ignore_errors=True)
        raise MambavaError(f"{video_path}: no frame could be read")

    # Finish the tracks: drop spurious ones, join those that follow one another, name them.
    finished, dropped, identities = finish_identified_tracks(video, rows, len(frames), sampler, min_track_frames)
    tracks = _publish_tracks(finished, staging, out_dir, frames)
    shutil.rmtree(staging, ignore_errors=True)

    result = FacesResult(
        video=video,
        source=str(video_path),
        out_dir=out_dir,
        frames=frames,
        times=times,
        tracks=tracks,
        csv_path=out_dir / f"{video}.faces.csv",
        fps=source_fps,
        dropped_tracks=dropped,
        detector=getattr(det, "name", type(det).__name__),
        landmarks68=gives_landmarks68(det),
        identities=identities,
        persons=None
        if identities is None
        else dict(zip([t.name for t in finished], assign_persons(identities, gallery))),
        rows={t.track_id: {r[0]: r for r in t.rows} for t in finished},
    )
    result.csv_path = out_dir / f"{video}.faces.csv"
    result.write_csv()
    if preview:
        result.preview_path = contact_sheet(result, out_dir / f"{video}.preview.png")
    return result


def staging_folder(out_dir: str | os.PathLike, video: str) -> Path:
    """The hidden folder where `extract_faces` stages one video's crops until they are complete."""
    return Path(out_dir) / f".{video}.faces-staging"


def _fresh_staging(out_dir: Path, video: str) -> Path:
    """An empty hidden staging folder for one video's crops (what an interrupted run left there is removed)."""
    staging = staging_folder(out_dir, video)
    try:
        make_folder(out_dir)
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
    except OSError as error:
        raise output_error(error, out_dir) from None
    return staging


def _stage_crops(
    reader: VideoReader,
    det: FaceDetector,
    staging: Path,
    description: str,
    *,
    tracker: FaceTracker | None,
    batch_size: int | None,
    crop_size: int,
    jpeg_quality: int,
    progress: bool,
    on_frame: Callable[[FrameFaces], None] | None,
    detect_every: int = 1,
    sampler: TrackSampler | None = None,
):
    """Run the tracker over the reader, writing each face's crop to staging/<track id>/<NNNNN>.jpg; returns
    (processed frame indices, their times, {track id: [(index, score, box, landmarks, landmarks68, pose)]}); each
    face offered to `sampler` (identities)."""
    frames: list[int] = []
    times: list[float] = []
    rows: dict[int, list[tuple]] = {}  # track_id → (index, score, box, landmarks, landmarks68, pose)
    with rate_progress(progress) as bar:
        task = bar.add_task(description, total=reader.n_output_frames)
        try:
            for item in iter_tracked_faces(
                reader,
                det,
                tracker=tracker,
                batch_size=batch_size,
                crop_size=crop_size,
                keep_images=on_frame is not None or sampler is not None,
                detect_every=detect_every,
            ):
                frames.append(item.index)
                times.append(item.time)
                for face in item.faces:
                    folder = staging / str(face.track_id)
                    if face.track_id not in rows:
                        folder.mkdir()
                        rows[face.track_id] = []
                    rows[face.track_id].append(
                        (item.index, face.score, face.box, face.landmarks, face.landmarks68, face.pose)
                    )
                    if sampler is not None:
                        sampler.offer(face.track_id, item.index, item.image, face)
                    _write_jpeg(folder / f"{item.index + 1:05d}.jpg", face.crop, jpeg_quality)
                if on_frame is not None:
                    on_frame(item)
                bar.advance(task)
        except KeyboardInterrupt:
            if not reader.live:
                raise
            # a camera or stream has no end: Ctrl-C ends it, and what was read is written out
    return frames, times, rows


def _publish_tracks(finished, staging: Path, out_dir: Path, frames: list[int]) -> list[TrackResult]:
    """Move each finished track's crops (those of the tracks joined into it too) from staging to
    out_dir/<track name>/, replacing an older folder of that name."""
    tracks: list[TrackResult] = []
    for track in finished:
        folder = staging / str(track.track_id)
        for member in track.members[1:]:
            for jpg in (staging / str(member)).iterdir():
                jpg.rename(folder / jpg.name)
        present = [r[0] for r in track.rows]
        present_set = set(present)
        target = out_dir / track.name
        if target.exists():
            shutil.rmtree(target)
        folder.rename(target)
        tracks.append(
            TrackResult(track.name, track.track_id, target, present, [f for f in frames if f not in present_set])
        )
    return tracks


def _fmt(value: float, digits: int = 2) -> str:
    return f"{value:.{digits}f}"


def csv_columns(result: FacesResult) -> list[str]:
    """The faces CSV's columns: `CSV_COLUMNS`, then the 68 points and head pose (`--landmarks dlib68`), then
    `person` (with persons)."""
    return (
        CSV_COLUMNS
        + (GEOMETRY_COLUMNS if result.landmarks68 else [])
        + (["person"] if result.persons is not None else [])
    )


def _write_csv(result: FacesResult, out_dir: Path) -> None:
    columns = csv_columns(result)
    with atomic_open(result.csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for index, t in zip(result.frames, result.times):
            if not result.tracks:
                writer.writerow([index, _fmt(t, 4), "", 0] + [""] * (len(columns) - 4))
                continue
            for track in result.tracks:
                row = result.rows[track.track_id].get(index)
                person = [] if result.persons is None else [result.persons.get(track.name, "")]
                if row is None:
                    writer.writerow(
                        [index, _fmt(t, 4), track.name, 0] + [""] * (len(columns) - 4 - len(person)) + person
                    )
                    continue
                _, score, box, landmarks, points68, pose = row
                lm = [""] * 10 if landmarks is None else [_fmt(v) for v in np.asarray(landmarks).reshape(-1)]
                image = track.crop_path(index).relative_to(out_dir).as_posix()
                geometry = []
                if result.landmarks68:
                    values = geometry_row(points68, pose)
                    geometry = [
                        "" if not np.isfinite(v) else _fmt(v, 2 if k < 136 else 4) for k, v in enumerate(values)
                    ]
                writer.writerow(
                    [index, _fmt(t, 4), track.name, 1, image, _fmt(score, 4)]
                    + [_fmt(v) for v in box]
                    + lm
                    + geometry
                    + person
                )


def contact_sheet(result: FacesResult, path: str | os.PathLike, per_track: int = 8) -> Path:
    """A PNG with one row per track: evenly spaced crops (frame number under each) and a strip showing
    where in the processed frames the track has a face (green) or is missing (red)."""

    path = Path(path)
    tile, caption, label_w, pad = 112, 16, 150, 6
    rows = max(len(result.tracks), 1)
    strip = 8
    row_h = tile + caption + strip + 2 * pad
    header = 24
    columns = max([min(per_track, len(t.present)) for t in result.tracks] + [1])
    width = max(label_w + columns * (tile + pad) + pad, 560)
    sheet = Image.new("RGB", (width, header + rows * row_h), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    draw.text(
        (pad, 6),
        f"{result.video}: {len(result.frames)} frames, {len(result.tracks)} track(s), detector {result.detector}",
        fill=(235, 235, 235),
    )
    if not result.tracks:
        draw.text((pad, header + pad), "no face found", fill=(235, 120, 120))
    n_frames = len(result.frames)
    for r, track in enumerate(result.tracks):
        y = header + r * row_h + pad
        draw.text((pad, y + 4), track.name, fill=(235, 235, 235))
        draw.text((pad, y + 22), f"{len(track.present)}/{n_frames} frames", fill=(180, 180, 180))
        draw.text((pad, y + 38), f"{100 * track.coverage:.1f}% present", fill=(180, 180, 180))
        chosen = [
            track.present[round(i)] for i in np.linspace(0, len(track.present) - 1, min(per_track, len(track.present)))
        ]
        for c, index in enumerate(chosen):
            x = label_w + c * (tile + pad)
            with Image.open(track.crop_path(index)) as crop:
                sheet.paste(crop.convert("RGB").resize((tile, tile)), (x, y))
            draw.text((x + 2, y + tile + 2), f"#{index + 1}", fill=(200, 200, 200))
        # presence strip over all processed frames
        x0, x1 = label_w, width - pad
        sy = y + tile + caption
        present = set(track.present)
        for k, index in enumerate(result.frames):
            a = x0 + (x1 - x0) * k / max(n_frames, 1)
            b = x0 + (x1 - x0) * (k + 1) / max(n_frames, 1)
            draw.rectangle(
                [a, sy, max(a, b - 1), sy + strip - 1], fill=(70, 170, 90) if index in present else (190, 60, 60)
            )
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG", optimize=True)
    return path
