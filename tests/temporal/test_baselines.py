"""Temporal models: shapes, what each sees of time, size of the Transformer, the model config schema, save
and the one loader of every checkpoint kind."""

from __future__ import annotations

import pytest
import torch

from mambava.core.errors import MambavaError
from mambava.temporal import (
    build_temporal_model,
    count_parameters,
    default_model_config,
    load_temporal_model,
    resolve_model_config,
    save_temporal_model,
    temporal_kinds,
)

SMALL = {
    "input_dim": 12,
    "tcn_channels": [16, 16],
    "kernel_size": 3,
    "d_model": 16,
    "n_layers": 2,
    "d_state": 4,
    "dt_rank": 2,
    "head_hidden": 8,
    "dropout": 0.0,
    "transformer_ff": 24,
    "transformer_dropout": 0.0,
}

# fusion takes audio too: tests/temporal/test_fusion.py
VISUAL_KINDS = [kind for kind in temporal_kinds() if kind != "fusion"]


@pytest.mark.parametrize("kind", VISUAL_KINDS)
def test_every_kind_maps_frames_to_va_and_never_looks_ahead(kind):
    torch.manual_seed(0)
    model = build_temporal_model(kind, SMALL).eval()
    x = torch.randn(2, 40, 12)
    y = model(x)
    assert y.shape == (2, 40, 2) and torch.isfinite(y).all()
    later = x.clone()
    later[:, 25:] = torch.randn(2, 15, 12)  # change the future only
    with torch.no_grad():
        assert torch.allclose(model(later)[:, :25], y[:, :25], atol=1e-5)
    earlier = x.clone()
    earlier[:, 10] += 3.0
    with torch.no_grad():
        changed = (model(earlier) - y).abs().amax(-1)[0] > 1e-6
    if kind == "mlp":  # one frame at a time: only frame 10 moves
        assert changed.nonzero().flatten().tolist() == [10]
    else:  # temporal models carry frame 10 forward
        assert changed[10:].sum() > 5 and not changed[:10].any()


@pytest.mark.parametrize("kind", VISUAL_KINDS)
def test_save_and_load_every_kind(kind, tmp_path):
    torch.manual_seed(1)
    model = build_temporal_model(kind, SMALL).eval()
    path = save_temporal_model(model, tmp_path / f"{kind}.safetensors")
    loaded = load_temporal_model(path).model.eval()
    x = torch.randn(1, 30, 12)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert type(loaded) is type(model)


def test_transformer_is_about_the_size_of_the_mamba_encoder():
    """At the paper's sizes, the Transformer that replaces the Mamba encoder has about its parameter count."""
    paper = build_temporal_model("mamba_va", {})
    transformer = build_temporal_model("transformer", {})
    tcn = build_temporal_model("tcn", {})
    mamba_encoder = count_parameters(paper) - count_parameters(tcn)
    attention_encoder = count_parameters(transformer) - count_parameters(tcn)
    assert abs(attention_encoder / mamba_encoder - 1) < 0.1, (attention_encoder, mamba_encoder)
    assert count_parameters(paper) == 67_155_598  # the reference model's count (FreedomPuppy77/Charon)


def test_model_config_validation():
    cfg = resolve_model_config({"kind": "tcn", "dropout": 0.1})
    assert cfg["kind"] == "tcn" and cfg["dropout"] == 0.1 and cfg["tcn_channels"] == [1024, 768, 512, 256]
    assert default_model_config()["kind"] == "mamba_va"
    with pytest.raises(MambavaError, match="unknown key 'model.n_layer'"):
        resolve_model_config({"n_layer": 3})
    with pytest.raises(MambavaError, match="model.kind"):
        resolve_model_config({"kind": "lstm"})
    with pytest.raises(MambavaError, match="model.n_layers"):
        resolve_model_config({"n_layers": 2.5})


def test_the_model_section_is_typed_by_its_schema():
    """`model:` goes through OmegaConf like the rest of a config: ModelConfig has every MambaVAConfig field plus
    `kind` and the transformer keys, values are converted to their field's type, bad ones name the key."""
    import dataclasses

    from mambava.temporal import model_schema
    from mambava.temporal.baselines import TRANSFORMER_DEFAULTS
    from mambava.temporal.fusion import FUSION_KEYS
    from mambava.temporal.mamba_va import MambaVAConfig

    names = [f.name for f in dataclasses.fields(model_schema())]
    assert names == ["kind", *(f.name for f in dataclasses.fields(MambaVAConfig)), *TRANSFORMER_DEFAULTS, *FUSION_KEYS]
    cfg = resolve_model_config({"dropout": "0.25", "n_layers": 3, "dt_rank": "auto", "tcn_channels": (32, 16)})
    assert (cfg["dropout"], cfg["n_layers"], cfg["dt_rank"], cfg["tcn_channels"]) == (0.25, 3, "auto", [32, 16])
    for values, message in (
        ({"dropout": "high"}, "key 'model.dropout' must be float, got 'high'"),
        ({"tcn_channels": 16}, "key 'model.tcn_channels' must be a list of int, got 16"),
        ({"dt_rank": "wide"}, "key 'model.dt_rank' must be int or 'auto', got 'wide'"),
        ({"transformer_causal": 0.5}, "key 'model.transformer_causal' must be bool, got 0.5"),
    ):
        with pytest.raises(MambavaError) as error:
            resolve_model_config(values)
        assert str(error.value) == message


def test_one_loader_for_every_checkpoint_kind(tmp_path):
    """load_temporal_model: our safetensors (any kind), a run's Lightning .ckpt and the authors' .pth give the
    same weights, and what the model was trained on (window, stride, fps, run config)."""
    import yaml

    from mambava.temporal.mamba_va import MambaVA, MambaVAConfig

    torch.manual_seed(2)
    x = torch.randn(1, 30, 12)
    mlp = build_temporal_model("mlp", {**SMALL, "fps": 25.0}).eval()
    save_temporal_model(mlp, tmp_path / "run" / "model.safetensors")
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({"data": {"window": 64, "stride": 32}}))
    loaded = load_temporal_model(tmp_path / "run" / "model.safetensors")
    assert (loaded.kind, loaded.window, loaded.stride, loaded.fps, loaded.config["fps"]) == ("mlp", 64, 32, 25.0, 25.0)
    assert not loaded.model.training and torch.equal(loaded.model(x), mlp(x))

    run_config = {"model": {**SMALL, "kind": "tcn"}, "data": {"window": 40, "stride": 20}}
    tcn = build_temporal_model(run_config["model"]).eval()
    torch.save(
        {
            "hyper_parameters": {"config": run_config},
            "state_dict": {f"model.{k}": v for k, v in tcn.state_dict().items()},
        },
        tmp_path / "best.ckpt",
    )
    loaded = load_temporal_model(tmp_path / "best.ckpt")
    assert (loaded.kind, loaded.window, loaded.stride, loaded.run_config) == ("tcn", 40, 20, run_config)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), tcn(x))

    paper = MambaVA(MambaVAConfig(**{k: v for k, v in SMALL.items() if not k.startswith("transformer")})).eval()
    torch.save({f"module.{k}": v for k, v in paper.state_dict().items()}, tmp_path / "authors.pth")
    loaded = load_temporal_model(tmp_path / "authors.pth")
    assert (loaded.kind, loaded.window, loaded.stride, loaded.fps, loaded.run_config) == (
        "mamba_va",
        300,
        200,
        30.0,
        None,
    )
    with torch.no_grad():
        assert torch.equal(loaded.model(x), paper(x))
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(MambavaError, match=r"junk\.ckpt: not a mambava Lightning checkpoint") as error:
        load_temporal_model(tmp_path / "junk.ckpt")
    assert "\n" not in str(error.value)
