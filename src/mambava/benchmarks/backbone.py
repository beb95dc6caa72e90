"""ViT feature-extraction throughput: fp32 (the baseline) vs. bf16 autocast, measured in the same run.

    mambava bench backbone                       # ViT-L/16 on this machine's CPU
    mambava bench backbone --device cuda --batch-size 256 --repeats 20

It times `FeatureExtractor.features_from_resized` (normalise + ViT + CLS), i.e. what the extraction loop's main
process does per batch; JPEG decoding and resizing run in the DataLoader workers and are timed separately
(per worker process) as `decode+resize`. Random weights: the speed does not depend on them. To tell the code from
the machine, each precision is also compared with one ViT-sized matrix product timed in the same run: the
fraction of that GEMM rate the whole ViT reaches.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch
from PIL import Image

from mambava.backbone import FeatureExtractor, ViTEncoder, bf16_supported, resize_crop


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


def gemm_gflops(device: torch.device, dtype: torch.dtype, tokens: int, dim: int, hidden: int, repeats: int) -> float:
    """Rate of one ViT-sized matrix product (tokens x dim @ dim x hidden), the hardware's practical ceiling."""
    x = torch.randn(tokens, dim, device=device, dtype=dtype)
    w = torch.randn(hidden, dim, device=device, dtype=dtype)
    with torch.inference_mode():
        seconds = _time_batches(lambda: torch.nn.functional.linear(x, w), repeats)
    return 2 * tokens * dim * hidden / seconds / 1e9


def run(
    arch: str = "vit_large_patch16",
    device: str = "cpu",
    batch_size: int = 8,
    repeats: int = 2,
    precisions: tuple[str, ...] = ("fp32", "bf16"),
) -> dict:
    dev = torch.device(device)
    torch.manual_seed(0)
    encoder = ViTEncoder(arch)
    size = encoder.config.img_size
    images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8)
    if dev.type == "cuda":
        images = images.to(dev)
    results = {
        "arch": encoder.config.name,
        "device": str(dev),
        "batch_size": batch_size,
        "threads": torch.get_num_threads(),
        "bf16_fast": bf16_supported(dev),
        "images_per_s": {},
        "gflop_per_image": vit_gflop(encoder.config),
        "gemm_gflops": {},
        "of_gemm_peak": {},
    }
    for precision in precisions:
        extractor = FeatureExtractor(encoder, batch_size=batch_size, device=dev, precision=precision)
        seconds = _time_batches(lambda: extractor.features_from_resized(images), repeats)
        results["images_per_s"][precision] = batch_size / seconds
        gemm = gemm_gflops(
            dev,
            torch.bfloat16 if extractor.precision == "bf16" else torch.float32,
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
        f"{result['arch']} on {result['device']} ({result['threads']} threads), batch {result['batch_size']}, "
        f"bf16 hardware: {'yes' if result['bf16_fast'] else 'no'}"
    )
    print(f"  {result['gflop_per_image']:.1f} GFLOP per image")
    for precision, rate in result["images_per_s"].items():
        print(
            f"  {precision:5s} {rate:9.2f} images/s   x{result['speedup'].get(precision, float('nan')):.2f} vs fp32"
            f"   ({100 * result['of_gemm_peak'][precision]:.0f}% of a {result['gemm_gflops'][precision]:.0f} "
            f"GFLOP/s {precision} GEMM measured in this run)"
        )
    print(f"  decode+resize (112 px JPEG -> 224): {result['decode_resize_per_worker']:.0f} images/s per worker")
    return result


if __name__ == "__main__":
    main()
