"""mambava serve (issue 17, item 6): the batched step over streams at their own pace, POST /predict and the
WebSocket sessions, on the real clip single_face.mp4 with tiny models built here."""

from __future__ import annotations

import numpy as np
import pytest


def test_step_some_equals_separate_streams_at_their_own_pace(tiny_mamba_va):
    """Four streams share a batch; at each step only some take part (joining late, holding, sitting out,
    leaving): each one's outputs equal a TemporalStream of its own fed the same steps, to <= 1e-5."""
    from mambava.stream import StreamBatch, TemporalStream

    model = tiny_mamba_va()
    dim = model.config.input_dim
    rng = np.random.default_rng(0)
    batch, alone = StreamBatch(model), {}
    got, want = {}, {}
    for t in range(80):
        fed = {}
        for i, key in enumerate("abcd"):
            if t < 9 * i or (key == "c" and t >= 60):
                continue
            if t == 60 and key == "c":
                continue
            if rng.random() < 0.35 and key in alone:
                continue  # sits this step out
            hold = key in alone and rng.random() < 0.2
            fed[key] = None if hold else rng.normal(size=dim).astype(np.float32)
            alone.setdefault(key, TemporalStream(model))
        if t == 60:
            batch.leave("c")
        for key, y in batch.step_some(fed).items():
            got.setdefault(key, []).append(y)
            want.setdefault(key, []).append(alone[key].step(fed[key]))
    assert set(got) == set("abcd") and min(len(v) for v in got.values()) > 20
    for key in got:
        assert np.abs(np.stack(got[key]) - np.stack(want[key])).max() <= 1e-5, key
