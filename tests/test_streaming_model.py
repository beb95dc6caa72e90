"""Streaming the whole model one frame at a time equals running it over the whole sequence (eval)."""

import pytest
import torch

from mambava.model import MambaVA, MambaVAConfig

SMALL = dict(input_dim=24, tcn_channels=(24, 16, 16), kernel_size=5, d_model=16, n_layers=2, d_state=4,
             dt_rank="auto", head_hidden=8)



def _features(T, dim, batch=1, seed=0):
    """A smooth random feature sequence (frames of a video are correlated), plus noise."""
    g = torch.Generator().manual_seed(seed)
    walk = torch.cumsum(torch.randn(batch, T, dim, generator=g) * 0.2, dim=1)
    return walk + torch.randn(batch, T, dim, generator=g)


def _stream(model, x):
    state = model.init_state(batch_size=x.shape[0])
    outputs = []
    for t in range(x.shape[1]):
        y_t, state = model.step(x[:, t], state)
        outputs.append(y_t)
    assert state.frames == x.shape[1]
    return torch.stack(outputs, dim=1)


def test_small_model_stream_equals_full_pass():
    torch.manual_seed(0)
    model = MambaVA(MambaVAConfig(**SMALL)).train()  # step() has eval semantics whatever the mode
    x = _features(500, 24, batch=2)
    streamed = _stream(model, x)
    with torch.no_grad():
        full = model.eval()(x)
    assert streamed.shape == (2, 500, 2)
    assert (streamed - full).abs().max() <= 1e-5


def test_paper_model_stream_equals_full_pass_short():
    """Past the largest ring buffer of the paper's TCN (113 frames): every buffer has wrapped."""
    torch.manual_seed(1)
    model = MambaVA(MambaVAConfig()).eval()
    x = _features(160, 1024, seed=1)
    with torch.no_grad():
        full = model(x)
    assert (_stream(model, x) - full).abs().max() <= 1e-4


@pytest.mark.slow
def test_paper_model_stream_equals_full_pass_2000_frames():
    torch.manual_seed(2)
    model = MambaVA(MambaVAConfig()).eval()
    x = _features(2000, 1024, seed=2)
    with torch.no_grad():
        full = model(x)
    assert (_stream(model, x) - full).abs().max() <= 1e-4


def test_fresh_state_restarts_the_stream():
    torch.manual_seed(3)
    model = MambaVA(MambaVAConfig(**SMALL)).eval()
    x = _features(60, 24, seed=3)
    first = _stream(model, x)
    again = _stream(model, x)
    assert torch.equal(first, again)
    state = model.init_state()
    y0, _ = model.step(x[:, 0], state)
    assert torch.equal(y0, first[:, 0])
