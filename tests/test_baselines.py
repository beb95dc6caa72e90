"""Ablation baselines: shapes, what each sees of time, size of the Transformer, save/load of every kind."""

from __future__ import annotations

import pytest
import torch

from mambava.temporal_models import (
    KINDS,
    build_temporal_model,
    count_parameters,
    default_model_config,
    load_temporal_model,
    resolve_model_config,
    save_temporal_model,
)
from mambava.errors import MambavaError

SMALL = {
    "input_dim": 12, "tcn_channels": [16, 16], "kernel_size": 3, "d_model": 16, "n_layers": 2, "d_state": 4,
    "dt_rank": 2, "head_hidden": 8, "dropout": 0.0, "transformer_ff": 24, "transformer_dropout": 0.0,
}


@pytest.mark.parametrize("kind", KINDS)
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


@pytest.mark.parametrize("kind", KINDS)
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
