"""Where and on how many threads torch runs: one device resolution and one thread policy for every stage.

Threads: the models here run many short parallel regions. On an idle 2-core machine two OpenMP threads beat
one; on a machine that other work keeps busy they stall at every barrier for a descheduled sibling (measured
3-7x slower for MTCNN, ~3x for a streaming step), so the offline passes drop to one thread while the 1-minute
load average is at least CPUs + 1 (`busy_threads`), the small nets of the faces stage use only the CPUs that
other work leaves free (`free_threads`), and `torch_threads` sets and restores a count around a block. torch's
setting is per calling thread (OpenMP), so a block changes nothing for other threads.

A thread count changes the order of some sums (MTCNN's boxes moved by 3e-5 px between one thread and two, a
temporal model's outputs by 3e-7), so results that follow the load also follow it in their last digits.
`fixed_threads(n)` turns the policy off in the calling thread: inside it every stage runs on `n` threads
whatever the load, and the same input gives the same bits (`mambava serve`: an upload's rows never depend on
what else is being served).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading

import torch

from mambava.core.errors import MambavaError

_FIXED = threading.local()  # .threads: the count `fixed_threads` holds in this thread (None: the load policy)


def resolve_device(device: str | None = "auto"):
    """A torch.device for "auto"/None (CUDA when available, on this process's LOCAL_RANK under torchrun; else
    the CPU), or for a name like "cpu", "cuda", "cuda:1". An unknown name, or CUDA asked for where there is
    none, is a MambavaError."""

    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise MambavaError(f"unknown device {device!r} ({error})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise MambavaError(f"device {device!r} asked for, but CUDA is not available here")
    return resolved


def busy_threads() -> int | None:
    """1 when other work already keeps every CPU busy (load average >= CPUs + 1), else None (no change); inside
    `fixed_threads(n)`, n whatever the load."""
    fixed = getattr(_FIXED, "threads", None)
    if fixed is not None:
        return fixed
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # not on every platform
        return None
    return 1 if load >= (os.cpu_count() or 1) + 1 else None


def free_threads() -> int | None:
    """Threads for many short parallel regions (MTCNN's nets, the landmark refiner): the CPUs that other work leaves
    free, this process's own busy one counted in the load (CPUs - floor(1-minute load average) + 1, at least 1, at
    most torch's current setting); None where the load is unknown (no change); inside `fixed_threads(n)`, n whatever
    the load. Measured on a 2-core AMD EPYC with MTCNN on single_face.mp4: at load 1.4-1.6 (nothing else running)
    2 threads 16-18.5 ms/frame against 1 thread's 22-23; at load 2-5.5, 2 threads 112-160 ms/frame against 1
    thread's 23-34 (`busy_threads`' CPUs + 1 waits too long)."""
    fixed = getattr(_FIXED, "threads", None)
    if fixed is not None:
        return fixed
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    return max(1, min((os.cpu_count() or 1) - math.floor(load) + 1, torch.get_num_threads()))


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with `n` torch intra-op threads (None: as they are), restored after; it is the calling
    thread's OpenMP setting."""

    previous = torch.get_num_threads()
    if n and n != previous:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)


@contextlib.contextmanager
def fixed_threads(n: int | None):
    """Run the block on `n` torch intra-op threads in the calling thread, the load-aware policy off
    (`busy_threads` and `free_threads` answer `n`), restored after; None: no change (the policy stays on).

    Args:
        n: the thread count, or None.
    """
    if n is None:
        yield
        return
    if int(n) != n or n < 1:
        raise MambavaError(f"threads must be a whole number >= 1, got {n}")
    previous = getattr(_FIXED, "threads", None)
    _FIXED.threads = int(n)
    try:
        with torch_threads(int(n)):
            yield
    finally:
        _FIXED.threads = previous


def load_aware_threads():
    """`torch_threads(1)` while other work keeps every CPU busy (`busy_threads`), else no change: for the
    offline passes, whose large products do gain from a second thread on an idle machine."""
    return torch_threads(busy_threads())


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (user + system)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system
