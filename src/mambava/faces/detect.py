"""Face detection with 5 landmarks, offline: MTCNN (weights from facenet-pytorch, shipped in this package) run by our
own P-Net/R-Net/O-Net modules, NMS and cascade, batched over frames; OpenCV's Haar cascade as a fast,
landmark-free alternative. Detectors are pluggable: anything with `detect_batch(images)` (see FaceDetector)
can be registered under a name with `register_detector` or passed as an object.

All coordinates are in pixels of the input image: `box` = (x1, y1, x2, y2) with (x1, y1) the top-left
corner; `landmarks` = (5, 2) x, y of [left eye, right eye, nose, mouth left, mouth right], "left" meaning
the image's left (the person's right eye), as MTCNN and the ArcFace template order them.
"""

from __future__ import annotations

import copy
import functools
import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence, runtime_checkable

import cv2
import numpy as np

from mambava.core.checkpoint import load_checkpoint, load_torch_file
from mambava.core.errors import MambavaError
from mambava.core.runtime import free_threads, torch_threads
from mambava.faces.align import ARCFACE_TEMPLATE_112, invert_affine, similarity_transform, transform_points, warp
from mambava.faces.landmarks import with_landmarks


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face. `landmarks` is None for detectors that find none (Haar). `landmarks68` and `pose` are
    set by a landmark source that gives them (`--landmarks dlib68`: `mambava.faces.dlib_models`), else None."""

    box: np.ndarray  # (4,) float32: x1, y1, x2, y2
    landmarks: np.ndarray | None  # (5, 2) float32, or None
    score: float
    landmarks68: np.ndarray | None = None  # (68, 2) float32, OpenFace's (iBUG) point order, frame pixels
    pose: np.ndarray | None = None  # (6,) float32: Rx, Ry, Rz (radians), Tx, Ty, Tz (mm); `mambava.faces.pose`

    @property
    def size(self) -> float:
        """Geometric mean of the box's width and height, in pixels."""
        return float(math.sqrt(max(self.box[2] - self.box[0], 1e-6) * max(self.box[3] - self.box[1], 1e-6)))

    @property
    def center(self) -> np.ndarray:
        return np.array([(self.box[0] + self.box[2]) / 2, (self.box[1] + self.box[3]) / 2], dtype=np.float32)


@runtime_checkable
class FaceDetector(Protocol):
    """What the pipeline needs from a detector. Images are HxWx3 uint8 RGB."""

    name: str
    has_landmarks: bool

    def detect(self, image: np.ndarray) -> list[Face]: ...

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Face]]: ...


class BaseDetector:
    """Convenience base: implement `detect`, get a looping `detect_batch` (or override it to batch)."""

    name = "base"
    has_landmarks = False

    def detect(self, image: np.ndarray) -> list[Face]:
        return self.detect_batch([image])[0]

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        return [self.detect(image) for image in images]


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise MambavaError(f"expected an HxWx3 uint8 RGB image, got shape {image.shape} dtype {image.dtype}")
    return image


# -------------------------------------------------------------------------------------------- registry

_REGISTRY: dict[str, Callable[..., FaceDetector]] = {}


def register_detector(name: str, factory: Callable[..., FaceDetector] | None = None):
    """Make `get_detector(name)` (and `--detector name` on every command) build detectors with `factory`.

    Used as a decorator on a detector class (`@register_detector(NAME)`) or called with the factory.

    Args:
        name: the detector's name.
        factory: a class or function taking the detector's keyword options; None to decorate.

    Returns:
        The factory (or, as a decorator, the decorated class unchanged).
    """

    def register(built: Callable[..., FaceDetector]):
        _REGISTRY[name] = built
        return built

    return register if factory is None else register(factory)


# ----------------------------------------------------------------------------------------------- MTCNN

import torch  # noqa: E402  (after the light definitions above, which need no torch)
from torch import nn  # noqa: E402


class PNet(nn.Module):
    """MTCNN proposal net (parameter names as in facenet-pytorch's pnet.pt)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 10, kernel_size=3)
        self.prelu1 = nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(10, 16, kernel_size=3)
        self.prelu2 = nn.PReLU(16)
        self.conv3 = nn.Conv2d(16, 32, kernel_size=3)
        self.prelu3 = nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, kernel_size=1)
        self.conv4_2 = nn.Conv2d(32, 4, kernel_size=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.prelu1(self.conv1(x))
        x = self.pool1(x)
        x = self.prelu2(self.conv2(x))
        x = self.prelu3(self.conv3(x))
        return self.conv4_2(x), torch.softmax(self.conv4_1(x), dim=1)  # box offsets, face probability


class RNet(nn.Module):
    """MTCNN refinement net (24×24 input)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 28, kernel_size=3)
        self.prelu1 = nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(28, 48, kernel_size=3)
        self.prelu2 = nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(48, 64, kernel_size=2)
        self.prelu3 = nn.PReLU(64)
        self.dense4 = nn.Linear(576, 128)
        self.prelu4 = nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu3(self.conv3(x))
        x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)  # the weights were converted from a (W, H, C) layout
        x = self.prelu4(self.dense4(x))
        return self.dense5_2(x), torch.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """MTCNN output net (48×48 input): box offsets, 5 landmarks, face probability."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3)
        self.prelu1 = nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.prelu2 = nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3 = nn.Conv2d(64, 64, kernel_size=3)
        self.prelu3 = nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4 = nn.Conv2d(64, 128, kernel_size=2)
        self.prelu4 = nn.PReLU(128)
        self.dense5 = nn.Linear(1152, 256)
        self.prelu5 = nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu4(self.conv4(x))
        x = x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)
        x = self.prelu5(self.dense5(x))
        return self.dense6_2(x), self.dense6_3(x), torch.softmax(self.dense6_1(x), dim=1)


# facenet-pytorch 2.6.0's pnet/rnet/onet.pt in one safetensors file (MIT; see weights/NOTICE.md): package data,
# so that a bare `pip install mambava` detects faces without a second package or a download.
MTCNN_WEIGHTS = Path(__file__).resolve().parent / "weights" / "mtcnn.safetensors"
_MTCNN_NETS = ("pnet", "rnet", "onet")


@functools.lru_cache(maxsize=None)
def _load_nets(weights: str) -> tuple[PNet, RNet, ONet]:
    """The three nets from `weights`: a safetensors file with `pnet.`/`rnet.`/`onet.` keys (the shipped one), or
    a folder with facenet-pytorch's pnet.pt, rnet.pt, onet.pt."""
    path = Path(weights)
    nets = (PNet(), RNet(), ONet())
    try:
        if path.is_dir():
            states = []
            for name in _MTCNN_NETS:
                if not (path / f"{name}.pt").is_file():
                    raise MambavaError(f"{path / f'{name}.pt'}: MTCNN weight file missing")
                states.append(load_torch_file(path / f"{name}.pt", what="MTCNN weights"))
        else:
            flat = load_checkpoint(path).tensors  # untagged: facenet-pytorch's weights, converted
            states = [
                {k[len(name) + 1 :]: v for k, v in flat.items() if k.startswith(name + ".")} for name in _MTCNN_NETS
            ]
        for net, state in zip(nets, states):
            net.load_state_dict(state)
    except MambavaError:
        raise
    except (OSError, RuntimeError, ValueError) as exc:  # missing/corrupt file, wrong keys or shapes
        raise MambavaError(f"{path}: not usable MTCNN weights ({str(exc).splitlines()[0]})") from None
    for net in nets:
        net.eval().requires_grad_(False)
    return nets


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression. boxes (N, 4) inclusive pixel corners; returns kept indices, best first.
    mode "union": overlap = intersection / union (IoU); "min": intersection / smaller area."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    x1, y1, x2, y2 = (boxes[:, i].astype(np.float64) for i in range(4))
    area = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores, kind="stable")[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        if mode == "min":
            overlap = inter / np.minimum(area[i], area[rest])
        else:
            overlap = inter / (area[i] + area[rest] - inter)
        order = rest[overlap <= threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, threshold: float, mode: str = "union"
) -> np.ndarray:
    """NMS applied independently within each group (e.g. per image): boxes of different groups never suppress."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    offset = groups.astype(np.float64)[:, None] * (float(np.abs(boxes).max()) * 2 + 2)
    return nms(boxes + offset, scores, threshold, mode)


def _square(boxes: np.ndarray) -> np.ndarray:
    """Turn (N, 4) boxes into squares of the longer side around the same centre."""
    boxes = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(w, h)
    boxes[:, 0] += w * 0.5 - side * 0.5
    boxes[:, 1] += h * 0.5 - side * 0.5
    boxes[:, 2] = boxes[:, 0] + side
    boxes[:, 3] = boxes[:, 1] + side
    return boxes


def _regress(boxes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    boxes = boxes.copy()
    w = boxes[:, 2] - boxes[:, 0] + 1
    h = boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, 0] += offsets[:, 0] * w
    boxes[:, 1] += offsets[:, 1] * h
    boxes[:, 2] += offsets[:, 2] * w
    boxes[:, 3] += offsets[:, 3] * h
    return boxes


def _shrink(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to size=(h, w) ≤ the image: area averaging by the largest integer factor (OpenCV's fast
    path), then bilinear for the remaining factor (< 2), which costs a tenth of a non-integer area resize."""

    h, w = image.shape[:2]
    k = int(min(h / size[0], w / size[1]))
    if k >= 2:
        image = cv2.resize(image, (w // k, h // k), interpolation=cv2.INTER_AREA)
    if image.shape[:2] == size:
        return image
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def _crop_patches(
    images: Sequence[np.ndarray], boxes: np.ndarray, image_ids: np.ndarray, size: int
) -> tuple[torch.Tensor, np.ndarray]:
    """Cut boxes (1-based inclusive corners, zero padding outside the image) and resize to size×size.
    Returns the normalised (N, 3, size, size) batch and a mask of the boxes that were usable."""

    out = np.zeros((len(boxes), size, size, 3), dtype=np.uint8)
    valid = np.zeros(len(boxes), dtype=bool)
    ib = np.trunc(boxes[:, :4]).astype(np.int64)
    for k in range(len(boxes)):
        image = images[image_ids[k]]
        height, width = image.shape[:2]
        x1, y1, x2, y2 = ib[k] - np.array([1, 1, 1, 1])  # to 0-based inclusive
        w, h = x2 - x1 + 1, y2 - y1 + 1
        if w < 2 or h < 2 or x2 < 0 or y2 < 0 or x1 >= width or y1 >= height:
            continue
        patch = np.zeros((h, w, 3), dtype=np.uint8)
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, width - 1), min(y2, height - 1)
        patch[sy1 - y1 : sy2 - y1 + 1, sx1 - x1 : sx2 - x1 + 1] = image[sy1 : sy2 + 1, sx1 : sx2 + 1]
        out[k] = (
            _shrink(patch, (size, size))
            if min(w, h) >= size
            else cv2.resize(patch, (size, size), interpolation=cv2.INTER_LINEAR)
        )
        valid[k] = True
    batch = torch.from_numpy(out).permute(0, 3, 1, 2).float()
    return (batch - 127.5) * 0.0078125, valid


# where `MTCNNDetector._refine` puts the 5 landmarks on O-Net's 48×48 input: the ArcFace template framed with
# an 8 px margin inside its 112 crop (margins of 0 and 16 px gave larger errors on the synthetic faces)
REFINE_LAYOUT_48 = (ARCFACE_TEMPLATE_112 - 8.0) * (48.0 / 96.0)


@register_detector("mtcnn")
class MTCNNDetector(BaseDetector):
    """MTCNN (Zhang et al. 2016): P-Net over an image pyramid → R-Net → O-Net, 5 landmarks.

    min_face_size: smallest face searched for, in pixels; the effective minimum is the larger of this and
        `min_face_fraction` × the image's shorter side (so large videos are not searched for tiny faces,
        which is where MTCNN spends its time: the P-Net pyramid costs ∝ 1/min_face²). The defaults (40 px,
        8%) suit faces meant for expression analysis; lower both for small faces in wide shots.
    thresholds: score thresholds of the three stages (MTCNN's defaults).
    min_score: faces below this final score are dropped (O-Net scores of real faces are ~0.99+).
    weights: the nets' weights (see `_load_nets`); default the shipped `MTCNN_WEIGHTS`.
    refine: landmark refinement passes (`_refine`: O-Net again on a patch framed by the found landmarks); 0
        (default) keeps MTCNN's own landmarks.
    num_threads: torch threads for the nets while detecting, set in the calling thread only and restored
        after; None keeps the current setting; "auto" (default) uses the CPUs other work leaves free
        (`mambava.core.runtime.free_threads`: one thread on a 2-core machine from a load average of 2). The
        nets are small and run many short parallel regions: on an idle 2-core machine two threads were 1.25×
        faster than one, on a busy one 3-7× slower (OpenMP threads wait at every barrier for a descheduled
        sibling).
    """

    name = "mtcnn"
    has_landmarks = True

    def __init__(
        self,
        min_face_size: float = 40,
        min_face_fraction: float = 0.08,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        min_score: float = 0.9,
        weights: str | Path | None = None,
        device: str | torch.device = "cpu",
        num_threads: int | str | None = "auto",
        refine: int = 0,
    ):
        if int(refine) != refine or refine < 0:
            raise MambavaError(f"refine must be a whole number >= 0, got {refine!r}")
        self.refine = int(refine)
        if not (num_threads is None or num_threads == "auto" or (isinstance(num_threads, int) and num_threads > 0)):
            raise MambavaError(f"num_threads must be a positive int, 'auto' or None, got {num_threads!r}")
        self.num_threads = num_threads
        self.min_face_size = float(min_face_size)
        self.min_face_fraction = float(min_face_fraction)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = float(factor)
        self.min_score = float(min_score)
        self.device = torch.device(device)
        nets = _load_nets(str(weights or MTCNN_WEIGHTS))  # shared, read-only, on the CPU
        if self.device.type != "cpu":
            nets = tuple(copy.deepcopy(net).to(self.device) for net in nets)
        pnet, self.rnet, self.onet = nets
        self.pnet = pnet.to(memory_format=torch.channels_last)  # ~1.7× faster convolutions on CPU

    def _scales(self, height: int, width: int) -> list[float]:
        min_face = max(self.min_face_size, self.min_face_fraction * min(height, width), 12.0)
        scale = 12.0 / min_face
        side = min(height, width) * scale
        scales = []
        while side >= 12:
            scales.append(scale)
            scale *= self.factor
            side *= self.factor
        return scales

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        images = [_check_image(image) for image in images]
        results: list[list[Face] | None] = [None] * len(images)
        by_shape: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            by_shape.setdefault(image.shape[:2], []).append(i)
        wanted = free_threads() if self.num_threads == "auto" else self.num_threads
        with torch_threads(wanted if self.device.type == "cpu" else None):
            for ids in by_shape.values():
                group = [images[i] for i in ids]
                for i, faces in zip(ids, self._refine(group, self._detect_same_size(group))):
                    results[i] = faces
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def _refine(self, images: list[np.ndarray], results: list[list[Face]]) -> list[list[Face]]:
        """O-Net again on a 48×48 patch cut by the similarity that puts the found landmarks on `REFINE_LAYOUT_48`,
        its landmarks mapped back; `refine` times. Steadier points, but not the per-person error that costs
        P_VA (docs/faces.md, Crops for training; `mambava.faces.landmarks` is the learned one). Boxes and scores
        kept."""

        for _ in range(self.refine):
            items = [(i, k) for i, faces in enumerate(results) for k in range(len(faces))]
            if not items:
                break
            matrices = [similarity_transform(results[i][k].landmarks, REFINE_LAYOUT_48) for i, k in items]
            patches = np.stack([warp(images[i], m, 48) for (i, _), m in zip(items, matrices)])
            batch = (torch.from_numpy(patches).permute(0, 3, 1, 2).float() - 127.5) * 0.0078125
            points = self.onet(batch.to(self.device))[1].cpu().numpy().astype(np.float64)
            for (i, k), m, p in zip(items, matrices, points):
                # O-Net's outputs are fractions of its patch; -0.5: from edge to pixel-centre coordinates
                found = transform_points(invert_affine(m), np.stack([p[:5], p[5:]], axis=1) * 48 - 0.5)
                old = results[i][k]
                results[i][k] = Face(box=old.box, landmarks=found.astype(np.float32), score=old.score)
        return results

    def _onet(self, images: list[np.ndarray], boxes: np.ndarray, image_ids: np.ndarray):
        """MTCNN's stage 3 on square candidate boxes (1-based inclusive): O-Net's score, its box regression and
        the 5 landmarks (0-based pixels) of the boxes that pass its threshold."""
        patches, valid = _crop_patches(images, boxes, image_ids, 48)
        boxes, image_ids, patches = boxes[valid], image_ids[valid], patches[valid]
        if len(boxes) == 0:
            return boxes, image_ids, np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)
        offsets, points, probs = (t.cpu().numpy() for t in self.onet(patches.to(self.device)))
        score = probs[:, 1]
        passed = score > max(self.thresholds[2], self.min_score)
        boxes, image_ids, score, offsets, points = (
            boxes[passed],
            image_ids[passed],
            score[passed],
            offsets[passed],
            points[passed],
        )
        w = boxes[:, 2] - boxes[:, 0] + 1
        h = boxes[:, 3] - boxes[:, 1] + 1
        lm_x = boxes[:, 0:1] + w[:, None] * points[:, 0:5] - 1
        lm_y = boxes[:, 1:2] + h[:, None] * points[:, 5:10] - 1
        landmarks = np.stack([lm_x, lm_y], axis=2)  # (N, 5, 2), 0-based pixel coordinates
        return _regress(boxes, offsets), image_ids, score, landmarks

    @torch.inference_mode()
    def verify(self, image: np.ndarray, faces: Sequence[Face]) -> list[Face | None]:
        """O-Net alone on faces whose place is known (followed by optical flow): score, box and landmarks for
        each, or None where it sees no face. Detection by tracking's cheap check: one 48×48 patch per face."""
        image = _check_image(image)
        if not faces:
            return []
        corners = np.stack([f.box for f in faces]).astype(np.float64)
        boxes = _square(np.concatenate([corners[:, :2] + 1, corners[:, 2:]], axis=1))  # 0-based → 1-based inclusive
        wanted = free_threads() if self.num_threads == "auto" else self.num_threads
        with torch_threads(wanted if self.device.type == "cpu" else None):
            # one image per face (the same array): O-Net's stage indexes images by the ids it returns
            found_boxes, ids, score, landmarks = self._onet([image] * len(faces), boxes, np.arange(len(faces)))
            found = [
                [
                    Face(
                        box=np.array([b[0] - 1, b[1] - 1, b[2], b[3]], np.float32),
                        landmarks=landmarks[k].astype(np.float32),
                        score=float(score[k]),
                    )
                ]
                for k, b in enumerate(found_boxes[:, :4])
            ]
            if self.refine and found:
                found = self._refine([image] * len(found), found)
        out: list[Face | None] = [None] * len(faces)
        for k, i in enumerate(ids):
            out[int(i)] = found[k][0]
        return out

    # One function on purpose: MTCNN's three stages in their order (P-Net over the pyramid, R-Net, O-Net), as
    # the original cascade reads, so that it can be checked against it line by line (O-Net's stage is `_onet`,
    # which `verify` shares).
    @torch.inference_mode()
    def _detect_same_size(self, images: list[np.ndarray]) -> list[list[Face]]:
        n = len(images)
        height, width = images[0].shape[:2]
        t1, t2, t3 = self.thresholds

        # Stage 1: P-Net over the pyramid; NMS per image and scale, then per image. Each pyramid level is
        # shrunk from the previous one (`_shrink`), far cheaper than resizing the full frame every time.
        candidates, groups = [], []
        level = list(images)
        for scale in self._scales(height, width):
            size = (int(height * scale + 1), int(width * scale + 1))
            level = [_shrink(im, size) for im in level]
            scaled = torch.from_numpy(np.stack(level)).to(self.device).permute(0, 3, 1, 2).float()
            scaled = ((scaled - 127.5) * 0.0078125).contiguous(memory_format=torch.channels_last)
            offsets, probs = self.pnet(scaled)
            prob = probs[:, 1]
            hit = (prob >= t1).nonzero()
            if len(hit) == 0:
                continue
            img, yy, xx = hit[:, 0], hit[:, 1], hit[:, 2]
            score = prob[img, yy, xx]
            reg = offsets[img, :, yy, xx]
            cell = torch.stack([xx, yy], dim=1).float()
            q1 = torch.floor((2 * cell + 1) / scale)
            q2 = torch.floor((2 * cell + 12) / scale)
            boxes = torch.cat([q1, q2, score[:, None], reg], dim=1).cpu().numpy()
            img = img.cpu().numpy()
            keep = batched_nms(boxes[:, :4], boxes[:, 4], img, 0.5)
            candidates.append(boxes[keep])
            groups.append(img[keep])
        if not candidates:
            return [[] for _ in range(n)]
        boxes = np.concatenate(candidates)
        image_ids = np.concatenate(groups)
        keep = batched_nms(boxes[:, :4], boxes[:, 4], image_ids, 0.7)
        boxes, image_ids = boxes[keep], image_ids[keep]
        w = boxes[:, 2] - boxes[:, 0]
        h = boxes[:, 3] - boxes[:, 1]
        refined = np.stack(
            [
                boxes[:, 0] + boxes[:, 5] * w,
                boxes[:, 1] + boxes[:, 6] * h,
                boxes[:, 2] + boxes[:, 7] * w,
                boxes[:, 3] + boxes[:, 8] * h,
            ],
            axis=1,
        )
        boxes = _square(refined)

        # Stage 2: R-Net on 24×24 patches of all candidates of all images at once.
        patches, valid = _crop_patches(images, boxes, image_ids, 24)
        boxes, image_ids, patches = boxes[valid], image_ids[valid], patches[valid]
        if len(boxes) == 0:
            return [[] for _ in range(n)]
        offsets, probs = self.rnet(patches.to(self.device))
        score = probs[:, 1].cpu().numpy()
        passed = score > t2
        boxes, image_ids, score, offsets = (
            boxes[passed],
            image_ids[passed],
            score[passed],
            offsets.cpu().numpy()[passed],
        )
        keep = batched_nms(boxes, score, image_ids, 0.7)
        boxes, image_ids, offsets = boxes[keep], image_ids[keep], offsets[keep]
        boxes = _square(_regress(boxes, offsets))
        if len(boxes) == 0:
            return [[] for _ in range(n)]

        # Stage 3: O-Net on 48×48 patches: final score, box offsets and the 5 landmarks.
        boxes, image_ids, score, landmarks = self._onet(images, boxes, image_ids)
        keep = batched_nms(boxes, score, image_ids, 0.7, mode="min")

        results: list[list[Face]] = [[] for _ in range(n)]
        for k in keep:  # best score first
            x1, y1, x2, y2 = boxes[k, :4]
            box = np.array([x1 - 1, y1 - 1, x2, y2], dtype=np.float32)  # 1-based inclusive → 0-based corners
            results[image_ids[k]].append(
                Face(box=box, landmarks=landmarks[k].astype(np.float32), score=float(score[k]))
            )
        return results


# ------------------------------------------------------------------------------------------------ Haar


@register_detector("haar")
class HaarDetector(BaseDetector):
    """OpenCV's frontal-face Haar cascade (data shipped in opencv-python). Fast; frontal faces only; no
    landmarks (the pipeline then takes a centred square crop instead of an aligned one). `score` is a
    sigmoid of the cascade's level weight, a confidence ranking rather than a probability."""

    name = "haar"
    has_landmarks = False

    def __init__(
        self,
        cascade: str = "haarcascade_frontalface_default.xml",
        scale_factor: float = 1.1,
        min_neighbors: int = 5,
        min_face_size: float = 40,
        min_face_fraction: float = 0.08,
    ):
        self._cv2 = cv2
        path = Path(cv2.data.haarcascades) / cascade if not Path(cascade).is_file() else Path(cascade)
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise MambavaError(f"{path}: cannot load the Haar cascade (opencv-python-headless<5 ships it)")
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors
        self.min_face_size = min_face_size
        self.min_face_fraction = min_face_fraction

    def detect(self, image: np.ndarray) -> list[Face]:
        cv2 = self._cv2
        image = _check_image(image)
        gray = cv2.equalizeHist(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
        side = int(max(self.min_face_size, self.min_face_fraction * min(image.shape[:2])))
        rects, _, weights = self._cascade.detectMultiScale3(
            gray,
            scaleFactor=self.scale_factor,
            minNeighbors=self.min_neighbors,
            minSize=(side, side),
            outputRejectLevels=True,
        )
        faces = []
        for (x, y, w, h), weight in zip(np.asarray(rects).reshape(-1, 4), np.asarray(weights).reshape(-1)):
            box = np.array([x, y, x + w, y + h], dtype=np.float32)
            faces.append(Face(box=box, landmarks=None, score=float(1 / (1 + math.exp(-float(weight))))))
        return sorted(faces, key=lambda f: -f.score)


def available_detectors() -> list[str]:
    return sorted(_REGISTRY)


def get_detector(name: str | FaceDetector = "mtcnn", landmarks=None, **kwargs) -> FaceDetector:
    """A detector by registered name ("mtcnn", "haar"), by import path ("package.module:Class"), or the
    object itself when one is passed; other keyword arguments go to the detector's constructor. `landmarks`: a
    learned landmark refiner's file (`mambava.faces.landmarks`) that moves every face's 5 points."""
    if landmarks is not None:
        return with_landmarks(get_detector(name, **kwargs), landmarks)
    if not isinstance(name, str):
        return name
    if name in _REGISTRY:
        return _REGISTRY[name](**kwargs)
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as error:
            raise MambavaError(f"detector {name!r}: cannot import ({error})") from None
        return factory(**kwargs)
    raise MambavaError(
        f"unknown face detector {name!r}; available: {', '.join(available_detectors())} "
        "or an import path 'package.module:Class'"
    )


@functools.lru_cache(maxsize=4)
def _default_detector(name: str) -> FaceDetector:
    return get_detector(name)


def detect_faces(image: np.ndarray, detector: str | FaceDetector = "mtcnn") -> list[Face]:
    """Faces in one HxWx3 uint8 RGB image, best score first (a detector given by name is built once)."""
    det = _default_detector(detector) if isinstance(detector, str) else detector
    return det.detect(image)
