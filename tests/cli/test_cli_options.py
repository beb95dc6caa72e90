"""The shared command-line options: one --precision vocabulary (auto|bf16|int8|fp32) in every command, the old
spellings accepted, mapped to Lightning's strings where Lightning runs the model."""

from __future__ import annotations

import pytest
import typer
from support import run_cli

from mambava.cli import app
from mambava.cli.options import canonical_precision, lightning_precision
from mambava.core.errors import MambavaError


def test_one_vocabulary_with_the_old_spellings_as_aliases():
    spelled = {
        "auto": "auto",
        "bf16": "bf16",
        "fp32": "fp32",
        "32": "fp32",
        "32-true": "fp32",
        "bf16-mixed": "bf16",
        "BF16": "bf16",
        " fp32 ": "fp32",
    }
    assert {value: canonical_precision(value) for value in spelled} == spelled
    assert canonical_precision(None) is None
    assert canonical_precision("16-mixed", lightning=True) == "16-mixed"
    with pytest.raises(MambavaError) as error:
        canonical_precision("16-mixed")
    assert str(error.value) == "--precision '16-mixed': expected one of auto, bf16, int8, fp32, 32, 32-true, bf16-mixed"
    assert canonical_precision("int8") == "int8"  # inference only: training commands refuse it
    with pytest.raises(MambavaError, match=r"^--precision 'int8': expected one of auto, bf16, fp32, "):
        canonical_precision("int8", lightning=True, int8=False)
    with pytest.raises(MambavaError, match=r"^--precision 'fp8': expected one of .*, 16-mixed$"):
        canonical_precision("fp8", lightning=True)


def test_lightning_strings():
    from mambava.backbone import bf16_supported

    assert {v: lightning_precision(v) for v in ("fp32", "32", "32-true", "bf16", "bf16-mixed", "16-mixed")} == {
        "fp32": "32",
        "32": "32",
        "32-true": "32",
        "bf16": "bf16-mixed",
        "bf16-mixed": "bf16-mixed",
        "16-mixed": "16-mixed",
    }
    assert lightning_precision(None) is None
    assert lightning_precision("auto", "cpu") == ("bf16-mixed" if bf16_supported("cpu") else "32")


def test_every_precision_option_is_the_shared_one():
    command = typer.main.get_command(app)
    found = {}
    for name, sub in command.commands.items():
        for param in sub.params:
            if param.name == "precision":
                found[name] = param
    assert sorted(found) == [
        "cv",
        "distill",
        "evaluate",
        "extract",
        "finetune-backbone",
        "predict",
        "pretrain-backbone",
        "serve",
        "stream",
        "train",
    ]
    inference = {"evaluate", "extract", "predict", "serve", "stream"}
    for name, param in found.items():
        vocabulary = "bf16, int8 or fp32" if name in inference else "bf16 or fp32"
        assert "auto (bf16 where fast" in param.help and vocabulary in param.help, name
        assert param.callback is not None and param.callback.__qualname__ == "_check.<locals>.callback", name
    assert {name: param.default for name, param in found.items()} == {
        "cv": None,
        "distill": "auto",
        "evaluate": "fp32",
        "extract": "auto",
        "finetune-backbone": "bf16",
        "predict": "auto",
        "pretrain-backbone": "bf16",
        "serve": "auto",
        "stream": "auto",
        "train": None,
    }


@pytest.mark.parametrize(
    "typed, lightning",
    [("32", "32"), ("fp32", "32"), ("bf16", "bf16-mixed"), ("bf16-mixed", "bf16-mixed"), (None, "bf16-mixed")],
)
def test_finetune_backbone_gets_lightnings_string(typed, lightning, monkeypatch, capsys, tmp_path):
    import mambava.backbone.finetune as finetune_module

    seen = {}

    def fake_finetune(root, encoder, config, out):
        seen["precision"] = config.precision
        raise MambavaError("stopped before training")

    monkeypatch.setattr(finetune_module, "finetune", fake_finetune)
    args = ["finetune-backbone", str(tmp_path), "--random-init", "--arch", "vit_tiny_patch16", "--accelerator", "cpu"]
    code, _, err = run_cli(args + (["--precision", typed] if typed else []), capsys)
    assert (code, err, seen) == (2, "error: stopped before training\n", {"precision": lightning})


@pytest.mark.parametrize("typed, used", [("32", "fp32"), ("fp32", "fp32"), ("bf16-mixed", "bf16"), ("bf16", "bf16")])
def test_extract_gets_the_short_name(typed, used, monkeypatch, capsys, tmp_path):
    import mambava.backbone.extract as extract_module

    seen = {}

    def fake_extract(source, out, extractor, **kwargs):
        seen["precision"] = extractor.precision
        raise MambavaError("stopped before extracting")

    monkeypatch.setattr(extract_module, "extract_features", fake_extract)
    code, _, err = run_cli(
        ["extract", str(tmp_path), "-o", str(tmp_path / "f"), "--random-init", "--device", "cpu", "--precision", typed],
        capsys,
    )
    assert (code, err, seen) == (2, "error: stopped before extracting\n", {"precision": used})


def test_a_spelling_no_command_knows_is_one_line(capsys, tmp_path):
    code, out, err = run_cli(
        ["extract", str(tmp_path), "-o", str(tmp_path / "f"), "--random-init", "--precision", "16-mixed"], capsys
    )
    assert (code, out) == (2, "")
    assert err == "error: --precision '16-mixed': expected one of auto, bf16, int8, fp32, 32, 32-true, bf16-mixed\n"
