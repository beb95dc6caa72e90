"""The synthetic affect-video generator: determinism, the exact Aff-Wild2 layout, and the designed signals."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from mambava.core.errors import MambavaError
from mambava.data.affwild2 import AffWild2, base_video, read_crop, read_va_annotation, video_frame_count
from mambava.synth import (
    ARCFACE_TEMPLATE_112,
    RENDERED_TRUTH,
    SynthConfig,
    generate,
    ground_truth_path,
    oracle_scores,
    read_meta,
    read_truth,
    similarity,
    simulate,
)

# Two train videos (one of them two-person), one validation, one test: every layout feature, ~2 s.
TINY = dict(
    n_train=2,
    n_val=1,
    n_test=1,
    frames=(150, 180),
    two_person_fraction=0.5,
    seed=7,
    gaps_per_min=12.0,
    occlusions_per_min=12.0,
    invalid_runs_per_min=6.0,
)


def _hashes(root: Path) -> dict[str, str]:
    """sha256 of every annotation, crop, list and truth file (not the H.264 videos), by relative path."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not rel.startswith("videos/"):
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("synth") / "data"
    summary = generate(root, SynthConfig(**TINY, workers=1))
    return root, summary


def test_same_seed_gives_identical_files_whatever_the_workers(tiny, tmp_path):
    root, summary = tiny
    again = generate(tmp_path / "again", SynthConfig(**TINY, workers=2))
    first, second = _hashes(root), _hashes(tmp_path / "again")
    assert first == second
    assert any(k.startswith("cropped_aligned/") for k in first) and any(k.endswith(".txt") for k in first)
    assert again.splits == summary.splits and again.crops == summary.crops
    other = generate(tmp_path / "other", SynthConfig(**{**TINY, "seed": 8}, workers=1))
    assert _hashes(tmp_path / "other") != first
    assert other.videos != summary.videos or other.crops != summary.crops


def test_layout_is_read_by_the_affwild2_loader(tiny):
    root, summary = tiny
    data = AffWild2(root)
    assert data.splits == {
        "train": summary.splits["train"],
        "validation": summary.splits["validation"],
        "test": summary.splits["test"],
    }
    names = data.videos
    assert any(n.endswith("_left") for n in names) and any(n.endswith("_right") for n in names)
    assert len(summary.videos) == 4 and len(names) == 4 + sum(n.endswith("_left") for n in names)
    meta = read_meta(root)
    n_frames = {v["name"]: v["n_frames"] for v in meta["videos"]}
    for name in names:
        video = data.video_path(name)
        assert video is not None and video.parent.parent.name == "videos" and video.suffix == ".mp4"
        n = n_frames[base_video(name)]
        assert video_frame_count(video) == n == data.n_frames(name)
        labels = read_va_annotation(ground_truth_path(root, name))
        assert labels.shape == (n, 2)
        if data.split_of(name) != "test":
            assert np.array_equal(labels, data.read_annotation(name))
        frames = data.crop_frames(name)
        assert frames[0] >= 1 and frames[-1] <= n
        truth = read_truth(root, name)
        assert frames == [t + 1 for t in np.flatnonzero(truth["crop"])]
        crop = read_crop(data.crop_path(name, frames[len(frames) // 2]))
        assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8 and crop.std() > 10
    # the test list names annotation-level videos; their labels are not in VA_Estimation_Challenge/
    assert (root / "VA_Estimation_Challenge" / "Train_Set").is_dir()
    for name in summary.splits["test"]:
        assert not (root / "VA_Estimation_Challenge" / "Validation_Set" / f"{name}.txt").exists()
    # annotation text: header, 4-decimal values in [-1, 1], -5,-5 for invalid frames
    text = data.annotation_path(summary.splits["train"][0]).read_text().splitlines()
    assert text[0] == "valence,arousal"
    assert all(line == "-5,-5" or len(line.split(",")[0].split(".")[1]) == 4 for line in text[1:])
    # no temporary files or folders are left behind
    assert not [p for p in root.rglob(".*")]


def test_disturbances_are_present(tiny):
    root, summary = tiny
    truth = [read_truth(root, n) for split in summary.splits.values() for n in split]
    labels = np.concatenate([t["labels"] for t in truth])
    invalid = (labels == -5).all(1)
    assert 0.01 < invalid.mean() < 0.5
    assert ((labels == -5).any(1) == invalid).all()
    assert np.abs(labels[~invalid]).max() <= 1.0
    crop = np.concatenate([t["crop"] for t in truth])
    present = np.concatenate([t["present"] for t in truth])
    occluded = np.concatenate([t["occluded"] for t in truth])
    assert (~present).any() and (present & ~crop).any() and occluded.any()  # gaps, hidden faces, occlusions
    assert summary.person_frames - summary.crops == int((~crop).sum())
    # every face crop is aligned: the landmark transform maps the template onto itself at crop scale
    assert np.allclose(similarity(ARCFACE_TEMPLATE_112, ARCFACE_TEMPLATE_112)[:, :2], np.eye(2))


def test_simulate_matches_what_generate_wrote(tiny):
    root, summary = tiny
    sim = simulate(SynthConfig(**TINY))
    assert sorted(sim) == sorted(n for split in summary.splits.values() for n in split)
    for name, item in sim.items():
        written = read_truth(root, name)
        assert sorted(written) == sorted([*(k for k in item if k != "split"), *RENDERED_TRUTH])
        for key in written.keys() - set(RENDERED_TRUTH):
            assert np.array_equal(item[key], written[key]), (name, key)
        # the true landmarks exist where the face is drawn; the crop's where a crop was written
        assert (np.isfinite(written["landmarks"]).all((1, 2)) == written["present"]).all()
        assert (np.isfinite(written["crop_landmarks"]).all((1, 2)) == written["crop"]).all()
        lm = written["landmarks"][written["crop"]]
        error = np.linalg.norm(written["crop_landmarks"][written["crop"]] - lm, axis=2)  # the simulated aligner's
        assert 0.3 < np.median(error) < 1.5 and lm[:, 0, 0].mean() < lm[:, 1, 0].mean()  # left eye is image-left


def test_labels_lag_the_expression_like_human_raters():
    cfg = SynthConfig(n_train=6, n_val=0, n_test=0, frames=(600, 600), seed=3, two_person_fraction=0.0)
    meta_lags = []
    for item in simulate(cfg).values():
        va, labels = item["va_true"].astype(np.float64), item["labels"].astype(np.float64)
        valid = (labels != -5).all(1)
        corr = []
        for lag in range(0, 45):
            ok = valid[lag:]
            corr.append(np.corrcoef(va[: len(va) - lag][ok, 0], labels[lag:][ok, 0])[0, 1])
        best = int(np.argmax(corr))
        meta_lags.append(best)
        assert corr[best] > corr[0] + 0.01
    # 0.5-1.0 s lag plus ~0.25 s rater smoothing, at 30 fps
    assert all(14 <= lag <= 40 for lag in meta_lags), meta_lags


def _autocorrelation(x: np.ndarray, lag: int) -> np.ndarray:
    x = x - x.mean(0)
    return (x[:-lag] * x[lag:]).sum(0) / np.sqrt((x[:-lag] ** 2).sum(0) * (x[lag:] ** 2).sum(0))


def test_trajectories_have_long_range_structure_and_cover_the_space():
    truth = simulate(SynthConfig(n_train=8, n_val=0, n_test=0, frames=(900, 900), seed=4))
    va = np.concatenate([t["va_true"] for t in truth.values()])
    assert va.std(0).min() > 0.3 and np.abs(va).max() < 1.0
    assert (va[:, 0] > 0.5).mean() > 0.05 and (va[:, 0] < -0.5).mean() > 0.05
    items = list(truth.values())
    # VA moves over seconds (drifts, episodes): still correlated after 1 s and 2 s ...
    one = np.median([_autocorrelation(t["va_true"].astype(float), 30) for t in items], axis=0)
    two = np.median([_autocorrelation(t["va_true"].astype(float), 60) for t in items], axis=0)
    assert (one > 0.6).all() and (two > 0.2).all(), (one, two)
    # ... while the expression noise a single frame carries (smile - valence) is gone after 0.5 s
    noise = np.median([_autocorrelation((t["smile"] - t["va_true"][:, 0])[:, None].astype(float), 15) for t in items])
    assert noise < 0.3


def test_context_helps_a_perfect_reader_of_the_rendered_expression():
    """The designed ambiguity: the expression parameters of one frame predict the labels only in part; the
    same parameters with causal context (motion, blink rate, talking amplitude, the rater lag) do much better."""
    truth = simulate(SynthConfig(n_train=24, n_val=8, n_test=0, frames=(300, 450), seed=11))
    scores = oracle_scores(truth)
    frame, context = scores["frame"], scores["context"]
    assert 0.4 < frame["p_va"] < 0.85
    assert context["p_va"] > 0.7  # (0.76: arousal's facial cues carry a slow demeanour that context cannot remove)
    assert context["p_va"] > frame["p_va"] + 0.15
    assert context["ccc_arousal"] > frame["ccc_arousal"] + 0.1  # (0.15 here; it was ~0.3 before the demeanour)


def test_pixels_carry_valence(tiny):
    """Mouth curvature is visible in the crops: the mouth region of the happiest and the saddest frames differ."""
    root, summary = tiny
    data = AffWild2(root)
    name = max(data.videos, key=lambda n: np.ptp(read_truth(root, n)["smile"]))
    truth = read_truth(root, name)
    visible = truth["crop"] & ~truth["occluded"]
    order = np.argsort(np.where(visible, truth["smile"], np.nan))
    happy, sad = order[np.isfinite(truth["smile"][order]) & visible[order]][[-1, 0]]
    mouth = lambda t: read_crop(data.crop_path(name, int(t) + 1))[80:104, 30:82].astype(float)  # noqa: E731
    assert np.abs(mouth(happy) - mouth(sad)).mean() > 6


def test_bad_config_and_foreign_folder_are_refused(tmp_path):
    with pytest.raises(MambavaError, match="frames"):
        SynthConfig(frames=(10, 5))
    with pytest.raises(MambavaError, match="size"):
        SynthConfig(size=(255, 192))
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(MambavaError, match="not empty"):
        generate(tmp_path, SynthConfig.tiny())
    assert (tmp_path / "mine.txt").read_text() == "precious"


def test_regenerating_replaces_an_earlier_dataset(tmp_path):
    generate(tmp_path, SynthConfig.tiny(n_train=3))
    summary = generate(tmp_path, SynthConfig.tiny(n_train=1, seed=1))
    meta = json.loads((tmp_path / "synth_meta.json").read_text())
    assert len(meta["videos"]) == 3
    on_disk = sorted(p.name for p in (tmp_path / "cropped_aligned").iterdir())
    assert on_disk == sorted(n for split in summary.splits.values() for n in split)


def test_synth_command_writes_a_dataset(tmp_path):
    from typer.testing import CliRunner

    from mambava.cli import app

    out = tmp_path / "synth"
    result = CliRunner().invoke(
        app,
        [
            "synth",
            "--out",
            str(out),
            "--train",
            "1",
            "--val",
            "1",
            "--test",
            "1",
            "--min-frames",
            "40",
            "--max-frames",
            "50",
            "--two-person",
            "0",
            "--no-videos",
            "--quiet",
            "--workers",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    data = AffWild2(out)
    assert [len(data.splits[s]) for s in ("train", "validation", "test")] == [1, 1, 1]
    assert not (out / "videos").exists()
    assert all(data.crop_frames(name) for name in data.videos)
