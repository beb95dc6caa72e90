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
(k-1)*d+1 inputs; a step gathers the k taps and does one matmul with the weight-normed kernel flattened to
(C_out, k*C_in), computed once when the state is made (so a state belongs to the weights it was made with).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F


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

    @property
    def padding(self) -> int:
        return (self.kernel_size - 1) * self.dilation

    def weight(self) -> torch.Tensor:
        """g * v / ||v||, the norm over (C_in, k) for each output channel (torch's weight_norm with dim=0)."""
        return self.weight_v * (self.weight_g / self.weight_v.norm(dim=(1, 2), keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv1d(F.pad(x, (self.padding, 0)), self.weight(), self.bias, dilation=self.dilation)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, dilation={self.dilation}, causal"


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


@dataclass
class _ConvStream:
    """One conv's streaming state: ring buffer (batch, S, C_in) of its last S = (k-1)*d+1 inputs."""

    weight: torch.Tensor  # (C_out, k*C_in): tap-major flattening of the weight-normed kernel
    bias: torch.Tensor
    buffer: torch.Tensor
    taps: torch.Tensor  # (S, k): buffer slots of the k taps, oldest first, for each write position

    def __call__(self, x: torch.Tensor, pos: int) -> torch.Tensor:
        slot = pos % self.buffer.shape[1]
        self.buffer[:, slot] = x
        window = self.buffer.index_select(1, self.taps[slot]).flatten(1)
        return F.linear(window, self.weight, self.bias)


@dataclass
class TCNState:
    """Streaming state of a TCN: one ring buffer per conv and the number of frames seen."""

    convs: list = field(default_factory=list)  # [(conv1, conv2, downsample weight, downsample bias)] per block
    frames: int = 0


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

    def init_state(self, batch_size: int = 1, device=None, dtype=None) -> TCNState:
        """A fresh streaming state (zero history, as the causal padding): weights are precomputed here."""
        param = self.network[0].conv1.weight_v
        device = param.device if device is None else torch.device(device)
        dtype = param.dtype if dtype is None else dtype
        state = TCNState()
        with torch.no_grad():
            for block in self.network:
                streams = []
                for conv in (block.conv1, block.conv2):
                    k, d = conv.kernel_size, conv.dilation
                    size = (k - 1) * d + 1
                    w = conv.weight().permute(0, 2, 1).reshape(conv.out_channels, k * conv.in_channels)
                    slots = torch.arange(size).unsqueeze(1)
                    taps = (slots - (k - 1 - torch.arange(k)) * d) % size  # oldest tap first, as in conv1d
                    streams.append(
                        _ConvStream(
                            weight=w.to(device, dtype).contiguous(),
                            bias=conv.bias.detach().to(device, dtype),
                            buffer=torch.zeros(batch_size, size, conv.in_channels, device=device, dtype=dtype),
                            taps=taps.to(device),
                        )
                    )
                if block.downsample is not None:
                    ds = block.downsample
                    streams.append(ds.weight.detach()[:, :, 0].to(device, dtype).contiguous())
                    streams.append(ds.bias.detach().to(device, dtype))
                else:
                    streams += [None, None]
                prelu = [m.weight.detach().to(device, dtype) for m in (block.relu1, block.relu2, block.relu)]
                state.convs.append((streams, prelu))
        return state

    @torch.no_grad()
    def step(self, x: torch.Tensor, state: TCNState) -> torch.Tensor:
        """One frame (batch, input_dim) -> (batch, channels[-1]); updates `state` in place (eval semantics)."""
        pos = state.frames
        for (conv1, conv2, ds_w, ds_b), (p1, p2, p3) in state.convs:
            out = F.prelu(conv1(x, pos), p1)
            out = F.prelu(conv2(out, pos), p2)
            res = x if ds_w is None else F.linear(x, ds_w, ds_b)
            x = F.prelu(out + res, p3)
        state.frames = pos + 1
        return x
