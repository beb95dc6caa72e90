"""Alignment jitter: a random similarity transform (shift, scale, rotation about the crop's centre) applied to a
training crop, so that the backbone's features do not depend on exactly where the aligner put the face.

An aligner errs alike on one face over a whole video (a detector's landmarks are biased per person), so a model
run on another aligner's crops, or on a new person, meets faces shifted and scaled by a few pixels; a backbone
trained only on perfectly placed faces reads such a shift as an expression (the brows sit higher in the crop).
Training on crops jittered by about that much teaches it to measure the face, not the crop.

    matrix = jitter_matrix(112, dx=1.5, dy=-2.0, log_scale=0.03, angle_deg=2.0)
    image = warp_crop(crop, matrix)                    # the same size, edges replicated
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from mambava.core.errors import MambavaError


@dataclass(frozen=True)
class AlignJitter:
    """Ranges of the uniform random jitter, in pixels of a 112-pixel crop (scaled to the crop's size), as
    log scale and degrees. Zero everywhere: no jitter."""

    shift: float = 0.0  # each of dx, dy uniform in [-shift, shift] px at 112
    scale: float = 0.0  # log scale uniform in [-scale, scale] (0.05: about ±5%)
    angle: float = 0.0  # degrees uniform in [-angle, angle]

    def __post_init__(self) -> None:
        if min(self.shift, self.scale, self.angle) < 0:
            raise MambavaError(f"alignment jitter ranges must be >= 0, got {self}")

    @property
    def active(self) -> bool:
        return max(self.shift, self.scale, self.angle) > 0

    def sample(self, size: int, uniform) -> np.ndarray:
        """A 2x3 matrix for a size×size crop; `uniform()` returns 4 numbers in [0, 1)."""
        u = 2 * np.asarray(uniform(), dtype=np.float64) - 1
        k = size / 112.0
        return jitter_matrix(size, u[0] * self.shift * k, u[1] * self.shift * k, u[2] * self.scale, u[3] * self.angle)


def jitter_matrix(size: int, dx: float, dy: float, log_scale: float, angle_deg: float) -> np.ndarray:
    """The 2x3 similarity taking crop pixel p to c + exp(log_scale)·R(angle)·(p − c) + (dx, dy), c the crop's
    centre ((size − 1) / 2 in pixel-centre coordinates, as warpAffine counts them)."""
    s = math.exp(log_scale)
    a = math.radians(angle_deg)
    rot = s * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    c = np.full(2, (size - 1) / 2.0)
    matrix = np.zeros((2, 3))
    matrix[:, :2] = rot
    matrix[:, 2] = c - rot @ c + np.array([dx, dy])
    return matrix


def warp_crop(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The crop (H, W, 3) uint8 moved by `matrix` (output pixel M·p takes input pixel p), bilinear, edges
    replicated (a shifted face uncovers the crop's own border, not black)."""

    h, w = image.shape[:2]
    return cv2.warpAffine(
        np.ascontiguousarray(image),
        np.asarray(matrix, np.float64),
        (w, h),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
