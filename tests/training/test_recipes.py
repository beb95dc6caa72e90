"""The authors' recipe (configs/authors*.yaml, `--recipe authors`) and the two scoring protocols.

The expected numbers here come from direct formulas written in the tests (windows listed by hand, CCC as
2·ρ·s_x·s_y / (s_x² + s_y² + (x̄ − ȳ)²)), not from the code under test.
"""

from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import pytest
import torch
import yaml
from support import TINY_MODEL, write_drift_dataset

from mambava.core.errors import MambavaError
from mambava.data.store import FeatureStore
from mambava.data.windows import authors_windows, split_windows
from mambava.temporal import LoadedModel
from mambava.training import RECIPES, TrainConfig, config_items, load_recipe, warm_restarts_lrs
from mambava.training.evaluate import evaluate_videos, evaluate_windows_authors


def direct_ccc(x, y) -> float:
    """CCC from Pearson's rho and population standard deviations (a different route from metrics.ccc_numpy)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    rho = np.corrcoef(x, y)[0, 1]
    sx, sy = x.std(), y.std()
    return float(2 * rho * sx * sy / (sx**2 + sy**2 + (x.mean() - y.mean()) ** 2))


# ---------------------------------------------------------------------------------------------------------
# The recipe


def test_authors_recipe_values_per_fold(tmp_path):
    fold0 = load_recipe("authors")  # no fold given: fold 0, from authors_fold0.yaml
    fold2 = load_recipe("authors", ["data.fold=2"])
    assert fold0.data.fold == 0 and fold2.data.fold == 2
    # fold 0: VA/config/config_fold0.yml; folds 1-5: config_fold1..5.yml
    assert (fold0.lr, fold0.weight_decay, fold0.model["dropout"], fold0.data.window, fold0.data.stride) == (
        3e-4,
        1e-2,
        0.3,
        1000,
        800,
    )
    assert (fold2.lr, fold2.weight_decay, fold2.model["dropout"], fold2.data.window, fold2.data.stride) == (
        3e-5,
        1e-3,
        0.2,
        300,
        200,
    )
    for cfg in (fold0, fold2):
        assert (cfg.batch_size, cfg.drop_last, cfg.epochs, cfg.warmup_epochs, cfg.grad_clip) == (16, True, 50, 5, 1.0)
        assert (cfg.adam_eps, cfg.schedule, cfg.seed, cfg.protocol, cfg.eval_batch_size) == (
            1e-7,
            "warm_restarts",
            42,
            "authors",
            16,
        )
        assert (
            cfg.data.tails == "drop"
            and cfg.model["kind"] == "mamba_va"
            and cfg.model["tcn_channels"] == [1024, 768, 512, 256]
        )
    # the two files differ in exactly the keys the reference's fold-0 config changes (and their comments)
    folds_1_5, fold_0 = (yaml.safe_load(path.read_text()) for path in RECIPES["authors"])
    flat = lambda tree, p="": {
        k2: v2
        for k, v in tree.items()
        for k2, v2 in (flat(v, f"{p}{k}.").items() if isinstance(v, dict) else [(p + k, v)])
    }
    a, b = flat(folds_1_5), flat(fold_0)
    assert set(a) == set(b) and {k for k in a if a[k] != b[k]} == {
        "model.dropout",
        "data.window",
        "data.stride",
        "lr",
        "weight_decay",
    }
    # --set wins over the recipe, and so does a user's file laid over it; the paper recipe is the default config
    assert load_recipe("authors", ["data.fold=1", "lr=1e-3"]).lr == 1e-3
    user = tmp_path / "va.yaml"
    user.write_text("data: {features: feats, annotations: root, fold: 3}\nmodel: {tcn_channels: [8, 4]}\n")
    layered = load_recipe("authors", config_items(user))
    assert (layered.data.features, layered.data.fold, layered.model["tcn_channels"], layered.lr) == (
        "feats",
        3,
        [8, 4],
        3e-5,
    )
    user.write_text("data: {featurs: x}\n")
    with pytest.raises(MambavaError, match="va.yaml.*featurs"):
        config_items(user)
    assert load_recipe("paper").to_dict() == TrainConfig().to_dict()


def test_warm_restarts_schedule_is_the_references_per_iteration_schedule():
    lr, warmup, period = 3e-4, 10, 46  # period = epochs - warmup + 1 with the reference's 50 and 5 (steps!)
    lrs = warm_restarts_lrs(lr, warmup, 10 + 46 + 92 + 5, period)
    for step in range(warmup + 1):  # WarmUpLR(start_lr=1e-8): 1e-8 + lr * step / W
        assert lrs[step] == pytest.approx(1e-8 + lr * step / warmup, rel=1e-6, abs=1e-15)
    eta = 1e-8
    for m in range(1, period):  # first cycle: T_0 = 46 steps
        assert lrs[warmup + m] == pytest.approx(eta + (lr - eta) * (1 + math.cos(math.pi * m / period)) / 2, rel=1e-9)
    assert lrs[warmup + period] == pytest.approx(lr, rel=1e-9)  # restart
    for m in (1, 45, 91):  # second cycle twice as long (T_mult 2)
        assert lrs[warmup + period + m] == pytest.approx(
            eta + (lr - eta) * (1 + math.cos(math.pi * m / (2 * period))) / 2, rel=1e-9
        )
    assert lrs[warmup + 3 * period] == pytest.approx(lr, rel=1e-9)


def test_split_windows_drops_tails_and_short_videos():
    assert split_windows(1000, 300, 200) == [(0, 300), (200, 500), (400, 700), (600, 900)]
    assert split_windows(250, 300, 200) == [] and split_windows(300, 300, 200) == [(0, 300)]
    assert split_windows(1799, 1000, 800) == [(0, 1000)] and split_windows(1800, 1000, 800) == [(0, 1000), (800, 1800)]
    assert split_windows(0, 4, 2) == []


# ---------------------------------------------------------------------------------------------------------
# The protocols on a hand-built case


class FirstTwo(torch.nn.Module):
    """A per-frame 'model': (B, T, D) -> its first two feature columns."""

    def forward(self, x):
        return x[..., :2].clone()


def _hand_case(tmp_path):
    rng = np.random.default_rng(3)
    lengths = {"b": 6, "a_right": 3, "a": 9}
    store = FeatureStore(tmp_path / "feats")
    features, labels = {}, {}
    for name, n in lengths.items():
        features[name] = (rng.integers(-8, 9, size=(n, 2)) / 8).astype(np.float32)  # exact in float16
        labels[name] = rng.uniform(-1, 1, size=(n, 2)).astype(np.float32)
        store.write(name, features[name], np.ones(n, bool), fps=30.0, backbone="hand", dtype="float16")
    labels["a"][5] = [-5, -5]  # masked by both protocols
    labels["a"][2] = [0.25, -5]  # the reference masks by valence only: this arousal -5 counts there
    return store, features, labels


def test_both_protocols_on_a_hand_built_case(tmp_path):
    store, features, labels = _hand_case(tmp_path)
    names = ["b", "a_right", "a"]
    loaded = LoadedModel(model=FirstTwo(), kind="first_two", source="hand", window=4, stride=2)

    # Ours: whole videos, stitched; a per-frame model stitches back to its input. Frames with any -5 are out.
    ours = evaluate_videos(loaded, store, names, labels, batch_size=2, device="cpu")
    x = np.concatenate([features[n] for n in names])
    y = np.concatenate([labels[n] for n in names])
    valid = (y != -5).all(1)
    assert ours.frames == 18 - 2
    assert ours.ccc_valence == pytest.approx(direct_ccc(x[valid, 0], y[valid, 0]), abs=1e-6)
    assert ours.ccc_arousal == pytest.approx(direct_ccc(x[valid, 1], y[valid, 1]), abs=1e-6)

    # The authors': windows of 4 every 2 that fit (a: 0-4, 2-6, 4-8, its frame 8 dropped; a_right too short;
    # b: 0-4, 2-6), ordered as files a_0000 a_0001 a_0002 a_right.. b_0000 b_0001, batches of 2 with the last
    # partial one (b_0001) dropped; overlapping frames count once per window; valence -5 frames are out.
    windows = [("a", 0, 4), ("a", 2, 6), ("a", 4, 8), ("b", 0, 4)]
    x = np.concatenate([features[n][s:e] for n, s, e in windows])
    y = np.concatenate([labels[n][s:e] for n, s, e in windows])
    keep = y[:, 0] != -5
    theirs = evaluate_windows_authors(loaded, store, names, labels, batch_size=2, device="cpu")
    assert theirs.frames == 16 - 2 and int((y[keep, 1] == -5).sum()) == 2  # frame a[2] in two windows
    assert theirs.ccc_valence == pytest.approx(direct_ccc(x[keep, 0], y[keep, 0]), abs=1e-6)
    assert theirs.ccc_arousal == pytest.approx(direct_ccc(x[keep, 1], y[keep, 1]), abs=1e-6)
    assert theirs.p_va == pytest.approx((theirs.ccc_valence + theirs.ccc_arousal) / 2)
    assert abs(theirs.p_va - ours.p_va) > 1e-3  # not the same quantity
    per_video = {r["video"]: r for r in theirs.per_video}
    assert (per_video["a"]["frames"], per_video["a_right"]["frames"], per_video["b"]["frames"]) == (10, 0, 4)

    # the order is the reference's sorted file names, cut to whole batches
    assert authors_windows([("b", 0, 4), ("a_right", 0, 4), ("a", 2, 6), ("a", 0, 4)], 2, 3) == [
        ("a", 0, 4),
        ("a", 2, 6),
        ("a_right", 0, 4),
    ]


# ---------------------------------------------------------------------------------------------------------
# One command each: train and cv with the authors' recipe


def _tiny(features, annotations):
    """The authors' recipe made tiny: 8-d inputs, a small model, windows of 40 every 20, batches of 4."""
    sets = [
        f"data.features={features}",
        f"data.annotations={annotations}",
        "model.input_dim=8",
        *TINY_MODEL,
        "data.window=40",
        "data.stride=20",
        "batch_size=4",
        "eval_batch_size=4",
        "epochs=2",
        "warmup_epochs=1",
        "progress_bar=false",
    ]
    return [arg for item in sets for arg in ("--set", item)]


def test_train_with_the_authors_recipe_and_its_protocol(tmp_path):
    from typer.testing import CliRunner

    from mambava.cli import app
    from mambava.training.evaluate import evaluate_checkpoint

    features, annotations = write_drift_dataset(
        tmp_path / "data", n_train=6, n_val=4, n_frames=150, dim=8, noise=1.0, scale=20
    )
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app, ["train", "--recipe", "authors", "--out-dir", str(out), *_tiny(features, annotations)]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    cfg = summary["config"]
    assert (cfg["lr"], cfg["weight_decay"], cfg["model"]["dropout"], cfg["adam_eps"], cfg["seed"]) == (
        3e-4,
        1e-2,
        0.3,
        1e-7,
        42,
    )
    assert summary["protocol"] == "authors"
    # training windows: the authors' split of each training video; drop_last: whole batches only
    store = FeatureStore(features)
    train_names = [f"tr{i:02d}" for i in range(6)]
    n_windows = sum(len(split_windows(store.n_frames(n), 40, 20)) for n in train_names)
    assert summary["train_windows"] == n_windows
    steps = n_windows // 4
    assert summary["global_step"] == 2 * steps
    # the optimizer the run used, and the learning rate of every step (Lightning's per-step log)
    last = torch.load(out / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert last["optimizer_states"][0]["param_groups"][0]["eps"] == 1e-7
    with open(next((out / "logs").glob("version_*/metrics.csv")), newline="") as handle:
        logged = [float(r["lr"]) for r in csv.DictReader(handle) if r.get("lr")]
    assert logged == pytest.approx(warm_restarts_lrs(3e-4, steps, 2 * steps, 2)[: len(logged)], rel=1e-6)
    assert len(logged) == 2 * steps
    # validation by the authors' protocol = evaluate --protocol authors of the best model
    scored, path = evaluate_checkpoint(out / "model.safetensors", protocol="authors", device="cpu")
    assert scored.p_va == pytest.approx(summary["best"]["p_va"], abs=1e-4)
    assert path.name == "eval_validation_fold0_authors.csv"
    cli = CliRunner().invoke(
        app, ["evaluate", str(out / "model.safetensors"), "--protocol", "authors", "--device", "cpu"]
    )
    assert cli.exit_code == 0, cli.output
    assert float(next(line for line in cli.output.splitlines() if line.startswith("P_VA")).split()[1]) == pytest.approx(
        scored.p_va, abs=1e-4
    )
    assert f"{scored.frames} frames counted over windows" in cli.output
    val_windows = sum(len(split_windows(store.n_frames(f"va{i:02d}"), 40, 20)) for i in range(4))
    assert summary["validation_windows"] == val_windows // 4 * 4


def test_cv_with_the_authors_recipe_prints_table_1_under_both_protocols(tmp_path):
    from typer.testing import CliRunner

    from mambava.cli import app

    features, annotations = write_drift_dataset(
        tmp_path / "data", n_train=6, n_val=4, n_frames=100, dim=8, noise=1.0, scale=20
    )
    out = tmp_path / "cv"
    user = tmp_path / "va.yaml"  # the user's data paths, laid over the recipe
    user.write_text(f"data:\n  features: {features}\n  annotations: {annotations}\n")
    tiny = _tiny("unused", "unused")[4:]  # (without the data paths)
    args = [
        "cv",
        "--recipe",
        "authors",
        "--config",
        str(user),
        "--folds",
        "0,1",
        "--out-dir",
        str(out),
        "--both-protocols",
        *tiny,
    ]
    result = CliRunner().invoke(app, [*args, "--set", "epochs=1", "--set", "warmup_epochs=0"])
    assert result.exit_code == 0, result.output
    folds = [json.loads((out / f"fold{k}/summary.json").read_text())["config"] for k in (0, 1)]
    assert (folds[0]["lr"], folds[0]["weight_decay"], folds[0]["model"]["dropout"]) == (
        3e-4,
        1e-2,
        0.3,
    )  # fold 0's values
    assert (folds[1]["lr"], folds[1]["weight_decay"], folds[1]["model"]["dropout"]) == (3e-5, 1e-3, 0.2)  # folds 1-5's
    tables = re.split(r"\nTable 1", result.output)[1:]
    assert len(tables) == 3 and "validation protocol: authors" in tables[0]
    assert "protocol videos" in tables[1] and "protocol authors" in tables[2]
    rows = [[line.split() for line in t.splitlines() if re.match(r"^[01] ", line)] for t in tables]
    assert [r[0] for r in rows[0]] == ["0", "1"] and all(len(r) == 2 for r in rows)
    # the runs validated by the authors' protocol: scoring their best models again that way gives the same table
    for trained, again in zip(rows[0], rows[2]):
        assert [float(v) for v in again[1:]] == pytest.approx([float(v) for v in trained[1:]], abs=2e-4)
    assert rows[1] != rows[2]
    assert (out / "cv_results_videos.csv").is_file() and (out / "cv_results_authors.csv").is_file()
