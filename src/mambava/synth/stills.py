"""An AffectNet-like still-image set for backbone pretraining: one face of a fresh identity per image,
labelled with the valence/arousal it was rendered from (no rater lag), in the same Aff-Wild2 layout as the
videos, with albums of images as "videos"."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from mambava.core.errors import MambavaError
from mambava.synth.config import ProgressFn, SynthSummary
from mambava.synth.dataset import run_jobs
from mambava.synth.expression import (
    JITTER_PITCH,
    JITTER_YAW,
    POSTURE_PITCH,
    POSTURE_YAW,
    blink_profile,
    blink_rate,
    expression,
)
from mambava.synth.identity import Identity, sample_identity
from mambava.synth.layout import (
    ANNOTATION_DIR,
    CROPS_DIR,
    FORMAT_VERSION,
    META_FILE,
    SPLIT_DIRS,
    annotation_text,
    new_crop_dir,
    prepare_root,
    replace_dir,
    write_jpeg,
    write_text,
)
from mambava.synth.render import (
    LANDMARK_BIAS,
    LANDMARK_JITTER,
    align_crop,
    background,
    composite,
    draw_occluder,
    face_base,
    face_placement,
    render_face,
    to_frame,
)


@dataclass
class StillsConfig:
    """Single face images of fresh identities, each with the VA its expression was rendered from (no rater lag),
    for pretraining a backbone before fine-tuning on the videos, as real backbones are pretrained on still-image
    sets. Written in the Aff-Wild2 layout with albums of `per_album` images as "videos"."""

    n_train: int = 2400
    n_val: int = 400
    per_album: int = 100
    size: tuple[int, int] = (256, 192)
    crop_size: int = 112
    seed: int = 0
    noise_sigma: tuple[float, float] = (2.0, 6.0)
    occlusion_fraction: float = 0.05
    jpeg_quality: int = 92
    workers: int = 0

    def __post_init__(self) -> None:
        self.size = tuple(int(x) for x in self.size)  # type: ignore[assignment]
        self.noise_sigma = tuple(float(x) for x in self.noise_sigma)  # type: ignore[assignment]
        if self.n_train < 1 or self.n_val < 0 or self.per_album < 1:
            raise MambavaError("StillsConfig: n_train >= 1, n_val >= 0 and per_album >= 1 are required")

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data.pop("workers")
        return data


def _still(rng: np.random.Generator, cfg: StillsConfig) -> tuple[np.ndarray, tuple[float, float]]:
    """One aligned crop of a new identity with a random expression, and its (valence, arousal)."""
    ident = sample_identity(rng, two_person=False)
    va, params = _still_expression(rng, ident)
    w, h = cfg.size
    frame = background(rng, w, h)
    canvas, mask, lm = render_face(ident, params, face_base(ident))
    s = ident.scale * rng.uniform(0.95, 1.05)
    ang = math.radians(rng.normal(0, 5))
    centre = np.array([w / 2 + rng.uniform(-25, 25), h / 2 + rng.uniform(-10, 12)])
    _rot, m = face_placement(s, ang, centre)
    composite(frame, canvas, mask, m)
    lm_frame = to_frame(lm, m)
    if rng.random() < cfg.occlusion_fraction:
        colour = tuple(float(x) for x in rng.uniform(20, 235, 3))
        draw_occluder(
            frame,
            lm_frame,
            s,
            (0, 30, int(rng.integers(3)), colour, False, rng.uniform(-4, 4), rng.uniform(-4, 4)),
            int(rng.integers(30)),
        )
    error = math.hypot(LANDMARK_BIAS, LANDMARK_JITTER)
    crop = align_crop(frame, lm_frame + rng.normal(0.0, error, (5, 2)), cfg.crop_size)
    return _lit(rng, crop, cfg.noise_sigma), (float(va[0]), float(va[1]))


def _still_expression(rng: np.random.Generator, ident: Identity) -> tuple[np.ndarray, dict]:
    """(VA uniform in the disc of radius 0.95, the expression and pose parameters of one frame rendered from it),
    by the videos' mapping with independent noises: a blink as often as a video frame shows one, talking in 2
    of 3 images at a random syllable phase."""
    while True:
        va = rng.uniform(-0.95, 0.95, 2)
        if va @ va <= 0.95**2:
            break
    v, a = np.array([va[0]]), np.array([va[1]])
    noise = {k: rng.standard_normal(1) for k in ("smile", "brow", "inner", "eye", "mouth")}
    blink = np.ones(1)
    profile = blink_profile()
    if rng.random() < blink_rate(a)[0] * len(profile) / 30.0:
        blink[0] = profile[rng.integers(len(profile))]
    talking = np.array([rng.random() < 0.67])
    syllables = np.array([0.5 - 0.5 * math.cos(rng.uniform(0, 2 * math.pi))])
    expr = expression(v, a, ident, noise, blink, talking, syllables)
    energy = 0.15 + 1.1 * ((a[0] + 1) / 2) ** 1.5
    params = {key: float(val[0]) for key, val in expr.items()}
    params["yaw"] = POSTURE_YAW * rng.standard_normal() + JITTER_YAW * energy * rng.standard_normal()
    params["pitch"] = POSTURE_PITCH * rng.standard_normal() + JITTER_PITCH * energy * rng.standard_normal()
    return va, params


def _lit(rng: np.random.Generator, crop: np.ndarray, noise_sigma: tuple[float, float]) -> np.ndarray:
    """Lighting (gain, a directional gradient, a tint) and sensor noise, applied to the crop only (cheaper than
    the frame)."""

    c = crop.shape[0]
    angle = rng.uniform(0, 2 * math.pi)
    ramp = np.linspace(-0.6, 0.6, c, dtype=np.float32)
    light = rng.uniform(0.8, 1.2) * (
        1 + rng.uniform(0, 0.25) * (ramp[None, :] * math.cos(angle) + ramp[:, None] * math.sin(angle))
    )
    tint = rng.uniform(0.88, 1.12, 3).astype(np.float32)
    lit = crop.astype(np.float32) * (light[..., None] * tint)
    lit += rng.standard_normal((c, c, 3), dtype=np.float32) * np.float32(rng.uniform(*noise_sigma))
    return cv2.convertScaleAbs(lit)


def _album_job(args: tuple) -> dict:
    """Render one album into a temporary crop folder, then move it into place and write its annotation."""

    cv2.setNumThreads(1)
    root, name, split, n, seed, cfg = args
    root = Path(root)
    rng = np.random.default_rng(seed)
    tmp = new_crop_dir(root / CROPS_DIR, name)
    labels = np.zeros((n, 2))
    for i in range(n):
        crop, labels[i] = _still(rng, cfg)
        write_jpeg(tmp / f"{i + 1:05d}.jpg", crop, cfg.jpeg_quality, name, f"image {i + 1}")
    replace_dir(tmp, root / CROPS_DIR / name)
    write_text(root / ANNOTATION_DIR / SPLIT_DIRS[split] / f"{name}.txt", annotation_text(np.round(labels, 4)))
    return {"name": name, "split": split, "images": n}


def generate_stills(
    out_dir: str | os.PathLike, cfg: StillsConfig | None = None, progress: ProgressFn | None = None
) -> SynthSummary:
    """Write a still-image set (see StillsConfig) under `out_dir` in the Aff-Wild2 layout: albums
    `still-NNNN` as videos of Train_Set / Validation_Set, one crop and one annotation line per image."""
    cfg = cfg or StillsConfig()
    started = time.perf_counter()
    root = Path(out_dir)
    prepare_root(root)
    jobs = []
    children = np.random.SeedSequence(cfg.seed, spawn_key=(2,)).spawn(
        math.ceil(cfg.n_train / cfg.per_album) + math.ceil(cfg.n_val / cfg.per_album)
    )
    for split, total in (("train", cfg.n_train), ("validation", cfg.n_val)):
        for start in range(0, total, cfg.per_album):
            k = len(jobs)
            jobs.append((str(root), f"still-{k + 1:04d}", split, min(cfg.per_album, total - start), children[k], cfg))
    (root / ANNOTATION_DIR / SPLIT_DIRS["validation"]).mkdir(parents=True, exist_ok=True)
    facts = run_jobs(_album_job, jobs, cfg.workers, progress, [j[1] for j in jobs])
    splits: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for f in facts:
        splits[f["split"]].append(f["name"])
    meta = {
        "generator": "mambava.synth.stills",
        "format_version": FORMAT_VERSION,
        "config": cfg.to_dict(),
        "splits": splits,
        "albums": facts,
    }
    write_text(root / META_FILE, json.dumps(meta, indent=1) + "\n")
    images = sum(f["images"] for f in facts)
    return SynthSummary(
        root=root,
        splits=splits,
        videos=[],
        frames=images,
        person_frames=images,
        crops=images,
        invalid_labels=0,
        seconds=time.perf_counter() - started,
        config=cfg,
    )  # type: ignore[arg-type]
