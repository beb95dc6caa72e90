"""`mambava data check ROOT`, `mambava data folds ROOT`, and `mambava submit validate FILE`.

The `submit` group (`submit_app`) is shared: the stage that runs a model to write a submission adds its
command to it (`from mambava.cli.data import submit_app`, then `@submit_app.command("write")`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mambava.core.errors import MambavaError

data_app = typer.Typer(help="Aff-Wild2 data: check a dataset root, make cross-validation folds.", no_args_is_help=True)
submit_app = typer.Typer(help="ABAW valence-arousal submission files.", no_args_is_help=True)

TEST_LIST_HELP = "Test-set video list (default: search ROOT for *test*set*.txt)."


@data_app.command("check")
def check_command(
    root: Path = typer.Argument(..., help="Aff-Wild2 root (VA_Estimation_Challenge/, cropped_aligned/, ...)."),
    test_list: Optional[Path] = typer.Option(None, "--test-list", help=TEST_LIST_HELP),
    verify_images: bool = typer.Option(False, "--verify-images", help="Also decode every crop (slow)."),
) -> None:
    """Scan a dataset root: videos, frames, labelled frames, missing crops, mismatches per split.

    Exits 1 when a problem (bad annotation, no crops, unreadable image) was found."""
    from rich.console import Console

    from mambava.data.check import check

    summary = check(root, test_list=test_list, verify_images=verify_images)
    summary.print(Console())
    if not summary.ok:
        raise typer.Exit(1)


@data_app.command("folds")
def folds_command(
    root: Path = typer.Argument(..., help="Aff-Wild2 root."),
    out: Path = typer.Option(Path("folds.yaml"), "--out", "-o", help="Folds file to write (.yaml or .json)."),
    n_folds: int = typer.Option(5, "--n-folds", help="Cross-validation folds besides the official split."),
    seed: int = typer.Option(0, "--seed", help="Shuffle seed."),
) -> None:
    """Write fold 0 (official split) and N cross-validation folds to a YAML/JSON file.

    The cross-validation folds cover train+validation videos and keep <v>, <v>_left and <v>_right in one
    fold; the same root, N and seed always give the same file."""
    from rich.console import Console
    from rich.table import Table

    from mambava.data.affwild2 import AffWild2
    from mambava.data.folds import make_folds, save_folds

    dataset = AffWild2(root)
    folds = make_folds(dataset.splits["train"], dataset.splits["validation"], n_folds=n_folds, seed=seed)
    save_folds(out, folds)
    table = Table(title=f"folds (seed {seed}) -> {out}")
    for column in ("fold", "train videos", "validation videos"):
        table.add_column(column, justify="right")
    for k, fold in folds.items():
        table.add_row(str(k), str(len(fold["train"])), str(len(fold["validation"])))
    Console().print(table)


@submit_app.command("validate")
def validate_command(
    file: Path = typer.Argument(..., help="Submission file (image_location,valence,arousal)."),
    test_list: Optional[Path] = typer.Option(None, "--test-list", help="Test-set video list."),
    root: Optional[Path] = typer.Option(None, "--root", help="Aff-Wild2 root: frame counts from its videos/crops."),
    crops: Optional[Path] = typer.Option(None, "--crops", help="cropped_aligned/ folder: frame count = highest crop."),
    features: Optional[Path] = typer.Option(None, "--features", help="Feature store: frame count = stored frames."),
    frame_counts: Optional[Path] = typer.Option(
        None, "--frame-counts", help="ABAW's frame list or sample submission for the test set."
    ),
) -> None:
    """Check a submission file against the test list and the test videos' frame counts.

    Frame counts come from exactly one of --frame-counts (ABAW's own list, the one it scores against), --root
    (raw video, else annotation length, else highest crop), --crops (highest crop) or --features (stored
    frames). Prints OK, or the first problem as file:line and exits 2."""
    from mambava.data.affwild2 import AffWild2, list_crop_frames, read_test_list
    from mambava.data.store import FeatureStore
    from mambava.data.submission import validate_submission

    if sum(x is not None for x in (root, crops, features, frame_counts)) != 1:
        raise MambavaError(
            "submit validate: give exactly one of --frame-counts, --root, --crops, --features for the frame counts"
        )
    if frame_counts is not None:
        videos, counts = official_frame_counts(test_list, None, frame_counts, "submit validate")
    elif root is not None:
        dataset = AffWild2(root, test_list)
        videos = dataset.splits["test"]
        if not videos:
            raise MambavaError(f"{root}: no test-set list found: pass --test-list")
        counts = dataset.frame_counts(videos)
    else:
        if test_list is None:
            raise MambavaError("submit validate: --test-list is needed with --crops/--features")
        videos = read_test_list(test_list)
        if crops is not None:
            counts = {}
            for video in videos:
                folder = crops / video
                frames = list_crop_frames(folder) if folder.is_dir() else []
                if not frames:
                    raise MambavaError(f"{folder}: no crops for test video {video!r}")
                counts[video] = frames[-1]
        else:
            store = FeatureStore(features)
            counts = {video: store.n_frames(video) for video in videos}
    validate_submission(file, videos, counts)
    typer.echo(f"OK: {file} covers {len(videos)} test videos, {sum(counts.values())} frames")


def official_frame_counts(
    test_list: Optional[Path], root: Optional[Path], frame_counts: Optional[Path], command: str
) -> tuple[list[str], dict[str, int]]:
    """The test videos and their frame counts for a submission: from a frame-counts file (ABAW's frame list or
    sample submission; the test list, where one is given or found under `root`, must name the same videos),
    else from the raw test videos under `root` (each test video must have one)."""
    from mambava.data.affwild2 import VIDEO_DIRS, AffWild2, read_test_list
    from mambava.data.submission import read_frame_counts

    if frame_counts is None and root is None:
        raise MambavaError(
            f"{command}: pass --frame-counts FILE (ABAW's frame list or sample submission) or "
            f"--root ROOT with the raw test videos"
        )
    dataset = AffWild2(root, test_list) if root is not None else None
    videos = dataset.splits["test"] if dataset is not None else read_test_list(test_list) if test_list else None
    if frame_counts is not None:
        counts = read_frame_counts(frame_counts)
        if not videos:
            return list(counts), counts
        missing = [v for v in videos if v not in counts]
        extra = [v for v in counts if v not in set(videos)]
        if missing or extra:
            listing = test_list or (dataset.test_list_path if dataset is not None else None)
            raise MambavaError(
                f"{frame_counts}: does not cover the test-set list {listing}"
                + (f"; no frame count for {missing[0]!r} ({len(missing)} missing)" if missing else "")
                + (f"; {extra[0]!r} is not a test video ({len(extra)} extra)" if extra else "")
            )
        return videos, {v: counts[v] for v in videos}
    if not videos:
        raise MambavaError(f"{root}: no test-set list found: pass --test-list")
    for video in videos:
        if dataset.video_path(video) is None:
            raise MambavaError(
                f"{root}: no raw video for test video {video!r} (looked in {', '.join(f'{d}/' for d in VIDEO_DIRS)}): "
                f"pass --frame-counts FILE"
            )
    return videos, dataset.frame_counts(videos)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
    app.add_typer(submit_app, name="submit")
