"""The Mamba encoder of Mamba-VA: per-frame normalisation, post-norm Mamba layers, a final Linear.

`Mamba` is the layer of Gu & Dao (mamba_ssm's `Mamba`, same parameter names and shapes, so checkpoints of the
reference load): in_proj (no bias) -> x, z; depthwise causal conv1d (bias) on x; SiLU; x_proj -> (dt, B, C);
dt_proj (bias) and softplus; the selective scan (mambava.temporal.ops) with A = -exp(A_log) and the D skip; times
SiLU(z);
out_proj (no bias). Layout (batch, T, d_model) throughout.

Precision: a `Mamba` layer under CPU/CUDA autocast runs its two big projections (in_proj, out_proj) in the
autocast dtype and the SSM part (conv, x_proj, dt_proj, softplus, scan, gate) in fp32. `MambaEncoder` turns
autocast off and runs in fp32 throughout (see its forward).

Init ("reference", the default): the reference's MambaEncoder re-initialises every Mamba with A_log ~ N(0, 0.01)
(so A ~ -1, not S4D-real), dt_proj weight and bias ~ N(0, 0.02), out_proj Xavier-uniform, and the depthwise
conv Kaiming-normal (fan_out, linear) with zero bias; in_proj and x_proj keep nn.Linear's default.
init="mamba" gives mamba_ssm's own init (S4D-real A, dt in [1e-3, 1e-1] through the dt_proj bias).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from mambava.temporal.ops.selective_scan import IMPLEMENTATIONS, LOG2E, selective_scan

__all__ = ["Mamba", "MambaEncoder", "MambaStack", "MambaLayerState", "frame_norm"]


def frame_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Zero mean, unit variance over the channels of each frame, no affine.

    What the reference's InstanceNorm1d(256) does when given a (batch, T, 256) tensor: it sees T "channels" of
    length 256 and normalises each frame on its own (biased variance, eps 1e-5).
    """
    return F.layer_norm(x, x.shape[-1:], eps=eps)


def _autocast_off(x: torch.Tensor):
    return torch.autocast(x.device.type, enabled=False)


@dataclass
class MambaLayerState:
    """Streaming state of one Mamba layer: the last d_conv inputs of the conv, and the SSM state (batch, D, N)."""

    conv: torch.Tensor  # (batch, d_conv, d_inner), oldest first
    ssm: torch.Tensor  # (batch, d_inner, d_state), fp32

    def keep(self, rows) -> None:
        """Keep only these rows (indices, in the new order)."""
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.conv.device)
        self.conv, self.ssm = self.conv.index_select(0, index), self.ssm.index_select(0, index)

    def join(self, n: int = 1) -> None:
        """Append n fresh (zero) rows."""
        self.extend(self.fresh(n))

    def fresh(self, n: int) -> "MambaLayerState":
        return MambaLayerState(self.conv.new_zeros(n, *self.conv.shape[1:]), self.ssm.new_zeros(n, *self.ssm.shape[1:]))

    def rows(self, rows) -> "MambaLayerState":
        """A copy of these rows (indices)."""
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.conv.device)
        return MambaLayerState(self.conv.index_select(0, index), self.ssm.index_select(0, index))

    def put(self, rows, other: "MambaLayerState") -> None:
        """Write `other` (from `rows`) back into these rows."""
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.conv.device)
        self.conv.index_copy_(0, index, other.conv)
        self.ssm.index_copy_(0, index, other.ssm)

    def extend(self, other: "MambaLayerState") -> None:
        self.conv, self.ssm = torch.cat([self.conv, other.conv]), torch.cat([self.ssm, other.ssm])


class Mamba(nn.Module):
    """One Mamba block (mamba_ssm's `Mamba` with its parameter names): (batch, T, d_model) -> same."""

    def __init__(
        self,
        d_model: int = 256,
        d_state: int = 8,
        d_conv: int = 4,
        expand: int = 1,
        dt_rank: int | str = "auto",
        scan: str = "auto",
        init: str = "reference",
    ):
        super().__init__()
        if scan not in IMPLEMENTATIONS:
            raise ValueError(f"unknown scan {scan!r}; expected one of {IMPLEMENTATIONS}")
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan = scan
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(self.d_inner, d_state))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.A_log._no_weight_decay = True  # as mamba_ssm marks them
        self.D._no_weight_decay = True
        self.reset_parameters(init)

    @torch.no_grad()
    def reset_parameters(self, init: str = "reference") -> None:
        if init == "reference":
            nn.init.normal_(self.A_log, 0.0, 0.01)
            nn.init.normal_(self.dt_proj.weight, 0.0, 0.02)
            nn.init.normal_(self.dt_proj.bias, 0.0, 0.02)
            nn.init.xavier_uniform_(self.out_proj.weight)
            nn.init.kaiming_normal_(self.conv1d.weight, mode="fan_out", nonlinearity="linear")
            nn.init.zeros_(self.conv1d.bias)
        elif init == "mamba":
            a = torch.arange(1, self.d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
            self.A_log.copy_(torch.log(a))
            std = self.dt_rank**-0.5
            nn.init.uniform_(self.dt_proj.weight, -std, std)
            dt = torch.exp(torch.rand(self.d_inner) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            dt = dt.clamp(min=1e-4)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
        else:
            raise ValueError(f"unknown Mamba init {init!r}: 'reference' or 'mamba'")

    def _ssm_inputs(self, x: torch.Tensor):
        """x (..., d_inner) after conv and SiLU, fp32 -> (dt before bias/softplus, B, C)."""
        x_dbl = F.linear(x, self.x_proj.weight.to(x.dtype))
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        return F.linear(dt, self.dt_proj.weight.to(x.dtype)), B, C

    def forward(self, hidden: torch.Tensor, scan: str | None = None) -> torch.Tensor:
        T = hidden.shape[1]
        # in_proj as two matmuls on the two halves of its weight: x and z come out contiguous.
        w_in = self.in_proj.weight
        x = F.linear(hidden, w_in[: self.d_inner])
        z = F.linear(hidden, w_in[self.d_inner :])
        with _autocast_off(hidden):
            cdtype = torch.promote_types(self.A_log.dtype, torch.float32)
            x, z = x.to(cdtype), z.to(cdtype)
            # Depthwise causal conv on (batch, T, d_inner): a sum of d_conv shifted, channel-scaled copies.
            taps = self.conv1d.weight.to(cdtype)[:, 0, :].t().contiguous()  # (d_conv, d_inner); last = now
            xp = F.pad(x, (0, 0, self.d_conv - 1, 0))
            conv = torch.addcmul(self.conv1d.bias.to(cdtype), xp[:, :T], taps[0])
            for j in range(1, self.d_conv):
                conv = torch.addcmul(conv, xp[:, j : j + T], taps[j])
            x = F.silu(conv)
            dt, B, C = self._ssm_inputs(x)
            A = -torch.exp(self.A_log.to(cdtype))
            y = selective_scan(
                x,
                dt,
                A,
                B,
                C,
                self.D.to(cdtype),
                z,
                self.dt_proj.bias.to(cdtype),
                delta_softplus=True,
                impl=scan or self.scan,
            )
        return self.out_proj(y.to(self.out_proj.weight.dtype))

    # ---------------------------------------------------------------------------------------------- streaming

    def init_state(self, batch_size: int = 1, device=None, dtype=None) -> MambaLayerState:
        device = self.A_log.device if device is None else device
        dtype = self.in_proj.weight.dtype if dtype is None else dtype
        return MambaLayerState(
            conv=torch.zeros(batch_size, self.d_conv, self.d_inner, device=device, dtype=torch.float32),
            ssm=torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=torch.float32),
        )

    @torch.no_grad()
    def step(self, hidden: torch.Tensor, state: MambaLayerState) -> torch.Tensor:
        """One frame (batch, d_model) -> (batch, d_model); updates `state` in place."""
        xz = self.in_proj(hidden)
        x, z = xz.float().chunk(2, dim=-1)
        conv = state.conv
        conv[:, :-1] = conv[:, 1:].clone()
        conv[:, -1] = x
        w = self.conv1d.weight.float()[:, 0, :]  # (d_inner, d_conv)
        x = F.silu(torch.einsum("bkd,dk->bd", conv, w) + self.conv1d.bias.float())
        dt, B, C = self._ssm_inputs(x)
        dt = F.softplus(dt + self.dt_proj.bias.float())
        # exp(dt A) = exp2(dt * A * log2 e): A is fixed, so the scaled copy could be cached; it is tiny.
        a = torch.exp2(dt.unsqueeze(-1) * (-torch.exp(self.A_log.float()) * LOG2E))
        ssm = state.ssm
        ssm.mul_(a).addcmul_((dt * x).unsqueeze(-1), B.unsqueeze(1))
        y = torch.bmm(ssm, C.unsqueeze(-1)).squeeze(-1)
        y = (y + x * self.D.float()) * F.silu(z)
        return self.out_proj(y.to(self.out_proj.weight.dtype))


class MambaStack(nn.Module):
    """`layers` of (Mamba, LayerNorm) applied post-norm, x = LN(Mamba(x) + x), then `proj` (Linear d -> d).

    Names match the reference's MambaBlock (layers.{j}.0 = Mamba, layers.{j}.1 = LayerNorm, proj).
    """

    def __init__(self, d_model, n_layers, d_state, d_conv, expand, dt_rank, scan, init):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(Mamba(d_model, d_state, d_conv, expand, dt_rank, scan, init), nn.LayerNorm(d_model))
            for _ in range(n_layers)
        )
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor, scan: str | None = None) -> torch.Tensor:
        for mamba, norm in self.layers:
            x = norm(mamba(x, scan) + x)
        return self.proj(x)


class MambaEncoder(nn.Module):
    """(batch, T, d_model) -> (batch, T, d_model): per-frame norm, n_layers post-norm Mamba layers, Linear.

    Submodules are named as in the reference (`mamba` = the stack, `adaptor` = LayerNorm + Dropout) so its
    state_dict loads. The reference builds `adaptor` but never calls it; it is kept, frozen
    (requires_grad=False), only so that parameter counts and checkpoints match (512 parameters).
    """

    def __init__(
        self,
        d_model: int = 256,
        n_layers: int = 4,
        d_state: int = 8,
        d_conv: int = 4,
        expand: int = 1,
        dt_rank: int | str = 16,
        scan: str = "auto",
        init: str = "reference",
    ):
        super().__init__()
        self.mamba = MambaStack(d_model, n_layers, d_state, d_conv, expand, dt_rank, scan, init)
        self.adaptor = nn.Sequential(nn.LayerNorm(d_model), nn.Dropout(0.1))
        self.adaptor.requires_grad_(False)

    @property
    def scan(self) -> str:
        return self.mamba.layers[0][0].scan

    @scan.setter
    def scan(self, value: str) -> None:
        if value not in IMPLEMENTATIONS:
            raise ValueError(f"unknown scan {value!r}; expected one of {IMPLEMENTATIONS}")
        for mamba, _ in self.mamba.layers:
            mamba.scan = value

    def forward(self, x: torch.Tensor, scan: str | None = None) -> torch.Tensor:
        # fp32 even under autocast: the encoder is ~1.4% of the model's FLOPs, and in bf16 it would amplify the
        # TCN's bf16 rounding (the whole model then drifts ~1% from fp32 instead of ~0.5%).
        with _autocast_off(x):
            x = x.to(self.mamba.proj.weight.dtype)
            return self.mamba(frame_norm(x), scan)

    def init_state(self, batch_size: int = 1, device=None, dtype=None) -> list[MambaLayerState]:
        return [mamba.init_state(batch_size, device, dtype) for mamba, _ in self.mamba.layers]

    @torch.no_grad()
    def step(self, x: torch.Tensor, state: list[MambaLayerState]) -> torch.Tensor:
        """One frame (batch, d_model) -> (batch, d_model); updates `state` in place."""
        x = frame_norm(x)
        for (mamba, norm), layer_state in zip(self.mamba.layers, state):
            x = norm(mamba.step(x, layer_state) + x)
        return self.mamba.proj(x)
