"""The Ray engine: joining or starting a cluster, and the driver loop that runs one task per video over it.

    with connect(RayOptions(address="auto")) as cluster:
        run_videos(cluster, videos, submit, on_result, cleanup)

Ray is an optional dependency (the `distributed` extra): without it `import_ray` is a one-line MambavaError
naming the extra. `connect` joins the cluster at `address` (`ray start` on the nodes, SLURM or KubeRay; see
docs/scaling.md), or starts a Ray instance on this machine's cores and shuts it down at the end; a Ray already
initialised in this process (a test session, a notebook) is used as it is.

`run_videos` keeps a bounded window of videos in flight (the object store never holds more than their
blocks), retries nothing itself (Ray re-runs a task whose worker process or node died, `max_retries`), reports
each finished video in order of completion, and on Ctrl-C cancels the running tasks (a KeyboardInterrupt in
each, so that their atomic writers remove their temporary files), waits for them and lets `cleanup` remove
whatever a killed worker could not.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

from mambava.core.errors import MambavaError, OutputError

EXTRA = "distributed"
INSTALL = f"pip install 'mambava[{EXTRA}]'"
# seconds the running tasks get to stop after Ctrl-C (their writers remove their temporary files)
CANCEL_GRACE_S = 30.0


def import_ray():
    """The `ray` module, or a one-line MambavaError naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise MambavaError(f"--engine ray needs Ray, which is not installed: {INSTALL}") from None
    return ray


@dataclass
class RayOptions:
    """Where and how a corpus job runs on Ray.

    Attributes:
        address: a running cluster (`auto`, `host:6379`, `ray://host:10001`); None starts a Ray instance here.
        num_cpus: the CPUs of a Ray instance started here (None: every core of this machine).
        backbone_workers: backbone actors (None: one per GPU of the cluster, else one on CPU; 0: the backbone
            runs inside each video's task).
        in_flight: videos submitted at once (None: twice the cluster's CPUs); bounds the object store's use.
        max_retries: times a video's task is run again when its worker process or node dies.
        object_store_memory: bytes of a Ray instance started here (None: Ray's default).
        progress: draw the progress bar.
    """

    address: str | None = None
    num_cpus: int | None = None
    backbone_workers: int | None = None
    in_flight: int | None = None
    max_retries: int = 3
    object_store_memory: int | None = None
    progress: bool = True


@dataclass
class Cluster:
    """A connected Ray: the module, the cluster's nodes, CPUs and GPUs, and whether this process started it."""

    ray: Any
    nodes: int
    cpus: int
    gpus: int
    started: bool

    def describe(self) -> str:
        return f"{self.nodes} node(s), {self.cpus} CPU(s), {self.gpus} GPU(s)"


@contextlib.contextmanager
def connect(options: RayOptions) -> Iterator[Cluster]:
    """The cluster at `options.address`, a Ray already initialised in this process, or a Ray instance started
    on this machine (shut down at the end). Worker output is not forwarded here (each task reports its own
    warnings); Ray's own logging is kept to errors."""
    ray = import_ray()
    started = False
    if not ray.is_initialized():
        settings: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
        if options.address:
            settings["address"] = options.address
        else:
            settings.update(include_dashboard=False, num_cpus=options.num_cpus or _cores())
            if options.object_store_memory:
                settings["object_store_memory"] = int(options.object_store_memory)
        try:
            ray.init(**settings)
        except (ConnectionError, ValueError, RuntimeError) as error:
            where = options.address or "a local Ray instance"
            raise MambavaError(f"--engine ray: cannot start or join {where} ({str(error).splitlines()[0]})") from None
        started = True
    try:
        resources = ray.cluster_resources()
        nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
        yield Cluster(ray, nodes, int(resources.get("CPU", 0)), int(resources.get("GPU", 0)), started)
    finally:
        if started:
            ray.shutdown()


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class CorpusProgress:
    """Videos done/total, frames/s and the time left, on a rich bar on stderr (nothing when disabled); `print`
    shows a line above it (each video's report). `done`: videos finished by an earlier run (skipped)."""

    def __init__(self, description: str, total: int, done: int = 0, enabled: bool = True, console: Any = None):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = console or Console(stderr=True)
        self.frames = 0
        self.start = time.perf_counter()
        self.bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("videos {task.fields[rate]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=not enabled,
            transient=False,
        )
        self.task = self.bar.add_task(description, total=total, completed=done, rate="")

    def __enter__(self) -> CorpusProgress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        self.bar.__exit__(*exc)
        return False

    @property
    def frames_per_second(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.frames / elapsed if elapsed > 0 else 0.0

    def advance(self, frames: int) -> None:
        """One more video finished (or failed), with `frames` frames processed."""
        self.frames += frames
        self.bar.update(self.task, advance=1, rate=f"{self.frames_per_second:.1f} frames/s")

    def print(self, text: str, style: str | None = None) -> None:
        self.console.print(text, style=style, markup=False, highlight=False, soft_wrap=True)


@dataclass
class Failure:
    """A video whose task failed for good: its worker died more than `max_retries` times, or its node went."""

    item: Any
    message: str


def run_videos(
    cluster: Cluster,
    items: Sequence,
    submit: Callable[[Any], Any],
    on_result: Callable[[Any, Any], None],
    *,
    in_flight: int | None = None,
    cleanup: Callable[[list], None] | None = None,
    name: Callable[[Any], str] = str,
    progress: CorpusProgress | None = None,
) -> list[Failure]:
    """Run `submit(item)` (an ObjectRef of a task) for every item, at most `in_flight` at once (default: twice
    the cluster's CPUs), and `on_result(item, result)` as each finishes. Returns the items whose task failed for
    good (a worker died on every try). A task that raised an OutputError (the outputs cannot be written: every
    next video would fail too) stops the run with it; any other exception from a task is a bug and is raised.
    Ctrl-C: the running tasks are cancelled and waited for, `cleanup(running items)` removes what a killed
    worker left, a line on `progress` says what is complete, and the KeyboardInterrupt goes on."""
    ray = cluster.ray
    window = max(1, in_flight or 2 * max(1, cluster.cpus))
    queue = list(items)[::-1]
    running: dict[Any, Any] = {}
    failures: list[Failure] = []
    finished = 0
    try:
        while queue or running:
            while queue and len(running) < window:
                item = queue.pop()
                running[submit(item)] = item
            ready, _ = ray.wait(list(running), num_returns=1)
            for ref in ready:
                item = running.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as error:
                    cause = error.cause if isinstance(getattr(error, "cause", None), BaseException) else error
                    if isinstance(cause, OutputError):
                        raise cause from None
                    if isinstance(cause, MambavaError):
                        failures.append(Failure(item, str(cause)))
                        continue
                    raise
                except ray.exceptions.RayError as error:  # the worker or its node died on every try
                    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                    failures.append(Failure(item, f"{name(item)}: its Ray task failed for good ({reason})"))
                    continue
                on_result(item, result)
                finished += 1
    except BaseException as error:
        _stop(ray, running)
        if cleanup is not None:
            cleanup(list(running.values()))
        if isinstance(error, KeyboardInterrupt) and progress is not None:
            progress.print(
                f"interrupted: {finished} finished in this run, each complete; the {len(running)} in flight were "
                "stopped and left no file",
                style="yellow",
            )
        raise
    return failures


def _stop(ray, running: dict) -> None:
    """Cancel the running tasks with a KeyboardInterrupt in each (their writers remove their temporary files)
    and give them CANCEL_GRACE_S to stop."""
    for ref in running:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=False)
    if running:
        with contextlib.suppress(Exception):
            ray.wait(list(running), num_returns=len(running), timeout=CANCEL_GRACE_S)
