"""The demo's own faces stage (`DemoConfig.own_crops`): the landmark refiner trained on the training videos'
true landmarks, `mambava faces --dataset` over every raw video with it, and every held-out raw video through
`predict` beside the same videos from the generator's ideal crops."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from mambava.backbone import FeatureExtractor, load_encoder
from mambava.backbone.extract import extract_features
from mambava.core.errors import MambavaError
from mambava.core.metrics import va_scores
from mambava.core.progress import ProgressBar
from mambava.core.runtime import cpu_seconds, torch_threads
from mambava.data.store import FeatureStore
from mambava.faces import get_detector
from mambava.faces.dataset import extract_dataset_faces
from mambava.faces.landmarks import RefinerConfig, train_refiner
from mambava.inference.predict import Predictor
from mambava.synth import read_meta
from mambava.synth.layout import read_labels
from mambava.synth.truth_faces import synth_alignment_error, synth_refiner_samples

LANDMARKS_FILE = "landmarks.safetensors"
# MTCNN with thresholds relaxed for the drawn faces (trained on photographs, its stages score cartoon faces lower)
DETECTOR_KWARGS = dict(thresholds=(0.5, 0.5, 0.5), min_score=0.5)


def demo_detector(landmarks: Path | None = None):
    """The demo's MTCNN, its points moved by the landmark refiner at `landmarks` when one is given."""

    return get_detector("mtcnn", landmarks=landmarks, **DETECTOR_KWARGS)


def landmark_stage(
    data_root: Path, out: Path, epochs: int, progress: bool, threads: int | None = None
) -> tuple[Path, dict]:
    """Train the landmark refiner (`mambava.faces.landmarks`) on the training split's raw frames and the
    generator's true landmarks (held-out people never seen) on `threads` torch threads (None: as they are),
    save it to OUT/landmarks.safetensors."""

    start, cpu = time.perf_counter(), cpu_seconds()
    train = read_meta(data_root)["splits"]["train"]
    frames, samples = synth_refiner_samples(data_root, train, every=3, workers=2)
    config = RefinerConfig(epochs=epochs)
    losses: list[float] = []
    with ProgressBar("landmarks", enabled=progress) as bar:

        def report(epoch: int, loss: float) -> None:
            losses.append(round(loss, 5))
            if bar:
                bar(epoch + 1, epochs, f"loss {loss:.4f}")

        with torch_threads(threads):
            refiner = train_refiner(frames, samples, config, progress=report)
    path = refiner.save(out / LANDMARKS_FILE)
    return path, {
        "people": len(train),
        "faces": len(samples),
        "epochs": epochs,
        "threads": threads,
        "loss": losses,
        "config": dataclasses.asdict(config),
        "seconds": round(time.perf_counter() - start, 1),
        "cpu_s": round(cpu_seconds() - cpu, 1),
    }


def own_crops_stage(
    data_root: Path, own_root: Path, workers: int, detect_every: int, landmarks: Path | None, progress: bool
) -> dict:
    """`mambava faces --dataset` over the generated raw videos (the demo's relaxed MTCNN, refined landmarks),
    and how far its crops are from ideal (the generator keeps the true landmarks): over every face, and over
    the held-out people's alone (the refiner never saw them)."""

    start, cpu = time.perf_counter(), cpu_seconds()
    kwargs = dict(DETECTOR_KWARGS, num_threads=1, **({"landmarks": str(landmarks)} if landmarks else {}))
    with ProgressBar("faces", enabled=progress) as bar:
        result = extract_dataset_faces(
            data_root,
            own_root,
            detector="mtcnn",
            detector_kwargs=kwargs,
            workers=workers,
            progress=(lambda done, total, item: bar(done, total, item.video)) if bar else None,
            detect_every=detect_every,
        )
    if result.failed:
        raise MambavaError(result.failed[0].error)
    frames = sum(v.frames for v in result.videos)
    test = read_meta(data_root)["splits"]["test"]
    return {
        "videos": len(result.videos),
        "frames": frames,
        "crops": sum(sum(v.tracks.values()) for v in result.videos),
        "seconds": round(time.perf_counter() - start, 1),
        "cpu_s": round(cpu_seconds() - cpu, 1),
        "unmatched": {v.video: v.unmatched for v in result.videos if v.unmatched},
        "learned_landmarks": landmarks is not None,
        "alignment": synth_alignment_error(data_root, result.crops_dir),
        "alignment_held_out": synth_alignment_error(data_root, result.crops_dir, names=test),
    }


def predict_all(
    out: Path, data_root: Path, encoder_path: Path, run: dict, cfg, progress: bool, landmarks: Path | None = None
) -> dict:
    """Every held-out raw video through `predict` (faces stage, backbone, temporal model), and the same videos
    from the generator's ideal crops (their features, the same model); P_VA of each over the frames both
    predict and the labels cover, all videos concatenated."""

    meta = read_meta(data_root)
    test = [v for v in meta["videos"] if v["split"] == "test"]
    names = [p["name"] for v in test for p in v["persons"]]
    ideal_store = out / "features_ideal_crops"
    extractor = FeatureExtractor(load_encoder(encoder_path), batch_size=256, device="cpu", precision="auto")
    extract_features(
        data_root, ideal_store, extractor, backbone="demo_vit", dtype="float32", workers=1, names=names, progress=False
    )
    store = FeatureStore(ideal_store)
    predictor = Predictor(
        run["outputs"]["model"],
        backbone=encoder_path,
        window=cfg.window,
        stride=cfg.stride,
        detector=demo_detector(landmarks),
        device="cpu",
        precision="auto",
        progress=progress,
        detect_every=cfg.detect_every,
    )
    raw, ideal, truth, missing = [], [], [], []
    for video in test:
        table = predictor.predict_video(data_root / video["video"])
        for person in video["persons"]:
            name = person["name"]
            labels = read_labels(data_root, [name])[name]
            rows = table[table["track"] == name].drop_duplicates("frame")
            pred = np.full((len(labels), 2), np.nan)
            frames = rows["frame"].to_numpy()
            keep = frames < len(labels)
            pred[frames[keep]] = rows[["valence", "arousal"]].to_numpy()[keep]
            if not len(rows):
                missing.append(name)
            record = store.read(name)
            from_crops = predictor.predict_features(*record.window(0, record.n_frames))[: len(labels)]
            both = np.isfinite(pred).all(1)[: len(from_crops)] & (labels[: len(from_crops)] != -5).all(1)
            raw.append(pred[: len(from_crops)][both])
            ideal.append(from_crops[both])
            truth.append(labels[: len(from_crops)][both])
    raw_scores = va_scores(np.concatenate(raw), np.concatenate(truth))
    ideal_scores = va_scores(np.concatenate(ideal), np.concatenate(truth))
    return {
        "videos": len(test),
        "tracks": len(names),
        "frames": int(sum(len(t) for t in truth)),
        "tracks_without_face": missing,
        "raw_video": raw_scores,
        "ideal_crops": ideal_scores,
        "gap_p_va": raw_scores["p_va"] - ideal_scores["p_va"],
    }
