"""mambava adapt on generated data: a model trained on one synthetic population, adapted to a second whose
expressions map to valence/arousal differently and whose raters lag more, gains on that population's
held-out participants."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from support import run_cli

from mambava.training.adapt import AdaptConfig, AdaptVideo, adapt, freeze, participant_folds

DIM, T, FPS = 8, 240, 30.0
GAIN_MARGIN = 0.2  # mean per-video P_VA on held-out participants must rise by at least this much


def _latent(rng, n):
    """Smooth valence/arousal in about [-0.8, 0.8]."""
    kernel = np.hanning(21)
    z = np.stack(
        [np.convolve(rng.normal(size=n + 40), kernel / kernel.sum(), mode="same")[20 : 20 + n] for _ in range(2)], 1
    )
    return 0.8 * z / np.abs(z).max(0)


def _population(seed, n_people, videos_each, mapping, offset, rater_lag, mixing):
    rng = np.random.default_rng(seed)
    videos = []
    for p in range(n_people):
        person = rng.normal(0, 0.1, DIM)  # each participant's own look
        for v in range(videos_each):
            z = _latent(rng, T + rater_lag)
            expression = z @ mapping + offset  # how this population shows z
            x = expression @ mixing + person + rng.normal(0, 0.05, (T + rater_lag, DIM))
            labels = np.full((T, 2), np.nan)
            labels[rater_lag:] = z[: T - rater_lag]  # raters respond rater_lag frames late
            videos.append(
                AdaptVideo(f"p{seed}{p}_v{v}", f"p{seed}{p}", x[:T].astype(np.float32), np.ones(T, bool), labels)
            )
    return videos


def test_participant_folds_are_disjoint_and_seeded():
    groups = participant_folds(["c", "a", "b", "d", "e", "a"], 2, seed=3)
    assert sorted(sum(groups, [])) == ["a", "b", "c", "d", "e"]
    assert groups == participant_folds(["e", "d", "c", "b", "a"], 2, seed=3)
    assert [len(g) for g in groups] == [3, 2]


def test_freeze_modes(tiny_mamba_va):
    model = tiny_mamba_va(DIM)
    assert freeze(model, "head") == ["dual_reg"]
    assert freeze(model, "encoder") == ["dual_reg", "mamba"]
    assert set(freeze(model, "all")) == {"dual_reg", "mamba", "temporal"}


def test_adaptation_gains_on_held_out_participants(tmp_path, tiny_mamba_va):
    mixing = np.random.default_rng(99).normal(0, 1, (2, DIM)) / np.sqrt(2)
    identity = np.eye(2)
    # Population A: expressions are the affect itself, raters 3 frames late.
    population_a = _population(1, 4, 2, identity, np.zeros(2), 3, mixing)
    # Population B: valence shown at 40 % strength and mixed into arousal, a resting offset, raters 24 frames late.
    mapping_b = np.array([[0.4, 0.3], [0.0, 0.5]])
    population_b = _population(2, 6, 2, mapping_b, np.array([0.3, -0.2]), 24, mixing)

    torch.manual_seed(0)
    window = dict(window=60, stride=30, fps=FPS, seed=0, batch_size=16)
    base = adapt(
        tiny_mamba_va(DIM),
        population_a,
        tmp_path / "base",
        AdaptConfig(mode="all", epochs=25, lr=5e-3, folds=0, lag=3 / FPS, **window),
    )
    assert base.rows == [] and base.lag_frames == 3

    result = adapt(
        base.model_path,
        population_b,
        tmp_path / "adapted",
        AdaptConfig(mode="all", epochs=15, lr=3e-3, folds=3, lag="auto", **window),
    )
    assert abs(result.lag_frames - 24) <= 3  # estimated with the model before adaptation
    rows = pd.read_csv(tmp_path / "adapted" / "per_video.csv")
    assert len(rows) == 12 and rows["fold"].nunique() == 3
    # every held-out video's participant is absent from its fold's training side
    folds = json.loads((tmp_path / "adapted" / "work" / "folds.json").read_text())["folds"]
    for row in rows.itertuples():
        train = folds[str(row.fold)]["train"]
        assert all(not name.startswith(row.participant + "_") for name in train)
    summary = json.loads((tmp_path / "adapted" / "summary.json").read_text())
    before, after = summary["p_va_before"], summary["p_va_after"]
    print(f"held-out P_VA before {before:.3f}, after {after:.3f}, lag {result.lag_frames} frames")
    assert after - before >= GAIN_MARGIN, (before, after)
    assert summary["gain"] == pytest.approx(after - before)

    # the result is a normal checkpoint: predict -c loads it with the window of its config.yaml
    from mambava.inference.predict import Predictor

    predictor = Predictor(result.model_path)
    assert predictor.window == 60 and predictor.stride == 30
    values = predictor.predict_features(population_b[0].features)
    assert values.shape == (T, 2)


def test_adapt_command_on_files(tmp_path, capsys, tiny_mamba_va):
    from mambava.temporal import save_temporal_model

    model = save_temporal_model(tiny_mamba_va(DIM), tmp_path / "model.safetensors")
    mixing = np.random.default_rng(5).normal(0, 1, (2, DIM))
    (tmp_path / "feats").mkdir()
    (tmp_path / "ratings").mkdir()
    for video in _population(3, 4, 1, np.eye(2), np.zeros(2), 0, mixing):
        np.save(tmp_path / "feats" / f"{video.name}.npy", video.features)
        t = np.arange(0, T / FPS, 0.1)  # 10 Hz ratings
        pd.DataFrame(
            {
                "time": t,
                "valence": np.interp(t, np.arange(T) / FPS, video.labels[:, 0]),
                "arousal": np.interp(t, np.arange(T) / FPS, video.labels[:, 1]),
            }
        ).to_csv(tmp_path / "ratings" / f"{video.name}.csv", index=False)
    args = [
        "adapt",
        "-c",
        model,
        "--features",
        tmp_path / "feats",
        "--ratings",
        tmp_path / "ratings",
        "-o",
        tmp_path / "out",
        "--mode",
        "head",
        "--lag",
        "0.1",
        "--folds",
        "2",
        "--epochs",
        "2",
        "--window",
        "60",
        "--stride",
        "30",
    ]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "4 videos of 4 participants; lag 3 frames (0.100 s, given); trained: dual_reg" in out
    rows = pd.read_csv(tmp_path / "out" / "per_video.csv")
    assert sorted(rows["participant"]) == ["p30", "p31", "p32", "p33"]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["gain"] == pytest.approx(rows["p_va_after"].mean() - rows["p_va_before"].mean(), abs=1e-5)
    # only the head changed
    from mambava.temporal import load_temporal_model

    before = load_temporal_model(model).model.state_dict()
    after = load_temporal_model(tmp_path / "out" / "adapted.safetensors").model.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"dual_reg"}
    code, _, err = run_cli([*args[:-8], "--mode", "tail"], capsys)
    assert code == 2 and err.strip() == "error: mode must be one of head, encoder, all, got 'tail'"


def test_load_adapt_data_from_a_store_and_a_participants_file(tmp_path):
    from mambava.core.errors import MambavaError
    from mambava.data.store import FeatureStore
    from mambava.training.adapt import load_adapt_data

    store = FeatureStore(tmp_path / "store")
    rng = np.random.default_rng(0)
    mask = np.ones(90, bool)
    mask[10:20] = False
    for name in ("a1", "a2", "b1"):
        store.write(
            name, rng.normal(size=(90, DIM)).astype(np.float32), mask, fps=30.0, backbone="test", dtype="float32"
        )
    (tmp_path / "ratings").mkdir()
    # a1: `mambava ratings` output (frame, time, valence, arousal; blanks unrated); a2: Aff-Wild2; b1: no ratings
    pd.DataFrame(
        {
            "frame": range(90),
            "time": np.arange(90) / 30,
            "valence": np.linspace(-1, 1, 90),
            "arousal": [np.nan] * 45 + [0.5] * 45,
        }
    ).to_csv(tmp_path / "ratings" / "a1.frames.csv", index=False)
    (tmp_path / "ratings" / "a2.txt").write_text("valence,arousal\n" + "0.1,0.2\n" * 80 + "-5,-5\n" * 10)
    (tmp_path / "people.csv").write_text("video,participant\na1,P1\na2,P2\nb1,P3\n")
    videos = load_adapt_data(tmp_path / "store", tmp_path / "ratings", tmp_path / "people.csv")
    assert [(v.name, v.participant) for v in videos] == [("a1", "P1"), ("a2", "P2")]
    a1, a2 = videos
    assert a1.features.shape == (90, DIM) and a1.features.flags.writeable and a1.present.sum() == 80
    np.testing.assert_allclose(a1.labels[:, 0], np.linspace(-1, 1, 90), atol=1e-6)
    assert np.isnan(a1.labels[:45, 1]).all() and np.allclose(a1.labels[46:, 1], 0.5)
    assert np.isnan(a2.labels[80:]).all() and np.allclose(a2.labels[:80], [0.1, 0.2])
    (tmp_path / "people.csv").write_text("video,participant\na1,P1\n")
    with pytest.raises(MambavaError, match="no participant for video 'a2'"):
        load_adapt_data(tmp_path / "store", tmp_path / "ratings", tmp_path / "people.csv")
    # without a participants file the pattern's first group names the participant
    assert [v.participant for v in load_adapt_data(tmp_path / "store", tmp_path / "ratings", pattern=r"^(\w)")] == [
        "a",
        "a",
    ]
