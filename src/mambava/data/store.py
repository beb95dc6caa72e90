"""The feature store: one (T, D) array per video (or face track), memory-mapped, written atomically.

Layout under the store root, one folder per entry name::

    ROOT/<name>/features.npy   (T, D) float16 or float32, a plain .npy (np.load(..., mmap_mode="r"))
    ROOT/<name>/mask.npy       (T,) bool: True = a real frame (face crop present), False = forward-filled
    ROOT/<name>/meta.json      {"name", "n_frames", "dim", "fps", "backbone", "dtype", "present_frames",
                                "format": 1, "extra": {...}}

An entry exists (`has`, `names`) only once its meta.json is there; meta.json is written last, each file by
temporary file + rename. A crash mid-write therefore leaves no visible entry, and re-running extraction
(skipping names for which `has(name)` is true) redoes exactly the unfinished ones. The memory-mapped
features file is allocated on disk (posix_fallocate) before a row goes in, so a full disk is an OutputError
naming the store, not a SIGBUS. One writer per name at a time. Features are checked for NaN/Inf on write (after the
cast to the stored dtype, so float16 overflow is
caught) and on every window read; `read(name, verify=True)` scans a whole entry in chunks.

Missing frames are forward-filled (`forward_fill`): a frame with no face takes the previous real frame's
features; frames before the first real frame take the first real frame's features; the mask keeps which
frames were real. This one policy serves training, evaluation and prediction alike.

`AudioVisualStore(visual, audio)` reads a visual store and an audio store (`mambava extract --audio`) as one,
each frame's row the visual features, the audio features and the audio mask: the fusion models' input.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from mambava.core.errors import MambavaError
from mambava.core.fileio import atomic_open, atomic_path, make_folder, output_error

FEATURES_FILE = "features.npy"
MASK_FILE = "mask.npy"
META_FILE = "meta.json"
FORMAT_VERSION = 1
DTYPES = ("float16", "float32")
_CHUNK_ROWS = 8192


def forward_fill_index(present: np.ndarray) -> np.ndarray:
    """For each frame, the index of the frame whose features it takes under forward fill: itself when
    present, else the last present frame before it, else (before the first present frame) the first present
    frame. With no present frame at all, every index is 0."""
    present = np.asarray(present, dtype=bool)
    if present.ndim != 1:
        raise ValueError(f"present mask must be 1-D, got shape {present.shape}")
    n = present.shape[0]
    if n == 0 or not present.any():
        return np.zeros(n, dtype=np.int64)
    index = np.where(present, np.arange(n), 0)
    np.maximum.accumulate(index, out=index)
    first = int(np.argmax(present))
    index[:first] = first
    return index


def forward_fill(features, present_mask):
    """Forward-fill the rows of a (T, D) array (numpy or torch) whose `present_mask` (T,) entry is False.

    A missing frame takes the previous present frame's row; frames before the first present frame take the
    first present frame's row (the reference code starts a video at its first face). With no present frame at
    all the result is all zeros. Returns a new array/tensor of the same type and dtype; the input is kept.
    """
    present = np.asarray(present_mask.cpu() if hasattr(present_mask, "cpu") else present_mask, dtype=bool)
    if len(features) != len(present):
        raise ValueError(f"features have {len(features)} rows but the mask has {len(present)}")
    index = forward_fill_index(present)
    if hasattr(features, "index_select"):  # torch
        out = features.index_select(0, torch.from_numpy(index).to(features.device))
        return out if present.any() else torch.zeros_like(features)
    features = np.asarray(features)
    return features[index] if present.any() else np.zeros_like(features)


@dataclasses.dataclass
class FeatureRecord:
    """One stored entry. `features` is a read-only memory map (T, D) in the stored dtype; `mask` (T,) bool
    (True = real frame). `window(start, stop)` reads only rows start:stop."""

    name: str
    path: Path
    features: np.ndarray
    mask: np.ndarray
    fps: float
    backbone: str
    n_frames: int
    dim: int
    dtype: str
    extra: dict[str, Any]

    def window(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(features[start:stop] as float32, mask[start:stop]); MambavaError naming the file and frame on a
        NaN/Inf."""
        if not 0 <= start <= stop <= self.n_frames:
            raise IndexError(f"window {start}:{stop} outside 0:{self.n_frames} of {self.name!r}")
        block = np.array(self.features[start:stop], dtype=np.float32)
        _check_finite(block, self.path / FEATURES_FILE, start)
        return block, np.array(self.mask[start:stop])


class FeatureStore:
    """A folder of per-video feature arrays (see the module docstring for the format).

    - `write(name, features (T, D), mask (T,) bool, fps, backbone, dtype="float16", extra=None)`: atomic
    - `writer(name, n_frames, dim, fps, backbone, dtype="float16", extra=None)`: a context manager for
      streaming extraction, `.put(start, block, present=None)` / `.put_frames(frames, block)`; the entry only
      becomes visible when the block exits without error (rows never put are missing frames, forward-filled)
    - `has(name)`, `names()`, `read(name, verify=False) -> FeatureRecord`, `read_window(name, start, stop)`
      -> (float32 (stop-start, D), bool (stop-start,)), `remove(name)`
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.root)!r})"

    def _dir(self, name: str) -> Path:
        if not name or name in (".", "..") or name.startswith(".") or "/" in name or "\\" in name:
            raise MambavaError(f"{self.root}: invalid feature entry name {name!r}")
        return self.root / name

    def has(self, name: str) -> bool:
        """True when `name` was written completely. An entry whose meta.json (written last) is there but whose
        features or mask file is not was damaged afterwards: a MambavaError naming it, not a silently absent
        video (which would change the videos a run trains or is scored on)."""
        folder = self._dir(name)
        if not (folder / META_FILE).is_file():
            return False
        missing = [f for f in (FEATURES_FILE, MASK_FILE) if not (folder / f).is_file()]
        if missing:
            raise MambavaError(
                f"{folder}: damaged feature entry: {' and '.join(missing)} missing beside {META_FILE} "
                f"(remove the folder and extract the video again)"
            )
        return True

    def names(self) -> list[str]:
        """Sorted names of the complete entries."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if not p.name.startswith(".") and self.has(p.name))

    def __contains__(self, name: str) -> bool:
        return self.has(name)

    def __len__(self) -> int:
        return len(self.names())

    def meta(self, name: str) -> dict[str, Any]:
        """The entry's meta.json (MambavaError if absent or unreadable)."""
        path = self._dir(name) / META_FILE
        if not self.has(name):
            raise MambavaError(f"{self.root}: no complete feature entry {name!r} ({path} missing)")
        try:
            meta = json.loads(path.read_text())
            for key in ("n_frames", "dim", "fps", "backbone", "dtype"):
                meta[key]
            n_frames, dim = int(meta["n_frames"]), int(meta["dim"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise MambavaError(f"{path}: unreadable feature metadata ({error})") from error
        if n_frames < 1 or dim < 1:  # the writer never makes one: an empty entry would silently score nothing
            raise MambavaError(
                f"{path}: an empty feature entry (n_frames {n_frames}, dim {dim}); extract the video again"
            )
        return meta

    def n_frames(self, name: str) -> int:
        return int(self.meta(name)["n_frames"])

    def read(self, name: str, verify: bool = False) -> FeatureRecord:
        """Open an entry memory-mapped (nothing is loaded but the mask and the .npy headers). Checks shapes
        and dtype against meta.json; `verify=True` also scans all features for NaN/Inf in chunks."""
        meta = self.meta(name)
        folder = self._dir(name)
        path = folder / FEATURES_FILE
        try:
            features = np.load(path, mmap_mode="r")
            mask = np.load(folder / MASK_FILE)
        except (OSError, ValueError) as error:
            raise MambavaError(f"{folder}: unreadable feature files ({error})") from error
        n, d = int(meta["n_frames"]), int(meta["dim"])
        if features.shape != (n, d) or features.dtype != np.dtype(meta["dtype"]):
            raise MambavaError(
                f"{path}: holds {features.dtype} {features.shape}, meta.json says {meta['dtype']} ({n}, {d})"
            )
        if mask.shape != (n,) or mask.dtype != np.bool_:
            raise MambavaError(f"{folder / MASK_FILE}: holds {mask.dtype} {mask.shape}, expected bool ({n},)")
        if verify:
            for start in range(0, n, _CHUNK_ROWS):
                _check_finite(features[start : start + _CHUNK_ROWS], path, start)
        return FeatureRecord(
            name=name,
            path=folder,
            features=features,
            mask=mask,
            fps=float(meta["fps"]),
            backbone=str(meta["backbone"]),
            n_frames=n,
            dim=d,
            dtype=str(meta["dtype"]),
            extra=dict(meta.get("extra") or {}),
        )

    def read_window(self, name: str, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows start:stop of an entry as (float32 features, bool mask), reading only those rows."""
        return self.read(name).window(start, stop)

    def discard_unfinished(self, name: str) -> None:
        """Remove the temporary files a writer of `name` left when its process was killed (its next writer would
        too); a complete entry is kept."""
        folder = self._dir(name)
        if folder.is_dir():
            for stale in folder.glob(".*.tmp"):
                stale.unlink(missing_ok=True)

    def remove(self, name: str) -> None:
        """Delete an entry (meta.json first, so it is invisible at once)."""
        folder = self._dir(name)
        (folder / META_FILE).unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)

    def write(
        self,
        name: str,
        features: np.ndarray,
        mask: np.ndarray,
        fps: float,
        backbone: str,
        dtype: str = "float16",
        extra: dict[str, Any] | None = None,
    ) -> None:
        """Store a whole (T, D) array with its (T,) present mask, atomically. Rows whose mask is False are
        stored forward-filled (`forward_fill`), whatever they held, so the store's invariant always holds.
        MambavaError on NaN/Inf in a present row."""
        features = np.asarray(features)
        mask = np.asarray(mask)
        if features.ndim != 2:
            raise MambavaError(f"{self._dir(name)}: features must be (T, D), got shape {features.shape}")
        with self.writer(name, features.shape[0], features.shape[1], fps, backbone, dtype, extra) as writer:
            writer.put(0, features, mask)

    @contextlib.contextmanager
    def writer(
        self,
        name: str,
        n_frames: int,
        dim: int,
        fps: float,
        backbone: str,
        dtype: str = "float16",
        extra: dict[str, Any] | None = None,
    ) -> Iterator["FeatureWriter"]:
        """Stream an entry in blocks: `with store.writer(...) as w: w.put(start, block)`. On a clean exit the
        rows never put (or put with present=False) are forward-filled, the files are renamed into place and
        meta.json written last; on an exception nothing becomes visible and an older entry of that name is
        gone (it was being replaced)."""
        folder = self._dir(name)
        if dtype not in DTYPES:
            raise MambavaError(f"{folder}: dtype must be one of {DTYPES}, got {dtype!r}")
        if n_frames < 1 or dim < 1:
            raise MambavaError(f"{folder}: need n_frames >= 1 and dim >= 1, got ({n_frames}, {dim})")
        try:
            fps_value = float(fps)
        except (TypeError, ValueError):
            fps_value = math.nan
        if not (math.isfinite(fps_value) and fps_value > 0):
            raise MambavaError(f"{folder}: fps must be a positive number, got {fps!r}")
        try:
            make_folder(folder)
            (folder / META_FILE).unlink(missing_ok=True)  # invisible from now until finished
            for stale in folder.glob(".*.tmp"):  # left by a writer that was killed
                stale.unlink(missing_ok=True)
        except OSError as error:
            raise output_error(error, self.root, f"cannot write entry {name!r}") from None
        with atomic_path(folder / FEATURES_FILE) as tmp:
            array = self._open_reserved(tmp, name, np.dtype(dtype), (n_frames, dim))
            writer = FeatureWriter(folder / FEATURES_FILE, array)
            yield writer
            present = writer.finish()
            array.flush()
            del array, writer.array
            with atomic_path(folder / MASK_FILE) as mask_tmp:
                with open(mask_tmp, "wb") as handle:
                    np.save(handle, present)
        meta = {
            "name": name,
            "n_frames": int(n_frames),
            "dim": int(dim),
            "fps": fps_value,
            "backbone": str(backbone),
            "dtype": dtype,
            "present_frames": int(present.sum()),
            "format": FORMAT_VERSION,
            "extra": extra or {},
        }
        with atomic_open(folder / META_FILE, "w") as handle:
            json.dump(meta, handle, indent=1)

    def _open_reserved(self, tmp: Path, name: str, dtype: np.dtype, shape: tuple[int, int]) -> np.memmap:
        """A writable .npy memory map whose blocks are allocated on disk before anything is written to it.
        Writing through a map of a sparse file turns "no space" into SIGBUS, which no Python code can catch;
        with the space reserved first, a full disk is an OutputError naming the store before extraction."""
        try:
            array = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            size = os.path.getsize(tmp)
            with open(tmp, "rb+") as handle:
                try:
                    os.posix_fallocate(handle.fileno(), 0, size)
                except OSError as error:
                    if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                        raise
        except OSError as error:
            need = int(np.prod(shape)) * dtype.itemsize
            size = f"{need / 1e6:.1f} MB" if need >= 100_000 else f"{need / 1e3:.1f} kB"
            raise output_error(error, self.root, f"cannot store entry {name!r}, {size} of features") from None
        return array


class AudioVisualStore:
    """A visual store with an audio store (`mambava extract --audio`) joined per frame: what the fusion models
    (`mambava.temporal.FusionMambaVA`) take. Entry `name` reads as (T, D_visual + D_audio + 1): the
    visual features, the audio features and the audio mask (1.0 = the frame has sound), T the visual entry's
    length. The audio entry is `name`'s, else (a face track `<v>_left`/`<v>_right`) `<v>`'s; frames past its end,
    and every frame of a video with no audio entry, are masked 0 with zero features. Both are on the video's own
    frame grid, so their rates must agree. The same read-only interface as `FeatureStore` (`root`, `has`,
    `names`, `meta`, `n_frames`, `read(name).window(start, stop)`); the mask returned beside the features is the
    visual one (face present)."""

    def __init__(self, visual: "FeatureStore", audio: "FeatureStore"):
        self.visual, self.audio = visual, audio
        self.root = visual.root
        if not audio.root.is_dir():
            raise MambavaError(f"{audio.root}: audio feature store not found")
        self._audio_dim: int | None = None

    def __repr__(self) -> str:
        return f"AudioVisualStore({str(self.visual.root)!r}, {str(self.audio.root)!r})"

    @property
    def audio_dim(self) -> int:
        """The audio store's feature size (its entries', which must all agree)."""
        if self._audio_dim is None:
            names = self.audio.names()
            if not names:
                raise MambavaError(f"{self.audio.root}: the audio feature store has no entries")
            self._audio_dim = int(self.audio.meta(names[0])["dim"])
        return self._audio_dim

    def audio_name(self, name: str) -> str | None:
        """The audio entry of visual entry `name`, or None."""
        if self.audio.has(name):
            return name
        for side in ("_left", "_right"):
            if name.endswith(side) and self.audio.has(name[: -len(side)]):
                return name[: -len(side)]
        return None

    def has(self, name: str) -> bool:
        return self.visual.has(name)

    def names(self) -> list[str]:
        return self.visual.names()

    def audio_statistics(self, names) -> tuple[np.ndarray, np.ndarray]:
        """Per-column mean and std of the audio features over the frames with sound of the audio entries of
        visual entries `names` (each audio entry once: a video's two face tracks share it). What a fusion model
        normalises its audio input with (`FusionMambaVA.set_audio_normalisation`)."""
        return column_statistics(self.audio, sorted({a for a in map(self.audio_name, names) if a is not None}))

    def __contains__(self, name: str) -> bool:
        return self.has(name)

    def meta(self, name: str) -> dict[str, Any]:
        meta = dict(self.visual.meta(name))
        meta["visual_dim"] = int(meta["dim"])
        meta["dim"] = int(meta["dim"]) + self.audio_dim + 1
        meta["audio_entry"] = self.audio_name(name)
        return meta

    def n_frames(self, name: str) -> int:
        return self.visual.n_frames(name)

    def read(self, name: str, verify: bool = False) -> "AudioVisualRecord":
        visual = self.visual.read(name, verify)
        audio_name = self.audio_name(name)
        audio = None if audio_name is None else self.audio.read(audio_name, verify)
        if audio is not None:
            if audio.dim != self.audio_dim:
                raise MambavaError(
                    f"{audio.path}: {audio.dim}-d audio features, other entries of {self.audio.root} "
                    f"are {self.audio_dim}-d"
                )
            if not math.isclose(audio.fps, visual.fps, rel_tol=1e-3):
                raise MambavaError(
                    f"{audio.path}: audio features at {audio.fps:g} fps, the visual entry {name!r} at "
                    f"{visual.fps:g}: both must be on the video's frame grid"
                )
        return AudioVisualRecord(visual, audio, self.audio_dim)


def column_statistics(store: "FeatureStore", names) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and std (float64) of entries `names` of `store`, over their frames whose mask is set."""
    total = total_sq = 0.0
    count = 0
    for name in names:
        record = store.read(name)
        values, mask = record.window(0, record.n_frames)
        kept = np.asarray(values, np.float64)[np.asarray(mask, bool)]
        total, total_sq, count = total + kept.sum(0), total_sq + (kept**2).sum(0), count + len(kept)
    if count == 0:
        raise MambavaError(f"{store.root}: no frames with a value among the entries {list(names)[:3]}...")
    mean = np.asarray(total / count)
    return mean, np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))


class AudioVisualRecord:
    """One joined entry (`AudioVisualStore.read`): `window(start, stop)` -> ((n, D_v + D_a + 1) float32, the
    visual mask (n,) bool)."""

    def __init__(self, visual: FeatureRecord, audio: FeatureRecord | None, audio_dim: int):
        self.visual, self.audio, self.audio_dim = visual, audio, audio_dim
        self.name, self.path, self.fps, self.n_frames = visual.name, visual.path, visual.fps, visual.n_frames
        self.dim = visual.dim + audio_dim + 1

    def window(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        features, present = self.visual.window(start, stop)
        joined = np.zeros((stop - start, self.dim), dtype=np.float32)
        joined[:, : self.visual.dim] = features
        if self.audio is not None:
            end = min(stop, self.audio.n_frames)
            if end > start:
                sound, has_sound = self.audio.window(start, end)
                joined[: end - start, self.visual.dim : -1] = np.where(has_sound[:, None], sound, 0.0)
                joined[: end - start, -1] = has_sound
        return joined, present


class FeatureWriter:
    """Handle yielded by `FeatureStore.writer`; rows are written straight into the memory-mapped file."""

    def __init__(self, path: Path, array: np.ndarray):
        self.path = path
        self.array = array
        self.present = np.zeros(array.shape[0], dtype=bool)

    def put(self, start: int, block, present=None) -> None:
        """Write rows start:start+len(block). `present` (len(block),) bool marks which rows are real frames
        (default: all); the others are forward-filled when the writer finishes."""
        block = _as_numpy(block)
        n, d = self.array.shape
        if block.ndim != 2 or block.shape[1] != d or not 0 <= start <= n - block.shape[0]:
            raise MambavaError(f"{self.path}: block of shape {block.shape} at row {start} does not fit ({n}, {d})")
        present = np.ones(len(block), bool) if present is None else _as_numpy(present).astype(bool).reshape(-1)
        if present.shape != (len(block),):
            raise MambavaError(f"{self.path}: present mask of shape {present.shape} for {len(block)} rows")
        with np.errstate(over="ignore"):  # float16 overflow becomes inf, reported just below
            cast = block.astype(self.array.dtype, copy=False)
        _check_finite(cast[present], self.path, start, rows=start + np.flatnonzero(present))
        self.array[start : start + len(block)] = cast
        self.present[start : start + len(block)] = present

    def put_frames(self, frames, block) -> None:
        """Write the rows of real frames `frames` (0-based row indices, any order) from a (len(frames), D)
        block; rows not put are missing frames."""
        frames = _as_numpy(frames).astype(np.int64).reshape(-1)
        block = _as_numpy(block)
        n, d = self.array.shape
        if block.shape != (len(frames), d) or (len(frames) and (frames.min() < 0 or frames.max() >= n)):
            raise MambavaError(f"{self.path}: block {block.shape} for frames outside 0..{n - 1} or of wrong size")
        with np.errstate(over="ignore"):
            cast = block.astype(self.array.dtype, copy=False)
        _check_finite(cast, self.path, 0, rows=frames)
        self.array[frames] = cast
        self.present[frames] = True

    def finish(self) -> np.ndarray:
        """Forward-fill the missing rows in place, chunk by chunk; returns the present mask."""
        missing = np.flatnonzero(~self.present)
        if len(missing) and self.present.any():
            index = forward_fill_index(self.present)
            for i in range(0, len(missing), _CHUNK_ROWS):
                rows = missing[i : i + _CHUNK_ROWS]
                self.array[rows] = self.array[index[rows]]
        elif len(missing):
            self.array[:] = 0
        return self.present


def _as_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _check_finite(block: np.ndarray, path: Path, start: int, rows: np.ndarray | None = None) -> None:
    finite = np.isfinite(block)
    if finite.all():
        return
    bad = int(np.argmin(finite.reshape(len(block), -1).all(1)))
    frame = int(rows[bad]) if rows is not None else start + bad
    raise MambavaError(f"{path}: NaN/Inf in the features of frame {frame} (0-based row)")


# ---------------------------------------------------------------------------------------------------------
# One video's features as a plain array (predict's and adapt's .npy inputs)


def load_features_file(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(features (T, D) float32, present (T,) bool) from a .npy file; all-NaN rows are no-face frames."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
        if not head.startswith(b"\x93NUMPY"):
            # np.load would try it as a pickle and call it "pickled (object) data"
            text = head and all(32 <= b < 127 or b in b"\t\r\n" for b in head)
            raise MambavaError(
                f"{path}: not a .npy file (no NUMPY header"
                + ("; it is text: save the array with numpy.save)" if text else "; an empty file)" if not head else ")")
            )
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise MambavaError(f"{path}: no such file") from None
    except (OSError, ValueError) as error:
        raise MambavaError(f"{path}: not a readable .npy feature file ({error})") from None
    return features_with_mask(array, str(path))


def features_with_mask(array, name: str = "features") -> tuple[np.ndarray, np.ndarray]:
    """(float32 (T, D), present (T,) bool) from a (T, D) array whose all-NaN rows are no-face frames."""
    array = np.asarray(array)
    if array.ndim != 2 or array.shape[0] == 0 or not np.issubdtype(array.dtype, np.number):
        raise MambavaError(
            f"{name}: features must be a numeric (T, D) array with T >= 1, got {array.dtype} {array.shape}"
        )
    array = array.astype(np.float32, copy=False)
    finite = np.isfinite(array)
    present = finite.all(axis=1)
    partial = ~present & finite.any(axis=1)
    if partial.any():
        raise MambavaError(
            f"{name}: row {int(np.argmax(partial))} mixes NaN/Inf with numbers (a no-face row is all NaN)"
        )
    if not present.any():
        raise MambavaError(f"{name}: every row is NaN: no frame with a face, nothing to predict")
    return array, present
