"""The selective scan of Mamba (Gu & Dao, 2023), apart from the layer that uses it.

For every batch element, channel d and state index n, with a_t = exp(dt_t,d * A_d,n):

    h_t[d, n] = a_t[d, n] * h_{t-1}[d, n] + dt_t,d * u_t,d * B_t,n
    y_t[d]    = sum_n C_t,n * h_t[d, n]  (+ D_d * u_t,d)  (then * silu(z_t,d) when z is given)

Shapes follow our models, time before channels: u, delta, z (batch, T, D); B, C (batch, T, N); A (D, N)
(negative: A = -exp(A_log)); D and delta_bias (D,). A state is (batch, D, N), as in mamba_ssm.

Three implementations of the same function:

- `selective_scan_ref`: the sequential definition, one Python step per frame, with autograd through the loop
  (the formulation of mamba_ssm's `selective_scan_ref`). Exact; for tests and as the benchmark baseline.
- `selective_scan_chunked`: fast pure PyTorch, any device. Time is cut into `n_chunks` chunks of L frames.
  Each step of a loop over the L positions inside a chunk advances every chunk at once (vectorised over
  chunks, batch, channels and states); a short loop over chunks then carries the state from one chunk to
  the next (the decay of a whole chunk is exp(A * sum(dt)), an exponent <= 0), and a second pass over the
  positions recomputes the states from the right chunk-start states and contracts them with C. Only
  products of factors in (0, 1] are ever formed, so it is stable for any T (tested at T = 100,000). The
  backward is a torch.autograd.Function running the adjoint recurrence
  lambda_t = C_t g_t + a_{t+1} lambda_{t+1} as the same chunked scan in reverse, not autograd through a
  loop. The number of chunks comes from a small cost model: one chunk (a plain loop over time, one pass) is
  best while the per-step tensors are large; short-per-step cases (a small batch, a long T) get ~sqrt(T)
  chunks so that the Python loop runs O(sqrt(T)) steps.
- mamba_ssm's fused CUDA kernel, used when the tensors are on a CUDA device and `mamba_ssm` imports; never
  required (it cannot even be imported without CUDA).

`selective_state_update` is the recurrent form: one frame, a state carried in place (streaming).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os

import torch
import torch.nn.functional as F

from mambava.core.errors import MambavaError

__all__ = [
    "IMPLEMENTATIONS",
    "selective_scan",
    "selective_scan_ref",
    "selective_scan_chunked",
    "selective_state_update",
    "choose_chunking",
    "mamba_ssm_available",
]

IMPLEMENTATIONS = ("auto", "chunked", "reference", "cuda")
LOG2E = 1.4426950408889634  # exp(x) = exp2(x * log2(e)); exp2 is ~3x cheaper than exp in ATen on CPU

# Cost model of the chunked scan (seconds), fitted on a 2-vCPU Zen 4: a fixed Python/dispatch cost per step
# of the position loop (about five ATen calls) and a cost per state element and pass over the data.
_STEP_COST = 30e-6
_ELEMENT_COST = 1.5e-9

# The loops over positions run many small ATen calls (a few microseconds each). Split over OpenMP threads they
# gain little, and where an idle worker thread gets descheduled (2-vCPU VMs such as this project's CI machine)
# each call can stall for a whole scheduler tick (4-8 ms): measured 7x slower at 2 threads than at 1. So the
# loops run on one thread while the per-step tensors are smaller than this many elements
# (env MAMBAVA_SCAN_SERIAL_BELOW; 0 keeps torch's thread count).
SERIAL_BELOW = int(os.environ.get("MAMBAVA_SCAN_SERIAL_BELOW", 1 << 20))


@contextlib.contextmanager
def _loop_threads(step_elements: int):
    """Run the enclosed position loop on one intra-op thread when its steps are small (see SERIAL_BELOW)."""
    threads = torch.get_num_threads()
    if threads == 1 or step_elements >= SERIAL_BELOW:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------------
# Sequential reference
# --------------------------------------------------------------------------------------------------


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32 for fp32 and narrower inputs (bf16, fp16), fp64 for fp64 (gradcheck)."""
    return torch.promote_types(x.dtype, torch.float32)


def _prepare_dt(delta: torch.Tensor, delta_bias, delta_softplus: bool, dtype: torch.dtype) -> torch.Tensor:
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)
    if delta_softplus:
        dt = F.softplus(dt)
    return dt


def _finish(y, u, D, z, out_dtype):
    if D is not None:
        y = torch.addcmul(y, u.to(y.dtype), D.to(y.dtype))
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(out_dtype)


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
):
    """The selective scan by its definition: a Python loop over time, in fp32 (autograd through the loop).

    Same arguments as `selective_scan`. Slow; it is the ground truth of the tests and the baseline of the
    benchmarks (its formulation is that of mamba_ssm's `selective_scan_ref`, which the authors' model runs
    when no CUDA kernel is there).
    """
    out_dtype, cdtype = u.dtype, _compute_dtype(u)
    dt = _prepare_dt(delta, delta_bias, delta_softplus, cdtype)
    uf, Af, Bf, Cf = (x.to(cdtype) for x in (u, A, B, C))
    batch, _, dim = uf.shape
    delta_a = torch.exp(torch.einsum("btd,dn->btdn", dt, Af))
    delta_b_u = torch.einsum("btd,btn,btd->btdn", dt, Bf, uf)
    h = uf.new_zeros(batch, dim, Af.shape[1]) if initial_state is None else initial_state.to(cdtype)
    ys = []
    for t in range(uf.shape[1]):
        h = delta_a[:, t] * h + delta_b_u[:, t]
        ys.append(torch.einsum("bdn,bn->bd", h, Cf[:, t]))
    y = torch.stack(ys, dim=1) if ys else uf.new_zeros(uf.shape)
    out = _finish(y, uf, D, z, out_dtype)
    return (out, h) if return_last_state else out


# --------------------------------------------------------------------------------------------------
# Chunked scan
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def choose_chunking(T: int, state_elements: int, chunk_size: int | None = None) -> tuple[int, int]:
    """(n_chunks, chunk_length) for a scan of T frames whose state has `state_elements` numbers per frame
    (batch * D * N). `chunk_size` forces the chunk length."""
    if T <= 0:
        return 1, 0
    if chunk_size is not None:
        L = max(1, min(int(chunk_size), T))
        return -(-T // L), L
    best = None
    limit = max(1, min(T, 4 * math.isqrt(T) + 4))
    for nc in range(1, limit + 1):
        L = -(-T // nc)
        nc = -(-T // L)  # no empty chunk
        steps = L if nc == 1 else 2 * L + nc
        passes = 1.0 if nc == 1 else 2.0 - 1.0 / nc
        cost = _STEP_COST * steps + _ELEMENT_COST * passes * nc * L * state_elements
        if best is None or cost < best[0]:
            best = (cost, nc, L)
    return best[1], best[2]


def _to_chunks(x: torch.Tensor, nc: int, L: int) -> torch.Tensor:
    """(batch, T, c) -> (L, nc, batch, c), zero-padded at the end to nc * L frames, contiguous."""
    batch, T, c = x.shape
    pad = nc * L - T
    if pad:
        x = F.pad(x, (0, 0, 0, pad))
    return x.reshape(batch, nc, L, c).permute(2, 1, 0, 3).contiguous()


def _from_chunks(x: torch.Tensor, T: int) -> torch.Tensor:
    """(L, nc, batch, c) -> (batch, T, c)."""
    L, nc, batch, c = x.shape
    return x.permute(2, 1, 0, 3).reshape(batch, nc * L, c)[:, :T].contiguous()


def _decay(out: torch.Tensor, dt_l: torch.Tensor, a2t: torch.Tensor) -> torch.Tensor:
    """out <- exp(dt * A) for one position: dt_l (nc, b, 1, D), a2t = A.T * log2(e) (N, D)."""
    torch.mul(dt_l, a2t, out=out)
    return out.exp2_()


def _scan_forward(dt, p, q, c, a2t, h0, store: bool):
    """Chunked forward in the (L, nc, b, ...) layout.

    dt, p (= dt * u): (L, nc, b, 1, D); q (= B), c (= C): (L, nc, b, N, 1); a2t: (N, D); h0: (b, N, D) or None.
    Returns y (L, nc, b, D), the final state (b, N, D), the chunk-start states (nc, b, N, D), the decay of
    each whole chunk (nc, b, N, D) or None, and, if `store`, every state h_t (L, nc, b, N, D).
    """
    L, nc, b = dt.shape[:3]
    n, d = a2t.shape
    k = nc * b
    a = dt.new_empty(nc, b, n, d)
    starts = dt.new_zeros(nc, b, n, d)
    if h0 is not None:
        starts[0].copy_(h0)
    chunk_decay = None
    if nc > 1:
        # Pass 1: every chunk from a zero state, all chunks at once; only its final state is kept.
        h = dt.new_zeros(nc, b, n, d)
        for l in range(L):
            h.mul_(_decay(a, dt[l], a2t)).addcmul_(q[l], p[l])
        # The decay of a whole chunk: prod_t exp(dt_t A) = exp(A sum_t dt_t), exponent <= 0.
        chunk_decay = torch.exp2(dt.sum(0) * a2t)
        for j in range(1, nc):
            torch.addcmul(h[j - 1], chunk_decay[j - 1], starts[j - 1], out=starts[j])
    # Pass 2: from the true chunk-start states, contracting with C on the way.
    y = dt.new_empty(L, nc, b, d)
    states = dt.new_empty(L, nc, b, n, d) if store else None
    h = starts.clone()
    for l in range(L):
        _decay(a, dt[l], a2t)
        if store:
            torch.mul(h, a, out=states[l])
            h = states[l]
            h.addcmul_(q[l], p[l])
        else:
            h.mul_(a).addcmul_(q[l], p[l])
        torch.bmm(c[l].view(k, 1, n), h.view(k, n, d), out=y[l].view(k, 1, d))
    return y, h[nc - 1].clone(), starts, chunk_decay, states


def _scan_backward(g, dt, p, q, c, a2t, at, starts, chunk_decay, states, dh_last):
    """Adjoint of `_scan_forward`: the reverse recurrence lambda_t = C_t g_t + a_{t+1} lambda_{t+1}, chunked.

    g: (L, nc, b, 1, D) gradient of y. Returns ds (= dL/dp), ddt (through the decay only), dB, dC, dA (N, D),
    dh0 (b, N, D).
    """
    L, nc, b = dt.shape[:3]
    n, d = a2t.shape
    k = nc * b
    a = dt.new_empty(nc, b, n, d)
    tmp = torch.empty_like(a)
    carry = dt.new_zeros(nc, b, n, d)  # adjoint flowing into the last frame of each chunk from the right
    if dh_last is not None:
        carry[nc - 1].copy_(dh_last)
    if nc > 1:
        # Reverse pass 1: each chunk's adjoint at its first frame, from a zero adjoint at its end.
        mu = dt.new_zeros(nc, b, n, d)
        for l in range(L - 1, -1, -1):
            mu.addcmul_(c[l], g[l]).mul_(_decay(a, dt[l], a2t))
        for j in range(nc - 2, -1, -1):
            torch.addcmul(mu[j + 1], chunk_decay[j + 1], carry[j + 1], out=carry[j])
    # Reverse pass 2: the true adjoints, and every gradient on the way.
    lam = carry
    ds = dt.new_empty(L, nc, b, d)
    ddt = dt.new_empty(L, nc, b, d)
    dB = dt.new_empty(L, nc, b, n)
    dC = dt.new_empty(L, nc, b, n)
    dA = torch.zeros_like(a)
    for l in range(L - 1, -1, -1):
        _decay(a, dt[l], a2t)
        lam.addcmul_(c[l], g[l])  # lambda_t = dL/dh_t
        torch.bmm(q[l].view(k, 1, n), lam.view(k, n, d), out=ds[l].view(k, 1, d))
        torch.bmm(lam.view(k, n, d), p[l].reshape(k, d, 1), out=dB[l].view(k, n, 1))
        torch.bmm(states[l].view(k, n, d), g[l].reshape(k, d, 1), out=dC[l].view(k, n, 1))
        h_prev = states[l - 1] if l > 0 else starts
        torch.mul(h_prev, a, out=tmp).mul_(lam)  # dL/da_t * a_t
        dA.addcmul_(tmp, dt[l])
        torch.sum(tmp.mul_(at), dim=-2, out=ddt[l])
        lam.mul_(a)  # the adjoint handed to h_{t-1}
    return ds, ddt, dB, dC, dA.sum((0, 1)), lam[0].clone()


class _ChunkedScan(torch.autograd.Function):
    """y_t = sum_n C_t,n h_t[:, n] with h_t = exp(dt_t A) h_{t-1} + dt_t u_t B_t; fp32 in and out."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C, h0, chunk_size):
        ctx.set_materialize_grads(False)
        batch, T, dim = u.shape
        n = A.shape[1]
        nc, L = choose_chunking(T, batch * dim * n, chunk_size)
        a2t = (A.t() * LOG2E).contiguous()
        dtc = _to_chunks(dt, nc, L)
        pc = _to_chunks(dt * u, nc, L)
        qc = _to_chunks(B, nc, L)
        cc = _to_chunks(C, nc, L)
        h0n = None if h0 is None else h0.transpose(1, 2)
        store = any(ctx.needs_input_grad[:6])
        with _loop_threads(nc * batch * dim * n):
            y, h_last, starts, chunk_decay, states = _scan_forward(
                dtc.unsqueeze(-2), pc.unsqueeze(-2), qc.unsqueeze(-1), cc.unsqueeze(-1), a2t, h0n, store
            )
        if store:
            ctx.save_for_backward(u, dt, A, dtc, pc, qc, cc, starts, chunk_decay, states)
            ctx.has_h0 = h0 is not None
        return _from_chunks(y, T), h_last.transpose(1, 2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy, gh_last):
        u, dt, A, dtc, pc, qc, cc, starts, chunk_decay, states = ctx.saved_tensors
        T = u.shape[1]
        nc, L = dtc.shape[1], dtc.shape[0]
        a2t = (A.t() * LOG2E).contiguous()
        at = A.t().contiguous()
        if gy is None:
            gy = u.new_zeros(u.shape)
        g = _to_chunks(gy.to(u.dtype), nc, L)
        dh_last = None if gh_last is None else gh_last.to(u.dtype).transpose(1, 2)
        with _loop_threads(starts.numel()):
            ds, ddt_a, dB, dC, dA, dh0 = _scan_backward(
                g.unsqueeze(-2),
                dtc.unsqueeze(-2),
                pc.unsqueeze(-2),
                qc.unsqueeze(-1),
                cc.unsqueeze(-1),
                a2t,
                at,
                starts,
                chunk_decay,
                states,
                dh_last,
            )
        ds = _from_chunks(ds, T)
        du = ds * dt
        ddt = torch.addcmul(_from_chunks(ddt_a, T), ds, u)
        dh0 = dh0.transpose(1, 2) if ctx.has_h0 else None
        return du, ddt, dA.t(), _from_chunks(dB, T), _from_chunks(dC, T), dh0, None


def selective_scan_chunked(
    u,
    delta,
    A,
    B,
    C,
    D=None,
    z=None,
    delta_bias=None,
    delta_softplus=False,
    initial_state=None,
    return_last_state=False,
    chunk_size: int | None = None,
):
    """The fast pure-PyTorch scan (see the module docstring); computes in fp32 (fp64 for fp64 inputs), returns
    u's dtype."""
    out_dtype, cdtype = u.dtype, _compute_dtype(u)
    dt = _prepare_dt(delta, delta_bias, delta_softplus, cdtype)
    uf = u.to(cdtype)
    h0 = None if initial_state is None else initial_state.to(cdtype)
    if u.shape[1] == 0:
        y = uf.new_zeros(uf.shape)
        last = h0 if h0 is not None else uf.new_zeros(u.shape[0], u.shape[2], A.shape[1])
    else:
        y, last = _ChunkedScan.apply(uf, dt, A.to(cdtype), B.to(cdtype), C.to(cdtype), h0, chunk_size)
    out = _finish(y, uf, D, z, out_dtype)
    return (out, last) if return_last_state else out


# --------------------------------------------------------------------------------------------------
# mamba_ssm (CUDA), optional
# --------------------------------------------------------------------------------------------------

_MAMBA_SSM = None


def _mamba_ssm_scan_fn():
    """mamba_ssm's fused selective_scan_fn, or None when it cannot be imported (no CUDA, not installed)."""
    global _MAMBA_SSM
    if _MAMBA_SSM is None:
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
        except Exception:  # ImportError, or its compiled extension failing to load without CUDA
            selective_scan_fn = False
        _MAMBA_SSM = selective_scan_fn
    return _MAMBA_SSM or None


def mamba_ssm_available() -> bool:
    return torch.cuda.is_available() and _mamba_ssm_scan_fn() is not None


def _selective_scan_cuda(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state):
    fn = _mamba_ssm_scan_fn()
    if fn is None:
        raise MambavaError("scan='cuda' needs the mamba-ssm package and a CUDA device (pip install mambava[cuda])")
    # mamba_ssm wants (batch, D, T) and (batch, N, T).
    out = fn(
        u.transpose(1, 2),
        delta.transpose(1, 2),
        A.float(),
        B.transpose(1, 2),
        C.transpose(1, 2),
        None if D is None else D.float(),
        None if z is None else z.transpose(1, 2),
        None if delta_bias is None else delta_bias.float(),
        delta_softplus,
        return_last_state,
    )
    if return_last_state:
        y, last = out
        return y.transpose(1, 2), last
    return out.transpose(1, 2)


# --------------------------------------------------------------------------------------------------
# Dispatch and the recurrent step
# --------------------------------------------------------------------------------------------------


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: torch.Tensor | None = None,
    return_last_state: bool = False,
    impl: str = "auto",
    chunk_size: int | None = None,
):
    """Selective scan; returns y (batch, T, D) [, last state (batch, D, N)].

    impl: "auto" (mamba_ssm's CUDA kernel for CUDA tensors when it imports and no initial state is given,
    else "chunked"), "chunked", "reference", or "cuda" (mamba_ssm, an error if it is not there).
    """
    if impl == "auto":
        use_cuda = u.is_cuda and initial_state is None and _mamba_ssm_scan_fn() is not None
        impl = "cuda" if use_cuda else "chunked"
    if impl == "chunked":
        return selective_scan_chunked(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_last_state, chunk_size
        )
    if impl == "reference":
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, return_last_state)
    if impl == "cuda":
        if initial_state is not None:
            raise MambavaError("scan='cuda' (mamba_ssm) cannot start from an initial state; use 'chunked'")
        return _selective_scan_cuda(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    raise MambavaError(f"unknown selective-scan implementation {impl!r}; expected one of {IMPLEMENTATIONS}")


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """One frame of the scan: updates `state` (batch, D, N) in place and returns y (batch, D).

    x, dt, z: (batch, D); B, C: (batch, N). Same signature as mamba_ssm's `selective_state_update`.
    """
    cdtype = state.dtype
    dt = _prepare_dt(dt, dt_bias, dt_softplus, cdtype)
    xf = x.to(cdtype)
    decay = torch.exp(dt.unsqueeze(-1) * A.to(cdtype))
    state.mul_(decay).addcmul_((dt * xf).unsqueeze(-1), B.to(cdtype).unsqueeze(1))
    y = torch.bmm(state, C.to(cdtype).unsqueeze(-1)).squeeze(-1)
    return _finish(y, xf, D, z, x.dtype)
