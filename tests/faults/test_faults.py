"""Fault injection, for real: full disks (a small tmpfs), read-only outputs (a read-only tmpfs), truncated
checkpoints and processes killed mid-run. Each case checks the command's promise: one line naming the output
and the reason, exit code 2, no traceback; outputs complete or absent (never a partial file); a resume that
ends bit-identical to an uninterrupted run.

The mounts need root (CAP_SYS_ADMIN); elsewhere those tests are skipped with the reason. Root ignores file
permissions, so read-only is a read-only mount, not chmod. Every mount is undone in its fixture's teardown.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from support import AFFWILD2_CROPS, REPO, train_cli, train_data_overrides

PAGE = 4096


# ---------------------------------------------------------------------------------------------------------
# Helpers: mounts, filling a disk, running the real command


class Mounts:
    """Mount small tmpfs file systems under a test's tmp_path; all unmounted at teardown."""

    def __init__(self, base: Path):
        self.base = base
        self.mounted: list[Path] = []

    def tmpfs(self, name: str, size: int, read_only: bool = False) -> Path:
        path = self.base / name
        path.mkdir(parents=True, exist_ok=True)
        options = f"size={size}" + (",ro" if read_only else "")
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {result.stderr.strip()}")
        self.mounted.append(path)
        return path

    def read_only(self, path: Path) -> None:
        """Make a mounted tmpfs read-only, keeping what it holds."""
        subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)

    def unmount_all(self) -> None:
        for path in reversed(self.mounted):
            if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(path)], capture_output=True)  # busy: detach it now
        self.mounted.clear()


@pytest.fixture
def mounts(tmp_path):
    m = Mounts(tmp_path / "mnt")
    yield m
    m.unmount_all()


def fill(folder: Path, leave: int) -> Path:
    """Write a filler file so that about `leave` bytes stay free on folder's file system."""
    stat = os.statvfs(folder)
    free = stat.f_bavail * stat.f_frsize
    path = folder / "filler"
    with open(path, "wb") as handle:
        handle.write(b"\0" * max(0, free - leave))
    return path


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The real `mambava` command in a subprocess (this checkout's source first on the path)."""
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
    }
    return subprocess.run(
        [sys.executable, "-m", "mambava", *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout
    )


def assert_one_line_error(result: subprocess.CompletedProcess, names: str | Path, reason: str) -> str:
    """Exit code 2, no traceback, exactly one `error:` line, naming `names` and giving `reason`."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output, output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert str(names) in errors[0] and reason in errors[0], errors[0]
    assert "/." not in errors[0], errors[0]  # the output the user asked for, not a hidden temporary file
    return errors[0]


def temporaries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.name.endswith(".tmp") or ".faces-staging" in p.name)


# ---------------------------------------------------------------------------------------------------------
# Data: crops + a tiny encoder (extract), a tiny feature store + labels (train, evaluate)


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory) -> Path:
    """A tiny ViT (32x32 input, 64-d features, 1 block) saved as a mambava encoder.safetensors."""
    from mambava.backbone import ViTConfig, ViTEncoder

    torch.manual_seed(0)
    encoder = ViTEncoder(ViTConfig(img_size=32, patch_size=16, embed_dim=64, depth=1, num_heads=2, name="t"))
    return encoder.save(tmp_path_factory.mktemp("encoder") / "encoder.safetensors")


def extract_args(source: Path, store: Path, encoder: Path) -> list:
    # float32 64-d: vidA's 50 frames are 12.9 kB, four pages, so most of the file is written through the map
    return [
        "extract",
        source,
        "-o",
        store,
        "-c",
        encoder,
        "--device",
        "cpu",
        "--workers",
        "0",
        "--dtype",
        "float32",
        "--batch-size",
        "16",
    ]


def store_arrays(store: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from mambava.data.store import FeatureStore

    s = FeatureStore(store)
    return {name: (np.array(s.read(name).features), s.read(name).mask) for name in s.names()}


# ---------------------------------------------------------------------------------------------------------
# extract


def test_extract_on_a_full_disk_is_one_line_and_leaves_no_partial_entry(crop_tree, encoder_file, mounts):
    disk = mounts.tmpfs("small", 256 * 1024)
    filler = fill(disk, leave=3 * PAGE)  # room for the .npy header and last page, not for the rows in between
    store = disk / "store"
    result = run_cli(*extract_args(crop_tree, store, encoder_file))
    assert_one_line_error(result, store, "No space left on device")
    assert temporaries(disk) == []
    assert store_arrays(store) == {}  # no entry visible, complete or not
    # With the space back, the same command finishes the store.
    filler.unlink()
    result = run_cli(*extract_args(crop_tree, store, encoder_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(store_arrays(store)) == sorted(AFFWILD2_CROPS)


def test_extract_killed_mid_video_resumes_to_the_same_store(crop_tree, encoder_file, tmp_path):
    # The reference: the whole tree in one go.
    reference = tmp_path / "reference"
    assert run_cli(*extract_args(crop_tree, reference, encoder_file)).returncode == 0
    # A crop that is a FIFO blocks the reader: the process is stopped mid-extraction, its writer open (a
    # memory-mapped temporary file), at a place that does not depend on timing, and killed there: crop 20 is in
    # vidC's second batch of 16 (a batch never spans two videos), so its first batch is in the writer by then.
    crop = crop_tree / "cropped_aligned" / "vidC" / "00020.jpg"
    jpeg = crop.read_bytes()
    crop.unlink()
    os.mkfifo(crop)
    store = tmp_path / "store"
    process = subprocess.Popen(
        [sys.executable, "-m", "mambava", *map(str, extract_args(crop_tree, store, encoder_file))],
        env={**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not list((store / "vidC").glob(".features.npy.*.tmp")):  # vidC's writer is open
            assert process.poll() is None and time.monotonic() < deadline, "extract ended before the FIFO"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        crop.unlink()
        crop.write_bytes(jpeg)
    done = store_arrays(store)
    assert sorted(done) == ["vidA", "vidB_left", "vidB_right"]  # complete before vidC; vidC invisible
    result = run_cli(*extract_args(crop_tree, store, encoder_file))
    assert result.returncode == 0 and "4 video(s) extracted" in result.stdout and "3 already in" in result.stdout
    assert temporaries(store) == []
    expected, resumed = store_arrays(reference), store_arrays(store)
    assert sorted(resumed) == sorted(expected)
    for name in expected:  # bit for bit
        assert np.array_equal(resumed[name][0], expected[name][0]) and np.array_equal(
            resumed[name][1], expected[name][1]
        )


# ---------------------------------------------------------------------------------------------------------
# train


def checkpoint_weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def uninterrupted_run(train_data, out: Path, epochs: int) -> Path:
    """The same training run in this process, never stopped: what a resumed run must end equal to."""
    from mambava.training import load_config, train

    train(load_config(None, [*train_data_overrides(train_data, epochs), f"out_dir={out}"]))
    return out


def assert_same_weights(run_a: Path, run_b: Path) -> None:
    """The two runs' last checkpoints hold bit-identical weights."""
    a, b = checkpoint_weights(run_a / "checkpoints/last.ckpt"), checkpoint_weights(run_b / "checkpoints/last.ckpt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def run_until_epoch(train_data, out: Path, epochs: int, stop: int) -> None:
    """An earlier run, in this process, stopped before epoch `stop` (checkpoints of epoch stop-1 on disk)."""
    import lightning as L

    from mambava.training import load_config, train

    class Stopped(RuntimeError):
        pass

    class Stop(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == stop:
                raise Stopped

    cfg = load_config(None, [*train_data_overrides(train_data, epochs), f"out_dir={out}"])
    with pytest.raises(Stopped):
        train(cfg, callbacks=[Stop()])


def test_train_on_a_full_disk_keeps_the_checkpoints_and_resumes(train_data, mounts, tmp_path):
    disk = mounts.tmpfs("run", 4 * 1024 * 1024)
    out = disk / "run"
    run_until_epoch(train_data, out, epochs=3, stop=1)
    before = {name: (out / "checkpoints" / name).read_bytes() for name in ("best.ckpt", "last.ckpt")}
    filler = fill(disk, leave=6 * PAGE)  # room for the logs and metrics.csv, not for a ~100 kB checkpoint
    result = run_cli(*train_cli(train_data, out, 3, "--resume"))
    line = assert_one_line_error(result, out / "checkpoints", "No space left on device")
    assert line.endswith("(No space left on device)") and ".ckpt" in line
    for name, data in before.items():  # the earlier checkpoints are whole, not truncated or replaced
        assert (out / "checkpoints" / name).read_bytes() == data, name
    assert temporaries(out) == [] and not (out / "summary.json").exists()
    # Space back: the same command resumes and ends where an uninterrupted run ends, bit for bit.
    filler.unlink()
    result = run_cli(*train_cli(train_data, out, 3, "--resume"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert_same_weights(uninterrupted_run(train_data, tmp_path / "straight", 3), out)


def test_resume_refuses_a_missing_or_truncated_checkpoint(train_data, tmp_path):
    out = tmp_path / "run"
    run_until_epoch(train_data, out, epochs=3, stop=1)
    last = out / "checkpoints" / "last.ckpt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])  # what a copy cut short by a full disk leaves
    result = run_cli(*train_cli(train_data, out, 3, "--resume"))
    assert_one_line_error(result, last, "unreadable checkpoint")
    assert "without --resume" in result.stderr
    last.unlink()  # no checkpoint at all: an error too, never a silent restart from epoch 0
    result = run_cli(*train_cli(train_data, out, 3, "--resume"))
    assert_one_line_error(result, last, "no checkpoint to resume from")
    assert not (out / "summary.json").exists()


def test_train_killed_then_resumed_ends_bit_identical(train_data, tmp_path):
    out = tmp_path / "killed"
    args = [sys.executable, "-m", "mambava", *map(str, train_cli(train_data, out, 16))]
    process = subprocess.Popen(
        args,
        env={**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoints" / "last.ckpt").exists():
            assert process.poll() is None and time.monotonic() < deadline, "training ended before its first checkpoint"
            time.sleep(0.01)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert not (out / "summary.json").exists(), "the run finished before it could be killed"
    result = run_cli(*train_cli(train_data, out, 16, "--resume"))
    assert result.returncode == 0, result.stdout + result.stderr
    from mambava.training import read_metrics

    straight = uninterrupted_run(train_data, tmp_path / "straight", 16)
    assert_same_weights(straight, out)
    assert [r["val_p_va"] for r in read_metrics(out / "metrics.csv")] == [
        r["val_p_va"] for r in read_metrics(straight / "metrics.csv")
    ]


# ---------------------------------------------------------------------------------------------------------
# Every command: an output on a read-only file system


@pytest.fixture(scope="module")
def temporal_model(tmp_path_factory):
    """factory(input_dim, seed=0) -> a tiny Mamba-VA saved as model.safetensors."""
    from mambava.temporal import build_temporal_model, save_temporal_model

    folder = tmp_path_factory.mktemp("models")

    def make(input_dim: int, seed: int = 0) -> Path:
        torch.manual_seed(seed)
        model = build_temporal_model(
            "mamba_va",
            {"input_dim": input_dim, "tcn_channels": [16, 16], "d_model": 16, "n_layers": 1, "head_hidden": 16},
        ).eval()
        return save_temporal_model(model, folder / f"model{input_dim}_{seed}.safetensors")

    return make


def command_args(command: str, out: Path, request) -> list:
    """The command line of `command` writing to `out`, with the inputs it needs."""
    if command == "faces":
        return [
            "faces",
            request.getfixturevalue("media_dir") / "single_face.mp4",
            "-o",
            out,
            "--detector",
            "haar",
            "-q",
        ]
    if command == "extract":
        return extract_args(request.getfixturevalue("crop_tree"), out, request.getfixturevalue("encoder_file"))
    if command == "train":
        return train_cli(request.getfixturevalue("train_data"), out, 1)
    if command == "evaluate":
        features, annotations = request.getfixturevalue("train_data")
        model = request.getfixturevalue("temporal_model")(8)
        return [
            "evaluate",
            model,
            "--features",
            features,
            "--annotations",
            annotations,
            "-o",
            out / "eval.csv",
            "--device",
            "cpu",
        ]
    if command == "synth":
        return [
            "synth",
            "-o",
            out / "synth",
            "--train",
            "1",
            "--val",
            "1",
            "--test",
            "0",
            "--min-frames",
            "30",
            "--max-frames",
            "32",
            "--no-videos",
            "--workers",
            "1",
            "-q",
        ]
    if command == "folds":
        return ["data", "folds", request.getfixturevalue("affwild2_root"), "-o", out / "folds.yaml", "--n-folds", "2"]
    if command == "predict":
        features = out.parent / "inputs" / "clip.npy"
        return ["predict", features, "-c", request.getfixturevalue("temporal_model")(24), "-o", out]
    raise ValueError(command)


@pytest.mark.parametrize("command", ["faces", "extract", "train", "evaluate", "synth", "folds", "predict"])
def test_read_only_output_is_one_line_naming_it(command, mounts, request):
    disk = mounts.tmpfs("ro", 1024 * 1024)
    out = disk / "out"
    out.mkdir()  # the output folder exists (an earlier run's), on a file system mounted read-only since
    (out / "earlier.txt").write_text("from an earlier run\n")
    inputs = disk / "inputs"
    inputs.mkdir()
    np.save(inputs / "clip.npy", np.random.default_rng(0).normal(size=(90, 24)).astype(np.float32))
    args = command_args(command, out, request)
    mounts.read_only(disk)
    result = run_cli(*args)
    assert_one_line_error(result, out, "Read-only file system")
    assert sorted(p.name for p in out.iterdir()) == ["earlier.txt"]


# ---------------------------------------------------------------------------------------------------------
# predict: a multi-file output is all new or all as before


def test_predict_on_a_full_disk_leaves_the_earlier_outputs_whole(temporal_model, mounts):
    disk = mounts.tmpfs("pred", 1024 * 1024)
    clip = disk / "clip.npy"
    np.save(clip, np.random.default_rng(0).normal(size=(300, 24)).astype(np.float32))
    out = disk / "out"
    first = run_cli("predict", clip, "-c", temporal_model(24, seed=0), "-o", out)
    assert first.returncode == 0, first.stdout + first.stderr
    parquet = ["clip.parquet"] if importlib.util.find_spec("pyarrow") else []  # written when pyarrow is there
    names = sorted(["clip.circumplex.png", "clip.csv", "clip.summary.csv", "clip.va.png", *parquet])
    assert sorted(p.name for p in out.iterdir()) == names
    before = {name: (out / name).read_bytes() for name in names}
    csv_size = len(before["clip.csv"])
    filler = fill(disk, leave=csv_size + 2 * PAGE)  # room for the new CSV, not for its plots
    other = temporal_model(24, seed=1)
    result = run_cli("predict", clip, "-c", other, "-o", out)
    assert_one_line_error(result, out / "clip.", "No space left on device")
    assert "1 of 1 inputs failed" in result.stderr
    # Not a new CSV beside the earlier run's plots: every file is the earlier run's, whole.
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    filler.unlink()
    result = run_cli("predict", clip, "-c", other, "-o", out, "--no-plots")
    assert result.returncode == 0, result.stdout + result.stderr
    assert (out / "clip.csv").read_bytes() != before["clip.csv"]
    # The plots were not redone: the run says they are the earlier run's.
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert notes == [f"note: {out / 'clip.va.png'}, {out / 'clip.circumplex.png'} from an earlier run, not rewritten"]


# ---------------------------------------------------------------------------------------------------------
# Saved models and encoders follow the umask


@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_saved_models_follow_the_umask(umask, tmp_path):
    from mambava.backbone import ViTConfig, ViTEncoder
    from mambava.temporal import build_temporal_model, save_temporal_model

    model = build_temporal_model(
        "mamba_va", {"input_dim": 8, "tcn_channels": [8], "d_model": 8, "n_layers": 1, "head_hidden": 8}
    )
    encoder = ViTEncoder(ViTConfig(img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2, name="t"))
    previous = os.umask(umask)
    try:
        paths = [
            save_temporal_model(model, tmp_path / "model.safetensors"),
            encoder.save(tmp_path / "encoder.safetensors"),
        ]
        if hasattr(model, "save"):
            paths.append(model.save(tmp_path / "mamba_va.safetensors"))
    finally:
        os.umask(previous)
    for path in paths:
        assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~umask), path


# ---------------------------------------------------------------------------------------------------------
# Every command: an output on a full disk


@pytest.mark.parametrize("command", ["faces", "extract", "train", "evaluate", "synth", "folds", "predict"])
def test_full_disk_is_one_line_naming_the_output(command, mounts, request):
    disk = mounts.tmpfs("full", 1024 * 1024)
    out = disk / "out"
    out.mkdir()
    inputs = disk / "inputs"
    inputs.mkdir()
    np.save(inputs / "clip.npy", np.random.default_rng(0).normal(size=(90, 24)).astype(np.float32))
    args = command_args(command, out, request)
    fill(disk, leave=0)
    result = run_cli(*args)
    assert_one_line_error(result, out, "No space left on device")
    assert temporaries(disk) == []
