"""Shared fixtures. Others append their fixtures below; keep each one documented with what it builds."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def media_dir() -> Path:
    """The real test media shipped with the tests (tests/data/media: single_face.mp4, face_noface.mov,
    no_face.mp4, single_face.jpg, multi_face.jpg; see its SOURCES.md). $MAMBAVA_MEDIA points elsewhere."""
    path = Path(os.environ.get("MAMBAVA_MEDIA") or REPO / "tests" / "data" / "media")
    assert (path / "single_face.mp4").is_file(), f"real test media missing from {path}"
    return path


# ---------------------------------------------------------------------------------------------------------
# A small Aff-Wild2-format tree (official layout). Its contents, which tests assert on:
#
#   split       video       annotation   invalid (-5)   raw video          crops present
#   train       vidA        50 lines     rows 0..4      -                  3..50 without 20, 21   (46)
#   train       vidB_left   40           -              -                  1..40                  (40)
#   train       vidB_right  40           -              -                  1..38                  (38)
#   validation  vidC        30           rows 10..12    -                  1..30                  (30)
#   validation  vidD        25           -              batch2/vidD.mp4 27 1..25                  (25)
#   test        vidE        -            -              batch1/vidE.mp4 20 1..18                  (18)
#   test        vidF_left   -            -              -                  1..15 without 7        (14)
#
# The test list (with a header line and blank lines) is Valence_Arousal_Estimation_Challenge_test_set_release.txt
# at the root. Annotation values are deterministic (seed 0), rounded to 3 decimals.

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
    """The first `n_frames` of `video` re-encoded with `codec` at `rate` (short clips keep detection-bound tests fast)."""
    import av

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
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _write_video(path: Path, n_frames: int) -> None:
    import av

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


@pytest.fixture
def affwild2_root(tmp_path: Path) -> Path:
    """A fresh small Aff-Wild2-format tree (see the table above) in a temp dir."""
    return make_affwild2_tree(tmp_path / "affwild2")


@pytest.fixture
def crop_tree(affwild2_root: Path) -> Path:
    """The small Aff-Wild2 tree with every crop a distinct random 20x20 image (for feature extraction)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for video, frames in AFFWILD2_CROPS.items():
        for frame in frames:
            image = rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
            Image.fromarray(image).save(affwild2_root / "cropped_aligned" / video / f"{frame:05d}.jpg", quality=95)
    return affwild2_root


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """torch on one intra-op thread for the whole suite (restored after). The tests run many small ops, and on a
    loaded 2-vCPU machine two OpenMP threads busy-wait or stall a scheduler tick at each one: tiny models run
    many times faster on one thread. A test that needs more threads sets them itself."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_mamba_va():
    """A factory `tiny_mamba_va(input_dim=24, seed=0)`: a small Mamba-VA (TCN [32, 16], 2 Mamba layers of
    d_model 16, head 16) in eval mode, seeded; for predict/stream tests that need a real model fast."""

    def build(input_dim: int = 24, seed: int = 0):
        import torch

        from mambava.temporal import build_temporal_model

        torch.manual_seed(seed)
        return build_temporal_model(
            "mamba_va",
            {
                "input_dim": input_dim,
                "tcn_channels": [32, 16],
                "d_model": 16,
                "n_layers": 2,
                "head_hidden": 16,
            },
        ).eval()

    return build
