"""The authors' recipe (configs/authors*.yaml, `--recipe authors`) and the two scoring protocols.

The expected numbers here come from direct formulas written in the tests (windows listed by hand, CCC as
2·ρ·s_x·s_y / (s_x² + s_y² + (x̄ − ȳ)²)), not from the code under test.
"""

from __future__ import annotations

import csv
import json
import math
import re
import warnings

import numpy as np
import pytest
import torch
import yaml
from support import TINY_MODEL, write_drift_dataset

from mambava.core.errors import MambavaError
from mambava.core.metrics import authors_ccc_loss
from mambava.data.store import FeatureStore
from mambava.data.windows import WindowDataset, authors_window_dataset, authors_windows, crop_span, split_windows
from mambava.temporal import LoadedModel
from mambava.training import RECIPES, TrainConfig, config_items, load_recipe, warm_restarts_lrs
from mambava.training.callbacks import authors_validation_iterations
from mambava.training.data import FoldData
from mambava.training.evaluate import evaluate_videos, evaluate_windows_authors
from mambava.training.module import VADataModule


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
        assert (cfg.loss, cfg.val_check, cfg.data.span, cfg.data.resample) == ("authors", "authors", "crops", False)
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
    paper = TrainConfig()  # the paper recipe keeps mambava's choices
    assert (paper.loss, paper.val_check, paper.data.span, paper.data.resample) == ("ccc", "epoch", "video", True)
    with pytest.raises(MambavaError, match="val_every_n_epochs must be 1"):
        load_recipe("authors", ["val_every_n_epochs=2"])


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
# The parts of the authors' recipe, each on a hand-built case


def test_the_authors_loss_masks_by_valence_only_and_uses_sample_moments():
    """Their CCCLoss (VA/utils/loss.py:24-32) over the frames whose valence is not -5 (vaestimation.py:180-186),
    written out here with numpy from their lines."""
    pred = torch.tensor(
        [[[0.1, 0.3], [0.4, -0.2], [-0.3, 0.5], [0.2, 0.0]], [[0.6, -0.4], [0.0, 0.2], [0.5, 0.1], [9, 9]]]
    )
    target = torch.tensor(
        [[[0.2, 0.1], [-5, -5], [-0.1, 0.6], [0.3, -5]], [[0.5, -0.3], [0.1, 0.4], [-5, 0.2], [0.7, 0.7]]]
    )
    mask = torch.tensor([[True] * 4, [True, True, True, False]])  # the last frame is padding
    # kept: valence != -5 within the mask: (0,0) (0,2) (0,3) (1,0) (1,1); (0,3)'s arousal -5 is a target there
    x = np.array([[0.1, 0.3], [-0.3, 0.5], [0.2, 0.0], [0.6, -0.4], [0.0, 0.2]])
    y = np.array([[0.2, 0.1], [-0.1, 0.6], [0.3, -5.0], [0.5, -0.3], [0.1, 0.4]])
    expected = 0.0
    for d in range(2):
        vx, vy = x[:, d] - x[:, d].mean(), y[:, d] - y[:, d].mean()
        rho = (vx * vy).sum() / (np.sqrt((vx**2).sum()) * np.sqrt((vy**2).sum()) + 1e-8)
        sx, sy = x[:, d].std(ddof=1), y[:, d].std(ddof=1)
        expected += 1 - 2 * rho * sx * sy / (sx**2 + sy**2 + (x[:, d].mean() - y[:, d].mean()) ** 2)
    loss = authors_ccc_loss(pred, target, mask)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    # ours leaves frame (0,3) out (its arousal is -5) and uses population moments: another number
    from mambava.core.metrics import ccc_loss

    assert abs(float(ccc_loss(pred, target, mask)) - expected) > 1e-2
    # fewer than two frames: no NaN, a zero that keeps the graph
    lone = authors_ccc_loss(pred.requires_grad_(), target, torch.zeros(2, 4, dtype=torch.bool))
    assert float(lone.detach()) == 0.0 and lone.requires_grad


def _store_with_gaps(tmp_path):
    """Two videos whose first and last frames have no face (`present` False), at 30 fps."""
    store = FeatureStore(tmp_path / "gaps")
    rng = np.random.default_rng(5)
    x = {"late": rng.integers(-8, 9, size=(14, 3)) / 8, "full": rng.integers(-8, 9, size=(7, 3)) / 8}
    present = {"late": np.zeros(14, bool), "full": np.ones(7, bool)}
    present["late"][[2, 3, 5, 6, 7, 8, 10, 11]] = True  # first face at frame 2, last at 11; 4 and 9 filled
    labels = {n: rng.uniform(-1, 1, size=(len(v), 2)).astype(np.float32) for n, v in x.items()}
    for name in x:
        store.write(name, x[name].astype(np.float32), present[name], fps=30, backbone="hand", dtype="float32")
    return store, x, labels


def test_the_authors_sequences_run_from_the_first_crop_to_before_the_last(tmp_path):
    """construct_VA.py:78-81, 102, 121-122: begin = first crop - 1, end = last crop - 1 (1-based crop numbers),
    features and labels of frames [begin, end); the windows are cut from that sequence."""
    store, x, labels = _store_with_gaps(tmp_path)
    # late: crops 3..12 (1-based) -> frames [2, 11); full: crops 1..7 -> [0, 6)
    assert crop_span(store.read("late").mask, 14) == (2, 11) and crop_span(store.read("full").mask, 7) == (0, 6)
    assert crop_span(store.read("late").mask, 9) == (2, 9)  # capped at the video's length
    assert crop_span(np.zeros(5, bool), 5) == (0, 0) and crop_span(np.eye(1, 5, 3, dtype=bool)[0], 5) == (0, 0)

    ds = WindowDataset(store, ["late", "full"], labels, window=4, stride=2, tails="drop", span="crops")
    # late: 9 frames -> windows of 4 every 2 that fit: starts 0, 2, 4 (6 + 4 > 9); full: 6 frames -> 0, 2
    assert ds.windows == [("late", 0, 4), ("late", 2, 6), ("late", 4, 8), ("full", 0, 4), ("full", 2, 6)]
    assert ds.spans == {"late": (2, 11), "full": (0, 6)}
    item = ds[1]  # late, frames 4..7: frame 4 has no face and holds frame 3's features (the previous crop's)
    held = np.array([x["late"][3], x["late"][5], x["late"][6], x["late"][7]], np.float32)
    assert np.array_equal(item["x"].numpy(), held) and item["present"].tolist() == [False, True, True, True]
    assert np.array_equal(item["y"].numpy(), labels["late"][4:8])
    # the whole-video span (ours) starts at frame 0
    assert WindowDataset(store, ["late"], labels, window=4, stride=2, tails="drop").windows[0] == ("late", 0, 4)

    # the authors' protocol scores the same windows, in their file order (full_0000 before late_0000), cut to
    # whole batches of 2 (late_0002 dropped)
    scored = authors_window_dataset(store, ["late", "full"], labels, 4, 2, batch_size=2)
    assert scored.windows == [("full", 0, 4), ("full", 2, 6), ("late", 0, 4), ("late", 2, 6)]


def test_the_authors_recipe_trains_on_stored_frames_without_resampling(tmp_path):
    """A video stored at 25 fps: `--recipe authors` cuts its stored frames as they are (their code never
    resamples), the paper recipe puts it on the model's 30 fps grid (ours)."""
    store = FeatureStore(tmp_path / "rates")
    rng = np.random.default_rng(2)
    n = 50
    features = rng.normal(size=(n, 8)).astype(np.float32)
    store.write("v25", features, np.ones(n, bool), fps=25, backbone="hand", dtype="float32")
    store.write("v30", features[:20], np.ones(20, bool), fps=30, backbone="hand", dtype="float32")
    labels = {"v25": rng.uniform(-1, 1, size=(n, 2)).astype(np.float32), "v30": np.zeros((20, 2), np.float32)}
    data = FoldData(train=["v25"], validation=["v30"], labels=labels, dim=8, skipped=[])
    sets = ["data.features=" + str(store.root), "model.input_dim=8", *TINY_MODEL, "data.window=10", "data.stride=10"]
    sets.append("eval_batch_size=1")

    authors = VADataModule(load_recipe("authors", [*sets, "data.fold=1", "data.span=video"]), data)
    authors.setup()
    # 50 stored frames, windows of 10 every 10 that fit: starts 0..40 (i < 50 // 10)
    assert authors.train_set.windows == [("v25", s, s + 10) for s in (0, 10, 20, 30, 40)]
    assert np.array_equal(authors.train_set[3]["x"].numpy(), features[30:40])
    ours = VADataModule(load_recipe("paper", sets), data)
    ours.setup()
    # 50 frames at 25 fps last 2 s: 60 ticks of the 30 fps grid
    # 50 frames at 25 fps: the last at 1.96 s falls in tick 58 of the 30 fps grid, so 59 ticks, 6 windows
    assert ours.train_set.lengths == {"v25": 59} and len(ours.train_set.windows) == 6


def test_the_authors_validation_iterations():
    """eval_every = len(train_loader) // 4 + 1 (vaestimation.py:111); validation where iteration % eval_every == 0
    or at the last iteration (228-230), listed by hand."""
    assert authors_validation_iterations(100) == [26, 52, 78, 100]
    assert authors_validation_iterations(13) == [4, 8, 12, 13]
    assert authors_validation_iterations(12) == [4, 8, 12]
    assert authors_validation_iterations(9) == [3, 6, 9]
    assert authors_validation_iterations(4) == [2, 4]
    assert authors_validation_iterations(3) == [1, 2, 3]
    assert authors_validation_iterations(1) == [1]


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

    # The authors': each video's sequence ends before its last crop (every frame has one: a 8 frames, a_right 2,
    # b 5), windows of 4 every 2 that fit (a: 0-4, 2-6, 4-8; a_right too short; b: 0-4), ordered as files
    # a_0000 a_0001 a_0002 b_0000, batches of 2 (all whole); overlapping frames count once per window; valence
    # -5 frames are out.
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
    # training windows: the authors' split of each training video's sequence, which ends before its last crop
    # (every frame has a face here: frames 0..n-2); drop_last: whole batches only
    store = FeatureStore(features)
    train_names = [f"tr{i:02d}" for i in range(6)]
    n_windows = sum(len(split_windows(store.n_frames(n) - 1, 40, 20)) for n in train_names)
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
    # validation at iteration k = every (N // 4 + 1)-th and the last, before its update: after k - 1 updates
    every = steps // 4 + 1
    iterations = [k for k in range(1, steps + 1) if k % every == 0 or k == steps]
    expected = [epoch * steps + k - 1 for epoch in range(2) for k in iterations]
    validations = list(csv.DictReader(open(out / "validations.csv", newline="")))
    assert [int(r["step"]) for r in validations] == expected and len(iterations) >= 3
    best = max(validations, key=lambda r: float(r["val_p_va"]))  # the first of equals, as theirs (strict >)
    assert summary["best"]["step"] == int(best["step"]) and summary["best"]["p_va"] == float(best["val_p_va"])
    assert torch.load(out / "checkpoints/best.ckpt", map_location="cpu", weights_only=True)["global_step"] == int(
        best["step"]
    )
    # metrics.csv: each epoch's row carries its best validation
    rows = {r["epoch"]: r for r in csv.DictReader(open(out / "metrics.csv", newline=""))}
    for epoch in (0, 1):
        of_epoch = [float(r["val_p_va"]) for r in validations if int(r["epoch"]) == epoch]
        assert float(rows[str(epoch)]["val_p_va"]) == max(of_epoch)
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
    val_windows = sum(len(split_windows(store.n_frames(f"va{i:02d}") - 1, 40, 20)) for i in range(4))
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


def test_a_short_epoch_validates_after_the_previous_epochs_last_update(tmp_path):
    """N = 3 batches an epoch: eval_every = 3 // 4 + 1 = 1, so the authors validate before every update,
    iteration 1 included (the weights at the end of the epoch before). Here: after updates 1, 2 of epoch 0,
    after 3 (= before epoch 1's first), 4, 5; never the untrained model, never after the run's last update."""
    from mambava.training.run import train

    features, annotations = write_drift_dataset(
        tmp_path / "data", n_train=12, n_val=2, n_frames=60, dim=8, noise=1.0, scale=20
    )
    # 12 training videos of 55-65 frames, each one window of 40 every 40 -> 12 windows, batches of 4: N = 3
    sets = [f"data.features={features}", f"data.annotations={annotations}", "model.input_dim=8", *TINY_MODEL]
    sets += ["data.window=40", "data.stride=40", "batch_size=4", "eval_batch_size=2", "epochs=2"]
    sets += ["warmup_epochs=1", "progress_bar=false", f"out_dir={tmp_path / 'run'}"]
    cfg = load_recipe("authors", sets)
    summary = train(cfg)
    assert summary["train_windows"] == 12 and summary["global_step"] == 6
    validations = list(csv.DictReader(open(tmp_path / "run" / "validations.csv", newline="")))
    assert [(int(r["epoch"]), int(r["step"])) for r in validations] == [(0, 1), (0, 2), (0, 3), (1, 4), (1, 5)]

    # The same run written out as vaestimation.py:145-255 runs it (same initial weights, batches and dropout
    # seeds): forward, validate at iterations k % 1 == 0 or k == N, then backward, clip, step, and WarmUpLR or
    # CosineAnnealingWarmRestarts stepped. Its validations after the first (the untrained model's) are ours.
    import lightning as L

    from mambava.training.data import mix_seed
    from mambava.training.module import VAModule

    L.seed_everything(42, verbose=False)
    model = VAModule(cfg.to_dict()).model
    data = VADataModule(cfg)
    data.setup()
    loader = data.train_dataloader()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=3e-4, weight_decay=1e-2, eps=1e-7, fused=True)

    class WarmUpLR(torch.optim.lr_scheduler.LRScheduler):  # vaestimation.py:21-41
        def __init__(self, optimizer, total_iters, start_lr):
            self.total_iters, self.start_lr = total_iters, start_lr
            super().__init__(optimizer)

        def get_lr(self):
            return [self.start_lr + b * self.last_epoch / (self.total_iters + 1e-8) for b in self.base_lrs]

    warm = WarmUpLR(optimizer, 3 * 1, start_lr=1e-8)
    cosine = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=2 - 1 + 1, T_mult=2, eta_min=1e-8)
    with warnings.catch_warnings():  # torch warns about their step(0) before any optimizer step
        warnings.simplefilter("ignore")
        warm.step(0)

    def their_valid():  # vaestimation.py:268-324 over the authors' validation windows
        pred, label = [], []
        for first in range(0, len(data.val_set), 2):
            items = [data.val_set[i] for i in range(first, first + 2)]
            out = model(torch.stack([it["x"] for it in items])).reshape(-1, 2).numpy()
            y = torch.stack([it["y"] for it in items]).reshape(-1, 2).numpy()
            pred.append(out[y[:, 0] != -5])
            label.append(y[y[:, 0] != -5])
        pred, label = np.concatenate(pred), np.concatenate(label)
        return sum(direct_ccc(pred[:, d], label[:, d]) for d in range(2)) / 2

    theirs = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        for i, batch in enumerate(loader):
            torch.manual_seed(mix_seed(42, epoch, i, 0))  # our dropout seeds (vaestimation.py has its own stream)
            model.train()
            optimizer.zero_grad()
            loss = authors_ccc_loss(model(batch["x"]), batch["y"], batch["mask"])
            if (i + 1) % (3 // 4 + 1) == 0 or i + 1 == 3:
                with torch.no_grad():
                    model.eval()
                    theirs.append(their_valid())
                    model.train()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            (cosine if epoch >= 1 else warm).step()
    assert len(theirs) == 6
    assert [float(r["val_p_va"]) for r in validations] == pytest.approx(theirs[1:], abs=1e-6)


def test_a_resumed_authors_run_validates_as_an_uninterrupted_one(tmp_path):
    """Killed as its second epoch starts and resumed: the same validations (with N = 3 one of them falls on
    the epoch boundary) and the same best model as the uninterrupted run."""
    import lightning as L

    from mambava.training.run import train

    class Killed(RuntimeError):
        pass

    class Kill(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise Killed("killed")

    features, annotations = write_drift_dataset(tmp_path / "data", n_train=12, n_val=2, n_frames=60, dim=8, noise=1.0)
    sets = [f"data.features={features}", f"data.annotations={annotations}", "model.input_dim=8", *TINY_MODEL]
    sets += ["data.window=40", "data.stride=40", "batch_size=4", "eval_batch_size=2", "epochs=3"]
    sets += ["warmup_epochs=1", "progress_bar=false"]
    straight = train(load_recipe("authors", [*sets, f"out_dir={tmp_path / 'straight'}"]))
    cfg = load_recipe("authors", [*sets, f"out_dir={tmp_path / 'killed'}"])
    with pytest.raises(Killed):
        train(cfg, callbacks=[Kill()])
    resumed = train(cfg, resume=True)
    rows = [list(csv.DictReader(open(tmp_path / run / "validations.csv"))) for run in ("straight", "killed")]
    assert [int(r["step"]) for r in rows[1]] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert rows[0] == rows[1] and resumed["best"] == straight["best"]
