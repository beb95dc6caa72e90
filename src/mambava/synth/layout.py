"""The dataset on disk, in the exact Aff-Wild2 layout (see the package docstring): folder and file names,
atomic writers for annotations, crops and crop folders, and the readers of the generator's truth.

Every file is written atomically (temporary name + rename); each crop folder is filled under a temporary name
and renamed when complete (`new_crop_dir`, `replace_dir`)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np

from mambava.core.errors import MambavaError
from mambava.core.fileio import atomic_open
from mambava.data.affwild2 import read_va_annotation

ANNOTATION_DIR = "VA_Estimation_Challenge"
SPLIT_DIRS = {"train": "Train_Set", "validation": "Validation_Set", "test": "Test_Set"}
CROPS_DIR = "cropped_aligned"
VIDEOS_DIR = "videos"
TEST_LIST_NAME = "Valence_Arousal_Estimation_Challenge_test_set_release.txt"
GROUND_TRUTH_DIR = "synth_ground_truth"
META_FILE = "synth_meta.json"
META_DIR = "synth_meta"
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------------------
# Writing


def write_text(path: Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)


def annotation_text(labels: np.ndarray) -> str:
    lines = ["valence,arousal"]
    for v, a in labels:
        lines.append("-5,-5" if v == -5.0 else f"{v:.4f},{a:.4f}")
    return "\n".join(lines) + "\n"


def replace_dir(tmp: Path, final: Path) -> None:
    """Move a completed temporary folder into place, replacing an older one."""
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)


def new_crop_dir(crops_root: Path, name: str) -> Path:
    """An empty temporary crop folder for `name` (a leftover of an interrupted run is cleared); `replace_dir`
    moves it into place when complete."""
    tmp = crops_root / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def write_jpeg(path: Path, crop: np.ndarray, quality: int, name: str, where: str) -> None:
    """Encode a BGR crop as JPEG into `path` (inside a temporary crop folder, so not atomic itself); `name` and
    `where` ("frame 12") name the image in the error."""

    ok, data = cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise MambavaError(f"{name}: JPEG encoding failed at {where}")
    path.write_bytes(data.tobytes())


def prepare_root(root: Path) -> None:
    """Refuse to write into a folder that holds something other than an earlier synthetic dataset; clear an
    earlier dataset's folders so that no stale video survives."""
    if root.exists() and any(root.iterdir()):
        if not (root / META_FILE).exists():
            raise MambavaError(
                f"{root}: folder is not empty and holds no {META_FILE} (not a synthetic dataset): "
                "choose an empty or new folder"
            )
        for sub in (VIDEOS_DIR, CROPS_DIR, ANNOTATION_DIR, GROUND_TRUTH_DIR, META_DIR):
            if (root / sub).exists():
                shutil.rmtree(root / sub)
        for path in (root / TEST_LIST_NAME, root / META_FILE):
            if path.exists():
                path.unlink()
    root.mkdir(parents=True, exist_ok=True)


# ---------------------------------------------------------------------------------------------------------
# Reading back the truth


def read_meta(root: str | os.PathLike) -> dict:
    """The generator's `synth_meta.json` of a dataset root (MambavaError if it is not a synthetic dataset)."""
    path = Path(root) / META_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MambavaError(f"{path}: not found ({root} is not a synthetic dataset from mambava synth)") from None
    except (OSError, json.JSONDecodeError) as error:
        raise MambavaError(f"{path}: unreadable ({error})") from error


def ground_truth_path(root: str | os.PathLike, name: str) -> Path:
    """Labels of an annotation name: the Aff-Wild2 file for train/validation, synth_ground_truth/ for test."""
    root = Path(root)
    for folder in (
        root / ANNOTATION_DIR / SPLIT_DIRS["train"],
        root / ANNOTATION_DIR / SPLIT_DIRS["validation"],
        root / GROUND_TRUTH_DIR / SPLIT_DIRS["test"],
    ):
        if (folder / f"{name}.txt").exists():
            return folder / f"{name}.txt"
    raise MambavaError(f"{root}: no labels for {name!r}")


def read_labels(root: str | os.PathLike, names: list[str]) -> dict[str, np.ndarray]:
    """{name: (T, 2) labels as the raters gave them (-5 where none)} for annotation names of any split, the
    test split's from synth_ground_truth/."""

    return {name: read_va_annotation(ground_truth_path(root, name)) for name in names}


def read_truth(root: str | os.PathLike, name: str) -> dict[str, np.ndarray]:
    """Per-frame truth of one annotation name (`synth_meta/<name>.npz`): va_true, labels, crop, present, ..."""
    path = Path(root) / META_DIR / f"{name}.npz"
    if not path.exists():
        raise MambavaError(f"{path}: not found")
    with np.load(path) as data:
        return {key: data[key] for key in data.files}
