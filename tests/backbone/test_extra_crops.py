"""Training on several aligners' crops of the same faces: `FinetuneConfig.extra_crops` (backbone fine-tuning)
and `data.extra_features` (temporal training) take the same videos from more crop roots / feature stores,
labelled from the main root."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from support import finetune_config, make_va_tree

from mambava.backbone import ViTConfig, ViTEncoder
from mambava.backbone.finetune import extra_crops_dir, finetune, labelled_frames
from mambava.core.errors import MambavaError
from mambava.data.affwild2 import AffWild2
from mambava.data.store import FeatureStore
from mambava.training import load_config
from mambava.training.module import VADataModule

SPLITS = {"Train_Set": ["t1", "t2"], "Validation_Set": ["v1"]}


def _second_aligner(root, out, layout_root: bool):
    """A copy of `root`'s crops as another aligner would leave them: frame 7 of every video not found. As a
    dataset root (`out/cropped_aligned/<v>/`) or a plain crop tree (`out/<v>/`)."""
    crops = out / "cropped_aligned" if layout_root else out
    shutil.copytree(root / "cropped_aligned", crops)
    for folder in crops.iterdir():
        (folder / "00007.png").unlink()
    return out


@pytest.mark.parametrize("layout_root", [True, False])
def test_finetune_reads_every_crop_root_with_the_main_roots_labels(tmp_path, layout_root):
    # 12 frames: frame 3 labelled -5, frame 5 without a crop -> 10 per video; the second aligner lacks frame 7 too
    root = make_va_tree(tmp_path / "aw", SPLITS, n_frames=12)
    other = _second_aligner(root, tmp_path / "ours", layout_root)
    dataset = AffWild2(root)
    for video in ("t1", "t2"):
        folder = extra_crops_dir(other, video)
        assert folder == (other / "cropped_aligned" / video if layout_root else other / video)
        items = labelled_frames(dataset, video, None, folder)
        assert [int(p.stem) for p, _ in items] == [1, 2, 4, 6, 8, 9, 10, 11, 12]
        assert all(p.parent == folder for p, _ in items)
        labels = dataset.read_annotation(video)
        np.testing.assert_array_equal(np.stack([y for _, y in items]), labels[[0, 1, 3, 5, 7, 8, 9, 10, 11]])
    torch.manual_seed(0)
    encoder = ViTEncoder(ViTConfig(img_size=32, patch_size=16, embed_dim=16, depth=2, num_heads=2, name="t2"))
    finetune(
        root,
        encoder,
        finetune_config(freeze_blocks=1, max_steps=1, extra_crops=(str(other),)),
        out=tmp_path / "out",
        progress=False,
    )
    written = json.loads((tmp_path / "out" / "finetune.json").read_text())
    assert (written["train_frames"], written["val_frames"]) == (2 * 10 + 2 * 9, 10)  # validation: main root only
    assert written["config"]["extra_crops"] == [str(other)]


def test_finetune_names_a_missing_extra_crop_folder(tmp_path):
    root = make_va_tree(tmp_path / "aw", SPLITS, n_frames=8)
    other = _second_aligner(root, tmp_path / "ours", True)
    shutil.rmtree(other / "cropped_aligned" / "t2")
    encoder = ViTEncoder(ViTConfig(img_size=32, patch_size=16, embed_dim=16, depth=2, num_heads=2, name="t2"))
    with pytest.raises(MambavaError, match=rf"^{other / 'cropped_aligned' / 't2'}: no crop folder for video 't2'$"):
        finetune(
            root,
            encoder,
            finetune_config(freeze_blocks=1, max_steps=1, extra_crops=(str(other),)),
            out=tmp_path / "out",
            progress=False,
        )


def _stores(tmp_path, dim=4, n=40):
    """Two stores of the same videos (the validation video in the main one only), distinguishable by sign."""
    main, extra = FeatureStore(tmp_path / "main"), FeatureStore(tmp_path / "extra")
    for name in ("t1", "t2", "v1"):
        x = np.arange(n * dim, dtype=np.float32).reshape(n, dim) + 1
        main.write(name, x, np.ones(n, bool), fps=30.0, backbone="t", dtype="float32")
        if name != "v1":
            extra.write(name, -x, np.ones(n, bool), fps=30.0, backbone="t", dtype="float32")
    return main, extra


def test_training_windows_come_from_every_store_with_the_same_labels(tmp_path):
    root = make_va_tree(tmp_path / "aw", SPLITS, n_frames=40)
    main, extra = _stores(tmp_path)
    cfg = load_config(
        None,
        [
            f"data.features={main.root}",
            f"data.annotations={root}",
            f"data.extra_features=[{extra.root}]",
            "data.window=16",
            "data.stride=8",
            "data.n_folds=2",
            "model.input_dim=4",
        ],
    )
    assert cfg.data.extra_features == [str(extra.root)]
    data = VADataModule(cfg)
    data.setup()
    # 40 frames, window 16, stride 8: starts 0, 8, 16, 24 -> 4 windows a video, 2 videos, 2 stores
    assert len(data.train_set) == 16
    assert data.val_set.names == ["v1"]
    labels = AffWild2(root)
    for i in range(16):
        item = data.train_set[i]
        x = FeatureStore(main.root).read(item["name"]).window(item["start"], item["start"] + 16)[0]
        np.testing.assert_array_equal(item["x"].numpy(), x if i < 8 else -x)  # the main store's, then the extra's
        y = labels.read_annotation(item["name"])[item["start"] : item["start"] + 16]
        np.testing.assert_array_equal(item["y"].numpy(), np.where((y == -5).any(1, keepdims=True), -5, y))
    # without extra stores: the main store's 8 windows only
    plain = VADataModule(
        load_config(
            None,
            [
                f"data.features={main.root}",
                f"data.annotations={root}",
                "data.window=16",
                "data.stride=8",
                "data.n_folds=2",
                "model.input_dim=4",
            ],
        )
    )
    plain.setup()
    assert len(plain.train_set) == 8


def test_extra_store_errors_name_the_store(tmp_path):
    root = make_va_tree(tmp_path / "aw", SPLITS, n_frames=40)
    main, extra = _stores(tmp_path)
    base = [
        f"data.features={main.root}",
        f"data.annotations={root}",
        "data.window=16",
        "data.stride=8",
        "data.n_folds=2",
    ]
    narrow = FeatureStore(tmp_path / "narrow")
    for name in ("t1", "t2"):
        narrow.write(name, np.zeros((40, 3), np.float32), np.ones(40, bool), fps=30.0, backbone="t", dtype="float32")
    with pytest.raises(MambavaError, match=rf"^{narrow.root}: features are \[3\]-d, data.features' are 4-d"):
        VADataModule(load_config(None, base + [f"data.extra_features=[{narrow.root}]"])).setup()
    with pytest.raises(MambavaError, match=rf"^{tmp_path / 'none'}: feature store not found"):
        VADataModule(load_config(None, base + [f"data.extra_features=[{tmp_path / 'none'}]"])).setup()
    partial = FeatureStore(tmp_path / "partial")
    partial.write("t1", np.zeros((40, 4), np.float32), np.ones(40, bool), fps=30.0, backbone="t", dtype="float32")
    with pytest.raises(MambavaError, match=rf"^{partial.root}: no features for training video 't2' \(1 of 2 missing"):
        VADataModule(load_config(None, base + [f"data.extra_features=[{partial.root}]"])).setup()


def test_cli_finetune_takes_repeated_extra_crop_roots(tmp_path):
    from typer.testing import CliRunner

    from mambava.cli import app

    root = make_va_tree(tmp_path / "aw", SPLITS, n_frames=12)
    first, second = _second_aligner(root, tmp_path / "a", True), _second_aligner(root, tmp_path / "b", False)
    checkpoint = ViTEncoder(ViTConfig(img_size=32, patch_size=16, embed_dim=16, depth=2, num_heads=2, name="t2")).save(
        tmp_path / "start.safetensors"
    )
    result = CliRunner().invoke(
        app,
        [
            "finetune-backbone",
            str(root),
            "-c",
            str(checkpoint),
            "-j",
            "0",
            "--precision",
            "32",
            "--accelerator",
            "cpu",
            "--devices",
            "1",
            "--freeze-blocks",
            "1",
            "--max-steps",
            "1",
            "--extra-crops",
            str(first),
            "--extra-crops",
            str(second),
            "-o",
            str(tmp_path / "ft"),
        ],
    )
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "ft" / "finetune.json").read_text())
    assert written["train_frames"] == 2 * 10 + 2 * 2 * 9 and written["config"]["extra_crops"] == [
        str(first),
        str(second),
    ]
    result = CliRunner().invoke(
        app,
        [
            "finetune-backbone",
            str(root),
            "-c",
            str(checkpoint),
            "--accelerator",
            "cpu",
            "--extra-crops",
            str(tmp_path / "none"),
            "-o",
            str(tmp_path / "ft2"),
        ],
    )
    assert isinstance(result.exception, MambavaError)  # the CLI's entry point makes it one line, exit code 2
    assert str(result.exception) == f"{tmp_path / 'none' / 't1'}: no crop folder for video 't1'"
