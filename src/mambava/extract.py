"""Feature extraction: face-crop folders -> CLS features in the feature store, one entry per video.

    summary = extract_features("affwild2/", "features/", FeatureExtractor(load_encoder(ckpt), device="cuda"))

- Sources: an Aff-Wild2 root (its `cropped_aligned/`, frame counts from `AffWild2.n_frames`: raw video, else
  annotation length, else highest crop), a `cropped_aligned/` folder, or any crop tree laid out the same way
  (`<root>/<name>/<NNNNN>.jpg`, 1-based frame numbers), such as `mambava faces` output, whose
  `<video>.faces.csv` gives the frame count and rate; without one, the frame count is the highest frame number.
  A frame without a crop (no face) is forward-filled and masked False by the store.
- Worker processes (a torch DataLoader) decode the JPEGs and resize them exactly as the reference (PIL bicubic
  to 224, uint8) while the model runs; normalisation and the ViT run in the main process under bf16 autocast
  where the hardware supports it.
- Resumable: a video whose entry is complete in the store is skipped; an interrupted one is redone (the store
  publishes an entry only once it is complete).
- Sharding: with torchrun (or RANK/WORLD_SIZE set), rank r extracts videos[r::world_size] (sorted names) into the
  same store; each rank writes only its own videos.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mambava.affwild2 import CROP_SUFFIXES, CROPS_DIR, AffWild2, find_annotations, read_crop
from mambava.backbone import FeatureExtractor, resize_crop
from mambava.errors import MambavaError
from mambava.features import FeatureStore

log = logging.getLogger(__name__)

DEFAULT_FPS = 30.0  # Aff-Wild2 videos are mostly 30 fps; used when no raw video gives the rate


class ExtractWarning(UserWarning):
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
    error: str | None = None  # why this video cannot be extracted (no crop folder, ...): reported, not skipped

    def path(self, k: int) -> Path:
        return self.folder / (self.files[k] if self.files is not None else f"{int(self.frames[k]):05d}{self.suffix}")


def scan_crop_folder(folder: Path) -> tuple[np.ndarray, list[str] | None, str]:
    """(sorted frame numbers, file names or None when all are the canonical f"{frame:05d}{suffix}", suffix) of
    the crops `<number>.jpg|.jpeg|.png` in one folder; MambavaError on two files for one frame."""
    found: list[tuple[int, str]] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, suffix = os.path.splitext(entry.name)
            if suffix.lower() in CROP_SUFFIXES and stem.isdigit():
                found.append((int(stem), entry.name))
    found.sort()
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
    import csv

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
    from mambava.video import open_video

    with contextlib.suppress(MambavaError), open_video(path) as reader:
        if reader.fps and math.isfinite(reader.fps) and reader.fps > 0:
            return float(reader.fps)
    return default


def find_crop_videos(source: str | os.PathLike, fps: float | None = None,
                     names: list[str] | None = None) -> list[CropVideo]:
    """The videos of a crop source (see the module docstring), sorted by name. `fps` overrides the rate (else
    the raw video's, else 30); `names` keeps only those videos (MambavaError naming any that is absent)."""
    source = Path(source)
    if not source.is_dir():
        raise MambavaError(f"{source}: crop folder not found")
    dataset = None
    if (source / CROPS_DIR).is_dir():
        dataset = AffWild2(source)
    elif source.name == CROPS_DIR and find_annotations(source.parent) is not None:
        dataset = AffWild2(source.parent)
    elif (source / "VA_Estimation_Challenge").is_dir():  # its sub-folders are not crop folders
        raise MambavaError(f"{source}: an Aff-Wild2 root without {CROPS_DIR}/: run `mambava faces` on its videos "
                           f"(or pass the folder of crops)")
    folders: dict[str, Path] = {}
    faces_info: dict[str, tuple[int, float | None]] = {}
    if dataset is not None:
        folders = {v: dataset.crops_dir(v) for v in dataset.crop_videos}
        # a video of the splits (annotated, or in the test list) whose crop folder is missing is a failure of
        # that video, not silently left out of the store
        for video in (v for split in dataset.splits.values() for v in split):
            folders.setdefault(video, dataset.crops_dir(video))
    else:
        faces_info = faces_csv_info(source)
        folders = {p.name: p for p in sorted(source.iterdir()) if p.is_dir() and not p.name.startswith(".")}
        if not folders and any(p.suffix.lower() in CROP_SUFFIXES for p in source.iterdir()):
            folders = {source.name: source}  # one video's crop folder given directly
    for name in faces_info:  # a video in which the faces stage found no face at all: every frame missing
        folders.setdefault(name, source / name)
    if names is not None:
        absent = [n for n in names if n not in folders]
        if absent:
            raise MambavaError(f"{source}: no crop folder for {', '.join(absent[:5])}"
                               + (f" (and {len(absent) - 5} more)" if len(absent) > 5 else ""))
        folders = {n: folders[n] for n in names}
    videos = []
    for name in sorted(folders):
        if dataset is not None and not folders[name].is_dir():
            videos.append(CropVideo(name, folders[name], np.zeros(0, np.int64), 0,
                                    error=f"{folders[name]}: no crop folder for video {name!r}"))
            continue
        if folders[name].is_dir():
            try:
                frames, files, suffix = scan_crop_folder(folders[name])
            except MambavaError as error:
                videos.append(CropVideo(name, folders[name], np.zeros(0, np.int64), 0, error=str(error)))
                continue
        else:
            frames, files, suffix = np.zeros(0, np.int64), None, ".jpg"
        if dataset is not None:
            countable = len(frames) or dataset.video_path(name) is not None \
                or dataset.split_of(name) in ("train", "validation")
            n_frames = dataset.n_frames(name) if countable else 0
            rate = fps or _video_fps(dataset.video_path(name), DEFAULT_FPS)
        elif name in faces_info:  # the faces stage's output: its CSV knows every processed frame
            n_frames, rate = faces_info[name][0], fps or faces_info[name][1] or DEFAULT_FPS
        else:
            n_frames, rate = int(frames[-1]) if len(frames) else 0, fps or DEFAULT_FPS
        if n_frames <= 0:
            warnings.warn(f"{folders[name]}: no crops and no frame count, skipped", ExtractWarning, stacklevel=2)
            continue
        inside = (frames >= 1) & (frames <= n_frames)
        if not inside.all():
            warnings.warn(f"{folders[name]}: {int((~inside).sum())} crop(s) numbered outside frames 1..{n_frames} "
                          f"ignored", ExtractWarning, stacklevel=2)
            files = [f for f, keep in zip(files, inside) if keep] if files is not None else None
            frames = frames[inside]
        videos.append(CropVideo(name, folders[name], frames, n_frames, rate, files, suffix))
    if not videos:
        raise MambavaError(f"{source}: no crop folders (expected <name>/<NNNNN>.jpg)")
    return videos


class CropDataset(Dataset):
    """Every crop of a list of videos, in order: item -> (video index, 0-based row, uint8 (3, S, S), error)."""

    def __init__(self, videos: list[CropVideo], size: int = 224):
        self.videos = videos
        self.size = size
        self.offsets = np.cumsum([0] + [len(v.frames) for v in videos])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int):
        v = int(np.searchsorted(self.offsets, index, side="right") - 1)
        video = self.videos[v]
        k = index - int(self.offsets[v])
        try:
            image = resize_crop(read_crop(video.path(k)), self.size)
            error = ""
        except MambavaError as exc:  # reported by the main process as one line naming the file
            image, error = np.zeros((self.size, self.size, 3), np.uint8), str(exc)
        return v, int(video.frames[k]) - 1, torch.from_numpy(image).permute(2, 0, 1), error


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world size): given values, else torch.distributed's, else RANK/WORLD_SIZE (torchrun), else (0, 1)."""
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
        else:
            rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world_size < 1 or not 0 <= rank < world_size:
        raise MambavaError(f"invalid shard: rank {rank} of world size {world_size}")
    return rank, world_size


def default_workers(device: torch.device) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type == "cuda":
        return max(1, min(8, cores - 1))
    return max(1, min(4, cores // 4))  # on CPU the model needs the cores; decoding is ~1% of its time


@dataclass
class ExtractSummary:
    rank: int
    world_size: int
    videos: list[str] = field(default_factory=list)  # this rank's share
    extracted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already complete in the store
    failed: list[str] = field(default_factory=list)  # not extracted: a bad crop, no crop folder (see on_error)
    frames: int = 0  # crops run through the model
    seconds: float = 0.0

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task):
            return Text(f"{task.speed:6.1f} frames/s" if task.speed else "   ... frames/s")

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), Rate(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True),
                    disable=not enabled, transient=False)


def extract_features(source: str | os.PathLike | list[CropVideo], store: str | os.PathLike | FeatureStore,
                     extractor: FeatureExtractor, *, backbone: str = "vit", dtype: str = "float16",
                     workers: int | None = None, fps: float | None = None, names: list[str] | None = None,
                     rank: int | None = None, world_size: int | None = None, overwrite: bool = False,
                     progress: bool = True, extra: dict | None = None,
                     on_error: Callable[[str], None] | None = None) -> ExtractSummary:
    """Extract every (pending) video of `source` into `store`; returns what this rank did.

    `backbone` is recorded in each entry (with `extra`); `dtype` is the stored dtype (float16 or float32).
    A video that cannot be extracted (an unreadable crop, no crop folder) raises a MambavaError naming the file;
    with `on_error`, that one-line message is passed to it instead, the video is listed in `summary.failed`
    (nothing of it is stored) and the other videos go on.
    """

    def fail(video: CropVideo, message: str) -> None:
        if on_error is None:
            raise MambavaError(message)
        summary.failed.append(video.name)
        on_error(message)

    store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    videos = source if isinstance(source, list) else find_crop_videos(source, fps=fps, names=names)
    rank, world_size = resolve_rank(rank, world_size)
    mine = videos[rank::world_size]
    summary = ExtractSummary(rank, world_size, videos=[v.name for v in mine])
    pending = []
    for video in mine:
        if video.error:
            fail(video, video.error)
        elif not overwrite and store.has(video.name):
            summary.skipped.append(video.name)
        else:
            pending.append(video)
    entry_extra = {"img_size": extractor.config.img_size, "precision": extractor.precision, **(extra or {})}

    def open_writer(video: CropVideo):
        return store.writer(video.name, video.n_frames, extractor.dim, video.fps, backbone, dtype,
                            extra={**entry_extra, "source": str(video.folder)})

    for video in [v for v in pending if len(v.frames) == 0]:  # no face anywhere: all rows missing
        with open_writer(video):
            pass
        summary.extracted.append(video.name)
    pending = [v for v in pending if len(v.frames)]
    if not pending:
        return summary

    dataset = CropDataset(pending, extractor.config.img_size)
    workers = default_workers(extractor.device) if workers is None else workers
    loader = DataLoader(dataset, batch_size=extractor.batch_size, shuffle=False, num_workers=workers,
                        pin_memory=extractor.device.type == "cuda", worker_init_fn=_worker_init if workers else None,
                        prefetch_factor=4 if workers else None, persistent_workers=False)
    start = time.perf_counter()
    with _progress(progress and rank == 0) as bar:
        task = bar.add_task(f"extract (rank {rank}/{world_size})" if world_size > 1 else "extract",
                            total=len(dataset))

        def runs():
            """(video index, rows, features) for each run of one video's frames within a batch, in order."""
            for video_idx, rows, images, errors in loader:
                feats = extractor.features_from_resized(images).cpu().numpy()
                video_idx, rows = video_idx.numpy(), rows.numpy()
                cuts = np.flatnonzero(np.diff(video_idx)) + 1
                for lo, hi in zip(np.r_[0, cuts], np.r_[cuts, len(video_idx)]):
                    bad = next((e for e in errors[lo:hi] if e), None)
                    yield int(video_idx[lo]), rows[lo:hi], feats[lo:hi], bad
                summary.frames += len(video_idx)
                bar.advance(task, len(video_idx))

        # a video's frames are contiguous: one writer per video, published when its block exits cleanly,
        # discarded if anything (an error, an interrupt) escapes it
        for v, group in itertools.groupby(runs(), key=lambda run: run[0]):
            bar.update(task, description=f"extract {pending[v].name}")
            try:
                with open_writer(pending[v]) as writer:
                    for _, rows, feats, bad in group:
                        if bad:  # the rest of this video's crops are passed over by groupby
                            raise MambavaError(f"{bad} (remove the file to treat that frame as having no face)")
                        writer.put_frames(rows, feats)
            except MambavaError as error:
                fail(pending[v], str(error))
                continue
            summary.extracted.append(pending[v].name)
    summary.seconds = time.perf_counter() - start
    return summary
