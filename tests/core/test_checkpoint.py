"""`mambava.core.checkpoint`: one format for every set of weights, and files written before it still load.

The fixtures in tests/data/checkpoints were written by commit 0e0fc81's code (see their README); each loads
with today's readers and gives the outputs that code computed, to float precision."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mambava.core.checkpoint import (
    CheckpointError,
    LoadReport,
    load_checkpoint,
    load_torch_file,
    parse_tag,
    read_header,
    save_checkpoint,
    weights_sha256,
)

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "checkpoints"


@pytest.fixture(scope="module")
def expected() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "expected_outputs.safetensors"))


def test_the_paper_models_file_of_before_loads_and_predicts_the_same(expected):
    from mambava.temporal import load_temporal_model

    loaded = load_temporal_model(FIXTURES / "mamba_va_v1.safetensors")
    assert loaded.kind == "mamba_va"
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(expected["input_8d"]), expected["mamba_va"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["tcn", "fusion"])
def test_other_kinds_files_of_before_load_and_predict_the_same(kind, expected):
    from mambava.temporal import load_temporal_model

    loaded = load_temporal_model(FIXTURES / f"{kind}_v1.safetensors")
    assert loaded.kind == kind
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(expected[f"input_{kind}"]), expected[kind], rtol=0, atol=1e-6)


def test_the_backbones_file_of_before_loads_and_gives_the_same_features(expected):
    from mambava.backbone import load_encoder

    encoder = load_encoder(FIXTURES / "vit_encoder_v1.safetensors").eval()
    assert encoder.load_report.format == "mambava" and encoder.load_report.ok
    with torch.no_grad():
        torch.testing.assert_close(encoder(expected["input_vit"]), expected["vit"], rtol=0, atol=1e-6)


def test_the_landmark_refiners_file_of_before_loads_with_the_same_identity(expected):
    from mambava.faces.landmarks import load_refiner

    refiner = load_refiner(FIXTURES / "landmark_refiner_v1.safetensors")
    assert refiner.config.size == 32 and refiner.config.width == 4
    with torch.no_grad():
        torch.testing.assert_close(refiner.net(expected["input_refiner"]), expected["refiner"], rtol=0, atol=1e-6)


def test_the_shipped_untagged_mtcnn_weights_load():
    from mambava.faces.detect import MTCNN_WEIGHTS

    checkpoint = load_checkpoint(MTCNN_WEIGHTS)
    assert checkpoint.format is None and checkpoint.config is None
    assert {key.split(".")[0] for key in checkpoint.tensors} == {"pnet", "rnet", "onet"}


def test_new_files_carry_format_version_config_and_the_weights_hash(tmp_path):
    from mambava.temporal import MambaVA, MambaVAConfig

    model = MambaVA(
        MambaVAConfig(
            input_dim=8, tcn_channels=(8,), kernel_size=3, d_model=8, n_layers=1, d_state=2, dt_rank=1, head_hidden=4
        )
    )
    header = read_header(model.save(tmp_path / "m.safetensors"))
    assert header["format"] == "mambava.temporal/1"
    assert json.loads(header["config"])["tcn_channels"] == [8]
    assert header["weights_sha256"] == weights_sha256(model.state_dict().values())
    again = load_checkpoint(tmp_path / "m.safetensors", "mambava.temporal")
    assert (again.format, again.version) == ("mambava.temporal", 1)
    assert again.tensors.keys() == model.state_dict().keys()


def test_legacy_tags_read_as_version_one():
    assert parse_tag("mambava.vit_encoder") == ("mambava.vit_encoder", 1)
    assert parse_tag("mambava-landmark-refiner") == ("mambava.landmark_refiner", 1)
    assert parse_tag("mambava.temporal/1") == ("mambava.temporal", 1)
    assert parse_tag(None) == (None, None)


def test_one_error_for_a_missing_foreign_truncated_or_mislabelled_file(tmp_path):
    good = save_checkpoint(tmp_path / "good.safetensors", {"w": torch.ones(64, 64)}, "mambava.vit_encoder", {"a": 1})
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    foreign = tmp_path / "foreign.safetensors"
    foreign.write_text("hello, world\n")
    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.ones(2)}, str(bare))
    cases = {
        tmp_path / "missing.safetensors": "no such checkpoint file",
        truncated: "not a readable safetensors file (",
        foreign: "not a readable safetensors file (",
        good: "a mambava.vit_encoder file, not a mambava.temporal checkpoint",
        bare: "a safetensors file without a mambava format tag, not a mambava.temporal checkpoint",
    }
    for path, message in cases.items():
        with pytest.raises(CheckpointError) as caught:
            load_checkpoint(path, "mambava.temporal")
        text = str(caught.value)
        assert text.startswith(f"{path}: {message}") and "\n" not in text


def test_a_pickled_file_is_read_with_weights_only(tmp_path):
    torch.save({"w": torch.ones(2), "n": 3}, tmp_path / "ok.pt")
    assert load_torch_file(tmp_path / "ok.pt")["n"] == 3
    torch.save({"w": object}, tmp_path / "code.pt")  # a global the safe unpickler refuses
    with pytest.raises(CheckpointError, match=r"code.pt: cannot be read as a PyTorch weights file \(it holds a Python"):
        load_torch_file(tmp_path / "code.pt")


def test_one_report_type():
    report = LoadReport("m.pth", "mae", None, missing=["a"], unexpected=["b"], dropped=["decoder.x"])
    assert not report.ok
    assert str(report) == "missing keys: a; unexpected keys: b"
    assert report.summary() == (
        "m.pth: mae checkpoint; dropped 1 keys not part of the model (decoder.x); missing keys: a; unexpected keys: b"
    )
