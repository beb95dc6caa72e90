"""Helpers shared by the test rooms (on sys.path through pyproject's `pythonpath`): data written in the formats
the tests read, a cached detector, and `mambava` run in this process. Fixtures built from them are in
conftest.py."""

from __future__ import annotations

import hashlib
import io
import sys
from pathlib import Path

import av
import numpy as np
from PIL import Image

from mambava.backbone.finetune import FinetuneConfig
from mambava.cli import main
from mambava.data.store import FeatureStore
from mambava.faces import get_detector
from mambava.training import TrainConfig, load_config

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------
# A small Aff-Wild2-format tree (official layout). Its contents, which tests assert on: see conftest.py

AFFWILD2_LAYOUT = {
    "train": {"vidA": 50, "vidB_left": 40, "vidB_right": 40},
    "validation": {"vidC": 30, "vidD": 25},
    "test": {"vidE": 20, "vidF_left": 15},
}


AFFWILD2_CROPS = {
    "vidA": [f for f in range(3, 51) if f not in (20, 21)],
    "vidB_left": list(range(1, 41)),
    "vidB_right": list(range(1, 39)),
    "vidC": list(range(1, 31)),
    "vidD": list(range(1, 26)),
    "vidE": list(range(1, 19)),
    "vidF_left": [f for f in range(1, 16) if f != 7],
}


AFFWILD2_VIDEOS = {"vidE": ("batch1", 20), "vidD": ("batch2", 27)}


AFFWILD2_INVALID = {"vidA": slice(0, 5), "vidC": slice(10, 13)}


TEST_LIST_NAME = "Valence_Arousal_Estimation_Challenge_test_set_release.txt"


def first_frames(video: Path, path: Path, n_frames: int, codec: str = "mpeg4", rate: int = 25) -> Path:
    """The first `n_frames` of `video` re-encoded with `codec` at `rate` (short clips keep detection-bound
    tests fast)."""
    with av.open(str(video)) as source, av.open(str(path), "w") as target:
        stream = target.add_stream(codec, rate=rate)
        for i, frame in enumerate(source.decode(video=0)):
            if i == n_frames:
                break
            if i == 0:
                stream.width, stream.height, stream.pix_fmt = frame.width, frame.height, "yuv420p"
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")):
                target.mux(packet)
        for packet in stream.encode():
            target.mux(packet)
    return path


def _tiny_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _write_video(path: Path, n_frames: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), i * 8 % 256, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def make_affwild2_tree(root: Path) -> Path:
    """Write the tree described above under `root` and return root."""
    rng = np.random.default_rng(0)
    jpeg = _tiny_jpeg()
    folders = {"train": "Train_Set", "validation": "Validation_Set"}
    for split, videos in AFFWILD2_LAYOUT.items():
        for video, n in videos.items():
            if split in folders:
                labels = np.round(rng.uniform(-1, 1, size=(n, 2)), 3)
                if video in AFFWILD2_INVALID:
                    labels[AFFWILD2_INVALID[video]] = -5
                folder = root / "VA_Estimation_Challenge" / folders[split]
                folder.mkdir(parents=True, exist_ok=True)
                lines = ["valence,arousal"] + [f"{v:g},{a:g}" for v, a in labels]
                (folder / f"{video}.txt").write_text("\n".join(lines) + "\n")
            crops = root / "cropped_aligned" / video
            crops.mkdir(parents=True, exist_ok=True)
            for frame in AFFWILD2_CROPS[video]:
                (crops / f"{frame:05d}.jpg").write_bytes(jpeg)
    for video, (batch, n) in AFFWILD2_VIDEOS.items():
        _write_video(root / "videos" / batch / f"{video}.mp4", n)
    (root / TEST_LIST_NAME).write_text("Video Name\n\nvidE\nvidF_left\n\n")
    return root


# ---------------------------------------------------------------------------------------------------------
# Models and the command line

DIM = 24  # feature size of the tiny ViT below, and input size of the tiny temporal model


class CachedDetector:
    """MTCNN, remembering its answer per frame image: the tests decode the same clips several times (CLI,
    Python API, stream), and detection is the slow part. Registered as detector "mtcnn-cached"."""

    name = "mtcnn-cached"
    has_landmarks = True

    def __init__(self):
        self.detector = get_detector("mtcnn", num_threads=1)
        self.cache: dict[bytes, list] = {}

    def detect_batch(self, images):
        keys = [hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=16).digest() for image in images]
        todo = [i for i, key in enumerate(keys) if key not in self.cache]
        for i, faces in zip(todo, self.detector.detect_batch([images[i] for i in todo]) if todo else []):
            self.cache[keys[i]] = faces
        return [self.cache[key] for key in keys]

    def detect(self, image):
        return self.detect_batch([image])[0]


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """`mambava ARGS` in this process, through the same entry point as the console script."""
    argv = sys.argv
    sys.argv = ["mambava", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------------------------------------
# Training data: a slowly drifting latent VA, seen through heavy per-frame noise

# A small temporal model of the paper's structure, for tests that check plumbing rather than learning.
TINY_MODEL = [
    "model.tcn_channels=[16,16]",
    "model.kernel_size=3",
    "model.d_model=16",
    "model.n_layers=1",
    "model.d_state=4",
    "model.dt_rank=2",
    "model.head_hidden=8",
]


def smooth_latent(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    """(n, 2) in (-1, 1): white noise smoothed by a Gaussian of `scale` frames (drifts over hundreds of
    frames), normalised, squashed by tanh."""
    pad = int(4 * scale)
    noise = rng.normal(size=(n + 2 * pad, 2))
    t = np.arange(-pad, pad + 1)
    kernel = np.exp(-0.5 * (t / scale) ** 2)
    kernel /= kernel.sum()
    z = np.stack([np.convolve(noise[:, d], kernel, mode="valid")[:n] for d in range(2)], 1)
    z = (z - z.mean(0)) / (z.std(0) + 1e-8)
    return np.tanh(0.8 * z)


def write_drift_dataset(
    root: Path,
    n_train: int = 24,
    n_val: int = 8,
    n_frames: int = 600,
    dim: int = 64,
    noise: float = 5.0,
    scale: float = 60.0,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write a feature store and an Aff-Wild2 annotation tree; returns (features dir, annotation root).

    Each video's target (valence, arousal) is `smooth_latent`; its features are a fixed random linear
    projection of the target plus Gaussian noise of std `noise` per dimension, so one frame alone predicts
    the target poorly and averaging over tens of frames predicts it well. Lengths vary by ±n_frames/12; every
    third video has a run of n/20 frames labelled -5 (masked in loss and metrics). Video names `tr00..`, `va00..`.
    """
    rng = np.random.default_rng(seed)
    projection = rng.normal(size=(2, dim))
    store = FeatureStore(root / "features")
    annotations = root / "affwild2" / "VA_Estimation_Challenge"
    for prefix, folder, count in (("tr", "Train_Set", n_train), ("va", "Validation_Set", n_val)):
        (annotations / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            name = f"{prefix}{i:02d}"
            n = int(n_frames + rng.integers(-(n_frames // 12), n_frames // 12 + 1))
            target = smooth_latent(rng, n, scale)
            features = target @ projection + noise * rng.normal(size=(n, dim))
            labels = target.copy()
            if i % 3 == 0:
                run = max(2, n // 20)
                start = int(rng.integers(0, n - run))
                labels[start : start + run] = -5.0
            store.write(
                name, features.astype(np.float32), np.ones(n, bool), fps=30.0, backbone="drift", dtype="float16"
            )
            lines = ["valence,arousal"] + ["-5,-5" if v == -5 else f"{v:.5f},{a:.5f}" for v, a in labels]
            (annotations / folder / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return root / "features", root / "affwild2"


def run_config(features: Path, annotations: Path, out_dir: Path, *overrides: str) -> TrainConfig:
    return load_config(
        None,
        [
            f"data.features={features}",
            f"data.annotations={annotations}",
            f"out_dir={out_dir}",
            "progress_bar=false",
            *overrides,
        ],
    )


def train_data_overrides(train_data, epochs: int) -> list[str]:
    features, annotations = train_data
    return [
        f"data.features={features}",
        f"data.annotations={annotations}",
        "progress_bar=false",
        *TINY_MODEL,
        "model.input_dim=8",
        f"epochs={epochs}",
        "warmup_epochs=1",
        "batch_size=3",
        "seed=7",
        "data.window=60",
        "data.stride=40",
    ]


def train_cli(train_data, out: Path, epochs: int, *extra: str) -> list:
    return ["train", "-o", out, *[f"--set={o}" for o in train_data_overrides(train_data, epochs)], *extra]


# ---------------------------------------------------------------------------------------------------------
# Crops whose labels can be read off the pixels (backbone fine-tuning)


def make_va_tree(root, videos, n_frames=24, seed=0):
    """An Aff-Wild2-layout tree whose labels can be read off the crops: valence from the red level, arousal
    from the green level (plus pixel noise); some frames lack a crop and some are labelled -5."""
    rng = np.random.default_rng(seed)
    for split, names in videos.items():
        folder = root / "VA_Estimation_Challenge" / split
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            va = rng.uniform(-0.9, 0.9, size=(n_frames, 2))
            lines = ["valence,arousal"]
            crops = root / "cropped_aligned" / name
            crops.mkdir(parents=True)
            for f in range(1, n_frames + 1):
                v, a = va[f - 1]
                lines.append("-5,-5" if f == 3 else f"{v:.4f},{a:.4f}")
                if f == 5:
                    continue  # no face
                image = rng.normal(128, 20, size=(32, 32, 3))
                image[..., 0] += 100 * v
                image[..., 1] += 100 * a
                Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(crops / f"{f:05d}.png")
            (folder / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return root


def finetune_config(**overrides):
    base = dict(
        epochs=1,
        batch_size=8,
        frames_per_video=None,
        precision="32",
        accelerator="cpu",
        devices=1,
        num_workers=0,
        warmup_fraction=0.0,
        drop_path=0.0,
    )
    return FinetuneConfig(**{**base, **overrides})


def short_clip(media_dir: Path, path: Path, n: int = 6) -> Path:
    """The first n frames of single_face.mp4 (the faces benchmark times every frame of its clips)."""
    return first_frames(media_dir / "single_face.mp4", path, n)
