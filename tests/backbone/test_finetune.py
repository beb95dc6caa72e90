"""Partial-freeze fine-tuning: frozen layers stay bit-identical, the top ones learn VA from crops."""

import torch
from support import finetune_config, make_va_tree

from mambava.backbone import ViTConfig, ViTEncoder, load_encoder
from mambava.backbone.finetune import finetune, freeze_prefix


def test_frozen_prefix_is_bit_identical_after_training(tmp_path):
    root = make_va_tree(tmp_path / "aw", {"Train_Set": ["t1", "t2"]}, n_frames=12)
    torch.manual_seed(0)
    encoder = ViTEncoder(ViTConfig(img_size=32, patch_size=16, embed_dim=16, depth=24, num_heads=2, name="t24"))
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    assert len(freeze_prefix(ViTEncoder(encoder.config), 16)) == 8 * 12 + 2  # 8 blocks of 12 tensors + norm
    result = finetune(
        root, encoder, finetune_config(freeze_blocks=16, max_steps=2, lr=1e-3), out=tmp_path / "out", progress=False
    )
    after = encoder.state_dict()
    frozen = [
        k
        for k in after
        if k.startswith(("patch_embed.", "cls_token", "pos_embed"))
        or (k.startswith("blocks.") and int(k.split(".")[1]) < 16)
    ]
    assert len(frozen) == 4 + 16 * 12
    for key in frozen:
        assert torch.equal(after[key], before[key]), key
    for i in range(16, 24):
        changed = [k for k in after if k.startswith(f"blocks.{i}.") and not torch.equal(after[k], before[k])]
        assert len(changed) == 12, (i, changed)  # every tensor of every trained block moved
    assert not torch.equal(after["norm.weight"], before["norm.weight"])
    # the exported encoder (no validation set: the last one) is what `extract -c` loads
    exported = load_encoder(result.encoder_path)
    assert all(torch.equal(v, after[k]) for k, v in exported.state_dict().items())
    assert result.trainable_parameters < result.frozen_parameters


def test_finetuning_learns_va_from_crops(tmp_path):
    root = make_va_tree(tmp_path / "aw", {"Train_Set": ["t1", "t2", "t3", "t4"], "Validation_Set": ["v1"]}, n_frames=40)
    torch.manual_seed(0)
    encoder = ViTEncoder(ViTConfig(img_size=32, patch_size=16, embed_dim=32, depth=4, num_heads=2, name="t4"))
    config = finetune_config(
        freeze_blocks=2, epochs=3, batch_size=16, lr=1e-3, head_lr=3e-3, precision="bf16-mixed", head_hidden=64
    )
    result = finetune(root, encoder, config, out=tmp_path / "out", progress=False)
    assert [h["epoch"] for h in result.history] == [0, 1, 2]
    # an untrained head scores ~0; the labels are a (noisy) function of the crops' colour
    assert result.best_val_pva > 0.8, result.history
    assert (tmp_path / "out" / "finetune.json").is_file()


def test_cli_finetune_then_mae_pretraining_round_trip(tmp_path):
    """finetune-backbone and pretrain-backbone from the command line; MAE pretraining lowers the masked
    reconstruction loss and writes a facebookresearch/mae checkpoint that load_encoder reads back."""
    from typer.testing import CliRunner

    from mambava.cli import app

    root = make_va_tree(tmp_path / "aw", {"Train_Set": ["t1", "t2"]}, n_frames=16)
    torch.manual_seed(0)
    start = ViTEncoder(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, name="t2"))
    checkpoint = start.save(tmp_path / "start.safetensors")
    common = [
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
        "-b",
        "10",
    ]
    result = CliRunner().invoke(
        app,
        [
            "finetune-backbone",
            str(root),
            *common,
            "--freeze-blocks",
            "1",
            "--max-steps",
            "1",
            "-o",
            str(tmp_path / "ft"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "no validation set" in result.output and (tmp_path / "ft" / "encoder.safetensors").is_file()

    result = CliRunner().invoke(
        app,
        [
            "pretrain-backbone",
            str(root),
            *common,
            "--epochs",
            "6",
            "--lr",
            "3e-3",
            "--decoder-dim",
            "32",
            "--decoder-depth",
            "1",
            "--decoder-heads",
            "2",
            "-o",
            str(tmp_path / "mae"),
        ],
    )
    assert result.exit_code == 0, result.output
    losses = [float(x) for x in result.output.split("loss per epoch: ")[1].split(")")[0].split(", ")]
    assert len(losses) == 6 and losses[-1] < 0.9 * losses[0], losses
    loaded = load_encoder(tmp_path / "mae" / "mae_pretrain.pth")
    assert loaded.load_report.format == "mae"
    assert {"mask_token", "decoder_pred.weight", "decoder_blocks.0.mlp.fc2.bias"} <= set(loaded.load_report.dropped)
    assert not torch.equal(loaded.blocks[0].attn.qkv.weight, start.blocks[0].attn.qkv.weight)
    assert torch.equal(loaded.pos_embed, start.pos_embed)  # MAE's position embedding stays fixed
