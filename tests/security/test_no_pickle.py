"""No path of mambava unpickles arbitrary objects (issue 22, item 1).

Each command that reads a checkpoint is given a planted file whose pickle, if ever loaded unsafely, would
create a marker file. The command must stop with one `error:` line (exit 2) and the marker must never appear.
"""

from __future__ import annotations

import builtins
from pathlib import Path

import pytest
import torch
from support import run_cli, train_cli


class Payload:
    """Unpickling this calls open(marker, "w"): the file appears iff the pickle ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.open, (self.marker, "w")


def plant(path: Path, marker: Path, lightning: bool = False) -> Path:
    """A torch.save file at `path` holding the payload, shaped like a Lightning checkpoint when asked."""
    tensors = {"w": torch.zeros(2)}
    content = (
        {"state_dict": tensors, "epoch": 0, "global_step": 1, "optimizer_states": [{}], "payload": Payload(marker)}
        if lightning
        else {"model": tensors, "payload": Payload(marker)}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(content, path)
    return path


def test_the_planted_payload_runs_when_loaded_unsafely(tmp_path):
    """The control: the same file loaded with weights_only=False does create the marker."""
    marker = tmp_path / "ran"
    torch.load(plant(tmp_path / "evil.pth", marker), weights_only=False)
    assert marker.exists()


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "PWNED"


def _assert_refused(code: int, err: str, marker: Path) -> None:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert lines and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert not marker.exists(), "the planted pickle ran"


def test_train_resume_never_runs_a_planted_last_ckpt(train_data, marker, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "run"
    plant(out / "checkpoints" / "last.ckpt", marker, lightning=True)
    code, _, err = run_cli(train_cli(train_data, out, 1, "--resume"), capsys)
    _assert_refused(code, err, marker)
    assert "cannot resume" in err and "Python object (io.open)" in err


def test_cv_never_runs_a_planted_last_ckpt(train_data, marker, tmp_path, capsys):  # noqa: F811
    """cv resumes any fold whose last.ckpt exists, without being asked."""
    features, annotations = train_data
    cfg = tmp_path / "cv.yaml"
    cfg.write_text(
        "model:\n  input_dim: 8\n  tcn_channels: [8]\n  kernel_size: 3\n  d_model: 8\n  n_layers: 1\n  d_state: 2\n"
        f"  dt_rank: 1\n  head_hidden: 4\ndata:\n  features: {features}\n  annotations: {annotations}\n"
        f"  window: 40\n  stride: 20\nepochs: 1\nwarmup_epochs: 0\nbatch_size: 8\nprogress_bar: false\n"
        f"out_dir: {tmp_path / 'cv'}\n"
    )
    plant(tmp_path / "cv" / "fold0" / "checkpoints" / "last.ckpt", marker, lightning=True)
    code, _, err = run_cli(["cv", "--config", cfg], capsys)
    _assert_refused(code, err, marker)


@pytest.fixture(scope="module")
def features_npy(tmp_path_factory) -> Path:
    import numpy as np

    path = tmp_path_factory.mktemp("npy") / "clip.npy"
    np.save(path, np.zeros((20, 8), np.float32))
    return path


# Each command that reads a checkpoint file given on its command line: (argv with CKPT for the planted file).
COMMANDS = {
    "evaluate": ["evaluate", "CKPT", "--features", "FEATURES", "--annotations", "ANNOTATIONS", "-o", "OUT/e.csv"],
    "predict -c": ["predict", "NPY", "-c", "CKPT", "-o", "OUT"],
    "predict -b": ["predict", "MEDIA/single_face.jpg", "-c", "MODEL", "-b", "CKPT", "-o", "OUT"],
    "stream -c": ["stream", "MEDIA/single_face.mp4", "-c", "CKPT", "-b", "BACKBONE", "-o", "OUT/s.csv"],
    "serve -c": ["serve", "-c", "CKPT", "--port", "PORT"],
    "models add": ["models", "add", "evil", "CKPT"],
    "adapt -c": [
        "adapt",
        "-c",
        "CKPT",
        "--features",
        "FEATURES",
        "--ratings",
        "ANNOTATIONS/VA_Estimation_Challenge/Train_Set",
        "-o",
        "OUT/adapted",
    ],
    "extract -c": ["extract", "CROPS", "-o", "OUT/store", "-c", "CKPT"],
    "finetune-backbone -c": ["finetune-backbone", "AFFWILD2", "-c", "CKPT", "-o", "OUT/ft"],
    "pretrain-backbone -c": ["pretrain-backbone", "CROPS", "-c", "CKPT", "-o", "OUT/mae"],
    "distill --teacher": ["distill", "CROPS", "--teacher", "CKPT", "-o", "OUT/distill"],
    "faces --landmarks": ["faces", "MEDIA/single_face.jpg", "--landmarks", "CKPT", "-o", "OUT/faces"],
}


@pytest.mark.parametrize("suffix", [".pth", ".ckpt"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_no_command_runs_a_planted_checkpoint(
    command,
    suffix,
    train_data,
    features_npy,
    crop_tree,
    affwild2_root,  # noqa: F811
    media_dir,
    marker,
    tmp_path,
    capsys,
    monkeypatch,
):
    from mambava.backbone import ViTConfig, ViTEncoder
    from mambava.temporal import build_temporal_model, save_temporal_model

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # `models add` writes into the user cache
    model = save_temporal_model(
        build_temporal_model(
            "mamba_va", {"input_dim": 8, "tcn_channels": [8], "d_model": 8, "n_layers": 1, "head_hidden": 4}
        ),
        tmp_path / "model.safetensors",
    )
    evil = plant(tmp_path / f"evil{suffix}", marker, lightning=suffix == ".ckpt")
    features, annotations = train_data
    out = tmp_path / "out"
    out.mkdir()
    backbone = tmp_path / "vit.safetensors"
    ViTEncoder(ViTConfig(img_size=32, patch_size=16, embed_dim=16, depth=1, num_heads=2, name="t")).save(backbone)
    values = {
        "CKPT": evil,
        "BACKBONE": backbone,
        "PORT": free_port(),
        "FEATURES": features,
        "ANNOTATIONS": annotations,
        "NPY": features_npy,
        "MODEL": model,
        "CROPS": crop_tree,
        "AFFWILD2": affwild2_root,
    }
    argv = []
    for arg in COMMANDS[command]:
        for key, value in values.items():
            arg = arg.replace(key, str(value)) if arg.split("/")[0] == key else arg
        argv.append(arg.replace("OUT", str(out)).replace("MEDIA", str(media_dir)))
    code, _, err = run_cli(argv, capsys)
    _assert_refused(code, err, marker)
    assert str(evil) in err.strip().splitlines()[0]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_no_module_loads_pickles_unsafely():
    """A source check beside the behavioural ones: every call in the package that could unpickle is safe
    (torch.load with weights_only=True; no pickle.load(s), no allow_pickle=True)."""
    import ast

    import mambava

    root = Path(mambava.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
            unsafe = (
                (name.endswith("torch.load") and keywords.get("weights_only") != "True")
                or name in {"pickle.load", "pickle.loads", "pickle.Unpickler"}
                or keywords.get("allow_pickle") == "True"
            )
            if unsafe:
                offenders.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}")
    assert offenders == []
