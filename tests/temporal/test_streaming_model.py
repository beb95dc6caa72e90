"""Streaming the whole model one frame at a time equals running it over the whole sequence (eval)."""

import pytest
import torch

from mambava.temporal.mamba_va import MambaVA, MambaVAConfig

SMALL = dict(
    input_dim=24,
    tcn_channels=(24, 16, 16),
    kernel_size=5,
    d_model=16,
    n_layers=2,
    d_state=4,
    dt_rank="auto",
    head_hidden=8,
)


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


# A small model whose TCN products have K = k*C_in a multiple of 16: the int8 step uses torch's int8 kernel.
INT8_KERNEL = dict(
    input_dim=32,
    tcn_channels=(32, 16, 16),
    kernel_size=3,
    d_model=16,
    n_layers=2,
    d_state=4,
    dt_rank="auto",
    head_hidden=8,
)


def _stream_with(model, x, precision):
    state = model.init_state(batch_size=x.shape[0], precision=precision)
    return torch.stack([model.step(x[:, t], state)[0] for t in range(x.shape[1])], dim=1), state


@pytest.mark.parametrize("config", [SMALL, INT8_KERNEL], ids=["int8-dequantised", "int8-kernel"])
def test_small_model_low_precision_step_within_1e2_of_full_pass(config):
    torch.manual_seed(4)
    model = MambaVA(MambaVAConfig(**config)).eval()
    x = _features(300, config["input_dim"], batch=2, seed=4)
    with torch.no_grad():
        full = model(x)
    for precision, dtype in (("bf16", torch.bfloat16), ("int8", torch.int8)):
        streamed, state = _stream_with(model, x, precision)
        assert all(p.weight.dtype == dtype for p in state.tcn.products())
        assert 0 < (streamed - full).abs().max() <= 1e-2, precision


def test_paper_model_bf16_and_int8_step_within_1e2_of_fp32():
    """200 frames, past the largest ring buffer (113 frames); the weights read per step halve and quarter."""
    torch.manual_seed(5)
    model = MambaVA(MambaVAConfig()).eval()
    x = _features(200, 1024, seed=5)
    fp32, state = _stream_with(model, x, "fp32")
    fp32_bytes = sum(p.nbytes for p in state.tcn.products())
    assert fp32_bytes == 4 * sum(p.weight.numel() for p in state.tcn.products())
    for precision, share in (("bf16", 2), ("int8", 4)):
        streamed, state = _stream_with(model, x, precision)
        assert sum(p.nbytes for p in state.tcn.products()) * share == fp32_bytes
        assert (streamed - fp32).abs().max() <= 1e-2, precision


def test_state_rows_join_and_leave_between_steps():
    """A row that joins late equals a fresh stream from that frame; dropping a row leaves the others as they were."""
    torch.manual_seed(6)
    model = MambaVA(MambaVAConfig(**SMALL)).eval()
    x = _features(80, 24, batch=3, seed=6)
    alone = [_stream(model, x[i : i + 1, start:])[0] for i, start in enumerate((0, 30, 50))]
    state = model.init_state(batch_size=1)
    rows, outputs = [0], {0: [], 1: [], 2: []}
    for t in range(80):
        if t in (30, 50):
            state.join(1)
            rows.append(1 if t == 30 else 2)
        if t == 65:  # stream 0 leaves
            state.keep([1, 2])
            rows = [1, 2]
        assert state.batch_size == len(rows)
        y, state = model.step(x[rows, t], state)
        for j, i in enumerate(rows):
            outputs[i].append(y[j])
    assert (torch.stack(outputs[0]) - alone[0][:65]).abs().max() <= 1e-5
    assert (torch.stack(outputs[1]) - alone[1]).abs().max() <= 1e-5
    assert (torch.stack(outputs[2]) - alone[2]).abs().max() <= 1e-5


def test_unknown_step_precision_is_refused():
    from mambava.core.errors import MambavaError

    model = MambaVA(MambaVAConfig(**SMALL))
    with pytest.raises(MambavaError, match=r"^step precision 'fp16': expected one of fp32, bf16, int8$"):
        model.init_state(precision="fp16")
