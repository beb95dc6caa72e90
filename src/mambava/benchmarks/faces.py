"""Faces-stage throughput: decode only (the baseline) vs. decode + detect + track + align, measured in the same run.

    mambava bench faces                                         # the real clips in tests/data/media, this CPU
    mambava bench faces --video my_clip.mp4 --repeats 5

Per clip it times, in frames/s of the source video: `decode` (PyAV decode + RGB conversion, every frame),
`mtcnn` (decode + MTCNN detection + tracking + 112×112 alignment, as `iter_tracked_faces` runs them; with the
detector's default num_threads="auto", and with torch threads fixed at 1 and at 2), `mtcnn every k` (the same
with MTCNN on every k-th frame only, the faces followed by optical flow in between: `--detect-every k`), and
`mtcnn + learned landmarks` (the same, each face's 5 points moved by a landmark refiner: two passes of its
small CNN; `--landmarks FILE` times a trained one, else a freshly initialised one, whose cost is the same), and
`haar` (decode + OpenCV Haar + centred crops), and `mtcnn + expressions` (the MTCNN row with the FER2013
expression net run on every face's aligned crop, as `predict --expressions` and the default expression-va model
do). The expression net alone is also timed in ms per face, on the clip's own aligned crops, one at a time (batch
1, the live path) and in batches of 32 (predict), beside MTCNN's ms per frame of the same run. Besides frames/s,
each row gives its cost over decode in ms per
frame (for the detector rows: detection + tracking + alignment, amortised over every frame). Each
figure is the best of `repeats` passes (the one least disturbed by other load on a shared machine); ratios are
against `decode` of the same clip in the same run. `extract_faces` is the whole crop writer with its defaults
(JPEG crops, CSV). The 1-minute load average before and after is printed: on a shared machine other work
changes the figures, the thread settings' most of all.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from mambava.benchmarks import cpu_name, load_average
from mambava.faces import extract_faces, get_detector, iter_tracked_faces
from mambava.faces.expression import ExpressionRecognizer
from mambava.faces.landmarks import LandmarkNet, LandmarkRefiner, RefinedDetector, RefinerConfig, load_refiner
from mambava.media.video import open_video

# the real clips the tests ship (a source checkout); pass --video elsewhere
DEFAULT_MEDIA = Path(__file__).resolve().parents[3] / "tests" / "data" / "media"
DEFAULT_CLIPS = ("single_face.mp4", "face_noface.mov")


def _best_rate(fn, n_frames: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n_frames / best


def bench_clip(path: Path, repeats: int = 3, landmarks: Path | None = None) -> dict:
    with open_video(path) as reader:
        n_frames = sum(1 for _ in reader)
        width, height = reader.width, reader.height

    def decode():
        with open_video(path) as reader:
            for _ in reader:
                pass

    def pipeline(detector, every: int = 1, search_every: int = 6, expressions=None):
        def run():
            with open_video(path) as reader:
                for item in iter_tracked_faces(
                    reader, detector, keep_images=False, detect_every=every, search_every=search_every
                ):
                    if expressions is not None and item.faces:
                        expressions.probabilities(np.stack([face.crop for face in item.faces]))

        return run

    mtcnn = get_detector("mtcnn")
    mtcnn1 = get_detector("mtcnn", num_threads=1)
    mtcnn2 = get_detector("mtcnn", num_threads=2)
    haar = get_detector("haar")
    refined = RefinedDetector(
        mtcnn,
        load_refiner(landmarks)
        if landmarks
        else LandmarkRefiner(LandmarkNet(RefinerConfig().size, RefinerConfig().width), RefinerConfig()),
    )
    pipeline(mtcnn)()  # warm-up: weights, kernels
    recognizer = ExpressionRecognizer(batch_size=32)
    with open_video(path) as reader:
        crops = [face.crop for item in iter_tracked_faces(reader, mtcnn, keep_images=False) for face in item.faces]
    crops = np.stack(crops) if crops else np.zeros((0, 112, 112, 3), np.uint8)
    load_before = load_average()
    rates = {
        "decode": _best_rate(decode, n_frames, repeats),
        "mtcnn (auto)": _best_rate(pipeline(mtcnn), n_frames, repeats),
        "mtcnn (1 thread)": _best_rate(pipeline(mtcnn1), n_frames, repeats),
        "mtcnn (2 threads)": _best_rate(pipeline(mtcnn2), n_frames, repeats),
        "mtcnn every 3": _best_rate(pipeline(mtcnn, 3), n_frames, repeats),
        "mtcnn every 5": _best_rate(pipeline(mtcnn, 5), n_frames, repeats),
        # the same without O-Net's check of followed faces: the whole frame searched on every scheduled frame
        "mtcnn every 5, whole frame": _best_rate(pipeline(mtcnn, 5, 1), n_frames, repeats),
        "mtcnn + learned landmarks": _best_rate(pipeline(refined), n_frames, repeats),
        "haar": _best_rate(pipeline(haar), n_frames, repeats),
        "mtcnn + expressions": _best_rate(pipeline(mtcnn, expressions=recognizer), n_frames, repeats),
    }
    per_face = {}
    if len(crops):
        one = ExpressionRecognizer(batch_size=1)
        per_face["expression net, batch 1"] = 1000 / _best_rate(lambda: one.run(crops), len(crops), repeats)
        per_face["expression net, batch 32"] = 1000 / _best_rate(lambda: recognizer.run(crops), len(crops), repeats)
    with tempfile.TemporaryDirectory() as out:
        rates["extract_faces"] = _best_rate(lambda: extract_faces(path, out, detector=mtcnn), n_frames, repeats)
    return {
        "clip": path.name,
        "load_average": (load_before, load_average()),
        "size": f"{width}x{height}",
        "frames": n_frames,
        "frames_per_s": rates,
        "ratio_vs_decode": {k: v / rates["decode"] for k, v in rates.items()},
        "ms_over_decode": {k: 1000 / v - 1000 / rates["decode"] for k, v in rates.items()},
        "faces": len(crops),
        "ms_per_face": per_face,
    }


def run(videos: list[Path] | None = None, repeats: int = 3, landmarks: Path | None = None) -> list[dict]:
    videos = videos or [DEFAULT_MEDIA / name for name in DEFAULT_CLIPS]
    return [bench_clip(Path(v), repeats, landmarks) for v in videos]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="mambava bench faces", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--video", action="append", type=Path, help="Clip(s) to time (default: the real clips in tests/data/media)."
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--landmarks", type=Path, help="A trained landmark refiner to time (default: a fresh one).")
    parser.add_argument("--json", action="store_true", help="Print the results as JSON.")
    args = parser.parse_args(argv)
    results = run(args.video, args.repeats, args.landmarks)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(
                f"{r['clip']} ({r['size']}, {r['frames']} frames; load average {r['load_average'][0]} → "
                f"{r['load_average'][1]} on {os.cpu_count()} CPUs, {cpu_name()})"
            )
            for name, rate in r["frames_per_s"].items():
                print(
                    f"  {name:<26} {rate:8.1f} frames/s   ×{r['ratio_vs_decode'][name]:.3f} of decode, "
                    f"{r['ms_over_decode'][name]:+.2f} ms/frame"
                )
            mtcnn_ms = r["ms_over_decode"]["mtcnn (auto)"]
            for name, ms in r["ms_per_face"].items():
                print(f"  {name:<26} {ms:8.3f} ms/face    ({r['faces']} aligned crops; MTCNN: {mtcnn_ms:.2f} ms/frame)")
    return results


if __name__ == "__main__":
    main()
