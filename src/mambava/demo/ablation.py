"""The demo's audio-visual ablation: what the voice adds, on held-out subjects.

The generated videos carry each person's voice (`mambava.synth.voice`: pitch level and range, loudness and
speaking rate rise with arousal; spectral tilt and pitch slope carry a little valence; in two-person videos
a face's own voice is heard only in its turns). This stage

1. extracts the videos' audio features with the audio stage (`mambava.audio.extract_audio`, eGeMAPS + log-mel,
   on each video's frame grid) into OUT/audio_raw/: the fusion models read them as extracted and z-score them
   inside (`FusionMambaVA.audio_mean`/`audio_std`, from the training videos, kept in the checkpoint), as they
   will at `predict --audio`; the audio-only model is a plain Mamba-VA, which takes features as given, so it
   reads them z-scored per column with the training videos' statistics from OUT/audio_features/ (eGeMAPS
   columns range from ~0.1 (loudness) to ~3000 (formant Hz));
2. trains, with the demo's recipe and sizes, Mamba-VA on the audio alone, early fusion and mid-level fusion
   (`model.modalities: [visual, audio]`, `model.fusion: early | mid`; `mambava.temporal.FusionMambaVA`);
3. scores each on the held-out test subjects as the visual model was scored (whole videos, windows stitched).

`results["audio"]` holds `rows` {visual, audio, early_fusion, mid_fusion: {ccc_valence, ccc_arousal, p_va,
frames, videos}}, the feature sets, extraction facts and per-model training facts; `report_lines` renders it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from mambava.audio import extract_audio
from mambava.core.errors import MambavaError
from mambava.data.store import AudioVisualStore, FeatureStore, column_statistics
from mambava.demo.recipe import score_run, train_side_by_side
from mambava.synth import read_meta

ROWS = ("visual", "audio", "early_fusion", "mid_fusion")
LABELS = {
    "visual": "visual only (Mamba-VA)",
    "audio": "audio only (Mamba-VA on the voice)",
    "early_fusion": "early fusion",
    "mid_fusion": "mid-level fusion (gated)",
}
# the run's DemoConfig (`mambava.demo.run`), passed in: this module is below the run
DemoConfig = Any


def feature_sets() -> tuple[str, ...]:
    """eGeMAPS + log-mel (the audio stage's default); log-mel alone where opensmile is not installed."""
    try:
        import opensmile  # noqa: F401
    except ImportError:
        return ("logmel",)
    return ("egemaps", "logmel")


def run_ablation(
    out: Path,
    data_root: Path,
    visual_store: Path,
    visual_scores: dict,
    test_names: list[str],
    labels: dict[str, np.ndarray],
    cfg: DemoConfig,
    progress: bool,
    say=print,
) -> dict:
    """Extract, train and score (the module docstring); `visual_scores` is the visual model's test row."""

    sets = feature_sets()
    raw, normed = out / "audio_raw", out / "audio_features"
    start = time.perf_counter()
    messages: list[str] = []
    summary = extract_audio(data_root, raw, sets, workers=2, on_warning=messages.append)
    if summary.failed or summary.without_sound:
        raise MambavaError(f"{data_root}: no sound extracted for {(summary.failed + summary.without_sound)[0]}")
    dim = _normalise(data_root, FeatureStore(raw), FeatureStore(normed))
    extract_s = time.perf_counter() - start
    say(
        f"      audio features ({'+'.join(sets)}, {dim}-d) of {summary.videos} videos, "
        f"{summary.seconds_of_video:.0f} s of sound, in {extract_s:.1f} s"
    )

    fusion = dict(
        input_dim=cfg.embed_dim,
        audio_dim=dim,
        modalities=["visual", "audio"],
        audio_tcn_channels=[cfg.tcn_channels[0] // 2],
        modality_dropout=0.1,
    )
    plans = {
        "audio": (normed, None, dict(input_dim=dim)),
        "early_fusion": (visual_store, raw, dict(fusion, fusion="early")),
        "mid_fusion": (visual_store, raw, dict(fusion, fusion="mid")),
    }
    rows: dict[str, dict] = {"visual": dict(visual_scores)}
    runs: dict[str, dict] = {}
    say(f"      training {', '.join(plans)}" + (" side by side" if cfg.workers > 1 else ""))
    jobs = {
        name: dict(
            out_dir=out / "runs" / name,
            data_root=data_root,
            features=features,
            model=model,
            cfg=cfg,
            progress=progress,
            epochs=cfg.audio_epochs,
            audio=audio,
        )
        for name, (features, audio, model) in plans.items()
    }
    trained = train_side_by_side(jobs, cfg.workers)
    for name, (features, audio, _) in plans.items():
        run = trained[name]
        store = AudioVisualStore(FeatureStore(features), FeatureStore(audio)) if audio else FeatureStore(features)
        rows[name] = score_run(run, store, test_names, labels, cfg)[1].as_dict()
        runs[name] = {
            "validation_best": run["best"],
            "parameters": run["parameters"],
            "train_time_s": run["train_time_s"],
        }
    best = max(("early_fusion", "mid_fusion"), key=lambda k: rows[k]["p_va"])
    gain = {
        "best_fusion": best,
        "p_va": rows[best]["p_va"] - rows["visual"]["p_va"],
        "ccc_arousal": rows[best]["ccc_arousal"] - rows["visual"]["ccc_arousal"],
    }
    say(
        f"      best fusion ({best}) vs visual only: {gain['p_va']:+.3f} P_VA, {gain['ccc_arousal']:+.3f} CCC_a; "
        f"audio only P_VA {rows['audio']['p_va']:.3f}"
    )
    return {
        "sets": list(sets),
        "dim": dim,
        "videos": summary.videos,
        "seconds_of_sound": summary.seconds_of_video,
        "epochs": cfg.audio_epochs or cfg.epochs,
        "visual_epochs": cfg.epochs,
        "extract_s": round(extract_s, 1),
        "warnings": messages,
        "rows": rows,
        "runs": runs,
        "gain": gain,
    }


def _normalise(data_root: Path, raw, normed) -> int:
    """Write every entry of `raw` z-scored per column with the mean and std over the training videos' frames
    with sound; returns the feature size."""

    train = [n for n in read_meta(data_root)["splits"]["train"] if raw.has(n)] or raw.names()
    mean, std = column_statistics(raw, train)
    std = np.where(std > 1e-6, std, 1.0)  # a constant column stays 0
    for name in raw.names():
        record = raw.read(name)
        x, mask = record.window(0, record.n_frames)
        normed.write(
            name,
            ((np.asarray(x, np.float64) - mean) / std).astype(np.float32),
            mask,
            record.fps,
            record.backbone + ":zscore",
            "float32",
            {**record.extra, "zscore_from": "train"},
        )
    return int(len(mean))


def _fmt(x) -> str:
    return "–" if x is None else f"{x:.3f}"


def report_lines(results: dict) -> list[str]:
    """The report's section: the four-way table on held-out subjects and what it means."""
    if "audio" not in results:
        return []
    a = results["audio"]
    rows, gain = a["rows"], a["gain"]
    return [
        "## What the voice adds (audio-visual ablation)",
        "",
        f"Every generated person speaks (pitch level and range, loudness and speaking rate rise with arousal; "
        f"a weaker valence cue in spectral tilt and pitch slope; in two-person videos a face's own voice is heard "
        f"only in its turns). Audio features ({'+'.join(a['sets'])}, {a['dim']} per frame, z-scored with the "
        f"training videos' statistics: inside the fusion models, which keep them) of {a['videos']} videos "
        f"({a['seconds_of_sound']:.0f} s of sound, "
        f"{a['extract_s']:.0f} s to extract); each model with the visual model's recipe "
        f"({a['epochs']} epochs; the visual model {a['visual_epochs']}), on the same held-out test subjects:",
        "",
        "| model | CCC_v | CCC_a | P_VA |",
        "|---|---|---|---|",
        *[
            f"| {LABELS[k]} | {_fmt(rows[k]['ccc_valence'])} | {_fmt(rows[k]['ccc_arousal'])} | "
            f"{_fmt(rows[k]['p_va'])} |"
            for k in ROWS
        ],
        "",
        f"The better fusion ({LABELS[gain['best_fusion']]}) is {gain['p_va']:+.3f} P_VA and "
        f"{gain['ccc_arousal']:+.3f} CCC_a from visual only.",
        "",
    ]
