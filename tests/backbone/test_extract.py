"""Feature extraction from crop trees into the feature store: shapes, masks, forward fill, resume, sharding."""

import numpy as np
import pytest
import torch
from PIL import Image
from support import AFFWILD2_CROPS
from typer.testing import CliRunner

from mambava.backbone import FeatureExtractor, ViTConfig, ViTEncoder
from mambava.backbone.extract import extract_features
from mambava.core.errors import MambavaError
from mambava.data.affwild2 import read_crop
from mambava.data.crops import find_crop_videos
from mambava.data.store import FeatureStore, FeatureWriter

# Frames per video, as AffWild2.n_frames gives them for the conftest tree: raw video's count (vidD 27, vidE 20),
# else the annotation's length, else the highest crop number (vidF_left 15).
N_FRAMES = {"vidA": 50, "vidB_left": 40, "vidB_right": 40, "vidC": 30, "vidD": 27, "vidE": 20, "vidF_left": 15}


@pytest.fixture(scope="module")
def extractor():
    torch.manual_seed(0)
    encoder = ViTEncoder(ViTConfig(img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2, name="t"))
    return FeatureExtractor(encoder, batch_size=16, precision="fp32")


def _expected(root, extractor, video):
    """Features of each present crop computed directly (no DataLoader, no store)."""
    frames = AFFWILD2_CROPS[video]
    crops = [read_crop(root / "cropped_aligned" / video / f"{f:05d}.jpg") for f in frames]
    return frames, extractor.features(crops)


def test_extraction_round_trip_mask_and_forward_fill(crop_tree, extractor, tmp_path):
    store = FeatureStore(tmp_path / "store")
    summary = extract_features(
        crop_tree, store, extractor, backbone="t:test", dtype="float32", workers=2, progress=False
    )
    assert sorted(summary.extracted) == sorted(N_FRAMES) and summary.skipped == []
    assert summary.frames == sum(len(f) for f in AFFWILD2_CROPS.values())
    for video, n in N_FRAMES.items():
        record = store.read(video)
        assert record.features.shape == (n, 32) and record.backbone == "t:test"
        frames, expected = _expected(crop_tree, extractor, video)
        present = np.zeros(n, bool)
        present[np.array(frames) - 1] = True
        np.testing.assert_array_equal(record.mask, present, err_msg=video)
        np.testing.assert_allclose(record.features[np.array(frames) - 1], expected, atol=1e-6, err_msg=video)
    a = store.read("vidA").features  # crops 3..50 without 20, 21 (rows 2..49 without 19, 20)
    np.testing.assert_array_equal(a[0], a[2])  # before the first face: the first face's features
    np.testing.assert_array_equal(a[19], a[18])  # no face: the previous frame's features
    np.testing.assert_array_equal(a[20], a[18])
    d = store.read("vidD")  # 25 crops, raw video of 27 frames: the last two frames are filled
    assert d.mask[-2:].tolist() == [False, False] and np.array_equal(d.features[26], d.features[24])


def test_resume_after_interruption(crop_tree, extractor, tmp_path, monkeypatch):
    reference = FeatureStore(tmp_path / "reference")
    extract_features(crop_tree, reference, extractor, dtype="float32", workers=0, progress=False)

    store = FeatureStore(tmp_path / "store")
    calls = {"n": 0}
    original = FeatureWriter.put_frames

    def crash_on_the_ninth_block(self, frames, block):
        calls["n"] += 1
        if calls["n"] == 9:
            raise KeyboardInterrupt
        return original(self, frames, block)

    monkeypatch.setattr(FeatureWriter, "put_frames", crash_on_the_ninth_block)
    with pytest.raises(KeyboardInterrupt):
        extract_features(crop_tree, store, extractor, dtype="float32", workers=0, progress=False)
    monkeypatch.undo()
    done = store.names()
    # batches of 16 within each video: vidA(46) 3, vidB_left(40) 3, vidB_right(38) 3: the 9th is vidB_right's last
    assert done == ["vidA", "vidB_left"]
    assert not store.has("vidB_right")

    summary = extract_features(crop_tree, store, extractor, dtype="float32", workers=0, progress=False)
    assert summary.skipped == done
    assert sorted(summary.extracted) == sorted(set(N_FRAMES) - set(done))
    assert summary.frames == sum(len(AFFWILD2_CROPS[v]) for v in summary.extracted)
    for video in N_FRAMES:
        np.testing.assert_array_equal(store.read(video).features, reference.read(video).features)
        np.testing.assert_array_equal(store.read(video).mask, reference.read(video).mask)


def test_sharding_splits_videos_between_ranks(crop_tree, extractor, tmp_path):
    store = FeatureStore(tmp_path / "store")
    names = sorted(N_FRAMES)
    shares = []
    for rank in range(3):
        summary = extract_features(crop_tree, store, extractor, workers=0, rank=rank, world_size=3, progress=False)
        assert summary.extracted == names[rank::3]
        shares.append(set(summary.extracted))
    assert set().union(*shares) == set(names) and sum(map(len, shares)) == len(names)
    assert store.names() == names


def test_plain_crop_folders_and_bad_crops(tmp_path, extractor):
    root = tmp_path / "crops"
    for video, frames in {"clip1": [1, 2, 5], "clip2": [3]}.items():
        (root / video).mkdir(parents=True)
        for f in frames:
            Image.fromarray(np.full((24, 24, 3), 10 * f, np.uint8)).save(root / video / f"{f:05d}.jpg")
    videos = find_crop_videos(root)
    assert [(v.name, v.n_frames, v.frames.tolist()) for v in videos] == [("clip1", 5, [1, 2, 5]), ("clip2", 3, [3])]
    store = FeatureStore(tmp_path / "store")
    extract_features(root, store, extractor, workers=0, progress=False)
    assert store.read("clip1").mask.tolist() == [True, True, False, False, True]
    assert store.read("clip2").mask.tolist() == [False, False, True]
    assert store.read("clip1").dtype == "float16"

    (root / "clip3").mkdir()
    (root / "clip3" / "00001.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(MambavaError, match=r"clip3/00001\.jpg.*remove the file") as error:
        extract_features(root, tmp_path / "store2", extractor, workers=1, progress=False)
    assert "\n" not in str(error.value)
    assert not FeatureStore(tmp_path / "store2").has("clip3")


def test_cli_extract(crop_tree, extractor, tmp_path):
    from mambava.cli import app

    checkpoint = extractor.encoder.save(tmp_path / "encoder.safetensors")
    out = tmp_path / "store"
    args = [
        "extract",
        str(crop_tree),
        "-o",
        str(out),
        "-c",
        str(checkpoint),
        "--precision",
        "fp32",
        "-j",
        "0",
        "--video",
        "vidC",
        "--video",
        "vidF_left",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2 video(s) extracted (44 crops" in result.output
    assert FeatureStore(out).names() == ["vidC", "vidF_left"]
    record = FeatureStore(out).read("vidC")
    assert record.backbone == "t:encoder.safetensors" and record.extra["checkpoint_format"] == "mambava"
    again = CliRunner().invoke(app, args)
    assert "0 video(s) extracted" in again.output and "2 already in" in again.output


def test_faces_stage_output_gives_frame_count_and_rate(tmp_path, extractor):
    """`mambava faces` output: OUT/<video>/<NNNNN>.jpg plus OUT/<video>.faces.csv with one row per processed
    frame (0-based) and track; frames after the last face and videos without any face still count."""
    root = tmp_path / "faces"
    (root / "clip").mkdir(parents=True)
    for f in (2, 3):
        Image.fromarray(np.full((16, 16, 3), 50 * f, np.uint8)).save(root / "clip" / f"{f:05d}.jpg")
    header = "frame,time,track,present,image\n"
    rows = [
        f"{i},{i / 25:.4f},clip,{int(i in (1, 2))},{'clip/%05d.jpg' % (i + 1) if i in (1, 2) else ''}" for i in range(6)
    ]
    (root / "clip.faces.csv").write_text(header + "\n".join(rows) + "\n")
    (root / "empty.faces.csv").write_text(header + "".join(f"{i},{i / 30:.4f},,0,\n" for i in range(4)))
    videos = {v.name: v for v in find_crop_videos(root)}
    assert (videos["clip"].n_frames, videos["clip"].frames.tolist()) == (6, [2, 3])
    assert videos["clip"].fps == pytest.approx(25.0) and videos["empty"].fps == pytest.approx(30.0)
    store = FeatureStore(tmp_path / "store")
    extract_features(root, store, extractor, workers=0, progress=False)
    assert store.read("clip").mask.tolist() == [False, True, True, False, False, False]
    empty = store.read("empty")
    assert empty.mask.tolist() == [False] * 4 and not np.asarray(empty.features).any()
