"""Random signals over time: smoothed noise, episode envelopes, Poisson events, and the true valence/arousal
trajectories built from them.

Trajectories have long-range structure: VA = tanh(mood + slow drifts (Gaussian-smoothed noise, 1.5 s and 4 s
time scales) + emotional episodes lasting 1.5-5 s (joy, laughter, anger, fear, sadness, calm, surprise,
boredom) with smooth onsets and offsets)."""

from __future__ import annotations

import math

import numpy as np


def smooth_noise(rng: np.random.Generator, n: int, sigma_frames: float) -> np.ndarray:
    """Gaussian-smoothed white noise of length n with unit standard deviation (correlation time ~ sigma)."""
    sigma = max(float(sigma_frames), 0.5)
    half = int(math.ceil(3 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    kernel /= np.sqrt(np.sum(kernel**2))
    white = rng.standard_normal(n + 2 * half)
    return np.convolve(white, kernel, mode="valid")[:n]


def envelope(n: int, start: float, on: float, hold: float, off: float) -> np.ndarray:
    """Raised-cosine episode envelope in frames: rise over `on`, plateau `hold`, decay over `off`."""
    t = np.arange(n, dtype=np.float64) - start
    env = np.zeros(n)
    rise = (t >= 0) & (t < on)
    env[rise] = 0.5 - 0.5 * np.cos(np.pi * t[rise] / on)
    env[(t >= on) & (t < on + hold)] = 1.0
    fall = (t >= on + hold) & (t < on + hold + off)
    env[fall] = 0.5 + 0.5 * np.cos(np.pi * (t[fall] - on - hold) / off)
    return env


# (valence, arousal) displacement of each kind of emotional episode
EPISODES = np.array(
    [
        [0.80, 0.45],  # joy
        [0.85, 0.95],  # laughter
        [-0.80, 0.75],  # anger
        [-0.55, 0.80],  # fear
        [-0.75, -0.45],  # sadness
        [0.45, -0.60],  # calm contentment
        [0.15, 0.95],  # surprise
        [-0.30, -0.75],  # boredom
    ]
)


def events(rng: np.random.Generator, n: int, fps: float, per_min: float, dur_s: tuple[float, float]):
    """Poisson events: list of (start_frame, length_frames)."""
    out = []
    if per_min <= 0:
        return out
    mean_gap = 60.0 * fps / per_min
    t = rng.exponential(mean_gap)
    while t < n:
        length = int(round(rng.uniform(*dur_s) * fps))
        out.append((int(t), max(length, 1)))
        t += length + rng.exponential(mean_gap)
    return out


def trajectory(rng: np.random.Generator, n: int, fps: float) -> np.ndarray:
    """True (valence, arousal) per frame, (n, 2) in (-0.95, 0.95): a mood, slow drifts (Gaussian-smoothed noise
    on 1.5 s and 4 s scales) and emotional episodes. Most of the variance is within a video (about a quarter
    between videos for 15-25 s videos), as in long Aff-Wild2 videos: a model cannot score by recognising who
    is on screen."""
    mood = np.array([rng.uniform(-0.15, 0.2), rng.uniform(-0.15, 0.2)])
    slow = np.stack(
        [
            0.42 * smooth_noise(rng, n, 1.5 * fps) + 0.22 * smooth_noise(rng, n, 4.0 * fps),
            0.38 * smooth_noise(rng, n, 1.5 * fps) + 0.22 * smooth_noise(rng, n, 4.0 * fps),
        ],
        axis=1,
    )
    episodes = np.zeros((n, 2))
    for start, _ in events(rng, n, fps, per_min=14.0, dur_s=(1.5, 5.0)):
        kind = EPISODES[rng.integers(len(EPISODES))] * rng.uniform(0.6, 1.15)
        on = rng.uniform(0.3, 0.8) * fps
        off = rng.uniform(0.5, 1.5) * fps
        hold = rng.uniform(1.0, 3.5) * fps
        episodes += envelope(n, start, on, hold, off)[:, None] * kind[None, :]
    return 0.95 * np.tanh(mood[None, :] + slow + episodes)
