"""The generator's true landmarks put to use: training samples for the learned landmark refiner
(`synth_refiner_samples`, for `mambava.faces.landmarks.train_refiner`) and how far a faces stage's crops are from
ideal (`synth_alignment_error`). They live with the generator, not in `faces/`, so that the library's rooms
never import the synthetic data's readers."""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from mambava.faces.align import LANDMARK_COLUMNS
from mambava.faces.dataset import CSV_SUFFIX, alignment_offsets, alignment_summary
from mambava.faces.landmarks import face_region
from mambava.media.video import open_video
from mambava.synth.layout import read_meta, read_truth


def synth_refiner_samples(synth_root: str | os.PathLike, names: Iterable[str], every: int = 2, workers: int = 1):
    """Training data from a synthetic dataset: the raw videos' frames (every `every`-th) of the annotation names
    given, with the generator's true landmarks. Returns (frames, samples) for `train_refiner`. `workers` > 1
    reads that many videos at a time in processes (decoding and cutting the face regions is the cost); the
    result is the same, in the same order."""
    root = Path(synth_root)
    wanted = set(names)
    jobs = []
    for video in read_meta(root)["videos"]:
        persons = [p["name"] for p in video["persons"] if p["name"] in wanted]
        if persons:
            jobs.append((str(root), video["video"], persons, every))
    if workers > 1 and len(jobs) > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
            parts = list(pool.map(_video_samples, jobs))
    else:
        parts = [_video_samples(job) for job in jobs]
    frames: list[np.ndarray] = []
    samples: list[tuple[int, np.ndarray]] = []
    for regions, points in parts:
        samples += [(len(frames) + i, moved) for i, moved in enumerate(points)]
        frames += regions
    return frames, samples


def _video_samples(job) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """One video's face regions and their true landmarks in the regions' pixels (see synth_refiner_samples)."""
    root, video, persons, every = job
    truths = [read_truth(root, name)["landmarks"] for name in persons]
    regions, points = [], []
    with open_video(Path(root) / video) as reader:
        for frame in reader:
            if frame.index % every:
                continue
            for truth in truths:
                if frame.index < len(truth) and np.isfinite(truth[frame.index]).all():
                    region, moved = face_region(frame.image, truth[frame.index].astype(np.float64))
                    regions.append(region)
                    points.append(moved)
    return regions, points


def synth_alignment_error(
    synth_root: str | os.PathLike, faces_dir: str | os.PathLike, names: list[str] | None = None
) -> dict:
    """Alignment error of the faces stage's crops in `faces_dir` (its `<v>.faces.csv` files: each crop's
    landmarks) against the true landmarks the generator kept for the synthetic dataset at `synth_root`, in
    pixels at 112 px (`alignment_error`: each face's mean over its 5 points, then mean / median / 95th
    percentile over faces), as % of the template's eye distance (35.2 px), and the mean offset; beside it, the same for
    the generator's own crops
    (`cropped_aligned/`, aligned with the true landmarks plus its simulated aligner error). A track is matched
    to the annotation name it is named after; frames where the face is not drawn are left out (and counted)."""
    synth_root, faces_dir = Path(synth_root), Path(faces_dir)
    meta = read_meta(synth_root)
    ours, theirs = [], []
    unmatched = 0
    for video in meta["videos"]:
        persons = [p["name"] for p in video["persons"] if names is None or p["name"] in names]
        if not persons:
            continue
        csv_path = faces_dir / f"{video['name']}{CSV_SUFFIX}"
        table = pd.read_csv(csv_path) if csv_path.exists() else None
        for name in persons:
            truth = read_truth(synth_root, name)
            crop = truth["crop"]
            theirs.append(alignment_offsets(truth["crop_landmarks"][crop], truth["landmarks"][crop]))
            if table is None:
                continue
            rows = table[(table["track"] == name) & (table["present"] == 1)]
            frames = rows["frame"].to_numpy()
            inside = frames < len(truth["landmarks"])
            found = rows[LANDMARK_COLUMNS].to_numpy(np.float64)[inside].reshape(-1, 5, 2)
            true = truth["landmarks"][frames[inside]]
            drawn = np.isfinite(true).all((1, 2))
            unmatched += int((~drawn).sum()) + int((~inside).sum())
            ours.append(alignment_offsets(found[drawn], true[drawn]))
    stack = lambda parts: np.concatenate(parts) if parts else np.zeros((0, 5, 2))  # noqa: E731
    return {
        "ours": alignment_summary(stack(ours)),
        "generator": alignment_summary(stack(theirs)),
        "faces_not_drawn": unmatched,
    }
