"""Per-frame valence/arousal for any video, offline: video -> faces (tracks) -> backbone features -> temporal
model -> one row per frame and track.

    from mambava import Predictor
    predictor = Predictor("model.safetensors", backbone="mae_vit_large.pth")
    table = predictor.predict_video("clip.mp4")      # pandas.DataFrame, COLUMNS below
    for row in predictor.stream(0):                  # webcam 0, live: see mambava.inference.stream
        print(row.frame, row.valence, row.arousal)

Output columns (`COLUMNS`): `video`, `track` (the faces stage's names: `<video>` for one person,
`<video>_left`/`_right` for two seen together, `<video>_<k>` otherwise), `frame` (0-based index in the
source), `time` (seconds), `valence`, `arousal` (clipped to [-1, 1]), `face` (1 where the track's face was
found in that frame, 0 where it was not), `x1 y1 x2 y2` (the face box, empty where there is none),
`processed` (1 where the frame went through faces and backbone, 0 where `fps` skipped it), and three columns
named as OpenFace names them, for the tools that already parse its output: `timestamp` (= `time`),
`confidence` (the face detector's score for this track in this frame, 0 where no face was found, empty for a
features `.npy`, which has no detector) and `success` (= `face`). One row per source frame and track, frames
skipped by `fps` included. After them: `voice` (a fusion model), the face columns (`x_0`..`y_67` and
`pose_Rx`..`pose_Tz` with a 68-point landmark source, `person` with `persons`), the seven expression
probabilities `anger`..`neutral` (`mambava.faces.expression.EXPRESSIONS`; with `expressions`, always with the
default model; NaN where the track has no face), and last `model`, the temporal model's name (`expression-va`,
the built-in default that is not the paper's model, or the checkpoint's file name).

Time base (`mambava.data.timebase`): the temporal model runs on its own frame grid (its config's `fps`, 30 for
Aff-Wild2 models) whatever the video's rate or `fps`: each grid tick takes the first processed frame of its
slot and holds the last feature where a slot has none (frames skipped by `fps`, a slower video); each source
frame gets the prediction of its slot's tick. A 30 fps video with every frame processed is unchanged by this.

No-face frames (one policy with training, `mambava.data.store.forward_fill`): a frame where a track's face is
not found takes the feature of that track's previous face; frames before the track's first face take its
first face's feature; `face` = 0 marks them. A video with no face at all is an error (MambavaError), not a
table of guesses.

Windowing, which decides what a frame's prediction has seen:
- `"full"` (default): one causal pass over the whole sequence. This is what the live stream computes step by
  step (`Predictor.stream`, `mambava.inference.stream`), to float32 rounding.
- `"windows"` (what `evaluate` scores with "mean"): windows of 300 frames every 200, each run from an empty state
  (`mambava.data.windows.predict_sequence`), stitched by `stitching` (`mambava.data.windows.STITCHING`):
  "most_history" (default), each frame from the window where it has the most history, or "mean" over the
  windows that cover a frame (what `evaluate` scores).
- `"chunks"`: non-overlapping windows of `window` frames, each from an empty state, concatenated (the last one
  shorter): with `window=500` what the authors' test inference computes (FreedomPuppy77/Charon VA/test.py:47-107).
The defaults were chosen by measurement on the demo (`mambava bench stitching`; docs/predict.md, Stitching).

An audio-visual fusion model (`mambava.temporal.FusionMambaVA`) hears by default (`audio` None: the
feature sets its `audio_dim` names, `default_audio_sets`; or the sets given, e.g. "egemaps,logmel"; `audio=False`:
every frame's sound masked, as a video without a track): the video's sound is turned into per-frame features on the
same frames
(`mambava.audio.frame_features`) and joined to each track's (visual, audio, audio mask); a frame without a face
holds its track's last face feature but keeps its own sound. The table then has a `voice` column (1 where the
frame had usable sound). A features `.npy` for a fusion model holds the joined columns itself.

A precomputed feature file (`.npy`, T x D, one row per frame; rows that are all NaN count as no-face frames)
skips faces and backbone; its times are `frame / features_fps` (30 by default), put on the model's grid
like a video's.
"""

from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Generator, Mapping

import numpy as np
import pandas as pd
import torch

from mambava.analysis.summaries import summarize
from mambava.audio import audio_of_frames, check_sets, frame_features, set_dims
from mambava.backbone import FeatureExtractor, ViTEncoder, load_encoder
from mambava.backbone.extractor import resolve_precision
from mambava.core.errors import MambavaError
from mambava.core.progress import track_items
from mambava.core.runtime import fixed_threads, load_aware_threads, resolve_device
from mambava.data.affwild2 import DataWarning
from mambava.data.store import FeatureStore, features_with_mask, forward_fill, load_features_file
from mambava.data.timebase import model_fps, to_grid
from mambava.data.windows import check_windowing, predict_sequence
from mambava.faces import FaceTracker, get_detector, iter_tracked_faces
from mambava.faces.columns import GEOMETRY_COLUMNS, geometry_columns, gives_landmarks68
from mambava.faces.dataset import face_stage_differences, training_crops_settings
from mambava.faces.dlib_models import face_recognizer
from mambava.faces.expression import EXPRESSIONS, ExpressionRecognizer, probabilities_of_features
from mambava.faces.identity import (
    OnlinePersons,
    TrackIdentity,
    TrackSampler,
    assign_persons,
    finish_identified_tracks,
    load_gallery,
)
from mambava.inference.catalog import DEFAULT_MODEL, builtin_model, is_builtin
from mambava.inference.config import WINDOWING, PredictConfig
from mambava.inference.files import FEATURE_SUFFIXES
from mambava.inference.stream import LiveStream, is_live_source
from mambava.media.video import open_video, source_name
from mambava.temporal import check_finite, load_temporal_model, model_input_dim
from mambava.temporal.tcn import quantize_tcn

if TYPE_CHECKING:
    import pandas

    from mambava.inference.stream import LiveStream

COLUMNS = [
    "video",
    "track",
    "frame",
    "time",
    "valence",
    "arousal",
    "face",
    "x1",
    "y1",
    "x2",
    "y2",
    "processed",
    "timestamp",
    "confidence",
    "success",
]
MODEL_COLUMN = "model"  # every table's last column: the temporal model's name (expression-va is not Mamba-VA)
# Chosen by measurement on the demo (`mambava bench stitching`, docs/predict.md, Stitching): the full causal pass has
# the smallest frame-to-frame jumps at a P_VA within 0.002 of the best; with windows, most_history has 30%
# smaller jumps than the mean at the mean's P_VA.


def load_model(checkpoint):
    """(model in eval mode, window, stride, name, the run's config or None) from a checkpoint path (our
    safetensors, any model kind, a Lightning run checkpoint or the authors' .pth:
    `mambava.temporal.load_temporal_model`) or a model object."""
    if not isinstance(checkpoint, (str, os.PathLike)):
        return checkpoint.eval(), None, None, getattr(checkpoint, "model_name", type(checkpoint).__name__), None
    if is_builtin(checkpoint, "temporal"):
        model = builtin_model(str(checkpoint))
        return model.eval(), None, None, model.model_name, None

    loaded = load_temporal_model(checkpoint)
    return loaded.model, loaded.window, loaded.stride, loaded.source, loaded.run_config


@dataclass
class TrackFeatures:
    """One face track over all processed frames of a video (positions 0..n-1, not source frame numbers)."""

    features: np.ndarray  # (n, D) float32, zeros where absent (filled by forward_fill later)
    present: np.ndarray  # (n,) bool
    boxes: np.ndarray  # (n, 4) float32, NaN where absent
    scores: np.ndarray | None = None  # (n,) float32 detector scores, NaN where absent; None: no detector
    landmarks68: np.ndarray | None = None  # (n, 68, 2) float32, NaN where absent; None: no 68-point source
    pose: np.ndarray | None = None  # (n, 6) float32 head pose, NaN where absent (with landmarks68)
    person: str | None = None  # the track's person (`PredictConfig.persons`)
    expressions: np.ndarray | None = None  # (n, 7) float32 expression probabilities, NaN where absent; None: not asked


@dataclass
class VideoFeatures:
    """Faces and features of one video: the processed frames and, per named track, its features; and every
    frame read from the source (processed or skipped by `fps`)."""

    video: str
    frames: np.ndarray  # (n,) int64, 0-based source frame numbers
    times: np.ndarray  # (n,) float64 seconds
    fps: float | None
    tracks: dict[str, TrackFeatures] = field(default_factory=dict)
    source_frames: np.ndarray | None = None  # (N,) int64, every frame read; None: the processed ones
    source_times: np.ndarray | None = None  # (N,) float64 seconds
    audio: np.ndarray | None = None  # (n, D_audio) float32 per processed frame (fusion models), zeros where no sound
    voice: np.ndarray | None = None  # (n,) bool: the processed frame has usable sound
    identities: list[TrackIdentity] | None = None  # per track, with `persons` (`mambava.faces.identity`)


@dataclass
class CropBatch:
    """Face crops of one backbone batch, in the order the faces stage found them: each crop's tracker id, its
    position among the processed frames, its box, detector score, 68 points and head pose (None without them)
    (`Predictor.scan_faces`)."""

    track_ids: list[int]
    positions: list[int]
    boxes: list[np.ndarray]
    scores: list[float]
    points: list
    poses: list
    crops: np.ndarray | None  # (B, S, S, 3) uint8 RGB
    # (B, 7) the crops' expression probabilities, where a process that sends the crops away for their features
    # ran the expression net on them first (`Predictor.crop_expressions`; a Ray task); None otherwise
    expressions: np.ndarray | None = None

    @classmethod
    def of(cls, pending: list[tuple]) -> CropBatch:
        return cls(
            [p[0] for p in pending],
            [p[1] for p in pending],
            [np.asarray(p[2], np.float32) for p in pending],
            [p[3] for p in pending],
            [p[5] for p in pending],
            [p[6] for p in pending],
            np.stack([p[4] for p in pending]),
        )


@dataclass
class FaceScan:
    """What the faces stage read of a video: the processed frames (0-based source numbers, seconds), the
    source's frame rate, every frame decoded (processed or skipped by `fps`) and, with `persons`, the sampled
    faces of each track (`TrackSampler`)."""

    video: str
    frames: list[int]
    times: list[float]
    fps: float | None
    source_frames: np.ndarray
    source_times: np.ndarray
    sampler: TrackSampler | None = None


def add_features(hits: dict[int, list], batch: CropBatch, features: np.ndarray, expressions=None) -> None:
    """Add a batch's features (B, D) and expression probabilities (B, 7; None: the batch's own, or none) to `hits`
    ({track id: [(position, feature, box, score, points, pose, expression or None)]})."""
    expressions = batch.expressions if expressions is None else expressions
    each = [None] * len(features) if expressions is None else expressions
    for tid, position, box, score, points, pose, feature, expression in zip(
        batch.track_ids, batch.positions, batch.boxes, batch.scores, batch.points, batch.poses, features, each
    ):
        hits.setdefault(tid, []).append((position, feature, box, score, points, pose, expression))


class Predictor:
    """Valence/arousal per frame from videos, feature files or live sources.

    Args:
        checkpoint: a temporal model file (see `load_model`), a model object, or a built-in name; None: the
            built-in `expression-va` (`mambava.temporal.expression_va`: not the paper's model).
        backbone: a ViT checkpoint path (`mambava.backbone.load_encoder`), a ViTEncoder or a FeatureExtractor, or
            "expression" (the expression net's features); needed for videos, not for feature files. None with
            expression-va: the expression net.
        config: the options (`mambava.inference.config.PredictConfig`: windowing, stitching, window, stride,
            detector, landmarks, detect_every, device, batch_size, precision, fps, features_fps, audio,
            step_precision, realtime, progress, threads); its defaults when None.
        **options: fields of PredictConfig that replace the config's (`Predictor(m, b, fps=10)`).

    `fps` processes at most that many frames per second of the source; the model still runs on its own frame
    grid (`mambava.data.timebase`), and the table still has a row per source frame. `audio` is a fusion
    model's audio feature sets ("egemaps,logmel"; `mambava.audio.FEATURE_SETS`, no "ssl"), computed from each
    video's sound; None: those of its `audio_dim` (`default_audio_sets`), nothing for a visual model; False: a
    fusion model with every frame's sound masked (`voice` 0).
    """

    def __init__(self, checkpoint=None, backbone=None, config: PredictConfig | None = None, **options):
        self.config = (config or PredictConfig()).replace(**options)
        c = self.config
        self.device = resolve_device(c.device)
        model, ckpt_window, ckpt_stride, self.model_name, self.run_config = load_model(
            DEFAULT_MODEL if checkpoint is None else checkpoint
        )
        self.model = model.to(self.device).eval()
        self.windowing = c.windowing
        self.stitching = c.stitching
        self.model_fps = model_fps(self.model)  # the time base: the model's frame grid

        # explicit values are checked (0 is an error, not "the default"); a --stride without --window is
        # checked against the checkpoint's window
        self.window, self.stride = check_windowing(
            c.window if c.window is not None else (ckpt_window or 300),
            c.stride if c.stride is not None else (ckpt_stride or 200),
        )
        self.input_dim = model_input_dim(self.model)
        # the offline pass in int8 where `precision` resolves to it for a TCN this wide (`resolve_precision`);
        # the live step keeps its own `step_precision`
        self.temporal_precision = "fp32"
        if self.device.type == "cpu" and c.precision in ("auto", "int8"):
            if resolve_precision(c.precision, self.device, self.input_dim or 0) == "int8":
                self.temporal_precision = "int8"
        self.runner = quantize_tcn(self.model) if self.temporal_precision == "int8" else self.model
        self.detect_every = c.detect_every
        self._detector = None
        self.batch_size = c.batch_size
        self.precision = c.precision
        self.fps = c.fps
        self.features_fps = c.features_fps
        self.progress = c.progress
        self.audio = self._check_audio(c.audio)
        if backbone is None and getattr(self.model, "backbone", None) == "expression":
            backbone = "expression"  # expression-va's features are the expression net's
        self.extractor = self._make_extractor(backbone) if backbone is not None else None
        self.expression_net = self._expression_net()
        # the gallery is read (and a bad photo refused) before any input is touched
        self.gallery = load_gallery(c.identities, self.detector) if c.identities is not None else None
        if c.persons:
            face_recognizer()  # without the faces extra: one line now, not one per input

    def without_backbone(self) -> Predictor:
        """A copy without the backbone and without a built detector (it is built again from the config where
        the copy is used): what a process needs that gets the crops' features from elsewhere (a Ray task,
        `mambava.distributed`). It cuts the faces stage's batches as this predictor does. The expression net
        (58k weights) is no backbone to send crops away for: as the extractor (expression-va, `--backbone
        expression`) it stays, and the copy computes its own features (`video_features`); as a net of its own
        (`expressions` with a ViT) it stays too, and gives each batch its probabilities (`crop_expressions`)."""
        twin = copy.copy(self)
        if self.extractor is not None:
            twin.batch_size = self.extractor.batch_size
        if not isinstance(self.extractor, ExpressionRecognizer):
            twin.extractor = None
        twin._detector = None
        return twin

    def face_stage_notes(self) -> list[str]:
        """How this predictor's faces stage differs from the one that made the model's training crops, one line
        each, when those crops were made by `faces --dataset` and their marker is on this machine (the run's
        `data.annotations`); empty when they agree or nothing is known."""

        made = training_crops_settings(self.run_config)
        if made is None or self.extractor is None:
            return []
        return face_stage_differences(made, self.detector, self.detect_every)

    @property
    def fusion(self) -> bool:
        return getattr(self.model, "kind", "") == "fusion"

    def _check_audio(self, audio: str | bool | None) -> list[str] | None:
        """The audio feature sets (a list), checked against the model: a fusion model's audio size. None: the
        model hears nothing (a visual model, or `audio=False`: `self.muted`)."""
        self.muted = self.fusion and audio is False
        if audio is False or (audio is None and not self.fusion):
            return None
        if not self.fusion:
            raise MambavaError(
                f"--audio: the temporal model {self.model_name} takes visual features only (not a fusion model)"
            )
        if audio is None or audio is True:
            return default_audio_sets(self.model.audio_dim)  # (None: a width to name, see _make_extractor)

        sets = check_sets(audio)  # (ssl, which needs a speech model, is refused here)
        dim = sum(set_dims(sets))
        if dim != self.model.audio_dim:
            raise MambavaError(
                f"--audio {','.join(sets)}: {dim} audio features per frame, but the fusion model "
                f"{self.model_name} takes {self.model.audio_dim}"
            )
        return list(sets)

    def _make_extractor(self, backbone):
        if is_builtin(backbone, "backbone"):
            backbone = builtin_model(str(backbone), batch_size=self.batch_size, device=self.device)
        if isinstance(backbone, (FeatureExtractor, ExpressionRecognizer)):
            extractor = backbone
            name = "the backbone" if isinstance(backbone, FeatureExtractor) else "the expression net"
        else:
            encoder = backbone if isinstance(backbone, ViTEncoder) else load_encoder(backbone)
            extractor = FeatureExtractor(
                encoder, batch_size=self.batch_size, device=self.device, precision=self.precision
            )
            name = str(backbone) if not isinstance(backbone, ViTEncoder) else "the backbone"
        if self.fusion:  # its width holds the audio's too
            if self.audio is None and not self.muted:
                raise MambavaError(
                    f"{self.model_name}: an audio-visual fusion model of {self.model.audio_dim} audio "
                    f"features per frame: pass --audio with the feature sets it was trained on, or "
                    f"--no-audio"
                )
            if extractor.dim != self.model.visual_dim:
                raise MambavaError(
                    f"{name} gives {extractor.dim}-d features but the fusion model {self.model_name} "
                    f"takes {self.model.visual_dim}-d visual features: trained on another backbone"
                )
        elif self.input_dim is not None and extractor.dim != self.input_dim:
            raise MambavaError(
                f"{name} gives {extractor.dim}-d features but the temporal model {self.model_name} takes "
                f"{self.input_dim}-d: the checkpoint was trained on another backbone"
            )
        return extractor

    # ------------------------------------------------------------------------------------------ expressions

    @property
    def expressions(self) -> bool:
        """Whether tables and streams carry the expression columns: asked for, or the model is expression-va."""
        return bool(self.config.expressions) or getattr(self.model, "backbone", None) == "expression"

    @property
    def model_label(self) -> str:
        """The model's name as tables and the server carry it: a built-in name, else the checkpoint's file name
        (never the folder it is in)."""
        return PurePath(str(self.model_name)).name

    def _expression_net(self) -> ExpressionRecognizer | None:
        """The expression net the expression columns come from: the extractor itself when it is one (its
        features end with the logits), else a net of its own (`expressions` asked for), else None."""
        if not self.expressions:
            return None
        if isinstance(self.extractor, ExpressionRecognizer):
            return self.extractor
        return ExpressionRecognizer(batch_size=self.batch_size, device=self.device)

    def crop_expressions(self, crops: np.ndarray | None, features: np.ndarray) -> np.ndarray | None:
        """(N, 7) probabilities of face crops whose extractor features are `features`: from the features when
        the extractor is the expression net, else by running it; None when the expressions are not asked."""
        if self.expression_net is None:
            return None
        if self.expression_net is self.extractor and features is not None:
            return probabilities_of_features(features)
        if crops is None:  # features sent without their crops (a serve session): nothing to run the net on
            return None
        return self.expression_net.probabilities(crops)

    @property
    def detector(self):
        if self._detector is None:
            self._detector = get_detector(self.config.detector, landmarks=self.config.landmarks)
        return self._detector

    # ------------------------------------------------------------------------------------------ the model

    def _check_dim(self, dim: int, what: str) -> None:
        if self.input_dim is not None and dim != self.input_dim:
            raise MambavaError(
                f"{what}: {dim}-d features, but the temporal model {self.model_name} takes {self.input_dim}-d"
            )

    def predict_raw(
        self, features: np.ndarray, present: np.ndarray | None = None, windowing: str | None = None
    ) -> np.ndarray:
        """The temporal model on one sequence (T, D): (T, 2) float32, not clipped. Absent rows (present False)
        are forward-filled first."""

        windowing = windowing or self.windowing
        if windowing not in WINDOWING:
            raise MambavaError(f"windowing must be one of {', '.join(WINDOWING)}, got {windowing!r}")
        features = np.asarray(features, dtype=np.float32)
        if present is not None and not np.all(present):
            if self.fusion:  # a frame without a face holds the last face's features, not the last face's sound
                features = features.copy()
                visual = self.model.visual_dim
                features[:, :visual] = forward_fill(features[:, :visual], present)
            else:
                features = forward_fill(features, present)
        x = torch.from_numpy(np.ascontiguousarray(features)).to(self.device)
        with torch.inference_mode(), load_aware_threads():
            if windowing == "full":
                y = self.runner(x[None]).float()[0]
            elif windowing == "chunks":  # each chunk run alone, as it is (the last one shorter, no padding)
                parts = [self.runner(x[None, s : s + self.window]).float()[0] for s in range(0, len(x), self.window)]
                y = torch.cat(parts) if parts else self.runner(x[None]).float()[0]
            else:
                y = predict_sequence(self.runner, x, self.window, self.stride, stitching=self.stitching)
        return y.cpu().numpy()

    def predict_features(
        self, features: np.ndarray, present: np.ndarray | None = None, name: str = "features"
    ) -> np.ndarray:
        """(T, 2) valence/arousal, clipped to [-1, 1], for a (T, D) feature sequence; `present` (T,) bool
        marks frames with a face (default: the rows that are not all NaN). A non-finite output is a
        MambavaError naming `name` and the frame (`mambava.temporal.check_finite`)."""

        features, present = self._checked(features, present)
        raw = self.predict_raw(features, present)
        check_finite(raw, self.model_name, name, features=features[present])
        return np.clip(raw, -1.0, 1.0)

    def _checked(self, features: np.ndarray, present: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if present is None:
            features, present = features_with_mask(features)
        features = np.asarray(features)
        if features.ndim != 2:
            raise MambavaError(f"features must be (T, D), got shape {features.shape}")
        self._check_dim(features.shape[1], "features")
        return features, np.asarray(present, bool)

    def predict_timed(
        self, features: np.ndarray, present: np.ndarray, times, source_times=None, name: str = "features"
    ) -> np.ndarray:
        """(N, 2) clipped valence/arousal for the source frames at `source_times` (default: `times`), from the
        features (n, D) of the processed frames at `times` (seconds): the model runs on its own frame grid
        (`mambava.data.timebase.to_grid`) and each source frame takes its slot's tick."""
        grid = to_grid(times, self.model_fps, source_times)
        return self.predict_features(features[grid.held], present[grid.held], name=name)[grid.tick]

    # ------------------------------------------------------------------------------------------ inputs

    def predict(self, source: str | os.PathLike) -> pandas.DataFrame:
        """A video (file, image folder, URL) or a feature file (.npy) -> the per-frame table (on
        `config.threads` threads when set: `mambava.core.runtime.fixed_threads`)."""
        with fixed_threads(self.config.threads):
            if Path(source).suffix.lower() in FEATURE_SUFFIXES:
                return self.predict_feature_file(source)
            return self.predict_video(source)

    def predict_feature_file(self, path: str | os.PathLike) -> pandas.DataFrame:
        features, present = load_features_file(path)
        self._check_dim(features.shape[1], str(path))
        n = len(features)
        frames = np.arange(n)
        track = TrackFeatures(features, present, np.full((n, 4), np.nan, np.float32))
        track.expressions = self._file_expressions(path, features, present)
        return self._table(Path(path).stem, frames, frames / self.features_fps, {Path(path).stem: track})

    def _file_expressions(self, path, features: np.ndarray, present: np.ndarray) -> np.ndarray | None:
        """A feature file's expression probabilities: from its logits with expression-va (whose features are the
        expression net's), NaN where absent; a MambavaError when asked of other features (no crops to run on)."""
        if not self.expressions:
            return None
        if getattr(self.model, "backbone", None) != "expression":
            raise MambavaError(f"{path}: --expressions needs a video (the expression net runs on the face crops)")
        expressions = np.full((len(features), len(EXPRESSIONS)), np.nan, np.float32)
        expressions[present] = probabilities_of_features(features[present])
        return expressions

    def predict_video(self, path: str | os.PathLike) -> pandas.DataFrame:
        """Faces, features and the temporal model for every processed frame of a video; see the module doc."""
        return self.predict_with_identities(path)[0]

    def predict_with_identities(self, path: str | os.PathLike) -> tuple[pandas.DataFrame, list[TrackIdentity] | None]:
        """`predict_video`'s table and, with `persons`, each track's `TrackIdentity` (in the table's track order),
        from which `mambava.faces.identity.assign_persons` gives a whole batch one set of person ids
        (`name_persons`)."""
        extracted = self.video_features(path)
        return self.table(extracted), extracted.identities

    def video_features(self, path: str | os.PathLike) -> VideoFeatures:
        """Detect and track faces over a video and encode every face crop (batched): `scan_faces`, the backbone
        on each of its batches, `assemble`, all in this process (a Ray run spreads the same steps over a
        cluster: `mambava.distributed`)."""

        if self.extractor is None:
            raise MambavaError(f"{path}: --backbone is required for videos; pass a features .npy instead")
        hits: dict[int, list] = {}
        scan = self.scan_faces(path)
        while True:
            try:
                batch = next(scan)
            except StopIteration as stop:
                return self.assemble(path, stop.value, hits)
            features = self.extractor.features(batch.crops)
            add_features(hits, batch, features, self.crop_expressions(batch.crops, features))

    def scan_faces(self, path: str | os.PathLike) -> Generator[CropBatch, None, FaceScan]:
        """The faces stage over a video, streaming: yields the face crops in the batches the backbone takes
        (cut where `batch_size` crops are pending after a frame, so a batch may hold a few more), and returns
        the FaceScan of the frames it read. At most one batch of crops is held at a time."""
        video = source_name(path)
        frames: list[int] = []
        times: list[float] = []
        pending: list[tuple] = []  # (track id, position, box, score, crop, 68 points, pose)
        sampler = TrackSampler(detector=getattr(self.detector, "name", "")) if self.config.persons else None
        batch_size = self.extractor.batch_size if self.extractor is not None else self.batch_size
        with open_video(path, fps=self.fps) as reader:
            stream = iter_tracked_faces(
                reader,
                self.detector,
                tracker=FaceTracker(),
                keep_images=sampler is not None,
                detect_every=self.detect_every,
            )
            for item in track_items(stream, f"faces+features {video}", reader.n_output_frames, self.progress):
                position = len(frames)
                frames.append(item.index)
                times.append(item.time)
                for face in item.faces:
                    pending.append(
                        (face.track_id, position, face.box, face.score, face.crop, face.landmarks68, face.pose)
                    )
                    if sampler is not None:
                        sampler.offer(face.track_id, position, item.image, face)
                if len(pending) >= batch_size:
                    yield CropBatch.of(pending)
                    pending = []
            if pending:
                yield CropBatch.of(pending)
            source_frames, source_times = reader.decoded()
            return FaceScan(video, frames, times, reader.fps, source_frames, source_times, sampler)

    def assemble(self, path: str | os.PathLike, scan: FaceScan, hits: dict[int, list]) -> VideoFeatures:
        """A video's VideoFeatures from its FaceScan and the features of its crops (`add_features`): tracks
        finished (and, with `persons`, identified) as the faces stage finishes them, and a fusion model's sound."""
        n = len(scan.frames)
        if n == 0:
            raise MambavaError(f"{path}: no frame could be read")
        # drop spurious tracks, join (by face too, with persons), name: as the faces stage
        finished, _, identities = finish_identified_tracks(scan.video, hits, n, scan.sampler)
        if not finished:
            raise MambavaError(f"{path}: no face found in any of its {n} frames; nothing to predict")
        persons = assign_persons(identities, self.gallery) if identities is not None else [None] * len(finished)
        geometry = gives_landmarks68(self.detector)
        dim = len(next(iter(hits.values()))[0][1])
        tracks = {}
        for track, person in zip(finished, persons):
            rows = track.rows
            positions = np.array([r[0] for r in rows])
            features = np.zeros((n, dim), np.float32)
            present = np.zeros(n, bool)
            boxes = np.full((n, 4), np.nan, np.float32)
            scores = np.full(n, np.nan, np.float32)
            features[positions] = np.stack([r[1] for r in rows])
            boxes[positions] = np.stack([r[2] for r in rows])
            scores[positions] = [r[3] for r in rows]
            present[positions] = True
            tracks[track.name] = TrackFeatures(features, present, boxes, scores, person=person)
            if self.expression_net is not None:
                tracks[track.name].expressions = _track_expressions(rows, positions, n)
            if geometry:
                tracks[track.name].landmarks68, tracks[track.name].pose = _track_geometry(rows, positions, n)
        frames = np.asarray(scan.frames, np.int64)
        audio, voice = self._audio_features(path, frames) if self.fusion else (None, None)
        return VideoFeatures(
            scan.video,
            frames,
            np.asarray(scan.times, np.float64),
            scan.fps,
            tracks,
            scan.source_frames if len(scan.source_frames) else None,
            scan.source_times if len(scan.source_times) else None,
            audio,
            voice,
            identities,
        )

    def table(self, extracted: VideoFeatures) -> pandas.DataFrame:
        """The per-frame table of a video's VideoFeatures (see the module doc)."""
        return self._table(
            extracted.video,
            extracted.frames,
            extracted.times,
            extracted.tracks,
            extracted.source_frames,
            extracted.source_times,
            extracted.audio,
            extracted.voice,
        )

    def _audio_features(self, path, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n, D_audio) features and (n,) sound mask of the processed source frames `frames`: the video's frame
        grid is the one the frames are numbered on; frames past the sound's grid are masked, and every frame
        when `muted`."""

        return audio_of_frames(*self.source_audio(path), frames)

    def source_audio(self, path) -> tuple[np.ndarray, np.ndarray]:
        """A fusion model's audio of a video per source frame: ((N, D_audio) features, (N,) sound mask);
        empty (N = 0, every frame masked) when `muted`."""
        if self.muted:
            return np.zeros((0, self.model.audio_dim), np.float32), np.zeros(0, bool)

        result = frame_features(path, self.audio)
        return result.features, result.mask

    def _table(
        self,
        video: str,
        frames,
        times,
        tracks: Mapping[str, TrackFeatures],
        source_frames=None,
        source_times=None,
        audio=None,
        voice=None,
    ) -> pandas.DataFrame:
        """One row per source frame and track; the model on its frame grid (see `predict_timed`). With `audio`
        and `voice` (per processed frame) each track's features are joined to them, and a `voice` column added."""

        frames, times = np.asarray(frames, np.int64), np.asarray(times, np.float64)
        if source_frames is None:
            source_frames, source_times = frames, times
        # each source frame's position among the processed frames, -1 where `fps` skipped it
        order = np.argsort(frames, kind="stable")
        at = np.minimum(np.searchsorted(frames[order], source_frames), len(frames) - 1)
        position = np.where(frames[order][at] == source_frames, order[at], -1)
        processed = position >= 0
        row = np.maximum(position, 0)
        parts = []
        for name, track in tracks.items():
            features = track.features
            if audio is not None:
                features = np.concatenate([features, audio, voice[:, None].astype(np.float32)], axis=1)
            va = self.predict_timed(features, track.present, times, source_times, name=name)
            face = track.present[row] & processed
            boxes = np.where(processed[:, None], track.boxes[row], np.nan)
            confidence = (
                np.full(len(row), np.nan, np.float32)
                if track.scores is None
                else np.where(face, np.nan_to_num(track.scores[row]), 0.0).astype(np.float32)
            )
            parts.append(
                pd.DataFrame(
                    {
                        "video": video,
                        "track": name,
                        "frame": source_frames,
                        "time": source_times,
                        "valence": va[:, 0],
                        "arousal": va[:, 1],
                        "face": face.astype(np.int8),
                        "x1": boxes[:, 0],
                        "y1": boxes[:, 1],
                        "x2": boxes[:, 2],
                        "y2": boxes[:, 3],
                        "processed": processed.astype(np.int8),
                        "timestamp": source_times,
                        "confidence": confidence,
                        "success": face.astype(np.int8),
                        **({} if voice is None else {"voice": (voice[row] & processed).astype(np.int8)}),
                        **_face_columns(track, row, face),
                        **expression_columns(track.expressions, row, face),
                        MODEL_COLUMN: self.model_label,
                    }
                )
            )
        extra = ([] if voice is None else ["voice"]) + _face_column_names(next(iter(tracks.values())))
        extra += list(EXPRESSIONS) if self.expressions else []
        return pd.concat(parts, ignore_index=True)[COLUMNS + extra + [MODEL_COLUMN]]

    @staticmethod
    def summarize(table) -> pandas.DataFrame:
        """One row per track of a per-frame table: duration, face share, VA statistics
        (`mambava.analysis.summaries`)."""

        return summarize(table)

    # ------------------------------------------------------------------------------------------ live

    def stream(self, source, realtime: bool | None = None, step_precision: str | None = None) -> LiveStream:
        """Per-frame results from a webcam index, video file, URL, or features (.npy path or (T, D) array),
        computed with the temporal model's recurrent form (one step per tick of the model's frame grid; equals
        windowing="full"; with `step_precision` "bf16" or "int8", the TCN's step weights in that dtype: to 1e-2).
        Returns an iterable `mambava.inference.stream.LiveStream` of StreamResult rows; its `.dropped` counts frames
        skipped to keep up with real time (live sources, or files with `realtime=True`). `realtime` and
        `step_precision` default to the config's."""
        realtime = self.config.realtime if realtime is None else realtime
        step_precision = self.config.step_precision if step_precision is None else step_precision

        if isinstance(source, np.ndarray) or Path(str(source)).suffix.lower() in FEATURE_SUFFIXES:
            if isinstance(source, np.ndarray):
                (features, present), name = features_with_mask(source), "features"
            else:
                (features, present), name = load_features_file(source), Path(source).stem
            self._check_dim(features.shape[1], name)
            if self.config.persons:
                raise MambavaError(f"{name}: --persons and --identities need a video (features have no faces)")
            stream = LiveStream.from_features(self.model, features, present, name, self.features_fps, step_precision)
            if self._file_expressions(name, features, present) is not None:  # expression-va: from the logits
                stream.expressions = lambda crops, found: probabilities_of_features(found)
            return stream
        if self.extractor is None:
            raise MambavaError(f"{source}: --backbone is required for videos; pass a features .npy instead")
        audio = None
        if self.fusion:
            if is_live_source(source) and not self.muted:
                raise MambavaError(
                    f"{source}: audio is not supported live (only a video file's sound is read): "
                    f"stream with --no-audio (the fusion model with its sound masked)"
                )
            audio = self.source_audio(source)  # a file's whole sound track, decoded before the first frame
        return LiveStream(
            self.model,
            source,
            self.detector,
            self.extractor,
            realtime=realtime,
            fps=self.fps,
            step_precision=step_precision,
            detect_every=self.detect_every,
            audio=audio,
            persons=OnlinePersons(self.gallery, getattr(self.detector, "name", "")) if self.config.persons else None,
            expressions=self.crop_expressions if self.expression_net is not None else None,
        )


def _track_geometry(rows: list, positions: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A track's (n, 68, 2) points and (n, 6) poses over the processed frames, NaN where it has no face."""
    points = np.full((n, 68, 2), np.nan, np.float32)
    pose = np.full((n, 6), np.nan, np.float32)
    for position, r in zip(positions, rows):
        if r[4] is not None:
            points[position] = r[4]
        if r[5] is not None:
            pose[position] = r[5]
    return points, pose


def _track_expressions(rows: list, positions: np.ndarray, n: int) -> np.ndarray:
    """A track's (n, 7) expression probabilities over the processed frames (rows' last item), NaN where it has
    no face or where a face has none (features that came without their crops)."""
    expressions = np.full((n, len(EXPRESSIONS)), np.nan, np.float32)
    for position, r in zip(positions, rows):
        if r[6] is not None:
            expressions[position] = r[6]
    return expressions


def _face_column_names(track: TrackFeatures) -> list[str]:
    """The face columns a table has after `COLUMNS`: the 68 points and head pose (`--landmarks dlib68`) and
    `person` (`--persons`); every track of a video has the same."""
    return (GEOMETRY_COLUMNS if track.landmarks68 is not None else []) + (
        ["person"] if track.person is not None else []
    )


def _face_columns(track: TrackFeatures, row: np.ndarray, face: np.ndarray) -> dict:
    """A track's face columns over the source frames (`row`: each one's processed position), NaN where the
    track has no face there (`face` False)."""
    columns = {}
    if track.landmarks68 is not None:
        points = np.where(face[:, None, None], track.landmarks68[row], np.nan)
        pose = np.where(face[:, None], track.pose[row], np.nan)
        columns.update(geometry_columns(points, pose))
    if track.person is not None:
        columns["person"] = track.person
    return columns


def name_persons(tables: list, identities: list, gallery: dict | None = None) -> list:
    """One set of person ids for a batch: each (table, its tracks' `TrackIdentity` list) of
    `Predictor.predict_with_identities`, its `person` column set from `assign_persons` over all of them.
    Returns the batch's identities and their persons, flattened (for `write_persons_csv`)."""
    flat = [item for found in identities for item in (found or [])]
    persons = assign_persons(flat, gallery) if flat else []
    by_track = {(t.video, t.track): p for t, p in zip(flat, persons)}
    for table in tables:
        if "person" in table.columns:
            table["person"] = [
                by_track.get((v, t), p) for v, t, p in zip(table["video"], table["track"], table["person"])
            ]
    return flat, persons


def expression_columns(expressions: np.ndarray | None, row: np.ndarray, face: np.ndarray) -> dict[str, np.ndarray]:
    """A track's expression columns for the table's rows (`row`: each source frame's processed position): the
    probabilities where its face was found, NaN elsewhere; {} when the expressions are not asked."""
    if expressions is None:
        return {}
    values = np.where(face[:, None], expressions[row], np.nan).astype(np.float32)
    return {name: values[:, i] for i, name in enumerate(EXPRESSIONS)}


def default_audio_sets(audio_dim: int) -> list[str] | None:
    """The audio feature sets a fusion model of `audio_dim` audio columns was trained on: egemaps (25), logmel
    (64) or both (89, `extract --audio`'s default); None for any other width (`ssl`: the sets must be named)."""

    for sets in (["egemaps", "logmel"], ["egemaps"], ["logmel"]):
        if sum(set_dims(sets)) == audio_dim:
            return sets
    return None


SUBMISSION_FILLS = ("forward", "zeros")


def submission_predictions(
    predictor: Predictor,
    store,
    frame_counts: Mapping[str, int],
    progress: bool = False,
    allow_length_mismatch: bool = False,
    fill: str = "forward",
) -> dict[str, np.ndarray]:
    """{video: (frame_counts[video], 2)} for the ABAW submission, from the stored features of each video
    (`mambava.data.store.FeatureStore`). A video whose store holds another number of frames than its count is
    a MambavaError naming it and both counts (ABAW scores every frame of its own frame list, so a wrong count
    must not pass); with `allow_length_mismatch`, the extra frames are cut and missing ones follow the no-face
    policy, with a DataWarning.

    `fill`, the no-face policy: "forward" (ours, as in training: a frame without a face takes the last face's
    features, the store's forward fill; frames missing at the end carry the last prediction over) or "zeros"
    (the authors' test set, FreedomPuppy77/Charon preprocess/construct_VA_testset.py:51-61: every frame without
    a face, and every frame missing at the end, is a zero feature vector)."""

    if fill not in SUBMISSION_FILLS:
        raise MambavaError(f"--fill must be one of {', '.join(SUBMISSION_FILLS)}, got {fill!r}")
    store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    predictions = {}
    for video, count in track_items(frame_counts.items(), "test videos", len(frame_counts), progress):
        if not store.has(video):
            raise MambavaError(f"{store.root}: no features for test video {video!r}")
        record = store.read(video)
        n = record.n_frames
        if n != count and not allow_length_mismatch:
            raise MambavaError(
                f"{store.root}: test video {video!r} has {n} stored frames but {count} in the frame "
                f"counts (allow the mismatch to pad or cut)"
            )
        if n != count:
            pad = "the last prediction is carried over" if fill == "forward" else "zero features fill the rest"
            warnings.warn(
                f"{video}: {n} stored frames but the video has {count}; "
                + (pad if n < count else "the extra frames are cut"),
                DataWarning,
                stacklevel=2,
            )
        features, present = record.window(0, n)
        if fill == "zeros":
            # the authors' array of zeros, a row filled where a face's features exist (and nothing to fill after)
            zeros = np.zeros((count, features.shape[1]), np.float32)
            kept = min(n, count)
            zeros[:kept][present[:kept]] = features[:kept][present[:kept]]
            features, present, n = zeros, np.ones(count, bool), count
        values = predictor.predict_timed(features, present, np.arange(n) / record.fps, name=video)
        predictions[video] = values[np.minimum(np.arange(count), len(values) - 1)]
    return predictions


__all__ = [
    "COLUMNS",
    "MODEL_COLUMN",
    "WINDOWING",
    "expression_columns",
    "Predictor",
    "VideoFeatures",
    "TrackFeatures",
    "CropBatch",
    "FaceScan",
    "add_features",
    "load_model",
    "submission_predictions",
    "SUBMISSION_FILLS",
    "default_audio_sets",
    "name_persons",
]
