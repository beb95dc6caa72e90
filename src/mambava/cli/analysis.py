"""`mambava ratings` (continuous ratings onto a prediction's frames, each rater's lag), `mambava adapt`
(fine-tune on a lab's own data) and `mambava models` (local model names); see mambava.analysis.ratings,
mambava.training.adapt and mambava.inference.catalog."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple

import typer

from mambava.core.errors import MambavaError
from mambava.core.fileio import make_folder

models_app = typer.Typer(
    help="Local model names: checkpoints kept in the user cache folder (no download).", no_args_is_help=True
)


def _prediction_track(path: Path, track: Optional[str]):
    import pandas as pd

    try:
        table = pd.read_csv(path)
    except FileNotFoundError:
        raise MambavaError(f"{path}: no such predictions file") from None
    except (OSError, ValueError, pd.errors.ParserError) as error:
        raise MambavaError(f"{path}: not a readable predictions CSV ({str(error).splitlines()[0]})") from None
    missing = [c for c in ("frame", "time", "valence", "arousal") if c not in table.columns]
    if missing:
        raise MambavaError(f"{path}: missing column(s) {', '.join(missing)} (a `mambava predict` CSV is needed)")
    if "track" in table.columns:
        names = list(dict.fromkeys(table["track"].astype(str)))
        if track is None and len(names) > 1:
            raise MambavaError(f"{path}: {len(names)} tracks ({', '.join(names)}); choose one with --track")
        chosen = track if track is not None else names[0]
        if chosen not in names:
            raise MambavaError(f"{path}: no track {chosen!r} (tracks: {', '.join(names)})")
        table = table[table["track"].astype(str) == chosen]
    return table.sort_values("frame", kind="stable").reset_index(drop=True)


def ratings_command(
    predictions: Path = typer.Argument(..., help="A `mambava predict` CSV (<name>.csv) of the rated video."),
    ratings: List[Path] = typer.Argument(
        ..., help="One file per rater: CSV with time (s) and valence/arousal columns, or Aff-Wild2 per-frame .txt."
    ),
    out: Path = typer.Option(Path("ratings"), "--out", "-o", help="Output folder."),
    track: Optional[str] = typer.Option(
        None, "--track", help="The rated person's track (needed when the video has several)."
    ),
    value_range: Optional[Tuple[float, float]] = typer.Option(
        None, "--range", help="Rating scale LO HI, mapped onto [-1, 1] (default: already in [-1, 1])."
    ),
    max_lag: float = typer.Option(3.0, "--max-lag", help="Largest lag tried, seconds, either way."),
) -> None:
    """Resample each rater's continuous ratings to the video's frames (<rater>.frames.csv: frame, time,
    valence, arousal; empty where not rated) and estimate each rater's lag behind the model's predictions:
    the lag within +-max-lag that maximises CCC (lags.csv: rater, dimension, lag_frames, lag_s, ccc_at_lag,
    ccc_at_zero, frames_rated; lags.png: the CCC-against-lag curves)."""
    import numpy as np
    import pandas as pd

    from mambava.analysis.ratings import estimate_lag, frame_rate, plot_lag_curves, read_ratings
    from mambava.analysis.summaries import write_csv

    if value_range is not None and value_range[0] >= value_range[1]:
        raise MambavaError(f"--range: LO must be below HI, got {value_range[0]:g} {value_range[1]:g}")
    table = _prediction_track(predictions, track)
    frames = table["frame"].to_numpy(np.int64)
    times = table["time"].to_numpy(float)
    fps = frame_rate(times)
    predicted = table[["valence", "arousal"]].to_numpy(float)
    # every rater is read and every lag estimated before anything is written: a run that fails leaves no output
    rows, curves, frame_tables = [], [], []
    for path in ratings:
        rated = read_ratings(path, frames, times, value_range)
        rater = path.stem
        frame_tables.append(
            (rater, pd.DataFrame({"frame": frames, "time": times, "valence": rated[:, 0], "arousal": rated[:, 1]}))
        )
        for index, dim in enumerate(("valence", "arousal")):
            known = int(np.isfinite(rated[:, index]).sum())
            if known == 0:
                continue
            lag = estimate_lag(predicted[:, index], rated[:, index], fps, max_lag)
            rows.append(
                {
                    "rater": rater,
                    "dimension": dim,
                    "lag_frames": lag.frames,
                    "lag_s": lag.seconds,
                    "ccc_at_lag": lag.ccc,
                    "ccc_at_zero": lag.ccc_zero,
                    "frames_rated": known,
                }
            )
            curves.append((rater, dim, lag))
            typer.echo(
                f"{path}: {dim} lag {lag.frames:+d} frames ({lag.seconds:+.3f} s), CCC {lag.ccc:.3f} "
                f"(at 0: {lag.ccc_zero:.3f}), {known}/{len(frames)} frames rated"
            )
    if not rows:
        raise MambavaError(
            "no rater rated any frame of this prediction (ratings all empty or NaN, or their times outside "
            f"the video's {times[0]:g}..{times[-1]:g} s)"
        )
    try:
        make_folder(out)
    except OSError as error:
        raise MambavaError(f"{out}: cannot create the output folder ({error.strerror or error})") from None
    for rater, frame_table in frame_tables:
        write_csv(frame_table, out / f"{rater}.frames.csv")
    write_csv(pd.DataFrame(rows), out / "lags.csv")
    plot_lag_curves(curves, out / "lags.png", title=predictions.stem)
    typer.echo(f"-> {out / 'lags.csv'}, {out / 'lags.png'}")


@models_app.command("add")
def models_add(
    name: str = typer.Argument(..., help="The name to use with predict -c/-b."),
    file: Path = typer.Argument(..., help="Checkpoint: a temporal model or a backbone."),
    kind: Optional[str] = typer.Option(None, "--kind", help="temporal or backbone (default: read from the file)."),
    trained_on: Optional[str] = typer.Option(
        None, "--trained-on", help="What it was trained on (default: what its run config says)."
    ),
    replace: bool = typer.Option(False, "--replace", help="Replace an existing name."),
) -> None:
    """Copy a checkpoint into the user cache folder under NAME, with its SHA-256."""
    from mambava.inference.catalog import add, models_dir

    entry = add(name, file, kind, trained_on, replace)
    typer.echo(
        f"{name}: {entry['kind']}, sha256 {entry['sha256'][:16]}..., {entry['size']} bytes -> "
        f"{models_dir() / entry['file']}"
    )


@models_app.command("list")
def models_list() -> None:
    """The model names: kind, SHA-256 (first 16 hex digits), size, what it was trained on."""
    from mambava.inference.catalog import models_dir, read_index

    index = read_index()
    if not index:
        typer.echo(f"no models in {models_dir()} (add one with `mambava models add NAME FILE`)")
        return
    typer.echo("name\tkind\tsha256\tsize\ttrained_on\tadded")
    for name in sorted(index):
        entry = index[name]
        typer.echo(
            f"{name}\t{entry['kind']}\t{entry['sha256'][:16]}\t{entry['size']}\t"
            f"{entry['trained_on'] or '-'}\t{entry['added']}"
        )


@models_app.command("remove")
def models_remove(name: str = typer.Argument(..., help="The name to remove (its cached file is deleted).")) -> None:
    """Forget a model name and delete its cached copy."""
    from mambava.inference.catalog import remove

    entry = remove(name)
    if entry["deleted"]:
        typer.echo(f"{name}: removed ({entry['file']})")
    else:
        typer.echo(
            f"{name}: removed; its index entry named {entry.get('file')!r}, not a file of the registry: nothing deleted"
        )


def adapt_command(
    checkpoint: Path = typer.Option(
        ..., "--checkpoint", "-c", help="The trained temporal model (path or `mambava models` name)."
    ),
    features: Path = typer.Option(
        ..., "--features", help="The lab's features: a feature store folder or a folder of <video>.npy."
    ),
    ratings: Path = typer.Option(
        ...,
        "--ratings",
        help="Folder of <video>.csv (time + valence/arousal), <video>.frames.csv or Aff-Wild2 <video>.txt.",
    ),
    out: Path = typer.Option(Path("adapted"), "--out", "-o", help="Output folder."),
    mode: str = typer.Option("head", "--mode", help="What is trained: head, encoder (Mamba encoder + head) or all."),
    lag: str = typer.Option("auto", "--lag", help="Raters' lag in seconds (e.g. from `mambava ratings`), or auto."),
    participants: Optional[Path] = typer.Option(None, "--participants", help="CSV with columns video, participant."),
    pattern: str = typer.Option(
        r"^([^_-]+)",
        "--participant-pattern",
        help="Without --participants: regex whose first group of the video name is the participant.",
    ),
    folds: int = typer.Option(3, "--folds", help="Cross-validation groups of participants (0: none)."),
    epochs: int = typer.Option(20, "--epochs"),
    lr: float = typer.Option(1e-3, "--lr"),
    batch_size: int = typer.Option(8, "--batch-size"),
    window: Optional[int] = typer.Option(
        None, "--window", help="Training window (default: the checkpoint's, else 300)."
    ),
    stride: Optional[int] = typer.Option(None, "--stride", help="Window stride (default: the checkpoint's, else 200)."),
    fps: float = typer.Option(30.0, "--fps", help="Frame rate of the features."),
    value_range: Optional[Tuple[float, float]] = typer.Option(
        None, "--range", help="Rating scale LO HI, mapped onto [-1, 1]."
    ),
    accelerator: str = typer.Option("cpu", "--accelerator", help="cpu, gpu or auto."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Fine-tune a trained temporal model on your own videos and ratings. Reports per-video CCC before and
    after on participants each cross-validation fold never saw (per_video.csv, summary.json), then adapts on
    everyone and writes adapted.safetensors (use with `mambava predict -c`)."""
    from mambava.inference.catalog import resolve_model
    from mambava.training.adapt import AdaptConfig, adapt, load_adapt_data

    if lag != "auto":
        try:
            lag_value: float | str = float(lag)
        except ValueError:
            raise MambavaError(f"--lag: seconds or auto, got {lag!r}") from None
    else:
        lag_value = "auto"
    cfg = AdaptConfig(
        mode=mode,
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        window=window,
        stride=stride,
        lag=lag_value,
        folds=folds,
        fps=fps,
        seed=seed,
        accelerator=accelerator,
        progress_bar=False,
    )
    cfg.check()
    videos = load_adapt_data(features, ratings, participants, pattern, fps, value_range)
    result = adapt(resolve_model(checkpoint, "temporal"), videos, out, cfg)
    s = result.summary
    typer.echo(
        f"{len(videos)} videos of {s['participants']} participants; lag {result.lag_frames} frames "
        f"({s['lag_s']:.3f} s, {s['lag_source']}); trained: {', '.join(s['trainable'])}"
    )
    if "gain" in s:
        typer.echo(
            f"held-out participants, mean per-video P_VA: before {s['p_va_before']:.4f}, after "
            f"{s['p_va_after']:.4f} (gain {s['gain']:+.4f}) -> {out / 'per_video.csv'}"
        )
    typer.echo(f"-> {result.model_path}")


def register(app: typer.Typer) -> None:
    app.command("ratings")(ratings_command)
    app.command("adapt")(adapt_command)
    app.add_typer(models_app, name="models")
