"""`--engine ray`: the corpus jobs (predict over a folder, faces --dataset, extract) on a local Ray instance of 2 CPUs
write the files the local engine writes, byte for byte (CPU, fp32); a worker killed mid-video changes nothing; a
bad input is one line and exit 2 while the others are written; without Ray, `--engine ray` is one line naming the
extra."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from support import first_frames, run_cli

# one worker runs every test that starts Ray (pytest-xdist's loadgroup): two instances would fight over the cores
pytestmark = pytest.mark.xdist_group("ray")


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under `root` (relative path -> bytes); a symbolic link as its target."""
    found = {}
    for path in sorted(root.rglob("*")):
        key = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[key] = os.readlink(path).encode()
        elif path.is_file():
            found[key] = path.read_bytes()
    return found


@pytest.fixture(scope="module")
def clips(tmp_path_factory, media_dir) -> Path:
    """Three short clips of the real media (the man's face; the face then the card) in one folder."""
    folder = tmp_path_factory.mktemp("clips")
    first_frames(media_dir / "single_face.mp4", folder / "a.mp4", 10)
    first_frames(media_dir / "face_noface.mov", folder / "b.mp4", 10)
    first_frames(media_dir / "single_face.mp4", folder / "c.mp4", 16)
    return folder


PREDICT = ["--precision", "fp32", "--batch-size", "8"]


@pytest.fixture(scope="module")
def local_predictions(clips, models, tmp_path_factory) -> Path:
    """`predict CLIPS` with the local engine: the reference."""
    out = tmp_path_factory.mktemp("predict_local")
    code, _, _ = run_cli(["predict", clips, "-c", models["model"], "-b", models["vit"], "-o", out, *PREDICT], _Null())
    assert code == 0
    return out


class _Null:
    def readouterr(self):
        return type("C", (), {"out": "", "err": ""})()


def test_predict_on_ray_writes_the_local_engines_files(
    ray_instance, clips, models, local_predictions, tmp_path, capsys
):
    out = tmp_path / "ray"
    args = ["predict", clips, "-c", models["model"], "-b", models["vit"], "-o", out, *PREDICT, "--engine", "ray"]
    code, stdout, stderr = run_cli(args, capsys)  # the backbone in one actor (the default on CPU)
    assert code == 0, stderr
    expected = _tree(local_predictions)
    assert sorted(expected) == [f"{v}.{kind}" for v in "abc" for kind in _KINDS]
    assert _tree(out) == expected  # CSV, Parquet, summary, plots: byte for byte
    # each input's line, as the local engine prints it; the run's summary on stderr
    assert sorted(line.split(":")[0] for line in stdout.splitlines()) == [str(clips / f"{v}.mp4") for v in "abc"]
    assert "backbone: 1 actor(s) (fp32 on cpu)" in stderr and "; 36 frames in " in stderr


_KINDS = ("circumplex.png", "csv", "parquet", "summary.csv", "va.png")


def test_a_bad_video_is_one_line_and_exit_2_the_others_are_written(
    ray_instance, clips, models, local_predictions, tmp_path, capsys
):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for name in ("a.mp4", "c.mp4"):
        (inputs / name).write_bytes((clips / name).read_bytes())
    (inputs / "bad.mp4").write_bytes(b"not a video at all" * 100)
    out = tmp_path / "ray"
    args = ["predict", inputs, "-c", models["model"], "-b", models["vit"], "-o", out, *PREDICT]
    # the backbone inside each video's task: the same batches, so the same numbers
    code, _, stderr = run_cli([*args, "--engine", "ray", "--backbone-workers", "0"], capsys)
    assert code == 2
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(inputs / "bad.mp4") in errors[0], stderr
    assert "1 of 3 inputs failed" in stderr
    written = _tree(out)
    assert sorted(written) == [f"{v}.{kind}" for v in "ac" for kind in _KINDS]
    reference = _tree(local_predictions)
    assert all(written[name] == reference[name] for name in written)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, media_dir) -> Path:
    """A dataset root with two raw videos: the man's whole clip (72 frames) and 10 frames of the other."""
    root = tmp_path_factory.mktemp("dataset")
    (root / "videos").mkdir()
    first_frames(media_dir / "single_face.mp4", root / "videos" / "long.mp4", 72)
    first_frames(media_dir / "face_noface.mov", root / "videos" / "short.mp4", 10)
    return root


@pytest.fixture(scope="module")
def local_crops(dataset, tmp_path_factory) -> dict[str, bytes]:
    """`faces --dataset` with the local engine: the reference crops, CSVs and marker."""
    out = tmp_path_factory.mktemp("faces_local") / "own"
    code, _, _ = run_cli(["faces", "--dataset", dataset, "--out", out, "--quiet"], _Null())
    assert code == 0
    return _tree(out)


def test_faces_dataset_on_ray_writes_the_local_engines_crops(ray_instance, dataset, local_crops, tmp_path, capsys):
    out = tmp_path / "own"
    code, _, stderr = run_cli(["faces", "--dataset", dataset, "--out", out, "--engine", "ray"], capsys)
    assert code == 0, stderr
    assert _tree(out) == local_crops  # every crop (JPEG), the CSVs, the marker, the links
    assert sum(name.startswith("cropped_aligned/long/") for name in local_crops) >= 70
    assert "[2/2]" in stderr and "2 video(s) done (82 frames" in stderr


def _ray_workers(task: str) -> list[int]:
    """The PIDs of the processes Ray runs `task` in: Ray names a worker process `ray::<task>` while it runs one."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    if handle.read().startswith(f"ray::{task}".encode()):
                        pids.append(int(entry))
            except OSError:
                continue
    return pids


def test_a_worker_killed_mid_video_changes_nothing(ray_instance, dataset, local_crops, tmp_path, capsys):
    out = tmp_path / "own"
    staging = out / "cropped_aligned" / ".long.faces-staging"
    killed: dict[str, object] = {}

    def kill_when_long_is_half_done() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "pid" not in killed:
            done = (out / "cropped_aligned" / "short.faces.csv").exists()
            crops = sum(1 for _ in staging.rglob("*.jpg")) if staging.is_dir() else 0
            workers = _ray_workers("faces_video_task")
            if done and crops >= 8 and len(workers) == 1:  # only `long` is running, some of it staged
                os.kill(workers[0], signal.SIGKILL)
                killed.update(pid=workers[0], staged=crops)
            time.sleep(0.01)

    killer = threading.Thread(target=kill_when_long_is_half_done, daemon=True)
    killer.start()
    code, _, stderr = run_cli(["faces", "--dataset", dataset, "--out", out, "--engine", "ray", "--quiet"], capsys)
    killer.join()
    assert code == 0, stderr
    assert "pid" in killed, "the worker running `long` was not found mid-video"
    assert killed["staged"] < 72
    # Ray ran `long` again: its crops are exactly the uninterrupted run's, nothing half-written or left over
    assert _tree(out) == local_crops
    assert not staging.exists()


@pytest.mark.parametrize("command", ["predict", "faces", "extract"])
def test_without_ray_the_engine_is_a_one_line_error(command, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as where it is not installed
    args = {
        "predict": ["predict", tmp_path, "-c", tmp_path / "m.safetensors", "-o", tmp_path / "o"],
        "faces": ["faces", "--dataset", tmp_path, "--out", tmp_path / "o"],
        "extract": ["extract", tmp_path, "-o", tmp_path / "o", "--random-init"],
    }[command]
    code, stdout, stderr = run_cli([*args, "--engine", "ray"], capsys)
    assert code == 2 and stdout == ""
    assert stderr == "error: --engine ray needs Ray, which is not installed: pip install 'mambava[distributed]'\n"
    assert not (tmp_path / "o").exists()


def _store(root: Path) -> dict[str, bytes]:
    """A feature store's entries (features, mask, meta) as bytes, by entry."""
    return {k: v for k, v in _tree(root).items() if not k.split("/")[-1].startswith(".")}


def test_extract_on_ray_writes_the_local_engines_store(ray_instance, crop_tree, models, tmp_path, capsys):
    args = ["extract", crop_tree, "-c", models["vit"], "--precision", "fp32", "--dtype", "float32", "-b", "16"]
    code, _, stderr = run_cli([*args, "-o", tmp_path / "local", "--workers", "0"], capsys)
    assert code == 0, stderr
    # the backbone inside each video's task (the actors, tested with predict, run the same BackboneWorker)
    code, _, stderr = run_cli([*args, "-o", tmp_path / "ray", "--engine", "ray", "--backbone-workers", "0"], capsys)
    assert code == 0, stderr
    local = _store(tmp_path / "local")
    assert len(local) == 3 * 7 and _store(tmp_path / "ray") == local  # features.npy, mask.npy, meta.json of 7 videos


def test_extract_audio_on_ray_writes_the_local_engines_store(ray_instance, media_dir, tmp_path, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("single_face.mp4", "no_face.mp4"):
        (videos / name).write_bytes((media_dir / name).read_bytes())
    args = ["extract", videos, "--audio", "--audio-features", "logmel"]
    code, _, stderr = run_cli([*args, "-o", tmp_path / "local"], capsys)
    assert code == 0, stderr
    code, _, stderr = run_cli([*args, "-o", tmp_path / "ray", "--engine", "ray"], capsys)
    assert code == 0, stderr
    local = _store(tmp_path / "local")
    assert len(local) == 3 * 2 and _store(tmp_path / "ray") == local


def test_ray_options_belong_to_the_ray_engine(capsys, tmp_path):
    for extra, named in (
        (["--ray-address", "auto"], "--ray-address"),
        (["--backbone-workers", "0"], "--backbone-workers"),
    ):
        code, _, stderr = run_cli(["predict", tmp_path, "-c", tmp_path / "m", "-o", tmp_path / "o", *extra], capsys)
        assert code == 2 and stderr == f"error: {named} is an option of --engine ray\n"
    code, _, stderr = run_cli(["faces", "--dataset", tmp_path, "--engine", "spark"], capsys)
    assert code == 2 and stderr == "error: --engine 'spark': expected one of local, ray\n"
