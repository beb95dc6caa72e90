"""The visual backbone: an MAE ViT encoder whose CLS token (after the final norm) is the per-frame feature.

    from mambava.backbone import load_encoder, preprocess, FeatureExtractor
    encoder = load_encoder("mae_pretrain_vit_large.pth")     # size inferred from the tensors
    feats = FeatureExtractor(encoder, device="cpu").features(crops)   # uint8 (N, H, W, 3) RGB -> (N, 1024)

- The ViT uses timm's parameter names (`cls_token, pos_embed, patch_embed.proj, blocks.{i}.{norm1, attn.qkv,
  attn.proj, norm2, mlp.fc1, mlp.fc2}, norm`), so facebookresearch/mae and timm weights load as they are;
  Hugging Face `ViTMAEModel` weights (separate q/k/v, other names) are mapped on load. Each format keeps its
  own LayerNorm epsilon (1e-6 for MAE/timm, `layer_norm_eps` = 1e-12 for Hugging Face).
- Checkpoint formats read by `load_encoder` (always from a local path, never downloaded):
  `mae`  facebookresearch/mae `.pth`: `{"model": state_dict}`; decoder keys are dropped with a note;
  `timm` a flat timm state_dict (`.safetensors`, `.pth`, `.bin`) or a timm hub folder (config.json with
         "architecture" + model.safetensors / pytorch_model.bin);
  `hf`   a Hugging Face folder (config.json with model_type "vit_mae" + model.safetensors, sharded or not,
         or pytorch_model.bin), `ViTMAEModel` or `ViTMAEForPreTraining` (its `vit.` prefix and decoder dropped);
  `mambava` a file written by `ViTEncoder.save` (safetensors, config in its metadata).
- Preprocessing is the reference's (FreedomPuppy77/Charon, preprocess/mae/feature_VA.py:50-52): RGB, PIL
  bicubic resize to 224x224 (uint8 result, as torchvision's Resize on a PIL image), /255, normalise with the
  face mean/std.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mambava.errors import MambavaError, torch_load_reason
from mambava.fileio import atomic_path

log = logging.getLogger(__name__)

# Face statistics used by the reference (FreedomPuppy77/Charon, preprocess/mae/feature_VA.py:52).
FACE_MEAN = (0.471, 0.363, 0.333)
FACE_STD = (0.220, 0.193, 0.180)

MAMBAVA_FORMAT_TAG = "mambava.vit_encoder"


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

    def __post_init__(self):
        if self.embed_dim % self.num_heads:
            raise MambavaError(f"ViT config: embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.img_size % self.patch_size:
            raise MambavaError(f"ViT config: img_size {self.img_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size

    @property
    def mlp_hidden(self) -> int:
        return int(round(self.embed_dim * self.mlp_ratio))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> "ViTConfig":
        known = {f.name for f in fields(cls)}
        data = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known}
        return cls(**data)


PRESETS: dict[str, ViTConfig] = {
    "vit_tiny_patch16": ViTConfig(embed_dim=192, depth=12, num_heads=3, name="vit_tiny_patch16"),
    "vit_small_patch16": ViTConfig(embed_dim=384, depth=12, num_heads=6, name="vit_small_patch16"),
    "vit_base_patch16": ViTConfig(embed_dim=768, depth=12, num_heads=12, name="vit_base_patch16"),
    "vit_large_patch16": ViTConfig(embed_dim=1024, depth=24, num_heads=16, name="vit_large_patch16"),
    "vit_huge_patch14": ViTConfig(patch_size=14, embed_dim=1280, depth=32, num_heads=16, name="vit_huge_patch14"),
}
_ALIASES = {
    "vit_tiny": "vit_tiny_patch16", "tiny": "vit_tiny_patch16",
    "vit_small": "vit_small_patch16", "small": "vit_small_patch16",
    "vit_base": "vit_base_patch16", "base": "vit_base_patch16", "vit_b16": "vit_base_patch16",
    "vit_large": "vit_large_patch16", "large": "vit_large_patch16", "vit_l16": "vit_large_patch16",
    "vit_huge": "vit_huge_patch14", "huge": "vit_huge_patch14", "vit_h14": "vit_huge_patch14",
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
        self.load_report: LoadReport | None = None
        if self.cls_token.device.type != "meta":
            self.init_weights()

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

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

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.embed(images)
        for block in self.blocks:
            x = block(x)
        return self.norm(x[:, 0])  # LayerNorm is per token: normalising the CLS token alone is the same

    def save(self, path: str | os.PathLike) -> Path:
        """Write weights + config as one safetensors file (atomically); `load_encoder` reads it back."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"format": MAMBAVA_FORMAT_TAG, "config": self.config.to_json()})
        return path


# --------------------------------------------------------------------------------------------------------------
# Checkpoint loading


@dataclass
class LoadReport:
    """What `load_encoder` found: the format, the config used, and every key it did not use, by name."""

    path: str
    format: str
    config: ViTConfig
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # decoder / classifier keys, not part of the encoder
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{self.path}: {self.format} checkpoint, {self.config.name} "
                 f"(D={self.config.embed_dim}, depth={self.config.depth}, heads={self.config.num_heads}, "
                 f"patch={self.config.patch_size}, img={self.config.img_size}, ln_eps={self.config.ln_eps:g})"]
        parts += self.notes
        if self.dropped:
            parts.append(f"dropped {len(self.dropped)} non-encoder keys ({_name_list(self.dropped)})")
        if self.missing:
            parts.append(f"missing keys: {_name_list(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected keys: {_name_list(self.unexpected)}")
        return "; ".join(parts)


def _name_list(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


_DROP_PATTERNS = (
    re.compile(r"^(decoder[._]|mask_token$)"),  # MAE decoder (facebookresearch names and HF's `decoder.`)
    re.compile(r"^(head|fc_norm|pooler)\."),  # classifier / pooling head: the CLS feature does not use it
)
_IGNORED_KEYS = re.compile(r"(^|\.)(num_batches_tracked|attn\.relative_position_index)$")


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        tensors, meta = {}, {}
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            for key in handle.keys():
                tensors[key] = handle.get_tensor(key)
        return tensors, meta
    except Exception as error:  # safetensors raises its own error types
        raise MambavaError(f"{path}: not a readable safetensors file ({error})") from None


def _read_torch(path: Path) -> dict:
    try:
        try:  # memory-mapped: tensors are read once, straight into the model
            obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            obj = torch.load(str(path), map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as error:
        raise MambavaError(f"{path}: cannot read as a PyTorch checkpoint ({torch_load_reason(error)})") from None
    if not isinstance(obj, dict):
        raise MambavaError(f"{path}: expected a state_dict (a dict of tensors), found {type(obj).__name__}")
    return obj


def _unwrap(obj: dict, path: Path) -> tuple[dict[str, torch.Tensor], bool]:
    """The state_dict inside a checkpoint dict; True when it came from a `{"model": ...}` (MAE) wrapper."""
    wrapped = False
    for key in ("model", "state_dict", "model_state", "module"):
        inner = obj.get(key)
        if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            obj, wrapped = inner, key == "model"
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise MambavaError(f"{path}: no tensors found (keys: {_name_list(list(obj))})")
    # wrapper prefixes that every key carries (DDP's `module.`, ...) hide the ViT names: strip them
    for prefix in ("module.", "model.", "encoder.", "backbone."):
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors, wrapped


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The raw tensors of a checkpoint file (.safetensors, or a torch file unwrapped from {"model": ...} and
    DDP prefixes), names as stored."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return _read_safetensors(path)[0]
    return _unwrap(_read_torch(path), path)[0]


_HF_LAYER = {
    "attention.output.dense": "attn.proj",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}


def hf_to_timm(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename Hugging Face ViTMAE keys to timm's (fusing q, k, v into qkv); returns (state, dropped keys)."""
    if all(k.startswith("vit.") or k.startswith("decoder.") for k in state):
        state = {k[len("vit."):] if k.startswith("vit.") else k: v for k, v in state.items()}
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    simple = {
        "embeddings.cls_token": "cls_token",
        "embeddings.position_embeddings": "pos_embed",
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "layernorm.weight": "norm.weight",
        "layernorm.bias": "norm.bias",
    }
    layer_re = re.compile(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$")
    for key, value in state.items():
        if key.startswith("decoder.") or key.startswith("pooler."):
            dropped.append(key)
            continue
        if key in simple:
            out[simple[key]] = value
            continue
        m = layer_re.match(key)
        if m:
            i, inner, kind = int(m.group(1)), m.group(2), m.group(3)
            qkv_m = re.fullmatch(r"attention\.attention\.(query|key|value)", inner)
            if qkv_m:
                qkv.setdefault((i, kind), {})[qkv_m.group(1)] = value
                continue
            if inner in _HF_LAYER:
                out[f"blocks.{i}.{_HF_LAYER[inner]}.{kind}"] = value
                continue
        out[key] = value  # left as is: reported as unexpected
    for (i, kind), parts in qkv.items():
        if set(parts) == {"query", "key", "value"}:
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
        else:
            for name, value in parts.items():
                out[f"encoder.layer.{i}.attention.attention.{name}.{kind}"] = value
    return out, dropped


def _is_hf_layout(keys: Iterable[str]) -> bool:
    return any(k.startswith(("embeddings.", "vit.embeddings.", "encoder.layer.", "vit.encoder.layer.")) for k in keys)


def _preset_for(embed_dim: int, depth: int, patch: int) -> ViTConfig | None:
    for preset in PRESETS.values():
        if (preset.embed_dim, preset.depth, preset.patch_size) == (embed_dim, depth, patch):
            return preset
    return None


def infer_config(state: dict[str, torch.Tensor], path: str = "checkpoint", **overrides) -> ViTConfig:
    """ViT shape from a timm-named state_dict: width, depth, patch, MLP ratio and image size from the tensors;
    the number of heads (invisible in the shapes) from the matching preset, else embed_dim / 64."""
    need = ("cls_token", "pos_embed", "patch_embed.proj.weight")
    absent = [k for k in need if k not in state]
    if absent:
        raise MambavaError(f"{path}: not a ViT encoder checkpoint, no {', '.join(absent)} "
                           f"(first keys: {_name_list(sorted(state), 6)})")
    embed_dim = state["cls_token"].shape[-1]
    proj = state["patch_embed.proj.weight"]
    patch, in_chans = proj.shape[-1], proj.shape[1]
    depth = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    mlp_ratio = fc1.shape[0] / embed_dim if fc1 is not None else 4.0
    n_pos = state["pos_embed"].shape[1] - 1
    grid = math.isqrt(n_pos)
    img_size = grid * patch if grid * grid == n_pos else 224
    preset = _preset_for(embed_dim, depth, patch)
    heads = preset.num_heads if preset else max(1, embed_dim // 64)
    qkv_bias = "blocks.0.attn.qkv.bias" in state if depth else True
    base = dict(img_size=img_size, patch_size=patch, embed_dim=embed_dim, depth=depth, num_heads=heads,
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, in_chans=in_chans,
                name=preset.name if preset else f"vit_d{embed_dim}_l{depth}_p{patch}")
    base.update(overrides)
    return ViTConfig(**base)


def _hf_config(cfg: dict, path: Path) -> dict:
    if cfg.get("hidden_act", "gelu") not in ("gelu", "gelu_python"):
        raise MambavaError(f"{path}: hidden_act {cfg.get('hidden_act')!r} is not supported (only exact GELU)")
    hidden = int(cfg.get("hidden_size", 768))
    patch = int(cfg.get("patch_size", 16))
    depth = int(cfg.get("num_hidden_layers", 12))
    preset = _preset_for(hidden, depth, patch)
    return dict(img_size=int(cfg.get("image_size", 224)), patch_size=patch, embed_dim=hidden, depth=depth,
                num_heads=int(cfg.get("num_attention_heads", 12)),
                mlp_ratio=int(cfg.get("intermediate_size", 4 * hidden)) / hidden,
                ln_eps=float(cfg.get("layer_norm_eps", 1e-12)), qkv_bias=bool(cfg.get("qkv_bias", True)),
                in_chans=int(cfg.get("num_channels", 3)), name=preset.name if preset else "hf_vit_mae")


def _read_folder(path: Path) -> tuple[str, dict[str, torch.Tensor], dict]:
    """(format, state, config kwargs) of a Hugging Face or timm hub folder."""
    config_file = path / "config.json"
    if not config_file.is_file():
        raise MambavaError(f"{path}: a checkpoint folder needs a config.json (Hugging Face or timm layout)")
    try:
        cfg = json.loads(config_file.read_text())
    except json.JSONDecodeError as error:
        raise MambavaError(f"{config_file}: not valid JSON ({error})") from None
    state: dict[str, torch.Tensor] = {}
    index = path / "model.safetensors.index.json"
    if (path / "model.safetensors").is_file():
        state = _read_safetensors(path / "model.safetensors")[0]
    elif index.is_file():
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(_read_safetensors(path / shard)[0])
    elif (path / "pytorch_model.bin").is_file():
        state = _unwrap(_read_torch(path / "pytorch_model.bin"), path / "pytorch_model.bin")[0]
    else:
        raise MambavaError(f"{path}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")
    model_type = cfg.get("model_type", "")
    if model_type in ("vit_mae", "vit") or _is_hf_layout(state):
        return "hf", state, _hf_config(cfg, path)
    if "architecture" in cfg:
        return "timm", state, {}
    raise MambavaError(f"{config_file}: neither a Hugging Face ViTMAE config (model_type {model_type!r}) "
                       f"nor a timm config (no 'architecture')")


def read_checkpoint(path: str | os.PathLike) -> tuple[str, dict[str, torch.Tensor], dict, list[str]]:
    """(format, timm-named state, config hints, dropped keys) of any supported checkpoint."""
    path = Path(path)
    if not path.exists():
        raise MambavaError(f"{path}: checkpoint not found (pass a local file or folder; nothing is downloaded)")
    hints: dict = {}
    if path.is_dir():
        fmt, state, hints = _read_folder(path)
    elif path.suffix == ".safetensors":
        state, meta = _read_safetensors(path)
        if meta.get("format") == MAMBAVA_FORMAT_TAG:
            fmt, hints = "mambava", json.loads(meta["config"])
        else:
            fmt = "hf" if _is_hf_layout(state) else "timm"
            if fmt == "hf":
                hints = {"ln_eps": 1e-12}  # a bare HF weights file without its config.json: HF's default eps
    else:
        state, wrapped = _unwrap(_read_torch(path), path)
        if _is_hf_layout(state):
            fmt, hints = "hf", {"ln_eps": 1e-12}
        else:
            has_decoder = any(k.startswith("decoder_") or k == "mask_token" for k in state)
            fmt = "mae" if wrapped or has_decoder else "timm"
    dropped: list[str] = []
    if fmt == "hf":
        state, dropped = hf_to_timm(state)
    keep = {}
    for key, value in state.items():
        if _IGNORED_KEYS.search(key):
            continue
        if any(p.match(key) for p in _DROP_PATTERNS):
            dropped.append(key)
        else:
            keep[key] = value
    return fmt, keep, hints, dropped


def load_encoder(path: str | os.PathLike, arch: str | ViTConfig | None = None, *, strict: bool = True,
                 img_size: int | None = None) -> ViTEncoder:
    """Build a ViTEncoder from a local checkpoint in any supported format (see the module docstring).

    arch=None infers the size from the tensors (or reads it from the file's config); an explicit arch whose
    shapes differ raises MambavaError listing the mismatching tensors. Missing/unexpected keys are reported by
    name: an error when strict, a warning otherwise. img_size (e.g. 112) resamples the position embedding.
    The LoadReport is kept as `encoder.load_report`.
    """
    fmt, state, hints, dropped = read_checkpoint(path)
    notes: list[str] = []
    if arch is not None:
        cfg = vit_config(arch)
        if "ln_eps" in hints:  # the format's own epsilon wins over the preset's
            cfg = replace(cfg, ln_eps=hints["ln_eps"])
    elif "embed_dim" in hints:  # the file's own config (mambava metadata, Hugging Face config.json)
        cfg = ViTConfig.from_dict(hints)
    else:
        cfg = infer_config(state, str(path), **hints)
        if cfg.name not in PRESETS:
            notes.append(f"no preset has this shape: assumed {cfg.num_heads} heads of 64 channels")
    if img_size is not None and img_size != cfg.img_size:
        cfg = replace(cfg, img_size=img_size)

    with torch.device("meta"):  # no time spent initialising weights that the checkpoint replaces
        model = ViTEncoder(cfg)
    model = model.to_empty(device="cpu")
    expected = model.state_dict()
    pos = state.get("pos_embed")
    if pos is not None and pos.ndim == 3 and pos.shape[1] != expected["pos_embed"].shape[1] \
            and pos.shape[-1] == expected["pos_embed"].shape[-1]:
        state["pos_embed"] = resample_pos_embed(pos, cfg.grid, cfg.grid)
        notes.append(f"position embedding resampled from {pos.shape[1] - 1} to {cfg.grid * cfg.grid} patches")

    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                  for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if mismatched:
        held = ""
        with contextlib.suppress(MambavaError):
            found = infer_config(state)
            held = f" (the file holds D={found.embed_dim}, depth={found.depth}, patch={found.patch_size})"
        raise MambavaError(f"{path}: checkpoint does not fit {cfg.name} (D={cfg.embed_dim}, depth={cfg.depth}, "
                           f"patch={cfg.patch_size}){held}; {len(mismatched)} tensors differ: "
                           f"{_name_list(mismatched, 6)}"
                           + ("; leave out --arch to infer the size from the file" if arch is not None else ""))
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    report = LoadReport(str(path), fmt, cfg, missing, unexpected, sorted(dropped), notes)
    if (missing or unexpected) and strict:
        raise MambavaError(report.summary())
    if missing:
        model.init_weights()  # (strict=False) what the checkpoint lacks starts from MAE's initialisation
    with torch.no_grad():
        for key, value in state.items():
            if key in expected:
                expected[key].copy_(value.to(expected[key].dtype))
    model.load_report = report
    (log.warning if missing or unexpected else log.info)(report.summary())
    return model.eval()


# --------------------------------------------------------------------------------------------------------------
# Preprocessing


def _as_uint8_hwc(image) -> np.ndarray:
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.dtype != np.uint8:
        raise MambavaError(f"crops must be uint8 RGB images, got dtype {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise MambavaError(f"a crop must be (H, W, 3) RGB, got shape {array.shape}")
    return array[:, :, :3]


def resize_crop(image, size: int = 224) -> np.ndarray:
    """One RGB crop (H, W, 3) uint8 -> (size, size, 3) uint8: PIL bicubic, exactly the reference's
    torchvision `Resize((size, size), BICUBIC, antialias=True)` on a PIL image."""
    from PIL import Image

    array = _as_uint8_hwc(image)
    if array.shape[:2] == (size, size):
        return np.array(array)  # a writable copy, as the resized path gives
    return np.array(Image.fromarray(np.ascontiguousarray(array)).resize((size, size), Image.BICUBIC))


def resize_crops(crops, size: int = 224) -> np.ndarray:
    """A batch (N, H, W, 3) or a list of RGB uint8 crops -> (N, size, size, 3) uint8."""
    if isinstance(crops, (np.ndarray, torch.Tensor)) and crops.ndim == 3:
        crops = crops[None]
    if len(crops) == 0:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([resize_crop(c, size) for c in crops])


def normalize(images: torch.Tensor, mean: Sequence[float] = FACE_MEAN, std: Sequence[float] = FACE_STD,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (N, S, S, 3) or (N, 3, S, S) -> float (N, 3, S, S): /255, minus mean, over std (on their device)."""
    if images.ndim != 4:
        raise MambavaError(f"expected a batch of images (N, S, S, 3), got shape {tuple(images.shape)}")
    if images.shape[-1] == 3 and images.shape[1] != 3:
        images = images.permute(0, 3, 1, 2)
    m = torch.tensor(mean, device=images.device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, device=images.device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    return ((images.float() - m) / s).to(dtype).contiguous()


def preprocess(crops, size: int = 224, mean: Sequence[float] = FACE_MEAN,
               std: Sequence[float] = FACE_STD) -> torch.Tensor:
    """RGB uint8 crops, (N, H, W, 3) numpy/torch or a list of (H, W, 3) -> normalised float (N, 3, size, size)."""
    return normalize(torch.from_numpy(resize_crops(crops, size)), mean, std)


# --------------------------------------------------------------------------------------------------------------
# Inference


def bf16_supported(device: torch.device | str) -> bool:
    """Whether bf16 matmuls are fast here: CUDA with bf16, or a CPU with AMX or AVX-512 BF16."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
            fn = getattr(cpu, probe, None)
            with contextlib.suppress(Exception):
                if fn is not None and fn():
                    return True
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    if precision not in ("auto", "bf16", "fp32"):
        raise MambavaError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if precision == "auto":
        return "bf16" if bf16_supported(device) else "fp32"
    return precision


def autocast_context(precision: str, device: torch.device | str):
    device = torch.device(device)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class FeatureExtractor:
    """Batched CLS features from RGB uint8 crops: `.features(crops) -> np.ndarray (N, D) float32`.

    precision "auto" uses bf16 autocast where the hardware runs it fast (CUDA, CPU AMX / AVX-512 BF16).
    """

    def __init__(self, encoder: ViTEncoder, batch_size: int = 64, device: str | torch.device = "cpu",
                 precision: str = "auto"):
        self.device = torch.device(device)
        self.encoder = encoder.eval().to(self.device)
        self.batch_size = int(batch_size)
        self.precision = resolve_precision(precision, self.device)
        self.config = encoder.config

    @property
    def dim(self) -> int:
        return self.config.embed_dim

    @torch.inference_mode()
    def features_from_resized(self, images: torch.Tensor) -> torch.Tensor:
        """Already-resized uint8 images (N, S, S, 3) or (N, 3, S, S), any device -> float32 (N, D) on device."""
        x = normalize(images.to(self.device, non_blocking=True), self.config.mean, self.config.std)
        with autocast_context(self.precision, self.device):
            return self.encoder(x).float()

    def features(self, crops) -> np.ndarray:
        n = len(crops)
        out = np.empty((n, self.dim), np.float32)
        for start in range(0, n, self.batch_size):
            batch = torch.from_numpy(resize_crops(crops[start:start + self.batch_size], self.config.img_size))
            out[start:start + len(batch)] = self.features_from_resized(batch).cpu().numpy()
        return out
