"""`mambava synth --out DIR` (a synthetic affect-video dataset in the Aff-Wild2 layout) and `mambava demo`
(every stage of the pipeline on such a dataset, on CPU, ending with a report)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def synth_command(
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Dataset root to write (new or empty folder, or an earlier synthetic dataset, which is replaced).",
    ),
    n_train: int = typer.Option(16, "--train", help="Training videos."),
    n_val: int = typer.Option(4, "--val", help="Validation videos."),
    n_test: int = typer.Option(4, "--test", help="Test videos (labels go to synth_ground_truth/, not the layout)."),
    min_frames: int = typer.Option(450, "--min-frames", help="Shortest video, frames."),
    max_frames: int = typer.Option(750, "--max-frames", help="Longest video, frames."),
    two_person: float = typer.Option(0.2, "--two-person", help="Fraction of two-person videos (<v>_left/_right)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same annotations and crops."),
    videos: bool = typer.Option(True, "--videos/--no-videos", help="Also write the raw H.264 videos."),
    voices: bool = typer.Option(
        True,
        "--voices/--no-voices",
        help="Each person speaks: the raw videos' AAC sound track (see mambava.synth.voice).",
    ),
    workers: int = typer.Option(0, "--workers", help="Processes (0: up to 2)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Generate synthetic face videos whose expressions follow ground-truth valence/arousal, written exactly in
    the Aff-Wild2 layout (videos/, cropped_aligned/, VA_Estimation_Challenge/, a test-set list), plus the
    truth (synth_ground_truth/, synth_meta/). See `mambava.synth`."""
    from rich.console import Console

    from mambava.core.progress import ProgressBar
    from mambava.synth import SynthConfig, generate

    cfg = SynthConfig(
        n_train=n_train,
        n_val=n_val,
        n_test=n_test,
        frames=(min_frames, max_frames),
        two_person_fraction=two_person,
        seed=seed,
        write_videos=videos,
        voices=voices,
        workers=workers,
    )
    console = Console(stderr=True)
    with ProgressBar("synth", enabled=not quiet) as progress:
        summary = generate(out, cfg, progress=progress)
    console.print(summary.describe())


def demo_command(
    out: Path = typer.Option(Path("demo_out"), "--out", "-o", help="Folder for the dataset, runs and report."),
    full: bool = typer.Option(
        False,
        "--full",
        help="Everything: more data, the learned landmarks for our crops, the audio-visual ablation, "
        "distillation, every held-out raw video through predict (about 23 minutes on 2 cores).",
    ),
    quick: bool = typer.Option(False, "--quick", help="The CI-sized run of every stage (the generator's crops)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the generated dataset and of training."),
    threads: int = typer.Option(
        1,
        "--threads",
        help="torch threads (0: torch's default). One is fastest on a "
        "2-core machine, above all a busy one; see DemoConfig.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the stage lines, no progress bars."),
    own_crops: Optional[bool] = typer.Option(
        None,
        "--own-crops/--generator-crops",
        help="Train on crops made by our "
        "own faces stage from the raw videos (as predict makes them) and score "
        "every held-out raw video through predict beside the generator's ideal "
        "crops, or on the generator's crops (default: own, generator's with "
        "--quick).",
    ),
    both_crops: bool = typer.Option(
        False,
        "--both-crops",
        help="With --own-crops: fine-tune the backbone and train "
        "the temporal models on the generator's crops as well as ours (the same faces "
        "as two aligners crop them; docs/faces.md, Crops for training).",
    ),
    learned_landmarks: Optional[bool] = typer.Option(
        None,
        "--learned-landmarks/--mtcnn-landmarks",
        help="With --own-crops: "
        "train the landmark refiner on the training videos' true landmarks and "
        "refine MTCNN's points with it (docs/faces.md, Learned landmarks; default: with --full).",
    ),
    audio: Optional[bool] = typer.Option(
        None,
        "--audio/--no-audio",
        help="The audio-visual ablation: the voices' features, "
        "audio-only, early and mid fusion models beside the visual one (default: with --full and --quick).",
    ),
) -> None:
    """Every stage of the pipeline on a generated face-video dataset, on CPU: generate -> our faces stage on the
    raw videos -> fine-tune a small ViT (partial freezing, frame-level CCC) -> extract features -> train Mamba-VA
    and a frame-wise baseline -> evaluate on held-out subjects -> predict on a held-out raw video -> OUT/report.md.
    About 3.5 minutes on 2 cores; --full adds the rest (about 23 minutes on 2 cores)."""
    from mambava.core.errors import MambavaError
    from mambava.demo import DemoConfig, run_demo

    if full and quick:
        raise MambavaError("--full and --quick: choose one")
    options = dict(seed=seed, threads=threads, both_crops=both_crops)
    for name, value in (("own_crops", own_crops), ("audio", audio), ("learned_landmarks", learned_landmarks)):
        if value is not None:
            options[name] = value
    cfg = DemoConfig.full(**options) if full else DemoConfig.quick(**options) if quick else DemoConfig(**options)
    result = run_demo(out, cfg, progress=not quiet)
    typer.echo(f"report: {result.report}")


def register(app: typer.Typer) -> None:
    app.command("synth")(synth_command)
    app.command("demo")(demo_command)
