"""Every command, one line and no leftovers (issue 22, item 5): hostile or broken inputs a careless user (or an
attacker) gives the command line. Each case: exit code 2, one `error:` line on stderr (and the count of failed inputs
where a command takes several; nothing before
it: no traceback, no library warning), and nothing left behind (no output file, no empty output folder, no
file deleted outside the model registry)."""

from __future__ import annotations

import json
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from support import DIM, run_cli


def _one_line(code: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def prediction(tmp_path) -> Path:
    """A `mambava predict` CSV of 100 frames at 30 fps (valence/arousal slow waves)."""
    path = tmp_path / "clip.csv"
    frames = np.arange(100)
    lines = ["video,track,frame,time,valence,arousal"]
    lines += [f"clip,clip,{i},{i / 30:.6f},{np.sin(i / 10):.4f},{np.cos(i / 10):.4f}" for i in frames]
    path.write_text("\n".join(lines) + "\n")
    return path


RATER_FILES = {
    "latin1.csv": "time,valence\n0.1,0.5\n0.2,0.3\n# café\n".encode("latin-1"),
    "binary.csv": bytes(range(256)) * 4,
    "empty.csv": b"",
}
RATER_ERRORS = {
    "latin1.csv": "line 4: byte 0xe9 is not UTF-8 text (save the file as UTF-8)",
    "binary.csv": "a binary file, not a ratings CSV (text with a time and valence/arousal columns)",
    "empty.csv": "an empty file (a ratings CSV with a header line is expected)",
}


@pytest.mark.parametrize("name", sorted(RATER_FILES))
def test_ratings_and_adapt_on_a_non_utf8_binary_or_empty_rater_file(name, prediction, tmp_path, capsys, models):
    rater = tmp_path / "raters" / name
    rater.parent.mkdir()
    rater.write_bytes(RATER_FILES[name])
    code, _, err = run_cli(["ratings", prediction, rater, "-o", tmp_path / "out"], capsys)
    assert _one_line(code, err) == f"error: {rater}: {RATER_ERRORS[name]}"
    assert not (tmp_path / "out").exists()
    features = tmp_path / "features"
    features.mkdir()
    np.save(features / f"{rater.stem}.npy", np.zeros((60, DIM), np.float32))
    code, _, err = run_cli(
        ["adapt", "-c", models["model"], "--features", features, "--ratings", rater.parent, "-o", tmp_path / "ad"],
        capsys,
    )
    assert _one_line(code, err) == f"error: {rater}: {RATER_ERRORS[name]}"
    assert not (tmp_path / "ad").exists()


@pytest.mark.parametrize(
    "text",
    ["time,valence,arousal\n0.1,NaN,NaN\n0.2,nan,\n0.3,,\n", "time,valence,arousal\n100,0.1,0.2\n101,0.2,0.3\n"],
    ids=["all-nan", "outside-the-video"],
)
def test_ratings_that_rate_no_frame_leave_nothing(text, prediction, tmp_path, capsys):
    """All NaN, or times after the video: one line, and neither <rater>.frames.csv nor the folder is written
    (before, the frames CSV was written first and the error came after)."""
    rater = tmp_path / "rater.csv"
    rater.write_text(text)
    code, _, err = run_cli(["ratings", prediction, rater, "-o", tmp_path / "out"], capsys)
    assert _one_line(code, err) == (
        "error: no rater rated any frame of this prediction (ratings all empty or NaN, or their times outside "
        "the video's 0..3.3 s)"
    )
    assert not (tmp_path / "out").exists()


def _png_claiming(path: Path, width: int, height: int) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )
    return path


def test_predict_and_faces_on_an_image_claiming_20000x20000(models, tmp_path, capsys):
    """A 65-byte PNG whose header claims 20000x20000 (1.2 GB decoded; PIL's decompression-bomb error): refused
    from its header in one line (and the count of failed inputs), no traceback, no output folder."""
    image = _png_claiming(tmp_path / "bomb.png", 20000, 20000)
    expected = f"error: {image}: an image of 400000000 pixels is over the limit of 89478485 pixels"
    code, _, err = run_cli(
        ["predict", image, "-c", models["model"], "-b", models["vit"], "-o", tmp_path / "p", "--no-plots"], capsys
    )
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2 and lines == [expected, "1 of 1 inputs failed"], err
    assert not (tmp_path / "p").exists()
    code, _, err = run_cli(["faces", image, "-o", tmp_path / "f"], capsys)
    lines = [line for line in err.strip().splitlines() if "faces bomb" not in line]  # (its progress line)
    assert code == 2 and lines == [expected, "1 of 1 videos failed"], err
    assert not (tmp_path / "f").exists()


def test_a_failed_predict_leaves_no_empty_output_folder(models, tmp_path, capsys):
    """Features of the wrong width for the model: one line per input, the count, and -o out/deeper is not
    left behind (the folders the run made are removed while empty; one that was there before stays)."""
    np.save(tmp_path / "wide.npy", np.zeros((30, 2 * DIM), np.float32))
    (tmp_path / "kept").mkdir()
    for out in (tmp_path / "o" / "deeper", tmp_path / "kept"):
        code, _, err = run_cli(["predict", tmp_path / "wide.npy", "-c", models["model"], "-o", out], capsys)
        assert code == 2 and err.strip().splitlines() == [
            f"error: {tmp_path / 'wide.npy'}: {2 * DIM}-d features, but the temporal model {models['model']} "
            f"takes {DIM}-d",
            "1 of 1 inputs failed",
        ], err
    assert not (tmp_path / "o").exists() and (tmp_path / "kept").is_dir()


def test_serve_with_a_fusion_model_is_one_line_before_anything_is_printed(tmp_path, capsys):
    from mambava.temporal import build_temporal_model, save_temporal_model

    torch.manual_seed(0)
    fusion = build_temporal_model(
        {
            "input_dim": DIM,
            "audio_dim": 6,
            "modalities": ["visual", "audio"],
            "fusion": "early",
            "d_model": 16,
            "n_layers": 1,
            "tcn_channels": [16],
            "head_hidden": 8,
        }
    )
    path = save_temporal_model(fusion.eval(), tmp_path / "fusion.safetensors")
    code, _, err = run_cli(["serve", "-c", path, "--port", str(_free_port())], capsys)
    assert _one_line(code, err) == (
        "error: serve: a fusion model needs each frame's sound, which a live session does not send; serve a "
        "visual model (predict takes fusion models)"
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_on_a_port_in_use_is_one_line(models, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = run_cli(["serve", "-c", models["model"], "--port", str(port)], capsys)
    assert _one_line(code, err) == f"error: cannot listen on 127.0.0.1:{port} (Address already in use)"


def test_stream_from_a_camera_that_is_not_there_is_one_line(models, capfd):
    """`stream 7`: OpenCV's own warnings (one per backend it tried) are silenced; the one line says it."""
    code, _, err = run_cli(["stream", "7", "-c", models["model"], "-b", models["vit"]], capfd)
    assert _one_line(code, err) == "error: camera 7: cannot open the webcam/device (is it connected and free?)"


def test_models_remove_never_deletes_outside_the_registry(tmp_path, capsys, monkeypatch):
    """An index whose entry names `../../victim.txt` (edited by hand, or planted): `models remove` forgets the
    name and says it deleted nothing; the file outside the registry is intact; `-c NAME` refuses the entry."""
    home = tmp_path / "home"
    monkeypatch.setenv("MAMBAVA_HOME", str(home))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (home / "models").mkdir(parents=True)
    entry = {
        "file": "../../victim.txt",
        "kind": "temporal",
        "sha256": "0" * 64,
        "size": 8,
        "trained_on": "",
        "source": "",
        "added": "",
    }
    (home / "models" / "index.json").write_text(json.dumps({"evil": entry, "evil2": entry}))
    code, out, err = run_cli(["predict", tmp_path / "x.npy", "-c", "evil2", "-o", tmp_path / "o"], capsys)
    assert _one_line(code, err).startswith("error: evil2: its index entry names no file of ")
    code, out, err = run_cli(["models", "remove", "evil"], capsys)
    assert code == 0, err
    assert (
        out.strip()
        == "evil: removed; its index entry named '../../victim.txt', not a file of the registry: nothing deleted"
    )
    assert victim.read_text() == "precious"
    assert list(json.loads((home / "models" / "index.json").read_text())) == ["evil2"]


def test_models_add_refuses_a_nan_model(tmp_path, capsys, monkeypatch, tiny_mamba_va):
    """A temporal model with NaN weights (a diverged run) is refused at `models add`, in one line naming the
    tensor; nothing is copied into the registry."""
    from mambava.temporal import save_temporal_model

    monkeypatch.setenv("MAMBAVA_HOME", str(tmp_path / "home"))
    model = tiny_mamba_va(DIM)
    with torch.no_grad():
        next(model.parameters())[0] = float("nan")
    name = next(iter(model.state_dict()))
    path = save_temporal_model(model, tmp_path / "nan.safetensors")
    code, _, err = run_cli(["models", "add", "diverged", path], capsys)
    line = _one_line(code, err)
    assert line.startswith(f"error: {path}: ") and f"weights of {name} are NaN or infinite" in line
    assert not (tmp_path / "home" / "models" / "diverged.safetensors").exists()
