"""Feature extraction: face-crop folders -> CLS features in the feature store, one entry per video.

    summary = extract_features("affwild2/", "features/", FeatureExtractor(load_encoder(ckpt), device="cuda"))

- Sources: whatever `crops.find_crop_videos` reads (an Aff-Wild2 root, its `cropped_aligned/`, or any crop tree
  `<root>/<name>/<NNNNN>.jpg` such as `mambava faces` output). A frame without a crop (no face) is
  forward-filled and masked False by the store.
- Worker processes (a torch DataLoader) decode the JPEGs and resize them exactly as the reference (PIL bicubic
  to 224, uint8) while the model runs; normalisation and the ViT run in the main process under bf16 autocast
  where the hardware supports it.
- Batches never span two videos (`video_batches`): a crop's batch, and so its features to the last bit, are the
  same whichever engine runs the video (this process, or a Ray task: `mambava.distributed`).
- Resumable: a video whose entry is complete in the store is skipped; an interrupted one is redone (the store
  publishes an entry only once it is complete).
- Sharding: with torchrun (or RANK/WORLD_SIZE set), rank r extracts videos[r::world_size] (sorted names) into the
  same store; each rank writes only its own videos.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from mambava.backbone import FeatureExtractor, resize_crop
from mambava.core.errors import MambavaError, OutputError
from mambava.core.progress import rate_progress
from mambava.data.affwild2 import read_crop
from mambava.data.crops import CropVideo, find_crop_videos
from mambava.data.store import FeatureStore

log = logging.getLogger(__name__)


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


def video_batches(videos: list[CropVideo], batch_size: int) -> list[list[int]]:
    """`CropDataset(videos)` indices in batches: each video's crops in order, cut every `batch_size` from its
    first crop, so that no batch spans two videos."""
    batches, start = [], 0
    for video in videos:
        n = len(video.frames)
        batches += [list(range(start + lo, start + min(lo + batch_size, n))) for lo in range(0, n, batch_size)]
        start += n
    return batches


def crop_batches(video: CropVideo, batch_size: int, size: int) -> Iterator[tuple[np.ndarray, torch.Tensor, str]]:
    """One video's crops, decoded and resized, in the batches `extract_features` makes of them (in this process):
    (0-based rows, uint8 (B, 3, size, size), the first unreadable crop's message or "")."""
    dataset = CropDataset([video], size)
    for indices in video_batches([video], batch_size):
        _, rows, images, errors = default_collate([dataset[i] for i in indices])
        yield rows.numpy(), images, next((e for e in errors if e), "")


@dataclass
class EntrySpec:
    """What every store entry of an extraction records besides its features: the feature size, the backbone's
    name, the stored dtype and `extra` (img_size, precision, the checkpoint ...)."""

    dim: int
    backbone: str
    dtype: str
    extra: dict


def open_entry(store: FeatureStore, video: CropVideo, spec: EntrySpec, source: str | None = None):
    """The store writer of one video's entry (published when its block exits cleanly); `source` is recorded as
    the crops' folder (default: `video.folder`)."""
    return store.writer(
        video.name,
        video.n_frames,
        spec.dim,
        video.fps,
        spec.backbone,
        spec.dtype,
        extra={**spec.extra, "source": str(video.folder) if source is None else source},
    )


def write_video_features(
    store: FeatureStore, video: CropVideo, spec: EntrySpec, runs: Iterable, source: str | None = None
) -> None:
    """One video's entry from its runs of (rows, features, bad crop message or ""), in order: the one writer
    of both engines. A bad crop is a MambavaError naming it, and nothing of the video is stored. `source`: as
    `open_entry`."""
    with open_entry(store, video, spec, source) as writer:
        for rows, feats, bad in runs:
            if bad:  # (the rest of this video's crops are not read)
                raise MambavaError(f"{bad} (remove the file to treat that frame as having no face)")
            writer.put_frames(rows, feats)


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def _crop_loader(dataset: CropDataset, extractor: FeatureExtractor, workers: int | None) -> DataLoader:
    """Worker processes decode and resize the crops, in order, while the model runs on the previous batch."""
    workers = default_workers(extractor.device) if workers is None else workers
    return DataLoader(
        dataset,
        batch_sampler=video_batches(dataset.videos, extractor.batch_size),
        num_workers=workers,
        pin_memory=extractor.device.type == "cuda",
        worker_init_fn=_worker_init if workers else None,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )


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


def entry_spec(extractor: FeatureExtractor, backbone: str, dtype: str, extra: dict | None = None) -> EntrySpec:
    """The EntrySpec of an extraction by `extractor` (its img_size and resolved precision go into `extra`)."""
    return EntrySpec(
        extractor.dim,
        backbone,
        dtype,
        {"img_size": extractor.config.img_size, "precision": extractor.precision, **(extra or {})},
    )


def extract_features(
    source: str | os.PathLike | list[CropVideo],
    store: str | os.PathLike | FeatureStore,
    extractor: FeatureExtractor,
    *,
    backbone: str = "vit",
    dtype: str = "float16",
    workers: int | None = None,
    fps: float | None = None,
    names: list[str] | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    extra: dict | None = None,
    on_error: Callable[[str], None] | None = None,
) -> ExtractSummary:
    """Extract every (pending) video of `source` into `store`; returns what this rank did.

    `backbone` is recorded in each entry (with `extra`); `dtype` is the stored dtype (float16 or float32).
    A video that cannot be extracted (an unreadable crop, no crop folder) raises a MambavaError naming the file;
    with `on_error`, that one-line message is passed to it instead, the video is listed in `summary.failed`
    (nothing of it is stored) and the other videos go on. A store that cannot be written (OutputError: full
    disk, read-only) stops the whole run: it is no fault of one video.
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
    summary.skipped = [v.name for v in mine if not v.error and not overwrite and store.has(v.name)]
    for video in (v for v in mine if v.error):
        fail(video, video.error)
    pending = [v for v in mine if not v.error and v.name not in summary.skipped]
    spec = entry_spec(extractor, backbone, dtype, extra)

    for video in [v for v in pending if len(v.frames) == 0]:  # no face anywhere: all rows missing
        write_video_features(store, video, spec, [])
        summary.extracted.append(video.name)
    pending = [v for v in pending if len(v.frames)]
    if not pending:
        return summary

    dataset = CropDataset(pending, extractor.config.img_size)
    loader = _crop_loader(dataset, extractor, workers)
    start = time.perf_counter()
    with rate_progress(progress and rank == 0) as bar:
        task = bar.add_task(f"extract (rank {rank}/{world_size})" if world_size > 1 else "extract", total=len(dataset))

        def runs():
            """(video index, rows, features, bad crop) for each batch (one video's), in order."""
            for video_idx, rows, images, errors in loader:
                feats = extractor.features_from_resized(images).cpu().numpy()
                yield int(video_idx[0]), rows.numpy(), feats, next((e for e in errors if e), "")
                summary.frames += len(video_idx)
                bar.advance(task, len(video_idx))

        # a video's batches are contiguous: one writer per video, published when its block exits cleanly,
        # discarded if anything (an error, an interrupt) escapes it
        for v, group in itertools.groupby(runs(), key=lambda run: run[0]):
            bar.update(task, description=f"extract {pending[v].name}")
            try:
                write_video_features(store, pending[v], spec, (run[1:] for run in group))
            except OutputError:  # the store cannot be written (full, read-only): every next video would fail too
                raise
            except MambavaError as error:
                fail(pending[v], str(error))
                continue
            summary.extracted.append(pending[v].name)
    summary.seconds = time.perf_counter() - start
    return summary
