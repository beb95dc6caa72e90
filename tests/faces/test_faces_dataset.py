"""`mambava faces --dataset`: a dataset's cropped_aligned/ made by our own faces stage from its raw videos, and
how far those crops are from ideal on synthetic videos whose true landmarks are known."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from typer.testing import CliRunner

from mambava.backbone.extract import find_crop_videos
from mambava.cli import app
from mambava.data.affwild2 import AffWild2, video_frame_count
from mambava.data.check import check
from mambava.faces.align import ARCFACE_TEMPLATE_112
from mambava.faces.dataset import EYE_DISTANCE_112, alignment_error, extract_dataset_faces
from mambava.synth import SynthConfig, generate, read_truth
from mambava.synth.truth_faces import synth_alignment_error

# 4 short videos, one of them two-person (seed chosen for that), ~370 frames: ~10 s of MTCNN here.
RELAXED = dict(thresholds=(0.5, 0.5, 0.5), min_score=0.5)
SYNTH = dict(n_train=2, n_val=1, n_test=1, frames=(80, 100), two_person_fraction=0.3, seed=5, workers=1)


@pytest.fixture(scope="module")
def own_crops(tmp_path_factory):
    """A tiny synthetic dataset and its own crops (`mambava faces --dataset ROOT --out OWN`, with MTCNN's
    thresholds relaxed to 0.5 as the demo runs it for the drawn faces), made once."""
    base = tmp_path_factory.mktemp("faces_dataset")
    summary = generate(base / "data", SynthConfig(**SYNTH))
    result = extract_dataset_faces(base / "data", base / "own", detector_kwargs=RELAXED)
    return base / "data", base / "own", summary, result


def test_writes_the_aff_wild2_layout_from_the_raw_videos(own_crops):
    root, own, summary, result = own_crops
    assert not result.failed and result.linked and all(not v.unmatched and not v.extra for v in result.videos)
    assert any(len(v["persons"]) == 2 for v in _meta(root)["videos"])  # the fixture has a two-person video
    crops = own / "cropped_aligned"
    names = [n for split in summary.splits.values() for n in split]
    # one folder per person, named as the dataset's annotations and test list name them
    assert sorted(p.name for p in crops.iterdir() if p.is_dir() and not p.name.startswith(".")) == sorted(names)
    for video in summary.videos:
        rows = list(csv.DictReader(open(crops / f"{video}.faces.csv", newline="")))
        n = video_frame_count(root / next(v["video"] for v in _meta(root)["videos"] if v["name"] == video))
        assert sorted({int(r["frame"]) for r in rows}) == list(range(n))  # every frame processed
        for name in {r["track"] for r in rows}:
            present = sorted(int(r["frame"]) + 1 for r in rows if r["track"] == name and r["present"] == "1")
            files = sorted((crops / name).iterdir())
            # 1-based 5-digit names, exactly the frames with a face; none where there is no face
            assert [f.name for f in files] == [f"{k:05d}.jpg" for k in present]
            drawn = read_truth(root, name)["present"]
            assert all(drawn[k - 1] for k in present)  # never a crop where no face is drawn
            assert len(present) >= 0.8 * drawn.sum()
    # OUT is a complete dataset root: the annotations, test list and videos are ROOT's
    data = AffWild2(own)
    assert (
        data.splits == AffWild2(root).splits
        and data.annotations_root.resolve() == (root / "VA_Estimation_Challenge").resolve()
    )
    assert check(own, progress=False).ok
    # extract reads it, with the raw videos' frame counts (frames after the last face included)
    videos = {v.name: v for v in find_crop_videos(own)}
    assert sorted(videos) == sorted(names)
    for name, video in videos.items():
        assert video.n_frames == len(read_truth(root, name)["present"])
        assert video.folder == crops / name
    assert [(v.name, v.n_frames) for v in find_crop_videos(crops)] == [(v.name, v.n_frames) for v in videos.values()]


def test_resumes_finished_videos_and_redoes_a_cut_off_one(own_crops):
    root, own, summary, _ = own_crops
    crops = own / "cropped_aligned"
    first, second = summary.videos[:2]
    stamps = {p: p.stat().st_mtime_ns for p in crops.rglob("*") if p.is_file()}
    kept = sorted(p.name for p in (crops / next(n for n in _names(root, second))).iterdir())
    # a run cut off in `first`: its CSV (written last) is missing, one crop folder half-written
    (crops / f"{first}.faces.csv").unlink()
    folder = crops / next(n for n in _names(root, first))
    for jpg in sorted(folder.iterdir())[::2]:
        jpg.unlink()
    # resuming with other settings than the crops there were made with (the CLI's default thresholds, another
    # landmark refiner) would mix two kinds of crops: refused, nothing written
    from mambava.faces.landmarks import LandmarkNet, LandmarkRefiner, RefinerConfig

    refiner = LandmarkRefiner(LandmarkNet(), RefinerConfig()).save(own.parent / "lm.safetensors")
    for extra, named in (([], "'thresholds': [0.5, 0.5, 0.5]"), (["--landmarks", str(refiner)], "'landmarks'")):
        result = CliRunner().invoke(app, ["faces", "--dataset", str(root), "--out", str(own), *extra])
        assert (
            result.exit_code != 0
            and "its crops were made with other settings (detector_kwargs: " in str(result.exception)
            and named in str(result.exception)
        ), result.exception
    assert {p: p.stat().st_mtime_ns for p in crops.rglob("*") if p.is_file() and p in stamps} == {
        p: t for p, t in stamps.items() if p.exists()
    }
    redo = extract_dataset_faces(root, own, detector_kwargs=dict(RELAXED, num_threads=1))  # threads do not count
    assert [v.video for v in redo.videos if not v.skipped] == [first]
    assert sum(v.skipped for v in redo.videos) == len(summary.videos) - 1
    after = {p: p.stat().st_mtime_ns for p in crops.rglob("*") if p.is_file()}
    redone = {p for p in after if p not in stamps or after[p] != stamps[p]}
    assert redone and all(
        p.parent == folder or p.name.startswith(first) or p.parent.name.startswith(first) for p in redone
    )
    assert sorted(p.name for p in (crops / next(n for n in _names(root, second))).iterdir()) == kept


def test_a_bad_landmarks_file_fails_before_anything_is_written(own_crops, tmp_path):
    root, _, _, _ = own_crops
    for bad in (tmp_path / "missing.safetensors", tmp_path):
        result = CliRunner().invoke(
            app, ["faces", "--dataset", str(root), "--out", str(tmp_path / "o"), "--landmarks", str(bad)]
        )
        assert result.exit_code != 0 and "landmark refiner" in str(result.exception)
        assert not (tmp_path / "o" / "cropped_aligned").exists()  # no marker that would bind a later run


def test_never_writes_over_the_datasets_own_crops(own_crops):
    root, _, _, _ = own_crops
    result = CliRunner().invoke(app, ["faces", "--dataset", str(root)])
    assert result.exit_code != 0
    assert "holds crops not made by `mambava faces --dataset`" in str(result.exception)
    result = CliRunner().invoke(app, ["faces", "--dataset", str(root), "--fps", "5", "--out", str(root / "x")])
    assert "no --fps" in str(result.exception)


def test_our_crops_alignment_error_against_the_true_landmarks(own_crops):
    root, own, _, _ = own_crops
    report = synth_alignment_error(root, own / "cropped_aligned")
    ours, generator = report["ours"], report["generator"]
    # measured on these videos: mean 2.0 px at 112 px (5.6% of the eye distance), most of it a common shift
    # of ~1.5 px; the generator's own crops, aligned with the true landmarks plus a simulated aligner error,
    # 0.6 px (1.8%)
    assert ours["faces"] > 300 and report["faces_not_drawn"] == 0
    assert ours["mean_px"] < 2.6 and ours["median_px"] < 2.6 and ours["mean_eye_pct"] < 7.5
    assert 0.4 < generator["mean_px"] < 0.9 and np.abs(generator["mean_offset_px"]).max() < 0.3
    assert ours["mean_eye_pct"] == pytest.approx(100 * ours["mean_px"] / EYE_DISTANCE_112)


def test_alignment_error_is_zero_for_the_true_landmarks_and_measures_a_shift():
    rng = np.random.default_rng(0)
    true = ARCFACE_TEMPLATE_112 * 2.0 + np.array([30.0, 40.0]) + rng.normal(0, 1, (3, 5, 2))
    assert np.abs(alignment_error(true, true)).max() < 1e-9
    # landmarks found 2 px to the right in a face at half the crop's scale: the crop is 1 px off everywhere
    assert alignment_error(true + [2.0, 0.0], true) == pytest.approx(np.ones((3, 5)), abs=0.1)


def _meta(root):
    from mambava.synth import read_meta

    return read_meta(root)


def _names(root, video):
    return next([p["name"] for p in v["persons"]] for v in _meta(root)["videos"] if v["name"] == video)


def test_landmark_refinement_brings_mtcnn_closer_to_the_true_landmarks(own_crops):
    """MTCNNDetector(refine=1) (off by default) runs O-Net again on a patch framed by the found landmarks: on the
    generated videos its landmarks move less from frame to frame about the true ones, their mean error stays
    about MTCNN's own; boxes and scores stay MTCNN's own."""
    from mambava.faces import get_detector
    from mambava.faces.dataset import alignment_offsets
    from mambava.media.video import open_video
    from mambava.synth import read_meta

    root = own_crops[0]
    offsets = {0: {}, 1: {}}  # refine -> {video: [(5, 2) offsets]}
    plain, refined = (get_detector("mtcnn", **RELAXED, refine=r, num_threads=1) for r in (0, 1))
    for video in read_meta(root)["videos"]:
        if len(video["persons"]) != 1:
            continue
        truth = read_truth(root, video["persons"][0]["name"])["landmarks"]
        with open_video(root / video["video"]) as reader:
            frames = [f.image for f in reader][::3]
        for k, (a, b) in enumerate(zip(plain.detect_batch(frames), refined.detect_batch(frames))):
            true = truth[3 * k]
            if not a or not np.isfinite(true).all():
                continue
            assert len(a) == len(b) and np.array_equal(a[0].box, b[0].box) and a[0].score == b[0].score
            for r, face in ((0, a[0]), (1, b[0])):
                found = alignment_offsets(face.landmarks[None].astype(np.float64), true[None])[0]
                offsets[r].setdefault(video["name"], []).append(found)
    per_video = {r: [np.stack(o) for o in by.values()] for r, by in offsets.items()}
    mean = {r: float(np.linalg.norm(np.concatenate(v), axis=2).mean()) for r, v in per_video.items()}
    # around each video's own mean offset: the frame-to-frame part, which training on the crops cannot absorb
    spread = {
        r: float(np.mean([np.linalg.norm(o - o.mean(0), axis=2).mean() for o in v])) for r, v in per_video.items()
    }
    assert sum(len(o) for o in per_video[1]) > 60
    # measured here (3 one-person videos, every 3rd frame): frame-to-frame spread 1.21 -> 1.05 px; the mean
    # error 2.02 -> 2.15 px (before the faces talked and had a demeanour: 2.61 -> 1.82), so what refinement
    # reliably buys is steadier landmarks, not a smaller per-person bias (why it is off by default)
    assert spread[1] < 0.9 * spread[0]
    assert mean[1] < mean[0] + 0.3
    with pytest.raises(Exception, match="refine"):
        get_detector("mtcnn", refine=-1)


def test_dataset_crops_with_detect_every_are_predicts_crops(own_crops, tmp_path):
    """`faces --dataset --detect-every 3` writes, for every frame, the crop that `iter_tracked_faces` with
    detect_every=3 (what `predict --detect-every 3` runs) aligns, and records the setting in its marker."""
    import json

    import cv2

    from mambava.faces import get_detector, iter_tracked_faces

    root = own_crops[0]
    video = next(v for v in _meta(root)["videos"] if len(v["persons"]) == 1)
    result = CliRunner().invoke(
        app,
        [
            "faces",
            "--dataset",
            str(root),
            "--out",
            str(tmp_path / "k3"),
            "--detect-every",
            "3",
            "--min-face",
            "20",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    crops = tmp_path / "k3" / "cropped_aligned"
    assert json.loads((crops / ".mambava-faces.json").read_text())["detect_every"] == 3
    from mambava.cli.options import landmark_source

    detector = get_detector("mtcnn", landmarks=landmark_source("auto"), min_face_size=20)  # the CLI's default points
    expected = {
        f.index: f.faces[0].crop for f in iter_tracked_faces(root / video["video"], detector, detect_every=3) if f.faces
    }
    name = video["persons"][0]["name"]
    files = sorted((crops / name).iterdir())
    assert [int(f.stem) - 1 for f in files] == sorted(expected)
    for f in files[::7]:  # JPEG round trip: within JPEG's error of the in-memory crop
        written = cv2.imread(str(f))[:, :, ::-1].astype(np.float32)
        assert np.abs(written - expected[int(f.stem) - 1]).mean() < 4.0


def test_an_annotated_person_without_a_track_gets_an_empty_folder(own_crops, tmp_path):
    """When our faces stage finds one face in a two-person video (one track, named after the video), the
    annotation names `<v>_left`/`<v>_right` are reported unmatched and get empty folders: training and
    extraction see every frame of them as a frame without a face, not a missing-folder error."""
    from mambava.data.crops import scan_crop_folder
    from mambava.faces.dataset import VideoFaces, _match_tracks

    root = own_crops[0]
    video = next(v for v in _meta(root)["videos"] if len(v["persons"]) == 2)["name"]
    results = {video: VideoFaces(video, frames=10, tracks={video: 10})}
    _match_tracks(results, AffWild2(root), tmp_path)
    names = sorted(p["name"] for p in next(v for v in _meta(root)["videos"] if v["name"] == video)["persons"])
    assert results[video].unmatched == names and results[video].extra == [video]
    assert all((tmp_path / n).is_dir() and not any((tmp_path / n).iterdir()) for n in names)
    assert all(len(scan_crop_folder(tmp_path / n)[0]) == 0 for n in names)  # no frames, no error
