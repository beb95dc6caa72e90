"""The CCC as a torchmetrics `Metric` (DDP-aware), for the Lightning modules that validate with it.

Apart from `mambava.core.metrics` because importing torchmetrics costs seconds (it pulls in every optional
library it supports): the commands that only predict or score never pay it.
"""

from __future__ import annotations

import torch
import torchmetrics

from mambava.core.metrics import valid_mask


class ConcordanceCCC(torchmetrics.Metric):
    """CCC per dimension over every valid frame seen, aggregated across DDP ranks.

    torchmetrics' ConcordanceCorrCoef uses sample (n-1) moments, while the ABAW evaluation uses population
    moments; the two differ by O(1/N). This metric keeps float64 sufficient statistics (count, sums, sums of
    squares and cross products) whose DDP reduction is a plain sum, so the result is the exact ABAW formula
    over all frames of all ranks concatenated.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_outputs: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.num_outputs = num_outputs
        for name in ("n", "sx", "sy", "sxx", "syy", "sxy"):
            self.add_state(name, default=torch.zeros(num_outputs, dtype=torch.float64), dist_reduce_fx="sum")

    def update(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
    ) -> None:
        """`keep`, when given, is the caller's own choice of frames to count (in place of `valid_mask`)."""
        pred = pred.reshape(-1, self.num_outputs)
        target = target.reshape(-1, self.num_outputs)
        if keep is not None:
            valid = keep.reshape(-1).bool()
        else:
            valid = valid_mask(target, None if mask is None else mask.reshape(-1))
        x = pred[valid].double()
        y = target[valid].double()
        self.n += x.shape[0]
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.sxx += (x * x).sum(0)
        self.syy += (y * y).sum(0)
        self.sxy += (x * y).sum(0)

    def compute(self) -> torch.Tensor:
        n = self.n.clamp_min(1)
        mx, my = self.sx / n, self.sy / n
        vx = self.sxx / n - mx * mx
        vy = self.syy / n - my * my
        cov = self.sxy / n - mx * my
        return 2 * cov / (vx + vy + (mx - my) ** 2).clamp_min(1e-12)
