"""Load test of `mambava serve`: N concurrent live sessions on loopback against one session alone.

    mambava bench serve                      # 16 sessions, features of the paper model, 10 s each
    mambava bench serve --streams 4,16 --seconds 20 --rate 30
    mambava bench serve --images             # JPEG frames of single_face.mp4: MTCNN + a ViT backbone too

The server (`mambava.serve`, uvicorn on 127.0.0.1, a free port) runs in this process; each simulated client is
a WebSocket session that sends frames at `--rate` frames/s like a camera (paced by the clock, not by the
answers) for `--seconds`, then waits up to `--drain` seconds (10) for the last answers (those still missing are
reported as unanswered). Per-frame latency is from sending a frame
to receiving its answer (frames the server dropped under overload are answered `dropped` and counted, not
timed). Baseline, measured in the same run first: one session alone at the same rate. The ratios say what
sharing the server costs a stream (p50 latency ×) and what it serves (frames answered per second per stream,
against the baseline's).

By default the frames are the model's features (random, `input_dim` floats): the load is the server and the
batched temporal step, the part that is shared. `--images` sends JPEG frames of a real clip through face
detection and the backbone (`--backbone-arch`, random weights), which a CPU runs far slower than the step.
Clients and server share this process's CPUs (the clients are light: one asyncio loop).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mambava.backbone import ViTConfig, ViTEncoder
from mambava.benchmarks import cpu_name, load_average
from mambava.benchmarks.temporal import TINY
from mambava.inference.predict import Predictor
from mambava.media.video import open_video
from mambava.serve.app import ServerThread, create_app
from mambava.serve.sessions import ServeLimits
from mambava.temporal.mamba_va import MambaVA, MambaVAConfig


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def _client(
    url: str, name: str, frames: list[bytes], rate: float, seconds: float, start: float, drain: float
) -> dict:
    """One camera-like session: a frame every 1/rate s from `start` for `seconds`; latency per answered frame."""
    import websockets

    sent: dict[int, float] = {}
    latencies, dropped, errors = [], 0, 0
    answered = 0
    async with websockets.connect(f"{url}/ws?name={name}&fps={rate}", max_size=None) as ws:
        hello = json.loads(await ws.recv())
        if "error" in hello:
            raise RuntimeError(hello["error"])
        n = int(seconds * rate)

        async def receive():
            nonlocal answered, dropped, errors

            while answered < n:
                message = json.loads(await ws.recv())
                if "frame" not in message:
                    continue
                answered += 1
                if "error" in message:
                    errors += 1
                elif message["dropped"]:
                    dropped += 1
                else:
                    latencies.append(time.perf_counter() - sent[message["frame"]])

        receiver = asyncio.create_task(receive())
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent[i] = time.perf_counter()
            await ws.send(frames[i % len(frames)])
        try:
            await asyncio.wait_for(receiver, timeout=drain)
        except asyncio.TimeoutError:
            pass
    return {"sent": n, "answered": answered, "dropped": dropped, "errors": errors, "latencies": latencies}


async def _load(
    url: str, streams: int, frames: list[bytes], rate: float, seconds: float, drain: float = 10.0
) -> list[dict]:
    start = time.perf_counter() + 0.2
    return await asyncio.gather(
        *(_client(url, f"s{i}", frames, rate, seconds, start + i / (rate * streams), drain) for i in range(streams))
    )


def _row(
    label: str, streams: int, results: list[dict], seconds: float, hub_steps: int, hub_rows: int, base: dict | None
) -> dict:
    latencies = [x * 1e3 for r in results for x in r["latencies"]]
    sent = sum(r["sent"] for r in results)
    served = sum(len(r["latencies"]) for r in results)
    dropped = sum(r["dropped"] for r in results)
    lost = sum(r["sent"] - r["answered"] for r in results)
    per_stream = served / seconds / streams
    row = {
        "label": label,
        "streams": streams,
        "sent": sent,
        "served": served,
        "dropped": dropped,
        "lost": lost,
        "p50": _percentile(latencies, 50),
        "p90": _percentile(latencies, 90),
        "p99": _percentile(latencies, 99),
        "per_stream": per_stream,
        "per_step": hub_rows / max(hub_steps, 1),
    }
    row["latency_ratio"] = row["p50"] / base["p50"] if base else 1.0
    row["rate_ratio"] = per_stream / base["per_stream"] if base else 1.0
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="mambava bench serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="16", help="concurrent sessions to measure, comma-separated (default 16)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds each session sends frames (default 10)")
    parser.add_argument("--drain", type=float, default=10.0, help="seconds to wait for the last answers (default 10)")
    parser.add_argument("--rate", type=float, default=30.0, help="frames/s each session sends (default 30)")
    parser.add_argument("--queue-frames", type=int, default=2, help="the server's per-session queue (default 2)")
    parser.add_argument("--tiny", action="store_true", help="a small temporal model: a quick smoke run")
    parser.add_argument(
        "--images", action="store_true", help="JPEG frames of a clip (faces + backbone) instead of features"
    )
    parser.add_argument(
        "--video", default=None, help="the clip for --images (default tests/data/media/single_face.mp4)"
    )
    parser.add_argument(
        "--backbone-arch",
        default="vit_small_patch16",
        help="ViT for --images (random weights; default vit_small_patch16, --tiny: a 1-block ViT)",
    )
    parser.add_argument("--step-precision", default="fp32", help="the sessions' step weights: fp32, bf16 or int8")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    counts = [int(n) for n in str(args.streams).split(",") if n.strip()]
    torch.manual_seed(0)
    config = MambaVAConfig(**TINY) if args.tiny else MambaVAConfig()
    backbone = None
    if args.images:  # the temporal model takes the backbone's features
        backbone = (
            ViTEncoder(
                ViTConfig(img_size=32, patch_size=16, embed_dim=config.input_dim, depth=1, num_heads=2, name="tiny")
            )
            if args.tiny
            else ViTEncoder(args.backbone_arch)
        )
        config = MambaVAConfig(**{**(TINY if args.tiny else {}), "input_dim": backbone.config.embed_dim})
        frames = _jpeg_frames(args.video, 24)
    else:
        rng = np.random.default_rng(0)
        frames = [rng.normal(size=config.input_dim).astype("<f4").tobytes() for _ in range(64)]
    model = MambaVA(config).eval()
    predictor = Predictor(
        model, backbone, windowing="full", batch_size=32, precision="auto", step_precision=args.step_precision
    )
    kind = "JPEG frames of a clip (MTCNN + ViT)" if args.images else f"features ({model.config.input_dim}-d)"
    print(
        f"mambava bench serve: {cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} intra-op "
        f"thread(s), load average {load_average()}; {'tiny test model' if args.tiny else 'paper model'}, {kind}, "
        f"{args.rate:g} frames/s per session for {args.seconds:g} s, queue {args.queue_frames}, step "
        f"{args.step_precision}"
    )
    rows, base = [], None
    for streams in [1] + counts:
        app = create_app(predictor, ServeLimits(max_sessions=max(counts + [1]), queue_frames=args.queue_frames))
        with ServerThread(app) as server:
            hub = app.state.hub
            results = asyncio.run(
                _load(server.url.replace("http", "ws"), streams, frames, args.rate, args.seconds, args.drain)
            )
        row_steps = (hub.stepped_rows, hub.step_calls)
        label = "baseline: 1 session alone" if base is None else f"{streams} sessions"
        row = _row(label, streams, results, args.seconds, row_steps[1], row_steps[0], base)
        base = base or row
        rows.append(row)
    print()
    print(
        "| sessions | frames sent | served | dropped | unanswered | p50 ms | p90 ms | p99 ms | frames/step call "
        "| served/s per session | p50 vs 1 | served/s vs 1 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['label']} | {row['sent']} | {row['served']} | {row['dropped']} | {row['lost']} | "
            f"{row['p50']:.1f} | {row['p90']:.1f} | {row['p99']:.1f} | {row['per_step']:.2f} | "
            f"{row['per_stream']:.1f} | ×{row['latency_ratio']:.2f} | ×{row['rate_ratio']:.2f} |"
        )
    return 0


def _jpeg_frames(video, n: int) -> list[bytes]:
    """The first n frames of `video` (default: the test clip single_face.mp4) as JPEG bytes."""

    path = (
        Path(video) if video else Path(__file__).resolve().parents[3] / "tests" / "data" / "media" / "single_face.mp4"
    )
    frames = []
    with open_video(path) as reader:
        for frame in reader:
            if len(frames) == n:
                break
            buffer = io.BytesIO()
            Image.fromarray(frame.image).save(buffer, format="JPEG", quality=85)
            frames.append(buffer.getvalue())
    return frames


__all__ = ["main"]
