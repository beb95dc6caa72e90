"""`mambava extract --audio`: per-frame audio features of a dataset's (or a folder's) videos into a feature
store, resumable and atomic. See `mambava.audio`."""

from __future__ import annotations

import multiprocessing
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from mambava.audio.features import DEFAULT_FEATURE_SETS, SpeechModel, check_sets, frame_features
from mambava.core.errors import MambavaError, OutputError
from mambava.data.affwild2 import VIDEO_DIRS, AffWild2, base_video
from mambava.data.store import FeatureStore
from mambava.media.audio import SAMPLE_RATE, AudioWarning
from mambava.media.video import VIDEO_SUFFIXES


@dataclass
class AudioSource:
    """A store entry and the video whose sound it takes (`<v>_left`/`<v>_right` share `<v>`'s file)."""

    name: str
    path: Path
    n_frames: int | None = None  # the frame count the visual features use; None: the video's packets


def find_audio_sources(source: str | os.PathLike, names: Sequence[str] | None = None) -> list[AudioSource]:
    """The entries to extract from `source`: an Aff-Wild2 root (its videos/ or raw_videos/: one entry per raw
    video, plus each `<v>_left`/`<v>_right` of its annotations, test list or crop folders whose `<v>` is there;
    frame counts as the dataset counts them), a folder of videos (any sub-folders) or one video file."""

    source = Path(source)
    if source.is_file():
        found = [AudioSource(source.stem, source)]
    elif not source.is_dir():
        raise MambavaError(f"{source}: no such file or folder")
    elif any((source / d).is_dir() for d in VIDEO_DIRS):
        dataset = AffWild2(source)
        raw = dataset.raw_videos
        wanted = set(raw) | {v for v in [*dataset.videos, *dataset.crop_videos] if base_video(v) in raw}
        found = [AudioSource(v, dataset.video_path(v)) for v in sorted(wanted)]
        counts: dict[str, int | None] = {}
        for entry in found:  # `<v>_left`/`<v>_right` take `<v>`'s frame count, as the visual features do
            base = entry.name if entry.name in raw else base_video(entry.name)
            if base not in counts:
                try:
                    counts[base] = dataset.n_frames(base)
                except MambavaError:
                    counts[base] = None  # the packets' count; an unreadable video is reported when extracted
            entry.n_frames = counts[base]
    else:
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        found = [AudioSource(p.stem, p) for p in files]
        seen: dict[str, Path] = {}
        for entry in found:
            if entry.name in seen:
                raise MambavaError(f"{entry.path}: two videos named {entry.name!r} (also {seen[entry.name]})")
            seen[entry.name] = entry.path
    if not found:
        raise MambavaError(f"{source}: no videos found (looked for videos/ or raw_videos/, or video files)")
    if names:
        known = {s.name: s for s in found}
        missing = [n for n in names if n not in known]
        if missing:
            raise MambavaError(f"{source}: no video {missing[0]!r} ({len(missing)} of the names asked for)")
        found = [known[n] for n in names]
    return found


@dataclass
class AudioExtractSummary:
    entries: list[str] = field(default_factory=list)
    extracted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already complete in the store
    failed: list[str] = field(default_factory=list)
    without_sound: list[str] = field(default_factory=list)  # extracted, every frame masked
    videos: int = 0  # files decoded (`<v>_left`/`<v>_right` share one)
    frames: int = 0
    seconds_of_video: float = 0.0
    seconds: float = 0.0

    @property
    def realtime_factor(self) -> float:
        """Seconds of video processed per second of wall time."""
        return self.seconds_of_video / self.seconds if self.seconds > 0 else 0.0


def audio_of_video(path: Path, n_frames: int | None, sets: list[str], speech_model: SpeechModel | None = None):
    """One video's features for extraction, the unit of work of every engine (this process, a worker process,
    a Ray task): (AudioFeatures or None, its AudioWarning lines, the MambavaError line or None)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AudioWarning)
        try:
            result, error = frame_features(path, sets, speech_model=speech_model, n_frames=n_frames), None
        except OutputError:
            raise
        except MambavaError as exc:
            result, error = None, str(exc)
    for w in caught:
        if not issubclass(w.category, AudioWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result, [str(w.message) for w in caught if issubclass(w.category, AudioWarning)], error


def audio_backbone(sets: Sequence[str], speech_model: SpeechModel | None) -> str:
    """The `backbone` an audio store entry records: "audio:" and the sets (ssl as the speech model's name)."""
    return "audio:" + "+".join(speech_model.name if s == "ssl" else s for s in sets)


def write_audio_entries(
    store: FeatureStore, entries: Sequence[AudioSource], path: Path | str, result, backbone: str, dtype: str
) -> list[str]:
    """Store one video's features (`audio_of_video`'s result) under each of its entries (`<v>_left`/`<v>_right`
    share `<v>`'s sound); `path` is recorded as their source. Returns the entries without any sound. An
    OutputError (full disk, read-only store) is raised: it stops the run."""
    extra = {
        "columns": result.columns,
        "sets": result.sets,
        "source": str(path),
        "codec": result.codec,
        "masked": result.reason,
        "sample_rate": SAMPLE_RATE,
    }
    for entry in entries:
        store.write(entry.name, result.features, result.mask, result.fps, backbone, dtype, extra)
    return [entry.name for entry in entries if not result.mask.any()]


def pending_audio(
    sources: Sequence[AudioSource], store: FeatureStore, overwrite: bool = False
) -> tuple[list[str], list[tuple[tuple[Path, int | None], list[AudioSource]]]]:
    """(entries already complete in `store`, the jobs still to do): one job per video file and frame count,
    with every entry that takes its sound."""
    skipped, pending = [], {}
    for entry in sources:
        if not overwrite and store.has(entry.name):
            skipped.append(entry.name)
        else:
            pending.setdefault((entry.path, entry.n_frames), []).append(entry)
    return skipped, list(pending.items())


def _worker_init() -> None:
    torch.set_num_threads(1)  # one process per core: log-mel's STFT must not spread over the others' cores


def extract_audio(
    source: str | os.PathLike | list[AudioSource],
    store,
    sets: Sequence[str] | str = DEFAULT_FEATURE_SETS,
    *,
    speech_model: SpeechModel | None = None,
    dtype: str = "float32",
    names: Sequence[str] | None = None,
    overwrite: bool = False,
    workers: int = 0,
    on_error: Callable[[str], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> AudioExtractSummary:
    """Extract every pending entry of `source` into `store` (a FeatureStore or its folder): features (T, D),
    the sound mask, fps, `backbone` "audio:<sets>", and in `extra` the columns, sets, source file and why frames
    are masked. Resumable: complete entries are skipped (the store publishes an entry only once written), and a
    video's sound is decoded once for all its entries. A video that cannot be read raises a MambavaError naming
    it, or with `on_error` is reported there and listed in `failed`; a store that cannot be written stops the run.
    `on_warning` receives each AudioWarning line (default: Python's warnings). `workers` > 0: that many worker
    processes compute the features (openSMILE runs on one core), this process writes the store in order;
    not with a speech model (one copy of it, in this process). `progress(done, total, name)` after each video."""

    sets = check_sets(sets, speech_model)
    if workers and speech_model is not None:
        raise MambavaError("audio extraction: worker processes (--workers) do not take a speech model; use 0")
    store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    sources = source if isinstance(source, list) else find_audio_sources(source, names)
    summary = AudioExtractSummary(entries=[s.name for s in sources])
    summary.skipped, jobs = pending_audio(sources, store, overwrite)
    backbone = audio_backbone(sets, speech_model)
    start = time.perf_counter()
    pool = None
    if workers and len(jobs) > 1:
        # spawn, not fork: the parent may hold torch's and openSMILE's threads
        pool = ProcessPoolExecutor(min(workers, len(jobs)), multiprocessing.get_context("spawn"), _worker_init)
        futures = [pool.submit(audio_of_video, path, n_frames, sets) for (path, n_frames), _ in jobs]
        results = (future.result() for future in futures)
    else:
        results = (audio_of_video(path, n_frames, sets, speech_model) for (path, n_frames), _ in jobs)
    try:
        for done, (((path, _), entries), (result, lines, error)) in enumerate(zip(jobs, results), 1):
            for line in lines:
                if on_warning is None:
                    warnings.warn(line, AudioWarning, stacklevel=2)
                else:
                    on_warning(line)
            if error is not None:
                if on_error is None:
                    raise MambavaError(error)
                summary.failed.extend(e.name for e in entries)
                on_error(error)
            else:
                summary.without_sound += write_audio_entries(store, entries, path, result, backbone, dtype)
                summary.extracted += [e.name for e in entries]
                summary.videos += 1
                summary.frames += len(result.mask)
                summary.seconds_of_video += len(result.mask) / result.fps
            if progress is not None:
                progress(done, len(jobs), entries[0].name)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    summary.seconds = time.perf_counter() - start
    return summary
