"""The selective scan: the fast chunked kernel against the sequential definition, gradients included."""

import math

import pytest
import torch

from mambava.core.errors import MambavaError
from mambava.temporal.ops import (
    choose_chunking,
    mamba_ssm_available,
    selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
    selective_state_update,
)


def _inputs(batch, T, dim, n, seed, dtype=torch.float32, dt_scale=0.5, initial_state=False):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    return dict(
        u=rnd(batch, T, dim),
        delta=rnd(batch, T, dim, scale=dt_scale),
        A=-torch.exp(rnd(dim, n, scale=0.5)),
        B=rnd(batch, T, n),
        C=rnd(batch, T, n),
        D=rnd(dim),
        z=rnd(batch, T, dim),
        delta_bias=rnd(dim, scale=0.1),
        initial_state=rnd(batch, dim, n) if initial_state else None,
    )


def _rel(a, b):
    scale = b.abs().max()
    return 0.0 if scale == 0 else float((a - b).abs().max() / scale)


def _run(fn, inputs, **kwargs):
    leaves = {k: (v.clone().requires_grad_() if v is not None else None) for k, v in inputs.items()}
    y, last = fn(**leaves, delta_softplus=True, return_last_state=True, **kwargs)
    g = torch.Generator().manual_seed(123)
    gy = torch.randn(y.shape, generator=g, dtype=y.dtype)
    glast = torch.randn(last.shape, generator=g, dtype=last.dtype)
    ((y * gy).sum() + (last * glast).sum()).backward()
    grads = {k: v.grad for k, v in leaves.items() if v is not None}
    return y.detach(), last.detach(), grads


# (batch, T, dim, n, chunk_size, initial_state): T = 1, T not a multiple of the chunk, one chunk, many chunks,
# chunk longer than T, and the automatic choice.
CASES = [
    (2, 1, 5, 3, None, False),
    (3, 1, 4, 2, 4, True),
    (2, 37, 6, 4, 8, True),
    (1, 50, 3, 8, 7, False),
    (2, 64, 4, 4, 16, True),
    (3, 45, 5, 2, 45, False),
    (2, 30, 4, 3, 100, True),
    (2, 129, 8, 8, None, True),
    (1, 300, 16, 8, None, False),
]


@pytest.mark.parametrize("batch,T,dim,n,chunk,init", CASES)
def test_chunked_matches_sequential_reference_outputs_and_gradients(batch, T, dim, n, chunk, init):
    inputs = _inputs(batch, T, dim, n, seed=T * 31 + dim, initial_state=init)
    y_ref, last_ref, g_ref = _run(selective_scan_ref, inputs)
    y, last, g = _run(selective_scan_chunked, inputs, chunk_size=chunk)
    assert y.shape == (batch, T, dim) and last.shape == (batch, dim, n)
    assert _rel(y, y_ref) <= 1e-5
    assert _rel(last, last_ref) <= 1e-5
    assert set(g) == set(g_ref)
    for name in g_ref:
        assert _rel(g[name], g_ref[name]) <= 1e-5, name


def test_random_shapes_parity():
    gen = torch.Generator().manual_seed(7)
    for trial in range(6):
        batch, T, dim, n = (
            int(torch.randint(lo, hi, (1,), generator=gen)) for lo, hi in [(1, 4), (1, 200), (1, 12), (1, 9)]
        )
        chunk = int(torch.randint(1, 40, (1,), generator=gen)) if trial % 2 else None
        inputs = _inputs(batch, T, dim, n, seed=100 + trial, initial_state=bool(trial % 3))
        y_ref, last_ref, g_ref = _run(selective_scan_ref, inputs)
        y, last, g = _run(selective_scan_chunked, inputs, chunk_size=chunk)
        assert _rel(y, y_ref) <= 1e-5 and _rel(last, last_ref) <= 1e-5, (batch, T, dim, n, chunk)
        for name in g_ref:
            assert _rel(g[name], g_ref[name]) <= 1e-5, (name, batch, T, dim, n, chunk)


def test_gradcheck_float64():
    inputs = _inputs(2, 11, 3, 2, seed=5, dtype=torch.float64, initial_state=True)
    names = ["u", "delta", "A", "B", "C", "initial_state"]
    leaves = [inputs[k].clone().requires_grad_() for k in names]

    def f(u, delta, A, B, C, h0):
        y, last = selective_scan_chunked(
            u, delta, A, B, C, inputs["D"], inputs["z"], inputs["delta_bias"], True, h0, True, chunk_size=4
        )
        return y, last

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_long_sequence_is_stable_and_exact():
    """T = 100,000 in fp32 against the float64 definition: slow and fast decays, and huge dt*A."""
    T = 100_000
    inputs = _inputs(1, T, 4, 2, seed=11, dtype=torch.float64, dt_scale=2.0)
    inputs["A"] = torch.tensor([[-1e-3, -0.5], [-2.0, -40.0], [-1e-4, -1.0], [-300.0, -0.01]], dtype=torch.float64)
    inputs["delta_bias"] = torch.tensor([-6.0, 0.0, -8.0, 3.0], dtype=torch.float64)  # dt from ~1e-4 to ~20
    ref, ref_last = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
    f32 = {k: (v.float() if v is not None else None) for k, v in inputs.items()}
    y, last = selective_scan_chunked(**f32, delta_softplus=True, return_last_state=True)
    assert torch.isfinite(y).all()
    assert choose_chunking(T, 4 * 2)[0] > 1  # really chunked
    assert _rel(y.double(), ref) <= 1e-5
    assert _rel(last.double(), ref_last) <= 1e-5


def test_long_sequence_gradients():
    inputs = _inputs(1, 3000, 3, 2, seed=3)
    y_ref, last_ref, g_ref = _run(selective_scan_ref, inputs)
    y, last, g = _run(selective_scan_chunked, inputs)
    assert _rel(y, y_ref) <= 1e-5
    for name in g_ref:
        assert _rel(g[name], g_ref[name]) <= 1e-5, name


def test_recurrent_step_equals_full_scan():
    inputs = _inputs(2, 40, 6, 4, seed=9, initial_state=True)
    y_full, last_full = selective_scan_chunked(**inputs, delta_softplus=True, return_last_state=True)
    state = inputs["initial_state"].clone()
    ys = []
    for t in range(40):
        ys.append(
            selective_state_update(
                state,
                inputs["u"][:, t],
                inputs["delta"][:, t],
                inputs["A"],
                inputs["B"][:, t],
                inputs["C"][:, t],
                inputs["D"],
                inputs["z"][:, t],
                inputs["delta_bias"],
                dt_softplus=True,
            )
        )
    assert _rel(torch.stack(ys, 1), y_full) <= 1e-5
    assert _rel(state, last_full) <= 1e-5


def test_split_sequence_continues_from_last_state():
    """Scanning two halves, the second from the first's last state, equals scanning the whole."""
    inputs = _inputs(2, 90, 5, 3, seed=4)
    whole = selective_scan_chunked(**inputs, delta_softplus=True)
    first = {k: (v[:, :50] if k in ("u", "delta", "B", "C", "z") else v) for k, v in inputs.items()}
    second = {k: (v[:, 50:] if k in ("u", "delta", "B", "C", "z") else v) for k, v in inputs.items()}
    y1, h = selective_scan_chunked(**first, delta_softplus=True, return_last_state=True)
    second["initial_state"] = h
    y2 = selective_scan_chunked(**second, delta_softplus=True)
    assert _rel(torch.cat([y1, y2], 1), whole) <= 1e-5


def test_dispatch_and_dtypes():
    inputs = _inputs(2, 20, 4, 3, seed=2)
    ref = selective_scan(**inputs, delta_softplus=True, impl="reference")
    assert _rel(selective_scan(**inputs, delta_softplus=True, impl="chunked"), ref) <= 1e-5
    assert _rel(selective_scan(**inputs, delta_softplus=True), ref) <= 1e-5  # auto: chunked on CPU
    bf16 = {k: v.bfloat16() for k, v in inputs.items() if v is not None}
    out = selective_scan(**bf16, delta_softplus=True)
    assert out.dtype == torch.bfloat16
    with pytest.raises(MambavaError):
        selective_scan(**inputs, impl="nope")
    if not mamba_ssm_available():
        with pytest.raises(MambavaError):
            selective_scan(**inputs, impl="cuda")


def test_chunking_choice():
    assert choose_chunking(1, 65536) == (1, 1)
    assert choose_chunking(300, 32 * 256 * 8) == (1, 300)  # big steps: one pass, no chunks
    nc, L = choose_chunking(100_000, 2048)
    assert nc * L >= 100_000 and nc > 1 and L < 1000
    assert nc + L < 4 * math.isqrt(100_000)  # O(sqrt T) Python steps
    assert choose_chunking(37, 10, chunk_size=8) == (5, 8)


@pytest.mark.cuda
@pytest.mark.skipif(not mamba_ssm_available(), reason="needs CUDA and mamba-ssm")
def test_mamba_ssm_kernel_matches_reference():  # pragma: no cover - runs only with CUDA + mamba-ssm
    inputs = {k: (v.cuda() if v is not None else None) for k, v in _inputs(2, 100, 16, 8, seed=1).items()}
    inputs.pop("initial_state")
    ref = selective_scan(**inputs, delta_softplus=True, impl="reference")
    assert _rel(selective_scan(**inputs, delta_softplus=True, impl="cuda"), ref) <= 1e-4
    assert _rel(selective_scan(**inputs, delta_softplus=True, impl="chunked"), ref) <= 1e-5
