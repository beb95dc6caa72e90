"""`mambava distill`: a teacher backbone distilled into a small student, judged where it matters.

    result = run_distill("affwild2/", "vit_large_ft.safetensors", "runs/distill", student="vit_tiny_patch16_112",
                         model="mamba_va.safetensors")

- Crops: a crop source (`crops.find_crop_videos`: an Aff-Wild2 root, its cropped_aligned/, a faces output), or
  videos (a file or a folder of them), which go through the faces stage first (`faces.extract_faces` into
  OUT/crops/). Held out: an Aff-Wild2 root's Validation_Set videos, else every `heldout_every`-th video by name.
- The student (`backbone.distill`) is written as OUT/student.safetensors, an ordinary backbone file.
- Judged on the held-out videos: the mean cosine of its features with the teacher's (crops), and with a temporal
  model trained on the teacher's features (`model`) and labels (an Aff-Wild2 tree), P_VA with the teacher's and
  with the student's features, both extracted into stores under OUT by `extract` from the saved files (so the
  student is scored as `extract`/`predict` load it); and ms per frame of each backbone at batch 1 (live use).
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from mambava.backbone import FeatureExtractor, load_encoder
from mambava.backbone.distill import DistillConfig, distill, student_config
from mambava.backbone.extract import extract_features
from mambava.core.errors import MambavaError
from mambava.core.fileio import atomic_open, make_folder
from mambava.data.affwild2 import AffWild2
from mambava.data.crops import find_crop_videos
from mambava.data.store import FeatureStore
from mambava.faces.pipeline import extract_faces
from mambava.media.video import VIDEO_SUFFIXES
from mambava.temporal import load_temporal_model, save_temporal_model
from mambava.training.adapt import model_config
from mambava.training.config import DataConfig, TrainConfig
from mambava.training.evaluate import evaluate_videos
from mambava.training.module import VADataModule, VAModule
from mambava.training.outputs import RunPaths
from mambava.training.run import build_trainer

BATCHED = 64  # the batch of the batched ms/frame (extract's default)


def frame_ms(encoder, batch_size: int = 1, frames: int = 16, precision: str = "auto", repeats: int = 3) -> float:
    """Milliseconds per frame of `encoder` on the CPU (normalise + ViT + adapter) in batches of `batch_size`: 1 as
    a live stream runs it, larger as `extract` does. The best of `repeats` passes over max(frames, batch_size)
    frames, after one warm-up batch."""

    extractor = FeatureExtractor(encoder, batch_size=batch_size, device="cpu", precision=precision)
    size = encoder.config.img_size
    n = max(frames, batch_size)
    images = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    extractor.features_from_resized(images[:batch_size])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(0, n, batch_size):
            extractor.features_from_resized(images[i : i + batch_size])
        best = min(best, (time.perf_counter() - start) / n)
    return 1000 * best


def temporal_p_va(
    model,
    stores: dict[str, Any],
    names: list[str],
    labels: dict[str, np.ndarray],
    window: int | None = None,
    stride: int | None = None,
) -> dict[str, dict]:
    """Scores (`EvalResult.as_dict`) of one temporal model (a path or a LoadedModel) on whole videos `names`
    with the features of each store ({"teacher": store, "student": store})."""

    loaded = load_temporal_model(model) if isinstance(model, (str, os.PathLike)) else model
    return {
        key: evaluate_videos(loaded, store, names, labels, window, stride, device="cpu").as_dict()
        for key, store in stores.items()
    }


def finetune_temporal(
    model,
    features: str | os.PathLike,
    annotations: str | os.PathLike,
    out: str | os.PathLike,
    epochs: int = 2,
    lr: float = 1e-4,
    seed: int = 0,
    accelerator: str = "auto",
    progress: bool = False,
) -> Path:
    """A brief fine-tuning of a temporal model (a path or a LoadedModel) on a student's features: the training
    recipe (`mambava.training`, the official split of `annotations`) from the model's own weights, a low constant
    rate, no model selection (validated only after the last epoch, whose weights are kept). Writes and returns
    OUT/temporal_student.safetensors."""

    loaded = load_temporal_model(model) if isinstance(model, (str, os.PathLike)) else model
    out = Path(out)
    tcfg = TrainConfig(
        model=model_config(loaded.model),
        data=DataConfig(
            features=str(features),
            annotations=str(annotations),
            window=loaded.window,
            stride=loaded.stride,
            fold=0,
            n_folds=2,
        ),  # fold 0: the official split
        epochs=epochs,
        warmup_epochs=0,
        lr=lr,
        accelerator=accelerator,
        devices=1,
        seed=seed,
        val_every_n_epochs=epochs,
        progress_bar=progress,
        out_dir=str(out),
    )
    tcfg.check()
    L.seed_everything(seed, workers=True, verbose=False)
    module = VAModule(tcfg.to_dict())
    module.model.load_state_dict(copy.deepcopy(loaded.model.state_dict()))
    module.fit_input_statistics = False  # the base's audio statistics, if any
    build_trainer(tcfg, RunPaths(out)).fit(module, datamodule=VADataModule(tcfg))
    return save_temporal_model(module.model.to("cpu").float().eval(), out / "temporal_student.safetensors")


@dataclass
class DistillReport:
    student: Path
    train_videos: list[str]
    heldout_videos: list[str]
    cosine: float  # held-out crops, the saved student vs the teacher
    explained: float
    teacher_gflop: float
    student_gflop: float
    teacher_ms: float  # batch 1 (live)
    student_ms: float
    teacher_ms_batched: float  # batch 64 (extract)
    student_ms_batched: float
    p_va: dict[str, dict] = field(default_factory=dict)  # {"teacher": scores, "student": scores} when judged
    distill: dict = field(default_factory=dict)  # the DistillResult
    temporal_student: Path | None = None  # the temporal model fine-tuned on the student's features

    def summary(self) -> str:
        lines = [
            f"{self.student}: {len(self.train_videos)} training, {len(self.heldout_videos)} held-out videos",
            f"  held-out feature cosine {self.cosine:.4f} (explained variance {self.explained:.3f})",
            f"  {self.teacher_gflop:.3f} GFLOP teacher vs {self.student_gflop:.3f} GFLOP student "
            f"({self.teacher_gflop / self.student_gflop:.1f}x fewer)",
            f"  {self.teacher_ms:.2f} ms/frame teacher vs {self.student_ms:.2f} ms/frame student "
            f"({self.teacher_ms / self.student_ms:.1f}x faster) at batch 1 (live), {self.teacher_ms_batched:.2f}"
            f" vs {self.student_ms_batched:.2f} ({self.teacher_ms_batched / self.student_ms_batched:.1f}x) at "
            f"batch {BATCHED} (extract), CPU",
        ]
        if self.p_va:
            t, s = self.p_va["teacher"], self.p_va["student"]
            lines.append(
                f"  temporal model on the held-out videos: P_VA {t['p_va']:.4f} with the teacher's "
                f"features, {s['p_va']:.4f} with the student's ({s['p_va'] - t['p_va']:+.4f})"
            )
        if "student_finetuned" in self.p_va:
            f = self.p_va["student_finetuned"]
            lines.append(
                f"  fine-tuned on the student's features ({self.temporal_student}): P_VA {f['p_va']:.4f} "
                f"({f['p_va'] - t['p_va']:+.4f})"
            )
        return "\n".join(lines)


def _videos_in(source: Path) -> list[Path]:
    if source.is_file():
        return [source] if source.suffix.lower() in VIDEO_SUFFIXES else []
    if source.is_dir():
        return sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    return []


def crops_of(source: str | os.PathLike, out: Path, detector: str = "mtcnn", progress: bool = False):
    """(crop videos, their Aff-Wild2 release or None): the source's crops, or its videos through the faces stage."""

    source = Path(source)
    if not source.exists():
        raise MambavaError(f"{source}: no such file or folder")
    videos = _videos_in(source)
    if videos:
        crops = out / "crops"
        for video in videos:
            if not (crops / f"{video.stem}.faces.csv").exists():  # resume: done videos are kept
                extract_faces(video, crops, detector=detector, progress=progress)
        return find_crop_videos(crops), None
    found = find_crop_videos(source)
    root = source.parent if source.name == "cropped_aligned" else source
    return found, AffWild2(root) if (root / "cropped_aligned").is_dir() else None


def split_videos(videos: list, dataset=None, heldout_every: int = 10) -> tuple[list, list]:
    """(training, held-out) crop videos: an Aff-Wild2 release's Validation_Set is held out (the rest trains);
    otherwise every `heldout_every`-th video by name, at least one of two or more."""
    if dataset is not None and dataset.splits.get("validation"):
        held = set(dataset.splits["validation"])
        return [v for v in videos if v.name not in held], [v for v in videos if v.name in held]
    if len(videos) < 2:
        return list(videos), []
    k = max(2, min(heldout_every, len(videos)))
    return ([v for i, v in enumerate(videos) if i % k != k - 1], [v for i, v in enumerate(videos) if i % k == k - 1])


def run_distill(
    source: str | os.PathLike,
    teacher: str | os.PathLike,
    out: str | os.PathLike,
    student: str | None = "vit_tiny_patch16_112",
    config=None,
    model: str | os.PathLike | None = None,
    heldout_every: int = 10,
    teacher_features: str | os.PathLike | None = None,
    detector: str = "mtcnn",
    finetune_epochs: int = 0,
    finetune_lr: float = 1e-4,
    progress: bool = True,
    **student_overrides,
) -> DistillReport:
    """The whole `mambava distill` (see the module docstring); writes OUT/student.safetensors, OUT/distill.json
    (the student's training) and OUT/report.json (this report). `finetune_epochs` > 0 (with `model`): the
    temporal model is then fine-tuned on the student's features of the labelled videos (`finetune_temporal`)
    and scored on the held-out ones beside the unchanged model."""

    teacher = Path(teacher)
    if not teacher.exists():
        raise MambavaError(f"{teacher}: teacher backbone not found (pass the checkpoint `extract -c` reads)")
    out = Path(out)
    make_folder(out)
    videos, dataset = crops_of(source, out, detector, progress)
    videos = [v for v in videos if len(v.frames) or v.error]
    if not videos:
        raise MambavaError(f"{source}: no face crops to distill on")
    train, heldout = split_videos(videos, dataset, heldout_every)
    if not train:
        raise MambavaError(f"{source}: every video is held out; nothing to train on")
    if model is not None and dataset is None:  # said before the training, not after
        raise MambavaError(f"{source}: --model needs labels: pass an Aff-Wild2 root (VA_Estimation_Challenge/)")
    if finetune_epochs > 0 and (model is None or not heldout):
        raise MambavaError("distill: --finetune-temporal needs --model and held-out labelled videos")
    encoder = load_encoder(teacher)
    store = FeatureStore(teacher_features) if teacher_features is not None else None
    config = config or DistillConfig()
    result = distill(
        train,
        encoder,
        student_config(encoder.config, student, **student_overrides),
        config,
        out,
        heldout=heldout,
        teacher_store=store,
        progress=progress,
    )
    loaded = load_encoder(result.student_path)  # as extract/predict/stream load it
    report = DistillReport(
        result.student_path,
        [v.name for v in train],
        [v.name for v in heldout],
        result.heldout_cosine,
        result.heldout_explained,
        result.teacher_flops / 1e9,
        result.student_flops / 1e9,
        frame_ms(encoder),
        frame_ms(loaded),
        frame_ms(encoder, BATCHED),
        frame_ms(loaded, BATCHED),
        distill=asdict(result),
    )
    if model is not None and heldout:
        names = [v.name for v in heldout]
        labels = {n: dataset.read_annotation(n) for n in names}
        stores = {}
        for key, backbone in (("teacher", encoder), ("student", loaded)):
            stores[key] = FeatureStore(out / f"heldout_{key}")
            extract_features(
                heldout,
                stores[key],
                FeatureExtractor(backbone, batch_size=config.batch_size),
                backbone=key,
                dtype="float32",
                workers=0,
                progress=progress,
            )
        report.p_va = temporal_p_va(model, stores, names, labels)
        if finetune_epochs > 0:
            labelled = [v for v in videos if v.name in set(dataset.splits["train"])]
            extract_features(
                labelled,
                stores["student"],
                FeatureExtractor(loaded, batch_size=config.batch_size),
                backbone="student",
                dtype="float32",
                workers=0,
                progress=progress,
            )
            report.temporal_student = finetune_temporal(
                model,
                stores["student"].root,
                dataset.root,
                out / "temporal_student",
                finetune_epochs,
                finetune_lr,
                config.seed,
                config.accelerator,
                progress,
            )
            report.p_va.update(
                temporal_p_va(report.temporal_student, {"student_finetuned": stores["student"]}, names, labels)
            )
    with atomic_open(out / "report.json") as handle:
        json.dump(
            {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(report).items()},
            handle,
            indent=1,
            default=str,
        )
    return report
