"""`mambava distill`: a student learns the teacher's features, its adapter is the least-squares map, its FLOPs are
counted right, and the saved student is an ordinary backbone file for extract/predict/stream."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mambava.backbone import FeatureExtractor, ViTConfig, ViTEncoder, load_encoder, vit_config
from mambava.backbone.distill import DistillConfig, distill, fit_adapter, mean_cosine, student_cls, student_config
from mambava.cli import app
from mambava.data.crops import find_crop_videos

TEACHER = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, name="teacher")


def _smooth_crops(root, videos: int = 6, frames: int = 40, seed: int = 0):
    """A crop tree <root>/vN/NNNNN.png of smooth random 32 px images (4x4 colour blocks plus noise)."""
    rng = np.random.default_rng(seed)
    for v in range(videos):
        folder = root / f"v{v}"
        folder.mkdir(parents=True)
        for f in range(1, frames + 1):
            blocks = np.kron(rng.normal(0, 1, size=(4, 4, 3)), np.ones((8, 8, 1)))
            image = 128 + 50 * blocks + rng.normal(0, 5, size=(32, 32, 3))
            Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / f"{f:05d}.png")
    return root


def _config(**overrides) -> DistillConfig:
    base = dict(
        epochs=20,
        batch_size=32,
        lr=3e-3,
        frames_per_video=None,
        precision="32",
        accelerator="cpu",
        devices=1,
        num_workers=0,
        warmup_fraction=0.1,
    )
    return DistillConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    """(result, teacher, the crop videos) of a 20-epoch distillation of a random 2-block teacher into a 1-block
    16-d student, 5 videos of 40 crops trained, one held out (about 2 s)."""
    root = _smooth_crops(tmp_path_factory.mktemp("crops"))
    videos = find_crop_videos(root)
    torch.manual_seed(0)
    teacher = ViTEncoder(TEACHER).eval()
    student = student_config(teacher.config, embed_dim=16, depth=1)
    out = tmp_path_factory.mktemp("distill")
    result = distill(videos[:5], teacher, student, _config(adapter="joint"), out, heldout=videos[5:], progress=False)
    return result, teacher, videos, out


def test_student_learns_the_teachers_features(distilled):
    result, *_ = distilled
    history = [h["val_cosine"] for h in result.history]
    assert len(history) == 20
    # an untrained student with its (untrained) adapter is far from the teacher; after training it is close
    assert history[0] < 0.5, history
    assert result.heldout_cosine >= 0.97 and result.joint_heldout_cosine == result.heldout_cosine, history
    # the constant (the training targets' mean) scores high by cosine too, but explains none of the variation
    assert result.heldout_explained >= 0.5 and result.mean_cosine < result.heldout_cosine
    assert (result.train_crops, result.heldout_crops) == (200, 40)


def test_closed_form_adapter_refit_helps_on_held_out_crops(distilled, tmp_path):
    _, teacher, videos, _ = distilled
    torch.manual_seed(0)
    student = student_config(teacher.config, embed_dim=16, depth=1)
    result = distill(videos[:5], teacher, student, _config(epochs=8), tmp_path, heldout=videos[5:], progress=False)
    assert result.heldout_cosine >= result.joint_heldout_cosine
    assert result.heldout_cosine >= 0.97 and result.train_cosine >= result.heldout_cosine - 0.01
    assert result.heldout_explained >= 0.7


def test_adapter_closed_form_matches_the_direct_formula():
    rng = np.random.default_rng(0)
    h = torch.from_numpy(rng.normal(size=(200, 6)) * [1, 2, 3, 4, 5, 6] + 3)
    t = torch.from_numpy(rng.normal(size=(200, 4)) + h.numpy() @ rng.normal(size=(6, 4)))
    # ridge 0: ordinary least squares with a bias column
    w, b = fit_adapter(h, t, ridge=0.0)
    x = np.c_[h.numpy(), np.ones(200)]
    coef = np.linalg.lstsq(x, t.numpy(), rcond=None)[0]
    np.testing.assert_allclose(w.numpy(), coef[:6].T, atol=1e-5)
    np.testing.assert_allclose(b.numpy(), coef[6], atol=1e-5)
    # ridge > 0: the normal equations of [H 1] with lam on the weights only (the bias is not penalised)
    w, b = fit_adapter(h, t, ridge=0.1)
    hc = h.numpy() - h.numpy().mean(0)
    lam = 0.1 * np.trace(hc.T @ hc) / 6
    penalty = np.diag([lam] * 6 + [0.0])
    coef = np.linalg.solve(x.T @ x + penalty, x.T @ t.numpy())
    np.testing.assert_allclose(w.numpy(), coef[:6].T, atol=1e-5)
    np.testing.assert_allclose(b.numpy(), coef[6], atol=1e-4)


def test_flop_count_by_hand_and_by_torch():
    from torch.utils.flop_counter import FlopCounterMode

    cfg = ViTConfig(img_size=32, patch_size=16, embed_dim=8, depth=1, num_heads=2, out_dim=3)
    # 4 patches + CLS = 5 tokens, D 8, MLP 32: multiply-adds of qkv 5*8*24, proj 5*8*8, fc1 and fc2 5*8*32 each,
    # q.k and a.v 5*5*8 each, patch projection 4*(3*16*16)*8, adapter 8*3
    macs = 5 * 8 * 24 + 5 * 8 * 8 + 2 * 5 * 8 * 32 + 2 * 5 * 5 * 8 + 4 * 768 * 8 + 8 * 3
    assert cfg.flops() == 2 * macs == 57680
    # torch's counter sees the linears and the convolution (not the fused attention on CPU)
    for config in (cfg, ViTConfig(img_size=80, patch_size=16, embed_dim=128, depth=4, num_heads=2)):
        with FlopCounterMode(display=False) as counter:
            ViTEncoder(config).eval()(torch.zeros(1, 3, config.img_size, config.img_size))
        tokens = config.grid**2 + 1
        assert counter.get_total_flops() + config.depth * 2 * 2 * tokens * tokens * config.embed_dim == config.flops()
    assert vit_config("vit_large_patch16").flops() == 123_107_377_152  # the 123 GFLOP usually quoted


def test_distilled_backbone_loads_like_any_backbone(distilled, tmp_path):
    result, teacher, videos, out = distilled
    loaded = load_encoder(result.student_path)  # the loader extract, predict and stream use
    assert loaded.load_report.format == "mambava" and loaded.feature_dim == teacher.feature_dim == 32
    assert loaded.config.out_dim == 32 and loaded.config.embed_dim == 16
    # the same features as the student's normed CLS token through the adapter, computed directly
    crops = np.stack([np.asarray(Image.open(videos[5].path(k))) for k in range(8)])
    got = FeatureExtractor(loaded, device="cpu", precision="fp32").features(crops)
    images = torch.from_numpy(crops).permute(0, 3, 1, 2)
    direct = student_cls(loaded, images) @ loaded.adapter.weight.detach().T + loaded.adapter.bias.detach()
    np.testing.assert_allclose(got, direct.numpy(), atol=1e-5)
    # and `extract -c` stores them
    store = tmp_path / "store"
    cli = CliRunner().invoke(
        app,
        [
            "extract",
            str(videos[5].folder.parent),
            "-o",
            str(store),
            "-c",
            str(result.student_path),
            "--dtype",
            "float32",
            "--workers",
            "0",
            "--video",
            "v5",
            "--precision",
            "fp32",
        ],
    )
    assert cli.exit_code == 0, cli.output
    stored = np.load(store / "v5" / "features.npy")
    assert stored.shape == (40, 32)
    np.testing.assert_allclose(stored[:8], got, atol=1e-5)
    assert mean_cosine(
        stored,
        FeatureExtractor(teacher, precision="fp32").features(
            np.stack([np.asarray(Image.open(videos[5].path(k))) for k in range(40)])
        ),
    ) == pytest.approx(result.heldout_cosine, abs=5e-3)


def test_cli_distills_and_scores_the_temporal_model(crop_tree, tmp_path, tiny_mamba_va):
    torch.manual_seed(0)
    teacher = ViTEncoder(ViTConfig(img_size=16, patch_size=8, embed_dim=24, depth=1, num_heads=2, name="t"))
    teacher.save(tmp_path / "teacher.safetensors")
    tiny_mamba_va(24).save(tmp_path / "model.safetensors")
    out = tmp_path / "out"
    cli = CliRunner().invoke(
        app,
        [
            "distill",
            str(crop_tree),
            "-t",
            str(tmp_path / "teacher.safetensors"),
            "-o",
            str(out),
            "--student",
            "teacher",
            "--embed-dim",
            "8",
            "--heads",
            "1",
            "-m",
            str(tmp_path / "model.safetensors"),
            "--epochs",
            "2",
            "-j",
            "0",
            "--finetune-temporal",
            "1",
            "--finetune-lr",
            "1e-2",
            "--accelerator",
            "cpu",
            "--precision",
            "fp32",
        ],
    )
    assert cli.exit_code == 0, cli.output + repr(cli.exception)
    report = json.loads((out / "report.json").read_text())
    # the Validation_Set is held out; P_VA with each backbone's features, scored on the same frames
    assert report["heldout_videos"] == ["vidC", "vidD"]
    assert report["p_va"]["teacher"]["frames"] == report["p_va"]["student"]["frames"] > 0
    assert report["teacher_gflop"] > report["student_gflop"] > 0
    assert load_encoder(out / "student.safetensors").feature_dim == 24
    assert "P_VA" in cli.output and "ms/frame" in cli.output
    # --finetune-temporal: the temporal model, trained further on the student's Train_Set features, is another
    # model, scored on the same held-out features (as evaluating the saved file gives)
    from mambava.data.store import FeatureStore
    from mambava.temporal import load_temporal_model
    from mambava.training.distill import temporal_p_va

    tuned = load_temporal_model(report["temporal_student"]).model.state_dict()
    original = load_temporal_model(tmp_path / "model.safetensors").model.state_dict()
    assert any(not torch.equal(tuned[k], original[k]) for k in original)
    labels = {
        n: np.loadtxt(
            crop_tree / "VA_Estimation_Challenge" / "Validation_Set" / f"{n}.txt",
            delimiter=",",
            skiprows=1,
            dtype=np.float32,
        )
        for n in ("vidC", "vidD")
    }
    again = temporal_p_va(
        report["temporal_student"], {"s": FeatureStore(out / "heldout_student")}, ["vidC", "vidD"], labels
    )["s"]
    assert report["p_va"]["student_finetuned"]["p_va"] == pytest.approx(again["p_va"], abs=1e-9)
    assert "fine-tuned on the student's features" in cli.output


def test_cli_one_line_errors(tmp_path, monkeypatch, capsys):
    from mambava.cli import main

    (tmp_path / "empty").mkdir()
    teacher = tmp_path / "teacher.safetensors"
    ViTEncoder(TEACHER).save(teacher)
    out = ["-o", str(tmp_path / "o")]
    tree = _smooth_crops(tmp_path / "tree", videos=2, frames=2)  # crops without labels
    cases = [
        ([str(tmp_path / "empty")], "pass --teacher"),
        (
            [str(tmp_path / "empty"), "-t", str(tmp_path / "nope.safetensors")],
            "nope.safetensors: teacher backbone not found",
        ),
        ([str(tmp_path / "empty"), "-t", str(teacher), *out], "empty: no crop folders"),
        ([str(tmp_path / "absent"), "-t", str(teacher), *out], "absent: no such file or folder"),
        ([str(tree), "-t", str(teacher), "-m", str(teacher), *out], "--model needs labels"),
        ([str(tree), "-t", str(teacher), "--finetune-temporal", "1", *out], "--finetune-temporal needs --model"),
    ]
    for args, message in cases:
        monkeypatch.setattr(sys, "argv", ["mambava", "distill", *args])
        with pytest.raises(SystemExit) as info:
            main()
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert info.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
        assert message in lines[0], err


def test_targets_from_the_teachers_feature_store_equal_running_the_teacher(distilled, tmp_path):
    from mambava.backbone.distill import crop_items, store_features, teacher_features
    from mambava.backbone.extract import extract_features
    from mambava.core.errors import MambavaError
    from mambava.data.store import FeatureStore

    _, teacher, videos, _ = distilled
    store = FeatureStore(tmp_path / "store")
    extract_features(
        videos[:2], store, FeatureExtractor(teacher, precision="fp32"), dtype="float32", workers=0, progress=False
    )
    items = crop_items(videos[:2], 7)
    assert [row for _, row, _ in items[:3]] == [0, 6, 13] and len(items) == 14
    ran = teacher_features(FeatureExtractor(teacher, precision="fp32"), [p for *_, p in items], _config())
    np.testing.assert_allclose(store_features(store, items), ran, atol=1e-6)
    with pytest.raises(MambavaError, match="no features for video 'v5'"):
        store_features(store, crop_items(videos[5:], 2))


def test_videos_go_through_the_faces_stage(media_dir, tmp_path):
    from mambava.training.distill import crops_of, split_videos

    videos, dataset = crops_of(media_dir / "single_face.mp4", tmp_path)
    assert dataset is None and [v.name for v in videos] == ["single_face"] and len(videos[0].frames) == 72
    assert (tmp_path / "crops" / "single_face.faces.csv").is_file()
    assert split_videos(videos) == (videos, [])  # one video: nothing to hold out
