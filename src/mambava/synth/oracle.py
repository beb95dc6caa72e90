"""The truth without rendering, and what the rendered signals allow.

`simulate(cfg)` gives the per-frame truth `generate(cfg)` would write, without rendering (fast), and
`oracle_scores(truth)` how well the labels can be predicted from the rendered expression parameters one frame
at a time vs. with causal context (ridge regressions): a check of the design, e.g. P_VA 0.66 frame by frame vs.
0.92 with context for 40 training videos (`tests/synth/test_synth.py`)."""

from __future__ import annotations

import numpy as np

from mambava.core.metrics import va_scores
from mambava.synth.config import SynthConfig
from mambava.synth.dataset import people, plan
from mambava.synth.expression import truth_arrays
from mambava.synth.voice import video_audio


def simulate(cfg: SynthConfig) -> dict[str, dict]:
    """The per-frame truth `generate(cfg)` would write, without rendering anything (fast):
    {annotation name: {"split": ..., **truth arrays as in synth_meta/<name>.npz}}."""
    out = {}
    for spec in plan(cfg):
        names, _idents, tracks = people(np.random.default_rng(spec.seed), spec, cfg)
        _, heard = video_audio(
            spec.seed, [tr.va for tr in tracks], [tr.talking for tr in tracks], cfg.fps, render=False
        )
        for name, tr, voice in zip(names, tracks, heard):
            out[name] = {"split": spec.split, **truth_arrays(tr), **({"voice": voice} if cfg.voices else {})}
    return out


_OBSERVED = ("smile", "mouth_open", "eye_open", "brow_raise", "brow_inner", "yaw", "pitch")


def _observed(truth: dict) -> np.ndarray:
    """What a perfect reader of single crops sees: the expression parameters, mouth ones hidden while occluded,
    the last seen values (forward fill) where there is no crop."""
    x = np.stack([truth[k] for k in _OBSERVED], 1).astype(np.float64)
    x[truth["occluded"], :2] = 0.0
    seen = np.where(truth["crop"], np.arange(len(x)), -1)
    seen = np.maximum.accumulate(seen)
    return np.where((seen >= 0)[:, None], x[np.maximum(seen, 0)], 0.0)


def _causal_mean(x: np.ndarray, w: int) -> np.ndarray:
    c = np.concatenate([np.zeros((1, x.shape[1])), np.cumsum(x, 0)])
    i = np.arange(len(x))
    lo = np.maximum(i + 1 - w, 0)
    return (c[i + 1] - c[lo]) / (i + 1 - lo)[:, None]


def _context_features(x: np.ndarray, fps: float) -> np.ndarray:
    feats = [x]
    for seconds in (0.25, 0.5, 1.0, 2.0):
        w = max(int(seconds * fps), 2)
        mean = _causal_mean(x, w)
        feats += [mean, np.sqrt(np.maximum(_causal_mean(x**2, w) - mean**2, 0.0))]
    motion = np.abs(np.diff(x, axis=0, prepend=x[:1]))
    feats += [_causal_mean(motion, int(s * fps)) for s in (0.5, 1.0, 2.0)]
    return np.concatenate(feats, 1)


def oracle_scores(truth: dict[str, dict], fps: float = 30.0, ridge: float = 10.0) -> dict[str, dict[str, float]]:
    """How much the rendered signals allow, frame by frame and with context: ridge regressions (on features and
    their squares) from the expression parameters a perfect crop reader would see (`_observed`) to the labels,
    fitted on the train names of `truth` (from `simulate` or `read_truth`) and scored (CCC_v, CCC_a, P_VA) on
    the validation names. "frame" sees one frame; "context" adds causal means, spreads and motion energies
    over the last 0.25-2 s. A diagnostic of the generator's design (context must help), not a model."""

    def stack(split, context):
        xs, ys = [], []
        for item in truth.values():
            if item["split"] == split:
                x = _observed(item)
                xs.append(_context_features(x, fps) if context else x)
                ys.append(item["labels"])
        x, y = np.concatenate(xs), np.concatenate(ys).astype(np.float64)
        return np.concatenate([x, x**2], 1), y

    scores = {}
    for kind in ("frame", "context"):
        x, y = stack("train", kind == "context")
        valid = (y != -5.0).all(1)
        mean, std = x[valid].mean(0), x[valid].std(0) + 1e-6
        a = np.concatenate([(x[valid] - mean) / std, np.ones((int(valid.sum()), 1))], 1)
        w = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ y[valid])
        xv, yv = stack("validation", kind == "context")
        pred = np.concatenate([(xv - mean) / std, np.ones((len(xv), 1))], 1) @ w
        scores[kind] = va_scores(pred, yv)
    return scores
