"""What the generator makes (`SynthConfig`) and what it reports (`SynthSummary`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mambava.core.errors import MambavaError

# progress(done, total, name), called after each video or album
ProgressFn = Callable[[int, int, str], None]


@dataclass
class SynthConfig:
    """What to generate. Sizes are (width, height) in pixels; durations in seconds; rates per minute."""

    n_train: int = 16
    n_val: int = 4
    n_test: int = 4
    frames: tuple[int, int] = (450, 750)  # frames per video, drawn uniformly in [lo, hi]
    fps: int = 30
    size: tuple[int, int] = (256, 192)  # one-person video frame
    two_person_size: tuple[int, int] = (384, 216)
    two_person_fraction: float = 0.2
    crop_size: int = 112
    seed: int = 0
    # rater model
    lag_s: tuple[float, float] = (0.5, 1.0)
    rater_smoothing_s: float = 0.25
    invalid_runs_per_min: float = 1.5  # -5 runs (rater paused), 5..60 frames each
    # disturbances
    occlusions_per_min: float = 2.5
    gaps_per_min: float = 2.0  # no-face gaps (the person turns away), 0.3..2 s each
    noise_sigma: tuple[float, float] = (2.0, 6.0)  # sensor noise, grey levels
    # output
    write_videos: bool = True
    voices: bool = True  # each person speaks: the videos' AAC sound track and `voice` in the truth (synth/voice.py)
    jpeg_quality: int = 92
    crf: int = 23
    workers: int = 0  # processes; 0 = min(2, CPUs)

    def __post_init__(self) -> None:
        self.frames = tuple(int(x) for x in self.frames)  # type: ignore[assignment]
        self.size = tuple(int(x) for x in self.size)  # type: ignore[assignment]
        self.two_person_size = tuple(int(x) for x in self.two_person_size)  # type: ignore[assignment]
        self.lag_s = tuple(float(x) for x in self.lag_s)  # type: ignore[assignment]
        self.noise_sigma = tuple(float(x) for x in self.noise_sigma)  # type: ignore[assignment]
        problems = []
        if min(self.n_train, self.n_val, self.n_test) < 0 or self.n_train + self.n_val + self.n_test == 0:
            problems.append("video counts must be >= 0 and not all 0")
        if not 30 <= self.frames[0] <= self.frames[1]:
            problems.append(f"frames must be a range lo <= hi with lo >= 30, got {self.frames}")
        if not 1 <= self.fps <= 120:
            problems.append(f"fps must be in 1..120, got {self.fps}")
        for name in ("size", "two_person_size"):
            w, h = getattr(self, name)
            if w % 2 or h % 2 or w < 128 or h < 128:
                problems.append(f"{name} must be even and at least 128x128, got {w}x{h}")
        if not 0 <= self.two_person_fraction <= 1:
            problems.append("two_person_fraction must be in [0, 1]")
        if not 0 <= self.lag_s[0] <= self.lag_s[1]:
            problems.append(f"lag_s must be a range 0 <= lo <= hi, got {self.lag_s}")
        if self.crop_size < 32:
            problems.append("crop_size must be >= 32")
        if problems:
            raise MambavaError("SynthConfig: " + "; ".join(problems))

    @classmethod
    def tiny(cls, seed: int = 0, **overrides) -> "SynthConfig":
        """A dataset of 4 short videos (one of them two-person) that generates in about a second: for tests."""
        values = dict(n_train=2, n_val=1, n_test=1, frames=(60, 90), two_person_fraction=0.0, seed=seed, workers=1)
        values.update(overrides)
        config = cls(**values)
        return config

    def to_dict(self) -> dict:
        """The fields that decide the content (`workers` does not)."""
        data = dataclasses.asdict(self)
        data.pop("workers")
        return data


@dataclass
class SynthSummary:
    """What `generate` wrote. `splits` maps train/validation/test to annotation names (`<v>` or
    `<v>_left`/`<v>_right`); `videos` are the raw video names (base names)."""

    root: Path
    splits: dict[str, list[str]]
    videos: list[str]
    frames: int  # video frames, all videos
    person_frames: int  # frames summed over annotation names (a two-person video counts twice)
    crops: int
    invalid_labels: int
    seconds: float
    config: SynthConfig = field(repr=False)

    def describe(self) -> str:
        n = {k: len(v) for k, v in self.splits.items()}
        return (
            f"{len(self.videos)} videos ({n['train']} train / {n['validation']} validation / {n['test']} test "
            f"annotation names), {self.frames} frames, {self.crops} crops "
            f"({self.person_frames - self.crops} frames without a face), {self.invalid_labels} frames labelled -5, "
            f"in {self.seconds:.1f} s -> {self.root}"
        )
