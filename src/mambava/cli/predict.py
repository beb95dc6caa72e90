"""`mambava predict` (offline: CSV, plots, overlay), `mambava stream` (live, frame by frame) and
`mambava submit write` (the ABAW test-set submission); see mambava.inference.predict and mambava.inference.stream."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from mambava.cli.options import (
    backbone_workers_option,
    detect_every_option,
    engine_option,
    identities_option,
    landmark_source,
    landmarks_option,
    persons_option,
    precision_option,
    ray_address_option,
    ray_options,
)
from mambava.core.errors import MambavaError
from mambava.core.fileio import make_folder

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
    landmarks: Optional[str] = landmarks_option(),
    persons: bool = persons_option(),
    identities: Optional[Path] = identities_option(),
    detect_every: int = detect_every_option(),
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
    engine: str = engine_option(),
    ray_address: Optional[str] = ray_address_option(),
    backbone_workers: Optional[int] = backbone_workers_option(),
) -> None:
    """Per-frame valence/arousal for videos (or precomputed features): <name>.csv (+ .parquet with pyarrow),
    <name>.summary.csv (one row per track), <name>.va.png, <name>.circumplex.png and, with --overlay,
    <name>.overlay.mp4 in the output folder; with --events also <name>.events.csv and <name>.events.png.

    Columns: video, track, frame, time, valence, arousal, face (0 = no face found: the track's last
    feature was carried over), x1, y1, x2, y2 (face box); with dlib's 68 points (--landmarks auto/dlib68)
    x_0..x_67, y_0..y_67 and pose_Rx..pose_Tz; with --persons or --identities, person (one set of ids over all
    inputs; OUT/persons.csv: person, videos, tracks, frames, thumbnail); with --expressions (always with the
    default expression-va) the seven expression probabilities anger..neutral; and model (the temporal model's
    name). With --engine ray, one Ray task per input and the backbone in an actor pool on --device
    (docs/scaling.md; the expression net, 58k weights, runs in each input's task).

    Without --checkpoint: the built-in expression-va (FER2013 expressions on the circumplex; not Mamba-VA)."""
    from mambava.analysis.summaries import NORMALISATIONS
    from mambava.core.errors import error_line
    from mambava.inference.catalog import resolve_model
    from mambava.inference.config import PredictConfig
    from mambava.inference.files import FEATURE_SUFFIXES, OutputOptions, find_inputs, predict_input, write_input
    from mambava.inference.predict import Predictor

    if normalise not in NORMALISATIONS or (baseline is not None and events is None):
        raise MambavaError(
            "--baseline needs --events"
            if normalise in NORMALISATIONS
            else f"--normalise: one of {', '.join(NORMALISATIONS)}"
        )
    ray = ray_options(engine, ray_address, backbone_workers)
    if ray is not None and (persons or identities is not None):
        raise MambavaError(
            "--persons/--identities: one set of person ids over all inputs, made in one process: not with --engine ray"
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
        # with --engine ray the backbone runs on --device in its actors; the temporal model in the CPU tasks
        device="cpu" if ray is not None else device,
        batch_size=batch_size,
        precision=precision,
        fps=fps,
        features_fps=features_fps,
        progress=ray is None,
        audio=_audio_choice(audio, no_audio),
        detect_every=detect_every,
        persons=persons,
        identities=None if identities is None else str(identities),
        expressions=expressions,
    )
    predictor = Predictor(checkpoint, backbone if videos else None, config)
    if videos:
        _warn_face_stage(predictor)
    output = OutputOptions(out, plots, overlay, fps, events, baseline, normalise)
    if ray is not None:
        from mambava.distributed import predict_ray

        done = predict_ray(predictor, paths, output, backbone=backbone, device=device, on_report=_show, options=ray)
        typer.echo(done.run.describe(), err=True)
        failed = done.failed
    else:
        failed = 0
        identified = []  # with persons: (path, name, table, its tracks' identities), written once all are read
        for path in paths:
            if config.persons and path in videos:
                try:
                    identified.append((path, Path(path).stem, *predictor.predict_with_identities(path)))
                except (MambavaError, OSError) as error:  # OSError: an input that cannot be read
                    failed += 1
                    typer.secho(f"error: {error_line(error)}", fg=typer.colors.RED, err=True)
                continue
            report = predict_input(predictor, path, output, progress=True)
            _show(report)
            failed += report.error is not None
        if identified:

            def write(path, name: str, table) -> None:
                _show(write_input(path, table, output, True, progress=True))

            failed += _write_identified(identified, write, out, predictor.gallery)
    if failed:
        typer.secho(f"{failed} of {len(paths)} inputs failed", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)


def _write_identified(identified: list, write, out: Path, gallery) -> int:
    """The batch's person ids (`mambava.inference.predict.name_persons`) into each table, each input written,
    then OUT/persons.csv. Returns the number of inputs that failed to be written."""
    from mambava.cli import error_line
    from mambava.faces.identity import write_persons_csv
    from mambava.inference.predict import name_persons

    tracks, persons = name_persons([item[2] for item in identified], [item[3] for item in identified], gallery)
    failed = 0
    for path, name, table, _ in identified:
        try:
            write(path, name, table)
        except (MambavaError, OSError) as error:
            failed += 1
            typer.secho(f"error: {error_line(error)}", fg=typer.colors.RED, err=True)
    typer.echo(f"{write_persons_csv(out, tracks, persons)}: {len(set(persons))} person(s) in {len(tracks)} track(s)")
    from mambava.analysis.summaries import summarize_persons, write_csv

    summary = write_csv(summarize_persons([item[2] for item in identified]), out / "persons.summary.csv")
    typer.echo(f"{summary}: valence and arousal per person over all inputs")
    return failed


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
        make_folder(path)
    except OSError as error:
        raise MambavaError(f"{path}: cannot create the output folder ({error.strerror or error})") from None


def _show(report) -> None:
    """One input's lines, as predict prints them: an error in red, warnings in yellow on stderr, the files on
    stdout."""
    if report.error is not None:
        typer.secho(f"error: {report.error}", fg=typer.colors.RED, err=True)
        return
    for text, kind in report.lines:
        if kind == "out":
            typer.echo(text)
        else:
            typer.secho(text, fg=typer.colors.YELLOW, err=True)


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
    landmarks: Optional[str] = landmarks_option(),
    persons: bool = persons_option(live=True),
    identities: Optional[Path] = identities_option(),
    detect_every: int = detect_every_option(),
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
        persons=persons,
        identities=None if identities is None else str(identities),
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
                    + ("\tperson" if config.persons else "")
                    + ("\texpression" if shows else "")
                )
            if not quiet:
                typer.echo(
                    f"{row.frame}\t{row.time:.3f}\t{row.track or '-'}\t{row.valence:+.4f}\t{row.arousal:+.4f}\t"
                    f"{int(row.face)}\t{int(row.dropped)}\t{row.confidence:.3f}"
                    + (f"\t{int(bool(row.voice))}" if hears else "")
                    + (f"\t{row.person or '-'}" if config.persons else "")
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
        _write_rows(out, rows, voice=hears, person=config.persons, expressions=shows, model=predictor.model_label)
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


def _write_rows(
    path: Path, rows, voice: bool = False, person: bool = False, expressions: bool = False, model: str = ""
) -> None:
    """`stream --out`: the rows as predict's table names them (geometry, person, the expressions, model)."""
    import pandas as pd

    from mambava.core.fileio import atomic_path
    from mambava.faces.expression import EXPRESSIONS

    columns = ["frame", "time", "track", "valence", "arousal", "face", "dropped", "confidence"] + (
        ["voice"] if voice else []
    )
    table = pd.DataFrame([{c: getattr(r, c) for c in columns} for r in rows], columns=columns)
    flags = ["face", "dropped"] + (["voice"] if voice else [])
    table[flags] = table[flags].fillna(False).astype("int8")
    # OpenFace's names, as predict writes them
    table["timestamp"], table["success"] = table["time"], table["face"]
    table = _with_geometry(table, rows)
    if person:  # the track's person (empty on rows without a track), last as in predict's table
        table["person"] = [r.person or "" for r in rows]
    if expressions:  # NaN where the face was not found, as predict writes them
        values = [r.expressions if r.expressions is not None else (float("nan"),) * len(EXPRESSIONS) for r in rows]
        table[list(EXPRESSIONS)] = pd.DataFrame(values, columns=list(EXPRESSIONS), index=table.index)
    table["model"] = model
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")


def _with_geometry(table, rows):
    """`stream --out`'s rows with the 68 points and head pose (when any row has them), NaN where no face."""
    if not any(getattr(r, "landmarks68", None) is not None for r in rows):
        return table
    import pandas as pd

    from mambava.faces.columns import GEOMETRY_COLUMNS, geometry_row

    values = [geometry_row(getattr(r, "landmarks68", None), getattr(r, "pose", None)) for r in rows]
    return pd.concat([table, pd.DataFrame(values, columns=GEOMETRY_COLUMNS, index=table.index)], axis=1)


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
        "windows",
        "--windowing",
        help="windows (the run's windows, 300/200 by default, mean-stitched, as evaluate), full, or chunks "
        "(non-overlapping windows concatenated: with --window 500 the authors' test.py).",
    ),
    window: Optional[int] = typer.Option(None, "--window", help="Window length (default: the run's, else 300)."),
    stride: Optional[int] = typer.Option(
        None, "--stride", help="Window stride (default: the run's, else 200; chunks: the window)."
    ),
    fill: str = typer.Option(
        "forward",
        "--fill",
        help="Frames without a face: forward (the last face's features, as in training) or zeros (the "
        "authors' test set, construct_VA_testset.py:51).",
    ),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
) -> None:
    """Run a temporal model over the test videos' stored features and write the ABAW submission file
    (image_location,valence,arousal; every frame of every test video, values clipped to [-1, 1]).

    Frame counts come from --frame-counts (ABAW's own list: it scores against it), else from the raw test
    videos under --root; a test video whose stored features have another length is refused, naming both counts,
    unless --allow-length-mismatch. The authors' test inference is `--windowing chunks --window 500 --fill zeros`
    (VA/test.py:47-113 on the features of preprocess/construct_VA_testset.py:51-61)."""
    from mambava.cli.data import official_frame_counts
    from mambava.data.submission import write_submission
    from mambava.inference.predict import Predictor, submission_predictions

    videos, counts = official_frame_counts(test_list, root, frame_counts, "submit write")
    _make_folder(out.parent)
    if windowing == "chunks" and window is not None and stride is None:
        stride = window  # (chunks never overlap: a stride is only checked against the window)
    predictor = Predictor(
        checkpoint, windowing=windowing, stitching="mean", window=window, stride=stride, device=device
    )
    predictions = submission_predictions(
        predictor, features, counts, progress=True, allow_length_mismatch=allow_length_mismatch, fill=fill
    )
    write_submission(out, predictions, counts)
    typer.echo(f"{out}: {len(videos)} test videos, {sum(counts.values())} frames")


def register(app: typer.Typer) -> None:
    app.command("predict")(predict_command)
    app.command("stream")(stream_command)
    from mambava.cli.data import submit_app

    submit_app.command("write")(submit_write_command)
