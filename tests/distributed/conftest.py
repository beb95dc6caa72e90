"""One local Ray instance for the tests of `--engine ray` (tests/distributed/)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ray_instance():
    """A local Ray instance for the whole session, started by the first test that needs it: 2 CPUs, no dashboard,
    a 200 MB object store (the jobs' blocks are bounded; this is far more than they use), worker output not
    forwarded. The jobs find it initialised and use it as it is; it is shut down at the end."""
    ray = pytest.importorskip("ray")
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=200 * 1024**2,
        log_to_driver=False,
        # keep the idle task workers while an actor runs beside them (by default Ray ends workers beyond one per
        # CPU, and each new one spends seconds importing torch)
        _system_config={"num_workers_soft_limit": 4},
    )
    # the two workers import mambava (torch, ...) while the tests make their local references, not after
    warm = [ray.remote(_import_jobs).remote() for _ in range(2)]
    yield ray
    del warm
    ray.shutdown()


def _import_jobs() -> None:
    import mambava.distributed.jobs  # noqa: F401
