"""One time base (mambava.data.timebase): the temporal model runs on its own frame grid whatever the video's rate or
--fps; predict, stream and checkpoints agree on it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from mambava.backbone import FeatureExtractor
from mambava.data.timebase import GridClock, model_fps, to_grid
from mambava.faces.detect import Face
from mambava.inference.predict import Predictor

# ------------------------------------------------------------------------------------------ the mapping


def test_a_30fps_video_maps_one_to_one():
    grid = to_grid(np.arange(7) / 30, 30)
    assert grid.held.tolist() == list(range(7))
    assert grid.tick.tolist() == list(range(7))


def test_a_60fps_video_takes_the_first_frame_of_each_slot():
    grid = to_grid(np.arange(7) / 60, 30)
    assert grid.held.tolist() == [0, 2, 4, 6]
    assert grid.tick.tolist() == [0, 0, 1, 1, 2, 2, 3]


def test_fps_10_holds_each_processed_frame_for_three_ticks():
    processed = np.array([0.0, 0.1, 0.2])
    source = np.arange(8) / 30  # 8 frames of a 30 fps source, every third one processed
    grid = to_grid(processed, 30, source)
    assert grid.held.tolist() == [0, 0, 0, 1, 1, 1, 2, 2]
    assert grid.tick.tolist() == list(range(8))


def test_slower_videos_gaps_offsets_and_millisecond_timestamps():
    # a 25 fps video on a 30 fps grid: tick 5 (1/6 s) has no frame of its own and holds frame 4 (0.16 s)
    assert to_grid(np.arange(6) / 25, 30).held.tolist() == [0, 1, 2, 3, 4, 4, 5]
    # a missing frame (a gap in the timestamps) is held over; the grid starts at the first frame's time
    grid = to_grid(np.array([5.0, 5.0 + 1 / 30, 5.0 + 3 / 30]), 30)
    assert grid.held.tolist() == [0, 1, 1, 2] and grid.t0 == 5.0
    # Matroska rounds to the millisecond: 0.033 s is still the tick at 1/30 s
    assert to_grid(np.array([0.0, 0.017, 0.033, 0.05, 0.067]), 30).held.tolist() == [0, 2, 4]


def test_the_stream_clock_gives_the_same_ticks():
    times = np.array([0.0, 0.017, 0.033, 0.1, 0.1 + 1 / 60, 0.2])
    clock = GridClock(30)
    assert [clock.tick(t) for t in times] == to_grid(times, 30).tick.tolist() == [0, 0, 1, 3, 3, 6]


# ------------------------------------------------------------------------------------------ checkpoints


def test_model_fps_is_in_the_config_and_checkpoint_and_old_files_load_with_30(tmp_path, tiny_mamba_va):
    from safetensors.torch import save_file

    from mambava.core.errors import MambavaError
    from mambava.temporal import build_temporal_model, load_temporal_model, save_temporal_model
    from mambava.temporal.mamba_va import MambaVA, MambaVAConfig

    model = tiny_mamba_va()
    assert model.config.fps == 30.0 and model_fps(model) == 30.0
    model.config.fps = 25.0
    model.save(tmp_path / "m25.safetensors")
    assert MambaVA.load(tmp_path / "m25.safetensors").config.fps == 25.0
    # a file written before the field existed: its config has no fps
    config = model.config.to_dict()
    del config["fps"]
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(
        tensors, str(tmp_path / "old.safetensors"), metadata={"format": "mambava.temporal/1", "config": json.dumps(config)}
    )
    old = MambaVA.load(tmp_path / "old.safetensors")
    assert old.config.fps == 30.0
    assert model_fps(Predictor(tmp_path / "old.safetensors").model) == 30.0
    # baselines carry it too, and a weights-only difference in fps still loads
    mlp = build_temporal_model("mlp", {"input_dim": 8, "tcn_channels": [8], "d_model": 8, "head_hidden": 4, "fps": 60})
    save_temporal_model(mlp, tmp_path / "mlp.safetensors")
    assert model_fps(load_temporal_model(tmp_path / "mlp.safetensors").model) == 60.0
    MambaVA(dataclasses_replace(old.config, fps=60.0)).load_weights(tmp_path / "old.safetensors")
    with pytest.raises(MambavaError, match="fps"):
        MambaVAConfig(fps=0)


def dataclasses_replace(config, **changes):
    import dataclasses

    return dataclasses.replace(config, **changes)


# ------------------------------------------------------------------------------------------ end to end

PERIOD = 4.0  # s, of the clip's colour sinusoid
K = 30  # taps of the test model: a receptive field of 1 s at 30 fps


class _WholeFrame:
    """A detector that finds one face filling the frame (the test clip is a colour field)."""

    name = "whole-frame"
    has_landmarks = False

    def detect_batch(self, images):
        return [[Face(np.array([0, 0, im.shape[1], im.shape[0]], np.float32), None, 1.0)] for im in images]

    def detect(self, image):
        return self.detect_batch([image])[0]


class _MeanColour(FeatureExtractor):
    """The crop's mean colour in [-1, 1]: a feature that is the clip's signal, with no model in the way."""

    def __init__(self):
        self.batch_size = 64
        self.device = torch.device("cpu")

    @property
    def dim(self) -> int:
        return 3

    def features(self, crops) -> np.ndarray:
        return np.stack([np.asarray(c, np.float32).mean(axis=(0, 1)) / 127.5 - 1 for c in crops])


class _CausalFilter(torch.nn.Module):
    """A temporal model made for 30 fps features with a receptive field of K frames: valence is the mean of
    the red channel over the last K frames, arousal its change over them (both depend on how many frames a
    second the model is fed). The first frame is repeated before the start, so there is no warm-up."""

    def __init__(self):
        super().__init__()
        self.config = {"input_dim": 3, "fps": 30.0}

    def forward(self, x):
        s = x[..., 0]
        padded = torch.cat([s[:, :1].expand(-1, K - 1), s], dim=1)
        windows = padded.unfold(1, K, 1)  # (B, T, K)
        return torch.stack([windows.mean(-1), 0.5 * (windows[..., -1] - windows[..., 0])], dim=-1)


def _clip(path, fps: int, seconds: float = 4.0):
    """The same colour-field clip (red = a sinusoid of time) encoded losslessly at `fps` (FFV1 in Matroska,
    whose timestamps are rounded to the millisecond)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width = stream.height = 48
        stream.pix_fmt = "bgr0"
        for i in range(int(seconds * fps)):
            red = int(round(127.5 + 100 * math.sin(2 * math.pi * (i / fps) / PERIOD)))
            image = np.zeros((48, 48, 3), np.uint8)
            image[..., 0], image[..., 1], image[..., 2] = red, 60, 200
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _at_shared_times(a, b) -> np.ndarray:
    """|a - b| of (valence, arousal) on the rows of two tables whose timestamps agree (to the millisecond)."""
    a = a.assign(ms=(a["time"] * 1000).round().astype(int)).set_index("ms")
    b = b.assign(ms=(b["time"] * 1000).round().astype(int)).set_index("ms")
    shared = a.index.intersection(b.index)
    assert len(shared) >= 12
    return np.abs(a.loc[shared, ["valence", "arousal"]].to_numpy() - b.loc[shared, ["valence", "arousal"]].to_numpy())


# Bounds. The clip is lossless and the 60 fps encoding's even frames are the 30 fps frames, so the model sees
# the same features on the same grid: equal to float rounding. With --fps 10 every processed frame is held for
# three ticks (up to 2/30 s late); the red channel moves at most 2*pi*100/127.5/PERIOD = 1.23 /s, so a held
# value is off by at most 0.082, valence (a mean) by less and arousal (half a difference) by at most 0.041 +
# the mean's error: 0.06 bounds both with room for the rounding of colours to integers.
SAME_GRID = 1e-5
HELD = 0.06


@pytest.mark.parametrize("windowing", ["full", "windows"])
def test_30_and_60_fps_and_fps_10_agree_at_shared_timestamps(tmp_path, windowing):
    clip30, clip60 = _clip(tmp_path / "c30.mkv", 30), _clip(tmp_path / "c60.mkv", 60)

    def run(path, fps=None):
        predictor = Predictor(
            _CausalFilter(), _MeanColour(), detector=_WholeFrame(), fps=fps, windowing=windowing, window=60, stride=40
        )
        return predictor.predict_video(path)

    a30, a60, b30, b60 = run(clip30), run(clip60), run(clip30, 10), run(clip60, 10)
    # one row per source frame, with its true timestamp, skipped frames included
    assert len(a30) == len(b30) == 120 and len(a60) == len(b60) == 240
    assert b30["processed"].tolist() == [1, 0, 0] * 40 and b60["processed"].sum() == 40
    assert a30["valence"].abs().max() > 0.5 and a30["arousal"].abs().max() > 0.3  # the signal is there
    assert _at_shared_times(a30, a60).max() <= SAME_GRID
    assert _at_shared_times(b30, b60).max() <= SAME_GRID
    assert _at_shared_times(a30, b30).max() <= HELD
    assert _at_shared_times(a60, b60).max() <= HELD
    # a 60 fps frame between two ticks takes the tick before it
    assert np.array_equal(a60["valence"].to_numpy()[1::2], a60["valence"].to_numpy()[0::2])


def test_stream_steps_on_the_model_grid_and_equals_predict(tmp_path, tiny_mamba_va):
    """A 60 fps feature sequence streamed through a 30 fps model: the rows equal predict's (full pass on the
    grid), and a 25 fps one likewise (ticks without a frame hold the last feature)."""
    from mambava.inference.stream import LiveStream

    model = tiny_mamba_va()
    rng = np.random.default_rng(0)
    for fps in (60.0, 25.0):
        features = np.cumsum(rng.normal(size=(90, model.config.input_dim)), axis=0).astype(np.float32) * 0.1
        present = np.ones(len(features), bool)
        rows = list(LiveStream.from_features(model, features, present, "clip", fps=fps))
        stepped = np.array([[r.valence, r.arousal] for r in rows])
        offline = Predictor(model, windowing="full").predict_timed(features, present, np.arange(len(features)) / fps)
        assert np.abs(stepped - offline).max() <= 1e-5
        assert len(rows) == len(features)


def test_stream_with_fps_gives_every_source_frame_a_row_and_equals_predict(tmp_path, tiny_mamba_va):
    """`stream --fps 10` on the 30 and the 60 fps encodings of one clip: a row for every source frame (the
    skipped ones `dropped`, holding the last feature), the model stepped on its 30 fps grid, equal to
    `predict --windowing full --fps 10` on each (float32 rounding) and to each other at shared timestamps."""
    import pandas as pd

    from mambava.inference.stream import LiveStream

    model = tiny_mamba_va(3)
    tables = {}
    for fps in (30, 60):
        clip = _clip(tmp_path / f"c{fps}.mkv", fps, seconds=2.0)
        rows = list(LiveStream(model, str(clip), _WholeFrame(), _MeanColour(), fps=10))
        streamed = pd.DataFrame(
            [(r.frame, r.time, r.valence, r.arousal, r.dropped) for r in rows],
            columns=["frame", "time", "valence", "arousal", "dropped"],
        )
        assert streamed["frame"].tolist() == list(range(2 * fps))
        assert streamed["dropped"].tolist() == ([False] + [True] * (fps // 10 - 1)) * 20
        table = Predictor(model, _MeanColour(), detector=_WholeFrame(), fps=10, windowing="full").predict_video(clip)
        assert (
            np.abs(streamed[["valence", "arousal"]].to_numpy() - table[["valence", "arousal"]].to_numpy()).max() <= 1e-5
        )
        tables[fps] = streamed
    assert _at_shared_times(tables[30], tables[60]).max() <= SAME_GRID


@pytest.mark.parametrize(
    "args, message",
    [
        (["--fps", "0"], "error: --fps must be a positive number of frames per second, got 0.0"),
        (["--features-fps", "-30"], "error: --features-fps must be a positive number of frames per second, got -30.0"),
        (["--stitching", "median"], "error: stitching must be one of mean, most_history, got 'median'"),
    ],
)
def test_cli_rejects_bad_rates_and_stitching_in_one_line(args, message, tmp_path, tiny_mamba_va, capsys):
    import sys

    from mambava.cli import main
    from mambava.temporal import save_temporal_model

    save_temporal_model(tiny_mamba_va(4), tmp_path / "m.safetensors")
    np.save(tmp_path / "f.npy", np.zeros((10, 4), np.float32))
    argv, sys.argv = (
        sys.argv,
        [
            "mambava",
            "predict",
            str(tmp_path / "f.npy"),
            "-c",
            str(tmp_path / "m.safetensors"),
            "-o",
            str(tmp_path / "out"),
            *args,
        ],
    )
    try:
        with pytest.raises(SystemExit) as exit_:
            main()
    finally:
        sys.argv = argv
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == message


def test_npy_features_at_another_rate_are_put_on_the_grid(tmp_path, tiny_mamba_va):
    """A .npy at --features-fps 60 through a 30 fps model: its even rows are the 30 fps sequence; every row
    gets the value of the even row at or before it."""
    model = tiny_mamba_va(4)
    rng = np.random.default_rng(1)
    features = rng.normal(size=(40, 4)).astype(np.float32)
    np.save(tmp_path / "f60.npy", features)
    table = Predictor(model, features_fps=60).predict(tmp_path / "f60.npy")
    assert table["frame"].tolist() == list(range(40)) and np.allclose(table["time"], np.arange(40) / 60)
    on_grid = Predictor(model).predict_features(features[0::2])
    np.testing.assert_allclose(table[["valence", "arousal"]].to_numpy(), np.repeat(on_grid, 2, axis=0), atol=1e-6)


def test_training_and_evaluation_put_a_store_entry_of_another_rate_on_the_model_grid(tmp_path, tiny_mamba_va):
    """A feature store keeps each video at its own rate (Aff-Wild2 has videos at other rates than 30). The same
    30 fps signal stored at 60 fps (every frame twice) gives a 30 fps model the same training windows, the same
    validation video and the same score as the 30 fps entry; read as consecutive frames it would not."""
    from mambava.data.store import FeatureStore
    from mambava.data.windows import WindowDataset
    from mambava.temporal import load_temporal_model, save_temporal_model
    from mambava.training.data import VideoDataset
    from mambava.training.evaluate import evaluate_videos

    rng = np.random.default_rng(0)
    x30 = (np.cumsum(rng.normal(size=(90, 24)), axis=0) * 0.1).astype(np.float32)
    y30 = np.tanh(x30[:, :2]).astype(np.float32)
    store = FeatureStore(tmp_path / "features")
    store.write("v30", x30, np.ones(90, bool), fps=30, backbone="test", dtype="float32")
    store.write("v60", np.repeat(x30, 2, axis=0), np.ones(180, bool), fps=60, backbone="test", dtype="float32")
    labels = {"v30": y30, "v60": np.repeat(y30, 2, axis=0)}

    windows = WindowDataset(store, ["v30", "v60"], labels, window=40, stride=20, fps=30)
    assert windows.lengths == {"v30": 90, "v60": 90}
    items = [windows[k] for k in range(len(windows))]
    by_start = {(item["name"], item["start"]): item for item in items}
    assert sorted(s for n, s in by_start if n == "v60") == sorted(s for n, s in by_start if n == "v30")
    for (name, start), item in by_start.items():
        if name == "v60":
            for key in ("x", "y", "mask", "present"):
                assert torch.equal(item[key], by_start[("v30", start)][key]), key
    as_frames = WindowDataset(store, ["v60"], {"v60": labels["v60"]}, window=40, stride=20)
    assert as_frames.lengths == {"v60": 180}  # without the grid a window spans half the time

    video = VideoDataset(store, ["v60"], labels, fps=30)[0]
    assert torch.equal(video["x"], torch.from_numpy(x30)) and torch.equal(video["y"], torch.from_numpy(y30))

    save_temporal_model(tiny_mamba_va(24), tmp_path / "model.safetensors")
    loaded = load_temporal_model(tmp_path / "model.safetensors")
    at_30 = evaluate_videos(loaded, store, ["v30"], labels, window=40, stride=20, device="cpu")
    at_60 = evaluate_videos(loaded, store, ["v60"], labels, window=40, stride=20, device="cpu")
    # every stored 60 fps frame takes its tick's prediction: the duplicated pairs score as the originals
    assert at_60.p_va == pytest.approx(at_30.p_va, abs=1e-6)
    assert at_60.per_video[0]["frames"] == 180
