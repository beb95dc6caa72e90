"""Fault injection, for real: full disks (a small tmpfs), read-only outputs (a read-only tmpfs), truncated
checkpoints and processes killed mid-run. Each case checks the command's promise: one line naming the output
and the reason, exit code 2, no traceback; outputs complete or absent (never a partial file); a resume that
ends bit-identical to an uninterrupted run.

The mounts need root (CAP_SYS_ADMIN); elsewhere those tests are skipped with the reason. Root ignores file
permissions, so read-only is a read-only mount, not chmod. Every mount is undone in its fixture's teardown.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import AFFWILD2_CROPS, REPO

PAGE = 4096


# ---------------------------------------------------------------------------------------------------------
# Helpers: mounts, filling a disk, running the real command


class Mounts:
    """Mount small tmpfs file systems under a test's tmp_path; all unmounted at teardown."""

    def __init__(self, base: Path):
        self.base = base
        self.mounted: list[Path] = []

    def tmpfs(self, name: str, size: int, read_only: bool = False) -> Path:
        path = self.base / name
        path.mkdir(parents=True, exist_ok=True)
        options = f"size={size}" + (",ro" if read_only else "")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {result.stderr.strip()}")
        self.mounted.append(path)
        return path

    def read_only(self, path: Path) -> None:
        """Make a mounted tmpfs read-only, keeping what it holds."""
        subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)

    def unmount_all(self) -> None:
        for path in reversed(self.mounted):
            subprocess.run(["umount", str(path)], capture_output=True)
        self.mounted.clear()


@pytest.fixture
def mounts(tmp_path):
    m = Mounts(tmp_path / "mnt")
    yield m
    m.unmount_all()


def fill(folder: Path, leave: int) -> Path:
    """Write a filler file so that about `leave` bytes stay free on folder's file system."""
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize
    path = folder / "filler"
    with open(path, "wb") as handle:
        handle.write(b"\0" * max(0, free - leave))
    return path


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real `mambava` command in a subprocess (this checkout's source first on the path)."""
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "mambava", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, names: str | Path, reason: str) -> str:
    """Exit code 2, no traceback, exactly one `error:` line, naming `names` and giving `reason`."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert str(names) in errors[0] and reason in errors[0], errors[0]
    assert ".tmp" not in errors[0], errors[0]  # the output the user asked for, not a hidden temporary file
    return errors[0]


def temporaries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.name.endswith(".tmp") or ".faces-staging" in p.name)


# ---------------------------------------------------------------------------------------------------------
# Data: crops + a tiny encoder (extract), a tiny feature store + labels (train, evaluate)


@pytest.fixture
def crop_tree(affwild2_root):
    """The conftest Aff-Wild2 tree with every crop a distinct random 20x20 image."""
    rng = np.random.default_rng(0)
    for video, frames in AFFWILD2_CROPS.items():
        for frame in frames:
            image = rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
            Image.fromarray(image).save(affwild2_root / "cropped_aligned" / video / f"{frame:05d}.jpg", quality=95)
    return affwild2_root


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory) -> Path:
    """A tiny ViT (32x32 input, 64-d features, 1 block) saved as a mambava encoder.safetensors."""
    from mambava.backbone import ViTConfig, ViTEncoder

    torch.manual_seed(0)
    encoder = ViTEncoder(ViTConfig(img_size=32, patch_size=16, embed_dim=64, depth=1, num_heads=2, name="t"))
    return encoder.save(tmp_path_factory.mktemp("encoder") / "encoder.safetensors")


def extract_args(source: Path, store: Path, encoder: Path) -> list:
    # float32 64-d: vidA's 50 frames are 12.9 kB, four pages, so most of the file is written through the map
    return ["extract", source, "-o", store, "-c", encoder, "--device", "cpu", "--workers", "0", "--dtype", "float32",
            "--batch-size", "16"]


def store_arrays(store: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from mambava.features import FeatureStore

    s = FeatureStore(store)
    return {name: (np.array(s.read(name).features), s.read(name).mask) for name in s.names()}


# ---------------------------------------------------------------------------------------------------------
# extract


def test_extract_on_a_full_disk_is_one_line_and_leaves_no_partial_entry(crop_tree, encoder_file, mounts):
    disk = mounts.tmpfs("small", 256 * 1024)
    filler = fill(disk, leave=3 * PAGE)  # room for the .npy header and last page, not for the rows in between
    store = disk / "store"
    result = run_cli(*extract_args(crop_tree, store, encoder_file))
    assert_one_line_error(result, store, "No space left on device")
    assert temporaries(disk) == []
    assert store_arrays(store) == {}  # no entry visible, complete or not
    # With the space back, the same command finishes the store.
    filler.unlink()
    result = run_cli(*extract_args(crop_tree, store, encoder_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(store_arrays(store)) == sorted(AFFWILD2_CROPS)
