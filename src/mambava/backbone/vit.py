"""The ViT encoder: its configuration (presets by name), the model with timm's parameter names, MAE's sin-cos
position embedding and its resampling, and the encoder's own file format (`ViTEncoder.save`).

The parameter names are timm's (`cls_token, pos_embed, patch_embed.proj, blocks.{i}.{norm1, attn.qkv, attn.proj,
norm2, mlp.fc1, mlp.fc2}, norm`), so facebookresearch/mae and timm weights load as they are (`weights.py`).
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from mambava.core.checkpoint import save_checkpoint
from mambava.core.errors import MambavaError

# Face statistics used by the reference (FreedomPuppy77/Charon, preprocess/mae/feature_VA.py:52).
FACE_MEAN = (0.471, 0.363, 0.333)
FACE_STD = (0.220, 0.193, 0.180)

ENCODER_FORMAT = "mambava.vit_encoder"  # core.checkpoint writes "mambava.vit_encoder/1"


# --------------------------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class ViTConfig:
    """Shape of a ViT encoder plus the preprocessing it expects (saved with it)."""

    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    ln_eps: float = 1e-6
    qkv_bias: bool = True
    in_chans: int = 3
    drop_path: float = 0.0  # stochastic depth (training only), linearly increasing over the blocks
    mean: tuple[float, float, float] = FACE_MEAN
    std: tuple[float, float, float] = FACE_STD
    name: str = "custom"
    # width of a linear adapter after the final norm (0: none, the feature is the normed CLS token): a distilled
    # student's map into its teacher's feature space, so its features are the teacher's width and meaning
    out_dim: int = 0

    def __post_init__(self):
        if self.embed_dim % self.num_heads:
            raise MambavaError(f"ViT config: embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.img_size % self.patch_size:
            raise MambavaError(
                f"ViT config: img_size {self.img_size} is not a multiple of patch_size {self.patch_size}"
            )

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def mlp_hidden(self) -> int:
        return int(round(self.embed_dim * self.mlp_ratio))

    @property
    def feature_dim(self) -> int:
        """Width of the per-frame feature: the adapter's output where there is one, else the CLS token's."""
        return self.out_dim or self.embed_dim

    def flops(self) -> int:
        """FLOPs (2 x multiply-adds) of one image through the encoder: the patch projection, per block the
        qkv/proj/MLP matrix products and attention's two (tokens x tokens x D) products, and the adapter.
        Norms, softmax and GELU (O(tokens x D)) are left out. ViT-L/16 at 224 px: 123.1 GFLOP."""
        tokens = self.grid * self.grid + 1
        d = self.embed_dim
        per_block = tokens * (4 * d * d + 2 * d * self.mlp_hidden) + 2 * tokens * tokens * d
        patch = (tokens - 1) * self.in_chans * self.patch_size**2 * d
        return 2 * (self.depth * per_block + patch + d * self.out_dim)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    def describe(self) -> str:
        """One line for reports: the preset name and the shape."""
        return (
            f"{self.name} (D={self.embed_dim}, depth={self.depth}, heads={self.num_heads}, "
            f"patch={self.patch_size}, img={self.img_size}, ln_eps={self.ln_eps:g})"
        )

    @classmethod
    def from_dict(cls, data: dict) -> "ViTConfig":
        known = {f.name for f in fields(cls)}
        data = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known}
        return cls(**data)


PRESETS: dict[str, ViTConfig] = {
    "vit_tiny_patch16": ViTConfig(embed_dim=192, depth=12, num_heads=3, name="vit_tiny_patch16"),
    "vit_small_patch16": ViTConfig(embed_dim=384, depth=12, num_heads=6, name="vit_small_patch16"),
    # distillation students at 112 px, the aligned crops' own size: a quarter of the 224 px tokens
    "vit_tiny_patch16_112": ViTConfig(img_size=112, embed_dim=192, depth=12, num_heads=3, name="vit_tiny_patch16_112"),
    "vit_small_patch16_112": ViTConfig(
        img_size=112, embed_dim=384, depth=12, num_heads=6, name="vit_small_patch16_112"
    ),
    "vit_base_patch16": ViTConfig(embed_dim=768, depth=12, num_heads=12, name="vit_base_patch16"),
    "vit_large_patch16": ViTConfig(embed_dim=1024, depth=24, num_heads=16, name="vit_large_patch16"),
    "vit_huge_patch14": ViTConfig(patch_size=14, embed_dim=1280, depth=32, num_heads=16, name="vit_huge_patch14"),
}
_ALIASES = {
    "vit_tiny": "vit_tiny_patch16",
    "tiny": "vit_tiny_patch16",
    "vit_small": "vit_small_patch16",
    "small": "vit_small_patch16",
    "vit_tiny_112": "vit_tiny_patch16_112",
    "tiny_112": "vit_tiny_patch16_112",
    "vit_small_112": "vit_small_patch16_112",
    "small_112": "vit_small_patch16_112",
    "vit_base": "vit_base_patch16",
    "base": "vit_base_patch16",
    "vit_b16": "vit_base_patch16",
    "vit_large": "vit_large_patch16",
    "large": "vit_large_patch16",
    "vit_l16": "vit_large_patch16",
    "vit_huge": "vit_huge_patch14",
    "huge": "vit_huge_patch14",
    "vit_h14": "vit_huge_patch14",
}


def vit_config(arch: str | ViTConfig, **overrides) -> ViTConfig:
    """A preset by name (`vit_large_patch16`, `vit_large`, `large`, ...; timm's `_224` suffix and `mae_` prefix
    are accepted), or a ViTConfig as is; keyword overrides replace fields (e.g. img_size=112)."""
    if isinstance(arch, ViTConfig):
        return replace(arch, **overrides) if overrides else arch
    key = arch.lower().replace("-", "_").replace("/", "_")
    key = re.sub(r"^mae_", "", re.sub(r"_224$", "", key))
    key = _ALIASES.get(key, key)
    if key not in PRESETS:
        raise MambavaError(f"unknown ViT architecture {arch!r}; known: {', '.join(PRESETS)}")
    return replace(PRESETS[key], **overrides) if overrides else PRESETS[key]


# --------------------------------------------------------------------------------------------------------------
# The model (timm parameter names)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.patch_size = cfg.patch_size
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)
        self.attn = Attention(cfg.embed_dim, cfg.num_heads, cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)
        self.mlp = Mlp(cfg.embed_dim, cfg.mlp_hidden)
        self.drop_path = drop_path

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_path == 0.0:
            return x
        keep = 1.0 - self.drop_path
        return x * x.new_empty(x.shape[0], 1, 1).bernoulli_(keep).div_(keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self._drop(self.attn(self.norm1(x)))
        return x + self._drop(self.mlp(self.norm2(x)))


def sincos_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos position embedding, (1, 1 + grid*grid, dim), a zero row for the CLS token."""
    if dim % 4:
        raise MambavaError(f"sin-cos position embedding needs embed_dim divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4.0))
    coords = torch.arange(grid, dtype=torch.float64)
    gw, gh = torch.meshgrid(coords, coords, indexing="xy")  # MAE: grid = meshgrid(w, h)

    def one_axis(pos):
        out = pos.reshape(-1, 1) * omega.reshape(1, -1)
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    emb = torch.cat([one_axis(gw), one_axis(gh)], dim=1)  # MAE concatenates the h-embedding of grid[0] = w first
    emb = torch.cat([torch.zeros(1, dim, dtype=torch.float64), emb], dim=0)
    return emb.float().unsqueeze(0)


def resample_pos_embed(pos_embed: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Bicubic resampling of the patch part of a (1, 1 + g*g, D) position embedding to a new grid."""
    n = pos_embed.shape[1] - 1
    old = int(math.isqrt(n))
    if old * old != n:
        raise MambavaError(f"position embedding with {n} patch positions is not a square grid")
    if (old, old) == (grid_h, grid_w):
        return pos_embed
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    patch_pos = patch_pos.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    patch_pos = F.interpolate(patch_pos, size=(grid_h, grid_w), mode="bicubic", antialias=True, align_corners=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1).to(pos_embed.dtype)
    return torch.cat([cls_pos, patch_pos], dim=1)


class ViTEncoder(nn.Module):
    """A plain ViT (pre-norm blocks, CLS token, learned/fixed absolute position embedding).

    `encoder(images)` maps normalised images (N, 3, H, W) to the CLS token after the final norm, (N, D).
    Inputs of another size than `config.img_size` get a bicubically resampled position embedding.
    """

    def __init__(self, config: ViTConfig | str = "vit_base_patch16"):
        super().__init__()
        cfg = vit_config(config)
        self.config = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.grid * cfg.grid, cfg.embed_dim))
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(Block(cfg, rate) for rate in rates)
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.ln_eps)
        if cfg.out_dim:
            self.adapter = nn.Linear(cfg.embed_dim, cfg.out_dim)
        self.load_report = None  # the weights.LoadReport, set by load_encoder
        if self.cls_token.device.type != "meta":
            self.init_weights()

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    @property
    def feature_dim(self) -> int:
        return self.config.feature_dim

    @torch.no_grad()
    def init_weights(self) -> None:
        """MAE's initialisation: fixed sin-cos position embedding, xavier-uniform linears and patch projection,
        N(0, 0.02) CLS token, LayerNorms at (1, 0)."""
        self.pos_embed.copy_(sincos_pos_embed(self.config.embed_dim, self.config.grid))
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def pos_embed_for(self, grid_h: int, grid_w: int) -> torch.Tensor:
        if grid_h == grid_w == self.config.grid:
            return self.pos_embed
        return resample_pos_embed(self.pos_embed, grid_h, grid_w)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Patch tokens plus position embedding, CLS token first: (N, 1 + L, D)."""
        p = self.config.patch_size
        if images.shape[-1] % p or images.shape[-2] % p:
            raise MambavaError(f"image size {tuple(images.shape[-2:])} is not a multiple of the patch size {p}")
        pos = self.pos_embed_for(images.shape[-2] // p, images.shape[-1] // p)
        x = self.patch_embed(images) + pos[:, 1:]
        cls = (self.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)
        return torch.cat([cls, x], dim=1)

    def forward_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """All tokens after the final norm, (N, 1 + L, D)."""
        x = self.embed(images)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def cls_feature(self, tokens: torch.Tensor) -> torch.Tensor:
        """The per-frame feature from the last block's tokens (N, 1 + L, D): the normed CLS token, through the
        adapter where there is one (N, feature_dim)."""
        x = self.norm(tokens[:, 0])  # LayerNorm is per token: normalising the CLS token alone is the same
        return self.adapter(x) if self.config.out_dim else x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.embed(images)
        for block in self.blocks:
            x = block(x)
        return self.cls_feature(x)

    def save(self, path: str | os.PathLike) -> Path:
        """Write weights + config as one safetensors file (atomically); `load_encoder` reads it back."""
        return save_checkpoint(
            path, {k: v.to("cpu") for k, v in self.state_dict().items()}, ENCODER_FORMAT, asdict(self.config)
        )
