"""NaN/Inf (issue 13, item 2): a diverged model or absurd features are stopped with one line, never scored.

- `train` stops at the first non-finite training loss, weight or validation score with an error naming the
  epoch and step, keeps the checkpoints of the earlier good epochs and writes no NaN checkpoint or model;
- `evaluate`, `predict`, `stream` and `submit write` refuse a model whose output is NaN/Inf, naming the video
  and the first bad frame;
- a NaN metric is never printed as a number.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning  # noqa: F401  (imported here, not first under capsys: its log handler would keep a closed stream)
import numpy as np
import pytest
import torch
from support import TINY_MODEL, run_cli, run_config, write_drift_dataset

from mambava.core.errors import MambavaError
from mambava.data.store import FeatureStore
from mambava.training import read_metrics, train

COMMON = [*TINY_MODEL, "model.input_dim=8", "warmup_epochs=0", "batch_size=3", "progress_bar=false"]


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    """6 train + 4 validation videos of ~150 frames, 8-d features (test_train's drift data)."""
    return write_drift_dataset(
        tmp_path_factory.mktemp("nan"), n_train=6, n_val=4, n_frames=150, dim=8, noise=1.0, scale=20
    )


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory) -> Path:
    """A tiny Mamba-VA on 8-d features whose head bias is NaN (what lr=1e12 leaves behind), saved as safetensors."""
    from mambava.temporal import build_temporal_model, save_temporal_model

    torch.manual_seed(0)
    model = build_temporal_model(
        "mamba_va", {"input_dim": 8, "tcn_channels": [16, 16], "d_model": 16, "n_layers": 1, "head_hidden": 8}
    )
    last = [p for p in model.parameters()][-1]
    with torch.no_grad():
        last.fill_(float("nan"))
    path = tmp_path_factory.mktemp("nanmodel") / "model.safetensors"
    save_temporal_model(model, path)
    return path


@pytest.fixture(scope="module")
def good_model(tmp_path_factory) -> Path:
    from mambava.temporal import build_temporal_model, save_temporal_model

    torch.manual_seed(0)
    model = build_temporal_model(
        "mamba_va", {"input_dim": 8, "tcn_channels": [16, 16], "d_model": 16, "n_layers": 1, "head_hidden": 8}
    )
    path = tmp_path_factory.mktemp("goodmodel") / "model.safetensors"
    save_temporal_model(model, path)
    return path


# ---------------------------------------------------------------------------------------------------------
# train


def test_train_lr_1e12_stops_at_the_first_nan_loss_with_one_line(data, tmp_path, capsys):
    features, annotations = data
    out = tmp_path / "run"
    sets = [
        f"data.features={features}",
        f"data.annotations={annotations}",
        *COMMON,
        "epochs=3",
        "lr=1e12",
        "grad_clip=0",
    ]
    code, stdout, err = run_cli(["train", "-o", out, *[a for s in sets for a in ("--set", s)]], capsys)
    assert code == 2
    line = _one_error_line(err)
    # step 1 is finite (the weights are still the initial ones); its update of 1e12 makes step 2's loss NaN
    assert line == (
        f"error: {out}: training stopped at epoch 1, step 2: training loss is nan (the model diverged: "
        "lower lr, or set grad_clip > 0); no epoch finished before, so no checkpoint was saved"
    )
    assert "P_VA" not in stdout
    assert not (out / "checkpoints").exists() and not (out / "model.safetensors").exists()
    assert not (out / "summary.json").exists()


class _PoisonAt:
    """Sets one weight to NaN at the start of epoch `epoch` (0-based): a divergence after good epochs."""

    def __new__(cls, epoch: int):
        import lightning as L

        class Poison(L.Callback):
            def on_train_epoch_start(self, trainer, pl_module):
                if trainer.current_epoch == epoch:
                    with torch.no_grad():
                        next(pl_module.model.parameters()).view(-1)[0] = float("nan")

        return Poison()


def test_train_keeps_the_good_epochs_checkpoints_and_saves_no_nan_one(data, tmp_path):
    features, annotations = data
    out = tmp_path / "run"
    cfg = run_config(features, annotations, out, *COMMON, "epochs=4")
    with pytest.raises(MambavaError) as caught:
        train(cfg, callbacks=[_PoisonAt(2)])
    message = str(caught.value)
    # 6 videos of ~150 frames -> 6 windows (w 300: one per video) -> 2 steps per epoch; epoch 3's first step is 5
    assert message.startswith(f"{out}: training stopped at epoch 3, step 5: training loss is nan (the model diverged")
    rows = read_metrics(out / "metrics.csv")
    assert [r["epoch"] for r in rows] == [0, 1]
    best = max(rows, key=lambda r: r["val_p_va"])
    assert message.endswith(
        f"kept the checkpoints of the earlier epochs: {out / 'checkpoints/best.ckpt'}, {out / 'checkpoints/last.ckpt'} "
        f"(best: epoch {best['epoch'] + 1}, P_VA {best['val_p_va']:.4f})"
    )
    last = torch.load(out / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 1 and last["global_step"] == 4
    for name in ("best.ckpt", "last.ckpt"):
        state = torch.load(out / "checkpoints" / name, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values()), name
    assert not (out / "summary.json").exists() and not (out / "model.safetensors").exists()


def test_train_weights_gone_nan_at_an_epoch_end_are_not_checkpointed(data, tmp_path):
    """No validation after epoch 2 (val every 2 epochs): the parameter check at the epoch's end stops it."""
    import lightning as L

    class PoisonAfterLastStep(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.current_epoch == 2 and batch_idx == 1:
                with torch.no_grad():
                    next(pl_module.model.parameters()).view(-1)[0] = float("inf")

    features, annotations = data
    out = tmp_path / "run"
    cfg = run_config(features, annotations, out, *COMMON, "epochs=4", "val_every_n_epochs=2")
    with pytest.raises(
        MambavaError, match=r"training stopped at epoch 3, step 6: parameter temporal\.\S+ is not finite"
    ):
        train(cfg, callbacks=[PoisonAfterLastStep()])
    assert torch.load(out / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)["epoch"] == 1


def test_train_on_features_of_1e30_stops_with_one_line(tmp_path):
    features, annotations = write_drift_dataset(tmp_path, n_train=3, n_val=2, n_frames=120, dim=8, noise=1.0, scale=20)
    store = FeatureStore(features)
    for name in ("tr00", "tr01", "tr02"):
        n = store.n_frames(name)
        store.write(
            name, np.full((n, 8), 1e30, np.float32), np.ones(n, bool), fps=30.0, backbone="drift", dtype="float32"
        )
    cfg = run_config(features, annotations, tmp_path / "run", *COMMON, "epochs=2")
    with pytest.raises(
        MambavaError, match=r"training stopped at epoch 1, step 1: training loss is nan .*no checkpoint"
    ):
        train(cfg)


# ---------------------------------------------------------------------------------------------------------
# evaluate, predict, stream, submit


def test_evaluate_refuses_a_nan_model_naming_video_and_frame(data, nan_model, tmp_path, capsys):
    features, annotations = data
    code, stdout, err = run_cli(
        ["evaluate", nan_model, "--features", features, "--annotations", annotations, "--out", tmp_path / "e.csv"],
        capsys,
    )
    assert code == 2 and stdout.strip() == ""  # (the progress bar leaves a newline)
    assert _one_error_line(err) == (
        f"error: {nan_model}: the model's output is not finite (nan, nan) for video va00, frame 0 "
        f"({FeatureStore(features).n_frames('va00')} of {FeatureStore(features).n_frames('va00')} frames); "
        "refusing to score it (a diverged model, e.g. trained with too high a learning rate)"
    )
    assert not (tmp_path / "e.csv").exists()


def test_predict_refuses_nan_outputs_and_goes_on_with_the_other_inputs(nan_model, good_model, tmp_path, capsys):
    rng = np.random.default_rng(0)
    good = tmp_path / "good.npy"
    np.save(good, rng.normal(size=(40, 8)).astype(np.float32))
    huge = tmp_path / "huge.npy"
    array = rng.normal(size=(40, 8)).astype(np.float32)
    array[:3] = np.nan  # no-face rows: the first face is at frame 3
    array[3:] = 1e30
    np.save(huge, array)

    code, stdout, err = run_cli(["predict", good, huge, "-c", good_model, "-o", tmp_path / "out", "--no-plots"], capsys)
    assert code == 2
    assert (tmp_path / "out/good.csv").is_file() and not (tmp_path / "out/huge.csv").exists()
    lines = err.strip().splitlines()
    assert lines[0].startswith(f"error: {good_model}: the model's output is not finite (")
    assert ") for video huge, frame 0 (40 of 40 frames); refusing to score it (the features reach 1e+30" in lines[0]
    assert lines[-1] == "1 of 2 inputs failed" and "Traceback" not in err

    code, stdout, err = run_cli(["predict", good, "-c", nan_model, "-o", tmp_path / "out2", "--no-plots"], capsys)
    assert code == 2 and not (tmp_path / "out2/good.csv").exists()
    assert err.strip().splitlines() == [
        f"error: {nan_model}: the model's output is not finite (nan, nan) for video good, frame 0 (40 of 40 frames); "
        "refusing to score it (a diverged model, e.g. trained with too high a learning rate)",
        "1 of 1 inputs failed",
    ]


def test_stream_refuses_a_nan_model(nan_model, tmp_path, capsys):
    path = tmp_path / "f.npy"
    np.save(path, np.random.default_rng(0).normal(size=(10, 8)).astype(np.float32))
    code, stdout, err = run_cli(["stream", path, "-c", nan_model, "--quiet"], capsys)
    assert code == 2
    assert _one_error_line(err) == (
        "error: the model's output is not finite (nan, nan) for track f, frame 0: a diverged model, or features it "
        "was not trained on"
    )


def test_submission_refuses_a_nan_model(data, nan_model):
    from mambava.inference.predict import Predictor, submission_predictions

    features, _ = data
    with pytest.raises(MambavaError, match=r"not finite \(nan, nan\) for video va01, frame 0 "):
        submission_predictions(Predictor(nan_model), features, {"va01": 151})  # its stored frames: no mismatch


# ---------------------------------------------------------------------------------------------------------
# metrics


def test_nan_ccc_is_nan_and_printed_as_undefined():
    from mambava.cli.train import _score
    from mambava.core.metrics import ccc_numpy, va_scores

    target = np.linspace(-1, 1, 20)
    assert math.isnan(ccc_numpy(np.full(20, np.nan), target))  # was 0.0: a NaN model read as a weak one
    assert math.isnan(ccc_numpy(np.full(20, np.inf), target))
    assert ccc_numpy(np.zeros(20), np.zeros(20)) == 0.0  # no variance at all stays 0 (defined by convention)
    scores = va_scores(np.full((20, 2), np.nan), np.stack([target, target], 1))
    assert math.isnan(scores["p_va"])
    assert [_score(v) for v in (0.51234, float("nan"), float("inf"), None)] == [
        "0.5123",
        "undefined",
        "undefined",
        "undefined",
    ]
