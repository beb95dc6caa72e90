"""Crops for training from a dataset's raw videos, made by the same faces stage `predict` runs.

    result = extract_dataset_faces("affwild2/", "affwild2_own/")   # -> affwild2_own/cropped_aligned/...

A model trained on the dataset's own crops (Aff-Wild2's `cropped_aligned/`, or the generator's ideal ones) and
run on raw video through `predict` sees crops from another detector and aligner at test time. This writes a
dataset's crops with ours instead, in the Aff-Wild2 layout, so that training and prediction see the same faces:

    OUT/cropped_aligned/<v>/<NNNNN>.jpg            one person: 1-based frame numbers, JPEG; frames without a
    OUT/cropped_aligned/<v>_left/, <v>_right/      face have no file; two people: by mean horizontal position
    OUT/cropped_aligned/<v>.faces.csv              the faces stage's per-frame CSV (written last: a video whose
                                                   CSV is there is complete and skipped when the run is resumed)
    OUT/cropped_aligned/.mambava-faces.json        what made the crops (detector, source root)
    OUT/<every other entry of ROOT>                 a symbolic link to ROOT's (annotations, test list, videos/),
                                                   so OUT is a complete dataset root for `data check`, `extract`
                                                   and training

Every frame of every raw video under ROOT/videos/ (or raw_videos/, any sub-folders) is processed. Each track
folder is filled under a hidden name and renamed into place when complete (`extract_faces`); a video that
fails is reported and the others go on.

`alignment_error` measures how far crops are from ideal given true landmarks (`mambava.synth.truth_faces` applies
it to a synthetic dataset, whose generator keeps every face's true landmarks).
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from mambava.core.errors import MambavaError
from mambava.core.fileio import atomic_open, make_folder
from mambava.data.affwild2 import CROPS_DIR, AffWild2, base_video
from mambava.faces.align import ARCFACE_TEMPLATE_112, alignment_matrix, transform_points
from mambava.faces.detect import get_detector
from mambava.faces.pipeline import extract_faces

MARKER = ".mambava-faces.json"
CSV_SUFFIX = ".faces.csv"


@dataclass
class VideoFaces:
    """One raw video of a dataset run: `tracks` {folder name: crops}; `skipped` when an earlier run finished it;
    `error` when it failed; `unmatched` names the dataset's annotation/test names of this video that got no
    track (their folders are left empty), and `extra` our track folders that are no such name."""

    video: str
    frames: int = 0
    tracks: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    skipped: bool = False
    error: str | None = None
    unmatched: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)


@dataclass
class DatasetFacesResult:
    root: Path
    out: Path
    crops_dir: Path
    videos: list[VideoFaces]
    linked: list[str]  # entries of ROOT linked into OUT

    @property
    def failed(self) -> list[VideoFaces]:
        return [v for v in self.videos if v.error is not None]

    @property
    def frames_per_second(self) -> float:
        done = [v for v in self.videos if not v.skipped and v.error is None]
        seconds = sum(v.seconds for v in done)
        return sum(v.frames for v in done) / seconds if seconds > 0 else 0.0


def faces_of_video(
    video: str,
    path: str | os.PathLike,
    crops_dir: str | os.PathLike,
    detector: str | object = "mtcnn",
    detector_kwargs: dict | None = None,
    min_track_frames: int = 3,
    detect_every: int = 1,
    threads: int = 0,
) -> VideoFaces:
    """One raw video of a dataset run into `crops_dir` (`extract_faces` under the name `video`): the unit of work
    of every engine (this process, worker processes, a Ray task), so that each writes the same files.

    `detector`: a registered name (built here with `detector_kwargs`) or a detector object. `threads`: torch's
    intra-op threads for this video (0: as they are). A MambavaError (an unreadable video) is returned in
    `error`, not raised: the other videos go on."""
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        det = detector if not isinstance(detector, str) else get_detector(detector, **(detector_kwargs or {}))
        result = extract_faces(
            path, crops_dir, name=video, detector=det, min_track_frames=min_track_frames, detect_every=detect_every
        )
    except MambavaError as error:
        return VideoFaces(video, error=str(error), seconds=time.perf_counter() - start)
    return VideoFaces(
        video,
        frames=len(result.frames),
        tracks={t.name: len(t.present) for t in result.tracks},
        seconds=time.perf_counter() - start,
    )


def _video_job(args: tuple) -> VideoFaces:
    """`faces_of_video` in a worker process (a picklable one-argument call), or inline."""
    video, path, crops_dir, detector, detector_kwargs, min_track_frames, threads, detect_every = args
    return faces_of_video(video, path, crops_dir, detector, detector_kwargs, min_track_frames, detect_every, threads)


@dataclass
class DatasetFacesPlan:
    """What a dataset run will do, decided before any video is processed (`plan_dataset_faces`): the raw videos,
    the claimed crops folder, the videos already done (`done`, skipped) and those to do (`todo`, in name order).
    `detector` is the built detector (checked once here); the engines pass `detector_name` to their workers."""

    root: Path
    out: Path
    dataset: AffWild2
    raw: dict[str, Path]
    crops_dir: Path
    linked: list[str]
    detector: object
    detector_name: str | object
    detector_kwargs: dict
    min_track_frames: int
    detect_every: int
    done: dict[str, VideoFaces]
    todo: list[str]


def plan_dataset_faces(
    root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    detector: str | object = "mtcnn",
    detector_kwargs: dict | None = None,
    min_track_frames: int = 3,
    videos: list[str] | None = None,
    link: bool = True,
    detect_every: int = 1,
) -> DatasetFacesPlan:
    """The first step of `extract_dataset_faces` (its arguments): find the raw videos, build the detector (a
    bad name, option or refiner file is one error here, not one per video), claim OUT/cropped_aligned/, link
    ROOT's other entries, and sort the videos into done (their CSV is there) and to do."""
    root = Path(root)
    out = Path(out) if out is not None else root
    dataset = AffWild2(root)
    raw = _raw_videos(dataset, root, videos)
    built = get_detector(detector, **(detector_kwargs or {})) if isinstance(detector, str) else detector
    crops_dir = _claim_crops_dir(out / CROPS_DIR, root, built, detector_kwargs, min_track_frames, detect_every)
    linked = _link_root(root, out) if link and out.resolve() != root.resolve() else []
    done = {v: VideoFaces(v, skipped=True) for v in sorted(raw) if (crops_dir / f"{v}{CSV_SUFFIX}").exists()}
    todo = [v for v in sorted(raw) if v not in done]
    return DatasetFacesPlan(
        root,
        out,
        dataset,
        raw,
        crops_dir,
        linked,
        built,
        detector,
        dict(detector_kwargs or {}),
        min_track_frames,
        detect_every,
        done,
        todo,
    )


def finish_dataset_faces(plan: DatasetFacesPlan, results: dict[str, VideoFaces]) -> DatasetFacesResult:
    """The last step of `extract_dataset_faces`: every video's result (those done earlier included) matched
    against the dataset's annotation names (`unmatched` get an empty folder)."""
    results = {**plan.done, **results}
    _match_tracks(results, plan.dataset, plan.crops_dir)
    return DatasetFacesResult(plan.root, plan.out, plan.crops_dir, [results[v] for v in sorted(results)], plan.linked)


def extract_dataset_faces(
    root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    detector: str | object = "mtcnn",
    detector_kwargs: dict | None = None,
    min_track_frames: int = 3,
    workers: int = 1,
    videos: list[str] | None = None,
    link: bool = True,
    progress: Callable[[int, int, VideoFaces], None] | None = None,
    detect_every: int = 1,
) -> DatasetFacesResult:
    """Detect, track and align the faces of every raw video of the dataset at `root` and write them to
    `out`/cropped_aligned/ in the Aff-Wild2 layout (see the module docstring); `out` defaults to `root`.

    A video whose `<v>.faces.csv` is already there is skipped (resume). `out`'s cropped_aligned/, when it
    exists, must have been written by this function (its marker file), never the dataset's own crops.
    `detector`: a registered name (built in each worker with `detector_kwargs`) or, with workers=1, a detector
    object. `workers` > 1 runs that many processes, one video each, one torch thread each. `videos` keeps
    those raw videos only. `link` makes OUT a complete dataset root (links to ROOT's other entries).
    `detect_every`: as `iter_tracked_faces`, so that training crops can be made as `predict --detect-every`
    makes them (1: every frame).
    `progress(done, total, video_result)` is called after each video. The same run on a Ray cluster:
    `mambava.distributed.faces_dataset_ray`."""
    plan = plan_dataset_faces(
        root,
        out,
        detector=detector,
        detector_kwargs=detector_kwargs,
        min_track_frames=min_track_frames,
        videos=videos,
        link=link,
        detect_every=detect_every,
    )
    results: dict[str, VideoFaces] = {}
    if progress is not None:
        for video in plan.done:
            progress(len(plan.done), len(plan.raw), plan.done[video])
    threads = 1 if workers > 1 else 0
    inline = workers <= 1 or len(plan.todo) <= 1  # (worker processes build their own from the name)
    jobs = {
        v: (
            v,
            plan.raw[v],
            plan.crops_dir,
            plan.detector if inline else detector,
            plan.detector_kwargs,
            min_track_frames,
            threads,
            detect_every,
        )
        for v in plan.todo
    }
    for item in _run_jobs(jobs, plan.raw, workers, detector):
        results[item.video] = item
        if progress is not None:
            progress(len(plan.done) + len(results), len(plan.raw), item)
    return finish_dataset_faces(plan, results)


def _raw_videos(dataset: AffWild2, root: Path, videos: list[str] | None) -> dict[str, Path]:
    raw = dataset.raw_videos
    if not raw:
        raise MambavaError(f"{root}: no raw videos (looked in videos/ and raw_videos/, any sub-folders)")
    if videos is not None:
        absent = [v for v in videos if v not in raw]
        if absent:
            raise MambavaError(f"{root}: no raw video {absent[0]!r}")
        raw = {v: raw[v] for v in videos}
    return raw


def _claim_crops_dir(
    crops_dir: Path, root: Path, detector, detector_kwargs: dict | None, min_track_frames: int, detect_every: int = 1
) -> Path:
    """`crops_dir`, made and marked as ours (`detector`: the built detector); an error when it holds crops
    this function did not write, or crops made with other settings."""
    marker = crops_dir / MARKER
    if crops_dir.is_dir() and not marker.exists() and any(crops_dir.iterdir()):
        raise MambavaError(
            f"{crops_dir}: holds crops not made by `mambava faces --dataset` (the dataset's own?): choose another --out"
        )
    make_folder(crops_dir)
    settings = {
        "source": str(root.resolve()),
        "detector": getattr(detector, "name", type(detector).__name__),
        "detector_kwargs": detector_kwargs or {},
        "min_track_frames": min_track_frames,
        "detect_every": detect_every,
    }
    if getattr(detector, "refiner_sha256", None):  # the refiner's weights: a file retrained in place differs
        settings["landmarks_sha256"] = detector.refiner_sha256
    if getattr(detector, "landmark_source", None):  # a registered landmark source (`--landmarks dlib68`)
        settings["landmark_source"] = detector.landmark_source
    started = any(crops_dir.glob(f"*{CSV_SUFFIX}"))
    if marker.exists() and started:  # resuming: the videos still to do must be cropped as the ones there were
        earlier = json.loads(marker.read_text())
        earlier.setdefault("detect_every", 1)
        differ = [
            k
            for k in (
                "detector",
                "detector_kwargs",
                "landmarks_sha256",
                "landmark_source",
                "min_track_frames",
                "detect_every",
            )
            if _crop_setting(earlier.get(k)) != _crop_setting(settings.get(k))
        ]
        if differ:
            raise MambavaError(
                f"{crops_dir}: its crops were made with other settings ("
                + "; ".join(f"{k}: {earlier.get(k)} there, {settings[k]} now" for k in differ)
                + "): run with the same ones, or choose another --out"
            )
    else:
        with atomic_open(marker, "w") as handle:
            json.dump(settings, handle)
    return crops_dir


def training_crops_settings(run_config: dict | None) -> dict | None:
    """What made a training run's crops (the marker `faces --dataset` wrote in its `data.annotations` root's
    cropped_aligned/), or None: another source of crops, or not on this machine."""
    data = (run_config or {}).get("data") or {}
    root = data.get("annotations") if isinstance(data, dict) else None
    if not root:
        return None
    for folder in (Path(root), Path(root).parent):  # the dataset root, or its annotation folder
        marker = folder / CROPS_DIR / MARKER
        try:
            if marker.is_file():
                return json.loads(marker.read_text())
        except (OSError, ValueError):
            return None
    return None


def face_stage_differences(made: dict, detector, detect_every: int) -> list[str]:
    """Where a faces stage (`detector`, `detect_every`) differs from the one whose marker is `made`, one line
    each: another detector, a landmark refiner on one side only or another one, another --detect-every."""
    notes = []
    name = getattr(detector, "name", detector)
    if made.get("detector") != name:
        notes.append(
            f"the model's training crops were made by the {made.get('detector')} detector, predict uses {name}"
        )
    theirs, ours = made.get("landmarks_sha256"), getattr(detector, "refiner_sha256", None)
    where = (made.get("detector_kwargs") or {}).get("landmarks", theirs)
    if theirs and ours is None:
        notes.append(
            f"the model's training crops were made with the landmark refiner {where}: pass --landmarks "
            "with it, or its faces are aligned differently from what it learned"
        )
    elif not theirs and ours is not None:
        notes.append("the model's training crops were made without a landmark refiner; predict uses one")
    elif theirs != ours:
        notes.append(f"the model's training crops were made with another landmark refiner ({where})")
    theirs, ours = made.get("landmark_source"), getattr(detector, "landmark_source", None)
    if theirs != ours:
        notes.append(
            f"the model's training crops were aligned on {_points_of(theirs)}, predict aligns on {_points_of(ours)}"
            + (" (pass --landmarks none)" if theirs is None else f" (pass --landmarks {theirs})")
        )
    if int(made.get("detect_every", 1)) != int(detect_every):
        notes.append(
            f"the model's training crops were made with --detect-every {made.get('detect_every', 1)}, "
            f"predict uses {detect_every}"
        )
    return notes


def _points_of(source: str | None) -> str:
    return "the detector's own points" if source is None else f"{source}'s points"


def _crop_setting(value):
    """A setting as it affects the crops (torch threads do not; JSON turns tuples into lists)."""
    if isinstance(value, dict):
        return {k: _crop_setting(v) for k, v in value.items() if k != "num_threads"}
    return list(value) if isinstance(value, tuple) else value


def _run_jobs(jobs: dict, raw: dict[str, Path], workers: int, detector):
    """Each job's VideoFaces as it finishes: in this process, or in `workers` spawned processes."""
    if workers > 1 and len(jobs) > 1:
        if not isinstance(detector, str):
            raise MambavaError("extract_dataset_faces: workers > 1 needs a detector name, not an object")

        # spawned, not forked: safe beside torch's threads in the parent
        with ProcessPoolExecutor(
            max_workers=min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")
        ) as pool:
            # longest first keeps the workers busy to the end
            order = sorted(jobs, key=lambda v: -os.path.getsize(raw[v]))
            futures = [pool.submit(_video_job, jobs[v]) for v in order]
            for future in as_completed(futures):
                yield future.result()
    else:
        for video in jobs:
            yield _video_job(jobs[video])


def _match_tracks(results: dict[str, VideoFaces], dataset: AffWild2, crops_dir: Path) -> None:
    """Each video's tracks against the dataset's annotation names (`<v>`, `<v>_left`, ...): which are missing,
    which are extra."""
    names_of: dict[str, list[str]] = {}
    for name in dataset.videos:
        names_of.setdefault(base_video(name), []).append(name)
    for video, item in results.items():
        if item.error is not None:
            continue
        tracks = set(item.tracks) if not item.skipped else set(_tracks_in_csv(crops_dir / f"{video}{CSV_SUFFIX}"))
        if item.skipped:
            item.tracks = {t: 0 for t in sorted(tracks)}
        expected = set(names_of.get(video, []))
        if expected:
            item.unmatched = sorted(expected - tracks)
            item.extra = sorted(tracks - expected)
            for name in item.unmatched:
                # an empty folder: our faces stage found no face of this person, so training and extraction see
                # every frame of it as a frame without a face (as `predict` would) rather than a dataset error
                (crops_dir / name).mkdir(exist_ok=True)


def _tracks_in_csv(path: Path) -> list[str]:
    with open(path, newline="") as handle:
        return sorted({row["track"] for row in csv.DictReader(handle) if row.get("track")})


def _link_root(root: Path, out: Path) -> list[str]:
    """Link every entry of `root` but its crops (and hidden ones) into `out`, where `out` has none by that
    name: OUT becomes a dataset root with ROOT's annotations, test list and videos."""
    linked = []
    for entry in sorted(root.iterdir()):
        if entry.name == CROPS_DIR or entry.name.startswith("."):
            continue
        target = out / entry.name
        if target.exists() or target.is_symlink():
            continue
        try:
            target.symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
        except OSError as error:
            raise MambavaError(f"{target}: cannot link to {entry} ({error}); use --out {root} or copy it") from None
        linked.append(entry.name)
    return linked


# ---------------------------------------------------------------------------------------------------------
# How good are our crops? (synthetic data, whose true landmarks are known)

EYE_DISTANCE_112 = float(np.linalg.norm(ARCFACE_TEMPLATE_112[1] - ARCFACE_TEMPLATE_112[0]))  # 35.24 px


def alignment_offsets(landmarks: np.ndarray, true_landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """(N, 5, 2): where a face's true 5 landmarks land in the size×size crop aligned with `landmarks` (N, 5, 2,
    frame pixels) minus where they land in the ideal crop (aligned with the true landmarks themselves), in crop
    pixels. Not the distance to the template: a face whose shape or expression differs from it leaves a
    residual that no aligner can remove."""
    offsets = np.empty((len(landmarks), 5, 2))
    for i, (found, true) in enumerate(zip(landmarks, true_landmarks)):
        offsets[i] = transform_points(alignment_matrix(found, size), true) - transform_points(
            alignment_matrix(true, size), true
        )
    return offsets


def alignment_error(landmarks: np.ndarray, true_landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """(N, 5) lengths of `alignment_offsets`: 0 for a perfect crop."""
    return np.linalg.norm(alignment_offsets(landmarks, true_landmarks, size), axis=2)


def alignment_summary(offsets: np.ndarray) -> dict:
    errors = np.linalg.norm(offsets, axis=2)
    per_face = errors.mean(1) if len(errors) else errors
    return {
        "faces": int(len(errors)),
        "mean_px": float(per_face.mean()) if len(errors) else None,
        "median_px": float(np.median(per_face)) if len(errors) else None,
        "p95_px": float(np.percentile(per_face, 95)) if len(errors) else None,
        "mean_eye_pct": float(100 * per_face.mean() / EYE_DISTANCE_112) if len(errors) else None,
        "median_eye_pct": float(100 * np.median(per_face) / EYE_DISTANCE_112) if len(errors) else None,
        "per_point_px": [round(float(x), 3) for x in errors.mean(0)] if len(errors) else None,
        # the part common to all faces (x, y): a shift that training on the same crops absorbs
        "mean_offset_px": [round(float(x), 3) for x in offsets.mean((0, 1))] if len(errors) else None,
    }
