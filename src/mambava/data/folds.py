"""Folds for the paper's Table 1 (§4.4): fold 0 is the official train/validation split; folds 1..n are an
n-fold cross-validation over the train + validation videos together.

Videos are grouped by base video (`mambava.data.affwild2.base_video`): `<v>`, `<v>_left` and `<v>_right` always land
in the same fold (`_left`/`_right` are the two annotated people of one recording), so no recording is on both sides.
The groups are shuffled with `seed`, then dealt largest first to the fold with the least load so far (load = number
of videos, or the sum of `weights`, e.g. frame counts); the result depends only on the video names, `n_folds`,
`seed` and `weights`.
Folds are saved to a small YAML (or JSON, by suffix) file so a run names exactly what it trained on:

    format: 1
    folds:
      '0': {train: [...], validation: [...]}
      '1': {train: [...], validation: [...]}
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import yaml

from mambava.core.errors import MambavaError
from mambava.core.fileio import atomic_open
from mambava.data.affwild2 import base_video

FORMAT_VERSION = 1
Folds = dict[int, dict[str, list[str]]]


def make_folds(
    train_videos: Sequence[str],
    val_videos: Sequence[str],
    n_folds: int = 5,
    seed: int = 0,
    weights: Mapping[str, float] | None = None,
) -> Folds:
    """{0: official split, 1..n_folds: cross-validation folds}, each {"train": [...], "validation": [...]}
    with sorted video names (see the module docstring for the grouping and the deal)."""
    train, val = list(train_videos), list(val_videos)
    everything = train + val
    repeated = sorted(v for v, n in Counter(everything).items() if n > 1)
    if repeated:
        raise MambavaError(f"videos listed twice across train/validation: {', '.join(repeated[:5])}")
    if weights is not None and any(v not in weights for v in everything):
        raise MambavaError(f"no weight for video {next(v for v in everything if v not in weights)!r}")
    groups: dict[str, list[str]] = defaultdict(list)
    for video in sorted(everything):
        groups[base_video(video)].append(video)
    if not 2 <= n_folds <= len(groups):
        raise MambavaError(f"cannot make {n_folds} folds from {len(groups)} base videos (need 2 <= n_folds <= groups)")
    keys = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(keys))
    shuffled = [keys[i] for i in order]

    def load(key: str) -> float:
        return float(sum(weights[v] for v in groups[key])) if weights is not None else float(len(groups[key]))

    shuffled.sort(key=load, reverse=True)  # stable: equal loads keep the shuffled order
    totals = [0.0] * n_folds
    members: list[list[str]] = [[] for _ in range(n_folds)]
    for key in shuffled:
        fold = min(range(n_folds), key=lambda k: (totals[k], len(members[k]), k))
        totals[fold] += load(key)
        members[fold] += groups[key]
    folds: Folds = {0: {"train": sorted(train), "validation": sorted(val)}}
    for k in range(n_folds):
        held_out = set(members[k])
        folds[k + 1] = {"train": sorted(set(everything) - held_out), "validation": sorted(held_out)}
    return folds


def save_folds(path: str | os.PathLike, folds: Mapping[int, Mapping[str, Sequence[str]]]) -> None:
    """Write folds atomically: JSON if `path` ends in .json, else YAML."""
    path = Path(path)
    data = {
        "format": FORMAT_VERSION,
        "folds": {
            str(k): {"train": list(f["train"]), "validation": list(f["validation"])} for k, f in sorted(folds.items())
        },
    }
    with atomic_open(path, "w") as handle:
        if path.suffix.lower() == ".json":
            json.dump(data, handle, indent=1)
        else:
            yaml.safe_dump(data, handle, sort_keys=False, default_flow_style=None, width=120)


def load_folds(path: str | os.PathLike) -> Folds:
    """Read a folds file written by `save_folds`; MambavaError naming the file if it is malformed or a fold
    has a video on both sides."""
    path = Path(path)
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise MambavaError(f"{path}: cannot read folds ({error})") from error
    if not isinstance(data, dict) or not isinstance(data.get("folds"), dict) or not data["folds"]:
        raise MambavaError(f"{path}: expected a mapping with a non-empty 'folds' section")
    folds: Folds = {}
    for key, fold in data["folds"].items():
        try:
            k = int(key)
        except (TypeError, ValueError):
            raise MambavaError(f"{path}: fold id {key!r} is not an integer") from None
        if not isinstance(fold, dict) or set(fold) != {"train", "validation"}:
            raise MambavaError(f"{path}: fold {key} must have exactly 'train' and 'validation' lists")
        lists = {}
        for side in ("train", "validation"):
            videos = fold[side] or []
            if not isinstance(videos, list) or not all(isinstance(v, str) for v in videos):
                raise MambavaError(f"{path}: fold {key} {side} must be a list of video names")
            lists[side] = list(videos)
        both = set(lists["train"]) & set(lists["validation"])
        if both:
            raise MambavaError(f"{path}: fold {key} has {sorted(both)[0]!r} in both train and validation")
        folds[k] = lists
    return dict(sorted(folds.items()))
