"""The demo's distill stage: the fine-tuned demo ViT (the teacher) distilled into a student of at least 4x fewer
FLOPs (`mambava.backbone.distill`), judged by the demo's TCN+Mamba on the held-out test subjects with the
teacher's and with the student's features, unchanged (the student's adapter maps into the teacher's space).

Targets are the teacher's features already in `features/` (what `extract` stored); the student trains on the
training videos' crops, its epoch is chosen on the validation videos' crops, and the test videos' crops and
labels are used only for the scores here. The student's test features are extracted from its saved file by
`extract`, as any backbone's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mambava.backbone import FeatureExtractor, load_encoder
from mambava.backbone.distill import DistillConfig, distill, explained_variance, mean_cosine, student_config
from mambava.backbone.extract import extract_features
from mambava.data.affwild2 import AffWild2
from mambava.data.crops import find_crop_videos
from mambava.data.store import FeatureStore
from mambava.synth.layout import read_labels
from mambava.training.distill import BATCHED, frame_ms, temporal_p_va

# the student: a quarter of the teacher's width at the same depth-to-width shape, 2 blocks, same input
STUDENT = dict(embed_dim=64, depth=2, num_heads=2)
EPOCHS = 8
FRAMES_PER_VIDEO = 80
LR = 2e-3


def distill_stage(
    out: Path,
    data_root: Path,
    train_root: Path,
    encoder_path: Path,
    store: Path,
    model: Path,
    test_names: list[str],
    cfg,
    progress: bool,
    stages,
    results: dict,
) -> None:
    """Run the stage (one numbered line) and put its numbers in results["distill"]."""
    with stages.stage(
        "distill", "a small student ViT regresses the teacher ViT's features; TCN+Mamba unchanged on its features"
    ):
        results["distill"] = demo_distill(
            out, data_root, train_root, encoder_path, store, model, test_names, cfg, progress
        )
        d = results["distill"]
        stages.console.print(
            f"      teacher {d['teacher_mflop']:.1f} MFLOP, student {d['student_mflop']:.1f} MFLOP "
            f"({d['flop_ratio']:.1f}x fewer); test-crop feature cosine {d['cosine']:.3f}; TCN+Mamba test P_VA "
            f"{d['p_va_teacher']:.3f} with the teacher's features, {d['p_va_student']:.3f} with the student's; "
            f"{d['teacher_ms']:.2f} vs {d['student_ms']:.2f} ms/frame"
        )


def demo_distill(
    out: Path,
    data_root: Path,
    train_root: Path,
    encoder_path: Path,
    store: Path,
    model: Path,
    test_names: list[str],
    cfg,
    progress: bool,
) -> dict[str, Any]:
    teacher = load_encoder(encoder_path)
    splits = AffWild2(data_root).splits
    videos = {v.name: v for v in find_crop_videos(train_root)}
    train = [videos[n] for n in splits["train"] if n in videos]
    val = [videos[n] for n in splits["validation"] if n in videos]
    teacher_store = FeatureStore(store)
    config = DistillConfig(
        epochs=EPOCHS,
        lr=LR,
        batch_size=64,
        frames_per_video=FRAMES_PER_VIDEO,
        precision=cfg.training_precision(),
        accelerator="cpu",
        devices=1,
        num_workers=0,
        seed=cfg.seed,
        warmup_fraction=0.05,
    )
    result = distill(
        train,
        teacher,
        student_config(teacher.config, **STUDENT),
        config,
        out / "runs" / "distill",
        heldout=val,
        teacher_store=teacher_store,
        progress=progress,
    )

    student = load_encoder(result.student_path)  # as extract/predict/stream load it
    student_store = FeatureStore(out / "features_student")
    extract_features(
        train_root,
        student_store,
        FeatureExtractor(student, batch_size=256, device="cpu"),
        backbone="demo_vit_student",
        dtype="float32",
        workers=0,
        names=test_names,
        progress=False,
    )
    cosines, explained = _test_cosine(teacher_store, student_store, test_names, teacher_store, train)
    scores = temporal_p_va(
        model,
        {"teacher": teacher_store, "student": student_store},
        test_names,
        read_labels(data_root, test_names),
        cfg.window,
        cfg.stride,
    )
    t_ms, s_ms = frame_ms(teacher), frame_ms(student)
    t_batched, s_batched = frame_ms(teacher, BATCHED), frame_ms(student, BATCHED)
    return {
        "student": {k: result.student_config[k] for k in ("img_size", "patch_size", "embed_dim", "depth", "num_heads")},
        "teacher_mflop": result.teacher_flops / 1e6,
        "student_mflop": result.student_flops / 1e6,
        "flop_ratio": result.teacher_flops / result.student_flops,
        "teacher_parameters": sum(p.numel() for p in teacher.parameters()),
        "student_parameters": sum(p.numel() for p in student.parameters()),
        "cosine": cosines,
        "explained_variance": explained,
        "validation_cosine": result.heldout_cosine,
        "joint_adapter_validation_cosine": result.joint_heldout_cosine,
        "p_va_teacher": scores["teacher"]["p_va"],
        "p_va_student": scores["student"]["p_va"],
        "scores": scores,
        "teacher_ms": t_ms,
        "student_ms": s_ms,
        "batch": BATCHED,
        "teacher_ms_batched": t_batched,
        "student_ms_batched": s_batched,
        "train_crops": result.train_crops,
        "epochs": EPOCHS,
        "history": result.history,
        "student_file": str(Path(result.student_path).relative_to(out)),
    }


def _test_cosine(teacher_store, student_store, names: list[str], train_store, train) -> tuple[float, float]:
    """Mean cosine (and explained variance) of the student's with the teacher's features over every test frame
    that has a crop."""

    t, s = [], []
    for name in names:
        tf, mask = teacher_store.read(name).window(0, teacher_store.n_frames(name))
        sf, _ = student_store.read(name).window(0, student_store.n_frames(name))
        t.append(np.array(tf[mask], np.float32))
        s.append(np.array(sf[mask], np.float32))
    t_all, s_all = np.concatenate(t), np.concatenate(s)
    mean = np.mean(
        [np.asarray(train_store.read(v.name).window(0, train_store.n_frames(v.name))[0]).mean(0) for v in train], axis=0
    )
    return mean_cosine(s_all, t_all), explained_variance(s_all, t_all, mean)


def report_lines(results: dict) -> list[str]:
    """The report's distill section (empty when the stage did not run)."""
    d = results.get("distill")
    if not d:
        return []
    s = d["student"]
    st, ss = d["scores"]["teacher"], d["scores"]["student"]
    return [
        "## Distilled backbone",
        "",
        f"The fine-tuned ViT (teacher) distilled into a student ViT ({s['img_size']} px, {s['embed_dim']}-d, "
        f"{s['depth']} blocks, {s['num_heads']} heads, with a linear adapter onto the teacher's feature space, "
        f"fitted in closed form): cosine + MSE feature regression on {d['train_crops']:,} training crops, "
        f"{d['epochs']} epochs (`mambava distill`). The TCN+Mamba trained on the teacher's features runs "
        "unchanged on the student's.",
        "",
        f"| backbone | MFLOP/frame | parameters | ms/frame, batch 1 | ms/frame, batch {d['batch']} | "
        "test feature cosine | CCC_v | CCC_a | P_VA |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| teacher (demo ViT) | {d['teacher_mflop']:.1f} | {d['teacher_parameters']:,} | {d['teacher_ms']:.2f} | "
        f"{d['teacher_ms_batched']:.3f} | 1 | {st['ccc_valence']:.3f} | {st['ccc_arousal']:.3f} | {st['p_va']:.3f} |",
        f"| student (distilled) | {d['student_mflop']:.1f} | {d['student_parameters']:,} | {d['student_ms']:.2f} | "
        f"{d['student_ms_batched']:.3f} | {d['cosine']:.3f} | {ss['ccc_valence']:.3f} | {ss['ccc_arousal']:.3f} | "
        f"**{ss['p_va']:.3f}** |",
        "",
        f"The student takes {d['flop_ratio']:.1f}x fewer FLOPs; per frame it is "
        f"{d['teacher_ms'] / d['student_ms']:.1f}x faster one frame at a time (where per-call overhead weighs on "
        f"models this small) and {d['teacher_ms_batched'] / d['student_ms_batched']:.1f}x in batches. Its features "
        f"explain {100 * d['explained_variance']:.0f}% of the teacher's variance on the test crops, and P_VA moves "
        f"by {ss['p_va'] - st['p_va']:+.3f}.",
        "",
    ]
