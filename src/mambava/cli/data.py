"""`mambava data check ROOT`, `mambava data folds ROOT`, and `mambava submit validate FILE`.

The `submit` group (`submit_app`) is shared: the stage that runs a model to write a submission adds its
command to it (`from mambava.cli.data import submit_app`, then `@submit_app.command("write")`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mambava.errors import MambavaError

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

    from mambava.affwild2 import check

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

    from mambava.affwild2 import AffWild2
    from mambava.folds import make_folds, save_folds

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
) -> None:
    """Check a submission file against the test list and the test videos' frame counts.

    Frame counts come from exactly one of --root (raw video, else highest crop), --crops (highest crop) or
    --features (stored frames). Prints OK, or the first problem as file:line and exits 2."""
    from mambava.affwild2 import AffWild2, list_crop_frames, read_test_list
    from mambava.features import FeatureStore
    from mambava.submission import validate_submission

    if sum(x is not None for x in (root, crops, features)) != 1:
        raise MambavaError("submit validate: give exactly one of --root, --crops, --features for the frame counts")
    if root is not None:
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


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
    app.add_typer(submit_app, name="submit")
