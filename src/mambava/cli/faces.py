"""`mambava faces VIDEO... --out DIR`: aligned 112×112 face crops in the Aff-Wild2 layout, a per-frame CSV
and, with --preview, a contact sheet per video."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import List, Optional

import typer

from mambava.errors import MambavaError


def faces_command(
    videos: List[str] = typer.Argument(..., help="Video files (any container FFmpeg reads), image folders, images, "
                                                  "a webcam index (0) or a stream URL/device."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder (Aff-Wild2 cropped_aligned layout)."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Keep at most this many frames per second (default: all)."),
    detector: str = typer.Option("mtcnn", "--detector", help="mtcnn (5 landmarks, aligned crops), haar (boxes only, "
                                                            "centred crops), or package.module:Class."),
    min_face: float = typer.Option(40, "--min-face", help="Smallest face to find, pixels (mtcnn/haar)."),
    min_face_fraction: float = typer.Option(0.08, "--min-face-fraction",
                                            help="... or this fraction of the frame's shorter side, if larger "
                                                 "(0 for small faces in large frames; slower)."),
    min_track_frames: int = typer.Option(3, "--min-track-frames", help="Discard tracks with fewer faces as spurious."),
    size: int = typer.Option(112, "--size", help="Crop size in pixels."),
    preview: bool = typer.Option(False, "--preview", help="Also write <video>.preview.png, a contact sheet per track."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Detect, track and align the faces of videos: OUT/<video>/<NNNNN>.jpg (1-based frame numbers; two people
    seen together: <video>_left and <video>_right), OUT/<video>.faces.csv (one row per frame and track:
    frame, time, track, present, image, score, box, 5 landmarks) and, with --preview, OUT/<video>.preview.png."""
    from rich.console import Console
    from rich.markup import escape

    from mambava.faces import get_detector

    console = Console(stderr=True)
    kwargs = {"min_face_size": min_face, "min_face_fraction": min_face_fraction} if detector in ("mtcnn", "haar") else {}
    det = get_detector(detector, **kwargs)
    failed = 0
    for video in videos:
        try:
            _one_video(video, out, console, fps=fps, detector=det, crop_size=size, min_track_frames=min_track_frames,
                       preview=preview, progress=not quiet)
        except MambavaError as error:  # this video only: the batch goes on, the count and exit code tell
            failed += 1
            console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
    if failed:
        console.print(f"[red]{failed} of {len(videos)} videos failed[/red]", highlight=False)
        raise typer.Exit(2)


def _one_video(video: str, out: Path, console, **options) -> None:
    from mambava.faces import extract_faces
    from mambava.video import VideoWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", VideoWarning)
        result = extract_faces(video, out, **options)
    for warning in caught:
        if issubclass(warning.category, VideoWarning):
            console.print(f"[yellow]warning:[/yellow] {warning.message}")
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    n = len(result.frames)
    console.print(f"[bold]{result.video}[/bold]: {n} frames, a face in {result.frames_with_face} "
                  f"({100 * result.frames_with_face / max(n, 1):.1f}%), {len(result.tracks)} track(s)"
                  + (f", {result.dropped_tracks} short track(s) dropped" if result.dropped_tracks else ""))
    for track in result.tracks:
        console.print(f"  {track.directory}/  {len(track.present)} crops, {len(track.missing)} frames missing")
    console.print(f"  {result.csv_path}" + (f"\n  {result.preview_path}" if result.preview_path else ""))


def register(app: typer.Typer) -> None:
    app.command("faces")(faces_command)
