"""The thread policy of `mambava.core.runtime`: the faces stage's small nets take only the CPUs that other work
leaves free (`free_threads`), the offline passes drop to one thread only on a machine busy beyond its CPUs."""

from __future__ import annotations

import pytest

from mambava.core import runtime


@pytest.mark.parametrize(
    ("cpus", "load", "torch_threads", "free", "busy"),
    [
        (2, 0.9, 2, 2, None),  # nothing else runs: both cores
        (2, 1.4, 2, 2, None),  # this process alone (measured: 2 threads 1.25x faster than 1)
        (2, 1.9, 2, 2, None),
        (2, 2.0, 2, 1, None),  # one other busy process (measured: 2 threads 5x slower than 1)
        (2, 5.5, 2, 1, 1),
        (16, 10.2, 16, 7, None),  # 10 busy, this process's own among them
        (16, 1.0, 4, 4, None),  # never more than torch is set to
    ],
)
def test_free_threads_counts_the_cpus_other_work_leaves(monkeypatch, cpus, load, torch_threads, free, busy):
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: cpus)
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(runtime.torch, "get_num_threads", lambda: torch_threads)
    assert runtime.free_threads() == free
    assert runtime.busy_threads() == busy


def test_free_threads_without_a_load_average_changes_nothing(monkeypatch):
    def missing():
        raise OSError("no load average here")

    monkeypatch.setattr(runtime.os, "getloadavg", missing)
    assert runtime.free_threads() is None and runtime.busy_threads() is None


def test_fixed_threads_turn_the_policy_off(monkeypatch):
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    with runtime.fixed_threads(2):
        assert runtime.free_threads() == runtime.busy_threads() == 2
    assert runtime.free_threads() == 1
