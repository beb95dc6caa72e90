"""Stitching, measured: P_VA and the largest frame-to-frame jump per video for each way of running windows.

    mambava bench stitching demo_out          # the test videos of a `mambava demo` run

Options compared, on the held-out test videos' stored features with the run's trained Mamba-VA and its
window/stride: `mean` (windows stitched by the mean over the windows covering a frame, what `evaluate` scores; the
paper states no stitching), `most_history` (each frame from the covering window that started first) and `full` (one
causal pass, as the stream computes). Columns: P_VA over all valid frames concatenated (the official score), and the
median over videos of each video's largest frame-to-frame jump, max_t max(|Δvalence|, |Δarousal|), of the clipped
predictions: a window that starts from an empty state puts a step into the mean's curve where it joins. A last
column scores the test videos joined end to end into one long sequence (P_VA over the same frames): the demo's
videos are only two or three windows long, and this shows what each option does with far
more history than the model was trained on (a full pass carries all of it). `mambava predict`'s default
stitching was chosen from this table (docs/predict.md, Stitching).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from mambava.core.metrics import va_scores
from mambava.data.affwild2 import AffWild2, read_va_annotation
from mambava.data.store import FeatureStore
from mambava.inference.predict import Predictor
from mambava.synth import ground_truth_path

OPTIONS = (("mean", "windows", "mean"), ("most_history", "windows", "most_history"), ("full", "full", "mean"))


def largest_jump(values: np.ndarray) -> float:
    """max over frames and both dimensions of |y_t - y_{t-1}| for a (T, 2) sequence (0 for T < 2)."""
    values = np.asarray(values, np.float64)
    return float(np.abs(np.diff(values, axis=0)).max()) if len(values) > 1 else 0.0


def measure(checkpoint, store, names, labels) -> dict[str, dict[str, float]]:
    """{option: {"p_va", "ccc_valence", "ccc_arousal", "median_max_jump", "p_va_joined"}} over videos `names`
    of a feature store (forward-filled with their masks), against `labels` {name: (T, 2)}; "p_va_joined" with
    the videos run as one sequence, end to end."""

    store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    results = {}
    for option, windowing, stitching in OPTIONS:
        predictor = Predictor(checkpoint, windowing=windowing, stitching=stitching)
        preds, targets, jumps, inputs = [], [], [], []
        for name in names:
            target = np.asarray(labels[name], np.float32)
            features, present = store.read(name).window(0, len(target))
            inputs.append((features, present))
            pred = predictor.predict_features(features, present)
            preds.append(pred)
            targets.append(target)
            jumps.append(largest_jump(pred))
        target = np.concatenate(targets)
        scores = va_scores(np.concatenate(preds), target)
        joined = predictor.predict_features(
            np.concatenate([f for f, _ in inputs]), np.concatenate([p for _, p in inputs])
        )
        results[option] = {
            **scores,
            "median_max_jump": float(np.median(jumps)),
            "p_va_joined": va_scores(joined, target)["p_va"],
        }
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="mambava bench stitching", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "demo", nargs="?", default="demo_out", help="output folder of `mambava demo` (default demo_out)"
    )
    parser.add_argument("--model", default="mamba_va", help="run under DEMO/runs (default mamba_va)")
    args = parser.parse_args(argv)
    demo = Path(args.demo)
    root = demo / "data"
    names = AffWild2(root).splits["test"]
    labels = {name: read_va_annotation(ground_truth_path(root, name)) for name in names}
    checkpoint = demo / "runs" / args.model / "model.safetensors"
    results = measure(checkpoint, demo / "features", names, labels)
    print(f"{checkpoint}: {len(names)} test videos")
    print("| option | P_VA | CCC_v | CCC_a | median largest jump | P_VA, videos joined |")
    print("|---|---|---|---|---|---|")
    for option, r in results.items():
        print(
            f"| {option} | {r['p_va']:.4f} | {r['ccc_valence']:.4f} | {r['ccc_arousal']:.4f} | "
            f"{r['median_max_jump']:.3f} | {r['p_va_joined']:.4f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
