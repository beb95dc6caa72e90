"""Ratings import and lag (mambava.analysis.ratings), local model names (mambava.inference.catalog), and the CLI around
them:
`mambava ratings`, `mambava models`, `mambava predict --events --baseline` on feature files."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support import run_cli

from mambava.analysis.ratings import estimate_lag, read_ratings, shift_labels
from mambava.core.errors import MambavaError

DIM = 24


def _smooth(n, seed, fps=30.0):
    rng = np.random.default_rng(seed)
    kernel = np.hanning(int(fps))
    x = np.convolve(rng.normal(size=n + len(kernel)), kernel / kernel.sum(), mode="same")[:n]
    return 0.8 * x / np.abs(x).max()


def test_lag_recovered_within_one_frame():
    fps, n = 30.0, 1500
    signal = _smooth(n + 100, 1)
    prediction = signal[:n]
    for true_lag in (0, 17, 45, -20):
        rng = np.random.default_rng(true_lag + 100)
        rating = np.roll(signal, true_lag)[:n] + rng.normal(0, 0.05, n)  # rating[t] = signal[t - lag]
        rating[: max(true_lag, 0)] = np.nan  # a rater gives nothing before their first response
        lag = estimate_lag(prediction, rating, fps, max_lag_s=3.0)
        assert abs(lag.frames - true_lag) <= 1, (true_lag, lag.frames)
        assert lag.seconds == pytest.approx(lag.frames / fps)
        assert lag.lags[0] == -90 and lag.lags[-1] == 90  # +-3 s at 30 fps
        assert lag.ccc >= lag.ccc_zero
    # shift_labels undoes a known lag
    shifted = shift_labels(np.roll(signal, 17)[:n], 17)
    np.testing.assert_allclose(shifted[: n - 17], prediction[: n - 17])
    assert np.isnan(shifted[n - 17 :]).all()


def test_ratings_resampled_to_frames(tmp_path):
    # 7 Hz joystick ratings on a -1000..1000 scale, a linear ramp in time; frames at 30 fps.
    t = np.arange(0, 4.01, 1 / 7)
    path = tmp_path / "rater1.csv"
    pd.DataFrame({"Time": t, "valence": 250 * t - 500}).to_csv(path, index=False)
    frames = np.arange(150)
    times = frames / 30.0
    rated = read_ratings(path, frames, times, value_range=(-1000, 1000))
    inside = times <= t[-1]
    np.testing.assert_allclose(rated[inside, 0], (250 * times[inside] - 500) / 1000, atol=1e-12)
    assert np.isnan(rated[~inside, 0]).all() and np.isnan(rated[:, 1]).all()
    with pytest.raises(MambavaError, match=r"rater1.csv: line 2: valence -500.0 is outside \[-1, 1\]"):
        read_ratings(path, frames, times)
    # Aff-Wild2 per-frame: line k is frame k, -5 is unknown
    aff = tmp_path / "video.txt"
    aff.write_text("valence,arousal\n0.1,0.2\n-5,-5\n0.3,-0.4\n")
    rated = read_ratings(aff, np.array([0, 1, 2, 3]), np.arange(4) / 30)
    np.testing.assert_allclose(rated[[0, 2]], [[0.1, 0.2], [0.3, -0.4]], atol=1e-6)
    assert np.isnan(rated[[1, 3]]).all()
    bad = tmp_path / "bad.csv"
    bad.write_text("time,arousal\n0,0.1\n0.5,0.2\n0.4,0.3\n")
    with pytest.raises(MambavaError, match=r"bad.csv: line 4: time 0.4 does not increase"):
        read_ratings(bad, frames, times)
    with pytest.raises(MambavaError, match="no time column"):
        (tmp_path / "x.csv").write_text("valence\n0.1\n")
        read_ratings(tmp_path / "x.csv", frames, times)


def test_ratings_command(tmp_path, capsys):
    fps, n = 30.0, 600
    signal = _smooth(n + 60, 2)
    pd.DataFrame(
        {
            "video": "clip",
            "track": "clip",
            "frame": np.arange(n),
            "time": np.arange(n) / fps,
            "valence": signal[:n],
            "arousal": -signal[:n],
            "face": 1,
        }
    ).to_csv(tmp_path / "clip.csv", index=False)
    # rater at 10 Hz, 0.5 s behind (15 frames)
    t = np.arange(0, n / fps, 0.1)
    late = np.interp(t - 0.5, np.arange(n + 60) / fps, signal)
    pd.DataFrame({"time": t, "valence": late}).to_csv(tmp_path / "r1.csv", index=False)
    code, out, err = run_cli(["ratings", tmp_path / "clip.csv", tmp_path / "r1.csv", "-o", tmp_path / "out"], capsys)
    assert code == 0, err
    lags = pd.read_csv(tmp_path / "out" / "lags.csv")
    assert list(lags["dimension"]) == ["valence"]
    assert abs(int(lags["lag_frames"].iloc[0]) - 15) <= 1
    frames = pd.read_csv(tmp_path / "out" / "r1.frames.csv")
    assert list(frames.columns) == ["frame", "time", "valence", "arousal"] and len(frames) == n
    assert (tmp_path / "out" / "lags.png").read_bytes()[:4] == b"\x89PNG"
    code, out, err = run_cli(["ratings", tmp_path / "clip.csv", tmp_path / "nope.csv"], capsys)
    assert code == 2 and err.strip() == f"error: {tmp_path / 'nope.csv'}: no such ratings file"


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMBAVA_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_models_add_list_remove_and_predict_by_name(home, tmp_path, capsys, tiny_mamba_va):
    from mambava.inference import catalog as registry
    from mambava.temporal import save_temporal_model

    model_path = save_temporal_model(tiny_mamba_va(DIM), tmp_path / "model.safetensors")
    code, out, err = run_cli(["models", "add", "tiny", model_path, "--trained-on", "synthetic demo"], capsys)
    assert code == 0, err
    entry = registry.read_index()["tiny"]
    assert entry["kind"] == "temporal" and entry["trained_on"] == "synthetic demo"
    assert entry["sha256"] == registry.sha256(model_path)
    assert (home / "models" / "tiny.safetensors").is_file()
    code, out, _ = run_cli(["models", "list"], capsys)
    assert out.splitlines()[1].startswith(f"tiny\ttemporal\t{entry['sha256'][:16]}\t")
    code, _, err = run_cli(["models", "add", "tiny", model_path], capsys)
    assert code == 2 and "already a model name" in err
    code, _, err = run_cli(["models", "add", "junk", tmp_path / "model.safetensors", "--kind", "backbone"], capsys)
    assert code == 2 and "reads as a temporal checkpoint, not a backbone one" in err

    # predict -c NAME, with events and a baseline, on a feature file
    rng = np.random.default_rng(0)
    np.save(tmp_path / "p01.npy", rng.normal(size=(90, DIM)).astype(np.float32))
    (tmp_path / "p01_events.tsv").write_text("onset\tduration\ttrial_type\n0\t1\trest\n1\t1.5\tfilm\n")
    code, out, err = run_cli(
        [
            "predict",
            tmp_path / "p01.npy",
            "-c",
            "tiny",
            "-o",
            tmp_path / "pred",
            "--events",
            tmp_path,
            "--baseline",
            "rest",
            "--normalise",
            "zscore",
            "--no-plots",
        ],
        capsys,
    )
    assert code == 0, err
    table = pd.read_csv(tmp_path / "pred" / "p01.csv")
    summary = pd.read_csv(tmp_path / "pred" / "p01.summary.csv")
    assert summary["v_mean"].iloc[0] == pytest.approx(table["valence"].mean(), abs=1e-5)
    assert summary["duration_s"].iloc[0] == pytest.approx(3.0)
    events = pd.read_csv(tmp_path / "pred" / "p01.events.csv")
    film = events.iloc[1]
    inside = table[(table["time"] >= 1) & (table["time"] < 2.5)]
    rest = table[table["time"] < 1]
    assert film["frames"] == len(inside) == 45
    assert film["v_mean_norm"] == pytest.approx(
        (inside["valence"].mean() - rest["valence"].mean()) / rest["valence"].std(ddof=1), rel=1e-4
    )

    # the hash is checked on use
    (home / "models" / "tiny.safetensors").write_bytes(b"changed")
    code, _, err = run_cli(["predict", tmp_path / "p01.npy", "-c", "tiny", "-o", tmp_path / "pred"], capsys)
    assert code == 2 and "SHA-256 differs" in err
    code, out, _ = run_cli(["models", "remove", "tiny"], capsys)
    assert code == 0 and registry.read_index() == {} and not (home / "models" / "tiny.safetensors").exists()
    code, _, err = run_cli(["predict", tmp_path / "p01.npy", "-c", "tiny", "-o", tmp_path / "pred"], capsys)
    assert code == 2 and "tiny: no such file, nor a model name" in err


def test_home_defaults(monkeypatch):
    from mambava.inference import catalog as registry

    monkeypatch.delenv("MAMBAVA_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/x/cache")
    if sys.platform.startswith("linux"):
        assert registry.home() == Path("/x/cache/mambava")


def test_stream_out_writes_a_summary(tmp_path, capsys, tiny_mamba_va):
    from mambava.analysis.summaries import summarize
    from mambava.temporal import save_temporal_model

    model_path = save_temporal_model(tiny_mamba_va(DIM), tmp_path / "model.safetensors")
    features = np.random.default_rng(1).normal(size=(60, DIM)).astype(np.float32)
    features[10:15] = np.nan  # no face
    np.save(tmp_path / "s.npy", features)
    code, _, err = run_cli(["stream", tmp_path / "s.npy", "-c", model_path, "--out", tmp_path / "s.csv", "-q"], capsys)
    assert code == 0, err
    rows = pd.read_csv(tmp_path / "s.csv")
    summary = pd.read_csv(tmp_path / "s.summary.csv")
    assert summary["face_frames"].iloc[0] == 55 and summary["frames"].iloc[0] == 60
    face = rows[rows["face"] == 1]
    assert summary["v_mean"].iloc[0] == pytest.approx(face["valence"].mean(), abs=1e-5)
    assert summary["a_q75"].iloc[0] == pytest.approx(summarize(rows.assign(video="s"))["a_q75"].iloc[0], abs=1e-5)
