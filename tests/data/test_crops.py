"""Crop discovery: one scan of a crop folder (affwild2.crop_files) under both views, and a home (crops.py) that
extraction and the backbone's fine-tuning share without one importing the other."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import mambava
from mambava.core.errors import MambavaError
from mambava.data.affwild2 import crop_files, list_crop_frames
from mambava.data.crops import scan_crop_folder


def _touch(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")
    return folder


def test_one_scan_two_views(tmp_path):
    folder = _touch(tmp_path / "v", "00003.jpg", "00001.jpg", "2.jpg", "notes.txt", "abc.jpg", "00004.PNG")
    assert crop_files(folder) == [(1, "00001.jpg"), (2, "2.jpg"), (3, "00003.jpg"), (4, "00004.PNG")]
    assert list_crop_frames(folder) == [1, 2, 3, 4]
    frames, files, suffix = scan_crop_folder(folder)
    assert frames.dtype == np.int64 and frames.tolist() == [1, 2, 3, 4]
    assert (files, suffix) == (["00001.jpg", "2.jpg", "00003.jpg", "00004.PNG"], ".jpg")  # not all canonical

    canonical = _touch(tmp_path / "c", "00002.png", "00010.png")
    frames, files, suffix = scan_crop_folder(canonical)
    assert (frames.tolist(), files, suffix) == ([2, 10], None, ".png")
    assert scan_crop_folder(_touch(tmp_path / "empty"))[0].tolist() == []


def test_two_files_for_one_frame(tmp_path):
    folder = _touch(tmp_path / "v", "00004.jpg", "4.jpg", "00001.jpg")
    assert list_crop_frames(folder) == [1, 4, 4]  # the data check counts what is there
    with pytest.raises(MambavaError) as error:
        scan_crop_folder(folder)
    assert str(error.value) == f"{folder}: two crop files for frame 4"


def test_finetuning_does_not_import_the_extract_stage():
    package = Path(mambava.__file__).parent
    imported = {
        node.module
        for node in ast.walk(ast.parse((package / "backbone" / "finetune.py").read_text()))
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert "mambava.data.crops" in imported and "mambava.backbone.extract" not in imported
