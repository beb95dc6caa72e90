"""Benchmark of streaming: one new frame at a time, batch 1, against re-running a window per frame.

    mambava bench stream                    # or: python benchmarks/stream.py
    mambava bench stream --tiny

Fast: `MambaVA.step` (the causal TCN's ring buffers, the Mamba layers' conv and SSM states; weight-normed
kernels computed once in `init_state`). Baseline, measured in the same run: what a causal model without a
recurrent form has to do, run the model over the last `--window` frames (300) for every new frame and keep the
last output -- with the reference scan in fp32 (the authors' model), and also with our chunked scan.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mambava.benchmarks.temporal import TINY, _cpu_name
from mambava.model import MambaVA, MambaVAConfig


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="mambava bench stream", description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=int, default=300, help="baseline window (default 300 frames)")
    parser.add_argument("--frames", type=int, default=200, help="frames streamed for the step timing (default 200)")
    parser.add_argument("--window-frames", type=int, default=3, help="frames timed for the baseline (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--tiny", action="store_true", help="a small model: a quick smoke run")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = MambaVAConfig(**TINY) if args.tiny else MambaVAConfig()
    torch.manual_seed(0)
    model = MambaVA(config).eval()
    W = args.window
    x = torch.randn(1, W + args.frames, config.input_dim)
    print(f"mambava bench stream: torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s), "
          f"{_cpu_name()}, {'tiny test model' if args.tiny else 'paper configuration'}, batch 1")

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
        state = model.init_state(1)
        for t in range(W):  # fill the history (not timed)
            model.step(x[:, t], state)
        times = []
        for t in range(W, W + args.frames):
            start = time.perf_counter()
            model.step(x[:, t], state)
            times.append(time.perf_counter() - start)
        step = statistics.median(times)
        start = time.perf_counter()
        state = model.init_state(1)
        init = time.perf_counter() - start

    base = results["reference"]
    print(f"{'method':<52} {'ms/frame':>9} {'vs baseline':>12}")
    print(f"{'baseline: window of ' + str(W) + ' frames per frame, reference scan':<52} {base * 1e3:>9.1f} {'1.0x':>12}")
    print(f"{'window of ' + str(W) + ' frames per frame, chunked scan':<52} {results['chunked'] * 1e3:>9.1f} "
          f"{base / results['chunked']:>11.1f}x")
    print(f"{'step(): one frame, recurrent state':<52} {step * 1e3:>9.2f} {base / step:>11.0f}x")
    print(f"(init_state: {init * 1e3:.0f} ms once per stream; step median over {args.frames} frames, "
          f"p90 {sorted(times)[int(0.9 * len(times))] * 1e3:.2f} ms)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
