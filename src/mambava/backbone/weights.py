"""Checkpoint formats: every supported file or folder read into a timm-named state dict, and `load_encoder`.

Formats (always from a local path, never downloaded):
  `mae`  facebookresearch/mae `.pth`: `{"model": state_dict}`; decoder keys are dropped with a note;
  `timm` a flat timm state_dict (`.safetensors`, `.pth`, `.bin`) or a timm hub folder (config.json with
         "architecture" + model.safetensors / pytorch_model.bin);
  `hf`   a Hugging Face folder (config.json with model_type "vit_mae" + model.safetensors, sharded or not,
         or pytorch_model.bin), `ViTMAEModel` or `ViTMAEForPreTraining` (its `vit.` prefix and decoder dropped);
         Hugging Face names (separate q/k/v) are mapped to timm's on load;
  `mambava` a file written by `ViTEncoder.save` (safetensors, config in its metadata).
Each format keeps its own LayerNorm epsilon (1e-6 for MAE/timm, `layer_norm_eps` = 1e-12 for Hugging Face).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Iterable

import torch

from mambava.backbone.vit import ENCODER_FORMAT, PRESETS, ViTConfig, ViTEncoder, resample_pos_embed, vit_config
from mambava.core.checkpoint import LoadReport, load_checkpoint, load_torch_file, name_list, parse_tag
from mambava.core.errors import MambavaError

log = logging.getLogger(__name__)


_DROP_PATTERNS = (
    re.compile(r"^(decoder[._]|mask_token$)"),  # MAE decoder (facebookresearch names and HF's `decoder.`)
    re.compile(r"^(head|fc_norm|pooler)\."),  # classifier / pooling head: the CLS feature does not use it
)
_IGNORED_KEYS = re.compile(r"(^|\.)(num_batches_tracked|attn\.relative_position_index)$")


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    checkpoint = load_checkpoint(path)
    return checkpoint.tensors, checkpoint.metadata


def _read_torch(path: Path) -> dict:
    obj = load_torch_file(path, what="a PyTorch checkpoint", mmap=True)  # memory-mapped: read once, into the model
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
        raise MambavaError(f"{path}: no tensors found (keys: {name_list(list(obj))})")
    # wrapper prefixes that every key carries (DDP's `module.`, ...) hide the ViT names: strip them
    for prefix in ("module.", "model.", "encoder.", "backbone."):
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
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
        state = {k[len("vit.") :] if k.startswith("vit.") else k: v for k, v in state.items()}
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


def _preset_for(embed_dim: int, depth: int, patch: int, img_size: int | None = None) -> ViTConfig | None:
    """The preset of this shape, the one of this image size first (vit_tiny_patch16_112 over vit_tiny_patch16)."""
    found = [p for p in PRESETS.values() if (p.embed_dim, p.depth, p.patch_size) == (embed_dim, depth, patch)]
    return next((p for p in found if p.img_size == img_size), found[0] if found else None)


def infer_config(state: dict[str, torch.Tensor], path: str = "checkpoint", **overrides) -> ViTConfig:
    """ViT shape from a timm-named state_dict: width, depth, patch, MLP ratio and image size from the tensors;
    the number of heads (invisible in the shapes) from the matching preset, else embed_dim / 64."""
    need = ("cls_token", "pos_embed", "patch_embed.proj.weight")
    absent = [k for k in need if k not in state]
    if absent:
        raise MambavaError(
            f"{path}: not a ViT encoder checkpoint, no {', '.join(absent)} (first keys: {name_list(sorted(state), 6)})"
        )
    embed_dim = state["cls_token"].shape[-1]
    proj = state["patch_embed.proj.weight"]
    patch, in_chans = proj.shape[-1], proj.shape[1]
    depth = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))), default=-1)
    fc1 = state.get("blocks.0.mlp.fc1.weight")
    mlp_ratio = fc1.shape[0] / embed_dim if fc1 is not None else 4.0
    n_pos = state["pos_embed"].shape[1] - 1
    grid = math.isqrt(n_pos)
    img_size = grid * patch if grid * grid == n_pos else 224
    preset = _preset_for(embed_dim, depth, patch, img_size)
    heads = preset.num_heads if preset else max(1, embed_dim // 64)
    qkv_bias = "blocks.0.attn.qkv.bias" in state if depth else True
    adapter = state.get("adapter.weight")
    base = dict(
        img_size=img_size,
        patch_size=patch,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=qkv_bias,
        in_chans=in_chans,
        out_dim=adapter.shape[0] if adapter is not None else 0,
        name=preset.name if preset else f"vit_d{embed_dim}_l{depth}_p{patch}",
    )
    base.update(overrides)
    return ViTConfig(**base)


def _hf_config(cfg: dict, path: Path) -> dict:
    if cfg.get("hidden_act", "gelu") not in ("gelu", "gelu_python"):
        raise MambavaError(f"{path}: hidden_act {cfg.get('hidden_act')!r} is not supported (only exact GELU)")
    hidden = int(cfg.get("hidden_size", 768))
    patch = int(cfg.get("patch_size", 16))
    depth = int(cfg.get("num_hidden_layers", 12))
    preset = _preset_for(hidden, depth, patch, int(cfg.get("image_size", 224)))
    return dict(
        img_size=int(cfg.get("image_size", 224)),
        patch_size=patch,
        embed_dim=hidden,
        depth=depth,
        num_heads=int(cfg.get("num_attention_heads", 12)),
        mlp_ratio=int(cfg.get("intermediate_size", 4 * hidden)) / hidden,
        ln_eps=float(cfg.get("layer_norm_eps", 1e-12)),
        qkv_bias=bool(cfg.get("qkv_bias", True)),
        in_chans=int(cfg.get("num_channels", 3)),
        name=preset.name if preset else "hf_vit_mae",
    )


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
    raise MambavaError(
        f"{config_file}: neither a Hugging Face ViTMAE config (model_type {model_type!r}) "
        f"nor a timm config (no 'architecture')"
    )


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
        if parse_tag(meta.get("format"))[0] == ENCODER_FORMAT:
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


def load_encoder(
    path: str | os.PathLike, arch: str | ViTConfig | None = None, *, strict: bool = True, img_size: int | None = None
) -> ViTEncoder:
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
    if (
        pos is not None
        and pos.ndim == 3
        and pos.shape[1] != expected["pos_embed"].shape[1]
        and pos.shape[-1] == expected["pos_embed"].shape[-1]
    ):
        state["pos_embed"] = resample_pos_embed(pos, cfg.grid, cfg.grid)
        notes.append(f"position embedding resampled from {pos.shape[1] - 1} to {cfg.grid * cfg.grid} patches")

    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    ]
    if mismatched:
        held = ""
        with contextlib.suppress(MambavaError):
            found = infer_config(state)
            held = f" (the file holds D={found.embed_dim}, depth={found.depth}, patch={found.patch_size})"
        raise MambavaError(
            f"{path}: checkpoint does not fit {cfg.name} (D={cfg.embed_dim}, depth={cfg.depth}, "
            f"patch={cfg.patch_size}){held}; {len(mismatched)} tensors differ: "
            f"{name_list(mismatched, 6)}"
            + ("; leave out --arch to infer the size from the file" if arch is not None else "")
        )
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


def build_encoder(
    checkpoint: str | os.PathLike | None = None, arch: str | ViTConfig | None = None, seed: int | None = None
) -> ViTEncoder:
    """`load_encoder(checkpoint, arch)`, or without a checkpoint a randomly initialised ViT of `arch` (default
    vit_tiny_patch16) drawn with torch's seed `seed` (tests and demos): the same weights wherever it is built
    (each Ray actor builds its own, `mambava.distributed`)."""
    if checkpoint is not None:
        return load_encoder(checkpoint, arch)
    if seed is None:
        raise MambavaError("a backbone needs a checkpoint, or a seed for random weights")
    torch.manual_seed(seed)
    return ViTEncoder(vit_config(arch or "vit_tiny_patch16")).eval()
