"""Preprocessing and inference: the reference's crop preprocessing and the batched CLS-feature extractor.

Preprocessing is the reference's (FreedomPuppy77/Charon, preprocess/mae/feature_VA.py:50-52): RGB, PIL bicubic
resize to 224x224 (uint8 result, as torchvision's Resize on a PIL image), /255, normalise with the face mean/std.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from mambava.backbone.vit import FACE_MEAN, FACE_STD, ViTEncoder
from mambava.core.errors import MambavaError
from mambava.core.quantize import (
    INT8_MIN_WIDTH,
    PRECISIONS,
    auto_precision,
    check_int8_device,
    cpu_has_fast_bf16,
    quantize_linears,
)


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


def normalize(
    images: torch.Tensor,
    mean: Sequence[float] = FACE_MEAN,
    std: Sequence[float] = FACE_STD,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 (N, S, S, 3) or (N, 3, S, S) -> float (N, 3, S, S): /255, minus mean, over std (on their device)."""
    if images.ndim != 4:
        raise MambavaError(f"expected a batch of images (N, S, S, 3), got shape {tuple(images.shape)}")
    if images.shape[-1] == 3 and images.shape[1] != 3:
        images = images.permute(0, 3, 1, 2)
    m = torch.tensor(mean, device=images.device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    s = torch.tensor(std, device=images.device, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
    return ((images.float() - m) / s).to(dtype).contiguous()


def preprocess(
    crops, size: int = 224, mean: Sequence[float] = FACE_MEAN, std: Sequence[float] = FACE_STD
) -> torch.Tensor:
    """RGB uint8 crops, (N, H, W, 3) numpy/torch or a list of (H, W, 3) -> normalised float (N, 3, size, size)."""
    return normalize(torch.from_numpy(resize_crops(crops, size)), mean, std)


# --------------------------------------------------------------------------------------------------------------
# Inference


def bf16_supported(device: torch.device | str) -> bool:
    """Whether bf16 matmuls are fast here: CUDA with bf16, or a CPU with AMX or AVX-512 BF16."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_fast_bf16()


def resolve_precision(precision: str, device: torch.device | str, width: int | None = None) -> str:
    """The precision an extractor runs in: bf16, int8 or fp32 for `precision` (auto, bf16, int8, fp32).

    "auto" is bf16 where the hardware runs it (CUDA, AMX, AVX-512 BF16); on a CPU without bf16 it is int8 where
    fbgemm's kernels run and the ViT is wide enough (`width` >= INT8_MIN_WIDTH: narrower ones gain nothing),
    else fp32 (`mambava.core.quantize.auto_precision`).
    """
    if precision not in PRECISIONS:
        raise MambavaError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    if precision == "auto":
        return auto_precision(device, int8_allowed=width is None or width >= INT8_MIN_WIDTH)
    if precision == "int8":
        check_int8_device(device)
    return precision


def autocast_context(precision: str, device: torch.device | str):
    device = torch.device(device)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class FeatureExtractor:
    """Batched CLS features from RGB uint8 crops: `.features(crops) -> np.ndarray (N, D) float32`.

    precision "auto" uses bf16 autocast where the hardware runs it fast (CUDA, CPU AMX / AVX-512 BF16), and on a
    CPU without bf16 the ViT's linear layers in int8 (fbgemm, `mambava.core.quantize`) when it is wide enough to
    gain from it; "int8" and "fp32" ask for those. The int8 copy of the encoder is made once, here.
    """

    def __init__(
        self, encoder: ViTEncoder, batch_size: int = 64, device: str | torch.device = "cpu", precision: str = "auto"
    ):
        self.device = torch.device(device)
        self.encoder = encoder.eval().to(self.device)
        self.batch_size = int(batch_size)
        self.config = encoder.config
        self.precision = resolve_precision(precision, self.device, encoder.config.embed_dim)
        self.runner = quantize_linears(self.encoder) if self.precision == "int8" else self.encoder

    @property
    def dim(self) -> int:
        return self.config.feature_dim

    @torch.inference_mode()
    def features_from_resized(self, images: torch.Tensor) -> torch.Tensor:
        """Already-resized uint8 images (N, S, S, 3) or (N, 3, S, S), any device -> float32 (N, D) on device."""
        x = normalize(images.to(self.device, non_blocking=True), self.config.mean, self.config.std)
        with autocast_context(self.precision, self.device):
            return self.runner(x).float()

    def features(self, crops) -> np.ndarray:
        n = len(crops)
        out = np.empty((n, self.dim), np.float32)
        for start in range(0, n, self.batch_size):
            batch = torch.from_numpy(resize_crops(crops[start : start + self.batch_size], self.config.img_size))
            out[start : start + len(batch)] = self.features_from_resized(batch).cpu().numpy()
        return out
