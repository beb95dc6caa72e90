"""Crop discovery: the videos of a crop source, each with the frames that have a crop, its frame count and rate.

    videos = find_crop_videos("affwild2/")   # -> [CropVideo(name, folder, frames, n_frames, fps, ...), ...]

Used by feature extraction (`extract.py`) and by the backbone's fine-tuning and MAE pretraining
(`backbone/finetune.py`), so neither depends on the other.

- Sources: an Aff-Wild2 root (its `cropped_aligned/`, frame counts from `AffWild2.n_frames`: raw video, else
  annotation length, else highest crop), a `cropped_aligned/` folder, or any crop tree laid out the same way
  (`<root>/<name>/<NNNNN>.jpg`, 1-based frame numbers), such as `mambava faces` output, whose
  `<video>.faces.csv` gives the frame count and rate; without one, the frame count is the highest frame number.
- A video of an Aff-Wild2 split whose crop folder is missing, or a folder with two crops for one frame, is listed
  with its `error` (for the caller to report), not silently left out.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mambava.core.errors import MambavaError
from mambava.data.affwild2 import CROP_SUFFIXES, CROPS_DIR, AffWild2, crop_files, find_annotations
from mambava.media.video import open_video

DEFAULT_FPS = 30.0  # Aff-Wild2 videos are mostly 30 fps; used when no raw video gives the rate


class CropWarning(UserWarning):
    """Crops that are usable but not as expected (numbered past the video's last frame)."""


@dataclass
class CropVideo:
    """One video's crops: `frames` are the 1-based frame numbers that have a crop, within 1..n_frames."""

    name: str
    folder: Path
    frames: np.ndarray  # int64, sorted
    n_frames: int
    fps: float = DEFAULT_FPS
    files: list[str] | None = None  # file names when they are not the canonical f"{frame:05d}{suffix}"
    suffix: str = ".jpg"
    error: str | None = None  # why this video cannot be used (no crop folder, ...): reported, not skipped

    def path(self, k: int) -> Path:
        return self.folder / (self.files[k] if self.files is not None else f"{int(self.frames[k]):05d}{self.suffix}")


def scan_crop_folder(folder: Path) -> tuple[np.ndarray, list[str] | None, str]:
    """(sorted frame numbers, file names or None when all are the canonical f"{frame:05d}{suffix}", suffix) of
    the crops `<number>.jpg|.jpeg|.png` in one folder; MambavaError on two files for one frame."""
    found = crop_files(folder)
    frames = np.array([f for f, _ in found], dtype=np.int64)
    if len(frames) and len(np.unique(frames)) != len(frames):
        dup = int(frames[np.flatnonzero(np.diff(frames) == 0)[0]])
        raise MambavaError(f"{folder}: two crop files for frame {dup}")
    suffix = os.path.splitext(found[0][1])[1] if found else ".jpg"
    canonical = all(name == f"{f:05d}{suffix}" for f, name in found)
    return frames, (None if canonical else [name for _, name in found]), suffix


def faces_csv_info(root: Path) -> dict[str, tuple[int, float | None]]:
    """{crop folder name: (n_frames, fps)} from the faces stage's `<video>.faces.csv` files in `root` (one row
    per processed frame and track; `frame` 0-based): the frame count includes the frames after the last face."""
    info: dict[str, tuple[int, float | None]] = {}
    for path in sorted(root.glob("*.faces.csv")):
        frames, times, tracks = [], [], set()
        try:
            with open(path, newline="") as handle:
                for row in csv.DictReader(handle):
                    frames.append(int(row["frame"]))
                    times.append(float(row["time"]))
                    if row.get("track"):
                        tracks.add(row["track"])
        except (OSError, KeyError, ValueError) as error:
            raise MambavaError(f"{path}: unreadable faces CSV ({error})") from None
        if not frames:
            continue
        span = max(times) - min(times)
        fps = (max(frames) - min(frames)) / span if span > 0 else None
        for name in tracks or {path.name[: -len(".faces.csv")]}:
            info[name] = (max(frames) + 1, fps)
    return info


def _video_fps(path: Path | None, default: float) -> float:
    if path is None:
        return default

    with contextlib.suppress(MambavaError), open_video(path) as reader:
        if reader.fps and math.isfinite(reader.fps) and reader.fps > 0:
            return float(reader.fps)
    return default


def _source_dataset(source: Path) -> AffWild2 | None:
    """The Aff-Wild2 release a source belongs to (its root or its cropped_aligned/), None for a plain crop tree."""
    if (source / CROPS_DIR).is_dir():
        return AffWild2(source)
    if source.name == CROPS_DIR and find_annotations(source.parent) is not None:
        return AffWild2(source.parent)
    if find_annotations(source) is not None:  # an annotation tree: its sub-folders are not crop folders
        raise MambavaError(
            f"{source}: an Aff-Wild2 root without {CROPS_DIR}/: run `mambava faces` on its videos "
            f"(or pass the folder of crops)"
        )
    return None


def _crop_folders(
    source: Path, dataset: AffWild2 | None, faces_info: dict[str, tuple[int, float | None]]
) -> dict[str, Path]:
    """{video name: its crop folder (which may be missing)} of a source."""
    if dataset is not None:
        folders = {v: dataset.crops_dir(v) for v in dataset.crop_videos}
        # a video of the splits (annotated, or in the test list) whose crop folder is missing is a failure of
        # that video, not silently left out of the store
        for video in (v for split in dataset.splits.values() for v in split):
            folders.setdefault(video, dataset.crops_dir(video))
    else:
        folders = {p.name: p for p in sorted(source.iterdir()) if p.is_dir() and not p.name.startswith(".")}
        if not folders and any(p.suffix.lower() in CROP_SUFFIXES for p in source.iterdir()):
            folders = {source.name: source}  # one video's crop folder given directly
    for name in faces_info:  # a video in which the faces stage found no face at all: every frame missing
        folders.setdefault(name, source / name)
    return folders


def _crop_video(
    name: str,
    folder: Path,
    dataset: AffWild2 | None,
    faces_info: dict[str, tuple[int, float | None]],
    fps: float | None,
) -> CropVideo | None:
    """One video of a source; None (with a CropWarning) when it has neither crops nor a frame count."""
    if dataset is not None and not folder.is_dir():
        return CropVideo(name, folder, np.zeros(0, np.int64), 0, error=f"{folder}: no crop folder for video {name!r}")
    frames, files, suffix = np.zeros(0, np.int64), None, ".jpg"
    if folder.is_dir():
        try:
            frames, files, suffix = scan_crop_folder(folder)
        except MambavaError as error:
            return CropVideo(name, folder, np.zeros(0, np.int64), 0, error=str(error))
    if dataset is not None:
        countable = (
            len(frames) or dataset.video_path(name) is not None or dataset.split_of(name) in ("train", "validation")
        )
        n_frames = dataset.n_frames(name) if countable else 0
        rate = fps or _video_fps(dataset.video_path(name), DEFAULT_FPS)
    elif name in faces_info:  # the faces stage's output: its CSV knows every processed frame
        n_frames, rate = faces_info[name][0], fps or faces_info[name][1] or DEFAULT_FPS
    else:
        n_frames, rate = int(frames[-1]) if len(frames) else 0, fps or DEFAULT_FPS
    if n_frames <= 0:
        warnings.warn(f"{folder}: no crops and no frame count, skipped", CropWarning, stacklevel=3)
        return None
    inside = (frames >= 1) & (frames <= n_frames)
    if not inside.all():
        warnings.warn(
            f"{folder}: {int((~inside).sum())} crop(s) numbered outside frames 1..{n_frames} ignored",
            CropWarning,
            stacklevel=3,
        )
        files = [f for f, keep in zip(files, inside) if keep] if files is not None else None
        frames = frames[inside]
    return CropVideo(name, folder, frames, n_frames, rate, files, suffix)


def find_crop_videos(
    source: str | os.PathLike, fps: float | None = None, names: list[str] | None = None
) -> list[CropVideo]:
    """The videos of a crop source (see the module docstring), sorted by name. `fps` overrides the rate (else
    the raw video's, else 30); `names` keeps only those videos (MambavaError naming any that is absent)."""
    source = Path(source)
    if not source.is_dir():
        raise MambavaError(f"{source}: crop folder not found")
    dataset = _source_dataset(source)
    faces_info = faces_csv_info(source) if dataset is None else {}
    folders = _crop_folders(source, dataset, faces_info)
    if names is not None:
        absent = [n for n in names if n not in folders]
        if absent:
            raise MambavaError(
                f"{source}: no crop folder for {', '.join(absent[:5])}"
                + (f" (and {len(absent) - 5} more)" if len(absent) > 5 else "")
            )
        folders = {n: folders[n] for n in names}
    videos = []
    for name in sorted(folders):  # a loop, not a comprehension: the warnings' stacklevel names our caller
        video = _crop_video(name, folders[name], dataset, faces_info, fps)
        if video is not None:
            videos.append(video)
    if not videos:
        raise MambavaError(f"{source}: no crop folders (expected <name>/<NNNNN>.jpg)")
    return videos
