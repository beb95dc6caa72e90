"""The GPU check: everything only a GPU runs, in one command, with one JSON of figures.

    mambava bench device                               # on the first CUDA device, about 5-8 minutes on one GPU
    mambava bench device --device cpu --tiny           # the same steps at toy sizes on the CPU (the test's run)

Steps, each timed and recorded even when it fails (a failure is a row, not a stop):

1. `environment`: torch, CUDA, the device and its memory, whether mamba-ssm imports.
2. `cuda_tests`: the test suite's CUDA-only tests (`pytest -m cuda`), when the tests are beside the package.
3. `scan`: mamba-ssm's fused selective-scan kernel against our chunked scan and the sequential reference, on
   the paper's shapes (outputs, and time per call); without mamba-ssm, our chunked scan on the device alone.
4. `backbone`: ViT-L/16 feature extraction in bf16 (fp32 beside it), images/s against the 2,500 images/s an
   H100 should reach at batch 256 (`--batch-size`).
5. `train_epoch`: one epoch of the paper's Mamba-VA (67 M parameters) with the paper's recipe on generated
   1024-d features (Lightning, bf16-mixed where the device runs it), frames/s and the loss.
6. `stream_step`: the recurrent step of the paper model at N = 1 and N = 16 streams, ms per step, and its
   agreement with the full pass.

Every figure goes into `--out` (default bench_device.json); the console shows one line per step.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from mambava.backbone import FeatureExtractor, ViTConfig, ViTEncoder, bf16_supported
from mambava.benchmarks import describe_cpu
from mambava.core.fileio import atomic_open
from mambava.data.store import FeatureStore
from mambava.temporal import MambaVA, MambaVAConfig
from mambava.temporal.ops import mamba_ssm_available, selective_scan
from mambava.training import load_config, train

TARGET_IMAGES_PER_S = 2500  # ViT-L/16 bf16 on one H100 (docs/benchmarks.md)
TINY_MODEL = dict(input_dim=32, tcn_channels=(32, 16), kernel_size=3, d_model=16, n_layers=1, d_state=4, head_hidden=8)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best(fn, device: torch.device, repeats: int) -> float:
    """Best seconds of `repeats` calls after one warm-up."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def environment(device: torch.device) -> dict:
    info = {
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "device": str(device),
        "mamba_ssm": mamba_ssm_available(),
        "cpu": describe_cpu(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=props.name,
            capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
            bf16=torch.cuda.is_bf16_supported(),
            cuda=torch.version.cuda,
        )
    return info


def cuda_tests(device: torch.device, tiny: bool) -> dict:
    """The suite's CUDA-only tests (marker `cuda`), run in a child pytest when the tests are beside the package."""
    tests = Path(__file__).resolve().parents[3] / "tests"
    if not tests.is_dir():
        return {"skipped": f"no test suite beside the package ({tests})"}
    if device.type != "cuda":
        return {"skipped": "no CUDA device: the CUDA-only tests would all skip"}
    command = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", str(tests)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tests.parent, timeout=600)
    summary = next((line for line in reversed(result.stdout.splitlines()) if " in " in line), "")
    return {"exit_code": result.returncode, "summary": summary.strip("= ")}


def scan(device: torch.device, tiny: bool, repeats: int) -> dict:
    """Our chunked scan (and mamba-ssm's kernel where it imports) against the sequential reference."""
    batch, frames, d, n = (2, 64, 16, 4) if tiny else (8, 300, 256, 8)
    generator = torch.Generator(device="cpu").manual_seed(0)
    tensors = {
        "u": torch.randn(batch, frames, d, generator=generator),
        "delta": torch.randn(batch, frames, d, generator=generator) * 0.5,
        "A": -torch.rand(d, n, generator=generator) - 0.5,
        "B": torch.randn(batch, frames, n, generator=generator),
        "C": torch.randn(batch, frames, n, generator=generator),
        "D": torch.randn(d, generator=generator),
        "z": torch.randn(batch, frames, d, generator=generator),
        "delta_bias": torch.randn(d, generator=generator) * 0.1,
    }
    tensors = {k: v.to(device) for k, v in tensors.items()}
    with torch.no_grad():
        reference = selective_scan(**tensors, delta_softplus=True, impl="reference")
        out = {"shape": [batch, frames, d, n]}
        impls = ["chunked"] + (["cuda"] if device.type == "cuda" and mamba_ssm_available() else [])
        for impl in impls:
            y = selective_scan(**tensors, delta_softplus=True, impl=impl)
            seconds = _best(
                lambda impl=impl: selective_scan(**tensors, delta_softplus=True, impl=impl), device, repeats
            )
            out[impl] = {
                "max_abs_diff_to_reference": float((y - reference).abs().max()),
                "ms_per_call": seconds * 1e3,
            }
        out["reference_ms_per_call"] = 1e3 * _best(
            lambda: selective_scan(**tensors, delta_softplus=True, impl="reference"), device, 1
        )
        if "cuda" not in impls:
            out["mamba_ssm"] = "not run: " + (
                "no CUDA device" if device.type != "cuda" else "mamba-ssm does not import"
            )
    return out


def backbone(device: torch.device, tiny: bool, batch_size: int, repeats: int) -> dict:
    """ViT feature extraction, images/s in bf16 (where the device runs it) and fp32."""
    config = ViTConfig(img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2, name="tiny") if tiny else None
    torch.manual_seed(0)
    encoder = ViTEncoder(config or "vit_large_patch16")
    size = encoder.config.img_size
    images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, device=device)
    out = {"arch": encoder.config.name, "batch_size": batch_size, "images_per_s": {}}
    precisions = ["fp32"] + (["bf16"] if bf16_supported(device) else [])
    for precision in precisions:
        extractor = FeatureExtractor(encoder, batch_size=batch_size, device=device, precision=precision)
        seconds = _best(lambda e=extractor: e.features_from_resized(images), device, repeats)
        out["images_per_s"][precision] = batch_size / seconds
    best = max(out["images_per_s"].values())
    out["target_images_per_s"] = TARGET_IMAGES_PER_S
    out["of_target"] = best / TARGET_IMAGES_PER_S
    return out


def _write_features(root: Path, dim: int, videos: int, frames: int, seed: int = 0) -> tuple[Path, Path]:
    """A feature store of `videos` generated videos (a smooth latent VA seen through noisy `dim`-d features)
    and their Aff-Wild2 annotation files, 3/4 for training and 1/4 for validation."""
    rng = np.random.default_rng(seed)
    projection = rng.normal(size=(2, dim))
    store = FeatureStore(root / "features")
    annotations = root / "affwild2" / "VA_Estimation_Challenge"
    for index in range(videos):
        folder = "Train_Set" if index < 3 * videos // 4 else "Validation_Set"
        (annotations / folder).mkdir(parents=True, exist_ok=True)
        walk = np.cumsum(rng.normal(size=(frames, 2)), axis=0)
        target = np.tanh(walk / np.sqrt(frames))
        features = target @ projection + rng.normal(size=(frames, dim))
        store.write(f"v{index:03d}", features.astype(np.float32), np.ones(frames, bool), fps=30.0, backbone="generated")
        lines = ["valence,arousal"] + [f"{v:.5f},{a:.5f}" for v, a in target]
        (annotations / folder / f"v{index:03d}.txt").write_text("\n".join(lines) + "\n")
    return root / "features", root / "affwild2"


def train_epoch(device: torch.device, tiny: bool) -> dict:
    """One epoch of the paper model (the paper's recipe) on generated 1024-d features."""
    dim = TINY_MODEL["input_dim"] if tiny else 1024
    videos, frames = (8, 120) if tiny else (64, 1500)
    with tempfile.TemporaryDirectory(prefix="mambava-device-") as folder:
        features, annotations = _write_features(Path(folder), dim, videos, frames)
        overrides = [
            f"data.features={features}",
            f"data.annotations={annotations}",
            f"out_dir={Path(folder) / 'run'}",
            "epochs=1",
            "warmup_epochs=0",
            "progress_bar=false",
            f"accelerator={'gpu' if device.type == 'cuda' else 'cpu'}",
            "devices=1",
            f"precision={'bf16-mixed' if bf16_supported(device) else '32'}",
        ]
        if tiny:
            overrides += [f"model.{k}={list(v) if isinstance(v, tuple) else v}" for k, v in TINY_MODEL.items()]
            overrides += ["data.window=40", "data.stride=20", "batch_size=4"]
        start = time.perf_counter()
        summary = train(load_config(None, overrides))
        seconds = time.perf_counter() - start
    train_frames = summary.get("train_frames") or videos * 3 // 4 * frames
    return {
        "videos": videos,
        "frames_per_video": frames,
        "seconds": seconds,
        "train_frames_per_s": train_frames / seconds,
        "validation_p_va": summary["best"]["p_va"],
        "parameters": summary.get("parameters"),
    }


def stream_step(device: torch.device, tiny: bool, repeats: int) -> dict:
    """The recurrent step at N = 1 and N = 16 streams (ms per step), and its agreement with the full pass."""
    torch.manual_seed(0)
    config = MambaVAConfig(**TINY_MODEL) if tiny else MambaVAConfig()
    model = MambaVA(config).to(device).eval()
    frames = 32 if tiny else 120
    x = torch.randn(1, frames, config.input_dim, device=device)
    out = {}
    with torch.no_grad():
        full = model(x)[0]
        state = model.init_state(1, device=device)
        stepped = torch.stack([model.step(x[:, t], state)[0][0] for t in range(frames)])
        out["max_abs_diff_to_full_pass"] = float((stepped - full).abs().max())
        for streams in (1, 16):
            state = model.init_state(streams, device=device)
            frame = torch.randn(streams, config.input_dim, device=device)
            seconds = _best(lambda s=state, f=frame: model.step(f, s), device, repeats * 10)
            out[f"ms_per_step_n{streams}"] = seconds * 1e3
            out[f"ms_per_stream_n{streams}"] = seconds * 1e3 / streams
    return out


STEPS = ("environment", "cuda_tests", "scan", "backbone", "train_epoch", "stream_step")


def run(device: str | None = None, tiny: bool = False, batch_size: int | None = None, repeats: int = 3) -> dict:
    """Every step of the check on `device` (default: CUDA when available); a step that fails is recorded."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    batch_size = batch_size or (4 if tiny else 256 if dev.type == "cuda" else 8)
    calls = {
        "environment": lambda: environment(dev),
        "cuda_tests": lambda: cuda_tests(dev, tiny),
        "scan": lambda: scan(dev, tiny, repeats),
        "backbone": lambda: backbone(dev, tiny, batch_size, repeats),
        "train_epoch": lambda: train_epoch(dev, tiny),
        "stream_step": lambda: stream_step(dev, tiny, repeats),
    }
    results: dict = {"device": str(dev), "tiny": tiny}
    for name in STEPS:
        start = time.perf_counter()
        try:
            results[name] = {"ok": True, **calls[name]()}
        except Exception as error:  # every step is reported, a failing one included
            results[name] = {"ok": False, "error": f"{type(error).__name__}: {error}".splitlines()[0][:300]}
            results[name]["traceback"] = traceback.format_exc(limit=4)
        results[name]["seconds"] = round(time.perf_counter() - start, 2)
        print(_line(name, results[name]), flush=True)
    return results


def _line(name: str, result: dict) -> str:
    if not result.get("ok"):
        return f"  {name:12s} FAILED in {result['seconds']:.0f} s: {result['error']}"
    shown = {k: v for k, v in result.items() if k not in ("ok", "seconds", "traceback")}
    text = json.dumps(shown, default=str)
    return f"  {name:12s} ok in {result['seconds']:.1f} s: {text[:240]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mambava bench device", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    parser.add_argument("--tiny", action="store_true", help="toy sizes (the CPU test of this check)")
    parser.add_argument("--batch-size", type=int, default=None, help="backbone batch (default 256 on CUDA)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench_device.json"), help="the JSON of figures")
    args = parser.parse_args(argv)
    print(f"mambava bench device: {os.uname().nodename}, torch {torch.__version__}")
    results = run(args.device, args.tiny, args.batch_size, args.repeats)
    with atomic_open(args.out) as handle:
        json.dump(results, handle, indent=1, default=str)
    failed = [name for name in STEPS if not results[name].get("ok")]
    print(
        f"{args.out}: {len(STEPS) - len(failed)} of {len(STEPS)} steps ok"
        + (f"; failed: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0
