"""Scaling out: faces + extract + predict over raw videos, the local engine and Ray with 1 and 2 CPU workers, same run.

    mambava bench scale                          # generated videos (mambava synth, small), this machine's CPUs
    mambava bench scale --data DEMO/data         # the demo's raw videos (a dataset root with videos/)
    mambava bench scale --video a.mp4 --video b.mp4 --workers 1,2,4

The pipeline is the corpus jobs in order: `faces --dataset` (decode + MTCNN + track + align, JPEG crops), `extract`
(the crops through the backbone into a feature store) and `predict` (every raw video: faces, backbone, temporal
model, CSV and plots). The backbone is a randomly initialised ViT-Tiny at 112 px (the demo's size; `--arch`) and
the temporal model a random Mamba-VA on its features: the costs are those of the real pipeline, the values mean
nothing. The baseline is the local engine (one process, one torch thread: one CPU worker); then, for each count
in `--workers`, a Ray instance with that many CPUs runs the same jobs (`--engine ray`, the backbone inside each
video's task: every worker a CPU), each from a process of its own. Each Ray instance is started and its workers
have imported mambava before the clock starts (that start-up is printed apart); with `--repeats N` the engines'
runs are interleaved N times and each stage's best time counts. Printed per stage: frames/s, the ratio of N
workers to 1, Ray's overhead per video (Ray with 1 worker minus the local engine, per video) and whether Ray
wrote the local engine's files byte for byte; then the peak memory of a video task's worker.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from mambava.backbone import FeatureExtractor, build_encoder
from mambava.backbone.extract import extract_features
from mambava.benchmarks import cpu_name, load_average
from mambava.data.affwild2 import AffWild2
from mambava.distributed import RayOptions, connect, import_ray
from mambava.distributed.jobs import EncoderSource, extract_features_ray, faces_dataset_ray, predict_ray
from mambava.faces.dataset import extract_dataset_faces
from mambava.inference.files import OutputOptions, predict_input
from mambava.inference.predict import Predictor
from mambava.synth import SynthConfig, generate
from mambava.temporal import build_temporal_model, save_temporal_model

STAGES = ("faces --dataset", "extract", "predict")
OBJECT_STORE_MB = 256


@dataclasses.dataclass
class StageTime:
    seconds: float
    frames: int

    @property
    def rate(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def _dataset(args, base: Path) -> Path:
    """The dataset root whose raw videos are processed: --data, the --video files, or generated ones."""
    if args.data is not None:
        return args.data
    root = base / "data"
    if args.video:
        (root / "videos").mkdir(parents=True)
        for video in args.video:
            (root / "videos" / video.name).symlink_to(video.resolve())
        return root
    lo, hi = (int(x) for x in args.frames.split(","))
    n = max(args.videos, 3)  # (a dataset root has a validation and a test video)
    generate(root, SynthConfig(n_train=n - 2, n_val=1, n_test=1, frames=(lo, hi), voices=False, workers=1))
    return root


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): (os.readlink(p).encode() if p.is_symlink() else p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_symlink() or p.is_file()
    }


def _local(root: Path, out: Path, models: dict) -> dict[str, StageTime]:
    times = {}
    start = time.perf_counter()
    faces = extract_dataset_faces(root, out / "own", workers=1)
    times["faces --dataset"] = StageTime(time.perf_counter() - start, sum(v.frames for v in faces.videos))
    extractor = FeatureExtractor(models["encoder"], batch_size=64, precision="fp32")
    start = time.perf_counter()
    summary = extract_features(out / "own", out / "features", extractor, workers=0, progress=False, backbone="vit")
    times["extract"] = StageTime(time.perf_counter() - start, summary.frames)
    predictor = Predictor(models["model"], models["vit"], batch_size=64, precision="fp32")
    options = OutputOptions(out / "predictions")
    start = time.perf_counter()
    frames = sum(predict_input(predictor, path, options).frames for path in models["inputs"])
    times["predict"] = StageTime(time.perf_counter() - start, frames)
    return times


def _ray_apart(root: Path, out: Path, models: dict, workers: int) -> tuple[dict[str, StageTime], float, float]:
    """`_ray` in a process of its own, whose Ray instance is its own whatever this process has started."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_ray, root, out, models, workers).result()


def _ray(root: Path, out: Path, models: dict, workers: int) -> tuple[dict[str, StageTime], float, float]:
    """The three jobs on a Ray instance of `workers` CPUs: their times, the instance's start-up and the peak
    memory of a video task's worker (MB)."""
    ray = import_ray()
    torch.set_num_threads(1)
    start = time.perf_counter()
    options = RayOptions(num_cpus=workers, backbone_workers=0, object_store_memory=OBJECT_STORE_MB << 20)
    options.progress = False
    times, peak = {}, 0.0
    with connect(options) as cluster:
        ray.get([ray.remote(_warm).remote() for _ in range(workers)])  # the workers up, mambava imported
        started = time.perf_counter() - start
        t = time.perf_counter()
        faces, run = faces_dataset_ray(root, out / "own", options=options)
        times["faces --dataset"] = StageTime(time.perf_counter() - t, run.frames)
        peak = max(peak, run.peak_task_mb)
        t = time.perf_counter()
        summary, run = extract_features_ray(
            out / "own",
            out / "features",
            models["encoder"],
            weights=EncoderSource(str(models["vit"])),
            batch_size=64,
            device="cpu",
            precision="fp32",
            backbone="vit",
            options=options,
        )
        times["extract"] = StageTime(time.perf_counter() - t, summary.frames)
        peak = max(peak, run.peak_task_mb)
        predictor = Predictor(models["model"], models["vit"], batch_size=64, precision="fp32")
        t = time.perf_counter()
        done = predict_ray(
            predictor, models["inputs"], OutputOptions(out / "predictions"), backbone=models["vit"], options=options
        )
        times["predict"] = StageTime(time.perf_counter() - t, done.run.frames)
        peak = max(peak, done.run.peak_task_mb)
        assert cluster.cpus == workers
    return times, started, peak


def _warm() -> None:
    """What a process does once before its first video: import mambava (torch, ...) and run MTCNN once, so that
    neither engine's first video pays it in the figures."""
    import numpy as np

    import mambava.distributed.jobs  # noqa: F401
    from mambava.faces import get_detector

    get_detector("mtcnn").detect(np.zeros((192, 256, 3), np.uint8))


def _store(root: Path) -> dict:
    """A feature store's arrays (bytes) and metadata, less each entry's source folder (each run has its own)."""
    found = {}
    for name, data in _tree(root).items():
        if name.endswith("meta.json"):
            meta = json.loads(data)
            meta["extra"].pop("source", None)
            found[name] = meta
        else:
            found[name] = data
    return found


def _same(local: Path, other: Path) -> dict[str, bool]:
    """Per stage: whether `other` holds the local engine's files byte for byte (the crops and CSVs; the store's
    arrays and metadata; every file of the predictions, plots included)."""
    return {
        "faces --dataset": _tree(local / "own" / "cropped_aligned") == _tree(other / "own" / "cropped_aligned"),
        "extract": _store(local / "features") == _store(other / "features"),
        "predict": _tree(local / "predictions") == _tree(other / "predictions"),
    }


def run(args) -> dict:
    import_ray()  # one line naming the extra, before anything is generated
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the local engine as one CPU worker; Ray's workers run one thread each too
    base = Path(tempfile.mkdtemp(prefix="mambava-scale-"))
    try:
        root = _dataset(args, base)
        inputs = sorted(AffWild2(root).raw_videos.values())
        torch.manual_seed(0)
        encoder = build_encoder(None, args.arch, seed=0)
        encoder.save(base / "vit.safetensors")
        torch.manual_seed(0)
        model = build_temporal_model("mamba_va", {"input_dim": encoder.config.feature_dim}).eval()
        save_temporal_model(model, base / "model.safetensors")
        models = {
            "encoder": encoder,
            "vit": base / "vit.safetensors",
            "model": base / "model.safetensors",
            "inputs": inputs,
        }
        _warm()
        load_before = load_average()
        results: dict = {}
        startup, peak, same = {}, {}, {}
        # best of `repeats` per stage, the engines' runs interleaved (others' load on a shared machine moves
        # every figure; the best is the least disturbed)
        for repeat in range(args.repeats):
            out = base / f"local{repeat}"
            _keep_best(results, "local", _local(root, out, models))
            for n in args.workers:
                ray_out = base / f"ray{n}-{repeat}"
                times, started, peak_mb = _ray_apart(root, ray_out, models, n)
                _keep_best(results, n, times)
                startup[n] = min(startup.get(n, started), started)
                peak[n] = max(peak.get(n, 0.0), peak_mb)
                now = _same(out, ray_out)
                same[n] = {stage: same.get(n, now)[stage] and now[stage] for stage in STAGES}
                shutil.rmtree(ray_out, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
        return {
            "videos": len(inputs),
            "source": str(args.data or ("--video" if args.video else f"generated ({args.videos} videos)")),
            "load_average": (load_before, load_average()),
            "results": results,
            "startup": startup,
            "peak_mb": peak,
            "same": same,
            "workers": args.workers,
            "repeats": args.repeats,
        }
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(base, ignore_errors=True)


def _keep_best(results: dict, key, times: dict[str, StageTime]) -> None:
    best = results.setdefault(key, times)
    for stage, t in times.items():
        if t.seconds < best[stage].seconds:
            best[stage] = t


def _pipeline(times: dict[str, StageTime]) -> StageTime:
    return StageTime(sum(t.seconds for t in times.values()), times["faces --dataset"].frames)


def report(r: dict) -> None:
    workers = r["workers"]
    local = r["results"]["local"]
    first = r["results"][workers[0]]
    print(
        f"mambava bench scale: {r['videos']} videos ({r['source']}), {local['faces --dataset'].frames} frames, "
        f"best of {r['repeats']}; {cpu_name()}, {os.cpu_count()} CPUs, load average {r['load_average'][0]} -> "
        f"{r['load_average'][1]}"
    )
    header = ["stage", "local engine"] + [f"Ray, {n} CPU{'s' if n > 1 else ''}" for n in workers]
    header += [f"{n} vs {workers[0]} CPU" for n in workers[1:]]
    header += [f"Ray's overhead per video ({workers[0]} CPU)", "same files"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for stage in (*STAGES, "pipeline"):
        pick = (lambda times: _pipeline(times)) if stage == "pipeline" else (lambda times: times[stage])
        row = [stage, f"{pick(local).rate:.1f} frames/s"]
        row += [f"{pick(r['results'][n]).rate:.1f} frames/s" for n in workers]
        base = pick(first).rate
        row += [f"×{pick(r['results'][n]).rate / base:.2f}" if base else "-" for n in workers[1:]]
        overhead = (pick(first).seconds - pick(local).seconds) / max(r["videos"], 1)
        row.append(f"{overhead:+.2f} s")
        same = [r["same"][n][s] for n in workers for s in (STAGES if stage == "pipeline" else [stage])]
        row.append("yes" if all(same) else "NO")
        print("| " + " | ".join(row) + " |")
    for n in workers:
        print(
            f"Ray, {n} CPU{'s' if n > 1 else ''}: start-up {r['startup'][n]:.1f} s (the instance, its workers "
            "importing mambava and warming up; not in the figures above); peak memory of a video task's worker "
            f"{r['peak_mb'][n]:.0f} MB"
        )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="mambava bench scale", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="A dataset root with raw videos under videos/ (the demo's data/).")
    parser.add_argument("--video", action="append", type=Path, help="A video to process (repeatable), instead.")
    parser.add_argument("--videos", type=int, default=6, help="Generated videos, 3 or more (no --data, --video).")
    parser.add_argument("--frames", default="60,90", help="Frames per generated video: LO,HI (LO >= 30).")
    parser.add_argument("--workers", default="1,2", help="CPU counts of the Ray instances, e.g. 1,2,4.")
    parser.add_argument("--arch", default="vit_tiny_patch16_112", help="The backbone's size (random weights).")
    parser.add_argument("--repeats", type=int, default=1, help="Runs of each engine, interleaved; the best counts.")
    args = parser.parse_args(argv)
    args.workers = sorted({int(n) for n in args.workers.split(",")})
    result = run(args)
    report(result)
    return result


if __name__ == "__main__":
    main()
