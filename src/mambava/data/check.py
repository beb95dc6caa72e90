"""`mambava data check`: scan an Aff-Wild2 / ABAW release (`mambava.data.affwild2`) for what training, evaluation and
a submission need, and report what is missing or malformed (split counts, annotations against frames, crops,
raw videos without sound)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from mambava.core.errors import MambavaError
from mambava.core.metrics import INVALID_LABEL
from mambava.core.progress import track_items
from mambava.data.affwild2 import SPLITS, AffWild2, describe_layout, verify_crop
from mambava.media.video import has_audio


@dataclasses.dataclass
class SplitSummary:
    """Counts for one split. `frames` sums n_frames; `annotated_frames` counts frames whose label is not -5;
    `crop_frames` counts frames 1..n_frames that have a crop and `missing_crops` those that have none."""

    split: str
    videos: int = 0
    frames: int = 0
    annotated_frames: int = 0
    crop_frames: int = 0
    missing_crops: int = 0
    videos_without_crops: list[str] = dataclasses.field(default_factory=list)
    mismatches: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class DataSummary:
    """Result of `check(root)`. `problems` are errors (bad annotation, no crops, unreadable image, ...);
    `mismatches` inside each split are warnings (annotation length != video frames, crops past the end)."""

    root: Path
    test_list: Path | None
    splits: dict[str, SplitSummary]
    problems: list[str]
    unannotated_crop_folders: list[str]
    unreadable_crops: list[str]
    videos_without_audio: list[str] = dataclasses.field(default_factory=list)  # raw videos with no sound track

    @property
    def ok(self) -> bool:
        return not self.problems

    def table(self):
        """A rich Table of the per-split counts."""
        from rich import box
        from rich.table import Table

        table = Table(title=f"Aff-Wild2 at {self.root}", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        for header in ("split", "videos", "frames", "labelled", "crops", "missing", "no crops", "mismatch"):
            table.add_column(header, justify="left" if header == "split" else "right", no_wrap=True)
        for s in self.splits.values():
            table.add_row(
                s.split,
                str(s.videos),
                str(s.frames),
                str(s.annotated_frames) if s.split != "test" else "-",
                str(s.crop_frames),
                str(s.missing_crops),
                str(len(s.videos_without_crops)),
                str(len(s.mismatches)),
            )
        return table

    def print(self, console=None) -> None:
        """Pretty-print the table, then each mismatch (warning) and problem (error), one per line."""
        from rich.console import Console

        console = console or Console()
        console.print(self.table())
        console.print(
            "labelled: frames with a label (not -5); crops / missing: frames with / without a face crop; "
            "no crops: videos whose crop folder is missing or empty; mismatch: annotation length != video "
            "frames, or crops past the last frame",
            highlight=False,
        )
        console.print(f"test-set list: {self.test_list if self.test_list else 'none found'}")
        if self.unannotated_crop_folders:
            console.print(
                f"{len(self.unannotated_crop_folders)} crop folder(s) in no split: "
                + ", ".join(self.unannotated_crop_folders[:10])
                + (" ..." if len(self.unannotated_crop_folders) > 10 else "")
            )
        if self.videos_without_audio:  # a warning: their audio features are masked (docs/audio.md)
            console.print(
                f"{len(self.videos_without_audio)} raw video(s) without sound: "
                + ", ".join(self.videos_without_audio[:10])
                + (" ..." if len(self.videos_without_audio) > 10 else ""),
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        for s in self.splits.values():
            for line in s.mismatches:
                console.print(f"warning: {line}", markup=False, highlight=False, soft_wrap=True)
        for line in self.problems:
            console.print(f"error: {line}", markup=False, highlight=False, style="red", soft_wrap=True)
        console.print("OK" if self.ok else f"{len(self.problems)} problem(s)")


def check(
    root: str | os.PathLike,
    test_list: str | os.PathLike | None = None,
    verify_images: bool = False,
    progress: bool = True,
) -> DataSummary:
    """Scan a dataset root: per split, videos, frames, annotated frames, crops present / missing, videos
    with no crops, and mismatches (annotation length vs. the raw video's frame count; crops numbered past
    the last frame). Bad annotations and missing crop folders are collected as problems rather than raised.
    `verify_images=True` also decodes every crop (slow) and reports unreadable ones."""
    dataset = AffWild2(root, test_list)
    summary = DataSummary(
        root=dataset.root,
        test_list=dataset.test_list_path,
        splits={split: SplitSummary(split) for split in SPLITS},
        problems=[],
        unannotated_crop_folders=sorted(set(dataset.crop_videos) - set(dataset.videos)),
        unreadable_crops=[],
    )
    jobs = [(split, video) for split in SPLITS for video in dataset.splits[split]]
    if not jobs:
        summary.problems.append(f"{dataset.root}: no videos found: {describe_layout(dataset.root)}")
    for split, video in track_items(jobs, "checking videos", enabled=progress):
        _check_video(dataset, split, video, summary, verify_images)

    for stem, path in sorted(dataset.raw_videos.items()):
        try:
            if not has_audio(path):
                summary.videos_without_audio.append(stem)
        except MambavaError:
            pass  # an unreadable video: its frame count check reports it
    return summary


def _check_video(dataset: AffWild2, split: str, video: str, summary: DataSummary, verify_images: bool) -> None:
    s = summary.splits[split]
    s.videos += 1
    labels = None
    if split != "test":
        try:
            labels = dataset.read_annotation(video)
        except MambavaError as error:
            summary.problems.append(str(error))
    try:
        frames = dataset.crop_frames(video)
    except MambavaError as error:
        frames = []
        s.videos_without_crops.append(video)
        summary.problems.append(str(error))
    n_frames = None
    if dataset.video_path(video) is not None:
        try:
            n_frames = dataset.n_frames(video)
        except MambavaError as error:
            summary.problems.append(str(error))
    if labels is not None:
        s.annotated_frames += int((labels != INVALID_LABEL).all(1).sum())
        if n_frames is not None and n_frames != len(labels):
            s.mismatches.append(
                f"{video}: annotation has {len(labels)} frames, video {dataset.video_path(video)} has {n_frames}"
                f" (truncated to {min(n_frames, len(labels))})"
            )
        elif n_frames is None:
            n_frames = len(labels)
    if n_frames is None:
        n_frames = frames[-1] if frames else 0
    s.frames += n_frames
    inside = sum(1 for f in frames if 1 <= f <= n_frames)
    s.crop_frames += inside
    s.missing_crops += n_frames - inside
    if inside < len(frames):
        s.mismatches.append(f"{video}: {len(frames) - inside} crop(s) numbered outside frames 1..{n_frames}")
    if verify_images:
        for frame in frames:
            reason = verify_crop(dataset.crop_path(video, frame))
            if reason is not None:
                summary.unreadable_crops.append(str(dataset.crop_path(video, frame)))
                summary.problems.append(reason)
