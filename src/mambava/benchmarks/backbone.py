"""ViT feature-extraction throughput: fp32 (the baseline) vs. bf16 autocast, measured in the same run.

    python benchmarks/backbone.py                       # ViT-L/16 on this machine's CPU
    python benchmarks/backbone.py --device cuda --batch-size 256 --repeats 20

It times `FeatureExtractor.features_from_resized` (normalise + ViT + CLS), i.e. what the extraction loop's main
process does per batch; JPEG decoding and resizing run in the DataLoader workers and are timed separately
(per worker process) as `decode+resize`. Random weights: the speed does not depend on them.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch


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
    from PIL import Image

    from mambava.backbone import resize_crop

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


def run(arch: str = "vit_large_patch16", device: str = "cpu", batch_size: int = 8, repeats: int = 2,
        precisions: tuple[str, ...] = ("fp32", "bf16")) -> dict:
    from mambava.backbone import FeatureExtractor, ViTEncoder, bf16_supported

    dev = torch.device(device)
    torch.manual_seed(0)
    encoder = ViTEncoder(arch)
    size = encoder.config.img_size
    images = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8)
    if dev.type == "cuda":
        images = images.to(dev)
    results = {"arch": encoder.config.name, "device": str(dev), "batch_size": batch_size, "threads": torch.get_num_threads(),
               "bf16_fast": bf16_supported(dev), "images_per_s": {}}
    for precision in precisions:
        extractor = FeatureExtractor(encoder, batch_size=batch_size, device=dev, precision=precision)
        seconds = _time_batches(lambda: extractor.features_from_resized(images), repeats)
        results["images_per_s"][precision] = batch_size / seconds
    base = results["images_per_s"].get("fp32")
    results["speedup"] = {p: r / base for p, r in results["images_per_s"].items()} if base else {}
    results["decode_resize_per_worker"] = decode_rate()
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="vit_large_patch16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 on CPU, 256 on CUDA")
    parser.add_argument("--repeats", type=int, default=None, help="timed batches after one warm-up (best is kept)")
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    result = run(args.arch, args.device, args.batch_size or (256 if cuda else 8), args.repeats or (20 if cuda else 2))
    print(f"{result['arch']} on {result['device']} ({result['threads']} threads), batch {result['batch_size']}, "
          f"bf16 hardware: {'yes' if result['bf16_fast'] else 'no'}")
    for precision, rate in result["images_per_s"].items():
        print(f"  {precision:5s} {rate:9.1f} images/s   x{result['speedup'].get(precision, float('nan')):.2f} vs fp32")
    print(f"  decode+resize (112 px JPEG -> 224): {result['decode_resize_per_worker']:.0f} images/s per worker")
    return result


if __name__ == "__main__":
    main()
