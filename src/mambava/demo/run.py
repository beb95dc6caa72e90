"""The demo's run: its config, the stages in order (generate, stills, backbone, extract, train, distill,
evaluate, predict) and their results; `mambava.demo.report` turns the results into OUT/report.md. See `mambava.demo`."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import platform
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mambava.backbone import FeatureExtractor, ViTConfig, ViTEncoder, bf16_supported, load_encoder
from mambava.backbone.extract import extract_features
from mambava.backbone.finetune import FinetuneConfig, finetune
from mambava.core.errors import MambavaError
from mambava.core.fileio import atomic_open, make_folder
from mambava.core.metrics import va_scores
from mambava.core.progress import ProgressBar
from mambava.core.runtime import cpu_seconds, torch_threads
from mambava.data.affwild2 import AffWild2, read_crop
from mambava.data.store import FeatureStore
from mambava.data.windows import predict_sequence
from mambava.demo.ablation import run_ablation
from mambava.demo.distill import distill_stage
from mambava.demo.own_crops import LANDMARKS_FILE, demo_detector, landmark_stage, own_crops_stage
from mambava.demo.own_crops import predict_all as predict_every_raw_video
from mambava.demo.recipe import score_run, train_side_by_side
from mambava.demo.report import REPORT_FILE, write_figures, write_report
from mambava.inference.files import write_table
from mambava.inference.predict import Predictor
from mambava.synth import StillsConfig, SynthConfig, generate, generate_stills, read_meta, read_truth
from mambava.synth.layout import read_labels

RESULTS_FILE = "results.json"
# backbone crop jitter with own_crops: 1 px / 2% / 1° at 112 px covers MTCNN's per-face error on the drawn faces
# (per-person mean shift ~0.5 px, frame jitter ~1.2 px); with 1.5 px and more the small ViT's pretraining failed
OWN_CROPS_JITTER = (1.0, 0.02, 1.0)


@dataclass
class DemoConfig:
    """Sizes of the demo. The defaults are the first run (at most 5 minutes on 2 CPU cores): every stage of the
    paper's pipeline on its own data, trained on the dataset's crops as the paper trains on Aff-Wild2's
    `cropped_aligned/`, and our faces stage on a held-out raw video for `predict`. `full()` adds our own crops
    of every raw video with the learned landmarks, the audio-visual ablation, distillation, every held-out raw
    video through predict and more data (about 23 minutes on 2 cores); `quick()` is a smaller run of every stage."""

    seed: int = 0
    # the generated dataset
    n_train: int = 40
    n_val: int = 8
    n_test: int = 10
    frames: tuple[int, int] = (240, 360)
    two_person_fraction: float = 0.15
    stills_train: int = 2000
    stills_val: int = 200
    # the backbone: a small ViT, pretrained on the stills, then partially frozen and fine-tuned on video frames
    img_size: int = 80
    patch_size: int = 16
    embed_dim: int = 128
    depth: int = 4
    num_heads: int = 2
    pretrain_epochs: int = 5
    pretrain_lr: float = 5e-4
    finetune_epochs: int = 1
    finetune_lr: float = 2e-4
    freeze_blocks: int = 2  # of `depth`, as the paper freezes 16 of ViT-L's 24
    finetune_frames_per_video: int = 80
    # random shift (px at 112), log-scale, rotation (degrees) of the backbone's training crops (AlignJitter);
    # None: OWN_CROPS_JITTER with own crops from MTCNN's own points (it errs per face; docs/faces.md, Crops for
    # training), else none (the learned landmarks err 0.4 px, less than the jitter: it lowered P_VA, docs/faces.md,
    # Learned landmarks)
    align_jitter: tuple[float, float, float] | None = None
    # the temporal models (the paper's structure at reduced widths)
    tcn_channels: tuple[int, ...] = (128, 96, 64)
    kernel_size: int = 15
    d_model: int = 64
    n_layers: int = 2
    d_state: int = 8
    head_hidden: int = 64
    dropout: float = 0.1
    window: int = 150
    stride: int = 50
    epochs: int = 8
    warmup_epochs: int = 1
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-3
    baseline: str = "mlp"
    # the held-out video for `predict`: through the faces stage (MTCNN) or from the crops
    predict_faces: bool = True
    # train on crops made by our own faces stage from the raw videos (`mambava faces --dataset`), the crops
    # `predict` makes, instead of the dataset's own (the generator's ideal ones); `full()` does
    own_crops: bool = False
    # with own_crops: fine-tune the backbone and train the temporal models on the generator's crops too (the
    # same faces as two aligners crop them; `FinetuneConfig.extra_crops`, `data.extra_features`)
    both_crops: bool = False
    # with own_crops: train the landmark refiner (`mambava.faces.landmarks`) on the training videos' true
    # landmarks and refine MTCNN's points with it, for the crops and every raw-video `predict` (docs/faces.md,
    # Crops for training: MTCNN's own points cost most of the raw-video path's P_VA); `full()` does
    learned_landmarks: bool = False
    landmark_epochs: int = 8
    # torch threads of the landmark refiner's training: a fixed count (the refiner, and so the crops, then do not
    # depend on the load); its convolutions on batches of 128 patches split well: 2 threads ran an epoch 1.75x
    # faster than 1 on an idle 2-core machine (1.87 cores busy), 1.4x slower beside one other busy process
    landmark_threads: int = 2
    face_workers: int = 2  # processes for the faces stage (one video each)
    # detection by tracking (`--detect-every`) for the own crops and every raw-video `predict`: 1 detects
    # every frame; k > 1 also checks followed faces with O-Net (docs/faces.md, Detection by tracking)
    detect_every: int = 1
    # torch threads. One: the small models here run many short ops, and on a 2-core machine that anything else
    # keeps busy two OpenMP threads stall at each of them (measured: the temporal training 7x slower on two
    # threads at a load average of ~3). The second core works through processes instead (`workers`). 0 leaves
    # torch's default.
    threads: int = 1
    # processes for the stages made of independent jobs: the temporal models trained side by side, the audio
    # ablation's three models, the landmark samples, the audio features (the faces stage has `face_workers`)
    workers: int = 2
    precision: str = "auto"  # "auto": bf16 mixed precision where the CPU runs it fast (AMX / AVX-512 BF16), else 32
    audio: bool = False  # the audio-visual ablation (`mambava.demo.ablation`): audio only, early and mid fusion
    audio_epochs: int | None = None  # the ablation's models (None: `epochs`)
    distill: bool = False  # the distilled student backbone (`mambava.demo.distill`)
    predict_all: bool = False  # with own_crops: every held-out raw video through predict, beside the ideal crops

    def __post_init__(self) -> None:
        self.frames = tuple(int(x) for x in self.frames)  # type: ignore[assignment]
        self.tcn_channels = tuple(int(x) for x in self.tcn_channels)  # type: ignore[assignment]
        if self.align_jitter is None:
            mtcnn_points = self.own_crops and not self.learned_landmarks
            self.align_jitter = OWN_CROPS_JITTER if mtcnn_points else (0.0, 0.0, 0.0)
        self.align_jitter = tuple(float(x) for x in self.align_jitter)  # type: ignore[assignment]
        if self.n_test < 1 or self.n_val < 1 or self.n_train < 2:
            raise MambavaError("DemoConfig: at least 2 training, 1 validation and 1 test video are needed")
        if not 0 <= self.freeze_blocks <= self.depth:
            raise MambavaError(f"DemoConfig: freeze_blocks must be in 0..{self.depth}")
        if self.tcn_channels[-1] != self.d_model:
            raise MambavaError("DemoConfig: d_model must equal the last TCN channel count")

    @classmethod
    def full(cls, seed: int = 0, **overrides) -> DemoConfig:
        """Everything (`mambava demo --full`): more data, the learned landmarks for our crops, the audio-visual
        ablation, distillation, every held-out raw video through predict."""
        values: dict[str, Any] = dict(
            seed=seed,
            n_train=80,
            n_val=10,
            n_test=16,
            frames=(300, 450),
            stills_train=4000,
            stills_val=300,
            pretrain_epochs=6,
            finetune_frames_per_video=100,
            epochs=10,
            own_crops=True,
            learned_landmarks=True,
            audio=True,
            distill=True,
            predict_all=True,
        )
        values.update(overrides)
        return cls(**values)

    @classmethod
    def quick(cls, seed: int = 0, **overrides) -> DemoConfig:
        """A smaller run of the first run's stages and of the ablation and distillation (the dataset's crops;
        `own_crops=True` adds ours)."""
        values: dict[str, Any] = dict(
            seed=seed,
            n_train=24,
            n_val=6,
            n_test=8,
            frames=(200, 260),
            stills_train=1200,
            stills_val=150,
            pretrain_epochs=4,
            finetune_frames_per_video=60,
            epochs=8,
            audio_epochs=4,
            own_crops=False,
            audio=True,
            distill=True,
            predict_all=True,
        )
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def training_precision(self) -> str:
        """Lightning precision for the backbone and the temporal models."""
        if self.precision == "auto":
            return "bf16-mixed" if bf16_supported("cpu") else "32"
        return self.precision


@dataclass
class DemoResult:
    out: Path
    report: Path
    results: dict = field(repr=False)


class _Stages:
    """Numbered stage lines with their wall time (printed on stderr through rich)."""

    def __init__(self, total: int, enabled: bool = True):
        from rich.console import Console

        self.console = Console(stderr=True, soft_wrap=True)
        self.total = total
        self.k = 0
        self.times: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self.enabled = enabled
        self.started = time.perf_counter()

    @contextlib.contextmanager
    def stage(self, name: str, what: str):
        self.k += 1
        self.console.print(f"[bold][{self.k}/{self.total}] {name}[/bold]: {what}")
        start, cpu = time.perf_counter(), cpu_seconds()
        yield
        self.times[name] = time.perf_counter() - start
        self.cpu[name] = cpu_seconds() - cpu
        self.console.print(
            f"      {name} done in {self.times[name]:.1f} s, {self.cpu[name]:.0f} CPU-s "
            f"({self.cpu[name] / max(self.times[name], 1e-9):.2f} cores busy; total "
            f"{time.perf_counter() - self.started:.0f} s)"
        )


def _quiet_lightning() -> None:
    """Lightning's start-up chatter (accelerator lines, tips) off; its progress bars stay."""

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*have no features and are left out.*")
    warnings.filterwarnings("ignore", message=".*is not supported by the model summary.*")


def run_demo(out: str | os.PathLike = "demo_out", cfg: DemoConfig | None = None, progress: bool = True) -> DemoResult:
    """Run every stage (see the module docstring) under `out`; returns the report's path and the results.
    An earlier demo in `out` is replaced; a folder holding anything else is an error."""
    cfg = cfg or DemoConfig()
    out = Path(out)
    _prepare_out(out)
    with torch_threads(cfg.threads or None):
        return _run(out, cfg, progress)


def _run(out: Path, cfg: DemoConfig, progress: bool) -> DemoResult:
    _quiet_lightning()
    stages = _Stages(8 + cfg.own_crops + (cfg.own_crops and cfg.learned_landmarks) + cfg.audio + cfg.distill, progress)
    results: dict[str, Any] = {"config": cfg.to_dict(), "machine": _machine()}
    data_root, train_root, stills_root, test_names = _data_stages(out, cfg, progress, stages, results)
    encoder_path, store, runs = _model_stages(out, data_root, train_root, stills_root, cfg, progress, stages, results)
    if cfg.distill:
        distill_stage(
            out,
            data_root,
            train_root,
            encoder_path,
            store,
            runs["mamba_va"]["outputs"]["model"],
            test_names,
            cfg,
            progress,
            stages,
            results,
        )
    report = _score_and_report(out, data_root, encoder_path, store, runs, test_names, cfg, progress, stages, results)
    t, b = results["test"]["mamba_va"], results["test"][cfg.baseline]
    stages.console.print(
        f"[bold]held-out test subjects[/bold]: TCN+Mamba P_VA {t['p_va']:.3f} (CCC_v {t['ccc_valence']:.3f}, "
        f"CCC_a {t['ccc_arousal']:.3f}); frame-wise P_VA {b['p_va']:.3f} (CCC_v {b['ccc_valence']:.3f}, "
        f"CCC_a {b['ccc_arousal']:.3f}); {results['timings_s']['total']:.0f} s in all"
    )
    return DemoResult(out, report, results)


def _data_stages(out: Path, cfg: DemoConfig, progress: bool, stages: "_Stages", results: dict):
    """1. the dataset, 1b. (own_crops) our faces stage over its raw videos, 2. the stills. Returns the dataset
    root, the root the models train on (ours or the generator's crops), the stills root and the test names."""

    data_root, stills_root = out / "data", out / "stills"
    synth_cfg = SynthConfig(
        n_train=cfg.n_train,
        n_val=cfg.n_val,
        n_test=cfg.n_test,
        frames=cfg.frames,
        two_person_fraction=cfg.two_person_fraction,
        seed=cfg.seed,
    )
    with stages.stage("generate", f"{cfg.n_train}+{cfg.n_val}+{cfg.n_test} synthetic videos -> {data_root}"):
        with ProgressBar("generate", enabled=progress) as bar:
            summary = generate(data_root, synth_cfg, progress=bar)
        stages.console.print(f"      {summary.describe()}")
    results["dataset"] = {
        "videos": len(summary.videos),
        "frames": summary.frames,
        "crops": summary.crops,
        "invalid_labels": summary.invalid_labels,
        "annotation_names": {k: len(v) for k, v in summary.splits.items()},
    }

    # our own crops of every raw video: the faces `predict` will see
    train_root = data_root
    if cfg.own_crops:
        own_root, landmarks = out / "own_crops", _landmarks(out, cfg)
        if landmarks:
            with stages.stage(
                "landmarks",
                "a landmark refiner for MTCNN's 5 points, trained on the training "
                f"videos' true landmarks -> {landmarks}",
            ):
                landmarks, results["landmarks"] = landmark_stage(
                    data_root, out, cfg.landmark_epochs, progress, threads=cfg.landmark_threads
                )
        with stages.stage(
            "faces",
            f"MTCNN{' + learned landmarks' if landmarks else ''} + alignment over every raw "
            f"video -> {own_root / 'cropped_aligned'}",
        ):
            faces = results["faces"] = own_crops_stage(
                data_root, own_root, cfg.face_workers, cfg.detect_every, landmarks, progress
            )
            stages.console.print(
                f"      {faces['frames']:,} frames, {faces['crops']:,} crops; alignment error vs the true "
                f"landmarks: ours {faces['alignment']['ours']['mean_px']:.2f} px (held-out people "
                f"{faces['alignment_held_out']['ours']['mean_px']:.2f} px), the generator's crops "
                f"{faces['alignment']['generator']['mean_px']:.2f} px (at 112 px)"
            )
        train_root = own_root

    with stages.stage("stills", f"{cfg.stills_train}+{cfg.stills_val} single faces for pretraining -> {stills_root}"):
        with ProgressBar("stills", enabled=progress) as bar:
            stills = generate_stills(
                stills_root, StillsConfig(n_train=cfg.stills_train, n_val=cfg.stills_val, seed=cfg.seed), progress=bar
            )
    results["stills"] = {"images": stills.frames}
    return data_root, train_root, stills_root, summary.splits["test"]


def _model_stages(
    out: Path,
    data_root: Path,
    train_root: Path,
    stills_root: Path,
    cfg: DemoConfig,
    progress: bool,
    stages: "_Stages",
    results: dict,
):
    """3. the backbone, 4. its features, 5. the temporal models. Returns the encoder, the store and the runs."""
    with stages.stage(
        "backbone",
        "a small ViT: pretrain on the stills, then partial-freeze fine-tuning on the video frames (frame-level CCC)",
    ):
        both = [data_root] if cfg.own_crops and cfg.both_crops else []
        encoder_path, backbone = _backbone(out, train_root, stills_root, cfg, progress, stages, both)
    results["backbone"] = backbone

    with stages.stage("extract", "ViT CLS features of every crop -> feature store"):
        store = _extract(out, train_root, encoder_path, progress)
        extra = [_extract(out, root, encoder_path, progress, "features_generator_crops") for root in both]

    with stages.stage(
        "train",
        f"TCN+Mamba and the frame-wise baseline ({cfg.baseline}), {cfg.epochs} epochs each"
        + (", side by side" if cfg.workers > 1 else ""),
    ):
        jobs = {
            kind: dict(
                out_dir=out / "runs" / kind,
                data_root=data_root,
                features=store,
                model=dict(kind=kind, input_dim=cfg.embed_dim),
                cfg=cfg,
                progress=progress,
                extra=extra,
            )
            for kind in ("mamba_va", cfg.baseline)
        }
        runs = train_side_by_side(jobs, cfg.workers)
    results["runs"] = {
        k: {"validation_best": v["best"], "parameters": v["parameters"], "train_time_s": v["train_time_s"]}
        for k, v in runs.items()
    }
    return encoder_path, store, runs


def _score_and_report(
    out: Path,
    data_root: Path,
    encoder_path: Path,
    store: Path,
    runs: dict,
    test_names: list[str],
    cfg: DemoConfig,
    progress: bool,
    stages: "_Stages",
    results: dict,
) -> Path:
    """7. evaluation on held-out subjects (and the audio ablation), 8. predict on held-out raw video(s),
    9. the report."""
    with stages.stage("evaluate", f"whole test videos of {len(test_names)} held-out subjects"):
        labels = read_labels(data_root, test_names)
        scores, predictions = _evaluate(out, store, runs, test_names, labels, cfg)
    results["test"] = scores
    results["validation"] = {k: v["best"] for k, v in runs.items()}
    if cfg.audio:
        with stages.stage("audio", "the voices: audio features, then audio-only, early and mid fusion models"):
            results["audio"] = run_ablation(
                out, data_root, store, scores["mamba_va"], test_names, labels, cfg, progress, stages.console.print
            )

    with stages.stage(
        "predict",
        "a held-out raw video: faces -> features -> temporal model"
        + ("; then every held-out raw video, beside the ideal crops" if cfg.own_crops and cfg.predict_all else ""),
    ):
        results["predict"] = _predict(out, data_root, encoder_path, runs["mamba_va"], cfg, progress)
        if cfg.own_crops and cfg.predict_all:
            results["predict_all"] = predict_every_raw_video(
                out, data_root, encoder_path, runs["mamba_va"], cfg, progress, _landmarks(out, cfg)
            )
            both = results["predict_all"]
            stages.console.print(
                f"      {both['videos']} held-out raw videos through predict: P_VA "
                f"{both['raw_video']['p_va']:.3f}; from the generator's ideal crops: "
                f"{both['ideal_crops']['p_va']:.3f}"
            )

    with stages.stage("report", f"{out / REPORT_FILE}"):
        figures = write_figures(out, runs, predictions, labels, results, cfg)
        results["timings_s"] = {k: round(v, 1) for k, v in stages.times.items()}
        results["timings_s"]["total"] = round(time.perf_counter() - stages.started, 1)
        results["cpu_s"] = {k: round(v, 1) for k, v in stages.cpu.items()}
        report = write_report(out, results, figures, cfg)
        with atomic_open(out / RESULTS_FILE) as handle:
            json.dump(results, handle, indent=1)
    return report


# ---------------------------------------------------------------------------------------------------------
# Stages


def _prepare_out(out: Path) -> None:
    """`out` must be new, empty or an earlier demo (which is cleared)."""
    if out.exists() and any(out.iterdir()):
        if not (out / RESULTS_FILE).exists() and not (out / ".mambava-demo").exists():
            raise MambavaError(f"{out}: folder is not empty and is not an earlier demo's output: choose another --out")
        for child in out.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
    make_folder(out)
    (out / ".mambava-demo").write_text("output of `mambava demo`; the whole folder is replaced by the next run\n")


def _machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
    }


def _backbone(
    out: Path,
    data_root: Path,
    stills_root: Path,
    cfg: DemoConfig,
    progress: bool,
    stages: _Stages,
    extra_crops: list[Path] = (),
):
    torch.manual_seed(cfg.seed)
    encoder = ViTEncoder(
        ViTConfig(
            img_size=cfg.img_size,
            patch_size=cfg.patch_size,
            embed_dim=cfg.embed_dim,
            depth=cfg.depth,
            num_heads=cfg.num_heads,
            name="demo_vit",
        )
    )
    common = dict(
        batch_size=64,
        num_workers=1,
        precision=cfg.training_precision(),
        accelerator="cpu",
        devices=1,
        seed=cfg.seed,
        hflip=False,
        head_hidden=0,
        drop_path=0.0,
        align_jitter=tuple(cfg.align_jitter),
    )
    stages.console.print(f"      pretraining all {cfg.depth} blocks on the stills")
    pre = finetune(
        stills_root,
        encoder,
        FinetuneConfig(
            freeze_blocks=0,
            epochs=cfg.pretrain_epochs,
            lr=cfg.pretrain_lr,
            head_lr=cfg.pretrain_lr,
            frames_per_video=None,
            **common,
        ),
        out=out / "runs" / "backbone_pretrain",
        progress=progress,
    )
    stages.console.print(
        f"      stills validation P_VA {pre.best_val_pva:.3f}; fine-tuning blocks "
        f"{cfg.freeze_blocks}..{cfg.depth - 1} on the training videos' frames"
    )
    ft = finetune(
        data_root,
        encoder,
        FinetuneConfig(
            freeze_blocks=cfg.freeze_blocks,
            epochs=cfg.finetune_epochs,
            lr=cfg.finetune_lr,
            head_lr=cfg.finetune_lr,
            frames_per_video=cfg.finetune_frames_per_video,
            extra_crops=tuple(map(str, extra_crops)),
            **common,
        ),
        out=out / "runs" / "backbone_finetune",
        progress=progress,
    )
    stages.console.print(
        f"      video-frame validation P_VA {ft.best_val_pva:.3f} "
        f"({ft.trainable_parameters:,} trainable, {ft.frozen_parameters:,} frozen parameters)"
    )
    info = {
        "pretrain_val_p_va": pre.best_val_pva,
        "finetune_val_p_va": ft.best_val_pva,
        "pretrain_history": pre.history,
        "finetune_history": ft.history,
        "trainable_parameters": ft.trainable_parameters,
        "frozen_parameters": ft.frozen_parameters,
        "encoder": str(ft.encoder_path),
    }
    return ft.encoder_path, info


def _extract(out: Path, data_root: Path, encoder_path: Path, progress: bool, name: str = "features") -> Path:
    store = out / name
    extractor = FeatureExtractor(load_encoder(encoder_path), batch_size=256, device="cpu", precision="auto")
    extract_features(data_root, store, extractor, backbone="demo_vit", dtype="float32", workers=1, progress=progress)
    return store


def _evaluate(out: Path, store: Path, runs: dict, names: list[str], labels: dict, cfg: DemoConfig):
    scores, predictions = {}, {}
    fs = FeatureStore(store)
    for kind, run in runs.items():
        loaded, result = score_run(run, fs, names, labels, cfg)
        scores[kind] = result.as_dict()
        predictions[kind] = _predictions(loaded, fs, names, cfg)
    return scores, predictions


def _predictions(loaded, store, names: list[str], cfg: DemoConfig) -> dict[str, np.ndarray]:
    model = loaded.model.to("cpu").eval()
    out = {}
    for name in names:
        features, _ = store.read(name).window(0, store.read(name).n_frames)
        out[name] = predict_sequence(
            model, torch.from_numpy(np.ascontiguousarray(features)), cfg.window, cfg.stride
        ).numpy()
    return out


def _predict(out: Path, data_root: Path, encoder_path: Path, run: dict, cfg: DemoConfig, progress: bool) -> dict:
    """Predict a held-out raw video through the faces stage (or its crops) and score it against its labels."""

    meta = read_meta(data_root)
    test = [v for v in meta["videos"] if v["split"] == "test"]
    single = [v for v in test if not v["two_person"]] or test

    def spread(v) -> float:  # chosen by how much its labels move (an informative plot), never by a score
        y = read_labels(data_root, [v["persons"][0]["name"]])[v["persons"][0]["name"]]
        y = y[(y != -5).all(1)]
        return float(y.std(0).sum()) if len(y) else 0.0

    video = max(single, key=spread)
    name = video["persons"][0]["name"]
    path = data_root / video["video"]
    labels = read_labels(data_root, [name])[name]
    truth = read_truth(data_root, name)
    predictor = Predictor(
        run["outputs"]["model"],
        backbone=encoder_path,
        window=cfg.window,
        stride=cfg.stride,
        detector=demo_detector(_landmarks(out, cfg)),
        device="cpu",
        precision="auto",
        progress=progress,
        detect_every=cfg.detect_every,
    )
    info: dict[str, Any] = {"video": str(path.relative_to(out)), "track": name}
    table = None
    if cfg.predict_faces:
        try:
            table = predictor.predict_video(path)
            info["source"] = "faces stage (MTCNN detection, tracking, alignment) on the raw video"
        except MambavaError as error:
            info["faces_error"] = str(error)
    if table is not None and video["two_person"]:
        table = table[table["track"].str.endswith(name[len(video["name"]) :])]
    if table is None or len(table) == 0:
        table = _table_from_crops(predictor, AffWild2(data_root), name)
        info["source"] = "the video's cropped_aligned/ crops"
    table = table.sort_values("frame")
    rows = table.drop_duplicates("frame")
    n = len(labels)
    pred = np.full((n, 2), np.nan)
    face = np.zeros(n, bool)
    frames = rows["frame"].to_numpy()
    keep = frames < n
    pred[frames[keep]] = rows[["valence", "arousal"]].to_numpy()[keep]
    face[frames[keep]] = rows["face"].to_numpy()[keep].astype(bool)
    have = np.isfinite(pred).all(1)
    scores = va_scores(pred[have], labels[have])
    written = write_table(table, out / "predict", Path(video["name"]).stem)
    info.update(
        scores=scores,
        frames=n,
        frames_predicted=int(have.sum()),
        face_found=int(face.sum()),
        face_rendered=int(truth["present"].sum()),
        face_found_where_rendered=float((face & truth["present"]).sum() / max(truth["present"].sum(), 1)),
        files={k: str(Path(v).relative_to(out)) for k, v in written.items()},
    )
    # the same video from its crops and stored features (the Aff-Wild2 path), for comparison

    record = FeatureStore(out / "features").read(name)
    features, mask = record.window(0, record.n_frames)
    from_crops = predictor.predict_features(features, mask)[:n]
    info["scores_from_crops"] = va_scores(from_crops, labels[: len(from_crops)])
    info["prediction"] = pred.tolist() if n <= 2000 else None
    return info


def _landmarks(out: Path, cfg: DemoConfig) -> Path | None:
    """Where the demo's landmark refiner is (or goes): with own crops and learned landmarks only."""
    return out / LANDMARKS_FILE if cfg.own_crops and cfg.learned_landmarks else None


def _table_from_crops(predictor, dataset, name: str):
    """The per-frame table of a video from its Aff-Wild2 crops (the path Aff-Wild2 users take)."""

    frames = dataset.crop_frames(name)
    n = dataset.n_frames(name)
    crops = np.stack([read_crop(dataset.crop_path(name, f)) for f in frames])
    feats = np.zeros((n, predictor.extractor.dim), np.float32)
    present = np.zeros(n, bool)
    feats[np.array(frames) - 1] = predictor.extractor.features(crops)
    present[np.array(frames) - 1] = True
    va = predictor.predict_features(feats, present)
    return pd.DataFrame(
        {
            "video": name,
            "track": name,
            "frame": np.arange(n),
            "time": np.arange(n) / 30.0,
            "valence": va[:, 0],
            "arousal": va[:, 1],
            "face": present.astype(np.int8),
            "x1": np.nan,
            "y1": np.nan,
            "x2": np.nan,
            "y2": np.nan,
        }
    )
