"""Bad arguments and bad files (issue 13, item 6): each is one `error:` line naming the option or the file, exit 2,
never a traceback and never a silent default or a silently smaller set of videos."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from support import run_cli, write_drift_dataset

from mambava.core.errors import MambavaError
from mambava.data.store import FeatureStore

SMALL_MODEL = {"tcn_channels": [16, 16], "d_model": 16, "n_layers": 1, "head_hidden": 8}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A drift feature store (8-d, 2 validation videos), models taking 8-d and 64-d features, a features .npy."""
    from mambava.temporal import build_temporal_model, save_temporal_model

    root = tmp_path_factory.mktemp("inputs")
    features, annotations = write_drift_dataset(root, n_train=6, n_val=2, n_frames=100, dim=8, noise=1.0, scale=20)
    for dim in (8, 64):
        torch.manual_seed(0)
        save_temporal_model(
            build_temporal_model("mamba_va", {"input_dim": dim, **SMALL_MODEL}), root / f"m{dim}.safetensors"
        )
    np.save(root / "f.npy", np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32))
    return {"root": root, "features": features, "annotations": annotations}


def _error(err: str) -> str:
    lines = err.strip().splitlines()
    assert lines and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(
    "option, message",
    [
        (["--window", "-5"], "--window must be >= 1 frame, got -5"),
        (["--stride", "-5"], "--stride must be in 1..window (300), got -5"),
        (["--stride", "0"], "--stride must be in 1..window (300), got 0"),  # was: silently the default 200
        (["--window", "0"], "--window must be >= 1 frame, got 0"),
        (["--window", "10", "--stride", "20"], "--stride must be in 1..window (10), got 20"),
    ],
)
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_window_and_stride_are_checked(command, option, message, setup, tmp_path, capsys):
    if command == "predict":
        args = [
            "predict",
            setup["root"] / "f.npy",
            "-c",
            setup["root"] / "m8.safetensors",
            "-o",
            tmp_path,
            "--no-plots",
        ]
    else:
        args = [
            "evaluate",
            setup["root"] / "m8.safetensors",
            "--features",
            setup["features"],
            "--annotations",
            setup["annotations"],
            "-o",
            tmp_path / "e.csv",
        ]
    code, _, err = run_cli([*args, *option], capsys)
    assert code == 2 and _error(err) == f"error: {message}"


def test_evaluate_names_the_features_of_the_wrong_size(setup, tmp_path, capsys):
    model = setup["root"] / "m64.safetensors"
    code, _, err = run_cli(
        [
            "evaluate",
            model,
            "--features",
            setup["features"],
            "--annotations",
            setup["annotations"],
            "-o",
            tmp_path / "e.csv",
        ],
        capsys,
    )
    assert code == 2
    assert _error(err) == (
        f"error: {setup['features'] / 'va00'}: 8-d features, but the model {model} takes 64-d "
        "(features of another backbone?)"
    )


def _copy_store(setup, tmp_path) -> Path:
    store = tmp_path / "features"
    shutil.copytree(setup["features"], store)
    return store


def test_store_entry_without_mask_is_an_error_not_a_missing_video(setup, tmp_path, capsys):
    store = _copy_store(setup, tmp_path)
    (store / "va01" / "mask.npy").unlink()
    code, _, err = run_cli(
        [
            "evaluate",
            setup["root"] / "m8.safetensors",
            "--features",
            store,
            "--annotations",
            setup["annotations"],
            "-o",
            tmp_path / "e.csv",
        ],
        capsys,
    )
    assert code == 2  # was: va01 silently left out, the score over the other video only
    assert _error(err) == (
        f"error: {store / 'va01'}: damaged feature entry: mask.npy missing beside meta.json "
        "(remove the folder and extract the video again)"
    )
    assert not FeatureStore(store).has("nothing") and FeatureStore(store).has("va00")


def test_store_entry_of_zero_frames_is_an_error(setup, tmp_path, capsys):
    store = _copy_store(setup, tmp_path)
    meta_path = store / "va00" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["n_frames"] = 0
    meta_path.write_text(json.dumps(meta))
    code, _, err = run_cli(
        [
            "evaluate",
            setup["root"] / "m8.safetensors",
            "--features",
            store,
            "--annotations",
            setup["annotations"],
            "-o",
            tmp_path / "e.csv",
        ],
        capsys,
    )
    assert code == 2
    assert _error(err) == f"error: {meta_path}: an empty feature entry (n_frames 0, dim 8); extract the video again"


def test_npy_that_is_text_or_empty_says_so(setup, tmp_path, capsys):
    (tmp_path / "text.npy").write_text("0.1,0.2\n0.3,0.4\n")
    (tmp_path / "empty.npy").write_bytes(b"")
    code, _, err = run_cli(
        [
            "predict",
            tmp_path / "text.npy",
            tmp_path / "empty.npy",
            "-c",
            setup["root"] / "m8.safetensors",
            "-o",
            tmp_path / "out",
        ],
        capsys,
    )
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: {tmp_path / 'text.npy'}: not a .npy file "
        "(no NUMPY header; it is text: save the array with numpy.save)",
        f"error: {tmp_path / 'empty.npy'}: not a .npy file (no NUMPY header; an empty file)",
        "2 of 2 inputs failed",
    ]  # was: "This file contains pickled (object) data. If you trust the file you can load it unsafely ..."


def test_pt_load_errors_do_not_advise_weights_only_false(setup, tmp_path, capsys):
    """A checkpoint holding Python objects (here a numpy array pickled by torch.save) or not a checkpoint at all:
    one short line, without torch's advice to re-run with weights_only=False (that runs code from the file)."""
    torch.save({"state_dict": {"w": np.zeros(3)}}, tmp_path / "objects.pth")
    (tmp_path / "text.pth").write_text("hello\n")
    (tmp_path / "text.ckpt").write_text("0.1 0.2\n")
    expected = {
        "objects.pth": "cannot be read as a torch state_dict (it holds a Python object (numpy._core.multiarray."
        "_reconstruct), not only tensors; mambava loads weights only, never code from a checkpoint: "
        "save its state_dict instead)",
        "text.pth": "cannot be read as a torch state_dict (not a PyTorch weights file)",  # torch: "KeyError: 101"
        "text.ckpt": "not a mambava Lightning checkpoint (not a PyTorch weights file: Unsupported operand 48)",
    }
    for name, message in expected.items():
        code, _, err = run_cli(
            ["predict", setup["root"] / "f.npy", "-c", tmp_path / name, "-o", tmp_path / "out"], capsys
        )
        line = _error(err)
        assert code == 2 and "weights_only" not in err and len(err.strip().splitlines()) == 1
        if name == "objects.pth" and "numpy.core" in line:  # numpy 1.x names the module numpy.core
            message = message.replace("numpy._core", "numpy.core")
        assert line == f"error: {tmp_path / name}: {message}"


def test_backbone_pt_load_error_is_short(tmp_path):
    from mambava.backbone import load_encoder

    path = tmp_path / "vit.pth"
    with open(path, "wb") as handle:
        pickle.dump({"model": {"x": object()}}, handle)
    with pytest.raises(MambavaError) as caught:
        load_encoder(path)
    assert "weights_only" not in str(caught.value) and "\n" not in str(caught.value)
    assert str(caught.value).startswith(f"{path}: cannot be read as a PyTorch checkpoint (")


def test_mae_pretraining_names_a_missing_crop_folder(affwild2_root, tmp_path):
    """find_crop_videos now lists an annotated video without crops (for extract to report): pretraining says so
    too instead of leaving it out."""
    from mambava.backbone import ViTConfig, ViTEncoder
    from mambava.backbone.finetune import pretrain_mae

    shutil.rmtree(affwild2_root / "cropped_aligned" / "vidC")
    encoder = ViTEncoder(ViTConfig(img_size=32, patch_size=16, embed_dim=16, depth=1, num_heads=2, name="t"))
    with pytest.raises(MambavaError, match=r"vidC: no crop folder for video 'vidC'$"):
        pretrain_mae(affwild2_root, encoder, out=tmp_path / "mae", progress=False)
    assert not (tmp_path / "mae" / "mae_pretrain.pth").exists()
