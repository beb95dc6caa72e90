"""The ViT encoder, its checkpoint formats, and the reference preprocessing.

The checkpoints are written here in each project's own key layout (facebookresearch/mae, timm, Hugging Face
ViTMAE), independently of the loader's renaming code, and must give the same CLS features."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from mambava.backbone import (
    FACE_MEAN,
    FACE_STD,
    FeatureExtractor,
    ViTConfig,
    ViTEncoder,
    load_encoder,
    preprocess,
    sincos_pos_embed,
)
from mambava.core.errors import MambavaError


@pytest.fixture(scope="module")
def vit_b():
    torch.manual_seed(0)
    model = ViTEncoder("vit_base_patch16").eval()
    with torch.no_grad():  # non-trivial norms and biases, so a wrong mapping cannot hide behind ones/zeros
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.normal_(0, 0.02)
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        features = model(images)
    return model, images, features


def _mae_layout(model):
    """facebookresearch/mae `MaskedAutoencoderViT` checkpoint: {"model": encoder + decoder keys}."""
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    dim = 64
    sd.update(
        {
            "mask_token": torch.zeros(1, 1, dim),
            "decoder_embed.weight": torch.zeros(dim, 768),
            "decoder_embed.bias": torch.zeros(dim),
            "decoder_pos_embed": torch.zeros(1, 197, dim),
            "decoder_blocks.0.norm1.weight": torch.ones(dim),
            "decoder_blocks.0.attn.qkv.weight": torch.zeros(3 * dim, dim),
            "decoder_norm.weight": torch.ones(dim),
            "decoder_norm.bias": torch.zeros(dim),
            "decoder_pred.weight": torch.zeros(768, dim),
            "decoder_pred.bias": torch.zeros(768),
        }
    )
    return {"model": sd, "optimizer": {}, "epoch": 799}


def _hf_layout(model, prefix=""):
    """Hugging Face ViTMAEModel names (q, k, v separate); prefix "vit." for ViTMAEForPreTraining."""
    sd = model.state_dict()
    out = {
        "embeddings.cls_token": sd["cls_token"],
        "embeddings.position_embeddings": sd["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        "layernorm.weight": sd["norm.weight"],
        "layernorm.bias": sd["norm.bias"],
    }
    names = {
        "norm1": "layernorm_before",
        "norm2": "layernorm_after",
        "attn.proj": "attention.output.dense",
        "mlp.fc1": "intermediate.dense",
        "mlp.fc2": "output.dense",
    }
    for i in range(model.config.depth):
        for ours, theirs in names.items():
            for kind in ("weight", "bias"):
                out[f"encoder.layer.{i}.{theirs}.{kind}"] = sd[f"blocks.{i}.{ours}.{kind}"]
        for kind in ("weight", "bias"):
            q, k, v = sd[f"blocks.{i}.attn.qkv.{kind}"].chunk(3, dim=0)
            for name, t in zip(("query", "key", "value"), (q, k, v)):
                out[f"encoder.layer.{i}.attention.attention.{name}.{kind}"] = t
    out = {prefix + k: v.clone().contiguous() for k, v in out.items()}
    if prefix:
        out["decoder.mask_token"] = torch.zeros(1, 1, 64)
        out["decoder.decoder_embed.weight"] = torch.zeros(64, model.config.embed_dim)
    return out


def _hf_config(eps):
    return {
        "model_type": "vit_mae",
        "architectures": ["ViTMAEModel"],
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "hidden_act": "gelu",
        "layer_norm_eps": eps,
        "image_size": 224,
        "patch_size": 16,
        "num_channels": 3,
        "qkv_bias": True,
        "mask_ratio": 0.75,
    }


@pytest.fixture(scope="module")
def checkpoints(vit_b, tmp_path_factory):
    """The test ViT-B/16 written in each format, in that project's own key layout."""
    model = vit_b[0]
    root = tmp_path_factory.mktemp("checkpoints")
    paths = {"mae": root / "mae_pretrain_vit_base.pth", "timm": root / "vit_base_patch16_224.mae.safetensors"}
    torch.save(_mae_layout(model), paths["mae"])
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(paths["timm"]))
    paths["hf"] = root / "hf"
    paths["hf"].mkdir()
    # the test model was built with eps 1e-6: the HF config records the eps its weights go with
    (paths["hf"] / "config.json").write_text(json.dumps(_hf_config(1e-6)))
    save_file(_hf_layout(model), str(paths["hf"] / "model.safetensors"))
    paths["mambava"] = model.save(root / "encoder.safetensors")
    return paths


def test_every_format_gives_identical_cls_features(vit_b, checkpoints):
    model, images, reference = vit_b
    reference_state = model.state_dict()
    for name, path in checkpoints.items():
        loaded = load_encoder(path)
        report = loaded.load_report
        assert report.format == name, name
        assert (loaded.config.embed_dim, loaded.config.depth, loaded.config.num_heads) == (768, 12, 12), name
        assert report.missing == [] and report.unexpected == [], name
        assert all(torch.equal(v, reference_state[k]) for k, v in loaded.state_dict().items()), name
        with torch.no_grad():
            got = loaded(images)
        assert (got - reference).abs().max().item() <= 1e-6, name
        if name == "mae":  # the MAE decoder is dropped by name, not silently
            assert "mask_token" in report.dropped and "decoder_pred.weight" in report.dropped


def test_hf_pretraining_layout_and_its_own_layer_norm_eps(tmp_path):
    torch.manual_seed(0)
    small = ViTEncoder(ViTConfig(embed_dim=64, depth=2, num_heads=2, ln_eps=1e-12, name="s")).eval()
    config = {
        **_hf_config(1e-12),
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 256,
        "architectures": ["ViTMAEForPreTraining"],
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    # ViTMAEForPreTraining: `vit.` prefix and a `decoder.` to drop
    save_file(_hf_layout(small, prefix="vit."), str(tmp_path / "model.safetensors"))
    loaded = load_encoder(tmp_path)
    assert loaded.config.ln_eps == 1e-12 and loaded.config.num_heads == 2
    assert all(m.eps == 1e-12 for m in loaded.modules() if isinstance(m, torch.nn.LayerNorm))
    assert "decoder.mask_token" in loaded.load_report.dropped
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (loaded(x) - small(x)).abs().max() <= 1e-6
    # an explicit arch keeps the format's epsilon too
    assert load_encoder(tmp_path, arch=ViTConfig(embed_dim=64, depth=2, num_heads=2)).config.ln_eps == 1e-12


def test_wrong_size_missing_and_unexpected_keys_are_named(vit_b, checkpoints, tmp_path):
    model, _, _ = vit_b
    with pytest.raises(
        MambavaError,
        match=r"does not fit vit_large_patch16 .*holds D=768, depth=12.*"
        r"cls_token: checkpoint \(1, 1, 768\) vs model \(1, 1, 1024\)",
    ):
        load_encoder(checkpoints["mae"], arch="vit_large_patch16")

    sd = {k: v for k, v in model.state_dict().items() if k != "blocks.3.mlp.fc2.bias"}
    sd["blocks.3.extra.weight"] = torch.zeros(3)
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(
        MambavaError, match=r"missing keys: blocks\.3\.mlp\.fc2\.bias.*unexpected keys: blocks\.3\.extra"
    ):
        load_encoder(tmp_path / "broken.pth")
    lenient = load_encoder(tmp_path / "broken.pth", strict=False)
    assert lenient.load_report.missing == ["blocks.3.mlp.fc2.bias"]
    assert lenient.load_report.unexpected == ["blocks.3.extra.weight"]

    with pytest.raises(MambavaError, match="not found"):
        load_encoder(tmp_path / "nope.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(MambavaError, match="garbage.pth"):
        load_encoder(tmp_path / "garbage.pth")


def test_size_inference_covers_the_presets():
    # shapes only: a meta-device state_dict of each preset, without allocating ViT-H
    from mambava.backbone import PRESETS, infer_config

    for name, preset in PRESETS.items():
        with torch.device("meta"):
            sd = ViTEncoder(preset).state_dict()
        cfg = infer_config(sd)
        assert cfg == preset, name


def test_preprocess_is_the_reference_pil_pipeline():
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, size=(3, 112, 112, 3), dtype=np.uint8)
    got = preprocess(crops)
    assert got.shape == (3, 3, 224, 224) and got.dtype == torch.float32
    # the reference: PIL RGB image -> Resize((224, 224), BICUBIC) -> ToTensor -> Normalize(face mean/std)
    for i, crop in enumerate(crops):
        resized = np.asarray(Image.fromarray(crop).resize((224, 224), Image.BICUBIC), dtype=np.float32) / 255.0
        expected = (resized - np.array(FACE_MEAN, np.float32)) / np.array(FACE_STD, np.float32)
        np.testing.assert_allclose(got[i].permute(1, 2, 0).numpy(), expected, atol=1e-6)
    # torch input and a list of differently sized crops give the same for the same crop
    assert torch.equal(preprocess(torch.from_numpy(crops)), got)
    mixed = preprocess([crops[0], rng.integers(0, 256, size=(90, 70, 3), dtype=np.uint8)])
    assert torch.equal(mixed[0], got[0])


def test_sincos_position_embedding_matches_mae_formula():
    dim, grid = 32, 4
    gh, gw = np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64)
    mesh = np.stack(np.meshgrid(gw, gh), axis=0)

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one_d(dim // 2, mesh[0]), one_d(dim // 2, mesh[1])], axis=1)
    emb = np.concatenate([np.zeros((1, dim)), emb], axis=0)
    np.testing.assert_allclose(sincos_pos_embed(dim, grid)[0].numpy(), emb, atol=1e-6)


def test_feature_extractor_and_smaller_crops(tmp_path):
    torch.manual_seed(0)
    model = ViTEncoder(ViTConfig(embed_dim=64, depth=2, num_heads=2, name="t")).eval()
    crops = np.random.default_rng(0).integers(0, 256, size=(5, 112, 112, 3), dtype=np.uint8)
    with torch.no_grad():
        reference = model(preprocess(crops)).numpy()
    fp32 = FeatureExtractor(model, batch_size=2, precision="fp32").features(crops)
    assert fp32.dtype == np.float32 and fp32.shape == (5, 64)
    np.testing.assert_allclose(fp32, reference, atol=1e-6)
    bf16 = FeatureExtractor(model, batch_size=4, precision="bf16").features(crops)
    cos = (bf16 * reference).sum(1) / np.linalg.norm(bf16, axis=1) / np.linalg.norm(reference, axis=1)
    assert cos.min() > 0.99
    # 112-pixel inputs: position embedding resampled from the 14x14 grid to 7x7, on load and on the fly
    small = load_encoder(model.save(tmp_path / "e.safetensors"), img_size=112)
    assert small.config.img_size == 112 and small.pos_embed.shape == (1, 50, 64)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-6)


def test_student_presets_at_112_px():
    from mambava.backbone import infer_config, vit_config

    tiny = vit_config("vit_tiny_patch16_112")
    assert (tiny.img_size, tiny.grid, tiny.embed_dim, tiny.depth, tiny.num_heads) == (112, 7, 192, 12, 3)
    assert vit_config("small_112") == vit_config("vit_small_patch16", img_size=112, name="vit_small_patch16_112")
    # a 224 px file of the same shape is still the 224 px preset
    with torch.device("meta"):
        sd = ViTEncoder("vit_tiny_patch16").state_dict()
    assert infer_config(sd).name == "vit_tiny_patch16"
