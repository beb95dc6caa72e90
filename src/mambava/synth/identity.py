"""The appearance of one synthetic person, drawn per person from the seed: face shape and size, skin tone, hair
colour and style, eyes, brows, lips, glasses, beard, clothes, resting expression biases, and size in the frame."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


def sample_identity(rng: np.random.Generator, two_person: bool) -> Identity:
    """A new person (faces are drawn smaller in two-person videos)."""
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
