import json

import pytest
from typer.testing import CliRunner

from mambava.cli import app
from mambava.core.errors import MambavaError
from mambava.data.affwild2 import base_video
from mambava.data.folds import load_folds, make_folds, save_folds


def _videos():
    """60 base videos, every 4th a two-person video (_left/_right), every 7th also with a plain <v>."""
    train, val = [], []
    for i in range(60):
        names = [f"v{i}_left", f"v{i}_right"] if i % 4 == 0 else [f"v{i}"]
        if i % 7 == 0 and i % 4 == 0:
            names.append(f"v{i}")
        (val if i % 5 == 0 else train).extend(names)
    return train, val


def test_fold_zero_is_the_official_split_and_cv_groups_base_videos():
    train, val = _videos()
    folds = make_folds(train, val, n_folds=5, seed=0)
    assert sorted(folds) == [0, 1, 2, 3, 4, 5]
    assert folds[0] == {"train": sorted(train), "validation": sorted(val)}
    everything = set(train) | set(val)
    held_out = [set(folds[k]["validation"]) for k in range(1, 6)]
    assert set().union(*held_out) == everything and sum(map(len, held_out)) == len(everything)  # a partition
    for k in range(1, 6):
        assert set(folds[k]["train"]) == everything - held_out[k - 1]
        train_bases = {base_video(v) for v in folds[k]["train"]}
        assert not train_bases & {base_video(v) for v in folds[k]["validation"]}  # <v>, _left, _right together
    sizes = [len(h) for h in held_out]
    assert max(sizes) - min(sizes) <= 3  # balanced up to one group
    fold_of = {v: k for k in range(1, 6) for v in folds[k]["validation"]}
    assert fold_of["v28_left"] == fold_of["v28_right"] == fold_of["v28"]


def test_folds_are_deterministic_per_seed_and_can_balance_frames():
    train, val = _videos()
    assert make_folds(train, val, seed=3) == make_folds(list(reversed(train)), val, seed=3)
    assert make_folds(train, val, seed=3) != make_folds(train, val, seed=4)
    frames = {v: (1000 if v.startswith("v1") else 10) for v in train + val}
    folds = make_folds(train, val, seed=0, weights=frames)
    loads = [sum(frames[v] for v in folds[k]["validation"]) for k in range(1, 6)]
    assert max(loads) - min(loads) <= 1000


def test_bad_fold_requests():
    with pytest.raises(MambavaError, match="videos listed twice across train/validation: a"):
        make_folds(["a", "b"], ["a"])
    with pytest.raises(MambavaError, match="cannot make 5 folds from 2 base videos"):
        make_folds(["a_left", "a_right"], ["b"])


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_save_and_load_round_trip(tmp_path, suffix):
    train, val = _videos()
    folds = make_folds(train, val, n_folds=3, seed=1)
    path = tmp_path / f"folds{suffix}"
    save_folds(path, folds)
    assert load_folds(path) == folds
    if suffix == ".json":
        assert json.loads(path.read_text())["format"] == 1


@pytest.mark.parametrize(
    "text, problem",
    [
        (
            "folds:\n  '1': {train: [a, b], validation: [b]}\n",
            "folds.yaml: fold 1 has 'b' in both train and validation",
        ),
        ("folds:\n  one: {train: [a], validation: [b]}\n", "folds.yaml: fold id 'one' is not an integer"),
        ("- just a list\n", "folds.yaml: expected a mapping"),
        ("folds: {'0': {train: [a]}}\n", "folds.yaml: fold 0 must have exactly 'train' and 'validation' lists"),
        ("folds: {'0': {train: a, validation: [b]}}\n", "folds.yaml: fold 0 train must be a list of video names"),
        ("folds: [\n", "folds.yaml: cannot read folds"),
    ],
)
def test_malformed_folds_file(tmp_path, text, problem):
    path = tmp_path / "folds.yaml"
    path.write_text(text)
    with pytest.raises(MambavaError, match=problem):
        load_folds(path)


def test_folds_command(affwild2_root, tmp_path):
    out = tmp_path / "folds.yaml"
    result = CliRunner().invoke(app, ["data", "folds", str(affwild2_root), "--out", str(out), "--n-folds", "2"])
    assert result.exit_code == 0, result.output
    folds = load_folds(out)
    assert folds[0] == {"train": ["vidA", "vidB_left", "vidB_right"], "validation": ["vidC", "vidD"]}
    for k in (1, 2):
        assert ("vidB_left" in folds[k]["validation"]) == ("vidB_right" in folds[k]["validation"])
    held_out = sorted(folds[1]["validation"] + folds[2]["validation"])
    assert held_out == ["vidA", "vidB_left", "vidB_right", "vidC", "vidD"]
