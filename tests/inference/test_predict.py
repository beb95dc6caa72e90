"""mambava predict / submit write, and the Predictor API, on the real media with models built here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from support import DIM, run_cli

from mambava.cli.options import faces_extra_installed, landmark_source
from mambava.core.errors import MambavaError
from mambava.faces.columns import GEOMETRY_COLUMNS
from mambava.inference.predict import COLUMNS, Predictor

AUTO = landmark_source("auto")  # the points the CLI's default `--landmarks auto` gives (dlib68 with the extra)


def _png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size


@pytest.fixture(scope="module")
def single_face_run(models, media_dir, detector, tmp_path_factory):
    """`mambava predict single_face.mp4 --overlay` once for the module (face detection is the slow part)."""
    out = tmp_path_factory.mktemp("predict")
    capsys = _NullCapture()
    code, stdout, stderr = run_cli(
        [
            "predict",
            media_dir / "single_face.mp4",
            "-c",
            models["model"],
            "-b",
            models["vit"],
            "-o",
            out,
            "--overlay",
            "--precision",
            "fp32",
            "--detector",
            detector,
        ],
        capsys,
    )
    return code, stdout, stderr, out


class _NullCapture:
    """run_cli outside a test function (module fixture): output goes to the terminal, nothing is captured."""

    def readouterr(self):
        return type("C", (), {"out": "", "err": ""})()


def test_predict_single_face_csv_plots_overlay(single_face_run, media_dir):
    from mambava.media.video import open_video

    code, _, _, out = single_face_run
    assert code == 0
    table = pd.read_csv(out / "single_face.csv")
    # --landmarks auto: dlib's 68 points and the head pose where the faces extra is installed
    geometry = GEOMETRY_COLUMNS if faces_extra_installed() else []
    assert list(table.columns) == [*COLUMNS, *geometry, "model"] and (table["model"] == "model.safetensors").all()
    assert len(table) == 72 and table["frame"].tolist() == list(range(72))  # one row per frame, one track
    assert table["track"].unique().tolist() == ["single_face"]
    assert table["face"].sum() >= 70
    assert table["time"].is_monotonic_increasing and table["time"].iloc[-1] == pytest.approx(71 / 30, abs=0.02)
    assert table[["valence", "arousal"]].abs().max().max() <= 1.0
    assert table[["valence", "arousal"]].std().min() > 1e-4  # per-frame values, not a constant
    present = table[table["face"] == 1]
    assert (present["x2"] > present["x1"]).all() and (present["y2"] > present["y1"]).all()
    # OpenFace's names: timestamp = time, success = face, confidence = MTCNN's score (>= its 0.9 cut) or 0
    assert (table["timestamp"] == table["time"]).all() and (table["success"] == table["face"]).all()
    assert present["confidence"].between(0.9, 1.0).all() and (table.loc[table["face"] == 0, "confidence"] == 0).all()
    width, height = _png_size(out / "single_face.va.png")
    assert width >= 600 and height >= 200
    _png_size(out / "single_face.circumplex.png")
    with open_video(out / "single_face.overlay.mp4") as reader:
        frames = [f.image for f in reader]
    assert len(frames) == 72 and frames[0].shape == (360, 640, 3)
    with open_video(media_dir / "single_face.mp4") as reader:
        original = next(iter(reader)).image
    assert np.abs(frames[0].astype(int) - original.astype(int)).max() > 100  # something was drawn


def test_predict_marks_no_face_frames(models, media_dir, detector):
    """face_noface.mov: the man for about half, then a title card. Frames after his last face are flagged
    face=0, carry his last feature (so no box) and still get values."""
    predictor = Predictor(models["model"], models["vit"], detector=detector)
    table = predictor.predict_video(media_dir / "face_noface.mov")
    assert len(table) == 169 and table["frame"].tolist() == list(range(169))
    last_face = int(table.loc[table["face"] == 1, "frame"].max())
    assert 60 <= table["face"].sum() <= 90 and last_face < 100
    tail = table[table["frame"] > last_face]
    assert (tail["face"] == 0).all() and tail["x1"].isna().all()
    assert tail[["valence", "arousal"]].notna().all().all()


def test_stream_equals_predict_on_the_same_video(models, media_dir, detector, single_face_run):
    """stream on single_face.mp4 (a face in every frame from frame 0) equals the offline predict. The video is
    shorter than one 300-frame window, so the paper's windows are here one full causal pass."""
    rows = list(
        Predictor(models["model"], models["vit"], precision="fp32", detector=detector, landmarks=AUTO).stream(
            media_dir / "single_face.mp4"
        )
    )
    offline = pd.read_csv(single_face_run[3] / "single_face.csv")
    assert [r.frame for r in rows] == offline["frame"].tolist()
    assert [int(r.face) for r in rows] == offline["face"].tolist()
    assert {r.track for r in rows} == set(offline["track"]) == {"single_face"}  # tracks named the same way
    assert np.allclose([r.confidence for r in rows], offline["confidence"], atol=1e-6)
    stepped = np.array([[r.valence, r.arousal] for r in rows])
    assert np.abs(stepped - offline[["valence", "arousal"]].to_numpy()).max() <= 1e-4


def test_detect_every_predict_equals_stream(models, media_dir, detector, single_face_run, tmp_path, capsys):
    """--detect-every reaches the faces stage from predict (CLI and Predictor) and stream alike: a face in
    every frame, stream equal to predict, and the boxes within IoU 0.8 of every-frame detection's."""
    from mambava.faces import iou

    predictor = Predictor(
        models["model"], models["vit"], precision="fp32", detector=detector, detect_every=5, landmarks=AUTO
    )
    table = predictor.predict_video(media_dir / "single_face.mp4")
    rows = list(predictor.stream(media_dir / "single_face.mp4"))
    assert table["face"].tolist() == [int(r.face) for r in rows] == [1] * 72
    stepped = np.array([[r.valence, r.arousal] for r in rows])
    assert np.abs(stepped - table[["valence", "arousal"]].to_numpy()).max() <= 1e-4
    every = pd.read_csv(single_face_run[3] / "single_face.csv")
    boxes = ["x1", "y1", "x2", "y2"]
    assert min(iou(a, b) for a, b in zip(table[boxes].to_numpy(), every[boxes].to_numpy())) >= 0.8
    with pytest.raises(MambavaError, match="--detect-every must be a whole number >= 1, got 0"):
        Predictor(models["model"], detect_every=0)
    code, _, stderr = run_cli(
        [
            "predict",
            media_dir / "single_face.mp4",
            "-c",
            models["model"],
            "-b",
            models["vit"],
            "-o",
            tmp_path,
            "--detect-every",
            "0",
        ],
        capsys,
    )
    assert code == 2 and "--detect-every must be a whole number >= 1, got 0" in stderr


def test_stream_audio_equals_predict_audio(models, media_dir, detector, tmp_path, capsys):
    """face_noface.mov (AAC, 26.4 fps: a face in frames 0-71, sound from frame 73) with a tiny mid-fusion model the
    test saves: `stream` (audio on by default: the model's 89 columns are egemaps,logmel) equals `predict
    --windowing full` within 1e-4 on every frame the stream's track lives (the cut to the card ends the track at
    once, `CutDetector`: no hold; predict holds it to the end), and the voice column is identical on all 169 frames.
    With --no-audio both use the mask (voice 0 everywhere): still equal to each other, bit-identical to the run with
    sound before the sound starts and different after. A webcam with sound is a one-line refusal."""
    import warnings

    from mambava.temporal import build_temporal_model, save_temporal_model

    torch.manual_seed(0)
    save_temporal_model(
        build_temporal_model(
            {
                "kind": "fusion",
                "fusion": "mid",
                "input_dim": DIM,
                "audio_dim": 89,
                "tcn_channels": [16, 16],
                "audio_tcn_channels": [8],
                "kernel_size": 3,
                "d_model": 16,
                "n_layers": 2,
                "d_state": 4,
                "dt_rank": 2,
                "head_hidden": 8,
                "dropout": 0.0,
            }
        ),
        tmp_path / "fusion.safetensors",
    )
    common = ["-c", tmp_path / "fusion.safetensors", "-b", models["vit"], "--precision", "fp32", "--detector", detector]
    clip = media_dir / "face_noface.mov"
    runs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the sound's late start, one line
        for flags in ([], ["--no-audio"]):
            out = tmp_path / ("muted" if flags else "sound")
            code, _, stderr = run_cli(
                ["predict", clip, *common, "-o", out, "--windowing", "full", "--no-plots", *flags], capsys
            )
            assert code == 0, stderr
            code, _, stderr = run_cli(["stream", clip, *common, "-o", out / "stream.csv", "-q", *flags], capsys)
            assert code == 0, stderr
            runs[bool(flags)] = pd.read_csv(out / "face_noface.csv"), pd.read_csv(out / "stream.csv")
    for muted, (offline, live) in runs.items():
        assert len(offline) == len(live) == 169 and live["frame"].tolist() == offline["frame"].tolist()
        assert live["voice"].tolist() == offline["voice"].tolist() == ([0] * 169 if muted else [0] * 73 + [1] * 96)
        lives = (live["track"] == "face_noface").to_numpy()
        assert lives[:72].all() and not lives[72:].any()  # the face's frames, then the cut ends its track
        difference = np.abs(live[["valence", "arousal"]].to_numpy() - offline[["valence", "arousal"]].to_numpy())
        assert difference[lives].max() <= 1e-4
    sound, muted = runs[False][0][["valence", "arousal"]].to_numpy(), runs[True][0][["valence", "arousal"]].to_numpy()
    assert np.array_equal(sound[:73], muted[:73]) and np.abs(sound[73:] - muted[73:]).max() > 1e-3
    code, _, stderr = run_cli(["stream", "0", *common], capsys)
    assert code == 2 and "0: audio is not supported live" in stderr and "Traceback" not in stderr
    code, _, stderr = run_cli(["stream", clip, *common, "--audio", "logmel", "--no-audio"], capsys)
    assert code == 2 and "--audio and --no-audio: choose one" in stderr


def test_no_face_video_is_a_clear_error(models, media_dir, tmp_path, capsys):
    code, out, err = run_cli(
        [
            "predict",
            media_dir / "no_face.mp4",
            "-c",
            models["model"],
            "-b",
            models["vit"],
            "-o",
            tmp_path,
            "--fps",
            "8",
        ],
        capsys,
    )
    assert code == 2
    assert "no face found in any of its" in err and "no_face.mp4" in err
    assert "Traceback" not in err + out
    assert not list(tmp_path.glob("*.csv"))


@pytest.mark.parametrize("case", ["missing", "other_config", "not_a_model", "junk", "no_backbone", "bad_out"])
def test_bad_inputs_give_one_line_errors(case, models, media_dir, tmp_path, capsys):
    video = media_dir / "single_face.mp4"
    (tmp_path / "junk.pth").write_bytes(np.random.default_rng(0).bytes(4000))
    (tmp_path / "a_file").write_text("")
    args = {
        "missing": ["-c", tmp_path / "nope.safetensors", "-b", models["vit"]],
        "other_config": ["-c", models["model48"], "-b", models["vit"]],
        "not_a_model": ["-c", models["vit"], "-b", models["vit"]],
        "junk": ["-c", tmp_path / "junk.pth", "-b", models["vit"]],
        "no_backbone": ["-c", models["model"]],
        "bad_out": ["-c", models["model"], "-b", models["vit"], "-o", tmp_path / "a_file" / "out"],
    }[case]
    code, out, err = run_cli(["predict", video, "-o", tmp_path, *args], capsys)
    expected = {
        "missing": "nope.safetensors: checkpoint not found",
        "other_config": "gives 24-d features but the temporal model",
        "not_a_model": "vit.safetensors",
        "junk": "junk.pth: ",
        "no_backbone": "--backbone is required for videos; pass a features .npy instead",
        "bad_out": "cannot create the output folder",
    }[case]
    assert code == 2 and expected in err, err
    assert "Traceback" not in err + out and len(err.strip().splitlines()) == 1


def test_predict_feature_files_and_folders(models, tmp_path, capsys):
    """A folder of .npy features (T x D): no backbone needed; all-NaN rows are no-face frames; the CSV's
    values are the Predictor's; a file of the wrong feature size is reported and the others still written."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "features"
    folder.mkdir()
    a = rng.normal(size=(350, DIM)).astype(np.float32)
    a[10:20] = np.nan
    np.save(folder / "a.npy", a)
    np.save(folder / "b.npy", rng.normal(size=(40, DIM)).astype(np.float32))
    np.save(folder / "wrong.npy", rng.normal(size=(40, DIM + 1)).astype(np.float32))
    code, out, err = run_cli(["predict", folder, "-c", models["model"], "-o", tmp_path / "out", "--no-plots"], capsys)
    assert code == 2 and "wrong.npy: 25-d features, but the temporal model" in err and "1 of 3 inputs failed" in err
    table = pd.read_csv(tmp_path / "out" / "a.csv")
    assert len(table) == 350 and table["face"].tolist() == [0 if 10 <= i < 20 else 1 for i in range(350)]
    assert table["time"].iloc[30] == pytest.approx(1.0)
    expected = Predictor(models["model"]).predict_features(np.nan_to_num(a), ~np.isnan(a).any(1))
    assert np.abs(table[["valence", "arousal"]].to_numpy() - expected).max() < 1e-5
    assert len(pd.read_csv(tmp_path / "out" / "b.csv")) == 40


def test_submit_write_runs_the_model_over_test_features(models, tmp_path, capsys):
    from mambava.data.store import FeatureStore
    from mambava.data.submission import validate_submission

    rng = np.random.default_rng(1)
    store = FeatureStore(tmp_path / "store")
    lengths = {"vidE": 320, "vidF_left": 45}
    for name, n in lengths.items():
        mask = rng.random(n) > 0.1
        store.write(name, rng.normal(size=(n, DIM)), mask, fps=30, backbone="tiny", dtype="float32")
    (tmp_path / "test.txt").write_text("vidE\nvidF_left\n")
    # the frame counts from ABAW's sample submission (placeholder values), as it distributes it
    sample = tmp_path / "sample.txt"
    sample.write_text(
        "image_location,valence,arousal\n"
        + "".join(f"{video}/{frame:05d}.jpg,0,0\n" for video, n in lengths.items() for frame in range(1, n + 1))
    )
    out = tmp_path / "submission.txt"
    write = ["submit", "write", "-c", models["model"], "--features", tmp_path / "store", "-o", out]
    code, stdout, err = run_cli([*write, "--frame-counts", sample, "--test-list", tmp_path / "test.txt"], capsys)
    assert code == 0, err
    validate_submission(out, list(lengths), lengths)
    lines = out.read_text().splitlines()
    assert lines[0] == "image_location,valence,arousal" and lines[1].startswith("vidE/00001.jpg,")
    record = store.read("vidE")
    expected = Predictor(models["model"], windowing="windows", stitching="mean").predict_features(
        *record.window(0, 320)
    )
    got = np.array([[float(x) for x in line.split(",")[1:]] for line in lines[1:321]])
    assert np.abs(got - expected).max() < 1e-5

    # a wrong frame count is refused, naming the video and both counts, and nothing is written
    out.unlink()
    counts = tmp_path / "counts.csv"
    counts.write_text("video,frames\nvidE,320\nvidF_left,46\n")
    code, stdout, err = run_cli([*write, "--frame-counts", counts], capsys)
    assert code == 2 and not out.exists()
    assert err.strip() == (
        f"error: {tmp_path / 'store'}: test video 'vidF_left' has 45 stored frames but 46 in "
        "the frame counts (allow the mismatch to pad or cut)"
    )
    # unless allowed: the last prediction is carried over, with a warning
    with pytest.warns(UserWarning, match="vidF_left: 45 stored frames but the video has 46"):
        code, stdout, err = run_cli([*write, "--frame-counts", counts, "--allow-length-mismatch"], capsys)
    assert code == 0, err
    validate_submission(out, list(lengths), lengths | {"vidF_left": 46})
    assert out.read_text().splitlines()[-1].split(",")[1:] == out.read_text().splitlines()[-2].split(",")[1:]
    # counts that do not cover the test list, or no source of counts at all
    counts.write_text("vidE,320\n")
    code, stdout, err = run_cli([*write, "--frame-counts", counts, "--test-list", tmp_path / "test.txt"], capsys)
    assert code == 2 and "does not cover the test-set list" in err and "no frame count for 'vidF_left'" in err
    code, stdout, err = run_cli([*write, "--test-list", tmp_path / "test.txt"], capsys)
    assert code == 2 and "pass --frame-counts FILE" in err


def test_va_plot_with_truth_and_two_tracks(tmp_path):
    """The VA plot takes a reference per track (-5 = no label, left out) and draws one panel per track."""
    from mambava.analysis.plots import plot_circumplex, plot_va_over_time

    t = np.arange(120) / 30
    table = pd.concat(
        [
            pd.DataFrame(
                {
                    "track": name,
                    "time": t,
                    "valence": np.sin(t + k),
                    "arousal": np.cos(t),
                    "face": (np.arange(120) % 50 > 5).astype(int),
                }
            )
            for k, name in enumerate("LR")
        ]
    )
    truth = np.stack([np.sin(t), np.cos(t)], 1)
    truth[:10] = -5
    one = _png_size(plot_va_over_time(table[table.track == "L"], tmp_path / "one.png", truth=truth))
    two = _png_size(plot_va_over_time(table, tmp_path / "two.png", truth={"L": truth, "R": truth}))
    assert two[1] > one[1]  # a panel per track
    assert _png_size(plot_circumplex(table, tmp_path / "c.png"))[0] > 800  # side by side


def test_predictor_checks(models):
    with pytest.raises(MambavaError, match="windowing must be one of"):
        Predictor(models["model"], windowing="sliding")
    with pytest.raises(MambavaError, match="features must be"):
        Predictor(models["model"]).predict_features(np.zeros(5))
    with pytest.raises(MambavaError, match="--backbone is required"):
        Predictor(models["model"]).predict_video("clip.mp4")
