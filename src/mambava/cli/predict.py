"""`mambava predict` (offline: CSV, plots, overlay), `mambava stream` (live, frame by frame) and
`mambava submit write` (the ABAW test-set submission); see mambava.inference.predict and mambava.inference.stream."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from mambava.cli.options import landmark_source, landmarks_option, precision_option
from mambava.core.errors import MambavaError

CHECKPOINT_HELP = (
    "Temporal model: model.safetensors (any kind), a run's .ckpt, the authors' .pth, or a model name "
    "(default: the built-in expression-va, which is not the paper's model)."
)
EXPRESSIONS_HELP = "Add the seven expression probabilities per frame (always on with expression-va)."
BACKBONE_HELP = (
    "ViT checkpoint (MAE .pth, timm, Hugging Face, or saved by mambava), or 'expression' (the expression net's "
    "features); needed for videos (expression-va brings its own)."
)
DEVICE_HELP = "cpu, cuda, cuda:1 or auto."
AUDIO_HELP = (
    "A fusion model's audio feature sets, e.g. egemaps,logmel (default: those of its audio width): "
    "computed from each video's sound; adds a voice column."
)
NO_AUDIO_HELP = "A fusion model without its sound: every frame's audio masked (voice 0)."


def _audio_choice(audio: Optional[str], no_audio: bool):
    """Predictor's `audio`: the sets named, False for --no-audio, None (the model's default)."""
    if no_audio and audio:
        raise MambavaError("--audio and --no-audio: choose one")
    return False if no_audio else audio


def predict_command(
    inputs: List[str] = typer.Argument(..., help="Videos, folders of videos, image folders, or features .npy (T x D)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help=CHECKPOINT_HELP),
    backbone: Optional[Path] = typer.Option(None, "--backbone", "-b", help=BACKBONE_HELP),
    out: Path = typer.Option(Path("predictions"), "--out", "-o", help="Output folder."),
    expressions: bool = typer.Option(False, "--expressions", help=EXPRESSIONS_HELP),
    windowing: str = typer.Option(
        "full",
        "--windowing",
        help="full: one causal pass (= stream; default, see docs/predict.md, Stitching); "
        "windows: 300/200 windows, stitched.",
    ),
    stitching: str = typer.Option(
        "most_history",
        "--stitching",
        help="With --windowing windows: most_history (each frame from the window where it has the most history) "
        "or mean (what evaluate scores).",
    ),
    window: Optional[int] = typer.Option(None, "--window", help="Window length (default: the run's, else 300)."),
    stride: Optional[int] = typer.Option(None, "--stride", help="Window stride (default: the run's, else 200)."),
    overlay: bool = typer.Option(False, "--overlay", help="Also write <name>.overlay.mp4 with boxes and VA bars."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write the VA-over-time and circumplex PNGs."),
    detector: str = typer.Option("mtcnn", "--detector", help="Face detector: mtcnn or haar."),
    landmarks: Optional[Path] = landmarks_option(),
    detect_every: int = typer.Option(
        1,
        "--detect-every",
        help="Run the face detector every K frames and follow the faces in between with optical flow "
        "(1: every frame; see docs/faces.md, Detection by tracking).",
    ),
    fps: Optional[float] = typer.Option(
        None,
        "--fps",
        help="Process at most this many frames per second (default: all); the others hold "
        "the last feature, every frame gets a row.",
    ),
    features_fps: float = typer.Option(
        30.0, "--features-fps", help="Frame rate of .npy features (for the time column)."
    ),
    audio: Optional[str] = typer.Option(None, "--audio", help=AUDIO_HELP),
    no_audio: bool = typer.Option(False, "--no-audio", help=NO_AUDIO_HELP),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    batch_size: int = typer.Option(32, "--batch-size", help="Face crops per backbone batch."),
    precision: str = precision_option("auto", what="Backbone precision: "),
    events: Optional[Path] = typer.Option(
        None,
        "--events",
        help="BIDS events .tsv (onset, duration, trial_type), or a folder "
        "of <name>_events.tsv: writes <name>.events.csv.",
    ),
    baseline: Optional[str] = typer.Option(
        None, "--baseline", help="trial_type of the baseline events: each track is normalised against its own."
    ),
    normalise: str = typer.Option("difference", "--normalise", help="Against the baseline: difference or zscore."),
) -> None:
    """Per-frame valence/arousal for videos (or precomputed features): <name>.csv (+ .parquet with pyarrow),
    <name>.summary.csv (one row per track), <name>.va.png, <name>.circumplex.png and, with --overlay,
    <name>.overlay.mp4 in the output folder; with --events also <name>.events.csv and <name>.events.png.

    Columns: video, track, frame, time, valence, arousal, face (0 = no face found: the track's last
    feature was carried over), x1, y1, x2, y2 (face box), ..., with --expressions (always with the default
    expression-va) the seven expression probabilities, and model (the temporal model's name).

    Without --checkpoint: the built-in expression-va (FER2013 expressions on the circumplex; not Mamba-VA)."""
    from mambava.analysis.summaries import NORMALISATIONS, write_analysis
    from mambava.inference.catalog import resolve_model
    from mambava.inference.config import PredictConfig
    from mambava.inference.files import FEATURE_SUFFIXES, find_inputs, output_paths, write_overlay, write_table
    from mambava.inference.predict import Predictor

    if normalise not in NORMALISATIONS or (baseline is not None and events is None):
        raise MambavaError(
            "--baseline needs --events"
            if normalise in NORMALISATIONS
            else f"--normalise: one of {', '.join(NORMALISATIONS)}"
        )
    checkpoint, backbone = default_checkpoint(checkpoint), resolve_model(backbone, "backbone")
    paths = find_inputs(inputs)
    _make_folder(out)
    videos = [p for p in paths if Path(p).suffix.lower() not in FEATURE_SUFFIXES]
    if videos and backbone is None and not brings_backbone(checkpoint):
        raise MambavaError(f"{videos[0]}: --backbone is required for videos; pass a features .npy instead")
    config = PredictConfig(
        windowing=windowing,
        stitching=stitching,
        window=window,
        stride=stride,
        detector=detector,
        landmarks=landmark_source(landmarks),
        device=device,
        batch_size=batch_size,
        precision=precision,
        fps=fps,
        features_fps=features_fps,
        progress=True,
        audio=_audio_choice(audio, no_audio),
        detect_every=detect_every,
        expressions=expressions,
    )
    predictor = Predictor(checkpoint, backbone if videos else None, config)
    from mambava.cli import error_line
    from mambava.core.fileio import atomic_group

    if videos:
        _warn_face_stage(predictor)

    failed = 0
    for path in paths:
        try:
            name = Path(path).stem
            table = predictor.predict(path)
            with atomic_group():  # the CSV, summaries, plots and overlay of one input appear together or not at all
                written = write_table(table, out, name, plots=plots)
                written.update(write_analysis(table, out, name, events, baseline, normalise, plots=plots))
                if overlay and path in videos:
                    overlay_path = output_paths(out, name)["overlay"]
                    written["overlay"] = write_overlay(path, table, overlay_path, fps=fps, progress=True)
            if events is not None and "events" not in written:
                typer.secho(f"{path}: no {name}_events.tsv or {name}.tsv in {events}", fg=typer.colors.YELLOW, err=True)
        except (MambavaError, OSError) as error:  # OSError: an output that cannot be written (disk full, ...)
            failed += 1
            typer.secho(f"error: {error_line(error)}", fg=typer.colors.RED, err=True)
            continue
        typer.echo(f"{path}: {_describe(table)} -> " + ", ".join(str(p) for p in written.values()))
        stale = [str(p) for kind, p in output_paths(out, name).items() if kind not in written and p.exists()]
        if stale:
            typer.secho(
                f"note: {', '.join(stale)} from an earlier run, not rewritten", fg=typer.colors.YELLOW, err=True
            )
    if failed:
        typer.secho(f"{failed} of {len(paths)} inputs failed", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)


def default_checkpoint(checkpoint):
    """--checkpoint resolved (`mambava.inference.catalog.resolve_model`); without one, the built-in default model,
    said in one line (it is not the paper's model)."""
    from mambava.inference.catalog import DEFAULT_MODEL, is_builtin, resolve_model
    from mambava.temporal.expression_va import NOTICE

    resolved = DEFAULT_MODEL if checkpoint is None else resolve_model(checkpoint, "temporal")
    if is_builtin(resolved, "temporal"):
        typer.secho(f"model: {NOTICE}", fg=typer.colors.CYAN, err=True)
    return resolved


def brings_backbone(checkpoint) -> bool:
    """Whether the temporal model comes with its own feature extractor (the built-in expression-va)."""
    from mambava.inference.catalog import is_builtin

    return is_builtin(checkpoint, "temporal")


def _warn_face_stage(predictor) -> None:
    """A warning line for each way the faces stage differs from the one that made the model's training crops."""
    for note in predictor.face_stage_notes():
        typer.secho(f"warning: {note}", fg=typer.colors.YELLOW, err=True)


def _make_folder(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MambavaError(f"{path}: cannot create the output folder ({error.strerror or error})") from None


def _describe(table) -> str:
    tracks = table.groupby("track", sort=False)["face"]
    parts = [f"{name} (face in {int(faces.sum())}/{len(faces)})" for name, faces in tracks]
    return f"{table['frame'].nunique()} frames, {len(parts)} track(s): " + ", ".join(parts)


def stream_command(
    source: str = typer.Argument(..., help="Webcam index (0), video file, stream URL, or features .npy."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help=CHECKPOINT_HELP),
    backbone: Optional[Path] = typer.Option(None, "--backbone", "-b", help=BACKBONE_HELP),
    expressions: bool = typer.Option(False, "--expressions", help=EXPRESSIONS_HELP),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write all rows to this CSV at the end."),
    realtime: bool = typer.Option(
        False, "--realtime", help="Replay a file at its own speed, dropping frames that cannot keep up."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Do not print a line per frame."),
    detector: str = typer.Option("mtcnn", "--detector", help="Face detector: mtcnn or haar."),
    landmarks: Optional[Path] = landmarks_option(),
    detect_every: int = typer.Option(
        1,
        "--detect-every",
        help="Run the face detector every K frames and follow the faces in between with optical flow "
        "(1: every frame; see docs/faces.md, Detection by tracking).",
    ),
    fps: Optional[float] = typer.Option(
        None,
        "--fps",
        help="Take at most this many frames per second of the source; the others get rows with dropped=1.",
    ),
    features_fps: float = typer.Option(
        30.0, "--features-fps", help="Frame rate of .npy features (for the time column)."
    ),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    precision: str = precision_option("auto", what="Backbone precision: "),
    step_precision: str = typer.Option(
        "fp32",
        "--step-precision",
        help="Temporal step weights: fp32, bf16 (half the bytes read per frame) or int8 "
        "(weight-only, a quarter); outputs within 1e-2 of fp32.",
    ),
    audio: Optional[str] = typer.Option(
        None, "--audio", help=AUDIO_HELP.replace("each video's", "the file's") + " Not for live sources."
    ),
    no_audio: bool = typer.Option(False, "--no-audio", help=NO_AUDIO_HELP),
) -> None:
    """Valence/arousal live, one recurrent step of the temporal model per frame (equals `predict --windowing
    full` on the same frames). Webcams and URLs are real time: when faces and backbone cannot keep up,
    frames are dropped (and said so), not queued. Ctrl-C stops; the summary and --out are still written."""
    from mambava.inference.catalog import resolve_model
    from mambava.inference.config import PredictConfig
    from mambava.inference.files import FEATURE_SUFFIXES
    from mambava.inference.predict import Predictor
    from mambava.inference.stream import is_live_source
    from mambava.temporal.tcn import STEP_PRECISIONS

    if step_precision not in STEP_PRECISIONS:
        raise MambavaError(f"--step-precision {step_precision!r}: expected one of {', '.join(STEP_PRECISIONS)}")
    checkpoint, backbone = default_checkpoint(checkpoint), resolve_model(backbone, "backbone")
    is_features = Path(source).suffix.lower() in FEATURE_SUFFIXES
    if not is_features and backbone is None and not brings_backbone(checkpoint):
        raise MambavaError(f"{source}: --backbone is required for videos; pass a features .npy instead")
    if not is_features and not is_live_source(source) and not Path(source).exists():
        raise MambavaError(f"{source}: no such file")
    if out is not None:
        _make_folder(out.parent)
    config = PredictConfig(
        windowing="full",
        detector=detector,
        landmarks=landmark_source(landmarks),
        device=device,
        batch_size=8,
        precision=precision,
        fps=fps,
        features_fps=features_fps,
        detect_every=detect_every,
        audio=False if is_features else _audio_choice(audio, no_audio),
        step_precision=step_precision,
        realtime=realtime,
        expressions=expressions and not is_features,
    )
    predictor = Predictor(checkpoint, None if is_features else backbone, config)
    hears = getattr(predictor, "fusion", False) and not is_features
    shows = predictor.expressions
    if not is_features:
        _warn_face_stage(predictor)
    live = predictor.stream(source)
    rows = []
    reported, last_report = 0, 0.0
    try:
        for row in live:
            rows.append(row)
            if not quiet and len(rows) == 1:
                typer.echo(
                    "frame\ttime\ttrack\tvalence\tarousal\tface\tdropped\tconfidence"
                    + ("\tvoice" if hears else "")
                    + ("\texpression" if shows else "")
                )
            if not quiet:
                typer.echo(
                    f"{row.frame}\t{row.time:.3f}\t{row.track or '-'}\t{row.valence:+.4f}\t{row.arousal:+.4f}\t"
                    f"{int(row.face)}\t{int(row.dropped)}\t{row.confidence:.3f}"
                    + (f"\t{int(bool(row.voice))}" if hears else "")
                    + (f"\t{_top_expression(row)}" if shows else "")
                )
            now = time.monotonic()
            if live.dropped > reported and now - last_report >= 1.0:
                typer.secho(
                    f"dropped {live.dropped} frames so far to keep up with real time", fg=typer.colors.YELLOW, err=True
                )
                reported, last_report = live.dropped, now
    except KeyboardInterrupt:
        typer.echo("stopped", err=True)
    finally:
        sys.stdout.flush()
    if out is not None:
        _write_rows(out, rows, voice=hears, expressions=shows, model=predictor.model_label)
        from mambava.analysis.summaries import write_stream_summary
        from mambava.media.video import source_name

        write_stream_summary(out, rows, video=source_name(source))
    typer.echo(
        f"{live.frames} frames, {live.processed} through faces+backbone, dropped {live.dropped} frames"
        + (" to keep up with real time" if live.dropped else "")
        + (f"; rows -> {out}" if out is not None else ""),
        err=True,
    )


def _top_expression(row) -> str:
    """The most probable expression of a stream row, with its probability ('-' without a face)."""
    if row.expressions is None:
        return "-"
    from mambava.faces.expression import EXPRESSIONS

    best = max(range(len(EXPRESSIONS)), key=lambda i: row.expressions[i])
    return f"{EXPRESSIONS[best]} {row.expressions[best]:.2f}"


def _write_rows(path: Path, rows, voice: bool = False, expressions: bool = False, model: str = "") -> None:
    import dataclasses

    import pandas as pd

    from mambava.core.fileio import atomic_path
    from mambava.faces.expression import EXPRESSIONS

    columns = ["frame", "time", "track", "valence", "arousal", "face", "dropped", "confidence"] + (
        ["voice"] if voice else []
    )
    table = pd.DataFrame([dataclasses.asdict(r) for r in rows], columns=columns)
    flags = ["face", "dropped"] + (["voice"] if voice else [])
    table[flags] = table[flags].fillna(False).astype("int8")
    # OpenFace's names, as predict writes them
    table["timestamp"], table["success"] = table["time"], table["face"]
    if expressions:  # NaN where the face was not found, as predict writes them
        values = [r.expressions if r.expressions is not None else (float("nan"),) * len(EXPRESSIONS) for r in rows]
        table[list(EXPRESSIONS)] = pd.DataFrame(values, columns=list(EXPRESSIONS), index=table.index)
    table["model"] = model
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")


def submit_write_command(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help=CHECKPOINT_HELP),
    features: Path = typer.Option(..., "--features", help="Feature store holding the test videos."),
    out: Path = typer.Option(..., "--out", "-o", help="Submission file to write."),
    frame_counts: Optional[Path] = typer.Option(
        None,
        "--frame-counts",
        help="ABAW's frame list or sample submission for the test set: the frame counts "
        "(default: the raw test videos under --root).",
    ),
    test_list: Optional[Path] = typer.Option(
        None, "--test-list", help="Test-set video list (default: from --root, else the videos of --frame-counts)."
    ),
    root: Optional[Path] = typer.Option(
        None, "--root", help="Aff-Wild2 root: the test list, and frame counts from its raw videos."
    ),
    allow_length_mismatch: bool = typer.Option(
        False,
        "--allow-length-mismatch",
        help="Where the stored frames differ from a video's count, carry the "
        "last prediction over or cut, with a warning, instead of refusing.",
    ),
    windowing: str = typer.Option(
        "windows", "--windowing", help="windows (300/200, mean-stitched, as evaluate) or full."
    ),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
) -> None:
    """Run a temporal model over the test videos' stored features and write the ABAW submission file
    (image_location,valence,arousal; every frame of every test video, values clipped to [-1, 1]).

    Frame counts come from --frame-counts (ABAW's own list: it scores against it), else from the raw test
    videos under --root; a test video whose stored features have another length is refused, naming both counts,
    unless --allow-length-mismatch."""
    from mambava.cli.data import official_frame_counts
    from mambava.data.submission import write_submission
    from mambava.inference.predict import Predictor, submission_predictions

    videos, counts = official_frame_counts(test_list, root, frame_counts, "submit write")
    _make_folder(out.parent)
    predictor = Predictor(checkpoint, windowing=windowing, stitching="mean", device=device)  # as evaluated
    predictions = submission_predictions(
        predictor, features, counts, progress=True, allow_length_mismatch=allow_length_mismatch
    )
    write_submission(out, predictions, counts)
    typer.echo(f"{out}: {len(videos)} test videos, {sum(counts.values())} frames")


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_command)
    app.command("stream")(stream_command)
    from mambava.cli.data import submit_app

    submit_app.command("write")(submit_write_command)
