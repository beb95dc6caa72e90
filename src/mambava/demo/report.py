"""The demo's report: figures (training curves, predicted vs true valence/arousal, the raw-video prediction) and
OUT/report.md from the results of `mambava.demo.run`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mambava.analysis.plots import new_figure, save_figure
from mambava.core.fileio import atomic_open
from mambava.demo.ablation import report_lines as audio_report_lines
from mambava.demo.distill import report_lines as distill_report_lines
from mambava.synth import read_truth
from mambava.synth.layout import read_labels
from mambava.training import read_metrics

REPORT_FILE = "report.md"
# the run's DemoConfig (`mambava.demo.run`), passed in: this module is below the run
DemoConfig = Any


def write_figures(out: Path, runs: dict, predictions: dict, labels: dict, results: dict, cfg: DemoConfig) -> dict:
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
        ax_val.plot(
            [r["epoch"] for r in rows if r.get("val_p_va") is not None],
            [r["val_p_va"] for r in rows if r.get("val_p_va") is not None],
            "o-",
            color=colours[kind],
            label=names[kind],
        )
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
        pred = np.asarray(pred, dtype=float)
        y = read_labels(out / "data", [name])[name]
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


def write_report(out: Path, results: dict, figures: dict, cfg: DemoConfig) -> Path:
    """OUT/report.md: the test table and figures, the prediction on the held-out raw video, what ran."""
    rel = {k: Path(p).relative_to(out).as_posix() for k, p in figures.items()}
    lines = [
        *_report_results(results, rel, cfg),
        *_report_predict(results["predict"], rel),
        *_report_own_crops(results),
        *distill_report_lines(results),
        *audio_report_lines(results),
        *_report_what_ran(results, cfg),
    ]
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


def _landmarks_line(results: dict) -> str:
    if not results["faces"].get("learned_landmarks"):
        return "MTCNN's own 5 points aligned them. "
    lm = results["landmarks"]
    return (
        f"MTCNN's 5 points were moved by the landmark refiner (`mambava train-landmarks`), trained on "
        f"{lm['faces']:,} faces of the {lm['people']} training people ({lm['epochs']} epochs, {lm['seconds']:.0f} s); "
        "the held-out people it never saw. "
    )


def _jitter_line(jitter) -> str:
    if not any(jitter):
        return "The backbone's training crops were not jittered."
    return (
        "The backbone's training crops were jittered by ±{:g} px, ±{:g} log-scale and ±{:g}° (`align_jitter`).".format(
            *jitter
        )
    )


def _report_own_crops(results: dict) -> list[str]:
    """With `own_crops`: the alignment error of our crops and P_VA of every held-out raw video both ways."""
    lines: list[str] = []
    if "faces" in results:
        fa, al = results["faces"], results["faces"]["alignment"]
        pa = results.get("predict_all")
        lines += [
            "## Trained on our own crops",
            "",
            f"Backbone, features and temporal models were trained on crops made by the faces stage from the raw "
            f"videos (`mambava faces --dataset`: {fa['frames']:,} frames, {fa['crops']:,} crops, "
            f"{fa['seconds']:.0f} s, {fa['cpu_s']:.0f} CPU-s), the crops `predict` makes. Their alignment error "
            f"against the generator's true landmarks: mean {al['ours']['mean_px']:.2f} px at 112 px "
            f"({al['ours']['mean_eye_pct']:.1f}% of the eye distance; median {al['ours']['median_px']:.2f} px, mean "
            f"shift {al['ours']['mean_offset_px']}; the held-out people's alone "
            f"{fa['alignment_held_out']['ours']['mean_px']:.2f} px), "
            f"against {al['generator']['mean_px']:.2f} px for the "
            "generator's own crops. "
            + _landmarks_line(results)
            + _jitter_line(results["config"]["align_jitter"])
            + (
                " With `both_crops` the backbone and the temporal models also trained on the generator's crops."
                if results["config"].get("both_crops")
                else ""
            ),
            "",
        ]
        if pa:
            lines += [
                "| held-out raw videos | CCC_v | CCC_a | P_VA |",
                "|---|---|---|---|",
                f"| through `predict` (faces stage) | {_fmt(pa['raw_video']['ccc_valence'])} | "
                f"{_fmt(pa['raw_video']['ccc_arousal'])} | **{_fmt(pa['raw_video']['p_va'])}** |",
                f"| the generator's ideal crops | {_fmt(pa['ideal_crops']['ccc_valence'])} | "
                f"{_fmt(pa['ideal_crops']['ccc_arousal'])} | {_fmt(pa['ideal_crops']['p_va'])} |",
                "",
                f"All {pa['videos']} held-out videos ({pa['tracks']} people, {pa['frames']:,} labelled frames that "
                f"both paths predict), the same model; the raw-video path is {pa['gap_p_va']:+.3f} P_VA from the "
                "ideal-crop path.",
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
        + ", ".join(f"{k} {r['parameters']:,}" for k, r in results["runs"].items())
        + ".",
        "",
        "| stage | seconds | CPU-seconds | cores busy |",
        "|---|---:|---:|---:|",
        *[
            f"| {k} | {s:.1f} | {results['cpu_s'].get(k, float('nan')):.0f} | "
            f"{results['cpu_s'].get(k, float('nan')) / max(s, 1e-9):.2f} |"
            for k, s in times.items()
            if k != "total"
        ],
        f"| total | {times['total']:.1f} | {sum(results['cpu_s'].values()):.0f} | "
        f"{sum(results['cpu_s'].values()) / max(times['total'], 1e-9):.2f} |",
        "",
        "Numbers are in `results.json`; runs (checkpoints, metrics.csv, curves.png, summary.json) in `runs/`.",
        "",
    ]
