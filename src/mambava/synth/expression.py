"""Per-person, per-frame parameters (a `Track`): the true valence/arousal (VA), the rater's labels, the
expression and head motion VA drives, and the disturbances.

- Expression from VA: mouth curvature and brow shape follow valence (a Duchenne squint narrows the eyes when
  valence is high); eye opening and brow height follow arousal, but arousal is mostly visible only over
  several frames: blink rate, talking-mouth opening amplitude (a syllable-rate oscillation whose phase is
  random, so one frame shows one sample of it) and head-motion energy all rise with arousal. Every facial
  arousal cue follows the felt arousal plus a slow demeanour (`DEMEANOUR`: 0.25 x unit noise over ~3 s, how
  animated a face looks beyond how aroused the person is), which no amount of context removes; the voice
  (`mambava.synth.voice`) follows the felt arousal.
- Single frames are ambiguous: fast expression noise (talking, idiosyncratic twitches, ~0.2 s), per-identity
  resting biases (some faces look grumpy, some eyes are narrow), blinks, occlusions (a hand or an object
  over the mouth or an eye), no-face gaps (the person turns away).
- Annotation like human raters: labels are the true VA smoothed (~0.25 s) and delayed by 0.5-1.0 s (a
  per-video lag), plus slow rater noise; -5 runs where the rater paused, at some video starts and in some
  no-face gaps.

Determinism: `track` draws from its generator in a fixed order (trajectory, rater, expression, head,
disturbances); changing that order changes every dataset of a seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from mambava.synth.config import SynthConfig
from mambava.synth.identity import Identity
from mambava.synth.signals import events, smooth_noise, trajectory


@dataclass
class Track:
    """Everything per frame for one person of one video (arrays of length n)."""

    va: np.ndarray  # (n, 2) true, un-lagged
    labels: np.ndarray  # (n, 2) what the rater wrote, -5 where invalid
    lag: int
    smile: np.ndarray
    brow_raise: np.ndarray
    brow_inner: np.ndarray
    eye_open: np.ndarray  # including blinks
    mouth_open: np.ndarray
    yaw: np.ndarray
    pitch: np.ndarray
    roll: np.ndarray
    tx: np.ndarray
    ty: np.ndarray
    scale: np.ndarray
    present: np.ndarray  # face visible in the frame
    occluder: list  # (start, length, kind, colour, drops_face, dx, dy)
    crop: np.ndarray  # a crop is written for this frame
    talking: np.ndarray | None = None  # the mouth's talking segments (the voice is heard only within them)


# head turn (yaw) and nod (pitch): a slow posture independent of affect, plus a jitter (~0.25 s) whose energy
# grows with arousal; 1 unit of yaw shifts the inner face 9 px against its outline
POSTURE_YAW, JITTER_YAW = 0.22, 0.4
POSTURE_PITCH, JITTER_PITCH = 0.15, 0.3


# the face's arousal cues follow arousal + DEMEANOUR x (unit noise with a DEMEANOUR_S seconds correlation time)
DEMEANOUR, DEMEANOUR_S = 0.25, 3.0


def blink_profile() -> np.ndarray:
    """Eye opening multiplier over the 8 frames of a blink."""
    return np.array([0.55, 0.15, 0.0, 0.05, 0.25, 0.5, 0.75, 0.92])


def blink_rate(a: np.ndarray) -> np.ndarray:
    """Blinks per second: about 7 a minute when calm (a = -1), about 70 when aroused (a = 1)."""
    return 0.12 + 1.1 * ((a + 1) / 2) ** 2


def expression(
    v: np.ndarray,
    a: np.ndarray,
    ident: Identity,
    noise: dict,
    blink: np.ndarray,
    talking: np.ndarray,
    syllables: np.ndarray,
) -> dict[str, np.ndarray]:
    """Expression parameters from the true VA (one mapping for videos and stills). `noise` holds unit-variance
    noises (smooth in time for videos, independent for stills); `blink` multiplies the eye opening; `talking`
    and `syllables` (0..1, the phase of the syllable oscillation) drive the mouth.

    - smile (mouth-corner curvature, 7.5 px per unit at 112 px) = valence + expression noise + resting bias
    - brows: raised with arousal; inner ends pulled down with negative valence (frown)
    - eye opening: resting opening of the identity + arousal - a Duchenne squint when valence is high; blinks
    - mouth opening: talking at syllable rate with an amplitude that grows with arousal, wide when laughing
    """
    a01 = (a + 1) / 2
    smile = v + 0.25 * noise["smile"] + ident.curv_bias
    brow_raise = 1.3 * a + 0.6 * noise["brow"] + ident.brow_bias
    brow_inner = np.where(v < 0, 3.2 * v, 0.8 * v) + 0.5 * noise["inner"]
    eye = np.clip(ident.eye_base + 0.3 * a - 0.14 * np.maximum(v, 0) + 0.07 * noise["eye"], 0.12, 1.0)
    amplitude = 0.15 + 0.8 * a01**1.3
    laugh = np.clip((v - 0.4) * 2, 0, 1) * np.clip((a - 0.3) * 2, 0, 1)
    mouth_open = np.where(talking, amplitude * syllables, 0.03) + 0.45 * laugh * (0.6 + 0.4 * syllables)
    mouth_open = np.clip(mouth_open + 0.04 * noise["mouth"], 0, 1)
    return {
        "smile": smile,
        "brow_raise": brow_raise,
        "brow_inner": brow_inner,
        "eye_open": eye * blink,
        "mouth_open": mouth_open,
    }


def track(rng: np.random.Generator, n: int, fps: float, ident: Identity, cfg: SynthConfig) -> Track:
    """Everything per frame for one person of one video (see the module docstring)."""
    va = trajectory(rng, n, fps)
    labels, lag, invalid = _rater(rng, va, fps, cfg)
    fast = lambda s: smooth_noise(rng, n, s * fps)  # noqa: E731  (unit noise with a correlation time of s seconds)
    # how animated the face looks is not quite how aroused the person is: every facial arousal cue follows the
    # felt arousal plus a slow demeanour (the voice, `mambava.synth.voice`, follows the felt arousal)
    face = np.stack([va[:, 0], np.clip(va[:, 1] + DEMEANOUR * fast(DEMEANOUR_S), -1.0, 1.0)], axis=1)
    expr = _video_expression(rng, face, fps, ident, fast)
    head = _head_motion(face[:, 1], fast)
    present, crop, occluders = _disturbances(rng, n, fps, ident, cfg, invalid)
    labels[invalid] = -5.0
    return Track(va=va, labels=labels, lag=lag, **expr, **head, present=present, occluder=occluders, crop=crop)


def _rater(rng: np.random.Generator, va: np.ndarray, fps: float, cfg: SynthConfig):
    """(labels, lag in frames, invalid mask): the true VA smoothed, delayed, with slow rater noise, rounded as
    the annotation files are; -5 runs where the rater paused and at some video starts (`invalid`)."""
    n = len(va)
    alpha = 1.0 - math.exp(-1.0 / max(cfg.rater_smoothing_s * fps, 1e-6))
    smoothed = np.empty_like(va)
    acc = va[0].copy()
    for t in range(n):
        acc += alpha * (va[t] - acc)
        smoothed[t] = acc
    lag = int(round(rng.uniform(*cfg.lag_s) * fps))
    labels = smoothed[np.clip(np.arange(n) - lag, 0, n - 1)]
    labels = labels + 0.03 * np.stack([smooth_noise(rng, n, fps), smooth_noise(rng, n, fps)], axis=1)
    labels = np.round(np.clip(labels, -1.0, 1.0), 4)
    invalid = np.zeros(n, dtype=bool)
    for start, length in events(rng, n, fps, cfg.invalid_runs_per_min, dur_s=(5 / fps, 60 / fps)):
        invalid[start : start + length] = True
    if rng.random() < 0.3:
        invalid[: int(rng.integers(5, 31))] = True
    return labels, lag, invalid


def _video_expression(
    rng: np.random.Generator, va: np.ndarray, fps: float, ident: Identity, fast: Callable[[float], np.ndarray]
) -> dict[str, np.ndarray]:
    """The expression parameters of every frame, from the true VA at the frame itself, and `talking`."""
    n = len(va)
    v, a = va[:, 0], va[:, 1]
    noise = {"smile": fast(0.2), "brow": fast(0.3), "inner": fast(0.3), "eye": fast(0.25), "mouth": fast(0.15)}
    blink = _blinks(rng, a, fps)
    talking = _talking(rng, n, fps)
    # the syllable oscillation (~4 Hz, its rate wandering), with a random phase
    freq = 4.0 * (1.0 + 0.25 * fast(0.5)) / fps
    phase = np.cumsum(2 * np.pi * np.clip(freq, 1.0 / fps, None)) + rng.uniform(0, 2 * np.pi)
    syllables = 0.5 - 0.5 * np.cos(phase)
    return {**expression(v, a, ident, noise, blink, talking, syllables), "talking": talking}


def _blinks(rng: np.random.Generator, a: np.ndarray, fps: float) -> np.ndarray:
    """Eye opening multiplier per frame: blinks at the arousal-dependent `blink_rate`, at least 4 frames apart."""
    n = len(a)
    blink = np.ones(n)
    profile = blink_profile()
    rate = blink_rate(a) / fps  # blinks per frame
    t = 0
    draws = rng.random(n)
    while t < n:
        if draws[t] < rate[t]:
            seg = profile[: n - t]
            blink[t : t + len(seg)] = seg
            t += len(profile) + 4
        else:
            t += 1
    return blink


def _talking(rng: np.random.Generator, n: int, fps: float) -> np.ndarray:
    """Whether the person talks, per frame: alternating on (mean 3 s) and off (mean 1.5 s) segments."""
    talking = np.zeros(n, dtype=bool)
    t, on = 0, bool(rng.random() < 0.6)
    while t < n:
        length = int(rng.exponential(3.0 if on else 1.5) * fps) + int(0.5 * fps)
        talking[t : t + length] = on
        t += length
        on = not on
    return talking


def _head_motion(a: np.ndarray, fast: Callable[[float], np.ndarray]) -> dict[str, np.ndarray]:
    """Head pose per frame: a slow posture (independent of affect) + a jitter whose energy grows with arousal."""
    a01 = (a + 1) / 2
    energy = 0.15 + 1.1 * a01**1.5
    jitter = lambda: energy * fast(0.25)  # noqa: E731
    yaw = POSTURE_YAW * fast(4.0) + JITTER_YAW * jitter()
    pitch = POSTURE_PITCH * fast(4.0) + JITTER_PITCH * jitter()
    roll = 4.0 * fast(5.0) + 4.0 * jitter()
    tx = 10.0 * fast(5.0) + 4.0 * jitter()
    ty = 5.0 * fast(5.0) + 3.0 * jitter()
    scale = 1.0 + 0.05 * fast(6.0)
    return {"yaw": yaw, "pitch": pitch, "roll": roll, "tx": tx, "ty": ty, "scale": scale}


def _disturbances(rng: np.random.Generator, n: int, fps: float, ident: Identity, cfg: SynthConfig, invalid: np.ndarray):
    """(present, crop, occluders): no-face gaps (the rater pauses in half of them: marked in `invalid`, in
    place) and occluders (a third of them hide the face past recognition: no crop)."""
    present = np.ones(n, dtype=bool)
    crop = np.ones(n, dtype=bool)
    for start, length in events(rng, n, fps, cfg.gaps_per_min, dur_s=(0.3, 2.0)):
        present[start : start + length] = False
        if rng.random() < 0.5:
            invalid[start : start + length] = True
    occluders = []
    for start, length in events(rng, n, fps, cfg.occlusions_per_min, dur_s=(0.5, 2.0)):
        kind = int(rng.integers(3))  # 0 hand over the mouth, 1 object over an eye, 2 object over the lower face
        colour = (
            tuple(np.clip(np.array(ident.skin) * rng.uniform(0.85, 1.05), 0, 255))
            if kind == 0
            else tuple(rng.uniform(20, 235, 3))
        )
        drops = bool(rng.random() < 0.3)
        occluders.append((start, length, kind, colour, drops, rng.uniform(-4, 4), rng.uniform(-4, 4)))
        if drops:
            crop[start : start + length] = False
    crop &= present
    return present, crop, occluders


def frame_params(tr: Track, t: int) -> dict:
    """The expression and pose of frame t, as `render.render_face` takes them."""
    return {
        "smile": float(tr.smile[t]),
        "brow_raise": float(tr.brow_raise[t]),
        "brow_inner": float(tr.brow_inner[t]),
        "eye_open": float(tr.eye_open[t]),
        "mouth_open": float(tr.mouth_open[t]),
        "yaw": float(tr.yaw[t]),
        "pitch": float(tr.pitch[t]),
    }


# Kept in synth_meta/<name>.npz by rendering only (not by `simulate`): (n, 5, 2) float32 frame pixels, NaN where
# none: the drawn face's true 5 landmarks (eye centres, nose tip, mouth corners, image left first), and the
# landmarks its cropped_aligned/ crop was aligned with (true + the simulated aligner's error).
RENDERED_TRUTH = ("landmarks", "crop_landmarks")


def truth_arrays(tr: Track) -> dict[str, np.ndarray]:
    """The per-frame truth kept in synth_meta/<name>.npz (besides RENDERED_TRUTH)."""
    occluded = np.zeros(len(tr.va), dtype=bool)
    for occ in tr.occluder:
        occluded[occ[0] : occ[0] + occ[1]] = True
    f32 = lambda x: np.asarray(x, dtype=np.float32)  # noqa: E731
    return {
        "va_true": f32(tr.va),
        "labels": f32(tr.labels),
        "crop": tr.crop,
        "present": tr.present,
        "occluded": occluded & tr.present,
        "smile": f32(tr.smile),
        "brow_raise": f32(tr.brow_raise),
        "brow_inner": f32(tr.brow_inner),
        "eye_open": f32(tr.eye_open),
        "mouth_open": f32(tr.mouth_open),
        "yaw": f32(tr.yaw),
        "pitch": f32(tr.pitch),
        "roll": f32(tr.roll),
    }
