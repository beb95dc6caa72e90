"""The ablations of the paper model, each a registered kind (`model.kind`):

- `tcn`          TCN only: the same TCN -> the same head (no Mamba)
- `mamba`        Mamba only: Linear(input_dim, d_model) -> the same Mamba encoder -> head (no TCN)
- `mlp`          frame-wise MLP: one frame at a time, Linear/PReLU/Dropout layers as wide as the TCN's
                 channels -> head; no temporal context at all
- `transformer`  the same TCN -> a Transformer encoder of about the Mamba encoder's size in place of Mamba
                 (per-frame normalisation, sinusoidal positions, `transformer_layers` post-norm layers of
                 `transformer_heads` heads and `transformer_ff` feed-forward width, final Linear) -> head.
                 Causal attention by default (`transformer_causal`), like the causal TCN and Mamba, so a frame
                 never sees the future and padding at a window's end changes nothing. With the defaults (2
                 layers, 4 heads, ff 320) it has 923,008 parameters against the Mamba encoder's 919,296.

Each takes (B, T, input_dim) and returns (B, T, n_outputs).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import nn

from mambava.temporal.base import TemporalBaseline, paper_mamba_encoder, paper_tcn, regression_head
from mambava.temporal.registry import register_temporal_model

# The `transformer` kind's config keys and their defaults.
TRANSFORMER_DEFAULTS: dict[str, Any] = {
    "transformer_layers": 2,
    "transformer_heads": 4,
    "transformer_ff": 320,
    "transformer_dropout": 0.1,
    "transformer_causal": True,
}


@register_temporal_model("tcn")
class TCNOnly(TemporalBaseline):
    """TCN -> head: the paper model without its Mamba encoder."""

    kind = "tcn"

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        c = self.config
        self.temporal = paper_tcn(c)
        self.head = regression_head(c["tcn_channels"][-1], c["head_hidden"], c["n_outputs"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.temporal(x))


@register_temporal_model("mamba")
class MambaOnly(TemporalBaseline):
    """Linear(input_dim, d_model) -> Mamba encoder -> head: the paper model without its TCN."""

    kind = "mamba"

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        c = self.config
        self.proj = nn.Linear(c["input_dim"], c["d_model"])
        self.drop = nn.Dropout(c["dropout"])
        self.mamba = paper_mamba_encoder(c)
        self.head = regression_head(c["d_model"], c["head_hidden"], c["n_outputs"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mamba(self.drop(self.proj(x))))


@register_temporal_model("mlp")
class FrameMLP(TemporalBaseline):
    """Each frame on its own: Linear -> PReLU -> Dropout per TCN width, then the head."""

    kind = "mlp"

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        c = self.config
        layers: list[nn.Module] = []
        width = c["input_dim"]
        for channels in c["tcn_channels"]:
            layers += [nn.Linear(width, channels), nn.PReLU(), nn.Dropout(c["dropout"])]
            width = channels
        self.mlp = nn.Sequential(*layers)
        self.head = regression_head(width, c["head_hidden"], c["n_outputs"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mlp(x))


def sinusoidal_positions(length: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(length, dim) sine/cosine position codes (Vaswani et al.), computed on the fly (no buffer)."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    codes = torch.zeros(length, dim, device=device, dtype=torch.float32)
    codes[:, 0::2] = torch.sin(position * frequency)
    codes[:, 1::2] = torch.cos(position * frequency[: dim // 2])
    return codes.to(dtype)


class TransformerEncoder(nn.Module):
    """In place of the Mamba encoder: per-frame normalisation, positions, post-norm Transformer layers, Linear."""

    def __init__(self, d_model: int, n_layers: int, n_heads: int, d_ff: int, dropout: float, causal: bool):
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            d_model, n_heads, d_ff, dropout, batch_first=True, norm_first=False, activation="gelu"
        )
        self.layers = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.proj = nn.Linear(d_model, d_model)
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        x = nn.functional.layer_norm(x, x.shape[-1:])
        x = x + sinusoidal_positions(t, x.shape[-1], x.device, x.dtype)
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=x.device) if self.causal else None
        return self.proj(self.layers(x, mask=mask, is_causal=self.causal))


@register_temporal_model(
    "transformer", fields=tuple((key, type(value), value) for key, value in TRANSFORMER_DEFAULTS.items())
)
class TCNTransformer(TemporalBaseline):
    """TCN -> Transformer encoder -> head: the paper model with attention in place of Mamba."""

    kind = "transformer"

    def __init__(self, cfg: Mapping[str, Any]):
        super().__init__(cfg)
        c = self.config
        self.temporal = paper_tcn(c)
        last = c["tcn_channels"][-1]
        self.adapt = nn.Identity() if last == c["d_model"] else nn.Linear(last, c["d_model"])
        self.encoder = TransformerEncoder(
            c["d_model"],
            c["transformer_layers"],
            c["transformer_heads"],
            c["transformer_ff"],
            c["transformer_dropout"],
            c["transformer_causal"],
        )
        self.head = regression_head(c["d_model"], c["head_hidden"], c["n_outputs"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.adapt(self.temporal(x))))
