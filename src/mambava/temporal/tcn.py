"""Causal temporal convolutional network (Bai et al., 2018), as in the Mamba-VA reference code.

Layout: `TCN` takes and returns (batch, T, channels), time before channels like the rest of the model; it
transposes to Conv1d's (batch, channels, T) inside.

Each `TemporalBlock` (dilation d, kernel k, padding (k-1)*d on the left only, so the output at t sees inputs
t-(k-1)d .. t):

    x -> WNConv1d -> PReLU -> Dropout -> WNConv1d -> PReLU -> Dropout -> (+ x, or + 1x1 Conv1d(x)) -> PReLU

The reference pads both sides and chomps the right; padding only the left gives the same frames without
computing the ones that are thrown away. Weight normalisation is w = g * v / ||v|| per output channel, with
parameters named `weight_g` (C_out, 1, 1) and `weight_v` (C_out, C_in, k) like torch.nn.utils.weight_norm, so
the reference's state_dict loads as it is.

Init, as the reference effectively does: its `init_weights` draws `conv.weight.data.normal_(0, 0.01)` on
weight-normed convs, but with torch.nn.utils.weight_norm `weight` is recomputed from g and v before every
forward, so that draw has no effect: v keeps Conv1d's default (Kaiming-uniform) init and g = ||v||. Only the 1x1
downsample convs really get N(0, 0.01) weights. `init="normal"` gives the intended N(0, 0.01) convs instead.

Streaming: `TCN.init_state` / `TCN.step` run one frame at a time. Each conv keeps a ring buffer of its last
(k-1)*d+1 inputs; a step gathers the k taps and does one (B, k*C_in) -> (B, C_out) product with the weight-normed
kernel flattened to (C_out, k*C_in), computed once when the state is made (the step's weight cache, so a state
belongs to the weights it was made with). A batch-1 step is a chain of matrix-vector products: it costs the weight
bytes it reads (the paper's TCN: 265 MB in fp32), so the cache can hold them in fewer bytes (`precision`):

- "fp32" (default): the kernels as they are; the step equals the full pass to float32 rounding.
- "bf16": bf16 kernels (half the bytes), prepacked for oneDNN on CPU (its bf16 product on a plain tensor
  re-lays the weight out on every call, which costs as much as the fp32 read) for 4 rows, a batch of fewer
  padded to 4 (see _PACK_ROWS); inputs rounded to bf16,
  products accumulated in fp32, bias, PReLU and residuals in fp32.
- "int8": weight-only int8 (a quarter of the bytes) with one scale per output channel (max |w| / 127, in bf16,
  round to nearest), bf16 inputs; torch's int8 weight kernel on CPU where K is a multiple of 16 (it computes
  garbage otherwise), else the weight dequantised per call.

A state's rows are independent streams: `TCNState.keep(rows)` drops rows, `TCNState.join(n)` appends n fresh
(zero-history) rows. A zero ring buffer is the same history at every write position, so a row can join a batch
that has already stepped any number of frames.
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from mambava.core.quantize import Int8Matmul


class _WeightNorm(torch.autograd.Function):
    """w = g * v / ||v|| (norm per output channel over (C_in, k)), written in `dtype`: one pass over v forward
    (after the norm's), two backward, where autograd through mul/div/norm and an autocast cast takes ~8 passes
    over the paper TCN's 66M weights per training step (~10% of a bf16 step on one core)."""

    @staticmethod
    def forward(ctx, v, g, dtype):
        with torch.autocast(v.device.type, enabled=False):
            norm = torch.linalg.vector_norm(v, dim=(1, 2), keepdim=True)
            scale = g / norm
            ctx.save_for_backward(v, norm, scale)
            return torch.mul(v, scale, out=torch.empty(v.shape, dtype=dtype, device=v.device))

    @staticmethod
    def backward(ctx, grad):
        v, norm, scale = ctx.saved_tensors
        grad = grad.to(v.dtype)
        dot = torch.linalg.vecdot(grad.flatten(1), v.flatten(1)).view_as(norm)  # <grad_w, v> per channel
        grad_v = torch.addcmul(grad, v, -dot / norm.square()).mul_(scale)  # scale * (grad_w - <grad_w, v> v / ||v||^2)
        return grad_v, dot / norm, None


class WNConv1d(nn.Module):
    """Causal, dilated, weight-normalised Conv1d on (batch, C_in, T) -> (batch, C_out, T)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.dilation = kernel_size, dilation
        conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation)  # default init, like the reference
        v = conv.weight.detach().clone()
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(v.norm(dim=(1, 2), keepdim=True))
        self.bias = nn.Parameter(conv.bias.detach().clone())
        self._kernel_cache: tuple | None = None  # (key, kernel): see `kernel`

    @property
    def padding(self) -> int:
        return (self.kernel_size - 1) * self.dilation

    def weight(self) -> torch.Tensor:
        """g * v / ||v||, the norm over (C_in, k) for each output channel (torch's weight_norm with dim=0)."""
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=(1, 2), keepdim=True))

    def kernel(self, x: torch.Tensor) -> torch.Tensor:
        """The kernel the conv of `x` runs with: `weight()` in the dtype it runs in (autocast's, else x's).
        Without grad it is kept until g or v change (their version counters: an in-place update, a load) or
        the module's mode is set (`train()`/`eval()`: a fused optimizer and `.data` writes update weights
        without counting a version, between a training phase and the next evaluation): under bf16 inference,
        recomputing g * v / ||v|| in fp32 and casting it costs a fixed ~0.3 s per forward on the paper's TCN (8
        muls and 11 casts of 66M weights, one core), ~10% of a B=8 window batch."""
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        if torch.is_grad_enabled() and (self.weight_v.requires_grad or self.weight_g.requires_grad):
            return _WeightNorm.apply(self.weight_v, self.weight_g, dtype)
        key = (
            self.weight_v._version,
            self.weight_g._version,
            self.weight_v.data_ptr(),
            self.weight_g.data_ptr(),
            dtype,
            x.device,
        )
        if self._kernel_cache is None or self._kernel_cache[0] != key:
            with torch.no_grad():
                self._kernel_cache = (key, self.weight().to(dtype))
        return self._kernel_cache[1]

    def train(self, mode: bool = True):
        self._kernel_cache = None  # see `kernel`
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(F.pad(x, (self.padding, 0)), self.kernel(x), self.bias, dilation=self.dilation)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, dilation={self.dilation}, causal"
        )


class TemporalBlock(nn.Module):
    """Two causal weight-normed convs with PReLU and dropout, a residual (1x1 conv when channels change), PReLU."""

    def __init__(self, n_inputs: int, n_outputs: int, kernel_size: int, dilation: int, dropout: float):
        super().__init__()
        self.conv1 = WNConv1d(n_inputs, n_outputs, kernel_size, dilation)
        self.relu1 = nn.PReLU()
        self.dropout1 = nn.Dropout(dropout)
        self.conv2 = WNConv1d(n_outputs, n_outputs, kernel_size, dilation)
        self.relu2 = nn.PReLU()
        self.dropout2 = nn.Dropout(dropout)
        self.downsample = nn.Conv1d(n_inputs, n_outputs, 1) if n_inputs != n_outputs else None
        self.relu = nn.PReLU()
        if self.downsample is not None:
            nn.init.normal_(self.downsample.weight, 0.0, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout1(self.relu1(self.conv1(x)))
        out = self.dropout2(self.relu2(self.conv2(out)))
        res = x if self.downsample is None else self.downsample(x)
        return self.relu(out + res)


STEP_PRECISIONS = ("fp32", "bf16", "int8")


class Int8CausalConv(nn.Module):
    """A causal, dilated Conv1d (a `WNConv1d`, its kernel fixed, or a 1x1 nn.Conv1d) run as int8 products on
    the CPU: the k taps of each frame are gathered into one row (im2col) and multiplied by the (C_out, k*C_in)
    kernel with fbgemm's dynamic int8 product (`mambava.core.quantize.Int8Matmul`), a block of frames at a time
    (rows of about ROWS, so the gathered block stays in cache). Inference only: its weights are a snapshot.
    Causal up to rounding: the activations' int8 scale is taken over a block, so a later frame of the block can
    move an earlier frame's output by a quantisation step (never by what it holds)."""

    ROWS = 512

    def __init__(self, conv: nn.Module):
        super().__init__()
        if isinstance(conv, WNConv1d):
            with torch.no_grad():
                weight, bias = conv.weight().float(), conv.bias
            self.kernel_size, self.dilation = conv.kernel_size, conv.dilation
        else:  # the residual's 1x1 nn.Conv1d
            weight, bias = conv.weight.detach().float(), conv.bias
            self.kernel_size, self.dilation = 1, 1
        self.out_channels, in_channels = weight.shape[0], weight.shape[1]
        # (C_out, C_in, k) -> (C_out, k * C_in): tap j's inputs are row block j, as the gathered rows hold them
        self.product = Int8Matmul(weight.permute(0, 2, 1).reshape(self.out_channels, -1), bias)
        self.in_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, frames = x.shape
        pad = (self.kernel_size - 1) * self.dilation
        rows = F.pad(x.float(), (pad, 0)).transpose(1, 2)  # (B, T + pad, C_in)
        out = x.new_empty(batch, frames, self.out_channels, dtype=torch.float32)
        step = max(1, self.ROWS // batch)
        for start in range(0, frames, step):
            stop = min(frames, start + step)
            taps = [rows[:, start + j * self.dilation : stop + j * self.dilation] for j in range(self.kernel_size)]
            gathered = torch.cat(taps, dim=2) if len(taps) > 1 else taps[0]  # (B, t, k * C_in)
            out[:, start:stop] = self.product(gathered.reshape(-1, gathered.shape[-1])).view(batch, stop - start, -1)
        return out.transpose(1, 2)


def quantize_tcn(model: nn.Module) -> nn.Module:
    """A copy of `model` (any module holding `TemporalBlock`s: a TCN, Mamba-VA, an ablation, the fusion model)
    whose TCN convolutions run in int8 on the CPU (`Int8CausalConv`), for inference; the rest stays fp32.

    Args:
        model: the model; it is not changed.

    Returns:
        The int8 copy, in eval mode on the CPU.
    """
    copy = deepcopy(model).cpu().eval()
    for block in [m for m in copy.modules() if isinstance(m, TemporalBlock)]:
        block.conv1 = Int8CausalConv(block.conv1)
        block.conv2 = Int8CausalConv(block.conv2)
        if block.downsample is not None:
            block.downsample = Int8CausalConv(block.downsample)
    return copy


# oneDNN's bf16 product packed for 4 rows and run on 4 (a batch of 1-3 padded with zero rows) read the weights
# fastest on the Zen 4 it was measured on: the paper TCN's big kernels 1.9x faster than fp32 at batch 1, against
# 1.4x packed for and run on 1 row (its one-row kernel does not keep up with memory).
_PACK_ROWS = 4


def _onednn_pack(weight: torch.Tensor):
    """The bf16 weight prepacked for oneDNN's linear, or None where that op is missing or fails."""
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return None
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, _PACK_ROWS)
        probe = torch.ones(1, weight.shape[1], dtype=torch.bfloat16)
        if not torch.allclose(
            torch.ops.mkldnn._linear_pointwise(probe, packed, None, "none", [], "").float(),
            F.linear(probe, weight).float(),
            rtol=1e-2,
            atol=1e-2,
        ):
            return None
        return packed
    except (RuntimeError, AttributeError):
        return None


class StepProduct:
    """(B, K) -> (B, N) fp32 = x @ W.T + b with W (N, K) cached for the step in `precision` (see the module
    docstring). `input_dtype` is the dtype its inputs are rounded to (the ring buffers store that dtype);
    `nbytes` the weight bytes one product reads."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, precision: str = "fp32", dtype=None):
        if precision not in STEP_PRECISIONS:
            raise ValueError(f"unknown step precision {precision!r}: one of {', '.join(STEP_PRECISIONS)}")
        self.precision = precision
        self.out_dtype = weight.dtype if dtype is None else dtype
        self.bias = None if bias is None else bias.to(self.out_dtype if precision == "fp32" else torch.float32)
        self.packed = self.scale = None
        if precision == "fp32":
            self.weight = weight.to(self.out_dtype).contiguous()
            self.input_dtype = self.out_dtype
        elif precision == "bf16":
            self.weight = weight.to(torch.bfloat16).contiguous()
            self.packed = _onednn_pack(self.weight)
            self.input_dtype = torch.bfloat16
        else:
            w = weight.float()
            scale = w.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / 127.0
            self.weight = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8).contiguous()
            self.scale = scale.to(torch.bfloat16)
            n, k = self.weight.shape
            self.int8_kernel = weight.device.type == "cpu" and k % 16 == 0 and n % 8 == 0
            self.input_dtype = torch.bfloat16

    @property
    def nbytes(self) -> int:
        return self.weight.numel() * self.weight.element_size()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.precision == "fp32":
            return F.linear(x, self.weight, self.bias)
        x = x.to(torch.bfloat16)
        if x.shape[0] == 0:
            y = x.new_zeros(0, self.weight.shape[0])
        elif self.precision == "bf16":
            if self.packed is not None:
                rows = x.shape[0]
                if rows < _PACK_ROWS:
                    x = torch.cat([x, x.new_zeros(_PACK_ROWS - rows, x.shape[1])])
                y = torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")[:rows]
            else:
                y = F.linear(x, self.weight)
        elif self.int8_kernel:
            y = torch._weight_int8pack_mm(x, self.weight, self.scale)
        else:
            y = F.linear(x, self.weight.to(torch.bfloat16)) * self.scale
        y = y.float()
        if self.bias is not None:
            y = y + self.bias
        return y.to(self.out_dtype)


@dataclass
class _ConvStream:
    """One conv's streaming state: ring buffer (batch, S, C_in) of its last S = (k-1)*d+1 inputs."""

    product: StepProduct  # (B, k*C_in) -> (B, C_out): tap-major flattening of the weight-normed kernel
    buffer: torch.Tensor
    taps: torch.Tensor  # (S, k): buffer slots of the k taps, oldest first, for each write position

    def __call__(self, x: torch.Tensor, pos: int) -> torch.Tensor:
        slot = pos % self.buffer.shape[1]
        self.buffer[:, slot] = x
        window = self.buffer.index_select(1, self.taps[slot]).flatten(1)
        return self.product(window)


@dataclass
class TCNState:
    """Streaming state of a TCN: one ring buffer per conv and the number of frames seen."""

    convs: list = field(default_factory=list)  # [([conv1, conv2, downsample product or None], prelu)] per block
    frames: int = 0
    precision: str = "fp32"

    @property
    def batch_size(self) -> int:
        return self.convs[0][0][0].buffer.shape[0]

    def products(self) -> list[StepProduct]:
        """Every product a step does, the kernels' and the downsamples'."""
        return [
            p
            for streams, _ in self.convs
            for p in (streams[0].product, streams[1].product, streams[2])
            if p is not None
        ]

    def keep(self, rows) -> None:
        """Keep only these rows (a list of indices, in the new order); the others' streams end."""
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.convs[0][0][0].buffer.device)
        for streams, _ in self.convs:
            for conv in streams[:2]:
                conv.buffer = conv.buffer.index_select(0, index)

    def join(self, n: int = 1) -> None:
        """Append n fresh streams (zero history, as the causal padding) as the last rows."""
        self.extend(self.fresh(n))

    def fresh(self, n: int) -> "TCNState":
        """A state of n fresh rows at this state's frame count, sharing its weights (not copying them)."""
        convs = [
            (
                [_ConvStream(c.product, c.buffer.new_zeros(n, *c.buffer.shape[1:]), c.taps) for c in streams[:2]]
                + streams[2:],
                prelu,
            )
            for streams, prelu in self.convs
        ]
        return TCNState(convs=convs, frames=self.frames, precision=self.precision)

    def rows(self, rows) -> "TCNState":
        """A copy of these rows (indices) at this state's frame count, sharing its weights."""
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.convs[0][0][0].buffer.device)
        convs = [
            (
                [_ConvStream(c.product, c.buffer.index_select(0, index), c.taps) for c in streams[:2]] + streams[2:],
                prelu,
            )
            for streams, prelu in self.convs
        ]
        return TCNState(convs=convs, frames=self.frames, precision=self.precision)

    def put(self, rows, other: "TCNState", turn: int = 0) -> None:
        """Write `other` (from `rows`) back into these rows, its ring buffers turned by `turn` slots: the steps
        the batch took meanwhile, which those rows sat out (the next step then reads their history where it
        reads everyone's: the ring position is shared by the batch)."""
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.convs[0][0][0].buffer.device)
        for (streams, _), (others, _) in zip(self.convs, other.convs):
            for conv, new in zip(streams[:2], others[:2]):
                conv.buffer.index_copy_(0, index, torch.roll(new.buffer, turn, dims=1) if turn else new.buffer)

    def extend(self, other: "TCNState") -> None:
        """Append the rows of `other`, a state made by `fresh` that has stepped as many frames as this one."""
        if other.frames != self.frames:
            raise ValueError(f"rows at frame {other.frames} cannot join a batch at frame {self.frames}")
        for (streams, _), (others, _) in zip(self.convs, other.convs):
            for conv, new in zip(streams[:2], others[:2]):
                conv.buffer = torch.cat([conv.buffer, new.buffer])


class TCN(nn.Module):
    """Causal TCN: (batch, T, input_dim) -> (batch, T, channels[-1]); block i has dilation 2**i.

    The submodule is called `network` (a Sequential of TemporalBlocks) so state_dict keys are those of the
    reference's TemporalConvNet: network.{i}.conv1.weight_g, ...
    """

    def __init__(
        self,
        input_dim: int = 1024,
        channels=(1024, 768, 512, 256),
        kernel_size: int = 15,
        dropout: float = 0.3,
        init: str = "reference",
    ):
        super().__init__()
        self.input_dim = input_dim
        self.channels = tuple(int(c) for c in channels)
        self.kernel_size = kernel_size
        blocks = []
        for i, out_ch in enumerate(self.channels):
            in_ch = input_dim if i == 0 else self.channels[i - 1]
            blocks.append(TemporalBlock(in_ch, out_ch, kernel_size, 2**i, dropout))
        self.network = nn.Sequential(*blocks)
        if init == "normal":
            for block in self.network:
                for conv in (block.conv1, block.conv2):
                    with torch.no_grad():
                        conv.weight_v.normal_(0.0, 0.01)
                        conv.weight_g.copy_(conv.weight_v.norm(dim=(1, 2), keepdim=True))
        elif init != "reference":
            raise ValueError(f"unknown TCN init {init!r}: 'reference' or 'normal'")

    @property
    def receptive_field(self) -> int:
        """Frames of input that one output frame sees: 1 + 2 (k-1) sum_i 2**i (421 for the paper's TCN)."""
        return 1 + 2 * (self.kernel_size - 1) * sum(2**i for i in range(len(self.channels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.transpose(1, 2)).transpose(1, 2)

    # ---------------------------------------------------------------------------------------------- streaming

    def init_state(self, batch_size: int = 1, device=None, dtype=None, precision: str = "fp32") -> TCNState:
        """A fresh streaming state (zero history, as the causal padding): the step's weights are computed here,
        held in `precision` ("fp32" | "bf16" | "int8", see the module docstring)."""
        param = self.network[0].conv1.weight_v
        device = param.device if device is None else torch.device(device)
        dtype = param.dtype if dtype is None else dtype
        state = TCNState(precision=precision)
        with torch.no_grad():
            for block in self.network:
                streams = []
                for conv in (block.conv1, block.conv2):
                    k, d = conv.kernel_size, conv.dilation
                    size = (k - 1) * d + 1
                    w = conv.weight().permute(0, 2, 1).reshape(conv.out_channels, k * conv.in_channels)
                    slots = torch.arange(size).unsqueeze(1)
                    taps = (slots - (k - 1 - torch.arange(k)) * d) % size  # oldest tap first, as in conv1d
                    product = StepProduct(w.to(device), conv.bias.detach().to(device), precision, dtype)
                    buffer = torch.zeros(batch_size, size, conv.in_channels, device=device, dtype=product.input_dtype)
                    streams.append(_ConvStream(product=product, buffer=buffer, taps=taps.to(device)))
                if block.downsample is not None:
                    ds = block.downsample
                    streams.append(
                        StepProduct(
                            ds.weight.detach()[:, :, 0].to(device), ds.bias.detach().to(device), precision, dtype
                        )
                    )
                else:
                    streams.append(None)
                prelu = [m.weight.detach().to(device, dtype) for m in (block.relu1, block.relu2, block.relu)]
                state.convs.append((streams, prelu))
        return state

    @torch.no_grad()
    def step(self, x: torch.Tensor, state: TCNState) -> torch.Tensor:
        """One frame (batch, input_dim) -> (batch, channels[-1]); updates `state` in place (eval semantics)."""
        pos = state.frames
        for (conv1, conv2, downsample), (p1, p2, p3) in state.convs:
            out = F.prelu(conv1(x, pos), p1)
            out = F.prelu(conv2(out, pos), p2)
            res = x if downsample is None else downsample(x)
            x = F.prelu(out + res, p3)
        state.frames = pos + 1
        return x
