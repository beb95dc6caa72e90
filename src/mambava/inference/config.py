"""The options of a prediction, shared by `Predictor` (offline), its live stream and `mambava serve`: one
dataclass instead of a dozen keyword arguments on each. The command line builds it from its options
(`mambava.cli.options.predict_config`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mambava.core.errors import MambavaError
from mambava.data.timebase import check_fps
from mambava.data.windows import STITCHING
from mambava.temporal.tcn import STEP_PRECISIONS

WINDOWING = ("windows", "full", "chunks")


@dataclass
class PredictConfig:
    """How to predict.

    Attributes:
        windowing: "full" (one causal pass; equals the stream), "windows" (overlapping windows of `window`
            frames every `stride`, stitched; ours) or "chunks" (non-overlapping windows of `window` frames, each
            from an empty state, concatenated, the last one shorter: with window 500, the authors' test inference,
            FreedomPuppy77/Charon VA/test.py:47-107).
        stitching: how windows are stitched: "most_history" or "mean" (both ours: the paper states none).
        window: window length in frames (None: the checkpoint's run config, else 300).
        stride: window stride in frames (None: the checkpoint's run config, else 200).
        detector: a face detector's name or object (`mambava.faces.get_detector`).
        landmarks: a landmark source for the detector's faces (a refiner file or a registered name), or None.
        detect_every: run the detector on 1 frame in this many and follow faces between (1: every frame).
        persons: describe each track's face (`mambava.faces.identity`, the `faces` extra): tracks of one person
            joined by face, and a `person` column.
        identities: a gallery folder (one photo or folder of photos per name) naming the persons; implies `persons`.
        device: "cpu", "cuda", "auto", or None for the default.
        batch_size: crops per backbone batch.
        precision: the backbone's: "auto" (bf16 where the CPU or GPU runs it fast), "bf16" or "fp32".
        fps: process at most this many source frames per second (None: every frame).
        features_fps: the frame rate of features given as arrays or .npy files.
        audio: a fusion model's audio feature sets ("egemaps,logmel"), None for those of its audio width,
            False to mask every frame's sound.
        step_precision: the live stream's recurrent step: "fp32", "bf16" or "int8" (its TCN weights).
        realtime: a video file streamed at its own pace, dropping frames that cannot be kept up with.
        progress: show a progress bar over inputs.
        threads: torch threads for every stage (detector, landmarks, backbone, temporal model), whatever the
            load, so that the same input always gives the same bits (`mambava.core.runtime.fixed_threads`);
            None: one thread while the machine is busy, else torch's count (faster on a shared machine, but
            the last digits follow the load).
        expressions: add the seven expression probabilities per frame (`mambava.faces.expression`); always on
            with the expression-va model.
    """

    windowing: str = "full"
    stitching: str = "most_history"
    window: int | None = None
    stride: int | None = None
    detector: Any = "mtcnn"
    landmarks: str | None = None
    detect_every: int = 1
    persons: bool = False
    identities: str | None = None
    device: str | None = "cpu"
    batch_size: int = 32
    precision: str = "auto"
    fps: float | None = None
    features_fps: float = 30.0
    audio: str | bool | None = None
    step_precision: str = "fp32"
    realtime: bool = False
    progress: bool = False
    threads: int | None = None
    expressions: bool = False

    def __post_init__(self) -> None:
        if self.windowing not in WINDOWING:
            raise MambavaError(f"windowing must be one of {', '.join(WINDOWING)}, got {self.windowing!r}")
        if self.stitching not in STITCHING:
            raise MambavaError(f"stitching must be one of {', '.join(STITCHING)}, got {self.stitching!r}")
        if self.fps is not None:
            check_fps(self.fps, "--fps")
        check_fps(self.features_fps, "--features-fps")
        if int(self.detect_every) != self.detect_every or self.detect_every < 1:
            raise MambavaError(f"--detect-every must be a whole number >= 1, got {self.detect_every}")
        self.detect_every = int(self.detect_every)
        if self.identities is not None:
            self.persons = True
        if self.threads is not None and (int(self.threads) != self.threads or self.threads < 1):
            raise MambavaError(f"--threads must be a whole number >= 1, got {self.threads}")
        if self.step_precision not in STEP_PRECISIONS:
            raise MambavaError(f"step precision {self.step_precision!r}: expected one of {', '.join(STEP_PRECISIONS)}")

    def replace(self, **changes) -> PredictConfig:
        """A copy with `changes` (checked again)."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unknown prediction option(s): {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)
