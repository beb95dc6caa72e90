"""A plain `pip install .` is enough: the wheel carries the MTCNN weights, and `mambava predict` runs from it on a
real video with no other package installed by hand (issue: facenet-pytorch used to be a hidden second install)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project built into a wheel, offline (the build backend comes from this environment)."""
    out = tmp_path_factory.mktemp("wheel")
    # built from a copy: setuptools writes build/ and egg-info beside the sources, and the checkout stays clean
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("mambava-*.whl")
    return path


def test_wheel_ships_the_mtcnn_weights_and_configs(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "mambava/faces/weights/mtcnn.safetensors" in names
    assert "mambava/faces/weights/expression.safetensors" in names  # the default model's expression net
    assert "mambava/faces/weights/NOTICE.md" in names
    assert "mambava/configs/paper.yaml" in names
    assert {"mambava/serve/static/index.html", "mambava/serve/static/app.js"} <= names  # the page of `serve`


def test_shipped_weights_load_into_the_three_nets():
    from safetensors.torch import load_file

    from mambava.faces.detect import MTCNN_WEIGHTS, _load_nets

    flat = load_file(str(MTCNN_WEIGHTS))
    pnet, rnet, onet = _load_nets(str(MTCNN_WEIGHTS))
    for prefix, net in (("pnet", pnet), ("rnet", rnet), ("onet", onet)):
        state = net.state_dict()
        assert sorted(state) == sorted(k[len(prefix) + 1 :] for k in flat if k.startswith(prefix + "."))
        assert all(torch.equal(state[k], flat[f"{prefix}.{k}"]) for k in state)
    assert sum(v.numel() for v in flat.values()) == 6_632 + 100_178 + 389_040  # MTCNN's P/R/O-Net sizes


def test_fresh_venv_pip_install_then_predict_a_real_video(wheel, tmp_path, media_dir, tiny_mamba_va):
    """A new venv with only the wheel installed into it; its dependencies are already satisfied by this
    environment's site-packages (seen through a .pth path, which does not run this checkout's editable hook),
    so the install resolves them without a network. Then the console script predicts on single_face.mp4."""
    from mambava.backbone import ViTConfig, ViTEncoder
    from mambava.temporal import save_temporal_model

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-index", str(wheel)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert install.returncode == 0, install.stderr

    torch.manual_seed(0)
    ViTEncoder(ViTConfig(img_size=32, patch_size=16, embed_dim=24, depth=1, num_heads=2, name="t")).save(
        tmp_path / "vit.safetensors"
    )
    save_temporal_model(tiny_mamba_va(24), tmp_path / "model.safetensors")
    run = subprocess.run(
        [
            venv / "bin" / "mambava",
            "predict",
            media_dir / "single_face.mp4",
            "-c",
            tmp_path / "model.safetensors",
            "-b",
            tmp_path / "vit.safetensors",
            "-o",
            tmp_path / "out",
            "--precision",
            "fp32",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    where = subprocess.run(
        [python, "-c", "import mambava; print(mambava.__file__)"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert where.startswith(str(site))  # the installed copy ran, not this checkout
    table = pd.read_csv(tmp_path / "out" / "single_face.csv")
    assert len(table) == 72 and table["face"].sum() == 72  # MTCNN from the wheel found the face in every frame
    assert table[["valence", "arousal"]].abs().le(1).all().all()

    # no checkpoint: the built-in expression-va, from the wheel's expression weights, named on stderr and in the rows
    default = subprocess.run(
        [venv / "bin" / "mambava", "predict", media_dir / "single_face.mp4", "-o", tmp_path / "default", "--no-plots"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert default.returncode == 0, default.stdout + default.stderr
    assert "model: expression-va" in default.stderr and "not the paper's Mamba-VA model" in default.stderr
    table = pd.read_csv(tmp_path / "default" / "single_face.csv")
    assert len(table) == 72 and (table["model"] == "expression-va").all()
    assert table["happiness"].iloc[24:48].mean() > table["happiness"].iloc[:24].mean() + 0.5
