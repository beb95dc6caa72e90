"""`mambava faces VIDEO... --out DIR`: aligned 112×112 face crops in the Aff-Wild2 layout, a per-frame CSV
and, with --preview, a contact sheet per video."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import List, Optional

import typer

from mambava.cli.options import (
    detect_every_option,
    engine_option,
    identities_option,
    landmark_source,
    landmarks_option,
    persons_option,
    ray_address_option,
    ray_options,
)
from mambava.core.errors import MambavaError, OutputError


def faces_command(
    videos: Optional[List[str]] = typer.Argument(
        None,
        help="Video files (any container FFmpeg reads), image folders, "
        "images, a webcam index (0) or a stream URL/device.",
    ),
    out: Optional[Path] = typer.Option(
        None,
        "--out",
        "-o",
        help="Output folder (Aff-Wild2 cropped_aligned layout); with --dataset, the dataset root to write.",
    ),
    dataset: Optional[Path] = typer.Option(
        None,
        "--dataset",
        help="A dataset root: crops of every raw video under its videos/ into OUT/cropped_aligned/ (resumable).",
    ),
    workers: Optional[int] = typer.Option(
        None, "--workers", "-j", min=1, help="With --dataset and --engine local: videos processed in parallel (1)."
    ),
    engine: str = engine_option(),
    ray_address: Optional[str] = ray_address_option(),
    fps: Optional[float] = typer.Option(None, "--fps", help="Keep at most this many frames per second (default: all)."),
    detector: str = typer.Option(
        "mtcnn",
        "--detector",
        help="mtcnn (5 landmarks, aligned crops), haar (boxes only, centred crops), or package.module:Class.",
    ),
    landmarks: Optional[str] = landmarks_option(),
    persons: bool = persons_option(),
    identities: Optional[Path] = identities_option(),
    min_face: float = typer.Option(40, "--min-face", help="Smallest face to find, pixels (mtcnn/haar)."),
    min_face_fraction: float = typer.Option(
        0.08,
        "--min-face-fraction",
        help="... or this fraction of the frame's shorter side, if larger (0 for small faces in large frames; slower).",
    ),
    min_track_frames: int = typer.Option(3, "--min-track-frames", help="Discard tracks with fewer faces as spurious."),
    size: int = typer.Option(112, "--size", help="Crop size in pixels."),
    detect_every: int = detect_every_option(),
    preview: bool = typer.Option(False, "--preview", help="Also write <video>.preview.png, a contact sheet per track."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Detect, track and align the faces of videos: OUT/<video>/<NNNNN>.jpg (1-based frame numbers; two people
    seen together: <video>_left and <video>_right), OUT/<video>.faces.csv (one row per frame and track:
    frame, time, track, present, image, score, box, 5 landmarks; with dlib's 68 points, x_0..y_67 and
    pose_Rx..pose_Tz; with --persons/--identities, person) and, with --preview, OUT/<video>.preview.png; with
    --persons/--identities, OUT/persons.csv (one set of person ids over all VIDEOS).

    With --dataset ROOT (no VIDEOS): every raw video of the dataset, every frame, into OUT/cropped_aligned/
    in the same layout (OUT defaults to ROOT; OUT's other entries link to ROOT's, so OUT is a dataset root that
    `extract` and training read): the crops `predict` makes, to train on. Finished videos are skipped. With
    --engine ray, one Ray task per video (docs/scaling.md)."""
    from rich.console import Console
    from rich.markup import escape

    from mambava.faces import get_detector

    console = Console(stderr=True, soft_wrap=True)  # paths stay whole, to copy
    ray = ray_options(engine, ray_address, progress=not quiet)
    if ray is not None and dataset is None:
        raise MambavaError("faces --engine ray: with --dataset ROOT (the corpus job); VIDEOS run here")
    if ray is not None and workers is not None:
        raise MambavaError("--workers: the local engine's processes; --engine ray runs one task per video")
    if detect_every < 1:
        raise MambavaError(f"--detect-every must be a whole number >= 1, got {detect_every}")
    kwargs = (
        {"min_face_size": min_face, "min_face_fraction": min_face_fraction} if detector in ("mtcnn", "haar") else {}
    )
    source = landmark_source(landmarks)
    if source is not None:
        from mambava.faces.landmarks import landmark_sources

        # recorded with the crops; each worker loads it
        kwargs["landmarks"] = source if source in landmark_sources() else str(Path(source).resolve())
    persons = persons or identities is not None
    if dataset is not None:
        if videos:
            raise MambavaError("faces: give VIDEOS or --dataset ROOT, not both")
        if persons:
            raise MambavaError("faces --dataset: --persons and --identities are for VIDEOS")
        if fps is not None:
            raise MambavaError("faces --dataset: every frame is processed (crops are named by frame), no --fps")
        _dataset_faces(
            console, dataset, out, detector, kwargs, min_track_frames, workers or 1, quiet, detect_every, ray
        )
        return
    if not videos or out is None:
        raise MambavaError("faces: give VIDEOS and --out DIR, or --dataset ROOT")
    det = get_detector(detector, **kwargs)
    gallery = None
    if persons:  # without the faces extra: one line now, not one per video
        from mambava.faces.dlib_models import face_recognizer

        face_recognizer()
    if identities is not None:  # read (and a bad photo refused) before anything is written
        from mambava.faces.identity import load_gallery

        gallery = load_gallery(identities, det)
    failed = 0
    results = []
    for video in videos:
        try:
            result = _one_video(
                video,
                out,
                console,
                fps=fps,
                detector=det,
                crop_size=size,
                min_track_frames=min_track_frames,
                preview=preview,
                progress=not quiet,
                detect_every=detect_every,
                persons=persons,
                gallery=gallery,
            )
            results.append(result)
        except OutputError:  # the output folder cannot be written: no fault of this video, every next one fails too
            raise
        except MambavaError as error:  # this video only: the batch goes on, the count and exit code tell
            failed += 1
            console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
    if persons and results:
        _batch_persons(results, out, gallery, console)
    if failed:
        console.print(f"[red]{failed} of {len(videos)} videos failed[/red]", highlight=False)
        raise typer.Exit(2)


def _batch_persons(results: list, out: Path, gallery, console) -> None:
    """One set of person ids over the batch: each CSV's `person` column rewritten, and OUT/persons.csv."""
    from mambava.faces.identity import assign_persons, write_persons_csv

    tracks = [t for result in results for t in result.identities or []]
    persons = assign_persons(tracks, gallery)
    given = {(t.video, t.track): p for t, p in zip(tracks, persons)}
    for result in results:
        result.write_csv({t.name: given[(result.video, t.name)] for t in result.tracks})
    path = write_persons_csv(out, tracks, persons)
    console.print(f"{path}: {len(set(persons))} person(s) in {len(tracks)} track(s)", highlight=False)


def _one_video(video: str, out: Path, console, **options):
    from mambava.faces import extract_faces
    from mambava.media.video import VideoWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", VideoWarning)
        result = extract_faces(video, out, **options)
    for warning in caught:
        if issubclass(warning.category, VideoWarning):
            console.print(f"[yellow]warning:[/yellow] {warning.message}")
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    n = len(result.frames)
    console.print(
        f"[bold]{result.video}[/bold]: {n} frames, a face in {result.frames_with_face} "
        f"({100 * result.frames_with_face / max(n, 1):.1f}%), {len(result.tracks)} track(s)"
        + (f", {result.dropped_tracks} short track(s) dropped" if result.dropped_tracks else "")
    )
    for track in result.tracks:
        console.print(f"  {track.directory}/  {len(track.present)} crops, {len(track.missing)} frames missing")
    console.print(f"  {result.csv_path}" + (f"\n  {result.preview_path}" if result.preview_path else ""))
    return result


def _dataset_faces(
    console,
    root: Path,
    out: Optional[Path],
    detector: str,
    kwargs: dict,
    min_track_frames: int,
    workers: int,
    quiet: bool,
    detect_every: int = 1,
    ray=None,
) -> None:
    from rich.markup import escape

    from mambava.faces.dataset import extract_dataset_faces

    def report(done: int, total: int, item) -> None:
        if item.error is not None:
            console.print(f"[red]error:[/red] {escape(item.error)}", highlight=False, soft_wrap=True)
        elif not quiet and not item.skipped:
            console.print(
                f"[{done}/{total}] {item.video}: {item.frames} frames, "
                + ", ".join(f"{name} {n} crops" for name, n in item.tracks.items())
                + f" ({item.frames / max(item.seconds, 1e-9):.0f} frames/s)",
                highlight=False,
            )

    options = dict(
        detector=detector,
        detector_kwargs=kwargs,
        min_track_frames=min_track_frames,
        progress=report,
        detect_every=detect_every,
    )
    run = None
    if ray is not None:
        from mambava.distributed import faces_dataset_ray

        def warn(line: str) -> None:
            console.print(f"[yellow]warning:[/yellow] {escape(line)}", highlight=False, soft_wrap=True)

        result, run = faces_dataset_ray(root, out, **options, on_warning=warn, options=ray, console=console)
    else:
        result = extract_dataset_faces(root, out, workers=workers, **options)
    for item in result.videos:
        if item.unmatched:
            console.print(
                f"[yellow]warning:[/yellow] {item.video}: no crop folder for "
                f"{', '.join(item.unmatched)} (tracks found: {', '.join(item.tracks) or 'none'})",
                highlight=False,
            )
    made = [v for v in result.videos if not v.skipped and v.error is None]
    skipped = sum(v.skipped for v in result.videos)
    rate = f", {result.frames_per_second:.0f} frames/s per worker" if made else ""
    console.print(
        f"{result.crops_dir}: {len(made)} video(s) done ({sum(v.frames for v in made)} frames{rate}), "
        f"{skipped} already there"
        + (f", {len(result.failed)} failed" if result.failed else "")
        + (f"; linked from {root}: {', '.join(result.linked)}" if result.linked else ""),
        highlight=False,
    )
    if run is not None:
        console.print(run.describe(), highlight=False)
    if result.failed:
        raise typer.Exit(2)


def train_landmarks_command(
    source: Path = typer.Argument(
        ...,
        help="A synthetic dataset root (mambava synth: its raw videos and true "
        "landmarks), or a CSV: image, left_eye_x, left_eye_y, right_eye_x, "
        "right_eye_y, nose_x, nose_y, mouth_left_x, mouth_left_y, "
        "mouth_right_x, mouth_right_y (one face per row, image paths "
        "relative to the CSV).",
    ),
    out: Path = typer.Option(..., "--out", "-o", help="The refiner file to write (.safetensors)."),
    epochs: int = typer.Option(8, "--epochs", min=1, help="Passes over the faces (fresh perturbations each)."),
    every: int = typer.Option(3, "--every", min=1, help="Synthetic dataset: every K-th frame of each video."),
    split: str = typer.Option("train", "--split", help="Synthetic dataset: the split whose people to train on."),
    size: int = typer.Option(64, "--size", min=32, help="The refiner's patch size in pixels."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No per-epoch lines."),
) -> None:
    """Train a landmark refiner: a small CNN that moves a detector's 5 points onto the true ones (cascaded
    regression from perturbed starts). Then `faces`, `predict`, `stream` and `serve` take it with --landmarks;
    make a model's training crops and its predictions with the same one (docs/faces.md, Learned landmarks)."""
    from rich.console import Console

    from mambava.faces.landmarks import RefinerConfig, csv_refiner_samples, train_refiner
    from mambava.synth.truth_faces import synth_refiner_samples

    console = Console(stderr=True, soft_wrap=True)  # paths stay whole, to copy
    if out.is_dir() or not out.parent.is_dir():  # found now, not after the training
        raise MambavaError(
            f"{out}: " + ("is a folder; give a file name" if out.is_dir() else "its folder does not exist")
        )
    if source.is_dir():
        from mambava.synth import read_meta

        if not (source / "synth_meta.json").is_file():
            raise MambavaError(f"{source}: not a synthetic dataset (no synth_meta.json); give a landmarks CSV")
        names = read_meta(source)["splits"].get(split, [])
        if not names:
            raise MambavaError(f"{source}: no people in split {split!r}")
        frames, samples = synth_refiner_samples(source, names, every=every, workers=2)
    else:
        frames, samples = csv_refiner_samples(source)
    console.print(f"{len(samples)} faces in {len(frames)} images from {source}", highlight=False)

    def report(epoch: int, loss: float) -> None:
        if not quiet:
            console.print(f"epoch {epoch + 1}/{epochs}: loss {loss:.4f}", highlight=False)

    refiner = train_refiner(frames, samples, RefinerConfig(size=size, epochs=epochs), progress=report)
    console.print(f"wrote {refiner.save(out)}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("faces")(faces_command)
    app.command("train-landmarks")(train_landmarks_command)
