"""Benchmarks of the hot paths; each measures a baseline in the same run and prints ratios. `mambava bench NAME`
runs the module NAME here; the facts about the machine that every benchmark prints beside its figures are here."""

from __future__ import annotations

import os
import platform


def cpu_name() -> str:
    """The processor's model name (the figures depend on it: AMX or not, AVX-512 BF16 or not)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> float | None:
    """The 1-minute load average (other work on a shared machine changes every figure), None where unknown."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None
