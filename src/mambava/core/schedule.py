"""Learning-rate schedules, as multipliers of the base lr per optimizer step (LambdaLR): the warmup + cosine of
the temporal model's training and of the backbone's fine-tuning, and the authors' warm restarts."""

from __future__ import annotations

import math
from typing import Callable

import torch


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based): linear warmup (step+1)/warmup_steps over
    the first warmup_steps steps, then cosine from 1 to 0 over the remaining steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    remaining = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / remaining)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    """`lr_factor` as a LambdaLR function whose warmup is a fraction of the steps (at least one step): the
    backbone fine-tuning's schedule."""
    warmup = max(1, int(total_steps * warmup_fraction))
    return lambda step: lr_factor(step, warmup, total_steps)


# The authors' schedule (FreedomPuppy77/Charon, VA/vaestimation.py): during the first W = warmup_epochs *
# steps_per_epoch steps lr = 1e-8 + lr * j / (W + 1e-8) (WarmUpLR, lines 21-41, built with start_lr=1e-8 at
# lines 115-117 and reset to step 0 at line 146); from then on torch's CosineAnnealingWarmRestarts with
# T_0 = epochs - warmup_epochs + 1, T_mult 2, eta_min 1e-8 (lines 119-125), stepped once per iteration
# (lines 251-255), so T_0 counts iterations, not epochs: the cosine restarts after 46, 92, 184, ... steps.
WARMUP_START_LR = 1e-8
RESTARTS_ETA_MIN = 1e-8
RESTARTS_T_MULT = 2


def warm_restarts_lrs(lr: float, warmup_steps: int, total_steps: int, period: int) -> list[float]:
    """The learning rate at each optimizer step 0..total_steps-1 of the authors' schedule (see above): the
    warmup formula for steps 0..W, then torch's CosineAnnealingWarmRestarts(T_0=period) stepped once per step."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=period, T_mult=RESTARTS_T_MULT, eta_min=RESTARTS_ETA_MIN
    )
    lrs = []
    for step in range(total_steps):
        if step <= warmup_steps:  # step W uses the warmup's last value; the cosine steps after it
            lrs.append(WARMUP_START_LR + lr * step / (warmup_steps + 1e-8))
        else:
            cosine.step()
            lrs.append(optimizer.param_groups[0]["lr"])
    return lrs
