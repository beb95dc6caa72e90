"""Concordance correlation coefficient (CCC), the ABAW valence/arousal metric, and the CCC loss.

CCC = 2 s_xy / (s_x^2 + s_y^2 + (mean_x - mean_y)^2), with population (biased) moments, computed over
all valid frames; frames whose label is the Aff-Wild2 invalid marker (-5) are masked out.
"""

from __future__ import annotations

import numpy as np
import torch

INVALID_LABEL = -5.0


def valid_mask(target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Frames that count: label not -5 (in any dimension), finite, and inside `mask` if given.

    `target` is (..., 2); the returned mask has the shape of target[..., 0].
    """
    valid = torch.isfinite(target).all(-1) & (target != INVALID_LABEL).all(-1)
    if mask is not None:
        valid = valid & mask.bool()
    return valid


def ccc(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """CCC per column of (N, D) tensors (or a scalar for 1-D inputs), differentiable."""
    pred = pred.float()
    target = target.float()
    mean_p = pred.mean(0)
    mean_t = target.mean(0)
    var_p = ((pred - mean_p) ** 2).mean(0)
    var_t = ((target - mean_t) ** 2).mean(0)
    cov = ((pred - mean_p) * (target - mean_t)).mean(0)
    return 2 * cov / (var_p + var_t + (mean_p - mean_t) ** 2 + eps)


def ccc_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(1 - CCC_v) + (1 - CCC_a) over all valid frames of the batch. pred/target: (B, T, 2) or (N, 2)."""
    valid = valid_mask(target, mask)
    p = pred[valid]
    t = target[valid]
    if p.shape[0] < 2:
        # No usable frames: a zero loss that still carries a graph so the step is a no-op.
        return pred.sum() * 0.0
    return (1.0 - ccc(p, t)).sum()


def authors_ccc_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The authors' loss (FreedomPuppy77/Charon): their `CCCLoss` (VA/utils/loss.py:18-32) on valence plus on
    arousal (VA/vaestimation.py:188-190, 206), over the batch's frames whose *valence* label is not -5
    (lines 180-186: a -5 arousal on such a frame counts as a target), within `mask` (window padding; the
    authors' windows have none). Per dimension: Pearson's rho = Σ vx·vy / (√Σvx² · √Σvy² + 1e-8), sample
    (n - 1) standard deviations, CCC = 2·rho·s_x·s_y / (s_x² + s_y² + (x̄ - ȳ)²), loss 1 - CCC.

    Fewer than 2 such frames: a zero loss that keeps the graph (theirs would be NaN), as `ccc_loss`.

    Args:
        pred: (B, T, 2) or (N, 2) predictions.
        target: labels of the same shape, -5 where there is none.
        mask: (B, T) or (N,) bool, the real frames, or None for all.

    Returns:
        The scalar loss (1 - CCC_v) + (1 - CCC_a).
    """
    keep = target[..., 0] != INVALID_LABEL
    if mask is not None:
        keep = keep & mask.bool()
    p = pred[keep].float()
    t = target[keep].float()
    if p.shape[0] < 2:
        return pred.sum() * 0.0
    vx = p - p.mean(0)
    vy = t - t.mean(0)
    rho = (vx * vy).sum(0) / (vx.pow(2).sum(0).sqrt() * vy.pow(2).sum(0).sqrt() + 1e-8)
    sx, sy = p.std(0), t.std(0)  # torch.std: n - 1, as theirs
    concordance = 2 * rho * sx * sy / (sx.pow(2) + sy.pow(2) + (p.mean(0) - t.mean(0)).pow(2))
    return (1.0 - concordance).sum()


def ccc_numpy(pred: np.ndarray, target: np.ndarray) -> float:
    """float64 reference CCC of two 1-D arrays (used in tests and reports)."""
    x = np.asarray(pred, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    mx, my = x.mean(), y.mean()
    vx, vy = x.var(), y.var()
    sxy = ((x - mx) * (y - my)).mean()
    denom = vx + vy + (mx - my) ** 2
    if not np.isfinite(denom) or not np.isfinite(sxy):
        return float("nan")  # non-finite predictions: undefined, never shown as a weak 0.0
    return float(2 * sxy / denom) if denom > 0 else 0.0


def va_scores(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """CCC_v, CCC_a and P_VA over the valid frames of (N, 2) arrays concatenated from all videos."""
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    valid = np.isfinite(target).all(1) & (target != INVALID_LABEL).all(1)
    ccc_v = ccc_numpy(pred[valid, 0], target[valid, 0])
    ccc_a = ccc_numpy(pred[valid, 1], target[valid, 1])
    return {"ccc_valence": ccc_v, "ccc_arousal": ccc_a, "p_va": (ccc_v + ccc_a) / 2}
