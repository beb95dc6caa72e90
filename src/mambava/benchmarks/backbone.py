"""ViT feature-extraction throughput: fp32 (the baseline) vs. bf16 autocast and int8, measured in the same run.

    mambava bench backbone                       # ViT-L/16 on this machine's CPU
    mambava bench backbone --device cuda --batch-size 256 --repeats 20

It times `FeatureExtractor.features_from_resized` (normalise + ViT + CLS), i.e. what the extraction loop's main
process does per batch; JPEG decoding and resizing run in the DataLoader workers and are timed separately
(per worker process) as `decode+resize`. Random weights: the speed does not depend on them. To tell the code from
the machine, each precision is also compared with one ViT-sized matrix product timed in the same run: the
fraction of that GEMM rate the whole ViT reaches (int8: fbgemm's dynamic int8 product on the same shape).

On a CPU without bf16 in hardware (AMD Zen 3: AVX2 only) bf16 is emulated, tens of times slower than fp32: its
row is skipped, with the slowdown of a small product measured instead. The int8 row (a CPU with fbgemm's
kernels) also gives the features' cosine similarity to fp32: `--precision auto` takes int8 on such a CPU
for a ViT this wide only when it is within 0.999 (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch
from PIL import Image

from mambava.backbone import FeatureExtractor, ViTEncoder, bf16_supported, resize_crop
from mambava.backbone.extractor import resolve_precision
from mambava.benchmarks import bf16_slowdown, describe_cpu
from mambava.core.quantize import Int8Matmul, cpu_has_int8_kernels


def _time_batches(fn, repeats: int) -> float:
    """Seconds per call: one warm-up call, then the best of `repeats` (the least disturbed by other load)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def decode_rate(n: int = 64, size: int = 112) -> float:
    """Images/s of one process doing what an extraction worker does: JPEG decode + PIL bicubic resize."""

    rng = np.random.default_rng(0)
    blobs = []
    for _ in range(n):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, format="JPEG")
        blobs.append(buffer.getvalue())

    def run():
        for blob in blobs:
            with Image.open(io.BytesIO(blob)) as image:
                resize_crop(np.asarray(image.convert("RGB")))

    return n / _time_batches(run, 3)


def vit_gflop(config) -> float:
    """FLOPs (2 x multiply-adds) of one image through the encoder, in GFLOP (ViT-L/16 at 224: 123)."""
    return config.flops() / 1e9


def gemm_gflops(device: torch.device, dtype, tokens: int, dim: int, hidden: int, repeats: int) -> float:
    """Rate of one ViT-sized matrix product (tokens x dim @ dim x hidden), the hardware's practical ceiling;
    dtype "int8": fbgemm's dynamic int8 product (`mambava.core.quantize.Int8Matmul`)."""
    x = torch.randn(tokens, dim, device=device)
    w = torch.randn(hidden, dim, device=device)
    with torch.inference_mode():
        if dtype == "int8":
            product = Int8Matmul(w, None)
            seconds = _time_batches(lambda: product(x), repeats)
        else:
            a, b = x.to(dtype), w.to(dtype)
            seconds = _time_batches(lambda: torch.nn.functional.linear(a, b), repeats)
    return 2 * tokens * dim * hidden / seconds / 1e9


def default_precisions(device: torch.device) -> tuple[tuple[str, ...], dict[str, str]]:
    """The precisions worth timing on `device` and why any other is left out: bf16 only where the hardware
    runs it, int8 only on a CPU with fbgemm's kernels."""
    precisions, skipped = ["fp32"], {}
    if bf16_supported(device):
        precisions.append("bf16")
    else:
        skipped["bf16"] = (
            f"emulated on this CPU (no AMX / AVX-512 BF16): a 512x1024 @ 1024x1024 product runs "
            f"{bf16_slowdown():.0f}x slower in bf16 than in fp32 here"
        )
    if device.type == "cpu" and cpu_has_int8_kernels():
        precisions.append("int8")
    elif device.type == "cpu":
        skipped["int8"] = "no fbgemm int8 kernels on this CPU"
    return tuple(precisions), skipped


def run(
    arch: str = "vit_large_patch16",
    device: str = "cpu",
    batch_size: int = 8,
    repeats: int = 2,
    precisions: tuple[str, ...] | None = None,
) -> dict:
    dev = torch.device(device)
    skipped: dict[str, str] = {}
    if precisions is None:
        precisions, skipped = default_precisions(dev)
    torch.manual_seed(0)
    encoder = ViTEncoder(arch)
    size = encoder.config.img_size
    images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8)
    if dev.type == "cuda":
        images = images.to(dev)
    results = {
        "arch": encoder.config.name,
        "device": str(dev),
        "cpu": describe_cpu() if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "bf16_fast": bf16_supported(dev),
        "auto": resolve_precision("auto", dev, encoder.config.embed_dim),
        "images_per_s": {},
        "gflop_per_image": vit_gflop(encoder.config),
        "gemm_gflops": {},
        "of_gemm_peak": {},
        "cosine_to_fp32": {},
        "skipped": skipped,
    }
    reference = None
    for precision in precisions:
        extractor = FeatureExtractor(encoder, batch_size=batch_size, device=dev, precision=precision)
        seconds = _time_batches(lambda: extractor.features_from_resized(images), repeats)
        features = extractor.features_from_resized(images).float().cpu()
        if precision == "fp32":
            reference = features
        elif reference is not None:
            cosine = torch.nn.functional.cosine_similarity(reference, features, dim=1)
            results["cosine_to_fp32"][precision] = float(cosine.min())
        results["images_per_s"][precision] = batch_size / seconds
        gemm = gemm_gflops(
            dev,
            {"bf16": torch.bfloat16, "int8": "int8"}.get(extractor.precision, torch.float32),
            batch_size * (encoder.config.grid**2 + 1),
            encoder.config.embed_dim,
            encoder.config.mlp_hidden,
            max(3, repeats),
        )
        results["gemm_gflops"][precision] = gemm
        results["of_gemm_peak"][precision] = batch_size / seconds * results["gflop_per_image"] / gemm
    base = results["images_per_s"].get("fp32")
    results["speedup"] = {p: r / base for p, r in results["images_per_s"].items()} if base else {}
    results["decode_resize_per_worker"] = decode_rate()
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="mambava bench backbone", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vit_large_patch16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 on CPU, 256 on CUDA")
    parser.add_argument("--repeats", type=int, default=None, help="timed batches after one warm-up (best is kept)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    result = run(args.arch, args.device, args.batch_size or (256 if cuda else 8), args.repeats or (20 if cuda else 2))
    print(
        f"{result['arch']} on {result['device']} ({result['threads']} threads), batch {result['batch_size']}: "
        f"{result['cpu']}; --precision auto -> {result['auto']}"
    )
    print(f"  {result['gflop_per_image']:.1f} GFLOP per image")
    for precision, rate in result["images_per_s"].items():
        print(
            f"  {precision:5s} {rate:9.2f} images/s   x{result['speedup'].get(precision, float('nan')):.2f} vs fp32"
            f"   ({100 * result['of_gemm_peak'][precision]:.0f}% of a {result['gemm_gflops'][precision]:.0f} "
            f"GFLOP/s {precision} GEMM measured in this run)"
            + (
                f"; features' cosine to fp32 >= {result['cosine_to_fp32'][precision]:.5f}"
                if precision in result["cosine_to_fp32"]
                else ""
            )
        )
    for precision, why in result["skipped"].items():
        print(f"  {precision:5s} skipped: {why}")
    print(f"  decode+resize (112 px JPEG -> 224): {result['decode_resize_per_worker']:.0f} images/s per worker")
    return result


if __name__ == "__main__":
    main()
