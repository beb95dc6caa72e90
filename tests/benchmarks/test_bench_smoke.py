"""Every `mambava bench NAME` runs through the CLI at its smallest size (issue 13, item 6): exit 0, no traceback,
its own usage line, and the rows that carry its ratios against the baseline (their values are timing: not
asserted). A new benchmark without an entry in SMOKE fails `test_every_benchmark_has_a_smoke_run`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support import run_cli, short_clip

from mambava.cli.bench import available
from mambava.core import quantize

NUMBER = r"[0-9][0-9,]*(?:\.[0-9]+)?"


def _demo_run(out: Path) -> Path:
    """What `bench stitching` reads of a `mambava demo` folder: the test videos of data/ (the small Aff-Wild2
    tree of conftest), their labels in synth_ground_truth/, their features, and runs/mamba_va's model."""
    import numpy as np
    import torch
    from support import make_affwild2_tree

    from mambava.data.store import FeatureStore
    from mambava.synth import GROUND_TRUTH_DIR
    from mambava.temporal import build_temporal_model, save_temporal_model

    root = make_affwild2_tree(out / "data")
    rng = np.random.default_rng(0)
    store = FeatureStore(out / "features")
    for name, n in (("vidE", 20), ("vidF_left", 15)):
        x = np.cumsum(rng.normal(size=(n, 8)), axis=0).astype(np.float32)
        store.write(name, x, np.ones(n, bool), fps=30, backbone="test", dtype="float32")
        path = root / GROUND_TRUTH_DIR / "Test_Set" / f"{name}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("valence,arousal\n" + "".join(f"{v:.3f},{a:.3f}\n" for v, a in np.tanh(x[:, :2] / 4)))
    torch.manual_seed(0)
    model = build_temporal_model(
        "mamba_va", {"input_dim": 8, "tcn_channels": [8], "d_model": 8, "n_layers": 1, "head_hidden": 8}
    )
    save_temporal_model(model.eval(), out / "runs" / "mamba_va" / "model.safetensors")
    return out


# name -> (arguments for the smallest run, the ratio rows expected in its output)
SMOKE = {
    "audio": (
        ["--video", "{media}/single_face.mp4", "--repeats", "1"],
        [rf"^  decode +{NUMBER} x real time +×1\.000 of decode$"]
        + [
            rf"^  {re.escape(name)} +{NUMBER} x real time +×{NUMBER} of decode$"
            for name in ("logmel", "egemaps", "egemaps+logmel")
        ],
    ),
    "backbone": (
        ["--arch", "vit_tiny_patch16", "--batch-size", "1", "--repeats", "1", "--threads", "1"],
        [rf"^  fp32 +{NUMBER} images/s +x1\.00 vs fp32 "]
        + (  # bf16 timed where the hardware runs it, else skipped with the measured slowdown
            [rf"^  bf16 +{NUMBER} images/s +x{NUMBER} vs fp32 "]
            if quantize.cpu_has_fast_bf16()
            else [rf"^  bf16  skipped: emulated on this CPU .* runs {NUMBER}x slower in bf16 than in fp32 here$"]
        )
        + (
            [rf"^  int8 +{NUMBER} images/s +x{NUMBER} vs fp32 .*; features' cosine to fp32 >= 0\.\d+$"]
            if quantize.cpu_has_int8_kernels()
            else []
        ),
    ),
    "device": (
        ["--device", "cpu", "--tiny", "--out", "{tmp}/device.json"],
        [
            rf"^  {step} +ok in {NUMBER} s: "
            for step in ("environment", "scan", "backbone", "train_epoch", "stream_step")
        ]
        + [r"^  cuda_tests +ok in .*no CUDA device", r"device\.json: 6 of 6 steps ok$"],
    ),
    "faces": (
        ["--video", "{clip}", "--repeats", "1"],
        [rf"^  decode +{NUMBER} frames/s +×1\.000 of decode, \+0\.00 ms/frame$"]
        + [
            rf"^  {re.escape(name)} +{NUMBER} frames/s +×{NUMBER} of decode, [+-]{NUMBER} ms/frame$"
            for name in (
                "mtcnn (auto)",
                "mtcnn (1 thread)",
                "mtcnn (2 threads)",
                "mtcnn every 3",
                "mtcnn every 5",
                "mtcnn every 5, whole frame",
                "mtcnn + learned landmarks",
                "haar",
                "extract_faces",
                "mtcnn + expressions",
                "mtcnn + dlib68",  # the faces extra's rows (setup.sh installs it)
                "mtcnn + dlib68 every 5",
                "mtcnn + dlib68 + descriptors",
            )
        ]
        + [
            rf"^  stage {re.escape(name)} +{NUMBER} ms/{unit}$"
            for name, unit in (
                ("mtcnn detection (per frame)", "frame"),
                ("learned landmarks", "face"),
                ("dlib68 points", "face"),
                ("head pose", "face"),
                ("descriptor", "face"),
                ("expression net, batch 1", "face"),
                ("expression net, batch 32", "face"),
            )
        ],
    ),
    "scale": (
        ["--video", "{clip}", "--workers", "1"],
        [
            rf"^\| {re.escape(stage)} \| {NUMBER} frames/s \| {NUMBER} frames/s \| [+-]{NUMBER} s \| yes \|$"
            for stage in ("faces --dataset", "extract", "predict", "pipeline")
        ],
    ),
    "serve": (
        ["--tiny", "--threads", "1", "--streams", "2", "--seconds", "0.5", "--rate", "10"],
        [
            r"^\| baseline: 1 session alone \| 5 \| \d+ \| \d+ \| \d+ \| "
            + NUMBER
            + r" \| "
            + NUMBER
            + r" \| "
            + NUMBER
            + r" \| "
            + NUMBER
            + r" \| "
            + NUMBER
            + r" \| ×1\.00 \| ×1\.00 \|$",
            r"^\| 2 sessions \| 10 \| \d+ \| \d+ \| \d+ \| "
            + NUMBER
            + r" \| "
            + NUMBER
            + r" \| "
            + NUMBER
            + r" \| "
            + NUMBER
            + r" \| "
            + NUMBER
            + r" \| ×"
            + NUMBER
            + r" \| ×"
            + NUMBER
            + r" \|$",
        ],
    ),
    "stitching": (
        ["{demo}"],
        [
            rf"^\| {option} \| -?{NUMBER} \| -?{NUMBER} \| -?{NUMBER} \| {NUMBER} \| -?{NUMBER} \|$"
            for option in ("mean", "most_history", "full")
        ],
    ),
    "stream": (
        [
            "--tiny",
            "--threads",
            "1",
            "--frames",
            "10",
            "--window-frames",
            "1",
            "--window",
            "40",
            "--end-to-end",
            "--e2e-frames",
            "2",
            "--e2e-fast-frames",
            "6",
        ],
        [
            r"^baseline: window of 40 frames per frame, reference scan +" + NUMBER + r" +1\.0x$",
            r"^window of 40 frames per frame, chunked scan +" + NUMBER + r" +" + NUMBER + r"x$",
            r"^step\(\): one frame, recurrent state +" + NUMBER + r" +" + NUMBER + r"x$",
            r"^fp32, N=1 \(today's step\) +" + NUMBER + r" +" + NUMBER + r" +1\.00x$",
            r"^bf16 weights, N=1 +" + NUMBER + r" +" + NUMBER + r" +" + NUMBER + r"x$",
            r"^int8 weight-only, N=1 +" + NUMBER + r" +" + NUMBER + r" +" + NUMBER + r"x$",
            *(
                r"^" + p + r", N=" + n + r", batched +" + NUMBER + r" +" + NUMBER + r" +" + NUMBER + r"x$"
                for p in ("fp32", "bf16 weights", "int8 weight-only")
                for n in ("4", "16")
            ),
            *(
                r"^  floor "
                + p
                + r": the TCN products alone \("
                + NUMBER
                + r" MB read\) +"
                + NUMBER
                + r" +"
                + NUMBER
                + r" +"
                + NUMBER
                + r"x$"
                for p in ("fp32", "bf16", "int8")
            ),
            # --end-to-end: today's pipeline and the fast one, ms/frame per stage, frames/s, the ratio to today's
            *(
                r"^  " + label + r" +" + r" +".join([NUMBER] * 7) + r" +" + NUMBER + r"x$"
                for label in (
                    r"today: MTCNN every frame, tiny \(\w+\), fp32 step",
                    r"fast: MTCNN every 5, tiny student 32 px \(\w+\) \+ adapter, bf16 step",
                    r"expression-va \(the default\): MTCNN every frame, expression net, its step",
                )
            ),
            r"^  fast pipeline: " + NUMBER + r" frames/s end to end: a 30 fps source is (followed|NOT followed)",
        ],
    ),
    "temporal": (
        ["--tiny", "--threads", "1", "--repeats", "1", "--quiet"],
        [
            r"^inference B=\d+ T=\d+ +baseline: reference scan, fp32 +" + NUMBER + r" ms +" + NUMBER + r" *$",
            r"^inference B=\d+ T=\d+ +chunked scan, fp32 +" + NUMBER + r" ms +" + NUMBER + r" +" + NUMBER + r"x ",
        ]
        + (  # the bf16 rows and their floor where bf16 runs in hardware; else the line that says why not
            [
                r"^inference B=\d+ T=\d+ +chunked scan, bf16 autocast .*; " + NUMBER + r"x the floor$",
                r"^inference B=\d+ T=\d+ +floor: TCN GEMMs bf16 \+ enc\. proj\. +"
                + NUMBER
                + r" ms +"
                + NUMBER
                + r" +TCN GEMMs at "
                + NUMBER
                + r" GFLOP/s bf16$",
                r"^training step B=\d+ T=\d+ +chunked scan, bf16 autocast .* " + NUMBER + r"x the floor$",
            ]
            if quantize.cpu_has_fast_bf16()
            else [
                r"^  bf16 rows skipped: emulated on this CPU .* runs " + NUMBER + r"x slower in bf16 than in fp32 here"
            ]
        )
        + (
            [
                r"^inference B=\d+ T=\d+ +chunked scan, int8 TCN +" + NUMBER + r" ms .*rel\. diff\. to fp32 .*x fp32$",
                r"^TCN alone, B=\d+ T=\d+ +int8 \(Int8CausalConv\) +" + NUMBER + r" ms",
            ]
            if quantize.cpu_has_int8_kernels()
            else []
        )
        + [
            r"^training step B=\d+ T=\d+ +chunked scan, fp32 +" + NUMBER + r" ms +" + NUMBER + r" +" + NUMBER + r"x",
        ],
    ),
}


def test_every_benchmark_has_a_smoke_run(capsys):
    assert sorted(available()) == sorted(SMOKE)
    code, out, _ = run_cli(["bench"], capsys)
    assert code == 0 and [line.split()[0] for line in out.splitlines()[3:]] == sorted(SMOKE)


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_bench_help_names_the_command(name, capsys):
    code, out, err = run_cli(["bench", name, "--help"], capsys)
    assert code == 0 and out.startswith(f"usage: mambava bench {name} [-h]"), out[:200]


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=[pytest.mark.xdist_group("ray"), pytest.mark.slow]) if n == "scale" else n
        for n in sorted(SMOKE)
    ],
)  # (bench scale starts two Ray instances, ~80 s: on the worker that runs the other Ray tests)
def test_bench_smallest_run_prints_its_ratio_rows(name, media_dir, tmp_path, capsys):
    import torch

    threads = torch.get_num_threads()
    args, rows = SMOKE[name]
    clip = short_clip(media_dir, tmp_path / "clip.mp4") if name in ("faces", "scale") else None
    demo = _demo_run(tmp_path / "demo") if name == "stitching" else None
    try:
        code, out, err = run_cli(
            ["bench", name, *(a.format(clip=clip, demo=demo, media=media_dir, tmp=tmp_path) for a in args)], capsys
        )
    finally:
        torch.set_num_threads(threads)
    assert code == 0 and "Traceback" not in err, err[-2000:]
    lines = out.splitlines()
    for row in rows:
        assert any(re.search(row, line) for line in lines), (row, out)
    if name == "device":
        _check_device_figures(tmp_path / "device.json")


def _check_device_figures(path: Path) -> None:
    """The GPU check's CPU run: its JSON holds every step with numbers that say the code is right."""
    import json

    figures = json.loads(path.read_text())
    assert figures["scan"]["chunked"]["max_abs_diff_to_reference"] < 1e-4
    assert figures["stream_step"]["max_abs_diff_to_full_pass"] < 1e-4
    assert figures["stream_step"]["ms_per_stream_n16"] < figures["stream_step"]["ms_per_stream_n1"] * 16
    assert figures["backbone"]["images_per_s"]["fp32"] > 0 and figures["backbone"]["target_images_per_s"] == 2500
    assert figures["train_epoch"]["parameters"] > 0 and -1 <= figures["train_epoch"]["validation_p_va"] <= 1
    assert figures["environment"]["cuda_available"] is False and "mamba_ssm" in figures["environment"]


def test_bench_unknown_name_is_one_line(capsys):
    code, out, err = run_cli(["bench", "nope"], capsys)
    assert code == 2 and err.strip() == f"error: no benchmark named 'nope'; available: {', '.join(sorted(SMOKE))}"
