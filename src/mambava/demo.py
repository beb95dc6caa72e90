"""`mambava demo`: every stage of the pipeline on a generated face-video dataset, on CPU, in minutes.

    result = run_demo("demo_out", DemoConfig.quick())     # -> demo_out/report.md, demo_out/results.json

Stages (each prints a line with its time; the long ones show a progress bar):

1. generate   `mambava.synth.generate`: synthetic affect videos in the exact Aff-Wild2 layout (raw videos,
              `cropped_aligned/`, annotations with -5 frames, a test list); the test labels stay aside in
              `synth_ground_truth/`, as the ABAW organisers keep theirs.
2. stills     `mambava.synth.generate_stills`: an AffectNet-like set of single faces of other identities with
              per-image valence/arousal, the stand-in for the large still-image data real backbones are
              pretrained on (no pretrained face model can be had offline).
3. backbone   a small ViT (`mambava.backbone.ViTEncoder`, 80 px input, 16 px patches, 128-d, 4 blocks), first
              trained on the stills (all blocks), then fine-tuned on the training videos' frames with the
              paper's partial freezing (patch embedding and the lower blocks frozen, `mambava.backbone.finetune`), on
              frame-level CCC. Why not from scratch on the videos alone: measured here, a ViT trained only on
              the video frames memorises who is on screen (frames of one video are near-duplicates, so a few
              dozen videos give few independent expressions) and reaches a validation CCC_v near 0.5 and a
              CCC_a near 0; MAE pretraining on the crops would need far longer than the demo's budget.
4. extract    `mambava.extract.extract_features`: CLS features of every crop into a feature store (missing
              crops forward-filled and masked).
5. train      `mambava.training.train`: the Mamba-VA temporal model (causal TCN -> Mamba encoder -> head; the
              paper's structure at reduced widths, see `DemoConfig`) and the frame-wise baseline (`mlp`, the
              same features one frame at a time), both with the default recipe (AdamW, warmup + cosine, CCC loss,
              model selection by validation P_VA).
6. evaluate   `mambava.training.evaluate.evaluate_videos` on the held-out test subjects (whole videos, windows stitched).
7. predict    `mambava.predict.Predictor` on a held-out raw video: faces detected, tracked and aligned by the
              faces stage (MTCNN), encoded by the fine-tuned ViT, then the temporal model; compared with the
              hidden labels.
8. report     OUT/report.md: the table (frame-wise vs TCN+Mamba: CCC_v, CCC_a, P_VA), training curves,
              predicted vs true plots, timings; OUT/results.json holds the same numbers.

With `own_crops` (`mambava demo --own-crops`) a faces stage runs after generate: `mambava faces --dataset`
over every raw video (`mambava.faces.dataset`) into OUT/own_crops/, whose crops (not the generator's ideal
ones) the backbone, the features and the temporal models are trained on, as `predict` will see them; its
alignment error against the generator's true landmarks is reported, and predict runs on every held-out raw
video, scored beside the same model on the generator's crops of those videos.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mambava.errors import MambavaError
from mambava.fileio import atomic_open
from mambava.plots import new_figure, save_figure
from mambava.progress import ProgressBar
from mambava.runtime import torch_threads

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"


@dataclass
class DemoConfig:
    """Sizes of the demo; the defaults take about 5 minutes on 2 CPU cores, `quick()` about 2."""

    seed: int = 0
    # the generated dataset
    n_train: int = 80
    n_val: int = 10
    n_test: int = 16
    frames: tuple[int, int] = (300, 450)
    two_person_fraction: float = 0.15
    stills_train: int = 4000
    stills_val: int = 300
    # the backbone: a small ViT, pretrained on the stills, then partially frozen and fine-tuned on video frames
    img_size: int = 80
    patch_size: int = 16
    embed_dim: int = 128
    depth: int = 4
    num_heads: int = 2
    pretrain_epochs: int = 6
    pretrain_lr: float = 5e-4
    finetune_epochs: int = 1
    finetune_lr: float = 2e-4
    freeze_blocks: int = 2  # of `depth`, as the paper freezes 16 of ViT-L's 24
    finetune_frames_per_video: int = 100
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
    epochs: int = 10
    warmup_epochs: int = 1
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-3
    baseline: str = "mlp"
    # the held-out video for `predict`: through the faces stage (MTCNN) or from the crops
    predict_faces: bool = True
    # train on crops made by our own faces stage from the raw videos (`mambava faces --dataset`), the crops
    # `predict` makes, instead of the generator's ideal ones; then every held-out raw video goes through
    # `predict` and is scored beside the ideal-crop path. Off by default: MTCNN over every frame costs ~150
    # frames per CPU-second here (~2 CPU-minutes for the quick demo's 17,600 frames).
    own_crops: bool = False
    face_workers: int = 2  # processes for the faces stage (one video each)
    # torch threads. One: the small models here run many short ops, and on a 2-core machine that anything else
    # keeps busy two OpenMP threads stall at each of them (measured: the temporal training 7x slower on two
    # threads at a load average of ~3). The second core still works: the generator runs 2 processes, and a
    # DataLoader worker decodes crops while the model runs. 0 leaves torch's default.
    threads: int = 1
    precision: str = "auto"  # "auto": bf16 mixed precision where the CPU runs it fast (AMX / AVX-512 BF16), else 32

    def __post_init__(self) -> None:
        self.frames = tuple(int(x) for x in self.frames)  # type: ignore[assignment]
        self.tcn_channels = tuple(int(x) for x in self.tcn_channels)  # type: ignore[assignment]
        if self.n_test < 1 or self.n_val < 1 or self.n_train < 2:
            raise MambavaError("DemoConfig: at least 2 training, 1 validation and 1 test video are needed")
        if not 0 <= self.freeze_blocks <= self.depth:
            raise MambavaError(f"DemoConfig: freeze_blocks must be in 0..{self.depth}")
        if self.tcn_channels[-1] != self.d_model:
            raise MambavaError("DemoConfig: d_model must equal the last TCN channel count")

    @classmethod
    def quick(cls, seed: int = 0, **overrides) -> "DemoConfig":
        """The CI-sized demo (about 2 minutes on 2 cores)."""
        values: dict[str, Any] = dict(seed=seed, n_train=40, n_val=8, n_test=10, frames=(240, 360), stills_train=2000,
                                      stills_val=200, pretrain_epochs=5, finetune_frames_per_video=80, epochs=8)
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def training_precision(self) -> str:
        """Lightning precision for the backbone and the temporal models."""
        if self.precision == "auto":
            from mambava.backbone import bf16_supported

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
        start, cpu = time.perf_counter(), _cpu_seconds()
        yield
        self.times[name] = time.perf_counter() - start
        self.cpu[name] = _cpu_seconds() - cpu
        self.console.print(f"      {name} done in {self.times[name]:.1f} s, {self.cpu[name]:.0f} CPU-s "
                           f"(total {time.perf_counter() - self.started:.0f} s)")


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (user + system)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _quiet_lightning() -> None:
    """Lightning's start-up chatter (accelerator lines, tips) off; its progress bars stay."""
    import logging
    import warnings

    import lightning  # noqa: F401  (its import configures its loggers: quieten them after)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*have no features and are left out.*")
    warnings.filterwarnings("ignore", message=".*is not supported by the model summary.*")


def _labels(root: Path, names: list[str]) -> dict[str, np.ndarray]:
    from mambava.affwild2 import read_va_annotation
    from mambava.synth import ground_truth_path

    return {name: read_va_annotation(ground_truth_path(root, name)) for name in names}


def run_demo(out: str | os.PathLike = "demo_out", cfg: DemoConfig | None = None, progress: bool = True) -> DemoResult:
    """Run every stage (see the module docstring) under `out`; returns the report's path and the results.
    An earlier demo in `out` is replaced; a folder holding anything else is an error."""
    cfg = cfg or DemoConfig()
    out = Path(out)
    _prepare_out(out)
    with torch_threads(cfg.threads or None):
        return _run(out, cfg, progress)


def _run(out: Path, cfg: DemoConfig, progress: bool) -> DemoResult:
    from mambava.synth import SynthConfig, StillsConfig, generate, generate_stills

    _quiet_lightning()
    stages = _Stages(9 if cfg.own_crops else 8, progress)
    data_root, stills_root = out / "data", out / "stills"
    results: dict[str, Any] = {"config": cfg.to_dict(), "machine": _machine()}

    # 1. the dataset
    synth_cfg = SynthConfig(n_train=cfg.n_train, n_val=cfg.n_val, n_test=cfg.n_test, frames=cfg.frames,
                            two_person_fraction=cfg.two_person_fraction, seed=cfg.seed)
    with stages.stage("generate", f"{cfg.n_train}+{cfg.n_val}+{cfg.n_test} synthetic videos -> {data_root}"):
        with ProgressBar("generate", enabled=progress) as bar:
            summary = generate(data_root, synth_cfg, progress=bar)
        stages.console.print(f"      {summary.describe()}")
    results["dataset"] = {"videos": len(summary.videos), "frames": summary.frames, "crops": summary.crops,
                          "invalid_labels": summary.invalid_labels,
                          "annotation_names": {k: len(v) for k, v in summary.splits.items()}}

    # 1b. our own crops of every raw video: the faces `predict` will see
    train_root = data_root
    if cfg.own_crops:
        own_root = out / "own_crops"
        with stages.stage("faces", f"MTCNN + alignment over every raw video -> {own_root / 'cropped_aligned'}"):
            results["faces"] = _own_crops(data_root, own_root, cfg, progress)
            stages.console.print(
                f"      {results['faces']['frames']:,} frames, {results['faces']['crops']:,} crops; alignment "
                f"error vs the true landmarks: ours {results['faces']['alignment']['ours']['mean_px']:.2f} px, "
                f"the generator's crops {results['faces']['alignment']['generator']['mean_px']:.2f} px (at 112 px)")
        train_root = own_root

    # 2. stills
    with stages.stage("stills", f"{cfg.stills_train}+{cfg.stills_val} single faces for pretraining -> {stills_root}"):
        with ProgressBar("stills", enabled=progress) as bar:
            stills = generate_stills(stills_root, StillsConfig(n_train=cfg.stills_train, n_val=cfg.stills_val,
                                                               seed=cfg.seed), progress=bar)
    results["stills"] = {"images": stills.frames}

    # 3. backbone
    with stages.stage("backbone", "a small ViT: pretrain on the stills, then partial-freeze fine-tuning on the "
                                  "video frames (frame-level CCC)"):
        encoder_path, backbone = _backbone(out, train_root, stills_root, cfg, progress, stages)
    results["backbone"] = backbone

    # 4. features
    with stages.stage("extract", "ViT CLS features of every crop -> feature store"):
        store = _extract(out, train_root, encoder_path, progress)

    # 5. temporal models
    runs = {}
    with stages.stage("train", f"TCN+Mamba and the frame-wise baseline ({cfg.baseline}), {cfg.epochs} epochs each"):
        for kind in ("mamba_va", cfg.baseline):
            stages.console.print(f"      training {kind}")
            runs[kind] = _train(out, data_root, store, kind, cfg, progress)
    results["runs"] = {k: {"validation_best": v["best"], "parameters": v["parameters"],
                           "train_time_s": v["train_time_s"]} for k, v in runs.items()}

    # 6. evaluation on held-out subjects
    with stages.stage("evaluate", f"whole test videos of {len(summary.splits['test'])} held-out subjects"):
        test_names = summary.splits["test"]
        labels = _labels(data_root, test_names)
        scores, predictions = _evaluate(out, store, runs, test_names, labels, cfg)
    results["test"] = scores
    results["validation"] = {k: v["best"] for k, v in runs.items()}

    # 7. predict on a held-out raw video
    with stages.stage("predict", "a held-out raw video: faces -> features -> temporal model"
                      + ("; then every held-out raw video, beside the ideal crops" if cfg.own_crops else "")):
        results["predict"] = _predict(out, data_root, encoder_path, runs["mamba_va"], cfg, progress)
        if cfg.own_crops:
            results["predict_all"] = _predict_all(out, data_root, encoder_path, runs["mamba_va"], cfg, progress)
            both = results["predict_all"]
            stages.console.print(f"      {both['videos']} held-out raw videos through predict: P_VA "
                                 f"{both['raw_video']['p_va']:.3f}; from the generator's ideal crops: "
                                 f"{both['ideal_crops']['p_va']:.3f}")

    # 8. report
    with stages.stage("report", f"{out / REPORT_FILE}"):
        figures = _figures(out, runs, predictions, labels, results, cfg)
        results["timings_s"] = {k: round(v, 1) for k, v in stages.times.items()}
        results["timings_s"]["total"] = round(time.perf_counter() - stages.started, 1)
        results["cpu_s"] = {k: round(v, 1) for k, v in stages.cpu.items()}
        report = _write_report(out, results, figures, cfg)
        with atomic_open(out / RESULTS_FILE) as handle:
            json.dump(results, handle, indent=1)
    t, b = results["test"]["mamba_va"], results["test"][cfg.baseline]
    stages.console.print(
        f"[bold]held-out test subjects[/bold]: TCN+Mamba P_VA {t['p_va']:.3f} (CCC_v {t['ccc_valence']:.3f}, "
        f"CCC_a {t['ccc_arousal']:.3f}); frame-wise P_VA {b['p_va']:.3f} (CCC_v {b['ccc_valence']:.3f}, "
        f"CCC_a {b['ccc_arousal']:.3f}); {results['timings_s']['total']:.0f} s in all")
    return DemoResult(out, report, results)


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
    out.mkdir(parents=True, exist_ok=True)
    (out / ".mambava-demo").write_text("output of `mambava demo`; the whole folder is replaced by the next run\n")


def _machine() -> dict:
    import torch

    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "processor": platform.processor() or platform.machine()}


def _backbone(out: Path, data_root: Path, stills_root: Path, cfg: DemoConfig, progress: bool, stages: _Stages):
    from mambava.backbone import ViTConfig, ViTEncoder
    from mambava.backbone.finetune import FinetuneConfig, finetune

    import torch

    torch.manual_seed(cfg.seed)
    encoder = ViTEncoder(ViTConfig(img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim,
                                   depth=cfg.depth, num_heads=cfg.num_heads, name="demo_vit"))
    common = dict(batch_size=64, num_workers=1, precision=cfg.training_precision(), accelerator="cpu", devices=1, seed=cfg.seed,
                  hflip=False, head_hidden=0, drop_path=0.0)
    stages.console.print(f"      pretraining all {cfg.depth} blocks on the stills")
    pre = finetune(stills_root, encoder, FinetuneConfig(freeze_blocks=0, epochs=cfg.pretrain_epochs,
                                                        lr=cfg.pretrain_lr, head_lr=cfg.pretrain_lr,
                                                        frames_per_video=None, **common),
                   out=out / "runs" / "backbone_pretrain", progress=progress)
    stages.console.print(f"      stills validation P_VA {pre.best_val_pva:.3f}; fine-tuning blocks "
                         f"{cfg.freeze_blocks}..{cfg.depth - 1} on the training videos' frames")
    ft = finetune(data_root, encoder, FinetuneConfig(freeze_blocks=cfg.freeze_blocks, epochs=cfg.finetune_epochs,
                                                     lr=cfg.finetune_lr, head_lr=cfg.finetune_lr,
                                                     frames_per_video=cfg.finetune_frames_per_video, **common),
                  out=out / "runs" / "backbone_finetune", progress=progress)
    stages.console.print(f"      video-frame validation P_VA {ft.best_val_pva:.3f} "
                         f"({ft.trainable_parameters:,} trainable, {ft.frozen_parameters:,} frozen parameters)")
    info = {"pretrain_val_p_va": pre.best_val_pva, "finetune_val_p_va": ft.best_val_pva,
            "pretrain_history": pre.history, "finetune_history": ft.history,
            "trainable_parameters": ft.trainable_parameters, "frozen_parameters": ft.frozen_parameters,
            "encoder": str(ft.encoder_path)}
    return ft.encoder_path, info


def _extract(out: Path, data_root: Path, encoder_path: Path, progress: bool) -> Path:
    from mambava.backbone import FeatureExtractor, load_encoder
    from mambava.extract import extract_features

    store = out / "features"
    extractor = FeatureExtractor(load_encoder(encoder_path), batch_size=256, device="cpu", precision="auto")
    extract_features(data_root, store, extractor, backbone="demo_vit", dtype="float32", workers=1, progress=progress)
    return store


def _train(out: Path, data_root: Path, store: Path, kind: str, cfg: DemoConfig, progress: bool) -> dict:
    from mambava.training import DataConfig, TrainConfig, train

    model = dict(kind=kind, input_dim=cfg.embed_dim, tcn_channels=list(cfg.tcn_channels), kernel_size=cfg.kernel_size,
                 dropout=cfg.dropout, d_model=cfg.d_model, n_layers=cfg.n_layers, d_state=cfg.d_state,
                 dt_rank="auto", head_hidden=cfg.head_hidden)
    tcfg = TrainConfig(
        model=model, data=DataConfig(features=str(store), annotations=str(data_root), window=cfg.window,
                                     stride=cfg.stride),
        batch_size=cfg.batch_size, epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs, lr=cfg.lr,
        weight_decay=cfg.weight_decay, seed=cfg.seed, accelerator="cpu", precision=cfg.training_precision(),
        progress_bar=progress,
        out_dir=str(out / "runs" / kind),
    )
    summary = train(tcfg)
    if summary is None:
        raise MambavaError(f"training {kind} was interrupted")
    return summary


def _evaluate(out: Path, store: Path, runs: dict, names: list[str], labels: dict, cfg: DemoConfig):
    from mambava.temporal_models import load_temporal_model
    from mambava.training.evaluate import evaluate_videos, write_per_video
    from mambava.features import FeatureStore

    scores, predictions = {}, {}
    fs = FeatureStore(store)
    for kind, run in runs.items():
        loaded = load_temporal_model(run["outputs"]["model"])
        result = evaluate_videos(loaded, fs, names, labels, cfg.window, cfg.stride, device="cpu")
        write_per_video(result, out / "runs" / kind / "eval_test.csv")
        scores[kind] = result.as_dict()
        predictions[kind] = _predictions(loaded, fs, names, cfg)
    return scores, predictions


def _predictions(loaded, store, names: list[str], cfg: DemoConfig) -> dict[str, np.ndarray]:
    import torch

    from mambava.windows import predict_sequence

    model = loaded.model.to("cpu").eval()
    out = {}
    for name in names:
        features, _ = store.read(name).window(0, store.read(name).n_frames)
        out[name] = predict_sequence(model, torch.from_numpy(np.ascontiguousarray(features)), cfg.window,
                                     cfg.stride).numpy()
    return out


def _predict(out: Path, data_root: Path, encoder_path: Path, run: dict, cfg: DemoConfig, progress: bool) -> dict:
    """Predict a held-out raw video through the faces stage (or its crops) and score it against its labels."""
    from mambava.affwild2 import AffWild2
    from mambava.metrics import va_scores
    from mambava.predict import Predictor, write_table
    from mambava.synth import read_meta, read_truth

    meta = read_meta(data_root)
    test = [v for v in meta["videos"] if v["split"] == "test"]
    single = [v for v in test if not v["two_person"]] or test

    def spread(v) -> float:  # chosen by how much its labels move (an informative plot), never by a score
        y = _labels(data_root, [v["persons"][0]["name"]])[v["persons"][0]["name"]]
        y = y[(y != -5).all(1)]
        return float(y.std(0).sum()) if len(y) else 0.0

    video = max(single, key=spread)
    name = video["persons"][0]["name"]
    path = data_root / video["video"]
    labels = _labels(data_root, [name])[name]
    truth = read_truth(data_root, name)
    predictor = Predictor(run["outputs"]["model"], backbone=encoder_path, window=cfg.window, stride=cfg.stride,
                          detector=_detector(), device="cpu", precision="auto", progress=progress)
    info: dict[str, Any] = {"video": str(path.relative_to(out)), "track": name}
    table = None
    if cfg.predict_faces:
        try:
            table = predictor.predict_video(path)
            info["source"] = "faces stage (MTCNN detection, tracking, alignment) on the raw video"
        except MambavaError as error:
            info["faces_error"] = str(error)
    if table is not None and video["two_person"]:
        table = table[table["track"].str.endswith(name[len(video["name"]):])]
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
        scores=scores, frames=n, frames_predicted=int(have.sum()),
        face_found=int(face.sum()), face_rendered=int(truth["present"].sum()),
        face_found_where_rendered=float((face & truth["present"]).sum() / max(truth["present"].sum(), 1)),
        files={k: str(Path(v).relative_to(out)) for k, v in written.items()},
    )
    # the same video from its crops and stored features (the Aff-Wild2 path), for comparison
    from mambava.features import FeatureStore

    record = FeatureStore(out / "features").read(name)
    features, mask = record.window(0, record.n_frames)
    from_crops = predictor.predict_features(features, mask)[:n]
    info["scores_from_crops"] = va_scores(from_crops, labels[: len(from_crops)])
    info["prediction"] = pred.tolist() if n <= 2000 else None
    return info


def _own_crops(data_root: Path, own_root: Path, cfg: DemoConfig, progress: bool) -> dict:
    """`mambava faces --dataset` over the generated raw videos (the demo's relaxed MTCNN), and how far its crops
    are from ideal (the generator keeps the true landmarks)."""
    from mambava.faces.dataset import extract_dataset_faces, synth_alignment_error

    start, cpu = time.perf_counter(), _cpu_seconds()
    with ProgressBar("faces", enabled=progress) as bar:
        result = extract_dataset_faces(
            data_root, own_root, detector="mtcnn", detector_kwargs=dict(DETECTOR_KWARGS, num_threads=1),
            workers=cfg.face_workers, progress=(lambda done, total, item: bar(done, total, item.video)) if bar else None)
    if result.failed:
        raise MambavaError(result.failed[0].error)
    frames = sum(v.frames for v in result.videos)
    return {
        "videos": len(result.videos), "frames": frames, "crops": sum(sum(v.tracks.values()) for v in result.videos),
        "seconds": round(time.perf_counter() - start, 1), "cpu_s": round(_cpu_seconds() - cpu, 1),
        "unmatched": {v.video: v.unmatched for v in result.videos if v.unmatched},
        "alignment": synth_alignment_error(data_root, result.crops_dir),
    }


def _predict_all(out: Path, data_root: Path, encoder_path: Path, run: dict, cfg: DemoConfig, progress: bool) -> dict:
    """Every held-out raw video through `predict` (faces stage, backbone, temporal model), and the same videos
    from the generator's ideal crops (their features, the same model); P_VA of each over the frames both
    predict and the labels cover, all videos concatenated."""
    from mambava.backbone import FeatureExtractor, load_encoder
    from mambava.extract import extract_features
    from mambava.features import FeatureStore
    from mambava.metrics import va_scores
    from mambava.predict import Predictor
    from mambava.synth import read_meta

    meta = read_meta(data_root)
    test = [v for v in meta["videos"] if v["split"] == "test"]
    names = [p["name"] for v in test for p in v["persons"]]
    ideal_store = out / "features_ideal_crops"
    extractor = FeatureExtractor(load_encoder(encoder_path), batch_size=256, device="cpu", precision="auto")
    extract_features(data_root, ideal_store, extractor, backbone="demo_vit", dtype="float32", workers=1,
                     names=names, progress=False)
    store = FeatureStore(ideal_store)
    predictor = Predictor(run["outputs"]["model"], backbone=encoder_path, window=cfg.window, stride=cfg.stride,
                          detector=_detector(), device="cpu", precision="auto", progress=progress)
    raw, ideal, truth, missing = [], [], [], []
    for video in test:
        table = predictor.predict_video(data_root / video["video"])
        for person in video["persons"]:
            name = person["name"]
            labels = _labels(data_root, [name])[name]
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
    return {"videos": len(test), "tracks": len(names), "frames": int(sum(len(t) for t in truth)),
            "tracks_without_face": missing, "raw_video": raw_scores, "ideal_crops": ideal_scores,
            "gap_p_va": raw_scores["p_va"] - ideal_scores["p_va"]}


DETECTOR_KWARGS = dict(thresholds=(0.5, 0.5, 0.5), min_score=0.5)


def _detector():
    """MTCNN as the faces stage uses it, with thresholds relaxed for the drawn faces (trained on photographs,
    its stages score cartoon faces lower)."""
    from mambava.faces import get_detector

    return get_detector("mtcnn", **DETECTOR_KWARGS)


def _table_from_crops(predictor, dataset, name: str):
    """The per-frame table of a video from its Aff-Wild2 crops (the path Aff-Wild2 users take)."""
    import pandas as pd

    from mambava.affwild2 import read_crop

    frames = dataset.crop_frames(name)
    n = dataset.n_frames(name)
    crops = np.stack([read_crop(dataset.crop_path(name, f)) for f in frames])
    feats = np.zeros((n, predictor.extractor.dim), np.float32)
    present = np.zeros(n, bool)
    feats[np.array(frames) - 1] = predictor.extractor.features(crops)
    present[np.array(frames) - 1] = True
    va = predictor.predict_features(feats, present)
    return pd.DataFrame({"video": name, "track": name, "frame": np.arange(n), "time": np.arange(n) / 30.0,
                         "valence": va[:, 0], "arousal": va[:, 1], "face": present.astype(np.int8),
                         "x1": np.nan, "y1": np.nan, "x2": np.nan, "y2": np.nan})


# ---------------------------------------------------------------------------------------------------------
# Report


def _figures(out: Path, runs: dict, predictions: dict, labels: dict, results: dict, cfg: DemoConfig) -> dict:
    from mambava.training import read_metrics

    figures = {}
    names = {"mamba_va": "TCN+Mamba", cfg.baseline: f"frame-wise ({cfg.baseline})"}
    colours = {"mamba_va": "#d62728", cfg.baseline: "#1f77b4"}

    # training curves: loss and validation P_VA per epoch, both models
    fig = new_figure(10, 3.6)
    ax_loss, ax_val = fig.subplots(1, 2)
    for kind, run in runs.items():
        rows = read_metrics(run["outputs"]["metrics"])
        epochs = [r["epoch"] for r in rows]
        loss_key = next((k for k in ("train_loss", "train/loss_epoch", "train/loss") if rows and k in rows[0]), None)
        if loss_key:
            ax_loss.plot(epochs, [r[loss_key] for r in rows], color=colours[kind], label=names[kind])
        ax_val.plot([r["epoch"] for r in rows if r.get("val_p_va") is not None],
                    [r["val_p_va"] for r in rows if r.get("val_p_va") is not None], "o-", color=colours[kind],
                    label=names[kind])
    ax_loss.set(title="training loss (1-CCC_v)+(1-CCC_a)", xlabel="epoch")
    ax_val.set(title="validation P_VA", xlabel="epoch")
    for ax in (ax_loss, ax_val):
        ax.grid(alpha=0.3)
        ax.legend()
    figures["curves"] = save_figure(fig, out / "figures" / "curves.png")

    # predicted vs true on held-out test videos (up to 3)
    shown = list(labels)[:3]
    fig = new_figure(11, 2.4 * len(shown))
    axes = fig.subplots(len(shown), 2, squeeze=False)
    for row, name in enumerate(shown):
        y = labels[name]
        t = np.arange(len(y)) / 30.0
        for d, dim in enumerate(("valence", "arousal")):
            ax = axes[row][d]
            truth = np.where(y[:, d] == -5, np.nan, y[:, d])
            ax.plot(t, truth, color="black", lw=2, label="true (rater)")
            for kind in (cfg.baseline, "mamba_va"):
                p = predictions[kind][name][: len(y), d]
                ax.plot(t[: len(p)], p, color=colours[kind], lw=1.2, alpha=0.9, label=names[kind])
            ax.set_ylim(-1, 1)
            ax.grid(alpha=0.3)
            ax.set_title(f"{name}: {dim}", fontsize=9)
            if row == len(shown) - 1:
                ax.set_xlabel("time (s)")
    axes[0][0].legend(fontsize=8, loc="lower left")
    figures["test_predictions"] = save_figure(fig, out / "figures" / "test_predictions.png")

    # the predicted held-out raw video
    pred = results["predict"].get("prediction")
    name = results["predict"]["track"]
    if pred is not None:
        from mambava.synth import read_truth

        pred = np.asarray(pred, dtype=float)
        y = _labels(out / "data", [name])[name]
        truth = read_truth(out / "data", name)
        t = np.arange(len(y)) / 30.0
        fig = new_figure(11, 2.6)
        axes = fig.subplots(1, 2)
        for d, dim in enumerate(("valence", "arousal")):
            ax = axes[d]
            ax.plot(t, np.where(y[:, d] == -5, np.nan, y[:, d]), color="black", lw=2, label="true (rater)")
            ax.plot(t, pred[:, d], color=colours["mamba_va"], lw=1.2, label="predicted (TCN+Mamba)")
            gaps = ~truth["present"]
            ax.fill_between(t, -1, 1, where=gaps, color="grey", alpha=0.2, label="no face")
            ax.set(ylim=(-1, 1), title=f"{name}: {dim}", xlabel="time (s)")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8, loc="lower left")
        figures["predict"] = save_figure(fig, out / "figures" / "predict.png")
    return figures


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def _write_report(out: Path, results: dict, figures: dict, cfg: DemoConfig) -> Path:
    """OUT/report.md: the test table and figures, the prediction on the held-out raw video, what ran."""
    rel = {k: Path(p).relative_to(out).as_posix() for k, p in figures.items()}
    lines = [*_report_results(results, rel, cfg), *_report_predict(results["predict"], rel),
             *_report_own_crops(results), *_report_what_ran(results, cfg)]
    path = out / REPORT_FILE
    with atomic_open(path) as handle:
        handle.write("\n".join(lines))
    return path


def _report_results(results: dict, rel: dict, cfg: DemoConfig) -> list[str]:
    """The title, the held-out test table (frame-wise vs TCN+Mamba), the training curves and test predictions."""
    t = results["test"]
    base = cfg.baseline
    v = results["validation"]
    times = results["timings_s"]
    return [
        "# mambava demo report",
        "",
        f"Every stage of the pipeline on a generated face-video dataset (seed {cfg.seed}), on CPU "
        f"({results['machine']['cpus']} cores, torch {results['machine']['torch']}), in "
        f"{times['total']:.0f} s.",
        "",
        f"## Held-out test subjects ({t['mamba_va']['videos']} videos, {t['mamba_va']['frames']:,} labelled frames)",
        "",
        "| model | CCC_v | CCC_a | P_VA | validation P_VA |",
        "|---|---|---|---|---|",
        f"| frame-wise ({base}) | {_fmt(t[base]['ccc_valence'])} | {_fmt(t[base]['ccc_arousal'])} | "
        f"{_fmt(t[base]['p_va'])} | {_fmt((v[base] or {}).get('p_va'))} |",
        f"| TCN+Mamba (Mamba-VA) | {_fmt(t['mamba_va']['ccc_valence'])} | {_fmt(t['mamba_va']['ccc_arousal'])} | "
        f"**{_fmt(t['mamba_va']['p_va'])}** | {_fmt((v['mamba_va'] or {}).get('p_va'))} |",
        "",
        f"Temporal modelling gains **{t['mamba_va']['p_va'] - t[base]['p_va']:+.3f} P_VA** over frame-by-frame "
        "prediction on the same features. CCC over all valid frames of all test videos concatenated; test labels "
        "come from `data/synth_ground_truth/` (the layout keeps them out of `VA_Estimation_Challenge/`, as ABAW "
        "does); the validation subjects chose each model's best epoch.",
        "",
        "## Training curves",
        "",
        f"![training curves]({rel['curves']})",
        "",
        "## Predicted vs true valence/arousal on held-out test videos",
        "",
        f"![test predictions]({rel['test_predictions']})",
        "",
    ]


def _report_predict(pr: dict, rel: dict) -> list[str]:
    """The prediction on the held-out raw video: faces found, scores, the crop-path comparison, its plot."""
    lines = [
        "## Prediction on a held-out raw video",
        "",
        f"`{pr['video']}` ({pr['frames']} frames) through {pr.get('source', '?')}: a face found in "
        f"{pr['face_found']} frames (drawn in {pr['face_rendered']}; found in "
        f"{100 * pr['face_found_where_rendered']:.0f}% of those), CCC_v {pr['scores']['ccc_valence']:.3f}, "
        f"CCC_a {pr['scores']['ccc_arousal']:.3f}, P_VA {pr['scores']['p_va']:.3f}; from the same video's "
        f"`cropped_aligned/` crops instead: P_VA {pr['scores_from_crops']['p_va']:.3f} (the generator aligns "
        "with the true landmarks, the faces stage with MTCNN's estimates). The video is the single-person test "
        f"video whose labels move most. Table and plots: `{pr['files'].get('csv', '')}`.",
        "",
    ]
    if "predict" in rel:
        lines += [f"![prediction]({rel['predict']})", ""]
    return lines


def _report_own_crops(results: dict) -> list[str]:
    """With `own_crops`: the alignment error of our crops and P_VA of every held-out raw video both ways."""
    lines: list[str] = []
    if "faces" in results:
        fa, al = results["faces"], results["faces"]["alignment"]
        pa = results["predict_all"]
        lines += [
            "## Trained on our own crops",
            "",
            f"Backbone, features and temporal models were trained on crops made by the faces stage from the raw "
            f"videos (`mambava faces --dataset`: {fa['frames']:,} frames, {fa['crops']:,} crops, "
            f"{fa['seconds']:.0f} s, {fa['cpu_s']:.0f} CPU-s), the crops `predict` makes. Their alignment error "
            f"against the generator's true landmarks: mean {al['ours']['mean_px']:.2f} px at 112 px "
            f"({al['ours']['mean_eye_pct']:.1f}% of the eye distance; median {al['ours']['median_px']:.2f} px, mean "
            f"shift {al['ours']['mean_offset_px']}), against {al['generator']['mean_px']:.2f} px for the "
            "generator's own crops.",
            "",
            "| held-out raw videos | CCC_v | CCC_a | P_VA |",
            "|---|---|---|---|",
            f"| through `predict` (faces stage) | {_fmt(pa['raw_video']['ccc_valence'])} | "
            f"{_fmt(pa['raw_video']['ccc_arousal'])} | **{_fmt(pa['raw_video']['p_va'])}** |",
            f"| the generator's ideal crops | {_fmt(pa['ideal_crops']['ccc_valence'])} | "
            f"{_fmt(pa['ideal_crops']['ccc_arousal'])} | {_fmt(pa['ideal_crops']['p_va'])} |",
            "",
            f"All {pa['videos']} held-out videos ({pa['tracks']} people, {pa['frames']:,} labelled frames that both "
            f"paths predict), the same model; the raw-video path is {pa['gap_p_va']:+.3f} P_VA from the ideal-crop "
            "path.",
            "",
        ]
    return lines


def _report_what_ran(results: dict, cfg: DemoConfig) -> list[str]:
    """Each stage with its sizes, and the stage times."""
    base = cfg.baseline
    ds = results["dataset"]
    bb = results["backbone"]
    times = results["timings_s"]
    return [
        "## What ran",
        "",
        f"- **generate**: {ds['videos']} videos ({ds['annotation_names']['train']} train / "
        f"{ds['annotation_names']['validation']} validation / {ds['annotation_names']['test']} test annotation "
        f"names, two-person videos count twice), {ds['frames']:,} frames, {ds['crops']:,} crops, "
        f"{ds['invalid_labels']:,} frames labelled -5, in the Aff-Wild2 layout under `data/`.",
        f"- **stills**: {results['stills']['images']:,} single faces of other identities with their VA "
        "(`stills/`), the stand-in for the still-image data real backbones are pretrained on.",
        f"- **backbone**: ViT {cfg.img_size} px input, {cfg.patch_size} px patches, {cfg.embed_dim}-d, "
        f"{cfg.depth} blocks; trained on the stills (validation P_VA {_fmt(bb['pretrain_val_p_va'])}), then the "
        f"paper's partial freezing: patch embedding and blocks 0..{cfg.freeze_blocks - 1} frozen, blocks "
        f"{cfg.freeze_blocks}..{cfg.depth - 1} fine-tuned on the training videos' frames with the CCC loss "
        f"(frame-level validation P_VA {_fmt(bb['finetune_val_p_va'])}; {bb['trainable_parameters']:,} trainable, "
        f"{bb['frozen_parameters']:,} frozen parameters).",
        f"- **extract**: {cfg.embed_dim}-d CLS features of every crop into `features/` (frames without a crop "
        "forward-filled and masked).",
        f"- **train**: TCN+Mamba with the paper's structure at reduced widths (causal TCN channels "
        f"{list(cfg.tcn_channels)}, kernel {cfg.kernel_size}; {cfg.n_layers} Mamba layers, d_model {cfg.d_model}, "
        f"d_state {cfg.d_state}; head {cfg.head_hidden}) and the frame-wise `{base}` on the same features; "
        f"windows of {cfg.window} frames every {cfg.stride}, {cfg.epochs} epochs, batch {cfg.batch_size}, AdamW lr "
        f"{cfg.lr:g}, CCC loss; parameters: "
        + ", ".join(f"{k} {r['parameters']:,}" for k, r in results["runs"].items()) + ".",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {k} | {s:.1f} |" for k, s in times.items()],
        "",
        "Numbers are in `results.json`; runs (checkpoints, metrics.csv, curves.png, summary.json) in `runs/`.",
        "",
    ]
