"""The ABAW valence-arousal submission file: writer and validator.

Format (the ABAW challenge's): header `image_location,valence,arousal`, then one line per frame of every test video,
`<video>/<NNNNN>.jpg,<valence>,<arousal>` with 1-based, 5-digit frame numbers (as the crops are named, whether
or not the frame has a crop), values clipped to [-1, 1]. ABAW scores a submission against its own list of
every test video's frames, so the frame counts must come from an official source: the per-video frame list or
sample submission ABAW distributes (`read_frame_counts`), or else the raw test videos
(`mambava.data.affwild2.video_frame_count`), never the crops (frames without a face at the end have none).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from mambava.core.errors import MambavaError
from mambava.core.fileio import atomic_open
from mambava.data.affwild2 import crop_name

HEADER = "image_location,valence,arousal"


def write_submission(
    path: str | os.PathLike,
    predictions: Mapping[str, np.ndarray],
    frame_counts: Mapping[str, int] | None = None,
) -> Path:
    """Write `predictions` {video: (T, 2) valence/arousal} as a submission file, atomically, values clipped to
    [-1, 1], videos in the mapping's order. With `frame_counts`, the videos must be exactly its videos and each
    T must equal its count (MambavaError naming the video otherwise); NaN/Inf is an error too."""
    path = Path(path)
    if frame_counts is not None:
        missing = [v for v in frame_counts if v not in predictions]
        extra = [v for v in predictions if v not in frame_counts]
        if missing or extra:
            raise MambavaError(
                f"{path}: predictions do not match the test videos"
                + (f"; no predictions for {missing[0]!r}" if missing else "")
                + (f"; {extra[0]!r} is not a test video" if extra else "")
                + f" ({len(missing)} missing, {len(extra)} extra)"
            )
    with atomic_open(path, "w", newline="\n") as handle:
        handle.write(HEADER + "\n")
        for video, values in predictions.items():
            if hasattr(values, "detach"):
                values = values.detach().cpu().numpy()
            values = np.asarray(values, dtype=np.float64)
            if values.ndim != 2 or values.shape[1] != 2:
                raise MambavaError(f"{path}: predictions for {video!r} must be (T, 2), got {values.shape}")
            if frame_counts is not None and len(values) != frame_counts[video]:
                raise MambavaError(
                    f"{path}: {len(values)} predictions for {video!r}, which has {frame_counts[video]} frames"
                )
            if not np.isfinite(values).all():
                frame = int(np.argmin(np.isfinite(values).all(1))) + 1
                raise MambavaError(f"{path}: NaN/Inf prediction for {video}/{crop_name(frame)}")
            clipped = np.clip(values, -1.0, 1.0)
            handle.write(
                "".join(
                    f"{video}/{crop_name(i)},{v:.6f},{a:.6f}\n" for i, (v, a) in enumerate(clipped.tolist(), start=1)
                )
            )
    return path


def validate_submission(path: str | os.PathLike, test_videos: Sequence[str], frame_counts: Mapping[str, int]) -> None:
    """Check a submission file against the test-set videos and their frame counts; returns None when it is
    valid, else raises MambavaError naming the first problem, as `file:line: ...` for a bad line (header,
    field count, image location, unknown video, frame out of range, duplicate, value not a finite number in
    [-1, 1], blank line before the end) or `file: ...` for a frame that is missing (the first missing frame
    of the first incomplete video in test-list order). Lines may come in any order."""
    path = Path(path)
    counts = {}
    for video in test_videos:
        if video not in frame_counts:
            raise MambavaError(f"{path}: no frame count for test video {video!r}")
        counts[video] = int(frame_counts[video])
    seen = {video: np.zeros(count + 1, dtype=bool) for video, count in counts.items()}
    try:
        handle = open(path, encoding="utf-8-sig", newline="")
    except OSError as error:
        raise MambavaError(f"{path}: cannot read submission ({error})") from error
    with handle:
        header = handle.readline().rstrip("\r\n")
        if header.strip() != HEADER:
            raise MambavaError(f"{path}:1: header must be {HEADER!r}, got {header!r}")
        blank = None  # blank lines are allowed at the end of the file only
        for number, raw in enumerate(handle, start=2):
            line = raw.rstrip("\r\n")
            if not line.strip():
                blank = blank or number
                continue
            if blank:
                raise MambavaError(f"{path}:{blank}: blank line")
            _check_line(path, number, line, counts, seen)
    for video in counts:
        flags = seen[video][1:]
        if not flags.all():
            frame = int(np.argmin(flags)) + 1
            raise MambavaError(
                f"{path}: {video}/{crop_name(frame)} missing ({int((~flags).sum())} of {counts[video]} frames "
                f"of {video!r} absent)"
            )


def _check_line(path: Path, number: int, line: str, counts: Mapping[str, int], seen: dict[str, np.ndarray]) -> None:
    fields = line.split(",")
    if len(fields) != 3:
        raise MambavaError(f"{path}:{number}: expected 3 comma-separated fields, got {line!r}")
    location, valence, arousal = fields
    video, slash, image = location.rpartition("/")
    stem = image[:-4] if image.endswith(".jpg") else ""
    if not slash or not stem.isdigit() or image != crop_name(int(stem)):
        raise MambavaError(f"{path}:{number}: image_location {location!r} is not <video>/<NNNNN>.jpg")
    if video not in seen:
        raise MambavaError(f"{path}:{number}: {video!r} is not a test-set video")
    frame = int(stem)
    if not 1 <= frame <= counts[video]:
        raise MambavaError(f"{path}:{number}: frame {frame} of {video!r} outside 1..{counts[video]}")
    if seen[video][frame]:
        raise MambavaError(f"{path}:{number}: {location} appears twice")
    seen[video][frame] = True
    for label, text in (("valence", valence), ("arousal", arousal)):
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and -1.0 <= value <= 1.0):
            raise MambavaError(f"{path}:{number}: {label} {text!r} is not a number in [-1, 1]")


def read_frame_counts(path: str | os.PathLike) -> dict[str, int]:
    """{video: frame count} from a file ABAW distributes with the test set, in either of its forms:

    - a frame list or sample submission: lines `<video>/<NNNNN>.jpg` (any further comma-separated fields, such
      as placeholder valence/arousal, are ignored), an optional `image_location,...` header; a video's count
      is its highest frame number;
    - a per-video count list: lines `<video>,<frames>` (or whitespace-separated), an optional header.

    Videos keep their first-appearance order. Blank lines and `#` comments are skipped. MambavaError naming
    `file:line` for a line of neither form, a frame listed twice or a video counted twice; `file` for no
    videos at all."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise MambavaError(f"{path}: cannot read the frame counts ({error})") from error
    counts: dict[str, int] = {}
    frames_seen: dict[str, dict[int, int]] = {}
    kind = None  # "frames" or "counts", fixed by the first data line
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in (line.split(",") if "," in line else line.split())]
        if kind is None and not counts and _is_count_header(fields):
            continue
        location = fields[0]
        video, slash, image = location.rpartition("/")
        line_kind = "frames" if slash else "counts"
        if kind is not None and line_kind != kind:
            raise MambavaError(f"{path}:{number}: {line!r} mixes a per-video count list and a frame list")
        kind = line_kind
        if kind == "frames":
            stem = image[:-4] if image.endswith(".jpg") else ""
            if not video or not stem.isdigit() or int(stem) < 1 or image != crop_name(int(stem)):
                raise MambavaError(f"{path}:{number}: {location!r} is not <video>/<NNNNN>.jpg")
            frame = int(stem)
            seen = frames_seen.setdefault(video, {})
            if frame in seen:
                raise MambavaError(f"{path}:{number}: {location} listed twice (first on line {seen[frame]})")
            seen[frame] = number
            counts[video] = max(counts.get(video, 0), frame)
        else:
            if len(fields) != 2 or not fields[1].isdigit() or int(fields[1]) < 1:
                raise MambavaError(
                    f"{path}:{number}: expected '<video>,<frames>' or '<video>/<NNNNN>.jpg', got {line!r}"
                )
            if fields[0] in counts:
                raise MambavaError(f"{path}:{number}: video {fields[0]!r} counted twice")
            counts[fields[0]] = int(fields[1])
    if not counts:
        raise MambavaError(f"{path}: no frame counts (expected <video>/<NNNNN>.jpg or <video>,<frames> lines)")
    return counts


def _is_count_header(fields: list[str]) -> bool:
    first = fields[0].lower()
    return first == "image_location" or (
        len(fields) <= 3 and not any(f.isdigit() for f in fields[1:]) and "/" not in first
    )
