"""A learned landmark refiner: a small CNN that moves a detector's 5 landmarks onto the face's true ones.

MTCNN's 5 points err by ~2 px (at 112) on faces unlike its training photographs, with a part that is constant
per person; a crop cut with them places each face a little differently, which a model cannot tell from a
different expression (docs/faces.md, Crops for training). No landmark model with better points ships its weights in a
wheel, so this one is trained here on faces whose true landmarks are known (the synthetic generator keeps them;
any set of images with 5 annotated points works the same way), and then runs after any detector that gives 5
points: it cuts a patch with the similarity that puts the found landmarks on `layout` (the ArcFace template with
a margin), regresses where the 5 points are in that patch, maps them back, and repeats (`passes`).

Training perturbs the true landmarks by a random similarity and per-point noise (larger than MTCNN's error), cuts
the patch with the perturbed points and regresses the true ones: the cascaded-regression recipe (Dollár et al.
2010; Xiong & De la Torre 2013), so the net learns to correct any start within that range, not one detector.

    frames, samples = csv_refiner_samples("faces.csv")      # or mambava.synth.truth_faces.synth_refiner_samples
    refiner = train_refiner(frames, samples)                 # samples: (frame index, true (5, 2) landmarks)
    refiner.save("landmarks.safetensors")
    det = get_detector("mtcnn", landmarks="landmarks.safetensors")   # every face's points refined
"""

from __future__ import annotations

import csv
import dataclasses
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from mambava.core.checkpoint import load_checkpoint, save_checkpoint, weights_sha256
from mambava.core.errors import MambavaError
from mambava.core.runtime import free_threads, torch_threads
from mambava.faces.align import (
    ARCFACE_TEMPLATE_112,
    LANDMARK_COLUMNS,
    invert_affine,
    similarity_transform,
    transform_points,
    warp,
)
from mambava.media.video import read_image

FORMAT = "mambava.landmark_refiner"  # files before core.checkpoint: "mambava-landmark-refiner"


@dataclass
class RefinerConfig:
    """The patch (`size` px, the ArcFace 112 template framed by `margin` px on each side and scaled to it), the
    net's width, how training perturbs the start (at 112 px: shift std, log-scale std, rotation std in degrees,
    per-point std) and how long it trains."""

    size: int = 64
    margin: float = 8.0
    width: int = 32
    passes: int = 2
    shift: float = 2.5
    log_scale: float = 0.05
    angle: float = 5.0
    point_noise: float = 1.0
    epochs: int = 30
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0

    def layout(self) -> np.ndarray:
        """Where the 5 points sit on the patch when the start is right."""
        return (ARCFACE_TEMPLATE_112 + self.margin) * self.patch_scale

    @property
    def patch_scale(self) -> float:
        """Patch pixels per crop pixel (at 112)."""
        return self.size / (112.0 + 2 * self.margin)


class LandmarkNet(nn.Module):
    """Five stride-2 conv blocks, then a fully connected head over the flattened map: coordinates need where
    a feature is, which global pooling would discard. Outputs offsets from the layout, in crop pixels / 4."""

    def __init__(self, size: int = 64, width: int = 32):
        super().__init__()
        channels = [3, width // 2, width, 2 * width, 3 * width, 4 * width]
        layers: list[nn.Module] = []
        for k, (cin, cout) in enumerate(zip(channels[:-1], channels[1:])):
            layers += [
                nn.Conv2d(cin, cout, 3, stride=1 if k == 0 else 2, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*layers)
        side = size
        for _ in range(4):
            side = (side + 1) // 2
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(channels[-1] * side * side, 256), nn.ReLU(inplace=True), nn.Linear(256, 10)
        )
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(patches))


def _to_batch(patches: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(np.ascontiguousarray(patches)).permute(0, 3, 1, 2).float() - 127.5) / 128.0


class LandmarkRefiner:
    """The trained net and its config; `refine(image, landmarks)` for one image's faces."""

    def __init__(self, net: LandmarkNet, config: RefinerConfig):
        self.net = net.eval()
        self.config = config
        self._layout = config.layout()

    def _points(self, patches: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = self.net(_to_batch(patches)).numpy().astype(np.float64)
        return self._layout + out.reshape(-1, 5, 2) * (4.0 * self.config.patch_scale)

    def refine(self, image: np.ndarray, landmarks: Sequence[np.ndarray], passes: int | None = None) -> list[np.ndarray]:
        """Refined (5, 2) landmarks (frame pixels) for each face's (5, 2) landmarks in one RGB image."""
        current = [np.asarray(lm, np.float64) for lm in landmarks]
        if not current:
            return []
        size = self.config.size
        for _ in range(self.config.passes if passes is None else passes):
            matrices = [similarity_transform(lm, self._layout) for lm in current]
            patches = np.stack([warp(image, m, size) for m in matrices])
            found = self._points(patches)
            current = [transform_points(invert_affine(m), p) for m, p in zip(matrices, found)]
        return current

    def save(self, path: str | os.PathLike) -> Path:
        """Write the net and its config (`mambava.core.checkpoint`, format mambava.landmark_refiner)."""
        return save_checkpoint(path, self.net.state_dict(), FORMAT, asdict(self.config))


def load_refiner(path: str | os.PathLike) -> LandmarkRefiner:
    """A refiner saved by `LandmarkRefiner.save`; a one-line error for a missing or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise MambavaError(f"{path}: no such landmark refiner file")
    checkpoint = load_checkpoint(path, FORMAT, what="a landmark refiner (made by `mambava train-landmarks`)")
    try:
        config = RefinerConfig(**checkpoint.config)
    except TypeError as error:
        raise MambavaError(f"{path}: bad landmark refiner config ({error})") from None
    if config.size < 16 or config.width < 2 or config.passes < 1:
        raise MambavaError(
            f"{path}: a landmark refiner with size {config.size}, width {config.width}, "
            f"passes {config.passes} cannot run"
        )
    net = LandmarkNet(config.size, config.width)
    try:
        net.load_state_dict(checkpoint.tensors)
    except RuntimeError as error:  # weights of another shape
        first = " ".join(line.strip() for line in str(error).strip().splitlines()[:2])[:240]
        raise MambavaError(f"{path}: weights do not fit the landmark refiner ({first})") from None
    return LandmarkRefiner(net, config)


class PointsOnDetector:
    """A landmark source: any detector (`mambava.faces.FaceDetector`) whose faces get their points from
    `_with_points(image, faces)` after detection, boxes and scores kept. Everything else (thresholds,
    num_threads ...) is the wrapped detector's; its `verify` (detection by tracking's check) only where it has
    one, its faces given points the same way."""

    has_landmarks = True

    def _with_points(self, image: np.ndarray, faces: list) -> list:
        raise NotImplementedError

    def detect(self, image: np.ndarray) -> list:
        return self.detect_batch([image])[0]

    def detect_batch(self, images: Sequence[np.ndarray]) -> list[list]:
        return [self._with_points(image, faces) for image, faces in zip(images, self.detector.detect_batch(images))]

    def __getattr__(self, name: str):
        detector = self.__dict__.get("detector")
        if detector is None:
            raise AttributeError(name)
        found = getattr(detector, name)
        if name == "verify":
            return lambda image, faces: self._with_points(image, list(found(image, faces)))
        return found


class RefinedDetector(PointsOnDetector):
    """Any detector with 5 landmarks (`mambava.faces.FaceDetector`), its points moved by a `LandmarkRefiner`;
    boxes and scores kept. `get_detector(name, landmarks=FILE)` builds one."""

    def __init__(self, detector, refiner: LandmarkRefiner | str | os.PathLike):
        if not getattr(detector, "has_landmarks", False):
            raise MambavaError(f"a landmark refiner needs a detector with landmarks; {detector.name!r} has none")
        self.detector = detector
        self.refiner = refiner if isinstance(refiner, LandmarkRefiner) else load_refiner(refiner)
        self.name = detector.name
        # which refiner this is, as `faces --dataset` records it with the crops: its weights, not where its file
        # was (a file retrained in place is another refiner)
        self.refiner_sha256 = weights_sha256(self.refiner.net.state_dict().values())

    def _with_points(self, image: np.ndarray, faces: list) -> list:
        kept = [f for f in faces if f is not None]
        wanted = getattr(self.detector, "num_threads", None)  # the small CNN runs as the detector's nets do
        with torch_threads(free_threads() if wanted == "auto" else wanted):
            points = iter(self.refiner.refine(image, [f.landmarks for f in kept]))
        return [None if f is None else dataclasses.replace(f, landmarks=next(points).astype(np.float32)) for f in faces]


def _perturb(rng: np.random.Generator, truth: np.ndarray, cfg: RefinerConfig) -> np.ndarray:
    """A start for training: the true points moved by a random similarity and per-point noise (frame pixels,
    the amounts given at 112 px and scaled by the face's size)."""
    unit = np.linalg.norm(truth[1] - truth[0]) / np.linalg.norm(ARCFACE_TEMPLATE_112[1] - ARCFACE_TEMPLATE_112[0])
    centre = truth.mean(0)
    angle = np.deg2rad(rng.normal(0.0, cfg.angle))
    scale = np.exp(rng.normal(0.0, cfg.log_scale))
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = (truth - centre) @ rotation.T + centre + rng.normal(0.0, cfg.shift * unit, 2)
    return moved + rng.normal(0.0, cfg.point_noise * unit, (5, 2))


def training_patches(
    rng: np.random.Generator,
    frames: Sequence[np.ndarray],
    samples: Sequence[tuple[int, np.ndarray]],
    cfg: RefinerConfig,
    flip: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One epoch's patches and targets (offsets from the layout, crop px / 4): each sample (frame index, true
    (5, 2) points) cut from a perturbed start; `flip[i]` mirrors the sample (left and right points swapped)."""
    layout = cfg.layout()
    patches = np.empty((len(samples), cfg.size, cfg.size, 3), np.uint8)
    targets = np.empty((len(samples), 10), np.float32)
    for i, (index, truth) in enumerate(samples):
        image = frames[index]
        if flip is not None and flip[i]:
            image = image[:, ::-1]
            truth = truth.copy()
            truth[:, 0] = image.shape[1] - 1 - truth[:, 0]
            truth = truth[[1, 0, 2, 4, 3]]
        matrix = similarity_transform(_perturb(rng, truth, cfg), layout)
        patches[i] = warp(image, matrix, cfg.size)
        targets[i] = ((transform_points(matrix, truth) - layout) / (4.0 * cfg.patch_scale)).reshape(-1)
    return patches, targets


def train_refiner(
    frames: Sequence[np.ndarray],
    samples: Sequence[tuple[int, np.ndarray]],
    config: RefinerConfig | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> LandmarkRefiner:
    """Train a refiner on RGB `frames` and `samples` (frame index, true (5, 2) landmarks in that frame's pixels).
    Fresh perturbations every epoch, half the samples mirrored; AdamW, cosine schedule, smooth-L1 loss.

    The next epoch's patches are cut in a second thread while this epoch trains (OpenCV's warps release the
    GIL): the two cores of a small machine both work. Each epoch's perturbations come from their own generator
    (seed, epoch), so the result does not depend on which thread ran first."""
    cfg = config or RefinerConfig()
    if not samples:
        raise MambavaError("train_refiner: no samples (faces with known landmarks) to train on")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    net = LandmarkNet(cfg.size, cfg.width)
    steps_per_epoch = max(1, len(samples) // cfg.batch_size)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.1
    )
    loss_fn = nn.SmoothL1Loss(beta=0.25)

    def epoch_patches(epoch: int):
        local = np.random.default_rng([cfg.seed, epoch])
        return training_patches(local, frames, samples, cfg, flip=local.random(len(samples)) < 0.5)

    with ThreadPoolExecutor(1, thread_name_prefix="mambava-patches") as prefetch:
        upcoming = prefetch.submit(epoch_patches, 0)
        for epoch in range(cfg.epochs):
            net.train()
            patches, targets = upcoming.result()
            if epoch + 1 < cfg.epochs:
                upcoming = prefetch.submit(epoch_patches, epoch + 1)
            order = rng.permutation(len(samples))
            total = 0.0
            for step in range(steps_per_epoch):
                batch = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                x = _to_batch(patches[batch])
                x = x * float(rng.uniform(0.7, 1.3)) + float(rng.uniform(-0.2, 0.2))  # contrast, brightness
                loss = loss_fn(net(x), torch.from_numpy(targets[batch]))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += float(loss.detach())
            if progress is not None:
                progress(epoch, total / steps_per_epoch)
    return LandmarkRefiner(net, cfg)


def csv_refiner_samples(path: str | os.PathLike):
    """Training data from a CSV of annotated faces: `image` (relative to the CSV) and the 10 `LANDMARK_COLUMNS`
    (the faces CSV's names; frame pixels, image left first), one face per row. Returns (frames, samples); a
    one-line error names the file and line of a bad row."""

    path = Path(path)
    if not path.is_file():
        raise MambavaError(f"{path}: no such landmarks CSV")
    frames: list[np.ndarray] = []
    samples: list[tuple[int, np.ndarray]] = []
    images: dict[str, np.ndarray] = {}  # the last image only: rows of one image usually follow each other
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in ["image", *LANDMARK_COLUMNS] if c not in (reader.fieldnames or [])]
            if missing:
                raise MambavaError(f"{path}: missing column(s) {', '.join(missing)}")
            for row in reader:
                line = reader.line_num
                try:
                    points = np.array([float(row[c]) for c in LANDMARK_COLUMNS]).reshape(5, 2)
                except (TypeError, ValueError):
                    raise MambavaError(f"{path}:{line}: landmark values must be numbers") from None
                if not np.isfinite(points).all():
                    raise MambavaError(f"{path}:{line}: landmark values must be finite")
                image = (row.get("image") or "").strip()
                if not image:
                    raise MambavaError(f"{path}:{line}: no image named")
                if image not in images:
                    try:
                        images = {image: read_image(path.parent / image)}
                    except MambavaError as error:
                        raise MambavaError(f"{path}:{line}: {error}") from None
                region, moved = face_region(images[image], points)
                frames.append(region)
                samples.append((len(frames) - 1, moved))
    except (UnicodeDecodeError, csv.Error) as error:
        raise MambavaError(f"{path}: not a readable CSV ({type(error).__name__}: {str(error)[:120]})") from None
    if not samples:
        raise MambavaError(f"{path}: no faces")
    return frames, samples


def face_region(image: np.ndarray, points: np.ndarray, extent: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """The part of `image` within `extent` eye distances of the 5 points' centre (clipped to the image), copied,
    and the points in its pixels: what training patches are cut from (the perturbed patch spans < 2.5 eye
    distances from the centre), so a training set holds faces, not whole frames."""
    reach = extent * max(float(np.linalg.norm(points[1] - points[0])), 4.0)
    centre = points.mean(0)
    h, w = image.shape[:2]
    x0, y0 = (max(int(np.floor(c - reach)), 0) for c in centre)
    x1, y1 = min(int(np.ceil(centre[0] + reach)) + 1, w), min(int(np.ceil(centre[1] + reach)) + 1, h)
    return np.ascontiguousarray(image[y0:y1, x0:x1]), points - np.array([x0, y0], np.float64)


# ---------------------------------------------------------------------------------------------------------
# Landmark sources: what `--landmarks` names


_LANDMARK_SOURCES: dict[str, Callable] = {}


def register_landmark_source(name: str):
    """Decorator: register a landmark source under `name` for `--landmarks NAME` (and `get_detector(...,
    landmarks=NAME)`). The decorated callable takes a detector and returns a detector whose faces carry the
    source's landmarks (the 5 alignment points, and any others it gives)."""

    def register(factory: Callable):
        _LANDMARK_SOURCES[name] = factory
        return factory

    return register


def landmark_sources() -> list[str]:
    """The registered landmark source names (a refiner file's path is accepted besides these)."""
    return sorted(_LANDMARK_SOURCES)


def with_landmarks(detector, landmarks):
    """`detector` with its landmarks from `landmarks`: a registered source's name, or a learned refiner (a
    `LandmarkRefiner` or its file)."""
    name = os.fspath(landmarks) if isinstance(landmarks, (str, os.PathLike)) else None
    if name in _LANDMARK_SOURCES:
        return _LANDMARK_SOURCES[name](detector)
    return RefinedDetector(detector, landmarks)
