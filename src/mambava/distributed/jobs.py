"""The corpus jobs on Ray: `faces --dataset`, `extract` (visual and `--audio`) and `predict` over many inputs,
one Ray task per video, placed by resources.

Each task calls the local engine's own per-video function and writers (`faces_of_video`, `crop_batches` +
`write_video_features`, `audio_of_video` + `write_audio_entries`, `Predictor.scan_faces` + `assemble` +
`write_input`), so a Ray run writes the files a local run writes, to the bit on CPU in fp32. What runs where:

- decode + detect + track + align (and the temporal model and the writers after the backbone): a CPU task
  per video (`num_cpus=1`), retried `max_retries` times when its worker process or node dies;
- the backbone: an actor pool (`BackbonePool`), one actor per GPU where the cluster has GPUs, else
  `backbone_workers` on CPU (0: the backbone runs inside each video's task); an actor that dies is restarted
  and its calls run again.

Memory is bounded by blocks: a video's task holds one batch of crops being made, and at most `MAX_PENDING`
batches sent to the backbone and not yet back; at most `in_flight` videos run at once. A video's features
(D floats per frame) stay in its task until its table is written, as in the local engine.

Outputs must live where every node sees them (a shared filesystem, or object storage mounted as one): each task
checks that the folder the driver made is there, and fails with a line that says so otherwise.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import resource
import shutil
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from mambava.audio.extract import (
    AudioExtractSummary,
    AudioSource,
    audio_backbone,
    audio_of_video,
    find_audio_sources,
    pending_audio,
    write_audio_entries,
)
from mambava.audio.features import check_sets
from mambava.backbone import FeatureExtractor, build_encoder, resolve_precision
from mambava.backbone.extract import EntrySpec, ExtractSummary, crop_batches, write_video_features
from mambava.backbone.vit import ViTEncoder
from mambava.core.errors import MambavaError, OutputError, error_line
from mambava.core.fileio import make_folder, output_error, remove_temporaries
from mambava.core.runtime import resolve_device
from mambava.data.crops import CropVideo, find_crop_videos
from mambava.data.store import FeatureStore
from mambava.distributed.engine import Cluster, CorpusProgress, RayOptions, connect, run_videos
from mambava.faces.dataset import (
    CSV_SUFFIX,
    MARKER,
    DatasetFacesResult,
    VideoFaces,
    faces_of_video,
    finish_dataset_faces,
    plan_dataset_faces,
)
from mambava.faces.expression import ExpressionRecognizer
from mambava.faces.pipeline import staging_folder
from mambava.inference.files import FEATURE_SUFFIXES, InputReport, OutputOptions, write_input
from mambava.inference.predict import CropBatch, FaceScan, Predictor, add_features

# backbone batches a video's task sends ahead of the one it waits for: the actor never waits for work, and the
# object store holds at most this many blocks of crops per running video
MAX_PENDING = 4


@dataclass
class RayRun:
    """How a job ran on Ray: the cluster, its backbone workers, wall time, frames, and the peak resident memory
    of a video task's worker process and of a backbone actor (MB, from getrusage in each)."""

    cluster: str
    backbone_workers: str = ""
    seconds: float = 0.0
    frames: int = 0
    peak_task_mb: float = 0.0
    peak_backbone_mb: float = 0.0

    def describe(self) -> str:
        rate = f"{self.frames / self.seconds:.1f} frames/s" if self.seconds > 0 else "no frames"
        backbone = f"; backbone: {self.backbone_workers}" if self.backbone_workers else ""
        memory = f"; peak memory {self.peak_task_mb:.0f} MB per video task" if self.peak_task_mb else ""
        if self.peak_backbone_mb:
            memory += f", {self.peak_backbone_mb:.0f} MB per backbone actor"
        return f"ray: {self.cluster}{backbone}; {self.frames} frames in {self.seconds:.1f} s ({rate}){memory}"


# ---------------------------------------------------------------------------------------------------------
# What a worker process keeps between tasks


_CACHE: dict[str, Any] = {}
_CACHE_SIZE = 6  # a run's predictor, backbone and its precision, and the previous run's


def _remember(key: str, make: Callable[[], Any]) -> Any:
    """`make()`, once per worker process for `key` (the few latest kept): a video's task reuses what an earlier
    task of the same run built (the predictor, the backbone) instead of building it again."""
    if key not in _CACHE:
        while len(_CACHE) >= _CACHE_SIZE:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = make()
    return _CACHE[key]


def _shared(box: list) -> Any:
    """The object behind a boxed ObjectRef (boxed, so Ray does not fetch it for every task), fetched once per
    worker process."""
    import ray

    return _remember(box[0].hex(), lambda: ray.get(box[0]))


def _peak_mb() -> float:
    """This process's peak resident memory so far, MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _check_shared(path: Path) -> None:
    """A MambavaError when `path` (made by the driver) is not visible here: outputs must be on a shared filesystem."""
    if not path.exists():
        raise MambavaError(
            f"{path}: not found on node {socket.gethostname()}: the outputs must be on a filesystem every node "
            "of the cluster mounts at the same path (docs/scaling.md)"
        )


def _mambava_warnings(caught) -> list[str]:
    """The lines of the warnings mambava raised (a video's frames, its sound), for the driver to print."""
    return [str(w.message) for w in caught if type(w.message).__module__.startswith("mambava")]


# ---------------------------------------------------------------------------------------------------------
# The backbone: an actor pool, or the backbone inside each task


@dataclass(frozen=True)
class EncoderSource:
    """Where each backbone worker gets its weights: a checkpoint file on the shared filesystem (`arch` as
    `load_encoder` takes it), a seeded random init (`seed`, no checkpoint), or an object in the object store
    (`box`: an encoder given in Python); or, with `expression`, the FER2013 expression net's weights file
    (`extract --features expression`: `mambava.faces.expression.ExpressionRecognizer` instead of a ViT)."""

    checkpoint: str | None = None
    arch: str | None = None
    seed: int | None = None
    box: tuple | None = None
    expression: str | None = None

    def build(self) -> ViTEncoder:
        if self.box is not None:
            import ray

            return ray.get(self.box[0])
        return build_encoder(self.checkpoint, self.arch, self.seed)

    def key(self) -> str:
        """Names these weights in a worker's cache (a checkpoint rewritten in place is another key)."""
        stamp = os.stat(self.checkpoint).st_mtime_ns if self.checkpoint else ""
        box = self.box[0].hex() if self.box else ""
        return f"{self.checkpoint}@{stamp}:{self.arch}:{self.seed}:{box}:{self.expression}"


class BackboneWorker:
    """A backbone actor (Ray wraps the class): one FeatureExtractor (or the expression net, `source.expression`)
    on its device, fed batches of crops."""

    def __init__(self, source: EncoderSource, batch_size: int, device: str, precision: str):
        if source.expression is not None:
            self.extractor = ExpressionRecognizer(source.expression, batch_size, resolve_device(device))
        else:
            self.extractor = FeatureExtractor(source.build(), batch_size, resolve_device(device), precision)

    def info(self) -> dict:
        """The feature size, input size and resolved precision, where it runs and its peak memory (MB)."""
        x = self.extractor
        return {
            "dim": x.dim,
            "img_size": x.config.img_size,
            "precision": x.precision,
            "device": str(x.device),
            "node": socket.gethostname(),
            "peak_mb": _peak_mb(),
        }

    def features(self, crops: np.ndarray) -> np.ndarray:
        """`FeatureExtractor.features`: (N, S, S, 3) uint8 crops -> (N, D) float32."""
        return self.extractor.features(crops)

    def features_from_resized(self, images) -> np.ndarray:
        """`FeatureExtractor.features_from_resized`: uint8 (N, 3, S, S) -> (N, D) float32."""
        return self.extractor.features_from_resized(images).cpu().numpy()


@dataclass
class BackbonePool:
    """The backbone actors of a job (none: each task builds the backbone itself, from `source`)."""

    actors: list
    source: EncoderSource
    batch_size: int
    device: str
    precision: str
    dim: int = 0
    img_size: int = 0
    token: str = ""  # names this pool in a worker's cache

    def resolved_precision(self) -> str:
        """The precision the backbone runs at ("auto" resolved where it runs: an actor's device, or this CPU)."""
        if not self.actors:
            return resolve_precision(self.precision, "cpu")
        import ray

        return _remember(f"precision:{self.token}", lambda: ray.get(self.actors[0].info.remote())["precision"])

    def _local(self) -> BackboneWorker:
        key = f"backbone:{self.source.key()}:{self.batch_size}:{self.device}:{self.precision}"
        return _remember(key, lambda: BackboneWorker(self.source, self.batch_size, self.device, self.precision))

    def in_order(self, method: str, items: Iterable[tuple[Any, Any]], offset: int = 0) -> Iterator[tuple[Any, Any]]:
        """(item, features of its payload) for each (item, payload), in order; the payloads go to the actors
        round-robin from `offset`, up to MAX_PENDING ahead of the one waited for. A None payload gets None."""
        import ray

        if not self.actors:
            local = self._local()
            for item, payload in items:
                yield item, None if payload is None else getattr(local, method)(payload)
            return
        queue: collections.deque = collections.deque()
        for k, (item, payload) in enumerate(items):
            actor = self.actors[(offset + k) % len(self.actors)]
            queue.append((item, None if payload is None else getattr(actor, method).remote(payload)))
            while len(queue) > MAX_PENDING:
                done, ref = queue.popleft()
                yield done, None if ref is None else ray.get(ref)
        while queue:
            done, ref = queue.popleft()
            yield done, None if ref is None else ray.get(ref)

    def describe(self) -> str:
        if not self.actors:
            return f"in each video's task ({self.resolved_precision()} on cpu)"
        return f"{len(self.actors)} actor(s) ({self.resolved_precision()} on {self.device})"


def start_backbone(
    cluster: Cluster,
    options: RayOptions,
    encoder: ViTEncoder | None,
    source: EncoderSource | None,
    batch_size: int,
    device: str | None,
    precision: str,
) -> BackbonePool:
    """The backbone actors: one per GPU of the cluster where `device` asks for CUDA (or "auto" finds GPUs),
    else `options.backbone_workers` on CPU (default 1; 0: none, the backbone runs in each video's task). Each
    builds `encoder` from `source` (None: `encoder` itself, through the object store), or the expression net of
    `source.expression` (`encoder` None). The actors start while the first tasks decode (nothing waits for them
    here)."""
    ray = cluster.ray
    wants_cuda = str(device or "auto").startswith("cuda") or (device in (None, "auto") and cluster.gpus > 0)
    if wants_cuda and cluster.gpus == 0:
        raise MambavaError(f"--device {device}: the Ray cluster has no GPU ({cluster.describe()})")
    target = "cuda" if wants_cuda else "cpu"
    count = options.backbone_workers
    if count is None:
        count = cluster.gpus if wants_cuda else 1
    if count < 0:
        raise MambavaError(f"--backbone-workers must be >= 0, got {count}")
    if target == "cpu" and count and count >= cluster.cpus:
        raise MambavaError(
            f"--backbone-workers {count}: the cluster has {cluster.cpus} CPU(s) and the videos' tasks need at least "
            "one besides the backbone actors; give fewer, or 0 to run the backbone inside each video's task"
        )
    if wants_cuda and count == 0:
        raise MambavaError("--backbone-workers 0 runs the backbone on the tasks' CPUs: not with --device cuda")
    if source is None:
        source = EncoderSource(box=(ray.put(encoder.cpu().eval()),))
    if source.expression is not None:  # fp32 only (`ExpressionRecognizer.precision`)
        dim, img_size, precision = ExpressionRecognizer.dim, ExpressionRecognizer.config.img_size, "fp32"
    else:
        dim, img_size = encoder.config.feature_dim, encoder.config.img_size
    pool = BackbonePool([], source, batch_size, target, precision, dim, img_size)
    pool.token = os.urandom(8).hex()
    if count:
        actor = ray.remote(BackboneWorker).options(
            num_cpus=1,
            num_gpus=1 if target == "cuda" else 0,
            max_restarts=options.max_retries,
            max_task_retries=options.max_retries,
        )
        pool.actors = [actor.remote(source, batch_size, target, precision) for _ in range(count)]
    return pool


def stop_backbone(cluster: Cluster, pool: BackbonePool | None, run: RayRun) -> None:
    """Record how the backbone ran (and the actors' peak memory) in `run`, and end the actors."""
    if pool is None:
        return
    ray = cluster.ray
    try:
        run.backbone_workers = pool.describe()
        if pool.actors:
            infos = ray.get([a.info.remote() for a in pool.actors], timeout=30)
            run.peak_backbone_mb = max(i["peak_mb"] for i in infos)
    except Exception:  # an actor that cannot answer any more (a run stopped early) has nothing to report
        pass
    for actor in pool.actors:
        ray.kill(actor)


# ---------------------------------------------------------------------------------------------------------
# faces --dataset


def faces_video_task(
    video: str,
    path: str,
    crops_dir: str,
    detector: str,
    detector_kwargs: dict,
    min_track_frames: int,
    detect_every: int,
) -> tuple[VideoFaces, list[str], float]:
    """One raw video's crops (`faces_of_video`), its warnings and this worker's peak memory."""
    _check_shared(Path(crops_dir) / MARKER)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        item = faces_of_video(video, path, crops_dir, detector, detector_kwargs, min_track_frames, detect_every)
    return item, _mambava_warnings(caught), _peak_mb()


def faces_dataset_ray(
    root: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    detector: str = "mtcnn",
    detector_kwargs: dict | None = None,
    min_track_frames: int = 3,
    videos: list[str] | None = None,
    link: bool = True,
    detect_every: int = 1,
    progress: Callable[[int, int, VideoFaces], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
    options: RayOptions | None = None,
    console: Any = None,
) -> tuple[DatasetFacesResult, RayRun]:
    """`mambava.faces.dataset.extract_dataset_faces` (same arguments, same files) with one Ray task per video.
    `detector` must be a registered name or import path (each worker builds its own). `on_warning` receives the
    workers' warning lines. Returns the result and how it ran."""
    options = options or RayOptions()
    if not isinstance(detector, str):
        raise MambavaError("--engine ray: each worker builds the detector from its name; give a name, not an object")
    given_root, root = root, Path(root).absolute()
    plan = plan_dataset_faces(
        root,
        Path(out).absolute() if out is not None else None,
        detector=detector,
        detector_kwargs=detector_kwargs,
        min_track_frames=min_track_frames,
        videos=videos,
        link=link,
        detect_every=detect_every,
    )
    results: dict[str, VideoFaces] = {}
    if progress is not None:
        for item in plan.done.values():
            progress(len(plan.done), len(plan.raw), item)
    with connect(options) as cluster:
        run = RayRun(cluster.describe())
        task = cluster.ray.remote(faces_video_task).options(num_cpus=1, max_retries=options.max_retries)
        # longest first keeps the workers busy to the end (as the local engine's worker processes)
        order = sorted(plan.todo, key=lambda v: -os.path.getsize(plan.raw[v]))
        start = time.perf_counter()
        with CorpusProgress("faces", len(plan.raw), len(plan.done), options.progress, console) as bar:

            def submit(video: str):
                return task.remote(
                    video,
                    str(plan.raw[video]),
                    str(plan.crops_dir),
                    detector,
                    plan.detector_kwargs,
                    min_track_frames,
                    detect_every,
                )

            def finished(video: str, result) -> None:
                item, lines, peak = result
                results[video] = item
                run.frames += item.frames
                run.peak_task_mb = max(run.peak_task_mb, peak)
                for line in lines:
                    (on_warning or warnings.warn)(line)
                bar.advance(item.frames)
                if progress is not None:
                    progress(len(plan.done) + len(results), len(plan.raw), item)

            def cleanup(running: list[str]) -> None:
                for video in running:
                    shutil.rmtree(staging_folder(plan.crops_dir, video), ignore_errors=True)
                    remove_temporaries(plan.crops_dir / f"{video}{CSV_SUFFIX}")

            failures = run_videos(
                cluster, order, submit, finished, in_flight=options.in_flight, cleanup=cleanup, progress=bar
            )
            for failure in failures:
                results[failure.item] = VideoFaces(failure.item, error=failure.message)
                bar.advance(0)
                if progress is not None:
                    progress(len(plan.done) + len(results), len(plan.raw), results[failure.item])
        run.seconds = time.perf_counter() - start
    result = finish_dataset_faces(plan, results)
    # the folders as the caller named them (the tasks wrote to their absolute paths)
    crops = Path(out if out is not None else given_root) / plan.crops_dir.name
    return dataclasses.replace(result, root=Path(given_root), out=crops.parent, crops_dir=crops), run


# ---------------------------------------------------------------------------------------------------------
# extract (visual): crops -> backbone -> feature store


def extract_video_task(
    video: CropVideo, source: str, store_root: str, spec: EntrySpec, pool: BackbonePool, offset: int
) -> tuple[str | None, int, float]:
    """One video's entry (`crop_batches` decoded here, the backbone in `pool`, `write_video_features`): (the
    error line or None, crops run through the backbone, this worker's peak memory)."""
    _check_shared(Path(store_root))
    store = FeatureStore(store_root)
    spec = dataclasses.replace(spec, extra={**spec.extra, "precision": pool.resolved_precision()})

    def batches():
        for rows, images, bad in crop_batches(video, pool.batch_size, pool.img_size):
            yield (rows, bad), (None if bad else images)

    runs = ((rows, feats, bad) for (rows, bad), feats in pool.in_order("features_from_resized", batches(), offset))
    try:
        write_video_features(store, video, spec, runs, source=source)
    except OutputError:  # the store cannot be written: the driver stops the run
        raise
    except MambavaError as error:
        return str(error), 0, _peak_mb()
    return None, len(video.frames), _peak_mb()


def extract_features_ray(
    source: str | os.PathLike,
    store: str | os.PathLike,
    encoder: ViTEncoder | None,
    *,
    weights: EncoderSource | None = None,
    batch_size: int = 64,
    device: str | None = "auto",
    precision: str = "auto",
    backbone: str = "vit",
    dtype: str = "float16",
    fps: float | None = None,
    names: list[str] | None = None,
    overwrite: bool = False,
    extra: dict | None = None,
    on_error: Callable[[str], None] | None = None,
    options: RayOptions | None = None,
    console: Any = None,
) -> tuple[ExtractSummary, RayRun]:
    """`mambava.backbone.extract.extract_features` (same store entries) with one Ray task per video decoding its
    crops and writing its entry, and the backbone (`encoder`, each worker building it from `weights`; None with
    `weights.expression`: the expression net) in an actor pool (`start_backbone`). A video that cannot be
    extracted goes to `on_error` (or raises without it); a store that cannot be written stops the run."""
    options = options or RayOptions()
    store_path = Path(store).absolute()
    videos = find_crop_videos(source, fps=fps, names=names)
    summary = ExtractSummary(0, 1, videos=[v.name for v in videos])
    fs = FeatureStore(store_path)
    summary.skipped = [v.name for v in videos if not v.error and not overwrite and fs.has(v.name)]

    def fail(name: str, message: str) -> None:
        if on_error is None:
            raise MambavaError(message)
        summary.failed.append(name)
        on_error(message)

    for video in (v for v in videos if v.error):
        fail(video.name, video.error)
    pending = [v for v in videos if not v.error and v.name not in summary.skipped]
    if not pending:
        return summary, RayRun("not started: nothing to extract")
    make_folder(store_path)
    with connect(options) as cluster:
        run = RayRun(cluster.describe())
        pool = start_backbone(cluster, options, encoder, weights, batch_size, device, precision)
        spec = EntrySpec(
            pool.dim,
            backbone,
            dtype,
            # (the precision is the backbone's, filled in by each task)
            {"img_size": pool.img_size, "precision": precision, **(extra or {})},
        )
        task = cluster.ray.remote(extract_video_task).options(num_cpus=1, max_retries=options.max_retries)
        by_name = {v.name: v for v in pending}
        start = time.perf_counter()
        try:
            with CorpusProgress("extract", len(videos), len(summary.skipped), options.progress, console) as bar:
                submitted = iter(range(len(by_name)))

                def submit(name: str):
                    video = by_name[name]
                    readable = dataclasses.replace(video, folder=Path(video.folder).absolute())
                    return task.remote(readable, str(video.folder), str(store_path), spec, pool, next(submitted))

                def finished(name: str, result) -> None:
                    error, frames, peak = result
                    run.peak_task_mb = max(run.peak_task_mb, peak)
                    bar.advance(frames)
                    if error is not None:
                        fail(name, error)
                        return
                    summary.extracted.append(name)
                    summary.frames += frames

                def cleanup(running: list[str]) -> None:
                    for name in running:
                        fs.discard_unfinished(name)

                order = sorted(by_name, key=lambda n: -len(by_name[n].frames))  # longest first
                for failure in run_videos(
                    cluster, order, submit, finished, in_flight=options.in_flight, cleanup=cleanup, progress=bar
                ):
                    bar.advance(0)
                    fail(failure.item, failure.message)
        finally:
            stop_backbone(cluster, pool, run)
        run.seconds = summary.seconds = time.perf_counter() - start
        run.frames = summary.frames
    return summary, run


# ---------------------------------------------------------------------------------------------------------
# extract --audio


def audio_video_task(
    path: str,
    label: str,
    n_frames: int | None,
    sets: list[str],
    entries: list[AudioSource],
    store_root: str,
    backbone: str,
    dtype: str,
    speech_box: list | None,
) -> dict:
    """One video's sound features into each of its entries (`audio_of_video`, `write_audio_entries`)."""
    _check_shared(Path(store_root))
    speech = _shared(speech_box) if speech_box else None
    result, lines, error = audio_of_video(Path(path), n_frames, sets, speech)
    if error is not None:
        return {"error": error, "lines": lines, "peak_mb": _peak_mb()}
    without = write_audio_entries(FeatureStore(store_root), entries, label, result, backbone, dtype)
    return {
        "error": None,
        "lines": lines,
        "without_sound": without,
        "frames": len(result.mask),
        "seconds_of_video": len(result.mask) / result.fps,
        "peak_mb": _peak_mb(),
    }


def extract_audio_ray(
    source: str | os.PathLike,
    store: str | os.PathLike,
    sets: Sequence[str] | str,
    *,
    speech_model=None,
    dtype: str = "float32",
    names: Sequence[str] | None = None,
    overwrite: bool = False,
    on_error: Callable[[str], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
    options: RayOptions | None = None,
    console: Any = None,
) -> tuple[AudioExtractSummary, RayRun]:
    """`mambava.audio.extract_audio` (same store entries) with one Ray task per video file; a speech model runs
    in the tasks (on their CPUs)."""
    options = options or RayOptions()
    sets = check_sets(sets, speech_model)
    store_path = Path(store).absolute()
    fs = FeatureStore(store_path)
    sources = find_audio_sources(source, names)
    summary = AudioExtractSummary(entries=[s.name for s in sources])
    summary.skipped, jobs = pending_audio(sources, fs, overwrite)
    backbone = audio_backbone(sets, speech_model)
    make_folder(store_path)
    with connect(options) as cluster:
        ray = cluster.ray
        run = RayRun(cluster.describe())
        speech_box = [ray.put(speech_model)] if speech_model is not None else None
        task = ray.remote(audio_video_task).options(num_cpus=1, max_retries=options.max_retries)
        start = time.perf_counter()
        with CorpusProgress("extract audio", len(jobs), 0, options.progress, console) as bar:

            def submit(k: int):
                (path, n_frames), entries = jobs[k]
                readable = str(Path(path).absolute())
                return task.remote(
                    readable, str(path), n_frames, list(sets), entries, str(store_path), backbone, dtype, speech_box
                )

            def finished(k: int, result: dict) -> None:
                entries = jobs[k][1]
                run.peak_task_mb = max(run.peak_task_mb, result["peak_mb"])
                for line in result["lines"]:
                    (on_warning or warnings.warn)(line)
                if result["error"] is not None:
                    bar.advance(0)
                    if on_error is None:
                        raise MambavaError(result["error"])
                    summary.failed.extend(e.name for e in entries)
                    on_error(result["error"])
                    return
                bar.advance(result["frames"])
                summary.without_sound += result["without_sound"]
                summary.extracted += [e.name for e in entries]
                summary.videos += 1
                summary.frames += result["frames"]
                summary.seconds_of_video += result["seconds_of_video"]

            def cleanup(running: list[int]) -> None:
                for k in running:
                    for entry in jobs[k][1]:
                        fs.discard_unfinished(entry.name)

            for failure in run_videos(
                cluster,
                range(len(jobs)),
                submit,
                finished,
                in_flight=options.in_flight,
                cleanup=cleanup,
                progress=bar,
                name=lambda k: str(jobs[k][0][0]),
            ):
                bar.advance(0)
                entries = jobs[failure.item][1]
                if on_error is None:
                    raise MambavaError(failure.message)
                summary.failed.extend(e.name for e in entries)
                on_error(failure.message)
        run.seconds = summary.seconds = time.perf_counter() - start
        run.frames = summary.frames
    return summary, run


# ---------------------------------------------------------------------------------------------------------
# predict


def _crops_apart(scan, predictor: Predictor) -> Iterator[tuple[CropBatch, np.ndarray]]:
    """(batch without its crops, the crops) for each batch of `Predictor.scan_faces`; returns its FaceScan. With
    `--expressions`, the expression net runs on the crops here, before they go (`Predictor.crop_expressions`)."""
    while True:
        try:
            batch = next(scan)
        except StopIteration as stop:
            return stop.value
        if predictor.expression_net is not None:
            batch.expressions = predictor.crop_expressions(batch.crops, None)
        crops, batch.crops = batch.crops, None
        yield batch, crops


def predict_video_task(
    path: str, label: str, predictor_box: list, pool: BackbonePool, options: OutputOptions, offset: int
) -> tuple[InputReport, float]:
    """One input's prediction and files: the faces stage here, its crops through `pool`, the temporal model
    and `write_input` here; a bad input is the report's error. Where the predictor's extractor is the expression
    net (expression-va, `--backbone expression`), it stays with the predictor and runs here too
    (`Predictor.video_features`). Returns the report and this worker's peak memory."""
    _check_shared(Path(options.out))
    predictor: Predictor = _shared(predictor_box)
    video = Path(path).suffix.lower() not in FEATURE_SUFFIXES
    try:
        if video and predictor.extractor is not None:
            table = predictor.table(predictor.video_features(path))
        elif video:
            hits: dict[int, list] = {}
            held: dict[str, FaceScan] = {}

            def batches():
                held["scan"] = yield from _crops_apart(predictor.scan_faces(path), predictor)

            for batch, features in pool.in_order("features", batches(), offset):
                add_features(hits, batch, features)
            table = predictor.table(predictor.assemble(path, held["scan"], hits))
        else:
            table = predictor.predict_feature_file(path)
        report = write_input(path, table, options, video, label=label)
    except (MambavaError, OSError) as error:
        report = InputReport(label, error=error_line(error).replace(path, label))
    return report, _peak_mb()


@dataclass
class PredictRun:
    """What `predict_ray` did: a report per input in the order they finished, and how it ran."""

    reports: list[InputReport] = field(default_factory=list)
    run: RayRun | None = None

    @property
    def failed(self) -> int:
        return sum(r.error is not None for r in self.reports)


def predict_ray(
    predictor: Predictor,
    paths: Sequence,
    output: OutputOptions,
    *,
    backbone: str | os.PathLike | None = None,
    device: str | None = "cpu",
    on_report: Callable[[InputReport], None] | None = None,
    options: RayOptions | None = None,
    console: Any = None,
) -> PredictRun:
    """`mambava predict` over many inputs with one Ray task per input: the faces stage, the temporal model and
    the files in the task, the backbone (`predictor`'s; each worker loads it from the `backbone` checkpoint when
    given) in an actor pool on `device` (`start_backbone`). The expression net (58k weights: less work than
    sending its crops away) runs in each input's task: as the extractor (expression-va, the default model, or
    `--backbone expression`; no actors then) and with `--expressions` beside a ViT. Each input's files are those
    a local run writes (`write_input`). `on_report(report)` as each input finishes."""
    options = options or RayOptions()
    labels = [str(p) for p in paths]
    readable = [p if "://" in str(p) else str(Path(p).absolute()) for p in map(str, paths)]
    shown_out = str(output.out)
    output = dataclasses.replace(
        output,
        out=Path(output.out).absolute(),
        events=Path(output.events).absolute() if output.events is not None else None,
    )
    has_videos = any(Path(p).suffix.lower() not in FEATURE_SUFFIXES for p in labels)
    try:
        make_folder(output.out)
    except OSError as error:
        raise output_error(error, output.out, "cannot create the output folder") from None
    result = PredictRun()
    with connect(options) as cluster:
        ray = cluster.ray
        result.run = run = RayRun(cluster.describe())
        pool = None
        if has_videos and not isinstance(predictor.extractor, ExpressionRecognizer):
            if predictor.extractor is None:
                raise MambavaError(f"{labels[0]}: --backbone is required for videos; pass a features .npy instead")
            source = EncoderSource(str(Path(backbone).absolute())) if backbone is not None else None
            x = predictor.extractor
            pool = start_backbone(cluster, options, x.encoder, source, x.batch_size, device, predictor.precision)
        elif has_videos:
            run.backbone_workers = "the expression net in each video's task (cpu)"
        predictor_box = [ray.put(predictor.without_backbone())]
        backbone_pool = pool
        pool = pool or BackbonePool([], EncoderSource(), 1, "cpu", "fp32")  # (feature files only: no backbone)
        task = ray.remote(predict_video_task).options(num_cpus=1, max_retries=options.max_retries)
        start = time.perf_counter()
        try:
            with CorpusProgress("predict", len(paths), 0, options.progress, console) as bar:

                def submit(k: int):
                    return task.remote(readable[k], labels[k], predictor_box, pool, output, k)

                def finished(k: int, value) -> None:
                    report, peak = value
                    # the files as this process names them (the tasks write to the absolute folder)
                    report.lines = [(text.replace(str(output.out), shown_out), kind) for text, kind in report.lines]
                    run.peak_task_mb = max(run.peak_task_mb, peak)
                    run.frames += report.frames
                    result.reports.append(report)
                    bar.advance(report.frames)
                    if on_report is not None:
                        on_report(report)

                def cleanup(running: list[int]) -> None:
                    for k in running:
                        stem = Path(labels[k]).stem
                        for tmp in output.out.glob(f".{stem}.*.tmp"):
                            tmp.unlink(missing_ok=True)

                for failure in run_videos(
                    cluster,
                    range(len(paths)),
                    submit,
                    finished,
                    in_flight=options.in_flight,
                    cleanup=cleanup,
                    progress=bar,
                    name=lambda k: labels[k],
                ):
                    report = InputReport(labels[failure.item], error=failure.message)
                    result.reports.append(report)
                    bar.advance(0)
                    if on_report is not None:
                        on_report(report)
        finally:
            stop_backbone(cluster, backbone_pool, run)
        run.seconds = time.perf_counter() - start
    return result
