"""`expression-va`: valence/arousal for real faces that needs no training, and is NOT the paper's Mamba-VA.

Each frame's seven expression probabilities (the FER2013 mini-Xception, `mambava.faces.expression`; its features
end with the 7 logits) are mapped onto the circumplex as the probability-weighted mean of the expressions'
(valence, arousal) coordinates, then smoothed causally with an exponential moving average of time constant
`TIME_CONSTANT_S` on the model's frame grid (30 fps).

The coordinates (`CIRCUMPLEX`) are the valence and arousal of the seven expressions' names in the NRC VAD Lexicon
(Mohammad, S. M. (2018). Obtaining reliable human ratings of valence, arousal, and dominance for 20,000 English
words. Proceedings of ACL 2018, 174-184; best-worst scaling ratings in [0, 1], version 1 of the lexicon), rescaled
to [-1, 1] as 2x - 1:

    expression  lexicon (V, A)   here (V, A)
    anger       0.167, 0.865     -0.666, +0.730
    disgust     0.052, 0.775     -0.896, +0.550
    fear        0.073, 0.840     -0.854, +0.680
    happiness   0.960, 0.732     +0.920, +0.464
    sadness     0.052, 0.288     -0.896, -0.424
    surprise    0.875, 0.875     +0.750, +0.750
    neutral     0.469, 0.184     -0.062, -0.632

They are ratings of the words, not of faces: a published, reproducible placement of the seven categories on the
two axes, which is all this model claims. The time constant was chosen on the real media (docs/predict.md,
The default model): see `TIME_CONSTANT_S`.

The module steps like a temporal model (`init_state`/`step`, the rows API of `StreamBatch`), so predict, stream
and serve run it where they run Mamba-VA; it has no weights (its features' extractor is the expression net).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from mambava.core.errors import MambavaError
from mambava.faces.expression import EXPRESSIONS, FEATURE_NAMES

MODEL_NAME = "expression-va"
# NRC VAD Lexicon v1 (Mohammad 2018) valence and arousal of each expression's name, in [0, 1] (module doc).
NRC_VAD = {
    "anger": (0.167, 0.865),
    "disgust": (0.052, 0.775),
    "fear": (0.073, 0.840),
    "happiness": (0.960, 0.732),
    "sadness": (0.052, 0.288),
    "surprise": (0.875, 0.875),
    "neutral": (0.469, 0.184),
}
CIRCUMPLEX = np.array([[2 * v - 1, 2 * a - 1] for v, a in (NRC_VAD[e] for e in EXPRESSIONS)], dtype=np.float32)
# Chosen on the real media (docs/predict.md, The default model; scripts/expression_media_study.py): on
# single_face.mp4 and face_noface.mov (neutral -> grin -> neutral, frames labelled by eye), the time constant with
# the smallest squared error to the labelled expression's coordinates, over a grid of 0-0.5 s (0.03 s: 0.0194;
# no smoothing: 0.0217; 0.1 s: 0.0272); it takes a third off the frame-to-frame jitter of the unsmoothed output.
TIME_CONSTANT_S = 0.03
FPS = 30.0
FEATURE_DIM = len(FEATURE_NAMES)  # the expression net's features: 128 penultimate activations, then the 7 logits
NOTICE = (
    "expression-va: FER2013 expression probabilities mapped onto the circumplex (NRC VAD Lexicon coordinates) and "
    "smoothed; not the paper's Mamba-VA model (pass --checkpoint for a trained one)"
)


@dataclass
class EMAState:
    """Streaming state of `ExpressionVA`: each row's smoothed (valence, arousal) and whether it has started.
    The rows API (`keep`, `join`, `fresh`, `rows`, `put`, `extend`) is the one `StreamBatch` drives; an average
    has no ring buffer, so `tcn` (where StreamBatch reads the ring position, `frames`) is the state itself."""

    value: torch.Tensor  # (B, 2)
    started: torch.Tensor  # (B,) bool
    frames: int = 0

    @property
    def batch_size(self) -> int:
        return int(self.value.shape[0])

    @property
    def tcn(self) -> "EMAState":
        return self

    def keep(self, rows) -> "EMAState":
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.value.device)
        self.value, self.started = self.value.index_select(0, index), self.started.index_select(0, index)
        return self

    def fresh(self, n: int) -> "EMAState":
        return EMAState(self.value.new_zeros(n, 2), self.started.new_zeros(n), self.frames)

    def join(self, n: int = 1) -> "EMAState":
        return self.extend(self.fresh(n))

    def rows(self, rows) -> "EMAState":
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.value.device)
        return EMAState(self.value.index_select(0, index), self.started.index_select(0, index), self.frames)

    def put(self, rows, other: "EMAState", turn: int = 0) -> "EMAState":
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.value.device)
        # out of place: the rows may be inference tensors (made by a step under torch.inference_mode)
        self.value = self.value.index_copy(0, index, other.value)
        self.started = self.started.index_copy(0, index, other.started)
        return self

    def extend(self, other: "EMAState") -> "EMAState":
        self.value = torch.cat([self.value, other.value])
        self.started = torch.cat([self.started, other.started])
        return self


class ExpressionVA(nn.Module):
    """Expression features (B, T, D) whose last 7 columns are the logits -> (B, T, 2) valence/arousal: the
    probabilities' weighted mean of `CIRCUMPLEX`, smoothed causally (y_0 = x_0; y_t = a y_{t-1} + (1 - a) x_t
    with a = exp(-1 / (fps * time_constant))).

    Args:
        time_constant: seconds (0: no smoothing).
        fps: the frame grid the average steps on.
        input_dim: the features' width (the expression net's 135).
    """

    kind = "expression_va"
    model_name = MODEL_NAME
    backbone = "expression"  # the feature extractor it takes (`mambava.faces.expression.ExpressionRecognizer`)

    def __init__(self, time_constant: float = TIME_CONSTANT_S, fps: float = FPS, input_dim: int = FEATURE_DIM):
        super().__init__()
        if not (time_constant >= 0 and math.isfinite(time_constant)):
            raise MambavaError(f"expression-va: the time constant must be >= 0 seconds, got {time_constant}")
        self.config = {
            "kind": self.kind,
            "input_dim": int(input_dim),
            "fps": float(fps),
            "time_constant": time_constant,
        }
        self.alpha = math.exp(-1.0 / (fps * time_constant)) if time_constant > 0 else 0.0
        # a (frozen) parameter, not a buffer: the streams read the model's device and dtype from its parameters
        self.coordinates = nn.Parameter(torch.from_numpy(CIRCUMPLEX.copy()), requires_grad=False)

    def instantaneous(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) features -> (..., 2) the unsmoothed circumplex point of each frame."""
        probabilities = torch.softmax(x[..., -len(EXPRESSIONS) :].float(), dim=-1)
        return probabilities @ self.coordinates

    @torch.no_grad()
    def forward(self, x: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """(B, T, D) -> (B, T, 2). The average runs in chunks as one product each (the chunk's decay matrix),
        exactly the recursion to float rounding, without a Python step per frame."""
        points = self.instantaneous(x)
        if self.alpha == 0.0 or points.shape[1] == 0:
            return points
        a = self.alpha
        out = torch.empty_like(points)
        previous = points[:, 0]
        for start in range(0, points.shape[1], chunk):
            block = points[:, start : start + chunk]
            n = block.shape[1]
            steps = torch.arange(n, dtype=points.dtype, device=points.device)
            lag = steps[:, None] - steps[None, :]  # t - k
            decay = torch.where(lag >= 0, (1 - a) * a ** lag.clamp(min=0), torch.zeros((), dtype=points.dtype))
            carry = a ** (steps + 1)  # what is left of the value before the chunk at step t
            out[:, start : start + n] = (
                torch.einsum("tk,bkc->btc", decay, block) + carry[None, :, None] * previous[:, None]
            )
            previous = out[:, start + n - 1]
        return out

    def init_state(self, batch_size: int = 1, device=None, dtype=None, precision: str = "fp32") -> EMAState:
        """A fresh streaming state (`precision` is accepted for the stream's sake; there are no weights)."""
        return EMAState(
            torch.zeros(batch_size, 2, device=device, dtype=dtype or torch.float32),
            torch.zeros(batch_size, dtype=torch.bool, device=device),
        )

    @torch.no_grad()
    def step(self, x: torch.Tensor, state: EMAState) -> tuple[torch.Tensor, EMAState]:
        """One frame: x (B, D) -> (y (B, 2), state); equals `forward` frame by frame. A row's first step takes
        its point as it is."""
        point = self.instantaneous(x).to(state.value.dtype)
        started = state.started[:, None]
        state.value = torch.where(started, self.alpha * state.value + (1 - self.alpha) * point, point)
        state.started = torch.ones_like(state.started)
        state.frames += 1
        return state.value.clone(), state


__all__ = ["CIRCUMPLEX", "EMAState", "ExpressionVA", "MODEL_NAME", "NOTICE", "NRC_VAD", "TIME_CONSTANT_S"]
