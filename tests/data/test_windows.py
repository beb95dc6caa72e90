import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mambava.data.affwild2 import AffWild2, DataWarning
from mambava.data.store import FeatureStore
from mambava.data.windows import WindowDataset, load_labels, make_windows, pad_window, stitch, window_batch


def test_window_boundaries_follow_the_paper():
    assert make_windows(1000) == [(0, 300), (200, 500), (400, 700), (600, 900), (700, 1000)]
    assert make_windows(950) == [(0, 300), (200, 500), (400, 700), (600, 900), (650, 950)]
    assert make_windows(900) == [(0, 300), (200, 500), (400, 700), (600, 900)]
    assert make_windows(301) == [(0, 300), (1, 301)]
    assert make_windows(300) == [(0, 300)]
    assert make_windows(250) == [(0, 250)]  # shorter than w: one window, padded later
    assert make_windows(0) == []
    assert make_windows(10, window=4, stride=2) == [(0, 4), (2, 6), (4, 8), (6, 10)]
    for bad in ((300, 0), (300, 301), (0, 1)):
        with pytest.raises(ValueError):
            make_windows(100, *bad)


@pytest.mark.parametrize("window, stride", [(300, 200), (7, 3), (5, 5), (4, 1)])
def test_windows_cover_every_frame_with_full_windows(window, stride):
    for n in range(1, 3 * window + 7):
        windows = make_windows(n, window, stride)
        # the paper's floor(n/s)+1 segments, the ones past the end moved back to end at n, duplicates dropped
        starts = sorted({min(i * stride, max(n - window, 0)) for i in range(n // stride + 1)})
        assert windows == [(start, min(start + window, n)) for start in starts]
        assert windows[-1][1] == n
        assert all(stop - start == min(window, n) for start, stop in windows)
        covered = np.zeros(n, int)
        for start, stop in windows:
            covered[start:stop] += 1
        assert covered.min() >= 1


def test_pad_window_masks_padding():
    rows = np.arange(10, dtype=np.float32).reshape(5, 2)
    padded, mask = pad_window(rows, 8, fill=-5)
    assert padded.shape == (8, 2) and mask.tolist() == [True] * 5 + [False] * 3
    assert (padded[5:] == -5).all() and (padded[:5] == rows).all()
    full, mask = pad_window(rows, 5)
    assert full is rows and mask.all()
    with pytest.raises(ValueError):
        pad_window(rows, 4)


@pytest.mark.parametrize("n", [1, 250, 300, 301, 950, 1000, 1234])
def test_stitching_overlapping_windows_gives_back_the_exact_input(n):
    per_frame = np.random.default_rng(n).normal(size=(n, 2)).astype(np.float32)
    x, mask, windows = window_batch(per_frame)
    assert x.shape == (len(windows), 300, 2) and mask.shape == (len(windows), 300)
    assert mask.sum(1).tolist() == [stop - start for start, stop in windows]
    assert (x[~mask] == 0).all()
    garbage = np.where(mask[..., None], x, 1e9)  # padding rows must be ignored
    stitched = stitch(list(garbage), windows, n)
    assert stitched.dtype == np.float32
    np.testing.assert_array_equal(stitched, per_frame)  # exact, not approximately
    np.testing.assert_array_equal(stitch([torch.from_numpy(w) for w in garbage], windows, n), per_frame)


def test_stitch_averages_where_windows_overlap():
    windows = make_windows(10, window=4, stride=2)  # (0,4) (2,6) (4,8) (6,10)
    preds = [np.full((4, 1), float(i)) for i in range(len(windows))]
    out = stitch(preds, windows, 10)[:, 0]
    np.testing.assert_allclose(out, [0, 0, 0.5, 0.5, 1.5, 1.5, 2.5, 2.5, 3, 3])
    with pytest.raises(ValueError, match="frame 4 of 10 is covered by no window"):
        stitch([np.zeros((4, 1)), np.zeros((4, 1))], [(0, 4), (6, 10)], 10)
    with pytest.raises(ValueError, match="2 window predictions for 4 windows"):
        stitch(preds[:2], windows, 10)


def test_stitch_most_history_takes_each_frame_from_the_window_that_started_first():
    """Hand-built: window i predicts 10*i + (its position in the window), so a value says which window it came
    from and how much history the frame had there."""
    windows = make_windows(11, window=5, stride=2)  # (0,5) (2,7) (4,9) (6,11)
    assert windows == [(0, 5), (2, 7), (4, 9), (6, 11)]
    preds = [np.stack([10.0 * i + np.arange(5), -(10.0 * i + np.arange(5))], axis=1) for i in range(len(windows))]
    out = stitch(preds, windows, 11, how="most_history")
    assert out[:, 0].tolist() == [0, 1, 2, 3, 4, 13, 14, 23, 24, 33, 34]
    assert out[:, 1].tolist() == [-v for v in out[:, 0].tolist()]
    # the mean of the same windows, by hand: frames 2-4 are in two or three windows
    mean = stitch(preds, windows, 11, how="mean")[:, 0]
    assert mean.tolist() == [
        0,
        1,
        (2 + 10) / 2,
        (3 + 11) / 2,
        (4 + 12 + 20) / 3,
        (13 + 21) / 2,
        (14 + 22 + 30) / 3,
        (23 + 31) / 2,
        (24 + 32) / 2,
        33,
        34,
    ]
    # the last window moved back to end at the video's end (n=12: (6,11) becomes (7,12))
    windows = make_windows(12, window=5, stride=2)
    assert windows[-1] == (7, 12)
    preds = [np.full((5, 1), float(i)) for i in range(len(windows))]
    assert stitch(preds, windows, 12, how="most_history")[:, 0].tolist() == [0] * 5 + [1] * 2 + [2] * 2 + [3] * 2 + [4]
    with pytest.raises(ValueError, match="stitching must be one of mean, most_history"):
        stitch(preds, windows, 12, how="median")


def test_predict_sequence_stitching_choice_on_a_causal_model():
    """predict_sequence with a model whose output is the frame's position in its window (its history): "mean"
    mixes a fresh window in, "most_history" never gives a frame less history than window - stride."""
    from mambava.data.windows import predict_sequence

    class Position(torch.nn.Module):
        def forward(self, x):
            return torch.arange(x.shape[1], dtype=torch.float32).expand(x.shape[0], -1)[..., None].repeat(1, 1, 2)

    features = torch.zeros(10, 3)
    history = predict_sequence(Position(), features, window=6, stride=2, stitching="most_history")[:, 0]
    assert history.tolist() == [0, 1, 2, 3, 4, 5, 4, 5, 4, 5]  # windows (0,6) (2,8) (4,10)
    mean = predict_sequence(Position(), features, window=6, stride=2)[:, 0]
    assert mean.tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4, 5]


def _store_with(tmp_path, lengths, d=3):
    store = FeatureStore(tmp_path / "features")
    for name, n in lengths.items():
        x = np.arange(n * d, dtype=np.float32).reshape(n, d)
        present = np.ones(n, bool)
        present[1] = False
        store.write(name, x, present, fps=30, backbone="test", dtype="float32")
    return store


def test_window_dataset_items(tmp_path):
    store = _store_with(tmp_path, {"long": 650, "short": 120})
    labels = {
        "long": np.random.default_rng(0).uniform(-1, 1, (650, 2)).astype(np.float32),
        "short": np.full((120, 2), 0.25, np.float32),
    }
    labels["long"][10] = -5
    ds = WindowDataset(store, ["long", "short"], labels)
    assert ds.windows == [("long", 0, 300), ("long", 200, 500), ("long", 350, 650), ("short", 0, 120)]
    item = ds[2]
    assert item["name"] == "long" and item["start"] == 350 and item["length"] == 300
    assert item["x"].shape == (300, 3) and item["x"].dtype == torch.float32
    np.testing.assert_array_equal(item["x"].numpy(), np.arange(350 * 3, 650 * 3).reshape(300, 3))
    np.testing.assert_array_equal(item["y"].numpy(), labels["long"][350:650])
    assert item["mask"].all()
    first = ds[0]
    assert (first["y"][10] == -5).all() and first["mask"][10]  # invalid label: kept, -5, masked by the loss
    assert not first["present"][1] and first["present"][0]  # forward-filled frame
    np.testing.assert_array_equal(first["x"][1].numpy(), first["x"][0].numpy())
    short = ds[3]
    assert short["mask"].tolist() == [True] * 120 + [False] * 180
    assert (short["y"][120:] == -5).all() and (short["y"][:120] == 0.25).all()
    assert (short["x"][120:] == 0).all() and not short["present"][120:].any()
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["x"].shape == (4, 300, 3) and batch["mask"].shape == (4, 300) and batch["name"][3] == "short"
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))  # as sent to DataLoader workers: memory maps are not pickled
    assert clone._records == {} and torch.equal(clone[1]["x"], ds[1]["x"])
    unlabelled = WindowDataset(store, ["short"], window=100, stride=50)
    assert len(unlabelled) == 2 and (unlabelled[0]["y"] == -5).all()


def test_length_mismatch_is_truncated_to_the_shorter(tmp_path):
    store = _store_with(tmp_path, {"a": 310, "b": 300})
    labels = {"a": np.zeros((305, 2), np.float32), "b": np.zeros((320, 2), np.float32)}
    with pytest.warns(DataWarning) as record:
        ds = WindowDataset(store, ["a", "b"], labels)
    assert sorted(str(w.message).split(":")[0] for w in record) == ["a", "b"]
    assert ds.lengths == {"a": 305, "b": 300}
    assert ds.windows == [("a", 0, 300), ("a", 5, 305), ("b", 0, 300)]
    assert ds[1]["mask"].all()


def test_load_labels_aligns_annotations_to_stored_features(affwild2_root, tmp_path):
    data = AffWild2(affwild2_root)
    store = _store_with(tmp_path, {"vidC": 30, "vidD": 27})  # vidD: 27 video frames, 25 annotation lines
    plain = load_labels(data, ["vidC", "vidD"])
    assert plain["vidD"].shape == (25, 2)
    with pytest.warns(DataWarning, match="vidD: annotation has 25 frames but the video/features have 27"):
        aligned = load_labels(data, ["vidC", "vidD"], store)
    np.testing.assert_array_equal(aligned["vidC"], data.read_annotation("vidC"))
    assert aligned["vidD"].shape == (25, 2)
    with pytest.warns(DataWarning, match="vidD"):  # features still 2 frames longer: truncated too
        ds = WindowDataset(store, ["vidC", "vidD"], aligned, window=20, stride=10)
    assert ds.lengths == {"vidC": 30, "vidD": 25} and ds.windows[-1] == ("vidD", 5, 25)


def test_stitching_benchmark_numbers(tmp_path, tiny_mamba_va):
    """`mambava bench stitching`: the largest jump is exact on a hand-built curve, and its "mean" row is the
    score `evaluate` gives (the same windows, the same stitching)."""
    from mambava.benchmarks.stitching import OPTIONS, largest_jump, measure
    from mambava.temporal import load_temporal_model, save_temporal_model
    from mambava.training.evaluate import evaluate_videos

    assert largest_jump(np.array([[0.0, 0.0], [0.1, -0.3], [0.6, -0.2], [0.5, -0.2]])) == pytest.approx(0.5)
    assert largest_jump(np.zeros((1, 2))) == 0.0
    rng = np.random.default_rng(0)
    store = FeatureStore(tmp_path / "features")
    labels = {}
    for name, n in (("a", 700), ("b", 420)):
        x = np.cumsum(rng.normal(size=(n, 24)), axis=0).astype(np.float32) * 0.05
        store.write(name, x, np.ones(n, bool), fps=30, backbone="test", dtype="float32")
        labels[name] = np.tanh(x[:, :2] * 0.5).astype(np.float32)
    save_temporal_model(tiny_mamba_va(), tmp_path / "model.safetensors")
    results = measure(tmp_path / "model.safetensors", store, ["a", "b"], labels)
    assert list(results) == [option for option, _, _ in OPTIONS] == ["mean", "most_history", "full"]
    official = evaluate_videos(
        load_temporal_model(tmp_path / "model.safetensors"), store, ["a", "b"], labels, device="cpu"
    )
    assert results["mean"]["p_va"] == pytest.approx(official.p_va, abs=1e-6)
    assert results["mean"]["p_va"] != pytest.approx(results["full"]["p_va"], abs=1e-6)
