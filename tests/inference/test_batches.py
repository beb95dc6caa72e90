"""A bad input inside a batch (issue 13, item 5): `faces`, `extract` and `predict` go on past it, print one
line per failure and a count at the end, and exit 2; the good inputs are all done."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from support import run_cli

from mambava.data.store import FeatureStore


def test_faces_goes_on_past_bad_videos(media_dir, tmp_path, capsys):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "other.mov").write_text("not a video\n")
    shutil.copy(media_dir / "no_face.mp4", tmp_path / "good.mp4")
    out = tmp_path / "faces"
    args = [
        "faces",
        tmp_path / "empty.mp4",
        tmp_path / "good.mp4",
        tmp_path / "other.mov",
        tmp_path / "gone.mp4",
        "-o",
        out,
        "--detector",
        "haar",
        "-q",
    ]
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "Traceback" not in err
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == [
        f"error: {tmp_path / 'empty.mp4'}: the file is empty (0 bytes), not a video",
        f"error: {tmp_path / 'other.mov'}: cannot open as a video (Invalid data found when processing input: "
        f"'{tmp_path / 'other.mov'}'); the file may be corrupt or truncated",
        f"error: {tmp_path / 'gone.mp4'}: no such file",
    ]
    assert lines[-1] == "3 of 4 videos failed"
    assert any(line.startswith("good: 95 frames, a face in 0 (0.0%)") for line in lines)  # reached after a failure
    assert (out / "good.faces.csv").is_file()


def _tiny_encoder(path: Path) -> Path:
    from mambava.backbone import ViTConfig, ViTEncoder

    torch.manual_seed(0)
    encoder = ViTEncoder(ViTConfig(img_size=32, patch_size=16, embed_dim=16, depth=1, num_heads=2, name="t"))
    return encoder.save(path)


def test_extract_goes_on_past_a_bad_crop_and_a_missing_crop_folder(affwild2_root, tmp_path, capsys):
    crops = affwild2_root / "cropped_aligned"
    (crops / "vidB_left" / "00007.jpg").write_bytes(b"not a jpeg")
    shutil.rmtree(crops / "vidC")  # annotated (validation) but no crops: was silently left out
    checkpoint = _tiny_encoder(tmp_path / "enc.safetensors")
    out = tmp_path / "store"
    code, stdout, err = run_cli(
        ["extract", affwild2_root, "-o", out, "-c", checkpoint, "--precision", "fp32", "-j", "0", "-b", "16"], capsys
    )
    assert code == 2 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    bad = crops / "vidB_left" / "00007.jpg"
    assert errors == [
        f"error: {crops / 'vidC'}: no crop folder for video 'vidC'",
        f"error: {bad}: unreadable image (cannot identify image file '{bad}') (remove the file to treat that frame "
        "as having no face)",
    ]
    assert err.splitlines()[-1] == "2 of 7 videos failed"
    # every crop went through the model (46 + 40 + 38 + 25 + 18 + 14), vidB_left's were then dropped
    assert "5 video(s) extracted (181 crops" in stdout
    assert FeatureStore(out).names() == ["vidA", "vidB_right", "vidD", "vidE", "vidF_left"]


def test_extract_on_an_affwild2_root_without_crops_is_one_line(affwild2_root, tmp_path, capsys):
    shutil.rmtree(affwild2_root / "cropped_aligned")
    checkpoint = _tiny_encoder(tmp_path / "enc.safetensors")
    code, _, err = run_cli(["extract", affwild2_root, "-o", tmp_path / "store", "-c", checkpoint, "-j", "0"], capsys)
    assert code == 2
    assert err.strip() == (
        f"error: {affwild2_root}: an Aff-Wild2 root without cropped_aligned/: run `mambava faces` "
        "on its videos (or pass the folder of crops)"
    )


def test_extract_api_without_on_error_still_stops_at_the_first_bad_video(affwild2_root, tmp_path):
    from mambava.backbone import FeatureExtractor, load_encoder
    from mambava.backbone.extract import extract_features
    from mambava.core.errors import MambavaError

    shutil.rmtree(affwild2_root / "cropped_aligned" / "vidC")
    extractor = FeatureExtractor(
        load_encoder(_tiny_encoder(tmp_path / "enc.safetensors")), batch_size=8, precision="fp32"
    )
    with pytest.raises(MambavaError, match=r"vidC: no crop folder for video 'vidC'"):
        extract_features(affwild2_root, tmp_path / "store", extractor, workers=0, progress=False)
    seen = []
    summary = extract_features(
        affwild2_root, tmp_path / "store", extractor, workers=0, progress=False, on_error=seen.append
    )
    assert summary.failed == ["vidC"] and len(seen) == 1 and len(summary.extracted) == 6


def test_predict_goes_on_past_bad_inputs(tmp_path, capsys):
    from mambava.temporal import build_temporal_model, save_temporal_model

    torch.manual_seed(0)
    model = build_temporal_model("mlp", {"input_dim": 8})
    save_temporal_model(model, tmp_path / "m.safetensors")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.normal(size=(30, 8)).astype(np.float32))
    (tmp_path / "b.npy").write_text("0.1 0.2\n")  # text, not .npy
    np.save(tmp_path / "c.npy", rng.normal(size=(30, 4)).astype(np.float32))  # 4-d for an 8-d model
    np.save(tmp_path / "d.npy", rng.normal(size=(20, 8)).astype(np.float32))
    code, stdout, err = run_cli(
        [
            "predict",
            *(tmp_path / f"{n}.npy" for n in "abcd"),
            "-c",
            tmp_path / "m.safetensors",
            "-o",
            tmp_path / "out",
            "--no-plots",
        ],
        capsys,
    )
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 3 and lines[-1] == "2 of 4 inputs failed"
    assert lines[0].startswith(f"error: {tmp_path / 'b.npy'}: ")
    assert (
        lines[1]
        == f"error: {tmp_path / 'c.npy'}: 4-d features, but the temporal model {tmp_path / 'm.safetensors'} takes 8-d"
    )
    assert sorted(p.name for p in (tmp_path / "out").glob("*.csv")) == [
        "a.csv",
        "a.summary.csv",
        "d.csv",
        "d.summary.csv",
    ]
