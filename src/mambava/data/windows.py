"""Windows over a video's frames (w = 300, s = 200), and the inverse, stitching.

The paper (§3.2) gives only the count: a video of n frames gives ⌊n/s⌋ + 1 segments, the i-th starting at frame
i·s. w = 300, s = 200 are the authors' code's values (FreedomPuppy77/Charon: preprocess/split_VA_fold.py:24-25
writes 300/200 windows to `300_200_fold_k/{Train_Set,Validation_Set}`; its fold configs read folders named
`fine_train_300_200_fold_k` and `val_300_200_fold_k`, VA/config/config_fold1.yml:2-3, and
`*_1000_800_fold_1` on fold 0, config_fold0.yml:2-3). Window policy (`make_windows`, ours): the starts i·s for
i = 0..⌊n/s⌋, those that would run past the end moved back to end at the video's last frame (start n − w) and
duplicates dropped, so every frame is covered, no window is cut short, and a video can give fewer than
⌊n/s⌋ + 1 windows:

    n = 1000 -> (0,300) (200,500) (400,700) (600,900) (700,1000)     5 windows (starts 800 and 1000 -> 700)
    n = 250  -> (0,250), padded to 300 by `pad_window` (padding masked out)

The authors' split (`split_windows`) differs: windows that would run past the end are dropped, so a video's
tail and every video shorter than w give no window (n = 1000 -> (0,300) (200,500) (400,700) (600,900)); and
their per-video sequences run from the first frame with a face up to, not including, the last (`crop_span`).

Full-video inference runs the model on every window and `stitch`es the per-window predictions back to one
value per frame (`STITCHING`, ours: the paper states no stitching): "mean" averages the windows that cover a
frame (what `evaluate` scores); "most_history" takes each frame from the window in which it has the most history
(the covering window that starts first), so no frame's value mixes a window that has just started from an empty
state. Training reads windows from the feature store through `WindowDataset`, which memory-maps each video and
reads only the window's rows.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from mambava.core.errors import MambavaError
from mambava.core.metrics import INVALID_LABEL
from mambava.data.affwild2 import AffWild2, align_lengths
from mambava.data.store import FeatureRecord, FeatureStore
from mambava.data.timebase import stored_grid

WINDOW = 300
STRIDE = 200
STITCHING = ("mean", "most_history")


def make_windows(n_frames: int, window: int = WINDOW, stride: int = STRIDE) -> list[tuple[int, int]]:
    """(start, stop) frame ranges (0-based, stop exclusive) covering frames 0..n_frames-1; see the module
    docstring. A video shorter than `window` gives the single window (0, n_frames), to be padded; a video of
    0 frames gives none. Needs 0 < stride <= window (a larger stride would skip frames)."""
    if window < 1 or stride < 1 or stride > window:
        raise ValueError(f"need 0 < stride <= window, got window={window}, stride={stride}")
    if n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    if n_frames == 0:
        return []
    if n_frames <= window:
        return [(0, n_frames)]
    starts = sorted({min(i * stride, n_frames - window) for i in range(n_frames // stride + 1)})
    return [(start, start + window) for start in starts]


def split_windows(n_frames: int, window: int = WINDOW, stride: int = STRIDE) -> list[tuple[int, int]]:
    """The authors' split (FreedomPuppy77/Charon, preprocess/split_VA_fold.py:10-20, used at lines 50-60):
    windows (i·s, i·s + w) for i < ⌊n/s⌋ while i·s + w <= n; the tail past the last full window and videos
    shorter than `window` give none."""
    if window < 1 or stride < 1:
        raise ValueError(f"need window, stride >= 1, got window={window}, stride={stride}")
    windows = []
    for i in range(max(0, n_frames) // stride):
        if i * stride + window > n_frames:
            break
        windows.append((i * stride, i * stride + window))
    return windows


def pad_window(rows, window: int = WINDOW, fill: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Pad a (n, ...) array with n <= window to (window, ...) with `fill`; returns (padded, mask) where
    mask (window,) bool is True for the n real rows."""
    rows = np.asarray(rows)
    n = rows.shape[0]
    if n > window:
        raise ValueError(f"{n} rows do not fit a window of {window}")
    mask = np.zeros(window, dtype=bool)
    mask[:n] = True
    if n == window:
        return rows, mask
    padded = np.full((window, *rows.shape[1:]), fill, dtype=rows.dtype)
    padded[:n] = rows
    return padded, mask


def window_batch(features, window: int = WINDOW, stride: int = STRIDE):
    """All windows of one video for full-video inference: (x (N, window, D) float32 zero-padded,
    mask (N, window) bool, windows list of (start, stop)). Feed x (and mask) to the model, then
    `stitch(list(preds), windows, len(features))`."""
    features = np.asarray(features, dtype=np.float32)
    windows = make_windows(len(features), window, stride)
    x = np.zeros((len(windows), window, features.shape[1]), dtype=np.float32)
    mask = np.zeros((len(windows), window), dtype=bool)
    for i, (start, stop) in enumerate(windows):
        x[i, : stop - start] = features[start:stop]
        mask[i, : stop - start] = True
    return x, mask, windows


def stitch(window_preds: Sequence, windows: Sequence[tuple[int, int]], n_frames: int, how: str = "mean") -> np.ndarray:
    """Per-window predictions back to one row per frame: (n_frames, C). `how` (STITCHING): "mean" over every
    window that covers a frame, or "most_history", the covering window with the earliest start (the most frames
    of history before the frame). `window_preds[i]` is (w_i, C) with w_i >= stop_i - start_i (padding rows
    beyond the window's real frames are ignored); numpy arrays or torch tensors. Sums run in float64, so where
    all overlapping windows agree the mean equals them exactly. ValueError if a frame is not covered."""
    if how not in STITCHING:
        raise ValueError(f"stitching must be one of {', '.join(STITCHING)}, got {how!r}")
    if len(window_preds) != len(windows):
        raise ValueError(f"{len(window_preds)} window predictions for {len(windows)} windows")
    total = None
    count = np.zeros(n_frames, dtype=np.int64)
    best_start = np.full(n_frames, np.iinfo(np.int64).max, dtype=np.int64)
    dtype = np.float32
    for pred, (start, stop) in zip(window_preds, windows):
        if hasattr(pred, "detach"):
            pred = pred.detach().float().cpu().numpy()
        pred = np.asarray(pred)
        if pred.ndim == 1:
            pred = pred[:, None]
        if not 0 <= start < stop <= n_frames or pred.shape[0] < stop - start:
            raise ValueError(f"window ({start}, {stop}) with {pred.shape[0]} rows does not fit {n_frames} frames")
        if total is None:
            total = np.zeros((n_frames, pred.shape[1]), dtype=np.float64)
            dtype = np.result_type(pred.dtype, np.float32)
        if how == "mean":
            total[start:stop] += pred[: stop - start]
        else:
            earlier = best_start[start:stop] > start  # this window starts before the one kept so far
            total[start:stop][earlier] = pred[: stop - start][earlier]
            best_start[start:stop][earlier] = start
        count[start:stop] += 1
    if n_frames and (total is None or not count.all()):
        missing = 0 if total is None else int(np.argmin(count > 0))
        raise ValueError(f"frame {missing} of {n_frames} is covered by no window")
    if total is None:
        return np.zeros((0, 1), dtype=np.float32)
    if how == "mean":
        total /= count[:, None]
    return total.astype(dtype)


def load_labels(dataset: AffWild2, names: Sequence[str], store: FeatureStore | None = None) -> dict[str, np.ndarray]:
    """{name: (T, 2) float32 annotation} for annotated videos `names`. With a feature store, each annotation
    is aligned to the stored features' length by the length-mismatch policy (truncate to the shorter, with a
    warning: `mambava.data.affwild2.align_lengths`); `WindowDataset` then truncates the features likewise."""
    labels = {}
    for name in names:
        values = dataset.read_annotation(name)
        if store is not None:
            values = values[: align_lengths(name, store.n_frames(name), len(values))]
        labels[name] = values
    return labels


def crop_span(present: np.ndarray, n_frames: int) -> tuple[int, int]:
    """The authors' sequence of a video: frames [begin, end), begin its first frame with a face, end its last
    frame with a face (excluded), at most `n_frames` (FreedomPuppy77/Charon, preprocess/construct_VA.py:78-81:
    begin and end are the first and last crop numbers minus 1, end capped at the video's frame count; line 102
    reads features for range(begin, end), lines 121-122 slice the labels [begin:end]). No face, or one: (0, 0),
    nothing to cut (their script skips the first and cannot stack the second).

    Args:
        present: (T,) bool, the frames with a face (a feature store's mask).
        n_frames: the frames that count (the video's length after aligning its labels: their labels slice
            [begin:end] comes out short where the annotation is, and a window short of labels is dropped,
            split_VA_fold.py:59-60).

    Returns:
        (begin, end), 0-based, end exclusive; begin == end when the span is empty.
    """
    found = np.flatnonzero(np.asarray(present, bool))  # the last crop of all, then capped (as theirs)
    if len(found) == 0:
        return 0, 0
    begin, end = int(found[0]), min(int(found[-1]), n_frames)
    return (begin, end) if end > begin else (0, 0)


def present_mask(store, name: str) -> np.ndarray:
    """The face mask of a stored entry (the visual one of a joined audio-visual entry)."""
    record = store.read(name)
    return np.asarray(record.visual.mask if hasattr(record, "visual") else record.mask, bool)


class WindowDataset(Dataset):
    """Training windows read from a feature store.

    `WindowDataset(store, names, labels=None, window=300, stride=200, tails="cover")` (`tails="drop"`: the
    authors' split, `split_windows`); `labels` maps a name to its (T, 2)
    annotation (`load_labels`); a length mismatch with the features is truncated to the shorter, with a
    warning. Item i is a dict:

    - `x` (window, D) float32 features, zero-padded
    - `y` (window, 2) float32 labels, -5 on padding and on invalid frames (all -5 when labels is None)
    - `mask` (window,) bool: True for the window's real frames, False for padding
    - `present` (window,) bool: True where the frame had a face (False: forward-filled or padding)
    - `name` str, `start` int (0-based first frame of the sequence), `length` int (real frames in the window)

    `windows` lists (name, start, stop) per item. Each video is opened memory-mapped on first use, per
    process (DataLoader workers re-open after pickling), so a window reads only its rows.

    `span` ("video" or "crops"): the frames of each video that form its sequence, all of them or the authors'
    `crop_span` (from the first frame with a face up to, not including, the last). Starts and stops count from
    the sequence's first frame; `spans` holds each video's (first, end) stored frame.

    `fps` (the model's frame rate, `mambava.data.timebase`): an entry stored at another rate is put on the model's
    grid, features and labels alike (sample and hold, `stored_grid`), so that a window spans the time the
    model counts in frames; `lengths` and windows are then in grid ticks. None: the stored frames as they are.
    """

    def __init__(
        self,
        store: FeatureStore,
        names: Sequence[str],
        labels: Mapping[str, np.ndarray] | None = None,
        window: int = WINDOW,
        stride: int = STRIDE,
        tails: str = "cover",
        fps: float | None = None,
        span: str = "video",
    ):
        if tails not in ("cover", "drop"):
            raise ValueError(f"tails must be 'cover' or 'drop', got {tails!r}")
        if span not in ("video", "crops"):
            raise ValueError(f"span must be 'video' or 'crops', got {span!r}")
        cut = make_windows if tails == "cover" else split_windows
        self.store = store
        self.names = list(names)
        self.window = window
        self.stride = stride
        if labels is not None and any(name not in labels for name in self.names):
            missing = next(name for name in self.names if name not in labels)
            raise MambavaError(f"{store.root}: no labels given for {missing!r}")
        self.labels = None if labels is None else {n: np.asarray(labels[n], np.float32) for n in self.names}
        self.lengths: dict[str, int] = {}
        self.spans: dict[str, tuple[int, int]] = {}  # name -> (first, end) stored frame of its sequence
        self.windows: list[tuple[str, int, int]] = []
        self.grids: dict[str, np.ndarray] = {}  # name -> the held stored frame (from the span's first) per tick
        dims = set()
        for name in self.names:
            meta = store.meta(name)
            n = int(meta["n_frames"])
            dims.add(int(meta["dim"]))
            if self.labels is not None:
                n = align_lengths(name, n, len(self.labels[name]))
            first, end = crop_span(present_mask(store, name), n) if span == "crops" else (0, n)
            self.spans[name] = (first, end)
            n = end - first
            if self.labels is not None:
                self.labels[name] = self.labels[name][first:end]
            grid = stored_grid(n, meta.get("fps"), fps) if fps and n else None
            if grid is not None:
                self.grids[name] = grid.held
                if self.labels is not None:
                    self.labels[name] = self.labels[name][grid.held]
                n = grid.n_ticks
            self.lengths[name] = n
            self.windows += [(name, start, stop) for start, stop in cut(n, window, stride)]
        if len(dims) > 1:
            raise ValueError(f"{store.root}: entries of different feature sizes {sorted(dims)} in one dataset")
        self._records: dict[str, FeatureRecord] = {}
        self._gridded: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # other-rate entries on the grid (in memory)

    def __len__(self) -> int:
        return len(self.windows)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_records"] = {}  # memory maps are reopened in each worker, never pickled
        state["_gridded"] = {}
        return state

    def _on_grid(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name not in self._gridded:
            held = self.grids[name]
            features, present = self._record(name).window(*self.spans[name])
            self._gridded[name] = (features[held], present[held])
        return self._gridded[name]

    def _record(self, name: str) -> FeatureRecord:
        if name not in self._records:
            self._records[name] = self.store.read(name)
        return self._records[name]

    def __getitem__(self, index: int) -> dict:
        name, start, stop = self.windows[index]
        if name in self.grids:  # another rate: the video put on the model's grid once, its windows cut from that
            features, present = self._on_grid(name)
            features, present = features[start:stop], present[start:stop]
        else:
            first = self.spans[name][0]
            features, present = self._record(name).window(first + start, first + stop)
        x, mask = pad_window(features, self.window)
        present, _ = pad_window(present, self.window, fill=False)
        if self.labels is not None:
            y, _ = pad_window(self.labels[name][start:stop], self.window, fill=INVALID_LABEL)
        else:
            y = np.full((self.window, 2), INVALID_LABEL, dtype=np.float32)
        return {
            "x": torch.from_numpy(np.ascontiguousarray(x)),
            "y": torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)),
            "mask": torch.from_numpy(mask),
            "present": torch.from_numpy(np.ascontiguousarray(present)),
            "name": name,
            "start": start,
            "length": stop - start,
        }


# ---------------------------------------------------------------------------------------------------------
# Full-video inference (what evaluate scores, what training validates with, predict's "windows")


@torch.no_grad()
def predict_sequence(
    model: torch.nn.Module,
    features: torch.Tensor,
    window: int = 300,
    stride: int = 200,
    batch_size: int = 32,
    stitching: str = "mean",
) -> torch.Tensor:
    """Per-frame predictions (T, C) of one video's features (T, D) by overlapping windows and stitching
    (`mambava.data.windows.stitch`: "mean" or "most_history", both ours: the paper states no stitching).

    Full-length windows run in batches of `batch_size`; a video shorter than the window runs as one shorter
    sequence (no padding, so no model, causal or not, sees padding). Returns float32 on the features' device.
    The caller puts the model in eval mode (Lightning does during validation).
    """
    if features.ndim != 2:
        raise ValueError(f"features must be (T, D), got {tuple(features.shape)}")
    n = features.shape[0]
    windows = make_windows(n, window, stride)
    preds: list[torch.Tensor | None] = [None] * len(windows)
    full = [i for i, (start, stop) in enumerate(windows) if stop - start == window]
    for chunk in range(0, len(full), batch_size):
        index = full[chunk : chunk + batch_size]
        x = torch.stack([features[windows[i][0] : windows[i][1]] for i in index])
        out = model(x).float()
        for j, i in enumerate(index):
            preds[i] = out[j]
    for i, (start, stop) in enumerate(windows):
        if preds[i] is None:
            preds[i] = model(features[start:stop][None]).float()[0]
    if not windows:
        return features.new_zeros((0, 2), dtype=torch.float32)
    stitched = stitch(preds, windows, n, stitching)
    return torch.from_numpy(np.ascontiguousarray(stitched, dtype=np.float32)).to(features.device)


def check_windowing(window: int, stride: int) -> tuple[int, int]:
    """(window, stride) as ints, or a MambavaError naming the option: window >= 1 and 1 <= stride <= window
    (a stride past the window would leave frames without a prediction)."""
    if int(window) < 1:
        raise MambavaError(f"--window must be >= 1 frame, got {window}")
    if not 1 <= int(stride) <= int(window):
        raise MambavaError(f"--stride must be in 1..window ({window}), got {stride}")
    return int(window), int(stride)


# ---------------------------------------------------------------------------------------------------------
# The authors' validation windows (evaluate's and training's `protocol: authors`)


def authors_windows(
    windows: Sequence[tuple[str, int, int]], stride: int, batch_size: int
) -> list[tuple[str, int, int]]:
    """The validation windows in the order the reference's loop sees them, cut to whole batches.

    Its windows are files `<video>_<i:04d>.npz`, i = start // stride (preprocess/split_VA_fold.py:61), listed by a
    sorted glob (VA/data/dataset.py:23-24) and batched without shuffling and with drop_last=True
    (VA/data/dataset.py:64-71), so the last partial batch, in that name order, never counts."""
    ordered = sorted(windows, key=lambda w: f"{w[0]}_{w[1] // stride:04d}.npz")
    return ordered[: len(ordered) // batch_size * batch_size]


def authors_keep(target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Frames the reference's validation counts: valence label != -5 (VA/vaestimation.py:302-314; the arousal
    label is not checked), within the window's real frames."""
    keep = target[..., 0] != -5
    return keep if mask is None else keep & mask.bool()


def authors_window_dataset(store, names: Sequence[str], labels, window: int, stride: int, batch_size: int):
    """A WindowDataset of the validation videos as the authors' validation loop sees them: each video's
    `crop_span` at its stored frames (never resampled), cut by their split (`split_windows`), its windows in
    `authors_windows` order. MambavaError when not one whole batch is left."""
    dataset = WindowDataset(store, names, {n: labels[n] for n in names}, window, stride, tails="drop", span="crops")
    cut = len(dataset.windows)
    dataset.windows = authors_windows(dataset.windows, stride, batch_size)
    if not dataset.windows:
        raise MambavaError(
            f"{store.root}: the authors' protocol leaves no window ({cut} windows of {window} frames in "
            f"{len(names)} videos, batches of {batch_size} with the last partial one dropped)"
        )
    return dataset
