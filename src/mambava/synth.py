"""Synthetic affect videos in the exact Aff-Wild2 layout: the dataset behind `mambava demo` and many tests.

Aff-Wild2 and pretrained MAE weights cannot be had offline, so this module renders its own face videos whose
expressions follow ground-truth valence/arousal (VA) trajectories, and writes them exactly as the ABAW release
lays Aff-Wild2 out (DESIGN.md §5), so that every loader of the real pipeline is exercised:

    OUT/
      videos/batch1/<v>.mp4, videos/batch2/<v>.mp4        raw videos (H.264, yuv420p, 30 fps)
      cropped_aligned/<v>/<NNNNN>.jpg                      112x112 crops aligned to the ArcFace 5-point template,
                                                           1-based frame numbers, missing where no face was found
      cropped_aligned/<v>_left/, <v>_right/                two-person videos: one crop folder per person
      VA_Estimation_Challenge/Train_Set/<v>.txt           "valence,arousal" then one line per video frame,
      VA_Estimation_Challenge/Validation_Set/<v>.txt      -5,-5 where a frame has no valid annotation
      Valence_Arousal_Estimation_Challenge_test_set_release.txt   the test-set list (annotation names)
      synth_ground_truth/Test_Set/<v>.txt                  test labels (ABAW keeps these private; we can score)
      synth_meta.json, synth_meta/<v>.npz                  the config, per-video facts, and per-frame truth
                                                           (un-lagged VA, rendered expression parameters, the
                                                           true 5 landmarks and those the crop was aligned with)

What is rendered (every number below is drawn per video from the seed):

- Trajectories with long-range structure: VA = tanh(mood + slow drifts (Gaussian-smoothed noise, 1.5 s and 4 s
  time scales) + emotional episodes lasting 1.5-5 s (joy, laughter, anger, fear, sadness, calm, surprise,
  boredom) with smooth onsets and offsets).
- Expression from VA: mouth curvature and brow shape follow valence (a Duchenne squint narrows the eyes when
  valence is high); eye opening and brow height follow arousal, but arousal is mostly visible only over
  several frames: blink rate, talking-mouth opening amplitude (a syllable-rate oscillation whose phase is
  random, so one frame shows one sample of it) and head-motion energy all rise with arousal.
- Single frames are ambiguous: fast expression noise (talking, idiosyncratic twitches, ~0.2 s), per-identity
  resting biases (some faces look grumpy, some eyes are narrow), blinks, occlusions (a hand or an object
  over the mouth or an eye), no-face gaps (the person turns away), lighting changes and sensor noise.
- Per-identity appearance: face shape and size, skin tone, hair colour and style, eyes, brows, lips,
  glasses, beard, clothes; position and scale in the frame; backgrounds differ per video.
- Annotation like human raters: labels are the true VA smoothed (~0.25 s) and delayed by 0.5-1.0 s (a
  per-video lag), plus slow rater noise; -5 runs where the rater paused, at some video starts and in some
  no-face gaps.
- Two-person videos (`two_person_fraction`): two faces side by side, each its own identity, trajectory,
  annotation file (`_left` / `_right`) and crop folder.

Crops are cut from the rendered (lit, noisy) video frame with the similarity transform that maps the face's
five landmarks (eye centres, nose tip, mouth corners) onto the 112x112 ArcFace template, which is exactly what
a face aligner does; frames without a face, or with a face hidden past recognition, have no crop.

The faces are shaded (rim, eye sockets, nose and chin shadows) so that the faces stage's MTCNN, trained on
photographs, finds them in the raw videos: with its thresholds relaxed to 0.5 it finds a face in about 95% of
the frames where one is drawn (the demo's predict stage reports the figure for its video).

Also here:
- `generate_stills(out, StillsConfig())`: an AffectNet-like still-image set (one face of a fresh identity
  per image, labelled with the VA it was rendered from, no rater lag) in the same layout, for pretraining a
  backbone before fine-tuning it on the videos.
- `simulate(cfg)`: the per-frame truth `generate(cfg)` would write, without rendering (fast), and
  `oracle_scores(truth)`: how well the labels can be predicted from the rendered expression parameters one
  frame at a time vs. with causal context (ridge regressions): a check of the design, e.g. P_VA 0.66 frame
  by frame vs. 0.92 with context for 40 training videos (`tests/test_synth.py`).

Determinism: everything derives from `SynthConfig.seed` through one numpy SeedSequence child per video, so
the same config gives byte-identical annotation files, crops and metadata whatever the number of workers.
(The H.264 stream is produced by libx264 and is not part of that promise.) Every file is written atomically
(temporary name + rename); each crop folder is filled under a temporary name and renamed when complete.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from mambava.errors import MambavaError
from mambava.fileio import atomic_open, atomic_path

# The 5-point ArcFace template for 112x112 crops (left eye, right eye, nose tip, left/right mouth corner).
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)

ANNOTATION_DIR = "VA_Estimation_Challenge"
SPLIT_DIRS = {"train": "Train_Set", "validation": "Validation_Set", "test": "Test_Set"}
CROPS_DIR = "cropped_aligned"
VIDEOS_DIR = "videos"
TEST_LIST_NAME = "Valence_Arousal_Estimation_Challenge_test_set_release.txt"
GROUND_TRUTH_DIR = "synth_ground_truth"
META_FILE = "synth_meta.json"
META_DIR = "synth_meta"
FORMAT_VERSION = 1

ProgressFn = Callable[[int, int, str], None]


# ---------------------------------------------------------------------------------------------------------
# Configuration and summary


@dataclass
class SynthConfig:
    """What to generate. Sizes are (width, height) in pixels; durations in seconds; rates per minute."""

    n_train: int = 16
    n_val: int = 4
    n_test: int = 4
    frames: tuple[int, int] = (450, 750)  # frames per video, drawn uniformly in [lo, hi]
    fps: int = 30
    size: tuple[int, int] = (256, 192)  # one-person video frame
    two_person_size: tuple[int, int] = (384, 216)
    two_person_fraction: float = 0.2
    crop_size: int = 112
    seed: int = 0
    # rater model
    lag_s: tuple[float, float] = (0.5, 1.0)
    rater_smoothing_s: float = 0.25
    invalid_runs_per_min: float = 1.5  # -5 runs (rater paused), 5..60 frames each
    # disturbances
    occlusions_per_min: float = 2.5
    gaps_per_min: float = 2.0  # no-face gaps (the person turns away), 0.3..2 s each
    noise_sigma: tuple[float, float] = (2.0, 6.0)  # sensor noise, grey levels
    # output
    write_videos: bool = True
    jpeg_quality: int = 92
    crf: int = 23
    workers: int = 0  # processes; 0 = min(2, CPUs)

    def __post_init__(self) -> None:
        self.frames = tuple(int(x) for x in self.frames)  # type: ignore[assignment]
        self.size = tuple(int(x) for x in self.size)  # type: ignore[assignment]
        self.two_person_size = tuple(int(x) for x in self.two_person_size)  # type: ignore[assignment]
        self.lag_s = tuple(float(x) for x in self.lag_s)  # type: ignore[assignment]
        self.noise_sigma = tuple(float(x) for x in self.noise_sigma)  # type: ignore[assignment]
        problems = []
        if min(self.n_train, self.n_val, self.n_test) < 0 or self.n_train + self.n_val + self.n_test == 0:
            problems.append("video counts must be >= 0 and not all 0")
        if not 30 <= self.frames[0] <= self.frames[1]:
            problems.append(f"frames must be a range lo <= hi with lo >= 30, got {self.frames}")
        if not 1 <= self.fps <= 120:
            problems.append(f"fps must be in 1..120, got {self.fps}")
        for name in ("size", "two_person_size"):
            w, h = getattr(self, name)
            if w % 2 or h % 2 or w < 128 or h < 128:
                problems.append(f"{name} must be even and at least 128x128, got {w}x{h}")
        if not 0 <= self.two_person_fraction <= 1:
            problems.append("two_person_fraction must be in [0, 1]")
        if not 0 <= self.lag_s[0] <= self.lag_s[1]:
            problems.append(f"lag_s must be a range 0 <= lo <= hi, got {self.lag_s}")
        if self.crop_size < 32:
            problems.append("crop_size must be >= 32")
        if problems:
            raise MambavaError("SynthConfig: " + "; ".join(problems))

    @classmethod
    def tiny(cls, seed: int = 0, **overrides) -> "SynthConfig":
        """A dataset of 4 short videos (one of them two-person) that generates in about a second: for tests."""
        values = dict(n_train=2, n_val=1, n_test=1, frames=(60, 90), two_person_fraction=0.0, seed=seed, workers=1)
        values.update(overrides)
        config = cls(**values)
        return config

    def to_dict(self) -> dict:
        """The fields that decide the content (`workers` does not)."""
        data = dataclasses.asdict(self)
        data.pop("workers")
        return data


@dataclass
class SynthSummary:
    """What `generate` wrote. `splits` maps train/validation/test to annotation names (`<v>` or
    `<v>_left`/`<v>_right`); `videos` are the raw video names (base names)."""

    root: Path
    splits: dict[str, list[str]]
    videos: list[str]
    frames: int  # video frames, all videos
    person_frames: int  # frames summed over annotation names (a two-person video counts twice)
    crops: int
    invalid_labels: int
    seconds: float
    config: SynthConfig = field(repr=False)

    def describe(self) -> str:
        n = {k: len(v) for k, v in self.splits.items()}
        return (
            f"{len(self.videos)} videos ({n['train']} train / {n['validation']} validation / {n['test']} test "
            f"annotation names), {self.frames} frames, {self.crops} crops "
            f"({self.person_frames - self.crops} frames without a face), {self.invalid_labels} frames labelled -5, "
            f"in {self.seconds:.1f} s -> {self.root}"
        )


# ---------------------------------------------------------------------------------------------------------
# Random signals


def _smooth_noise(rng: np.random.Generator, n: int, sigma_frames: float) -> np.ndarray:
    """Gaussian-smoothed white noise of length n with unit standard deviation (correlation time ~ sigma)."""
    sigma = max(float(sigma_frames), 0.5)
    half = int(math.ceil(3 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    kernel /= np.sqrt(np.sum(kernel**2))
    white = rng.standard_normal(n + 2 * half)
    return np.convolve(white, kernel, mode="valid")[:n]


def _envelope(n: int, start: float, on: float, hold: float, off: float) -> np.ndarray:
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
_EPISODES = np.array(
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


def _events(rng: np.random.Generator, n: int, fps: float, per_min: float, dur_s: tuple[float, float]):
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


def _trajectory(rng: np.random.Generator, n: int, fps: float) -> np.ndarray:
    """True (valence, arousal) per frame, (n, 2) in (-0.95, 0.95): a mood, slow drifts (Gaussian-smoothed noise
    on 1.5 s and 4 s scales) and emotional episodes. Most of the variance is within a video (about a quarter
    between videos for 15-25 s videos), as in long Aff-Wild2 videos: a model cannot score by recognising who
    is on screen."""
    mood = np.array([rng.uniform(-0.15, 0.2), rng.uniform(-0.15, 0.2)])
    slow = np.stack(
        [
            0.42 * _smooth_noise(rng, n, 1.5 * fps) + 0.22 * _smooth_noise(rng, n, 4.0 * fps),
            0.38 * _smooth_noise(rng, n, 1.5 * fps) + 0.22 * _smooth_noise(rng, n, 4.0 * fps),
        ],
        axis=1,
    )
    episodes = np.zeros((n, 2))
    for start, _ in _events(rng, n, fps, per_min=14.0, dur_s=(1.5, 5.0)):
        kind = _EPISODES[rng.integers(len(_EPISODES))] * rng.uniform(0.6, 1.15)
        on = rng.uniform(0.3, 0.8) * fps
        off = rng.uniform(0.5, 1.5) * fps
        hold = rng.uniform(1.0, 3.5) * fps
        episodes += _envelope(n, start, on, hold, off)[:, None] * kind[None, :]
    return 0.95 * np.tanh(mood[None, :] + slow + episodes)


# ---------------------------------------------------------------------------------------------------------
# Identities


@dataclass
class Identity:
    """Appearance of one synthetic person (colours are BGR, lengths in 112-crop pixels)."""

    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    hair_style: int  # 0 short, 1 long, 2 bald, 3 bun
    lips: tuple[float, float, float]
    iris: tuple[float, float, float]
    shirt: tuple[float, float, float]
    face_w: float
    face_h: float
    face_dy: float
    eye_w: float
    eye_h: float
    eye_base: float  # resting eye opening (0..1)
    brow_thick: int
    brow_gap: float
    mouth_w: float
    lip_thick: float
    curv_bias: float  # resting mouth curvature (smile units)
    brow_bias: float
    glasses: bool
    beard: bool
    scale: float  # face size in the video frame relative to the 112 crop


def _identity(rng: np.random.Generator, two_person: bool) -> Identity:
    tone = rng.uniform(0.0, 1.0)
    light = np.array([175.0, 200.0, 240.0])
    dark = np.array([55.0, 85.0, 130.0])
    skin = (1 - tone) * light + tone * dark + rng.uniform(-12, 12, 3)
    hair_palette = np.array(
        [[20, 20, 25], [30, 45, 70], [40, 80, 130], [80, 150, 200], [40, 60, 150], [160, 160, 165], [60, 40, 35]]
    )
    hair = hair_palette[rng.integers(len(hair_palette))] + rng.uniform(-10, 10, 3)
    lips = skin * np.array([0.65, 0.6, 0.95]) + rng.uniform(-10, 10, 3)
    iris_palette = np.array([[40, 60, 90], [120, 90, 40], [60, 120, 60], [30, 30, 40]])
    iris = iris_palette[rng.integers(len(iris_palette))]
    shirt = rng.uniform(30, 230, 3)
    return Identity(
        skin=tuple(np.clip(skin, 0, 255)),
        hair=tuple(np.clip(hair, 0, 255)),
        hair_style=int(rng.integers(4)),
        lips=tuple(np.clip(lips, 0, 255)),
        iris=tuple(float(x) for x in iris),
        shirt=tuple(shirt),
        face_w=rng.uniform(36, 44),
        face_h=rng.uniform(48, 57),
        face_dy=rng.uniform(-3, 3),
        eye_w=rng.uniform(7.5, 9.5),
        eye_h=rng.uniform(5.0, 6.5),
        eye_base=rng.uniform(0.5, 0.8),
        brow_thick=int(rng.integers(2, 5)),
        brow_gap=rng.uniform(9.0, 12.0),
        mouth_w=rng.uniform(0.92, 1.08),
        lip_thick=rng.uniform(2.0, 3.5),
        curv_bias=rng.normal(0.0, 0.1),
        brow_bias=rng.normal(0.0, 0.8),
        glasses=bool(rng.random() < 0.2),
        beard=bool(rng.random() < 0.15),
        scale=rng.uniform(0.72, 0.92) if two_person else rng.uniform(0.8, 1.1),
    )


# ---------------------------------------------------------------------------------------------------------
# Per-person, per-frame parameters


@dataclass
class _Track:
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
    occluder: list  # (start, length, kind, colour, drops_face)
    crop: np.ndarray  # a crop is written for this frame


# landmark error of the aligner that cuts the crops (pixels, per coordinate): per person, per frame
_LANDMARK_BIAS, _LANDMARK_JITTER = 0.6, 0.5

# head turn (yaw) and nod (pitch): a slow posture independent of affect, plus a jitter (~0.25 s) whose energy
# grows with arousal; 1 unit of yaw shifts the inner face 9 px against its outline
_POSTURE_YAW, _JITTER_YAW = 0.22, 0.4
_POSTURE_PITCH, _JITTER_PITCH = 0.15, 0.3


def _blink_profile() -> np.ndarray:
    """Eye opening multiplier over the 8 frames of a blink."""
    return np.array([0.55, 0.15, 0.0, 0.05, 0.25, 0.5, 0.75, 0.92])


def _blink_rate(a: np.ndarray) -> np.ndarray:
    """Blinks per second: about 7 a minute when calm (a = -1), about 70 when aroused (a = 1)."""
    return 0.12 + 1.1 * ((a + 1) / 2) ** 2


def _expression(v: np.ndarray, a: np.ndarray, ident: Identity, noise: dict, blink: np.ndarray,
                talking: np.ndarray, syllables: np.ndarray) -> dict[str, np.ndarray]:
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
    return {"smile": smile, "brow_raise": brow_raise, "brow_inner": brow_inner, "eye_open": eye * blink,
            "mouth_open": mouth_open}


def _track(rng: np.random.Generator, n: int, fps: float, ident: Identity, cfg: SynthConfig) -> _Track:
    va = _trajectory(rng, n, fps)
    v, a = va[:, 0], va[:, 1]
    a01 = (a + 1) / 2

    # rater: smoothing, lag, slow noise, -5 runs
    alpha = 1.0 - math.exp(-1.0 / max(cfg.rater_smoothing_s * fps, 1e-6))
    smoothed = np.empty_like(va)
    acc = va[0].copy()
    for t in range(n):
        acc += alpha * (va[t] - acc)
        smoothed[t] = acc
    lag = int(round(rng.uniform(*cfg.lag_s) * fps))
    labels = smoothed[np.clip(np.arange(n) - lag, 0, n - 1)]
    labels = labels + 0.03 * np.stack([_smooth_noise(rng, n, fps), _smooth_noise(rng, n, fps)], axis=1)
    labels = np.round(np.clip(labels, -1.0, 1.0), 4)
    invalid = np.zeros(n, dtype=bool)
    for start, length in _events(rng, n, fps, cfg.invalid_runs_per_min, dur_s=(5 / fps, 60 / fps)):
        invalid[start : start + length] = True
    if rng.random() < 0.3:
        invalid[: int(rng.integers(5, 31))] = True

    # expression (from the true VA at the frame itself)
    fast = lambda s: _smooth_noise(rng, n, s * fps)  # noqa: E731
    noise = {"smile": fast(0.2), "brow": fast(0.3), "inner": fast(0.3), "eye": fast(0.25), "mouth": fast(0.15)}
    blink = np.ones(n)
    profile = _blink_profile()
    rate = _blink_rate(a) / fps  # blinks per frame
    t = 0
    draws = rng.random(n)
    while t < n:
        if draws[t] < rate[t]:
            seg = profile[: n - t]
            blink[t : t + len(seg)] = seg
            t += len(profile) + 4
        else:
            t += 1
    # talking: on/off segments, a syllable-rate oscillation whose amplitude grows with arousal
    talking = np.zeros(n, dtype=bool)
    t, on = 0, bool(rng.random() < 0.6)
    while t < n:
        length = int(rng.exponential(3.0 if on else 1.5) * fps) + int(0.5 * fps)
        talking[t : t + length] = on
        t += length
        on = not on
    freq = 4.0 * (1.0 + 0.25 * fast(0.5)) / fps
    phase = np.cumsum(2 * np.pi * np.clip(freq, 1.0 / fps, None)) + rng.uniform(0, 2 * np.pi)
    syllables = 0.5 - 0.5 * np.cos(phase)
    expr = _expression(v, a, ident, noise, blink, talking, syllables)

    # head: slow posture (independent of affect) + jitter whose energy grows with arousal
    energy = 0.15 + 1.1 * a01**1.5
    jitter = lambda: energy * fast(0.25)  # noqa: E731
    yaw = _POSTURE_YAW * fast(4.0) + _JITTER_YAW * jitter()
    pitch = _POSTURE_PITCH * fast(4.0) + _JITTER_PITCH * jitter()
    roll = 4.0 * fast(5.0) + 4.0 * jitter()
    tx = 10.0 * fast(5.0) + 4.0 * jitter()
    ty = 5.0 * fast(5.0) + 3.0 * jitter()
    scale = 1.0 + 0.05 * fast(6.0)

    # no-face gaps and occlusions
    present = np.ones(n, dtype=bool)
    crop = np.ones(n, dtype=bool)
    for start, length in _events(rng, n, fps, cfg.gaps_per_min, dur_s=(0.3, 2.0)):
        present[start : start + length] = False
        if rng.random() < 0.5:
            invalid[start : start + length] = True
    occluders = []
    for start, length in _events(rng, n, fps, cfg.occlusions_per_min, dur_s=(0.5, 2.0)):
        kind = int(rng.integers(3))  # 0 hand over the mouth, 1 object over an eye, 2 object over the lower face
        colour = tuple(np.clip(np.array(ident.skin) * rng.uniform(0.85, 1.05), 0, 255)) if kind == 0 else tuple(
            rng.uniform(20, 235, 3)
        )
        drops = bool(rng.random() < 0.3)
        occluders.append((start, length, kind, colour, drops, rng.uniform(-4, 4), rng.uniform(-4, 4)))
        if drops:
            crop[start : start + length] = False
    crop &= present
    labels[invalid] = -5.0
    return _Track(
        va=va, labels=labels, lag=lag, smile=expr["smile"], brow_raise=expr["brow_raise"],
        brow_inner=expr["brow_inner"], eye_open=expr["eye_open"], mouth_open=expr["mouth_open"], yaw=yaw, pitch=pitch, roll=roll, tx=tx, ty=ty, scale=scale,
        present=present, occluder=occluders, crop=crop,
    )


# ---------------------------------------------------------------------------------------------------------
# Rendering

_CANVAS = 160  # the face is drawn on a 160x160 canvas whose central 112x112 is the template frame
_OFF = (_CANVAS - 112) / 2
_SHIFT = 4  # cv2 fixed-point bits for sub-pixel drawing
_ONE = 1 << _SHIFT


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x * _ONE)), int(round(y * _ONE))


def _poly(points) -> np.ndarray:
    return np.round(np.asarray(points, dtype=np.float64) * _ONE).astype(np.int32).reshape(-1, 1, 2)


def _face_base(ident: Identity) -> tuple[np.ndarray, np.ndarray]:
    """The parts of a face that do not change with expression, drawn once per identity: clothes, neck, hair,
    face and ears, with soft shading (darker rim, eye sockets, a nose-side and a chin shadow, lit cheeks) so
    that the face reads as a face to a detector trained on photographs. Returns (BGR uint8, uint8 mask)."""
    import cv2

    img = np.zeros((_CANVAS, _CANVAS, 3), np.uint8)
    mask = np.zeros((_CANVAS, _CANVAS), np.uint8)
    o = _OFF
    aa = cv2.LINE_AA
    fx = 56.0 + o
    fy = 62.0 + o + ident.face_dy

    def both(draw):  # draw on the image and the mask alike
        draw(img, None)
        draw(mask, 255)

    both(lambda im, c: cv2.ellipse(im, _pt(fx, fy + 98), (int(62 * _ONE), int(34 * _ONE)), 0, 0, 360,
                                   c or ident.shirt, -1, aa, _SHIFT))
    neck = tuple(0.8 * x for x in ident.skin)
    both(lambda im, c: cv2.rectangle(im, (int((fx - 15) * _ONE), int((fy + 35) * _ONE)),
                                     (int((fx + 15) * _ONE), int((fy + 72) * _ONE)), c or neck, -1, aa, _SHIFT))
    if ident.hair_style == 1:  # long hair behind the face
        both(lambda im, c: cv2.ellipse(im, _pt(fx, fy + 8), (int((ident.face_w + 9) * _ONE),
                                                             int((ident.face_h + 16) * _ONE)), 0, 0, 360,
                                       c or ident.hair, -1, aa, _SHIFT))
    if ident.hair_style == 3:  # a bun
        both(lambda im, c: cv2.circle(im, _pt(fx, fy - ident.face_h - 4), int(15 * _ONE), c or ident.hair, -1, aa,
                                      _SHIFT))
    for side in (-1, 1):  # ears
        both(lambda im, c: cv2.ellipse(im, _pt(fx + side * (ident.face_w - 1), fy + 4), (int(5 * _ONE),
                                                                                       int(9 * _ONE)), 0, 0, 360,
                                       c or tuple(0.9 * x for x in ident.skin), -1, aa, _SHIFT))
    both(lambda im, c: cv2.ellipse(im, _pt(fx, fy), (int(ident.face_w * _ONE), int(ident.face_h * _ONE)), 0, 0,
                                   360, c or ident.skin, -1, aa, _SHIFT))
    if ident.beard:  # a chin beard below the mouth, a shade between skin and hair
        beard = tuple(0.55 * a + 0.36 * b for a, b in zip(ident.skin, ident.hair))
        cv2.ellipse(img, _pt(fx, fy + 0.68 * ident.face_h), (int(0.6 * ident.face_w * _ONE),
                                                              int(0.32 * ident.face_h * _ONE)), 0, 0, 180,
                    beard, -1, aa, _SHIFT)

    # shading: a multiplicative map over the face
    yy, xx = np.mgrid[0:_CANVAS, 0:_CANVAS].astype(np.float32)
    r = np.sqrt(((xx - fx) / ident.face_w) ** 2 + ((yy - fy) / ident.face_h) ** 2)
    shade = 1.0 - 0.28 * np.clip(r, 0, 1) ** 3

    def blob(cx, cy, sx, sy, amount):
        return amount * np.exp(-0.5 * (((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2))

    for x in (38.3 + o, 73.5 + o):
        shade -= blob(x, 50.0 + o, 10.0, 6.5, 0.22)  # eye sockets
        shade += blob(x, 66.0 + o, 8.0, 6.0, 0.07)  # cheeks
    shade -= blob(61.0 + o, 68.0 + o, 3.0, 7.0, 0.14)  # beside the nose
    shade -= blob(56.0 + o, 101.0 + o, 9.0, 3.0, 0.12)  # under the lower lip
    shade += blob(52.0 + o, 30.0 + o, 14.0, 8.0, 0.08)  # forehead highlight
    inside = r <= 1.02
    img[inside] = np.clip(img[inside].astype(np.float32) * shade[inside, None], 0, 255).astype(np.uint8)

    if ident.hair_style != 2:  # hair on top, over the forehead
        for im, c in ((img, ident.hair), (mask, 255)):
            cv2.ellipse(im, _pt(fx, fy - 0.3 * ident.face_h), (int((ident.face_w + 3) * _ONE),
                                                                int(0.75 * ident.face_h * _ONE)), 0, 180, 360,
                        c, -1, aa, _SHIFT)
    return img, mask


def _render_face(ident: Identity, p: dict, base: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray,
                                                                                       np.ndarray]:
    """Draw the expression of one frame over the identity's base. Returns (BGR uint8 canvas, uint8 mask,
    5 landmarks in canvas pixels)."""
    import cv2

    img = base[0].copy()
    mask = base[1]
    o = _OFF
    aa = cv2.LINE_AA
    dx = 9.0 * p["yaw"]  # inner features shift with yaw/pitch (a cheap 3-D turn)
    dy = 7.0 * p["pitch"]

    # eyes (template positions + yaw/pitch shift)
    ex = (38.3 + o + dx, 73.5 + o + dx)
    ey = 51.6 + o + dy
    open_h = max(ident.eye_h * p["eye_open"], 0.0)
    for x in ex:
        if open_h > 0.6:
            cv2.ellipse(img, _pt(x, ey), (int(ident.eye_w * _ONE), int(open_h * _ONE)), 0, 0, 360,
                        (245, 245, 245), -1, aa, _SHIFT)
            r = min(3.2, open_h)
            cv2.ellipse(img, _pt(x + 0.6 * dx / 9.0 * 3, ey), (int(3.2 * _ONE), int(r * _ONE)), 0, 0, 360,
                        ident.iris, -1, aa, _SHIFT)
            cv2.ellipse(img, _pt(x + 0.6 * dx / 9.0 * 3, ey), (int(1.4 * _ONE), int(min(1.4, r) * _ONE)), 0, 0,
                        360, (10, 10, 10), -1, aa, _SHIFT)
        # upper lid
        cv2.ellipse(img, _pt(x, ey), (int(ident.eye_w * _ONE), int(max(open_h, 0.8) * _ONE)), 0, 180, 360,
                    (40, 40, 50), 1, aa, _SHIFT)
        if ident.glasses:
            cv2.circle(img, _pt(x, ey + 1), int(11 * _ONE), (30, 30, 30), 2, aa, _SHIFT)
    if ident.glasses:
        cv2.line(img, _pt(ex[0] + 11, ey), _pt(ex[1] - 11, ey), (30, 30, 30), 2, aa, _SHIFT)

    # brows: height with arousal, inner ends with valence
    brow_colour = tuple(0.7 * x for x in ident.hair) if ident.hair_style != 2 else (50, 50, 60)
    for side, x in ((-1, ex[0]), (1, ex[1])):
        base = ey - ident.brow_gap - p["brow_raise"]
        inner = (x - side * 8.5, base - p["brow_inner"])
        mid = (x, base - 1.5)
        outer = (x + side * 8.5, base + 1.0)
        cv2.polylines(img, [_poly([inner, mid, outer])], False, brow_colour, ident.brow_thick, aa, _SHIFT)

    # nose
    nx, ny = 56.0 + o + 1.4 * dx, 71.7 + o + dy
    cv2.polylines(img, [_poly([(nx - 0.5 * dx - 1, ny - 14), (nx - 1.5, ny - 2), (nx, ny + 1), (nx + 4, ny)])],
                  False, tuple(0.7 * x for x in ident.skin), 1, aa, _SHIFT)
    for side in (-1, 1):
        cv2.ellipse(img, _pt(nx + side * 3.5, ny + 0.5), (int(1.6 * _ONE), int(1.0 * _ONE)), 0, 0, 360,
                    tuple(0.5 * x for x in ident.skin), -1, aa, _SHIFT)

    # mouth: corners rise with the smile; opening from talking/laughing
    mx, my = 56.0 + o + dx, 92.3 + o + dy
    mw = 14.6 * ident.mouth_w * (1.0 + 0.12 * max(p["smile"], 0.0))
    curv = 7.5 * p["smile"]
    gap = 14.0 * p["mouth_open"]
    u = np.linspace(-1.0, 1.0, 17)
    bulge = 1.0 - u**2
    mid_y = my + curv * (0.5 - u**2)  # corners at my - curv/2, centre at my + curv/2
    xs = mx + mw * u
    top_in = mid_y - 0.5 * gap * bulge
    bot_in = mid_y + 0.5 * gap * bulge
    top_out = top_in - ident.lip_thick * np.sqrt(bulge)
    bot_out = bot_in + 1.3 * ident.lip_thick * np.sqrt(bulge)
    outer = np.concatenate([np.stack([xs, top_out], 1), np.stack([xs[::-1], bot_out[::-1]], 1)])
    cv2.fillPoly(img, [_poly(outer)], ident.lips, aa, _SHIFT)
    if gap > 0.8:
        inner = np.concatenate([np.stack([xs, top_in], 1), np.stack([xs[::-1], bot_in[::-1]], 1)])
        cv2.fillPoly(img, [_poly(inner)], (35, 25, 60), aa, _SHIFT)
        if gap > 3.0:
            teeth = np.concatenate([np.stack([xs[3:-3], top_in[3:-3]], 1),
                                    np.stack([xs[3:-3][::-1], np.minimum(top_in + 2.2, bot_in)[3:-3][::-1]], 1)])
            cv2.fillPoly(img, [_poly(teeth)], (235, 240, 240), aa, _SHIFT)
    else:
        cv2.polylines(img, [_poly(np.stack([xs, mid_y], 1))], False, (40, 30, 70), 1, aa, _SHIFT)

    landmarks = np.array(
        [[ex[0], ey], [ex[1], ey], [nx, ny], [mx - mw, my - curv / 2], [mx + mw, my - curv / 2]], dtype=np.float64
    )
    return img, mask, landmarks


def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity transform (rotation, uniform scale, translation; Umeyama without reflection)
    mapping src points onto dst, as a 2x3 matrix. Closed form with the points as complex numbers."""
    zs = src[:, 0] + 1j * src[:, 1]
    zd = dst[:, 0] + 1j * dst[:, 1]
    ms, md = zs.mean(), zd.mean()
    a = np.vdot(zs - ms, zd - md) / np.vdot(zs - ms, zs - ms).real  # scale * e^{i angle}
    b = md - a * ms
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]])


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    import cv2

    c1, c2 = rng.uniform(40, 220, 3), rng.uniform(40, 220, 3)
    ramp = np.linspace(0.0, 1.0, h)[:, None, None] if rng.random() < 0.5 else np.linspace(0.0, 1.0, w)[None, :, None]
    bg = np.broadcast_to(c1 * (1 - ramp) + c2 * ramp, (h, w, 3)).astype(np.uint8).copy()
    for _ in range(int(rng.integers(2, 6))):  # furniture, pictures, windows
        colour = tuple(float(x) for x in rng.uniform(20, 240, 3))
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        if rng.random() < 0.6:
            cv2.rectangle(bg, (x0, y0), (x0 + int(rng.integers(20, 90)), y0 + int(rng.integers(20, 90))), colour, -1)
        else:
            cv2.circle(bg, (x0, y0), int(rng.integers(8, 40)), colour, -1, cv2.LINE_AA)
    return cv2.GaussianBlur(bg, (0, 0), 1.2)


def _composite(frame: np.ndarray, canvas: np.ndarray, mask: np.ndarray, m: np.ndarray) -> None:
    """Warp the canvas by m (canvas -> frame) and alpha-blend it into frame, in place, inside its bounding box."""
    import cv2

    h, w = frame.shape[:2]
    corners = np.array([[0, 0, 1], [_CANVAS, 0, 1], [0, _CANVAS, 1], [_CANVAS, _CANVAS, 1]], np.float64) @ m.T
    x0, y0 = np.floor(corners.min(0)).astype(int)
    x1, y1 = np.ceil(corners.max(0)).astype(int)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 <= x0 or y1 <= y0:
        return
    local = m.copy()
    local[:, 2] -= (x0, y0)
    size = (x1 - x0, y1 - y0)
    face = cv2.warpAffine(canvas, local, size, flags=cv2.INTER_LINEAR)
    alpha = cv2.warpAffine(mask, local, size, flags=cv2.INTER_LINEAR).astype(np.float32)[..., None] * (1 / 255)
    roi = frame[y0:y1, x0:x1].astype(np.float32)
    frame[y0:y1, x0:x1] = (roi + (face.astype(np.float32) - roi) * alpha + 0.5).astype(np.uint8)


def _draw_occluder(frame: np.ndarray, lm: np.ndarray, scale: float, occ: tuple, t: int) -> None:
    import cv2

    start, length, kind, colour, _drops, ox, oy = occ
    wobble = math.sin((t - start) / 7.0)
    aa = cv2.LINE_AA
    if kind == 0:  # a hand over the mouth
        c = lm[3:5].mean(0) + (ox + 2 * wobble, oy + 3)
        cv2.ellipse(frame, _pt(*c), (int(22 * scale * _ONE), int(15 * scale * _ONE)), 10 * wobble, 0, 360, colour, -1,
                    aa, _SHIFT)
        for k in range(4):  # fingers
            fx = c[0] - 15 * scale + 10 * scale * k
            cv2.ellipse(frame, _pt(fx, c[1] - 14 * scale), (int(4 * scale * _ONE), int(10 * scale * _ONE)), 0, 0,
                        360, colour, -1, aa, _SHIFT)
    elif kind == 1:  # an object over one eye
        c = lm[0 if ox < 0 else 1] + (ox, oy + wobble)
        cv2.rectangle(frame, _pt(c[0] - 14 * scale, c[1] - 12 * scale), _pt(c[0] + 14 * scale, c[1] + 12 * scale),
                      colour, -1, aa, _SHIFT)
    else:  # an object (cup, microphone) over the lower face
        c = lm[2:5].mean(0) + (ox + 3 * wobble, oy + 6 * scale)
        cv2.rectangle(frame, _pt(c[0] - 16 * scale, c[1] - 10 * scale), _pt(c[0] + 16 * scale, c[1] + 40 * scale),
                      colour, -1, aa, _SHIFT)


def _frame_params(tr: _Track, t: int) -> dict:
    return {
        "smile": float(tr.smile[t]), "brow_raise": float(tr.brow_raise[t]), "brow_inner": float(tr.brow_inner[t]),
        "eye_open": float(tr.eye_open[t]), "mouth_open": float(tr.mouth_open[t]), "yaw": float(tr.yaw[t]),
        "pitch": float(tr.pitch[t]),
    }


# ---------------------------------------------------------------------------------------------------------
# One video


@dataclass
class _VideoSpec:
    index: int
    name: str
    split: str
    two_person: bool
    n_frames: int
    seed: np.random.SeedSequence
    batch: str


def _annotation_names(spec: _VideoSpec) -> list[str]:
    return [f"{spec.name}_left", f"{spec.name}_right"] if spec.two_person else [spec.name]


def _people(rng: np.random.Generator, spec: _VideoSpec, cfg: SynthConfig):
    """(annotation names, identities, tracks) of one video: the first draws from the video's generator."""
    names = _annotation_names(spec)
    idents = [_identity(rng, spec.two_person) for _ in names]
    tracks = [_track(rng, spec.n_frames, cfg.fps, ident, cfg) for ident in idents]
    return names, idents, tracks


# Kept in synth_meta/<name>.npz by rendering only (not by `simulate`): (n, 5, 2) float32 frame pixels, NaN where
# none: the drawn face's true 5 landmarks (eye centres, nose tip, mouth corners, image left first), and the
# landmarks its cropped_aligned/ crop was aligned with (true + the simulated aligner's error).
RENDERED_TRUTH = ("landmarks", "crop_landmarks")


def _truth_arrays(tr: _Track) -> dict[str, np.ndarray]:
    """The per-frame truth kept in synth_meta/<name>.npz (besides RENDERED_TRUTH)."""
    occluded = np.zeros(len(tr.va), dtype=bool)
    for occ in tr.occluder:
        occluded[occ[0] : occ[0] + occ[1]] = True
    f32 = lambda x: np.asarray(x, dtype=np.float32)  # noqa: E731
    return {
        "va_true": f32(tr.va), "labels": f32(tr.labels), "crop": tr.crop, "present": tr.present,
        "occluded": occluded & tr.present, "smile": f32(tr.smile), "brow_raise": f32(tr.brow_raise),
        "brow_inner": f32(tr.brow_inner), "eye_open": f32(tr.eye_open), "mouth_open": f32(tr.mouth_open),
        "yaw": f32(tr.yaw), "pitch": f32(tr.pitch), "roll": f32(tr.roll),
    }


def _write_text(path: Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)


def _annotation_text(labels: np.ndarray) -> str:
    lines = ["valence,arousal"]
    for v, a in labels:
        lines.append("-5,-5" if v == -5.0 else f"{v:.4f},{a:.4f}")
    return "\n".join(lines) + "\n"


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move a completed temporary folder into place, replacing an older one."""
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)


def _render_video(root: Path, spec: _VideoSpec, cfg: SynthConfig) -> dict:
    """Render one video, write its raw file, crops, annotation(s) and per-frame truth; return its facts."""
    import cv2

    cv2.setNumThreads(1)
    rng = np.random.default_rng(spec.seed)
    fps = cfg.fps
    n = spec.n_frames
    w, h = cfg.two_person_size if spec.two_person else cfg.size
    names, idents, tracks = _people(rng, spec, cfg)
    background = _background(rng, w, h)
    bases = [_face_base(ident) for ident in idents]
    # where each face sits (canvas point (80, 88) = the face centre goes to (cx, cy))
    if spec.two_person:
        anchors = [(w * 0.27 + rng.uniform(-6, 6), h * 0.5 + rng.uniform(-8, 8)),
                   (w * 0.73 + rng.uniform(-6, 6), h * 0.5 + rng.uniform(-8, 8))]
    else:
        anchors = [(w / 2 + rng.uniform(-25, 25), h / 2 + rng.uniform(-10, 12))]
    # lighting: slow gain drift, an occasional switch, a directional gradient that wanders; colour tint
    gain = 1.0 + 0.12 * _smooth_noise(rng, n, 4.0 * fps)
    if rng.random() < 0.4:
        switch = int(rng.integers(n // 4, 3 * n // 4))
        gain[switch:] *= rng.uniform(0.7, 1.3)
    grad_strength = 0.25 * np.abs(_smooth_noise(rng, n, 5.0 * fps))
    grad_angle = rng.uniform(0, 2 * np.pi) + 0.8 * _smooth_noise(rng, n, 6.0 * fps)
    tint = rng.uniform(0.88, 1.12, 3).astype(np.float32)
    sigma = rng.uniform(*cfg.noise_sigma)
    noise_bank = (rng.standard_normal((4, h + 8, w + 8, 3)) * sigma).astype(np.float32)
    noise_pick = rng.integers(0, 4, n)
    noise_off = rng.integers(0, 9, (n, 2))
    # the aligner's landmark error, in frame pixels: a bias per person (a detector errs alike on one face) and a
    # per-frame jitter (together ~2% of the eye distance; MTCNN errs by ~5% on these faces, see README)
    jitter = rng.normal(0.0, _LANDMARK_BIAS, (len(names), 1, 5, 2)) + rng.normal(0.0, _LANDMARK_JITTER,
                                                                                  (len(names), n, 5, 2))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xx = (xx - w / 2) / (w / 2)
    yy = (yy - h / 2) / (h / 2)

    crops_root = root / CROPS_DIR
    crops_root.mkdir(parents=True, exist_ok=True)
    tmp_dirs = []
    for name in names:
        tmp = crops_root / f".{name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        tmp_dirs.append(tmp)

    writer = _VideoWriter(root / VIDEOS_DIR / spec.batch / f"{spec.name}.mp4", w, h, fps, cfg.crf) if \
        cfg.write_videos else None
    template = ARCFACE_TEMPLATE_112 * (cfg.crop_size / 112.0)
    n_crops = [0] * len(names)
    # per person and frame, in frame pixels: the drawn face's true landmarks, and those the crop was aligned with
    true_lm = np.full((len(names), n, 5, 2), np.nan, np.float32)
    crop_lm = np.full((len(names), n, 5, 2), np.nan, np.float32)
    try:
        for t in range(n):
            frame = background.copy()
            landmarks = []
            for k, (ident, tr) in enumerate(zip(idents, tracks)):
                s = ident.scale * tr.scale[t]
                ang = math.radians(tr.roll[t])
                rot = s * np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
                centre = np.array([anchors[k][0] + tr.tx[t], anchors[k][1] + tr.ty[t]])
                m = np.zeros((2, 3))
                m[:, :2] = rot
                m[:, 2] = centre - rot @ np.array([_CANVAS / 2, _CANVAS / 2 + 8])
                if tr.present[t]:
                    canvas, mask, lm = _render_face(ident, _frame_params(tr, t), bases[k])
                    _composite(frame, canvas, mask, m)
                    lm_frame = lm @ m[:, :2].T + m[:, 2]
                    for occ in tr.occluder:
                        if occ[0] <= t < occ[0] + occ[1]:
                            _draw_occluder(frame, lm_frame, s, occ, t)
                    landmarks.append(lm_frame)
                    true_lm[k, t] = lm_frame
                else:  # turned away: the back of the head
                    c = centre + rot @ np.array([0.0, -8.0])
                    cv2.ellipse(frame, _pt(*c), (int(ident.face_w * 1.05 * s * _ONE), int(ident.face_h * s * _ONE)),
                                math.degrees(ang), 0, 360, ident.hair if ident.hair_style != 2 else ident.skin, -1,
                                cv2.LINE_AA, _SHIFT)
                    landmarks.append(None)
            # lighting and sensor noise
            light = (gain[t] * grad_strength[t] * math.cos(grad_angle[t])) * xx
            light += (gain[t] * grad_strength[t] * math.sin(grad_angle[t])) * yy
            light += gain[t]
            oy, ox = noise_off[t]
            lit = cv2.multiply(frame, cv2.merge([light * tint[0], light * tint[1], light * tint[2]]), dtype=cv2.CV_32F)
            cv2.add(lit, noise_bank[noise_pick[t], oy:oy + h, ox:ox + w], dst=lit)
            frame = cv2.convertScaleAbs(lit)  # rounds and saturates to uint8 (values are >= 0 after abs)
            if writer is not None:
                writer.write(frame)
            for k, lm_frame in enumerate(landmarks):
                if lm_frame is None or not tracks[k].crop[t]:
                    continue
                align = _similarity(lm_frame + jitter[k, t], template)
                crop_lm[k, t] = lm_frame + jitter[k, t]
                crop = cv2.warpAffine(frame, align, (cfg.crop_size, cfg.crop_size), flags=cv2.INTER_LINEAR,
                                      borderMode=cv2.BORDER_REPLICATE)
                ok, data = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
                if not ok:
                    raise MambavaError(f"{spec.name}: JPEG encoding failed at frame {t + 1}")
                (tmp_dirs[k] / f"{t + 1:05d}.jpg").write_bytes(data.tobytes())
                n_crops[k] += 1
        if writer is not None:
            writer.close()
            writer = None
    finally:
        if writer is not None:
            writer.abort()

    facts = {"name": spec.name, "split": spec.split, "two_person": spec.two_person, "n_frames": n,
             "size": [w, h], "fps": fps, "video": f"{VIDEOS_DIR}/{spec.batch}/{spec.name}.mp4" if cfg.write_videos
             else None, "persons": []}
    for k, (name, ident, tr) in enumerate(zip(names, idents, tracks)):
        _replace_dir(tmp_dirs[k], crops_root / name)
        label_dir = (root / ANNOTATION_DIR / SPLIT_DIRS[spec.split]) if spec.split != "test" else (
            root / GROUND_TRUTH_DIR / SPLIT_DIRS["test"])
        _write_text(label_dir / f"{name}.txt", _annotation_text(tr.labels))
        with atomic_path(root / META_DIR / f"{name}.npz") as tmp:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, **_truth_arrays(tr), landmarks=true_lm[k], crop_landmarks=crop_lm[k])
        facts["persons"].append({
            "name": name, "lag_frames": tr.lag, "crops": n_crops[k],
            "invalid_labels": int((tr.labels[:, 0] == -5.0).sum()),
            "identity": {key: (round(val, 4) if isinstance(val, float) else
                               [round(x, 1) for x in val] if isinstance(val, tuple) else val)
                         for key, val in dataclasses.asdict(ident).items()},
        })
    return facts


class _VideoWriter:
    """H.264 (yuv420p) mp4 through PyAV, written to a temporary file and renamed when closed."""

    def __init__(self, path: Path, width: int, height: int, fps: int, crf: int):
        import av

        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
        self.container = av.open(str(self.tmp), mode="w", format="mp4")
        self.stream = self.container.add_stream("libx264", rate=fps)
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"crf": str(crf), "preset": "ultrafast"}
        self.stream.thread_count = 1

    def write(self, bgr: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(bgr, format="bgr24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self.container.close()
        finally:
            if self.tmp.exists():
                self.tmp.unlink()


# ---------------------------------------------------------------------------------------------------------
# The whole dataset


def _plan(cfg: SynthConfig) -> list[_VideoSpec]:
    root_seq = np.random.SeedSequence(cfg.seed)
    plan_rng = np.random.default_rng(root_seq.spawn(1)[0])
    total = cfg.n_train + cfg.n_val + cfg.n_test
    children = np.random.SeedSequence(cfg.seed, spawn_key=(1,)).spawn(total)
    numbers = plan_rng.permutation(np.arange(1, 10 * total + 1))[:total]
    splits = ["train"] * cfg.n_train + ["validation"] * cfg.n_val + ["test"] * cfg.n_test
    specs = []
    for i, split in enumerate(splits):
        two = bool(plan_rng.random() < cfg.two_person_fraction)
        n = int(plan_rng.integers(cfg.frames[0], cfg.frames[1] + 1))
        w, h = cfg.two_person_size if two else cfg.size
        specs.append(_VideoSpec(index=i, name=f"{numbers[i]}-{cfg.fps}-{w}x{h}", split=split, two_person=two,
                                n_frames=n, seed=children[i], batch="batch1" if i % 2 == 0 else "batch2"))
    return specs


def _prepare_root(root: Path) -> None:
    """Refuse to write into a folder that holds something other than an earlier synthetic dataset; clear an
    earlier dataset's folders so that no stale video survives."""
    if root.exists() and any(root.iterdir()):
        if not (root / META_FILE).exists():
            raise MambavaError(
                f"{root}: folder is not empty and holds no {META_FILE} (not a synthetic dataset): "
                "choose an empty or new folder"
            )
        for sub in (VIDEOS_DIR, CROPS_DIR, ANNOTATION_DIR, GROUND_TRUTH_DIR, META_DIR):
            if (root / sub).exists():
                shutil.rmtree(root / sub)
        for path in (root / TEST_LIST_NAME, root / META_FILE):
            if path.exists():
                path.unlink()
    root.mkdir(parents=True, exist_ok=True)


def _job(args: tuple) -> dict:
    root, spec, cfg = args
    return _render_video(Path(root), spec, cfg)


def _run_jobs(fn, jobs: list, workers: int, progress: ProgressFn | None, names: list[str],
              order: list[int] | None = None) -> list:
    """fn(job) for every job, in worker processes (spawned, so safe beside torch) when workers > 1; results in
    job order. `order` is the submission order (longest first keeps the workers busy to the end)."""
    workers = max(1, min(workers or min(2, os.cpu_count() or 1), len(jobs)))
    results: list = [None] * len(jobs)
    if progress:
        progress(0, len(jobs), "")
    if workers == 1:
        for i, job in enumerate(jobs):
            results[i] = fn(job)
            if progress:
                progress(i + 1, len(jobs), names[i])
        return results
    import multiprocessing
    from concurrent.futures import as_completed

    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(fn, jobs[i]): i for i in (order or range(len(jobs)))}
        for done, future in enumerate(as_completed(futures), start=1):
            i = futures[future]
            results[i] = future.result()
            if progress:
                progress(done, len(jobs), names[i])
    return results


def generate(out_dir: str | os.PathLike, cfg: SynthConfig | None = None,
             progress: ProgressFn | None = None) -> SynthSummary:
    """Generate a synthetic dataset under `out_dir` (see the module docstring). `progress(done, total, name)` is
    called after each video. An existing synthetic dataset there is replaced; any other non-empty folder is an
    error."""
    cfg = cfg or SynthConfig()
    started = time.perf_counter()
    root = Path(out_dir)
    _prepare_root(root)
    specs = _plan(cfg)
    order = sorted(range(len(specs)), key=lambda i: -specs[i].n_frames * (2 if specs[i].two_person else 1))
    facts = _run_jobs(_job, [(str(root), spec, cfg) for spec in specs], cfg.workers, progress,
                      [spec.name for spec in specs], order)

    splits: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for f in facts:
        splits[f["split"]].extend(p["name"] for p in f["persons"])
    for split in splits:
        splits[split].sort()
    (root / ANNOTATION_DIR / SPLIT_DIRS["train"]).mkdir(parents=True, exist_ok=True)
    (root / ANNOTATION_DIR / SPLIT_DIRS["validation"]).mkdir(parents=True, exist_ok=True)
    _write_text(root / TEST_LIST_NAME, "".join(f"{name}\n" for name in splits["test"]))
    meta = {
        "generator": "mambava.synth", "format_version": FORMAT_VERSION, "config": cfg.to_dict(),
        "splits": splits, "videos": facts,
    }
    _write_text(root / META_FILE, json.dumps(meta, indent=1) + "\n")
    return SynthSummary(
        root=root, splits=splits, videos=[f["name"] for f in facts],
        frames=sum(f["n_frames"] for f in facts),
        person_frames=sum(f["n_frames"] * len(f["persons"]) for f in facts),
        crops=sum(p["crops"] for f in facts for p in f["persons"]),
        invalid_labels=sum(p["invalid_labels"] for f in facts for p in f["persons"]),
        seconds=time.perf_counter() - started, config=cfg,
    )


# ---------------------------------------------------------------------------------------------------------
# Stills: an AffectNet-like image set for backbone pretraining


@dataclass
class StillsConfig:
    """Single face images of fresh identities, each with the VA its expression was rendered from (no rater lag),
    for pretraining a backbone before fine-tuning on the videos, as real backbones are pretrained on still-image
    sets. Written in the Aff-Wild2 layout with albums of `per_album` images as "videos"."""

    n_train: int = 2400
    n_val: int = 400
    per_album: int = 100
    size: tuple[int, int] = (256, 192)
    crop_size: int = 112
    seed: int = 0
    noise_sigma: tuple[float, float] = (2.0, 6.0)
    occlusion_fraction: float = 0.05
    jpeg_quality: int = 92
    workers: int = 0

    def __post_init__(self) -> None:
        self.size = tuple(int(x) for x in self.size)  # type: ignore[assignment]
        self.noise_sigma = tuple(float(x) for x in self.noise_sigma)  # type: ignore[assignment]
        if self.n_train < 1 or self.n_val < 0 or self.per_album < 1:
            raise MambavaError("StillsConfig: n_train >= 1, n_val >= 0 and per_album >= 1 are required")

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.pop("workers")
        return data


def _still(rng: np.random.Generator, cfg: StillsConfig) -> tuple[np.ndarray, tuple[float, float]]:
    """One aligned crop of a new identity with a random expression, and its (valence, arousal)."""
    import cv2

    ident = _identity(rng, two_person=False)
    while True:  # VA uniform in the disc of radius 0.95
        va = rng.uniform(-0.95, 0.95, 2)
        if va @ va <= 0.95**2:
            break
    v, a = np.array([va[0]]), np.array([va[1]])
    noise = {k: rng.standard_normal(1) for k in ("smile", "brow", "inner", "eye", "mouth")}
    blink = np.ones(1)
    profile = _blink_profile()
    if rng.random() < _blink_rate(a)[0] * len(profile) / 30.0:
        blink[0] = profile[rng.integers(len(profile))]
    talking = np.array([rng.random() < 0.67])
    syllables = np.array([0.5 - 0.5 * math.cos(rng.uniform(0, 2 * math.pi))])
    expr = _expression(v, a, ident, noise, blink, talking, syllables)
    energy = 0.15 + 1.1 * ((a[0] + 1) / 2) ** 1.5
    params = {key: float(val[0]) for key, val in expr.items()}
    params["yaw"] = _POSTURE_YAW * rng.standard_normal() + _JITTER_YAW * energy * rng.standard_normal()
    params["pitch"] = _POSTURE_PITCH * rng.standard_normal() + _JITTER_PITCH * energy * rng.standard_normal()

    w, h = cfg.size
    frame = _background(rng, w, h)
    canvas, mask, lm = _render_face(ident, params, _face_base(ident))
    s = ident.scale * rng.uniform(0.95, 1.05)
    ang = math.radians(rng.normal(0, 5))
    rot = s * np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]])
    centre = np.array([w / 2 + rng.uniform(-25, 25), h / 2 + rng.uniform(-10, 12)])
    m = np.zeros((2, 3))
    m[:, :2] = rot
    m[:, 2] = centre - rot @ np.array([_CANVAS / 2, _CANVAS / 2 + 8])
    _composite(frame, canvas, mask, m)
    lm_frame = lm @ m[:, :2].T + m[:, 2]
    if rng.random() < cfg.occlusion_fraction:
        colour = tuple(float(x) for x in rng.uniform(20, 235, 3))
        _draw_occluder(frame, lm_frame, s, (0, 30, int(rng.integers(3)), colour, False, rng.uniform(-4, 4),
                                            rng.uniform(-4, 4)), int(rng.integers(30)))
    error = math.hypot(_LANDMARK_BIAS, _LANDMARK_JITTER)
    align = _similarity(lm_frame + rng.normal(0.0, error, (5, 2)), ARCFACE_TEMPLATE_112 * (cfg.crop_size / 112.0))
    crop = cv2.warpAffine(frame, align, (cfg.crop_size, cfg.crop_size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    # lighting (gain, a directional gradient, a tint) and sensor noise, applied to the crop only (cheaper)
    c = cfg.crop_size
    angle = rng.uniform(0, 2 * math.pi)
    ramp = np.linspace(-0.6, 0.6, c, dtype=np.float32)
    light = rng.uniform(0.8, 1.2) * (1 + rng.uniform(0, 0.25) * (ramp[None, :] * math.cos(angle)
                                                                 + ramp[:, None] * math.sin(angle)))
    tint = rng.uniform(0.88, 1.12, 3).astype(np.float32)
    lit = crop.astype(np.float32) * (light[..., None] * tint)
    lit += rng.standard_normal((c, c, 3), dtype=np.float32) * np.float32(rng.uniform(*cfg.noise_sigma))
    crop = cv2.convertScaleAbs(lit)
    return crop, (float(va[0]), float(va[1]))


def _album_job(args: tuple) -> dict:
    import cv2

    cv2.setNumThreads(1)
    root, name, split, n, seed, cfg = args
    root = Path(root)
    rng = np.random.default_rng(seed)
    tmp = root / CROPS_DIR / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    labels = np.zeros((n, 2))
    for i in range(n):
        crop, labels[i] = _still(rng, cfg)
        ok, data = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
        if not ok:
            raise MambavaError(f"{name}: JPEG encoding failed at image {i + 1}")
        (tmp / f"{i + 1:05d}.jpg").write_bytes(data.tobytes())
    _replace_dir(tmp, root / CROPS_DIR / name)
    _write_text(root / ANNOTATION_DIR / SPLIT_DIRS[split] / f"{name}.txt", _annotation_text(np.round(labels, 4)))
    return {"name": name, "split": split, "images": n}


def generate_stills(out_dir: str | os.PathLike, cfg: StillsConfig | None = None,
                    progress: ProgressFn | None = None) -> SynthSummary:
    """Write a still-image set (see StillsConfig) under `out_dir` in the Aff-Wild2 layout: albums
    `still-NNNN` as videos of Train_Set / Validation_Set, one crop and one annotation line per image."""
    cfg = cfg or StillsConfig()
    started = time.perf_counter()
    root = Path(out_dir)
    _prepare_root(root)
    jobs = []
    children = np.random.SeedSequence(cfg.seed, spawn_key=(2,)).spawn(
        math.ceil(cfg.n_train / cfg.per_album) + math.ceil(cfg.n_val / cfg.per_album))
    for split, total in (("train", cfg.n_train), ("validation", cfg.n_val)):
        for start in range(0, total, cfg.per_album):
            k = len(jobs)
            jobs.append((str(root), f"still-{k + 1:04d}", split, min(cfg.per_album, total - start), children[k], cfg))
    (root / ANNOTATION_DIR / SPLIT_DIRS["validation"]).mkdir(parents=True, exist_ok=True)
    facts = _run_jobs(_album_job, jobs, cfg.workers, progress, [j[1] for j in jobs])
    splits: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for f in facts:
        splits[f["split"]].append(f["name"])
    meta = {"generator": "mambava.synth.stills", "format_version": FORMAT_VERSION, "config": cfg.to_dict(),
            "splits": splits, "albums": facts}
    _write_text(root / META_FILE, json.dumps(meta, indent=1) + "\n")
    images = sum(f["images"] for f in facts)
    return SynthSummary(root=root, splits=splits, videos=[], frames=images, person_frames=images, crops=images,
                        invalid_labels=0, seconds=time.perf_counter() - started, config=cfg)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------
# Reading back the truth


def read_meta(root: str | os.PathLike) -> dict:
    """The generator's `synth_meta.json` of a dataset root (MambavaError if it is not a synthetic dataset)."""
    path = Path(root) / META_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MambavaError(f"{path}: not found ({root} is not a synthetic dataset from mambava synth)") from None
    except (OSError, json.JSONDecodeError) as error:
        raise MambavaError(f"{path}: unreadable ({error})") from error


def ground_truth_path(root: str | os.PathLike, name: str) -> Path:
    """Labels of an annotation name: the Aff-Wild2 file for train/validation, synth_ground_truth/ for test."""
    root = Path(root)
    for folder in (root / ANNOTATION_DIR / SPLIT_DIRS["train"], root / ANNOTATION_DIR / SPLIT_DIRS["validation"],
                   root / GROUND_TRUTH_DIR / SPLIT_DIRS["test"]):
        if (folder / f"{name}.txt").exists():
            return folder / f"{name}.txt"
    raise MambavaError(f"{root}: no labels for {name!r}")


def read_truth(root: str | os.PathLike, name: str) -> dict[str, np.ndarray]:
    """Per-frame truth of one annotation name (`synth_meta/<name>.npz`): va_true, labels, crop, present, ..."""
    path = Path(root) / META_DIR / f"{name}.npz"
    if not path.exists():
        raise MambavaError(f"{path}: not found")
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


# ---------------------------------------------------------------------------------------------------------
# Simulation without rendering, and what the rendered signals allow


def simulate(cfg: SynthConfig) -> dict[str, dict]:
    """The per-frame truth `generate(cfg)` would write, without rendering anything (fast):
    {annotation name: {"split": ..., **truth arrays as in synth_meta/<name>.npz}}."""
    out = {}
    for spec in _plan(cfg):
        names, _idents, tracks = _people(np.random.default_rng(spec.seed), spec, cfg)
        for name, tr in zip(names, tracks):
            out[name] = {"split": spec.split, **_truth_arrays(tr)}
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
    from mambava.metrics import va_scores

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
