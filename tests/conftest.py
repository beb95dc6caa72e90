"""Shared fixtures. Others append their fixtures below; keep each one documented with what it builds."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from support import AFFWILD2_CROPS, DIM, CachedDetector, make_affwild2_tree, write_drift_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (--dist loadgroup, pyproject.toml)
def pytest_collection_modifyitems(items):
    """A module with module-scoped fixtures of its own runs on one worker, so each of them is built once (split
    over two workers, tests/faces/test_landmarks.py trained its refiner twice: 30 s a worker). Tests that carry
    their own xdist_group (the Ray tests) keep it."""
    for item in items:
        if any(item.iter_markers("xdist_group")):
            continue
        module = item.nodeid.split("::")[0]
        fixtures = getattr(item, "_fixtureinfo", None)
        defs = fixtures.name2fixturedefs.values() if fixtures is not None else ()
        if any(d.scope == "module" and d.baseid == module for chain in defs for d in chain):
            item.add_marker(pytest.mark.xdist_group(module))


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


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_mamba_va) -> dict[str, Path]:
    """A tiny ViT (img 32, patch 16, D=24, 1 block) saved with encoder.save, a tiny Mamba-VA taking 24-d
    features, and one taking 48-d features (a checkpoint of another config)."""
    from mambava.backbone import ViTConfig, ViTEncoder
    from mambava.temporal import save_temporal_model

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    encoder = ViTEncoder(ViTConfig(img_size=32, patch_size=16, embed_dim=DIM, depth=1, num_heads=2, name="tiny-test"))
    encoder.save(root / "vit.safetensors")
    save_temporal_model(tiny_mamba_va(DIM), root / "model.safetensors")
    save_temporal_model(tiny_mamba_va(2 * DIM), root / "model48.safetensors")
    return {
        "vit": root / "vit.safetensors",
        "model": root / "model.safetensors",
        "model48": root / "model48.safetensors",
    }


@pytest.fixture(scope="module")
def detector():
    """The name of a cached MTCNN shared by this module's tests (see _CachedDetector)."""
    from mambava.faces import detect, register_detector

    shared = CachedDetector()
    register_detector(shared.name, lambda: shared)
    yield shared.name
    detect._REGISTRY.pop(shared.name, None)


@pytest.fixture(scope="module")
def train_data(tmp_path_factory) -> tuple[Path, Path]:
    """6 short videos (4 train, 2 validation) of 8-d features with their annotations."""
    return write_drift_dataset(
        tmp_path_factory.mktemp("drift"), n_train=4, n_val=2, n_frames=120, dim=8, noise=1.0, scale=20
    )
