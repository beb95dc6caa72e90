"""Faces-stage throughput: decode only (the baseline) vs. decode + detect + track + align, measured in the same run.

    mambava bench faces                                         # the real clips in tests/data/media, this CPU
    mambava bench faces --video my_clip.mp4 --repeats 5

Per clip it times, in frames/s of the source video: `decode` (PyAV decode + RGB conversion, every frame),
`mtcnn` (decode + MTCNN detection + tracking + 112×112 alignment, as `iter_tracked_faces` runs them; with the
detector's default num_threads="auto", and with torch threads fixed at 1 and at 2), `mtcnn every k` (the same
with MTCNN on every k-th frame only, the faces followed by optical flow in between: `--detect-every k`),
`mtcnn + learned landmarks` (the same, each face's 5 points moved by a landmark refiner: two passes of its
small CNN; `--landmarks FILE` times a trained one, else a freshly initialised one, whose cost is the same),
`haar` (decode + OpenCV Haar + centred crops), `mtcnn + expressions` (the MTCNN row with the FER2013 expression
net run on every face's aligned crop, as `predict --expressions` and the default expression-va model do), and
with the faces extra `mtcnn + dlib68` (dlib's 68 points on MTCNN's boxes, the 5 alignment points from them and
the head pose, every frame: `--landmarks dlib68`, what `auto` is with the extra), `mtcnn + dlib68 every 5` (with
`--detect-every 5`: dlib's predictor where MTCNN runs, the 68 points followed with the face by the flow in
between, the pose fitted on every frame) and `mtcnn + dlib68 + descriptors` (each track's 3 best faces described,
as `--persons` does, amortised over the clip).
Besides frames/s, each row gives its cost over decode in ms per frame (for the detector rows: detection +
tracking + alignment, amortised over every frame). Then each stage alone, in ms per face on the clip's faces
(the first `STAGE_FACES`): MTCNN's detection (per frame), the refiner, dlib's 68 points, the head pose, a
descriptor (dlib's chip + its ResNet); and the expression net on all the clip's aligned crops, one at a time
(batch 1, the live path) and in batches of 32 (predict).

Rows are timed in rounds, each round every row once, and each figure is the best of `repeats` rounds (the one
least disturbed by other load on a shared machine; interleaved so that a change of load over the run touches
every row alike); ratios are against `decode` of the same clip in the same run. `extract_faces` is the whole
crop writer with its defaults (JPEG crops, CSV). The 1-minute load average before and after is printed: on a
shared machine other work changes the figures, the thread settings' most of all (two torch threads on two busy
cores can be several times slower than one).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from mambava.benchmarks import cpu_name, load_average
from mambava.core.errors import MambavaError
from mambava.core.runtime import free_threads, torch_threads
from mambava.faces import dlib_models, extract_faces, get_detector, iter_tracked_faces
from mambava.faces.expression import ExpressionRecognizer
from mambava.faces.identity import TrackSampler
from mambava.faces.landmarks import LandmarkNet, LandmarkRefiner, RefinedDetector, RefinerConfig, load_refiner
from mambava.faces.pose import head_pose
from mambava.media.video import open_video

# the real clips the tests ship (a source checkout); pass --video elsewhere
DEFAULT_MEDIA = Path(__file__).resolve().parents[3] / "tests" / "data" / "media"
DEFAULT_CLIPS = ("single_face.mp4", "face_noface.mov")
STAGE_FACES = 24  # faces each stage is timed on


def _best_times(rows: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """{row: best seconds over `repeats` rounds}, each round running every row once, in order."""
    best = {name: float("inf") for name in rows}
    for _ in range(max(1, repeats)):
        for name, fn in rows.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def bench_clip(path: Path, repeats: int = 2, landmarks: Path | None = None) -> dict:
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
    refined = RefinedDetector(
        mtcnn,
        load_refiner(landmarks)
        if landmarks
        else LandmarkRefiner(LandmarkNet(RefinerConfig().size, RefinerConfig().width), RefinerConfig()),
    )
    rows = {
        "decode": decode,
        "mtcnn (auto)": pipeline(mtcnn),
        "mtcnn (1 thread)": pipeline(get_detector("mtcnn", num_threads=1)),
        "mtcnn (2 threads)": pipeline(get_detector("mtcnn", num_threads=2)),
        "mtcnn every 3": pipeline(mtcnn, 3),
        "mtcnn every 5": pipeline(mtcnn, 5),
        # the same without O-Net's check of followed faces: the whole frame searched on every scheduled frame
        "mtcnn every 5, whole frame": pipeline(mtcnn, 5, 1),
        "mtcnn + learned landmarks": pipeline(refined),
        "haar": pipeline(get_detector("haar")),
        "mtcnn + expressions": pipeline(mtcnn, expressions=ExpressionRecognizer(batch_size=32)),
    }
    dlib68 = _dlib68(mtcnn)
    if dlib68 is not None:
        rows.update(_dlib_rows(path, pipeline, dlib68))
    out = tempfile.TemporaryDirectory()
    rows["extract_faces"] = lambda: extract_faces(path, out.name, detector=mtcnn)
    with out:
        pipeline(dlib68 or mtcnn)()  # warm-up: weights, kernels, the models' files
        load_before = load_average()
        seconds = _best_times(rows, repeats)
        stages = _stage_costs(path, mtcnn, refined, dlib68, repeats)
        stages.update(_expression_costs(path, mtcnn, repeats))
    rates = {name: n_frames / s for name, s in seconds.items()}
    return {
        "clip": path.name,
        "load_average": (load_before, load_average()),
        "size": f"{width}x{height}",
        "frames": n_frames,
        "frames_per_s": rates,
        "ratio_vs_decode": {k: v / rates["decode"] for k, v in rates.items()},
        "ms_over_decode": {k: 1000 / v - 1000 / rates["decode"] for k, v in rates.items()},
        "stage_ms": stages,
    }


def _dlib68(mtcnn):
    """MTCNN with dlib's 68 points, or None without the faces extra (its rows are left out)."""
    try:
        return get_detector(mtcnn, landmarks="dlib68")
    except MambavaError:
        return None


def _dlib_rows(path: Path, pipeline, dlib68) -> dict:
    """The faces extra's stages over the same pipeline."""

    def described():
        sampler = TrackSampler()
        with open_video(path) as reader:
            for item in iter_tracked_faces(reader, dlib68):
                for face in item.faces:
                    sampler.offer(face.track_id, item.index, item.image, face)
        sampler.descriptors()

    return {
        "mtcnn + dlib68": pipeline(dlib68),
        "mtcnn + dlib68 every 5": pipeline(dlib68, 5),
        "mtcnn + dlib68 + descriptors": described,
    }


def _stage_costs(path: Path, mtcnn, refined, dlib68, repeats: int) -> dict[str, float]:
    """Each stage alone, ms per face on the clip's first `STAGE_FACES` faces (MTCNN: per frame, on their frames)."""
    frames, faces = [], []
    with open_video(path) as reader:
        for frame in reader:
            found = mtcnn.detect(frame.image)
            if found:
                frames.append(frame.image)
                faces.append(found[0])
            if len(faces) == STAGE_FACES:
                break
    if not faces:
        return {}
    pairs = list(zip(frames, faces))

    def refine():  # on the threads the pipeline gives it (the detector's "auto")
        with torch_threads(free_threads()):
            for image, face in pairs:
                refined.refiner.refine(image, [face.landmarks])

    stages: dict[str, Callable[[], object]] = {
        "mtcnn detection (per frame)": lambda: [mtcnn.detect(image) for image in frames],
        "learned landmarks": refine,
    }
    if dlib68 is not None:
        points = [dlib_models.landmarks68(image, [face.box])[0] for image, face in pairs]
        height, width = frames[0].shape[:2]

        def describe():  # dlib's aligned chip, then its ResNet
            chips = [dlib_models.face_chip(image, face.box, p) for (image, face), p in zip(pairs, points)]
            dlib_models.face_descriptors(chips)

        stages["dlib68 points"] = lambda: [dlib_models.landmarks68(image, [face.box]) for image, face in pairs]
        stages["head pose"] = lambda: [head_pose(p, width, height) for p in points]
        stages["descriptor"] = describe
    return {name: 1000 * s / len(faces) for name, s in _best_times(stages, repeats).items()}


def _expression_costs(path: Path, mtcnn, repeats: int) -> dict[str, float]:
    """The expression net alone, ms per face on the clip's aligned crops (all of them): batch 1 (the live path)
    and batch 32 (predict)."""
    with open_video(path) as reader:
        crops = [face.crop for item in iter_tracked_faces(reader, mtcnn, keep_images=False) for face in item.faces]
    if not crops:
        return {}
    crops = np.stack(crops)
    nets = {"expression net, batch 1": ExpressionRecognizer(batch_size=1)}
    nets["expression net, batch 32"] = ExpressionRecognizer(batch_size=32)
    seconds = _best_times({name: (lambda net=net: net.run(crops)) for name, net in nets.items()}, repeats)
    return {name: 1000 * s / len(crops) for name, s in seconds.items()}


def run(videos: list[Path] | None = None, repeats: int = 2, landmarks: Path | None = None) -> list[dict]:
    videos = videos or [DEFAULT_MEDIA / name for name in DEFAULT_CLIPS]
    return [bench_clip(Path(v), repeats, landmarks) for v in videos]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="mambava bench faces", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--video", action="append", type=Path, help="Clip(s) to time (default: the real clips in tests/data/media)."
    )
    parser.add_argument("--repeats", type=int, default=2, help="Rounds; each figure is the best of them.")
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
                    f"  {name:<28} {rate:8.1f} frames/s   ×{r['ratio_vs_decode'][name]:.3f} of decode, "
                    f"{r['ms_over_decode'][name]:+.2f} ms/frame"
                )
            for name, ms in r["stage_ms"].items():
                unit = "ms/frame" if "per frame" in name else "ms/face"
                print(f"  stage {name:<27} {ms:8.2f} {unit}")
    return results


if __name__ == "__main__":
    main()
