"""Benchmark of streaming: one new frame at a time, batch 1, against re-running a window per frame.

    mambava bench stream                    # or: python benchmarks/stream.py
    mambava bench stream --tiny

Fast: `MambaVA.step` (the causal TCN's ring buffers, the Mamba layers' conv and SSM states; weight-normed
kernels computed once in `init_state`). Baseline, measured in the same run: what a causal model without a
recurrent form has to do, run the model over the last `--window` frames (300) for every new frame and keep the
last output -- with the reference scan in fp32 (the authors' model), and also with our chunked scan.

`--end-to-end [VIDEO]` (default: tests/data/media/single_face.mp4, 30 fps) also times the whole live pipeline per
frame, as `mambava stream` runs it (`mambava.inference.stream.LiveStream`, no frame dropped), twice in the same run:
today's
(MTCNN on every frame, the `--backbone-arch` ViT, default ViT-L/16 at 224 px, the fp32 step) and the fast one
(MTCNN every `--detect-every` frames, 5, faces followed by optical flow in between; the student
`--student-arch` at `--student-size` px, default ViT-Ti/16 at 112, with a linear adapter to the temporal model's
features, as `mambava distill` makes it; the bf16 step), and the default model's (no checkpoint: MTCNN on every
frame, the FER2013 expression net as the backbone, expression-va's step). Backbones have random weights: speed
does not depend on
them. Per stage, ms/frame: decode (the same frames decoded alone, same run), detection, backbone, step, and the
rest (tracking, optical flow, alignment, Python); frames/s end to end, and whether a 30 fps source is followed
with no frame dropped; for today's pipeline also the frame cost with the 300-frame window re-run in place of the
step.

A cheaper step (second table): the same step with the TCN's weights held in bf16 or int8 weight-only
(`init_state(precision=...)`), alone (N = 1) and batched over N = 4 and 16 streams (`StreamBatch`: one weight
read serves N streams), per stream, each as a ratio to today's fp32 single-stream step. All configurations are
timed in turn, frame by frame, so a load change on a shared CPU falls on all of them alike. The floor rows time
the TCN's products alone at each precision (the bytes they read): what a step cannot go below.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from mambava.backbone import FeatureExtractor, ViTConfig, ViTEncoder, vit_config
from mambava.benchmarks import cpu_name, load_average
from mambava.benchmarks.faces import DEFAULT_MEDIA
from mambava.benchmarks.temporal import TINY
from mambava.faces import get_detector
from mambava.faces.expression import ExpressionRecognizer
from mambava.inference.stream import LiveStream
from mambava.media.video import open_video
from mambava.temporal.expression_va import ExpressionVA
from mambava.temporal.mamba_va import MambaVA, MambaVAConfig
from mambava.temporal.tcn import STEP_PRECISIONS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="mambava bench stream", description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=int, default=300, help="baseline window (default 300 frames)")
    parser.add_argument("--frames", type=int, default=200, help="frames streamed for the step timing (default 200)")
    parser.add_argument("--window-frames", type=int, default=3, help="frames timed for the baseline (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--tiny", action="store_true", help="a small model: a quick smoke run")
    parser.add_argument("--batches", default="1,4,16", help="stream counts N of the batched step (default 1,4,16)")
    parser.add_argument(
        "--end-to-end",
        nargs="?",
        const="",
        default=None,
        metavar="VIDEO",
        help="also time the whole live pipeline per frame on VIDEO (default: single_face.mp4)",
    )
    parser.add_argument("--e2e-frames", type=int, default=8, help="frames of VIDEO for --end-to-end (default 8)")
    parser.add_argument(
        "--e2e-fast-frames",
        type=int,
        default=60,
        help="frames of VIDEO for --end-to-end's fast pipeline (default 60: every detection period many times)",
    )
    parser.add_argument(
        "--detect-every", type=int, default=5, help="--end-to-end's fast pipeline: MTCNN every K frames (default 5)"
    )
    parser.add_argument(
        "--student-arch",
        default="vit_tiny_patch16",
        help="--end-to-end's fast pipeline: the student ViT (default vit_tiny_patch16)",
    )
    parser.add_argument("--student-size", type=int, default=112, help="the student's input size in px (default 112)")
    parser.add_argument(
        "--backbone-arch",
        default="vit_large_patch16",
        help="ViT for --end-to-end (default vit_large_patch16, the paper's; --tiny: a 1-block ViT)",
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = MambaVAConfig(**TINY) if args.tiny else MambaVAConfig()
    torch.manual_seed(0)
    model = MambaVA(config).eval()
    W = args.window
    x = torch.randn(1, W + args.frames, config.input_dim)
    print(
        f"mambava bench stream: torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s), "
        f"{cpu_name()}, {'tiny test model' if args.tiny else 'paper configuration'}, batch 1"
    )

    results = {}
    with torch.no_grad():
        for scan in ("reference", "chunked"):
            model(x[:, :16], scan=scan)  # warm-up
            times = []
            for i in range(args.window_frames):
                t = W + i
                start = time.perf_counter()
                model(x[:, t - W + 1 : t + 1], scan=scan)[:, -1]
                times.append(time.perf_counter() - start)
            results[scan] = statistics.median(times)
        start = time.perf_counter()
        model.init_state(1)
        init = time.perf_counter() - start
        cheap, times, floors = cheaper_steps(model, x, args)
        step = cheap[("fp32", 1)]

    base = results["reference"]
    print(f"{'method':<52} {'ms/frame':>9} {'vs baseline':>12}")
    print(
        f"{'baseline: window of ' + str(W) + ' frames per frame, reference scan':<52} {base * 1e3:>9.1f} {'1.0x':>12}"
    )
    print(
        f"{'window of ' + str(W) + ' frames per frame, chunked scan':<52} {results['chunked'] * 1e3:>9.1f} "
        f"{base / results['chunked']:>11.1f}x"
    )
    print(f"{'step(): one frame, recurrent state':<52} {step * 1e3:>9.2f} {base / step:>11.0f}x")
    floor, megabytes = floors["fp32"]
    print(
        f"{'  floor: the TCN products alone (' + f'{megabytes:.0f} MB read)':<52} {floor * 1e3:>9.2f} "
        f"{base / floor:>11.0f}x"
    )
    print(
        f"(init_state: {init * 1e3:.0f} ms once per stream; step median over {args.frames} frames, "
        f"p90 {sorted(times)[int(0.9 * len(times))] * 1e3:.2f} ms; the floor streams the weights from memory at "
        f"{megabytes / 1e3 / floor:.1f} GB/s)"
    )
    print(f"\n(1-minute load average {load_average()})")
    print(
        f"{'cheaper step: TCN weights, N streams per step':<52} {'ms/step':>9} {'ms/stream':>10} {'vs fp32 step':>13}"
    )
    names = {"fp32": "fp32", "bf16": "bf16 weights", "int8": "int8 weight-only"}
    for (precision, n), seconds in cheap.items():
        label = f"{names[precision]}, N={n}" + (
            " (today's step)" if (precision, n) == ("fp32", 1) else ", batched" if n > 1 else ""
        )
        print(f"{label:<52} {seconds * 1e3:>9.2f} {seconds / n * 1e3:>10.2f} {step / (seconds / n):>12.2f}x")
    for precision, (seconds, megabytes) in floors.items():
        label = f"  floor {precision}: the TCN products alone ({megabytes:.1f} MB read)"
        print(f"{label:<52} {seconds * 1e3:>9.2f} {seconds * 1e3:>10.2f} {step / seconds:>12.2f}x")
    if args.end_to_end is not None:
        end_to_end(model, args, step=step, window=results["chunked"])
    return 0


def cheaper_steps(model, x, args):
    """Median seconds of one step per (precision, N) (N streams in one batched step), the fp32 N=1 step's
    per-frame times, and per precision (median seconds, MB) of the TCN's products alone."""

    batches = sorted({1, *(int(n) for n in args.batches.split(","))})
    configs = {}
    for precision in STEP_PRECISIONS:
        for n in batches:
            state = model.init_state(n, precision=precision)
            configs[(precision, n)] = (state, x[0, : args.frames].unsqueeze(0).expand(n, -1, -1).contiguous())
    for state, xs in configs.values():  # warm-up: every ring buffer written once
        for t in range(min(3, xs.shape[1])):
            model.step(xs[:, t], state)
    floors = {}
    for precision in STEP_PRECISIONS:
        products = configs[(precision, 1)][0].tcn.products()
        floors[precision] = [(p, torch.randn(1, p.weight.shape[1]).to(p.input_dtype)) for p in products]
    times = {key: [] for key in [*configs, *floors]}
    for t in range(args.frames):  # in turn, frame by frame: a load change falls on every configuration alike
        for key, (state, xs) in configs.items():
            start = time.perf_counter()
            model.step(xs[:, t], state)
            times[key].append(time.perf_counter() - start)
        for precision, products in floors.items():
            start = time.perf_counter()
            for p, v in products:
                p(v)
            times[precision].append(time.perf_counter() - start)
    floors = {
        precision: (statistics.median(times[precision]), sum(p.nbytes for p, _ in products) / 1e6)
        for precision, products in floors.items()
    }
    return {key: statistics.median(times[key]) for key in configs}, times[("fp32", 1)], floors


class _Timed:
    """Wraps a detector, feature extractor or model and adds up the seconds spent in `methods`."""

    def __init__(self, inner, *methods: str):
        self.inner, self.seconds, self.calls = inner, 0.0, 0
        for method in methods:
            setattr(self, method, self._timed(getattr(inner, method)))

    def _timed(self, function):
        def timed(*a, **k):
            start = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1

        return timed

    def __getattr__(self, name):
        return getattr(self.inner, name)


class _Adapted:
    """A student backbone's features mapped to the temporal model's width by a linear adapter (`mambava
    distill` fits one to the teacher's features; here random: the cost is what is measured)."""

    def __init__(self, extractor, dim: int):
        self.extractor, self.precision, self.dim = extractor, extractor.precision, dim
        self.weight = np.random.default_rng(0).normal(0, extractor.dim**-0.5, (extractor.dim, dim)).astype(np.float32)

    def features(self, crops):
        return self.extractor.features(crops) @ self.weight


def _decode_seconds(video, frames: int) -> float:
    """Seconds per frame to decode the first `frames` + 1 frames of `video` (the first not counted)."""

    with open_video(str(video)) as reader:
        start = None
        for i, _ in enumerate(reader):
            if i == 0:
                start = time.perf_counter()
            if i >= frames:
                break
    return (time.perf_counter() - start) / max(i, 1)


def _pipeline(model, video, extractor, step_precision: str, detect_every: int, frames: int) -> dict:
    """One pass of `LiveStream` over `frames` + 1 processed frames of `video` (the first not counted): seconds
    per frame in total and in detection, backbone and step."""

    detector = _Timed(get_detector("mtcnn"), "detect_batch", "detect")  # (detect: every k-th frame alone)
    backbone = _Timed(extractor, "features")
    stepper = _Timed(model, "step")
    backbone.features(torch.zeros(1, 112, 112, 3, dtype=torch.uint8).numpy())  # warm-ups, not counted
    detector.detect_batch([torch.zeros(360, 640, 3, dtype=torch.uint8).numpy()])
    live = LiveStream(stepper, str(video), detector, backbone, step_precision=step_precision, detect_every=detect_every)
    start = None  # the clock starts after the first frame: opening the video and init_state are not per frame
    for _ in live:
        if start is None:
            start = time.perf_counter()
            detector.seconds = backbone.seconds = stepper.seconds = 0.0
        if live.processed > frames:
            break
    n = max(live.processed - 1, 1)
    return {
        "total": (time.perf_counter() - start) / n,
        "detect": detector.seconds / n,
        "encode": backbone.seconds / n,
        "step": stepper.seconds / n,
        "frames": n,
    }


def end_to_end(model, args, step: float, window: float) -> None:
    """Per-frame cost of today's live pipeline and the fast one (`LiveStream`) on a video, by stage; see the
    module docstring."""

    video = Path(args.end_to_end) if args.end_to_end else DEFAULT_MEDIA / "single_face.mp4"
    torch.manual_seed(0)
    dim = model.config.input_dim
    if args.tiny:
        config = ViTConfig(img_size=32, embed_dim=dim, depth=1, num_heads=4, name="tiny")
        student = ViTConfig(img_size=32, embed_dim=16, depth=1, num_heads=2, name="tiny student")
    else:
        config = vit_config(args.backbone_arch)
        if config.embed_dim != dim:
            config = vit_config(args.backbone_arch, embed_dim=dim)
        student = vit_config(args.student_arch, img_size=args.student_size)
    today = FeatureExtractor(ViTEncoder(config), batch_size=1, precision="auto")
    fast = _Adapted(FeatureExtractor(ViTEncoder(student), batch_size=1, precision="auto"), dim)
    runs = {
        "today": _pipeline(model, video, today, "fp32", 1, args.e2e_frames),
        "fast": _pipeline(model, video, fast, "bf16", args.detect_every, args.e2e_fast_frames),
        # the default model (no checkpoint): MTCNN every frame, the expression net, expression-va's step
        "expression-va": _pipeline(
            ExpressionVA(), video, ExpressionRecognizer(batch_size=1), "fp32", 1, args.e2e_fast_frames
        ),
    }
    decode = _decode_seconds(video, max(args.e2e_frames, args.e2e_fast_frames))
    labels = {
        "today": f"today: MTCNN every frame, {config.name} ({today.precision}), fp32 step",
        "fast": f"fast: MTCNN every {args.detect_every}, {student.name} {student.img_size} px "
        f"({fast.precision}) + adapter, bf16 step",
        "expression-va": "expression-va (the default): MTCNN every frame, expression net, its step",
    }
    print(
        f"\nend to end, {video.name}, one face, ms/frame ({cpu_name()}, 1-minute load average {load_average()}); "
        f"decode timed "
        f"alone in the same run, rest = tracking, optical flow, alignment, Python"
    )
    print(
        f"  {'pipeline':<72} {'decode':>7} {'faces':>7} {'backbone':>9} {'step':>7} {'rest':>7} {'total':>8} "
        f"{'frames/s':>9} {'vs today':>9}"
    )
    floor = {}
    for name, r in runs.items():
        rest = max(r["total"] - decode - r["detect"] - r["encode"] - r["step"], 0.0)
        stages = {"decode": decode, "faces": r["detect"], "backbone": r["encode"], "step": r["step"], "rest": rest}
        floor[name] = max(stages.items(), key=lambda item: item[1])
        print(
            f"  {labels[name]:<72} "
            + " ".join(f"{v * 1e3:>{w}.1f}" for v, w in zip(stages.values(), (7, 7, 9, 7, 7)))
            + f" {r['total'] * 1e3:>8.1f} {1 / r['total']:>9.2f} {runs['today']['total'] / r['total']:>8.1f}x"
        )
    fps = 1 / runs["fast"]["total"]
    stage, seconds = floor["fast"]
    print(
        f"  fast pipeline: {fps:.1f} frames/s end to end: a 30 fps source is "
        + (
            "followed with no frame dropped"
            if fps >= 30
            else f"NOT followed (keeps about 1 frame in {30 / fps:.1f}); its largest stage: {stage} "
            f"{seconds * 1e3:.1f} ms"
        )
        + f" ({runs['fast']['frames']} frames)"
    )
    total = runs["today"]["total"]
    with_window = total - step + window
    print(
        f"  today with the 300-frame window re-run instead of step(): {with_window * 1e3:.1f} ms/frame, "
        f"{1 / with_window:.2f} frames/s (step() makes today's frame {with_window / total:.1f}x faster)"
    )


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
