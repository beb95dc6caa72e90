"""Readers for the official Aff-Wild2 / ABAW valence-arousal release, and the `data check` scan.

Layout expected under a dataset root (as the ABAW challenge distributes Aff-Wild2)::

    ROOT/
      VA_Estimation_Challenge/Train_Set/<video>.txt        annotations, header "valence,arousal",
      VA_Estimation_Challenge/Validation_Set/<video>.txt   one line per video frame, -5 = no valid label;
                                                           also found one folder down, as the ABAW release
                                                           unpacks it (<any>/VA_Estimation_Challenge/...)
      cropped_aligned/<video>/00001.jpg ...                112x112 face crops, 5-digit 1-based frame
                                                           numbers; frames without a face are missing
      *test*set*.txt                                       the test-set video list (or pass its path)
      videos/ (or raw_videos/)                             optional raw videos, any sub-folders
                                                           (batch1/, batch2/ ...), matched by file stem

Two-person videos appear as `<v>_left` / `<v>_right` (annotation, crop folder, test-list entry); both belong
to the raw video `<v>` (`base_video`). A `cropped_aligned/` whose video folders are grouped one level deeper
(e.g. `cropped_aligned/batch1/<video>/`) is accepted too.

Frame count of a video (`AffWild2.n_frames`): the raw video's frame count from its container (PyAV) when the
video is under `videos/`; otherwise the annotation's length for an annotated video; otherwise the highest crop
number. Where the annotation length and the video's frame count differ, the policy (as in the reference code)
is to truncate both to the shorter with a warning: see `mambava.data.windows.align_lengths`.
"""

from __future__ import annotations

import os
import warnings
from fnmatch import fnmatchcase
from functools import cached_property
from pathlib import Path
from typing import Iterable

import av
import numpy as np
from PIL import Image, UnidentifiedImageError

from mambava.core.errors import MambavaError
from mambava.core.metrics import INVALID_LABEL
from mambava.media.video import VIDEO_SUFFIXES

ANNOTATION_DIR = "VA_Estimation_Challenge"
SPLIT_DIRS = {"train": "Train_Set", "validation": "Validation_Set"}
CROPS_DIR = "cropped_aligned"
VIDEO_DIRS = ("videos", "raw_videos")
CROP_SUFFIXES = (".jpg", ".jpeg", ".png")
TEST_LIST_GLOB = "*test*set*.txt"
SPLITS = ("train", "validation", "test")
ANNOTATION_HEADER = "valence,arousal"
TWO_PERSON_SUFFIXES = ("_left", "_right")


def base_video(name: str) -> str:
    """The raw video a crop folder / annotation belongs to: "x_left" -> "x", "x_right" -> "x", "x" -> "x"."""
    for suffix in TWO_PERSON_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def crop_name(frame: int) -> str:
    """File name of a crop (and the frame part of a submission's image_location): 7 -> "00007.jpg"."""
    return f"{frame:05d}.jpg"


# ---------------------------------------------------------------------------------------------------------
# Annotations


def read_va_annotation(path: str | os.PathLike) -> np.ndarray:
    """Read one VA annotation file into a (T, 2) float32 array of (valence, arousal), one row per frame.

    The first line is the header `valence,arousal` (a file without it is accepted). -5 (the invalid marker)
    is kept as -5. Raises MambavaError naming `file:line` for a malformed line (not two numbers), a NaN/Inf,
    a value outside [-1, 1] other than -5, a blank line before the last data line, or a file with no frames.
    Trailing blank lines are ignored.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise MambavaError(f"{path}: cannot read annotation file ({error})") from error
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    first_data = 0
    if lines and lines[0].replace(" ", "").lower() == ANNOTATION_HEADER:
        first_data = 1
    elif lines and _parse_pair(lines[0]) is None:
        raise MambavaError(f"{path}:1: expected the header '{ANNOTATION_HEADER}', got {lines[0]!r}")
    data = lines[first_data:]
    if not data:
        raise MambavaError(f"{path}: no annotation lines (one line per frame expected after the header)")
    values = np.empty((len(data), 2), dtype=np.float64)
    for i, line in enumerate(data):
        pair = _parse_pair(line)
        if pair is None:
            raise MambavaError(
                f"{path}:{i + first_data + 1}: malformed annotation line {line!r} (expected 'valence,arousal')"
            )
        values[i] = pair
    finite = np.isfinite(values)
    ok = finite & ((np.abs(values) <= 1.0) | (values == INVALID_LABEL))
    if not ok.all():
        row = int(np.argmin(ok.all(1)))
        raise MambavaError(
            f"{path}:{row + first_data + 1}: value out of range {data[row]!r} "
            f"(valence and arousal must be in [-1, 1], or -5 for an invalid frame)"
        )
    return values.astype(np.float32)


def _parse_pair(line: str) -> tuple[float, float] | None:
    parts = line.split(",")
    if len(parts) != 2:
        return None
    try:
        return float(parts[0]), float(parts[1])
    except ValueError:
        return None


# ---------------------------------------------------------------------------------------------------------
# Test list, crops, raw videos


def read_test_list(path: str | os.PathLike) -> list[str]:
    """Video names of a test-set list: one per line; blank lines, `#` comments and a header line are skipped.

    A first line is a header when it has spaces or a colon, is a usual column word ("video", "name", ...)
    or mentions "challenge"/"test_set".
    A `.mp4`/`.avi` extension or further comma-separated fields after the name are dropped. Duplicates are an
    error (MambavaError naming file:line), as is a list with no names.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise MambavaError(f"{path}: cannot read the test-set list ({error})") from error
    names: list[str] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name = line.split(",")[0].strip()
        if not names and _looks_like_header(name):
            continue
        stem, suffix = os.path.splitext(name)
        if suffix.lower() in VIDEO_SUFFIXES:
            name = stem
        if "/" in name or "\\" in name:
            raise MambavaError(f"{path}:{number}: expected a video name, got {raw!r}")
        if name in seen:
            raise MambavaError(f"{path}:{number}: video {name!r} listed twice (first on line {seen[name]})")
        seen[name] = number
        names.append(name)
    if not names:
        raise MambavaError(f"{path}: the test-set list names no video")
    return names


_HEADER_WORDS = {"video", "videos", "video_name", "video_names", "name", "names", "test", "vid", "file"}


def _looks_like_header(first: str) -> bool:
    lower = first.lower()
    return (
        " " in first
        or ":" in first
        or lower in _HEADER_WORDS
        or any(word in lower for word in ("challenge", "test_set", "testset", "video_name"))
    )


def find_test_list(root: str | os.PathLike) -> Path | None:
    """The test-set list under `root` (glob `*test*set*.txt`, case-insensitive, in root and its sub-folders
    one level down), or None. Where several match, the one naming valence/arousal ("va"/"valence") wins;
    a tie left is a MambavaError listing them."""
    root = Path(root)
    found: list[Path] = []
    for folder in [root, *_subfolders(root)]:
        found += [p for p in sorted(folder.glob("*.txt")) if _matches_test_glob(p.name)]
    if len(found) > 1:
        va = [p for p in found if "valence" in p.name.lower() or "va_" in p.name.lower()]
        found = va or found
    if len(found) > 1:
        raise MambavaError(
            f"{root}: several test-set lists found ({', '.join(str(p) for p in found)}): pass one explicitly"
        )
    return found[0] if found else None


def find_annotations(root: str | os.PathLike) -> Path | None:
    """The folder holding `Train_Set/` and `Validation_Set/` under `root`, or None. Looked for, as the test-set
    list is, in root and one folder down, in this order: `root/VA_Estimation_Challenge`, `root` itself (pointing
    at that folder), `root/<any>/VA_Estimation_Challenge` (the ABAW release unpacks its annotations as
    `8th_ABAW_Annotations/VA_Estimation_Challenge/...`), `root/<any>` holding the split folders. The first kind
    found wins; two of one kind is a MambavaError listing them."""
    root = Path(root)

    def has_splits(folder: Path) -> bool:
        return any((folder / d).is_dir() for d in SPLIT_DIRS.values())

    if (root / ANNOTATION_DIR).is_dir():
        return root / ANNOTATION_DIR
    if has_splits(root):
        return root
    subs = _subfolders(root)
    # a VA_Estimation_Challenge/ one down beats a bare split folder (which may be another challenge's)
    found = [s / ANNOTATION_DIR for s in subs if has_splits(s / ANNOTATION_DIR)] or [s for s in subs if has_splits(s)]
    if len(found) > 1:
        raise MambavaError(
            f"{root}: several annotation folders found ({', '.join(str(p) for p in found)}): "
            f"pass the one to use as the root"
        )
    return found[0] if found else None


def _subfolders(root: Path) -> list[Path]:
    """Sub-folders of a dataset root searched for annotations / the test list (not crops or raw videos)."""
    skip = {CROPS_DIR, *VIDEO_DIRS}
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name not in skip and not p.name.startswith("."))


def describe_layout(root: str | os.PathLike) -> str:
    """What `check` looked for and what `root` holds, for the "no videos found" error."""
    root = Path(root)
    looked = (
        f"looked for {ANNOTATION_DIR}/{{{','.join(SPLIT_DIRS.values())}}}/*.txt in the root and one folder down, "
        f"and a {TEST_LIST_GLOB} test-set list there"
    )
    entries = sorted(root.iterdir()) if root.is_dir() else []
    shown = []
    for entry in entries[:12]:
        if entry.is_dir():
            inner = sorted(p.name + ("/" if p.is_dir() else "") for p in entry.iterdir())
            inside = ", ".join(inner[:4]) + (", ..." if len(inner) > 4 else "")
            shown.append(f"{entry.name}/ ({inside or 'empty'})")
        else:
            shown.append(entry.name)
    more = f", ... ({len(entries)} entries)" if len(entries) > 12 else ""
    found = ", ".join(shown) + more if shown else "nothing"
    annotations = find_annotations(root) if root.is_dir() else None
    if annotations is not None:
        counts = ", ".join(f"{d}: {len(list((annotations / d).glob('*.txt')))} .txt" for d in SPLIT_DIRS.values())
        found = f"{annotations} ({counts}); {found}"
    return f"{looked}; found {found}"


def _matches_test_glob(name: str) -> bool:
    return fnmatchcase(name.lower(), TEST_LIST_GLOB)


def crop_files(folder: str | os.PathLike) -> list[tuple[int, str]]:
    """Sorted (frame number, file name) of the crops `<number>.jpg|.jpeg|.png` in one video's crop folder (the
    one scan of a crop folder; `crops.scan_crop_folder` builds on it). Files whose stem is not a number are
    ignored."""
    found = []
    with os.scandir(folder) as entries:
        for entry in entries:
            stem, suffix = os.path.splitext(entry.name)
            if suffix.lower() in CROP_SUFFIXES and stem.isdigit():
                found.append((int(stem), entry.name))
    found.sort()
    return found


def list_crop_frames(folder: str | os.PathLike) -> list[int]:
    """Sorted frame numbers of the crops (`NNNNN.jpg`) in one video's crop folder; [] if it has none."""
    return [frame for frame, _ in crop_files(folder)]


def read_crop(path: str | os.PathLike) -> np.ndarray:
    """Decode one face crop to an (H, W, 3) uint8 RGB array; MambavaError naming the file if unreadable."""

    path = Path(path)
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise MambavaError(f"{path}: unreadable image ({error})") from error


def verify_crop(path: str | os.PathLike) -> str | None:
    """None if the crop decodes, else the reason (used by `data check --verify-images`)."""
    try:
        read_crop(path)
    except MambavaError as error:
        return str(error)
    return None


def video_frame_count(path: str | os.PathLike) -> int:
    """Number of frames of a video file from its container's header (PyAV), as OpenCV's
    CAP_PROP_FRAME_COUNT reports it (the reference's count); where the header has none, the number of
    demuxed video packets. MambavaError naming the file if it cannot be opened."""

    path = Path(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MambavaError(f"{path}: no video stream")
            stream = container.streams.video[0]
            if stream.frames and stream.frames > 0:
                return int(stream.frames)
            return sum(1 for packet in container.demux(stream) if packet.size > 0)
    except MambavaError:
        raise
    except Exception as error:  # PyAV raises several error types (av.error.*, OSError)
        raise MambavaError(f"{path}: cannot read video ({error})") from error


# ---------------------------------------------------------------------------------------------------------
# The dataset index


class AffWild2:
    """Index of an Aff-Wild2 dataset root in the official layout (see the module docstring).

    `AffWild2(root, test_list=None)`: `test_list` is a path to the test-set list; when None, it is searched
    for with `find_test_list(root)` (no list found: an empty test split).

    - `.splits` -> {"train": [...], "validation": [...], "test": [...]} sorted video names (test: list order)
    - `.annotation_path(video)`, `.read_annotation(video)` -> (T, 2) float32
    - `.crops_dir(video)` -> Path (where the folder is or would be), `.crop_frames(video)` -> sorted frame
      numbers (MambavaError if the folder is missing or has no crops), `.crop_path(video, frame)`
    - `.video_path(video)` -> raw video of `base_video(video)` under videos/ or None
    - `.n_frames(video)`, `.frame_counts(videos)`: see the module docstring
    """

    def __init__(self, root: str | os.PathLike, test_list: str | os.PathLike | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise MambavaError(f"{self.root}: dataset root not found")
        self.annotations_root = find_annotations(self.root) or self.root / ANNOTATION_DIR
        self.test_list_path = Path(test_list) if test_list is not None else find_test_list(self.root)
        self._annotations: dict[str, Path] = {}
        splits: dict[str, list[str]] = {}
        for split, folder in SPLIT_DIRS.items():
            names = []
            for path in sorted((self.annotations_root / folder).glob("*.txt")):
                if path.stem in self._annotations:
                    other = self._annotations[path.stem]
                    raise MambavaError(f"{path}: video {path.stem!r} annotated twice (also {other})")
                self._annotations[path.stem] = path
                names.append(path.stem)
            splits[split] = names
        splits["test"] = read_test_list(self.test_list_path) if self.test_list_path is not None else []
        self.splits = splits
        self._n_frames: dict[str, int] = {}

    @property
    def videos(self) -> list[str]:
        """Every video of every split, train then validation then test."""
        return [v for split in SPLITS for v in self.splits[split]]

    def split_of(self, video: str) -> str | None:
        for split in SPLITS:
            if video in self.splits[split]:
                return split
        return None

    # annotations
    def annotation_path(self, video: str) -> Path:
        try:
            return self._annotations[video]
        except KeyError:
            raise MambavaError(
                f"{self.annotations_root}: no annotation for video {video!r} in {'/'.join(SPLIT_DIRS.values())}"
            ) from None

    def read_annotation(self, video: str) -> np.ndarray:
        return read_va_annotation(self.annotation_path(video))

    # crops
    @cached_property
    def _crop_dirs(self) -> dict[str, Path]:
        base = self.root / CROPS_DIR
        dirs: dict[str, Path] = {}
        if not base.is_dir():
            return dirs
        known = set(self.videos)
        for entry in sorted(base.iterdir()):
            if not entry.is_dir() or entry.name.startswith("."):  # hidden: a folder still being written
                continue
            if entry.name not in known:
                nested = [p for p in sorted(entry.iterdir()) if p.is_dir()]
                if nested:  # a grouping folder (batch1/...): its sub-folders are videos
                    for sub in nested:
                        dirs.setdefault(sub.name, sub)
                    continue
            dirs[entry.name] = entry
        return dirs

    @property
    def crop_videos(self) -> list[str]:
        """Names of all crop folders found under cropped_aligned/."""
        return sorted(self._crop_dirs)

    def crops_dir(self, video: str) -> Path:
        return self._crop_dirs.get(video, self.root / CROPS_DIR / video)

    def crop_frames(self, video: str) -> list[int]:
        """Sorted 1-based frame numbers that have a crop; MambavaError naming the folder if it is missing
        or holds no crops."""
        folder = self.crops_dir(video)
        if not folder.is_dir():
            raise MambavaError(f"{folder}: no crop folder for video {video!r}")
        frames = list_crop_frames(folder)
        if not frames:
            raise MambavaError(f"{folder}: crop folder has no NNNNN.jpg crops")
        return frames

    def crop_path(self, video: str, frame: int) -> Path:
        return self.crops_dir(video) / crop_name(frame)

    # raw videos and frame counts
    @cached_property
    def _video_files(self) -> dict[str, Path]:
        files: dict[str, Path] = {}
        for folder in VIDEO_DIRS:
            base = self.root / folder
            if not base.is_dir():
                continue
            for dirpath, _dirnames, filenames in sorted(os.walk(base)):
                for filename in sorted(filenames):
                    stem, suffix = os.path.splitext(filename)
                    if suffix.lower() in VIDEO_SUFFIXES:
                        files.setdefault(stem, Path(dirpath) / filename)
        return files

    @property
    def raw_videos(self) -> dict[str, Path]:
        """{file stem: path} of every raw video under videos/ (or raw_videos/), any sub-folders."""
        return dict(self._video_files)

    def video_path(self, video: str) -> Path | None:
        """The raw video file of `video` (a `_left`/`_right` name maps to its base video), or None."""
        return self._video_files.get(video) or self._video_files.get(base_video(video))

    def n_frames(self, video: str) -> int:
        """Frames of `video`: the raw video's container count, else the annotation length, else the highest
        crop number (cached)."""
        if video not in self._n_frames:
            path = self.video_path(video)
            if path is not None:
                count = video_frame_count(path)
            elif video in self._annotations:
                count = len(self.read_annotation(video))
            else:
                count = self.crop_frames(video)[-1]
            self._n_frames[video] = count
        return self._n_frames[video]

    def frame_counts(self, videos: Iterable[str] | None = None) -> dict[str, int]:
        """{video: n_frames(video)} for `videos` (default: the test split)."""
        return {v: self.n_frames(v) for v in (self.splits["test"] if videos is None else videos)}


class DataWarning(UserWarning):
    """Data that is usable but not as expected (e.g. annotation length != frames, truncated)."""


def align_lengths(name: str, n_frames: int, n_labels: int) -> int:
    """The length-mismatch policy: where a video's annotation has `n_labels` lines but its features (or
    video) have `n_frames` frames, both are truncated to the shorter, with a DataWarning, as the reference
    code does. Returns min(n_frames, n_labels). The warning is raised from this one place, so Python's
    default filter shows each distinct message once (not once per epoch, fold or caller)."""
    if n_frames != n_labels:
        warnings.warn(
            f"{name}: annotation has {n_labels} frames but the video/features have {n_frames}; "
            f"both truncated to {min(n_frames, n_labels)}",
            DataWarning,
            stacklevel=2,
        )
    return min(n_frames, n_labels)
