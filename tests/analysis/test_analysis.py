"""Summaries, events and baselines (mambava.analysis.summaries) checked against direct numpy computations and a
hand-built table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mambava.analysis.summaries import (
    SUMMARY_COLUMNS,
    aggregate_events,
    read_events,
    summarize,
    sustained_change,
    write_analysis,
)
from mambava.core.errors import MambavaError


def _table(valence, arousal, face, fps=10.0, track="clip", video="clip"):
    n = len(valence)
    return pd.DataFrame(
        {
            "video": video,
            "track": track,
            "frame": np.arange(n),
            "time": np.arange(n) / fps,
            "valence": valence,
            "arousal": arousal,
            "face": np.asarray(face, np.int8),
        }
    )


def test_summary_matches_numpy():
    rng = np.random.default_rng(0)
    n = 200
    v = rng.uniform(-1, 1, n)
    a = rng.uniform(-1, 1, n)
    face = rng.random(n) > 0.2
    table = pd.concat([_table(v, a, face), _table(-v, a, np.ones(n), track="other")], ignore_index=True)
    summary = summarize(table)
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert list(summary["track"]) == ["clip", "other"]
    row = summary.iloc[0]
    fv, fa = v[face], a[face]
    assert row["frames"] == n and row["face_frames"] == face.sum()
    assert row["face_share"] == pytest.approx(face.mean())
    assert row["duration_s"] == pytest.approx(n / 10.0)
    assert row["v_mean"] == pytest.approx(fv.mean())
    assert row["v_sd"] == pytest.approx(fv.std(ddof=1))
    assert row["a_min"] == pytest.approx(fa.min()) and row["a_max"] == pytest.approx(fa.max())
    for q, name in ((25, "q25"), (50, "median"), (75, "q75")):
        assert row[f"v_{name}"] == pytest.approx(np.percentile(fv, q))
        assert row[f"a_{name}"] == pytest.approx(np.percentile(fa, q))
    neutral = np.hypot(fv, fa) < 0.1
    assert row["share_neutral"] == pytest.approx(neutral.mean())
    assert row["share_excited"] == pytest.approx((~neutral & (fv >= 0) & (fa >= 0)).mean())
    assert row["share_tense"] == pytest.approx((~neutral & (fv < 0) & (fa >= 0)).mean())
    assert row["share_sad"] == pytest.approx((~neutral & (fv < 0) & (fa < 0)).mean())
    assert row["share_calm"] == pytest.approx((~neutral & (fv >= 0) & (fa < 0)).mean())
    shares = summary[[c for c in SUMMARY_COLUMNS if c.startswith("share_")]].sum(axis=1)
    np.testing.assert_allclose(shares, 1.0)
    assert summary.iloc[1]["v_mean"] == pytest.approx(-v.mean())


def test_sustained_change_finds_a_step():
    time = np.arange(100) / 10.0  # 10 s at 10 fps; valence steps from 0.1 to 0.7 at 6.0 s
    values = np.where(time < 6.0, 0.1, 0.7)
    change, at = sustained_change(time, values, 0.0, 10.0, sustain_s=1.0)
    assert change == pytest.approx(0.6) and at == pytest.approx(6.0)
    table = _table(values, -values, np.ones(100))
    row = summarize(table).iloc[0]
    assert row["v_change"] == pytest.approx(0.6) and row["v_change_time"] == pytest.approx(6.0)
    assert row["a_change"] == pytest.approx(-0.6)
    # A clip shorter than two windows has none.
    assert np.isnan(sustained_change(time[:15], values[:15], 0.0, 1.5)[0])


def _events(tmp_path, text):
    path = tmp_path / "events.tsv"
    path.write_text(text)
    return path


def test_events_on_a_hand_built_table(tmp_path):
    # 10 s at 10 fps: rest 0-2 s valence 0.1, stimulus 3-5 s valence 0.5 (frame 35 without face), 5-6 s: 0.3.
    time = np.arange(100) / 10.0
    v = np.full(100, 0.1)
    v[(time >= 3) & (time < 5)] = 0.5
    v[(time >= 5) & (time < 6)] = 0.3
    a = np.full(100, -0.2)
    face = np.ones(100, bool)
    face[35] = False
    v[35] = 9.0  # carried-over value that must not count
    table = _table(v, a, face)
    path = _events(
        tmp_path,
        "onset\tduration\ttrial_type\tstim_file\n"
        "0\t2\trest\tn/a\n3\t2\tfilm\tjoy.mp4\n4.5\t1.5\tfilm\tb.mp4\n9\t3\tfilm\tlate.mp4\n20\t1\tfilm\tgone.mp4\n",
    )
    events = read_events(path)
    out = aggregate_events(events=events, table=table, baseline="rest", normalisation="difference")
    assert len(out) == 5 and list(out["event"]) == [0, 1, 2, 3, 4]
    assert list(out["stim_file"]) == ["n/a", "joy.mp4", "b.mp4", "late.mp4", "gone.mp4"]
    film = out.iloc[1]
    assert film["frames"] == 20 and film["face_frames"] == 19
    assert film["v_mean"] == pytest.approx(0.5)
    assert film["v_pre_mean"] == pytest.approx(0.1)  # 1-3 s
    assert film["v_change_from_pre"] == pytest.approx(0.4)
    assert film["v_baseline_mean"] == pytest.approx(0.1)
    assert film["v_mean_norm"] == pytest.approx(0.4)
    assert film["normalisation"] == "difference" and film["baseline"] == "rest"
    assert film["issue"] == "overlaps event 2"
    second = out.iloc[2]  # 4.5-6 s: five frames of 0.5, ten of 0.3
    assert second["v_mean"] == pytest.approx((5 * 0.5 + 10 * 0.3) / 15)
    assert "overlaps event 1" in second["issue"]
    assert out.iloc[3]["issue"].startswith("partly outside the video (covers 9.000-10.000 s)")
    assert out.iloc[3]["frames"] == 10
    assert out.iloc[4]["issue"].startswith("outside the video") and out.iloc[4]["frames"] == 0
    assert np.isnan(out.iloc[4]["v_mean"])
    assert out.iloc[0]["issue"] == ""
    # z-score: (0.5 - 0.1) / SD of the baseline, which is 0 here for valence -> NaN; arousal the same.
    noisy = table.copy()
    noisy.loc[time < 2, "valence"] = np.tile([0.0, 0.2], 10)
    z = aggregate_events(noisy, events, baseline="rest", normalisation="zscore").iloc[1]
    assert z["v_baseline_sd"] == pytest.approx(np.std(np.tile([0.0, 0.2], 10), ddof=1))
    assert z["v_mean_norm"] == pytest.approx((0.5 - 0.1) / z["v_baseline_sd"])


def test_event_file_errors(tmp_path):
    with pytest.raises(MambavaError, match=r"events.tsv: line 3: onset 'x' is not a number"):
        read_events(_events(tmp_path, "onset\tduration\n1\t2\nx\t2\n"))
    with pytest.raises(MambavaError, match=r"line 2: duration '-1'"):
        read_events(_events(tmp_path, "onset\tduration\n1\t-1\n"))
    with pytest.raises(MambavaError, match="no 'onset' column"):
        read_events(_events(tmp_path, "onset,duration\n1,2\n"))
    table = _table(np.zeros(20), np.zeros(20), np.ones(20))
    events = read_events(_events(tmp_path, "onset\tduration\ttrial_type\n0\t1\tfilm\n"))
    with pytest.raises(MambavaError, match="no event of trial_type 'rest'"):
        aggregate_events(table, events, baseline="rest")


def test_write_analysis_files(tmp_path):
    time = np.arange(60) / 10.0
    table = _table(np.sin(time), np.cos(time), np.ones(60))
    events = _events(tmp_path, "onset\tduration\ttrial_type\n0\t2\trest\n2\t3\tfilm\n")
    written = write_analysis(table, tmp_path / "out", "clip", events=events, baseline="rest", normalisation="zscore")
    assert set(written) == {"summary", "events", "events_plot", "va_plot"}
    summary = pd.read_csv(written["summary"])
    assert summary["v_mean"].iloc[0] == pytest.approx(np.sin(time).mean(), abs=1e-5)
    rows = pd.read_csv(written["events"])
    assert list(rows["normalisation"]) == ["zscore", "zscore"]
    assert written["events_plot"].read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(MambavaError, match="--baseline needs --events"):
        write_analysis(table, tmp_path / "out", "clip", baseline="rest")
