"""`mambava extract` (face crops -> feature store), `mambava finetune-backbone` (partial-freeze ViT on VA) and
`mambava distill` (a small student backbone reproducing a teacher's features)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer

from mambava.cli.audio import FEATURES_HELP as AUDIO_FEATURES_HELP
from mambava.cli.audio import SPEECH_MODEL_HELP, extract_audio_command
from mambava.cli.options import (
    backbone_workers_option,
    engine_option,
    lightning_precision,
    precision_option,
    ray_address_option,
    ray_options,
)
from mambava.core.errors import MambavaError
from mambava.core.runtime import resolve_device

CHECKPOINT_HELP = (
    "Local ViT checkpoint: facebookresearch/mae .pth, timm weights (.safetensors/.pth or hub "
    "folder), Hugging Face ViTMAE folder, or a mambava encoder.safetensors. Nothing is downloaded."
)
ARCH_HELP = (
    "ViT size (vit_tiny_patch16, vit_small_patch16, vit_base_patch16, vit_large_patch16, "
    "vit_huge_patch14; vit_tiny_patch16_112, vit_small_patch16_112 at 112 px); "
    "default: inferred from the checkpoint."
)


def _encoder(checkpoint: Optional[Path], arch: Optional[str], random_init: bool, seed: int):
    from mambava.backbone import build_encoder

    if checkpoint is None and not random_init:
        raise MambavaError(
            "pass --checkpoint PATH (a local MAE/timm/Hugging Face ViT; nothing is downloaded), "
            "or --random-init --arch NAME for a randomly initialised ViT (tests and demos only)"
        )
    return build_encoder(checkpoint, arch, None if checkpoint is not None else seed)


def _expression_weights(checkpoint) -> tuple[Path, str, dict]:
    """(weights file, backbone name, store extras) of `extract --features expression`: the shipped expression net
    (or the mambava.expression file of --checkpoint)."""
    from mambava.core.checkpoint import read_header
    from mambava.faces.expression import EXPRESSION_WEIGHTS

    weights = checkpoint or EXPRESSION_WEIGHTS
    extra = {"checkpoint": str(weights), "weights_sha256": read_header(weights).get("weights_sha256")}
    return weights, "expression:fer2013-mini-xception", extra


def _expression_extractor(checkpoint, batch_size: int, device):
    """(extractor, backbone name, store extras) of `extract --features expression` (see `_expression_weights`)."""
    from mambava.faces.expression import ExpressionRecognizer

    weights, backbone, extra = _expression_weights(checkpoint)
    return ExpressionRecognizer(weights, batch_size=batch_size, device=device), backbone, extra


def extract_command(
    source: Path = typer.Argument(
        ...,
        help="Aff-Wild2 root, its cropped_aligned/ folder, or a crop tree "
        "<dir>/<video>/<NNNNN>.jpg (e.g. the faces stage's crops); with "
        "--audio: an Aff-Wild2 root (videos/), a folder of videos or a video.",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Feature store folder (one entry per video)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help=CHECKPOINT_HELP),
    arch: Optional[str] = typer.Option(None, "--arch", help=ARCH_HELP),
    features: str = typer.Option(
        "vit",
        "--features",
        help="vit (the backbone of --checkpoint) or expression (the FER2013 expression net shipped with mambava: "
        "its penultimate activations and logits, 135 per frame; needs no checkpoint).",
    ),
    random_init: bool = typer.Option(False, "--random-init", help="No checkpoint: random weights (demo/tests)."),
    seed: int = typer.Option(0, "--seed", help="Seed for --random-init."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1),
    workers: Optional[int] = typer.Option(
        None,
        "--workers",
        "-j",
        min=0,
        help="Decode/resize worker processes (default: by device and cores); "
        "with --audio: feature processes (default 0: this one).",
    ),
    device: str = typer.Option(
        "auto", "--device", help="auto (cuda:LOCAL_RANK if available, else cpu), cpu, cuda:0..."
    ),
    precision: str = precision_option("auto"),
    dtype: str = typer.Option("float16", "--dtype", help="Stored dtype: float16 or float32."),
    fps: Optional[float] = typer.Option(
        None, "--fps", help="Frame rate recorded per video (default: raw video's, else 30)."
    ),
    video: Optional[List[str]] = typer.Option(None, "--video", help="Only these videos (repeatable)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo videos already in the store."),
    audio: bool = typer.Option(
        False, "--audio", help="Audio features of the raw videos' sound instead (docs/audio.md)."
    ),
    audio_features: str = typer.Option("egemaps,logmel", "--audio-features", help=AUDIO_FEATURES_HELP),
    speech_model: Optional[Path] = typer.Option(None, "--speech-model", help=SPEECH_MODEL_HELP),
    speech_layer: Optional[int] = typer.Option(
        None, "--speech-layer", help="With --speech-model: hidden layer (0: CNN features; default: the last)."
    ),
    engine: str = engine_option(),
    ray_address: Optional[str] = ray_address_option(),
    backbone_workers: Optional[int] = backbone_workers_option(),
) -> None:
    """Run the ViT over face crops and store each video's CLS features (T, D) with its face mask (with --features
    expression: the expression net's 135 features instead, for a Mamba-VA on real faces); with --audio,
    store each video's sound features on its frame grid with a sound mask.

    Resumable (complete videos are skipped). Under torchrun, rank r takes videos[r::world_size]:
    `torchrun --nproc-per-node 8 -m mambava extract ROOT -o STORE -c CKPT`. With --engine ray, one Ray task per
    video and the backbone in an actor pool (docs/scaling.md)."""
    ray = ray_options(engine, ray_address, backbone_workers)
    if ray is not None and workers is not None:
        raise MambavaError("--workers: the local engine's processes; --engine ray runs one task per video")
    if ray is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise MambavaError("extract --engine ray: run it once, not under torchrun (Ray places the work itself)")
    if audio:
        if backbone_workers is not None:
            raise MambavaError("--backbone-workers: not with --audio (there is no backbone)")
        return extract_audio_command(
            source, out, audio_features, speech_model, speech_layer, dtype, video, overwrite, device, workers, ray
        )
    if features not in ("vit", "expression"):
        raise MambavaError(f"--features {features!r}: expected vit or expression")
    if ray is not None:
        return _extract_ray(
            source,
            out,
            features,
            checkpoint,
            arch,
            random_init,
            seed,
            batch_size,
            device,
            precision,
            dtype,
            fps,
            video,
            overwrite,
            ray,
        )
    import torch
    import torch.distributed as dist

    from mambava.backbone import FeatureExtractor
    from mambava.backbone.extract import extract_features

    dev = resolve_device(device)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available()
    if distributed and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    try:
        if features == "expression":
            extractor, backbone, extra = _expression_extractor(checkpoint, batch_size, dev)
        else:
            encoder = _encoder(checkpoint, arch, random_init, seed)
            extractor = FeatureExtractor(encoder, batch_size=batch_size, device=dev, precision=precision)
            cfg = encoder.config
            backbone = f"{cfg.name}:{checkpoint.name if checkpoint else f'random-seed{seed}'}"
            extra = {
                "checkpoint": str(checkpoint) if checkpoint else None,
                "checkpoint_format": encoder.load_report.format if encoder.load_report else "random",
            }
        summary = extract_features(
            source,
            out,
            extractor,
            backbone=backbone,
            dtype=dtype,
            workers=workers,
            fps=fps,
            names=video or None,
            overwrite=overwrite,
            extra=extra,
            on_error=lambda message: typer.secho(f"error: {message}", fg=typer.colors.RED, err=True),
        )
        where = f"rank {summary.rank}/{summary.world_size}: " if summary.world_size > 1 else ""
        typer.echo(
            f"{where}{len(summary.extracted)} video(s) extracted ({summary.frames} crops, "
            f"{summary.frames_per_second:.1f} frames/s, {extractor.precision} on {dev}), "
            f"{len(summary.skipped)} already in {out}; features (T, {extractor.dim}) {dtype}"
        )
        if distributed:
            dist.barrier()
        if summary.failed:  # the batch went on past them (a line each above); the exit code says so
            typer.secho(
                f"{where}{len(summary.failed)} of {len(summary.videos)} videos failed", fg=typer.colors.RED, err=True
            )
            raise typer.Exit(2)
    finally:
        if distributed and dist.is_initialized():
            dist.destroy_process_group()


def _extract_ray(
    source,
    out,
    features,
    checkpoint,
    arch,
    random_init,
    seed,
    batch_size,
    device,
    precision,
    dtype,
    fps,
    video,
    overwrite,
    ray,
) -> None:
    """`extract` with --engine ray: the encoder built here (as the local engine builds it) goes to the actors;
    with --features expression, each actor loads the expression net's weights file."""
    from mambava.distributed import EncoderSource, extract_features_ray

    if features == "expression":
        from mambava.faces.expression import FEATURE_NAMES

        weights, backbone, extra = _expression_weights(checkpoint)
        encoder, source_weights = None, EncoderSource(expression=str(Path(weights).absolute()))
        dim = len(FEATURE_NAMES)
    else:
        encoder = _encoder(checkpoint, arch, random_init, seed)
        cfg = encoder.config
        # each actor builds the same encoder: from the checkpoint (on the shared filesystem), or the seed
        source_weights = (
            EncoderSource(str(checkpoint.absolute()), arch) if checkpoint else EncoderSource(arch=arch, seed=seed)
        )
        backbone, dim = f"{cfg.name}:{checkpoint.name if checkpoint else f'random-seed{seed}'}", cfg.feature_dim
        extra = {
            "checkpoint": str(checkpoint) if checkpoint else None,
            "checkpoint_format": encoder.load_report.format if encoder.load_report else "random",
        }
    summary, run = extract_features_ray(
        source,
        out,
        encoder,
        weights=source_weights,
        batch_size=batch_size,
        device=device,
        precision=precision,
        backbone=backbone,
        dtype=dtype,
        fps=fps,
        names=video or None,
        overwrite=overwrite,
        extra=extra,
        on_error=lambda message: typer.secho(f"error: {message}", fg=typer.colors.RED, err=True),
        options=ray,
    )
    typer.echo(
        f"{len(summary.extracted)} video(s) extracted ({summary.frames} crops, {summary.frames_per_second:.1f} "
        f"frames/s), {len(summary.skipped)} already in {out}; features (T, {dim}) {dtype}"
    )
    typer.echo(run.describe(), err=True)
    if summary.failed:
        typer.secho(f"{len(summary.failed)} of {len(summary.videos)} videos failed", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)


def finetune_command(
    root: Path = typer.Argument(..., help="Aff-Wild2 root (VA_Estimation_Challenge/ + cropped_aligned/)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help=CHECKPOINT_HELP),
    arch: Optional[str] = typer.Option(None, "--arch", help=ARCH_HELP),
    random_init: bool = typer.Option(False, "--random-init", help="No checkpoint: random weights (demo/tests)."),
    out: Path = typer.Option(Path("runs/finetune_backbone"), "--out", "-o", help="Output folder."),
    freeze_blocks: int = typer.Option(16, "--freeze-blocks", help="Blocks frozen from the bottom (paper: 16 of 24)."),
    epochs: int = typer.Option(5, "--epochs"),
    max_steps: int = typer.Option(-1, "--max-steps", help="Stop after this many steps (-1: all epochs)."),
    lr: float = typer.Option(1e-4, "--lr", help="Peak learning rate of the trained blocks."),
    head_lr: float = typer.Option(1e-3, "--head-lr"),
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1),
    frames_per_video: int = typer.Option(512, "--frames-per-video", help="Evenly spaced frames per video (0: all)."),
    precision: str = precision_option("bf16", lightning=True),
    accelerator: str = typer.Option("auto", "--accelerator"),
    devices: str = typer.Option("auto", "--devices", help="Lightning devices (auto, 1, 8, ...)."),
    strategy: str = typer.Option("auto", "--strategy", help="Lightning strategy (auto, ddp, ...)."),
    workers: int = typer.Option(4, "--workers", "-j", min=0),
    seed: int = typer.Option(0, "--seed"),
    align_jitter: str = typer.Option(
        "0,0,0",
        "--align-jitter",
        help="Random shift (px at 112), log-scale and "
        "rotation (degrees) ranges for training crops, e.g. 1,0.02,1: features that "
        "do not move with an aligner's per-face error (docs/faces.md, Crops for training).",
    ),
    extra_crops: List[Path] = typer.Option(
        [],
        "--extra-crops",
        help="Another crop root of the same "
        "videos (e.g. `mambava faces --dataset` output), labelled "
        "from ROOT: training frames come from both. Repeatable.",
    ),
) -> None:
    """Fine-tune the top blocks of the ViT on frame-level valence/arousal (CCC loss), the patch embedding and
    the first --freeze-blocks blocks frozen; writes OUT/encoder.safetensors for `mambava extract -c`."""
    from mambava.backbone.finetune import FinetuneConfig, finetune

    jitter = _jitter(align_jitter)
    encoder = _encoder(checkpoint, arch, random_init, seed)
    config = FinetuneConfig(
        freeze_blocks=freeze_blocks,
        epochs=epochs,
        max_steps=max_steps,
        lr=lr,
        head_lr=head_lr,
        batch_size=batch_size,
        frames_per_video=frames_per_video or None,
        precision=lightning_precision(precision, accelerator),
        accelerator=accelerator,
        devices=int(devices) if devices.isdigit() else devices,
        strategy=strategy,
        num_workers=workers,
        seed=seed,
        align_jitter=jitter,
        extra_crops=tuple(str(p) for p in extra_crops),
    )
    result = finetune(root, encoder, config, out=out)
    if not result.is_global_zero:
        return
    best = f"best validation P_VA {result.best_val_pva:.4f}" if result.best_val_pva is not None else "no validation set"
    typer.echo(
        f"{result.encoder_path} ({best}; {result.trainable_parameters:,} trained / "
        f"{result.frozen_parameters:,} frozen parameters)\n"
        f"next: mambava extract {root} -o FEATURES -c {result.encoder_path}"
    )


def _jitter(text: str) -> tuple[float, float, float]:
    """--align-jitter SHIFT,SCALE,ANGLE -> the three ranges (checked by AlignJitter)."""
    from mambava.backbone.augment import AlignJitter

    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise MambavaError(f"--align-jitter takes SHIFT,SCALE,ANGLE (three numbers), got {text!r}")
    jitter = AlignJitter(*values)
    return jitter.shift, jitter.scale, jitter.angle


def pretrain_command(
    source: Path = typer.Argument(..., help="Crops: Aff-Wild2 root, cropped_aligned/, or <dir>/<video>/<NNNNN>.jpg."),
    checkpoint: Optional[Path] = typer.Option(
        None, "--checkpoint", "-c", help=CHECKPOINT_HELP + " Its MAE decoder, if it has one, is used too."
    ),
    arch: Optional[str] = typer.Option(None, "--arch", help=ARCH_HELP),
    random_init: bool = typer.Option(False, "--random-init", help="No checkpoint: pretrain from scratch."),
    out: Path = typer.Option(Path("runs/pretrain_mae"), "--out", "-o", help="Output folder."),
    mask_ratio: float = typer.Option(0.75, "--mask-ratio"),
    decoder_dim: int = typer.Option(512, "--decoder-dim", help="MAE decoder width (MAE: 512)."),
    decoder_depth: int = typer.Option(8, "--decoder-depth", help="MAE decoder blocks (MAE: 8)."),
    decoder_heads: int = typer.Option(16, "--decoder-heads"),
    epochs: int = typer.Option(5, "--epochs"),
    max_steps: int = typer.Option(-1, "--max-steps", help="Stop after this many steps (-1: all epochs)."),
    lr: float = typer.Option(1.5e-4, "--lr"),
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1),
    frames_per_video: int = typer.Option(512, "--frames-per-video", help="Evenly spaced frames per video (0: all)."),
    precision: str = precision_option("bf16", lightning=True),
    accelerator: str = typer.Option("auto", "--accelerator"),
    devices: str = typer.Option("auto", "--devices"),
    strategy: str = typer.Option("auto", "--strategy"),
    workers: int = typer.Option(4, "--workers", "-j", min=0),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Optional: adapt MAE to faces with its masked-reconstruction objective on face crops; writes
    OUT/mae_pretrain.pth (facebookresearch/mae format) for `finetune-backbone -c` or `extract -c`."""
    from mambava.backbone.finetune import PretrainConfig, pretrain_mae

    encoder = _encoder(checkpoint, arch, random_init, seed)
    config = PretrainConfig(
        mask_ratio=mask_ratio,
        decoder_dim=decoder_dim,
        decoder_depth=decoder_depth,
        decoder_heads=decoder_heads,
        epochs=epochs,
        max_steps=max_steps,
        lr=lr,
        batch_size=batch_size,
        frames_per_video=frames_per_video or None,
        precision=lightning_precision(precision, accelerator),
        accelerator=accelerator,
        devices=int(devices) if devices.isdigit() else devices,
        strategy=strategy,
        num_workers=workers,
        seed=seed,
    )
    result = pretrain_mae(source, encoder, config, out=out, decoder_from=checkpoint)
    if not result.is_global_zero:
        return
    losses = ", ".join(f"{x:.4f}" for x in result.epoch_losses)
    typer.echo(
        f"{result.checkpoint} ({result.frames} crops; loss per epoch: {losses})\n"
        f"next: mambava finetune-backbone ROOT -c {result.checkpoint}"
    )


def distill_command(
    source: Path = typer.Argument(
        ...,
        help="Face crops (Aff-Wild2 root, cropped_aligned/, or a faces output "
        "<dir>/<video>/<NNNNN>.jpg), or a video / folder of videos (run "
        "through the faces stage into OUT/crops/ first).",
    ),
    teacher: Optional[Path] = typer.Option(None, "--teacher", "-t", help="The teacher backbone: " + CHECKPOINT_HELP),
    out: Path = typer.Option(Path("runs/distill"), "--out", "-o", help="Output folder (OUT/student.safetensors)."),
    student: str = typer.Option(
        "vit_tiny_patch16_112",
        "--student",
        help="Student preset (vit_tiny_patch16, "
        "vit_small_patch16, at 224 px, or their _112 presets at 112 px), or `teacher` "
        "for the teacher's own shape; changed by the options below.",
    ),
    img_size: Optional[int] = typer.Option(None, "--img-size", help="Student input size (a multiple of its patch)."),
    embed_dim: Optional[int] = typer.Option(None, "--embed-dim", help="Student width."),
    depth: Optional[int] = typer.Option(None, "--depth", help="Student blocks."),
    heads: Optional[int] = typer.Option(None, "--heads", help="Student attention heads (divides --embed-dim)."),
    model: Optional[Path] = typer.Option(
        None,
        "--model",
        "-m",
        help="A temporal model trained on the teacher's "
        "features: P_VA on the held-out videos with teacher vs student features "
        "(needs an Aff-Wild2 root for the labels).",
    ),
    teacher_features: Optional[Path] = typer.Option(
        None,
        "--teacher-features",
        help="A feature store the teacher "
        "filled (`extract`): its features are the targets, the teacher "
        "is not run over the training crops.",
    ),
    finetune_temporal: int = typer.Option(
        0,
        "--finetune-temporal",
        min=0,
        help="With --model: fine-tune it this "
        "many epochs on the student's features of the Train_Set videos, and score "
        "it beside the unchanged model (OUT/temporal_student/).",
    ),
    finetune_lr: float = typer.Option(1e-4, "--finetune-lr", help="Learning rate of --finetune-temporal."),
    heldout_every: int = typer.Option(
        10,
        "--heldout-every",
        min=2,
        help="Without an Aff-Wild2 Validation_Set: every N-th video (by name) is held out.",
    ),
    epochs: int = typer.Option(10, "--epochs", min=1),
    lr: float = typer.Option(1e-3, "--lr"),
    batch_size: int = typer.Option(64, "--batch-size", "-b", min=1),
    frames_per_video: int = typer.Option(256, "--frames-per-video", help="Evenly spaced crops per video (0: all)."),
    adapter: str = typer.Option(
        "lstsq",
        "--adapter",
        help="lstsq: refit the linear adapter in closed form after "
        "training; joint: keep the one trained with the student.",
    ),
    mse_weight: float = typer.Option(
        1.0, "--mse-weight", help="Weight of the (variance-normalised) MSE beside the cosine loss."
    ),
    precision: str = precision_option("auto", lightning=True),
    accelerator: str = typer.Option("auto", "--accelerator"),
    workers: int = typer.Option(4, "--workers", "-j", min=0),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Distil a backbone into a small student ViT (cosine + MSE feature regression, then a linear adapter onto
    the teacher's feature space); OUT/student.safetensors is a backbone for `extract -c`, `predict --backbone`
    and `stream --backbone`, and a temporal model trained on the teacher's features runs on it unchanged."""
    from mambava.backbone.distill import DistillConfig
    from mambava.training.distill import run_distill

    if teacher is None:
        raise MambavaError("distill: pass --teacher CHECKPOINT (the backbone whose features the student learns)")
    config = DistillConfig(
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        frames_per_video=frames_per_video or None,
        adapter=adapter,
        mse_weight=mse_weight,
        precision=lightning_precision(precision, accelerator),
        accelerator=accelerator,
        devices=1,
        num_workers=workers,
        seed=seed,
    )
    report = run_distill(
        source,
        teacher,
        out,
        None if student == "teacher" else student,
        config,
        model=model,
        heldout_every=heldout_every,
        teacher_features=teacher_features,
        finetune_epochs=finetune_temporal,
        finetune_lr=finetune_lr,
        img_size=img_size,
        embed_dim=embed_dim,
        depth=depth,
        num_heads=heads,
    )
    typer.echo(report.summary())
    typer.echo(f"next: mambava extract SOURCE -o FEATURES -c {report.student}")


def register(app: typer.Typer) -> None:
    app.command("extract")(extract_command)
    app.command("finetune-backbone")(finetune_command)
    app.command("distill")(distill_command)
    app.command("pretrain-backbone")(pretrain_command)
