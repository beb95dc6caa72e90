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


def cpu_family() -> str:
    """ "family F model M" of the processor (the model name alone does not tell an EPYC Zen 3 from a Zen 4)."""
    found = {}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("cpu family", "model") and key not in found:
                    found[key] = value.strip()
                if len(found) == 2:
                    break
    except OSError:
        return ""
    return f"family {found.get('cpu family', '?')} model {found.get('model', '?')}" if found else ""


def describe_cpu() -> str:
    """The processor and what decides precision on it, in one line for every benchmark's header."""
    from mambava.core.quantize import cpu_description

    family = cpu_family()
    return f"{cpu_name()}{f' ({family})' if family else ''}; {cpu_description()}"


def bf16_slowdown(size: int = 512) -> float:
    """How many times slower a (size x 1024) @ (1024 x 1024) product runs in bf16 than in fp32 here: the
    measured reason benchmarks skip their bf16 rows on a CPU that emulates bf16 (seconds, not minutes)."""
    import time

    import torch

    x, w = torch.randn(size, 1024), torch.randn(1024, 1024)
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = x.to(dtype), w.to(dtype)
        a @ b
        start = time.perf_counter()
        a @ b
        times[dtype] = time.perf_counter() - start
    return times[torch.bfloat16] / times[torch.float32]
