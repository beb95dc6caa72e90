"""`submit write` as the authors' test inference runs: zero features where a frame has no face
(FreedomPuppy77/Charon preprocess/construct_VA_testset.py:51-61) and non-overlapping windows concatenated
(VA/test.py:47-107). The expected values are computed here by hand, not by the code under test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from support import DIM, run_cli

from mambava.core.errors import MambavaError
from mambava.data.store import FeatureStore
from mambava.inference.predict import Predictor, submission_predictions
from mambava.temporal import load_temporal_model


class RunningSum(torch.nn.Module):
    """A 'model' with memory: (B, T, D) -> the running sum over time of its first two columns, so a window
    that starts from an empty state shows in the output."""

    def forward(self, x):
        return torch.cumsum(x[..., :2], dim=1)


def _store(tmp_path):
    store = FeatureStore(tmp_path / "test_store")
    x = (np.arange(1, 9 * 3 + 1, dtype=np.float32).reshape(9, 3) / 200).astype(np.float32)  # sums stay < 1
    present = np.array([0, 1, 1, 0, 1, 1, 1, 0, 1], bool)  # no face in frames 0, 3 and 7
    store.write("vid", x, present, fps=30, backbone="hand", dtype="float32")
    return store, x, present


def test_zero_filled_features_and_chunks_as_the_authors_test_set(tmp_path):
    store, x, present = _store(tmp_path)
    predictor = Predictor(RunningSum(), windowing="chunks", window=4, stride=4)

    zeros = submission_predictions(predictor, store, {"vid": 9}, fill="zeros")["vid"]
    fed = np.where(present[:, None], x[:, :2], 0.0)  # a frame without a face is a zero vector
    expected = np.concatenate([np.cumsum(fed[s : s + 4], axis=0) for s in (0, 4, 8)])  # chunks 4, 4, 1
    assert np.abs(expected).max() < 1 and np.allclose(zeros, expected, atol=1e-6)

    # ours: the last face's features (frame 0, before any face, takes the first face's)
    held = x[[1, 1, 2, 2, 4, 5, 6, 6, 8], :2]
    forward = submission_predictions(predictor, store, {"vid": 9}, fill="forward")["vid"]
    assert np.allclose(forward, np.concatenate([np.cumsum(held[s : s + 4], axis=0) for s in (0, 4, 8)]), atol=1e-6)
    assert not np.allclose(forward, zeros, atol=1e-3)

    # 11 frames in the counts: allowed, the 2 missing ones are zero features, as the authors' zero array
    with pytest.warns(UserWarning, match="zero features fill the rest"):
        padded = submission_predictions(predictor, store, {"vid": 11}, fill="zeros", allow_length_mismatch=True)["vid"]
    fed = np.concatenate([fed, np.zeros((2, 2))])
    expected = np.concatenate([np.cumsum(fed[s : s + 4], axis=0) for s in (0, 4, 8)])
    assert np.allclose(padded, expected, atol=1e-6)
    with pytest.raises(MambavaError, match="--fill must be one of forward, zeros"):
        submission_predictions(predictor, store, {"vid": 9}, fill="mean")


def test_submit_write_the_authors_way(models, tmp_path, capsys):
    rng = np.random.default_rng(4)
    store = FeatureStore(tmp_path / "store")
    n = 11
    features = rng.normal(size=(n, DIM)).astype(np.float32)
    present = rng.random(n) > 0.3
    present[0] = True
    store.write("vidE", features, present, fps=30, backbone="tiny", dtype="float32")
    counts = tmp_path / "counts.csv"
    counts.write_text(f"vidE,{n}\n")
    out = tmp_path / "submission.txt"
    args = ["submit", "write", "-c", models["model"], "--features", store.root, "-o", out, "--frame-counts", counts]
    code, _, err = run_cli([*args, "--fill", "zeros", "--windowing", "chunks", "--window", "5"], capsys)
    assert code == 0, err
    got = np.array([[float(v) for v in line.split(",")[1:]] for line in out.read_text().splitlines()[1:]])
    model = load_temporal_model(models["model"]).model.eval()
    x = torch.from_numpy(np.where(present[:, None], features, 0.0).astype(np.float32))
    with torch.no_grad():  # windows [0, 5) [5, 10) [10, 11), each alone, concatenated, clipped
        expected = torch.cat([model(x[None, s : s + 5])[0] for s in (0, 5, 10)]).clamp(-1, 1).numpy()
    assert got.shape == (n, 2) and np.abs(got - expected).max() < 1e-5
    code, _, err = run_cli([*args, "--fill", "nothing"], capsys)
    assert code == 2 and "--fill must be one of forward, zeros" in err
