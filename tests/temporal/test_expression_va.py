"""expression-va (mambava.temporal.expression_va): the circumplex coordinates are the NRC VAD Lexicon's, the
smoothing is the causal average it claims (chunked forward = the recursion = the recurrent step), and it streams
in a StreamBatch like Mamba-VA (rows joining, leaving, sitting steps out)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mambava.core.errors import MambavaError
from mambava.faces.expression import EXPRESSIONS
from mambava.inference.stream import StreamBatch, TemporalStream
from mambava.temporal.expression_va import CIRCUMPLEX, TIME_CONSTANT_S, ExpressionVA


def _features(n: int, seed: int = 0, batch: int = 1) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(0, 3, (batch, n, 135)).astype(np.float32))


def test_coordinates_are_the_lexicons_rescaled():
    published = {  # NRC VAD Lexicon v1 (Mohammad 2018), valence and arousal in [0, 1]
        "anger": (0.167, 0.865),
        "disgust": (0.052, 0.775),
        "fear": (0.073, 0.840),
        "happiness": (0.960, 0.732),
        "sadness": (0.052, 0.288),
        "surprise": (0.875, 0.875),
        "neutral": (0.469, 0.184),
    }
    expected = np.array([[2 * v - 1, 2 * a - 1] for v, a in (published[e] for e in EXPRESSIONS)])
    assert np.allclose(CIRCUMPLEX, expected, atol=1e-6)
    # a one-hot expression lands on its own point (no smoothing)
    logits = torch.full((7, 135), -50.0)
    logits[:, -7:] = torch.eye(7) * 100
    assert torch.allclose(ExpressionVA(0.0)(logits[None])[0], torch.from_numpy(CIRCUMPLEX), atol=1e-6)


def test_forward_is_the_causal_average_and_equals_the_step():
    model = ExpressionVA()
    assert model.alpha == pytest.approx(math.exp(-1 / (30 * TIME_CONSTANT_S)))
    x = _features(600, batch=2)
    points = model.instantaneous(x)
    expected = torch.empty_like(points)
    expected[:, 0] = points[:, 0]
    for t in range(1, x.shape[1]):
        expected[:, t] = model.alpha * expected[:, t - 1] + (1 - model.alpha) * points[:, t]
    out = model(x, chunk=256)  # three chunks, one partial
    assert torch.allclose(out, expected, atol=1e-5)
    state = model.init_state(batch_size=2)
    stepped = torch.stack([model.step(x[:, t], state)[0] for t in range(x.shape[1])], dim=1)
    assert torch.allclose(stepped, expected, atol=1e-5) and state.frames == 600
    assert torch.equal(ExpressionVA(0.0)(x), points)
    with pytest.raises(MambavaError, match="time constant"):
        ExpressionVA(-1.0)


def test_it_streams_in_a_batch_like_mamba_va():
    """Streams joining late, leaving and sitting a step out (`step_some`) get what a TemporalStream of their own
    gets from their own features."""
    model = ExpressionVA(0.2)
    a, b = _features(30, seed=1)[0].numpy(), _features(30, seed=2)[0].numpy()
    first = TemporalStream(model).step(a[0])  # a stream's first step is its point as it is
    assert np.allclose(first, model.instantaneous(torch.from_numpy(a[:1]))[0].numpy(), atol=1e-6)
    single = TemporalStream(model)
    want_a = [single.step(f).copy() for f in a]
    single_b = TemporalStream(model)
    want_b = [single_b.step(f).copy() for f in b[:10]]
    batch = StreamBatch(model)
    batch.join("a")
    got_a = [batch.step({"a": a[0]})["a"]]
    for t in range(1, 30):
        features = {"a": a[t]}
        if t >= 20:  # b joins at step 20 and takes part every other step
            if t % 2 == 0:
                features["b"] = b[(t - 20) // 2]
        out = batch.step_some(features)
        got_a.append(out["a"])
    assert np.allclose(np.stack(got_a), np.stack(want_a), atol=1e-6)
    b_steps = [(t - 20) // 2 for t in range(20, 30) if t % 2 == 0]
    assert len(b_steps) == 5 and "b" in batch
    # b's last output equals its own stream's after the same 5 features
    assert np.allclose(batch.step_some({"b": b[5]})["b"], want_b[5], atol=1e-6)
    batch.leave("a")
    assert batch.keys == ["b"]
