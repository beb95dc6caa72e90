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
skipped by `fps` included.

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

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np
import pandas as pd
import torch

from mambava.analysis.summaries import summarize
from mambava.audio import audio_of_frames, check_sets, frame_features, set_dims
from mambava.backbone import FeatureExtractor, ViTEncoder, load_encoder
from mambava.core.errors import MambavaError
from mambava.core.progress import track_items
from mambava.core.runtime import load_aware_threads, resolve_device
from mambava.data.affwild2 import DataWarning
from mambava.data.store import FeatureStore, features_with_mask, forward_fill, load_features_file
from mambava.data.timebase import model_fps, to_grid
from mambava.data.windows import check_windowing, predict_sequence
from mambava.faces import FaceTracker, finish_tracks, get_detector, iter_tracked_faces
from mambava.faces.dataset import face_stage_differences, training_crops_settings
from mambava.faces.expression import EXPRESSIONS, ExpressionRecognizer, probabilities_of_features
from mambava.inference.catalog import DEFAULT_MODEL, builtin_model, is_builtin
from mambava.inference.config import WINDOWING, PredictConfig
from mambava.inference.files import FEATURE_SUFFIXES
from mambava.inference.stream import LiveStream, is_live_source
from mambava.media.video import open_video, source_name
from mambava.temporal import check_finite, load_temporal_model, model_input_dim

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
            step_precision, realtime, progress); its defaults when None.
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
        """The model's name as tables carry it: a built-in name, else the checkpoint's file name."""
        return Path(self.model_name).name if os.sep in self.model_name else self.model_name

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
        if self.expression_net is self.extractor:
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
                y = self.model(x[None]).float()[0]
            else:
                y = predict_sequence(self.model, x, self.window, self.stride, stitching=self.stitching)
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
        """A video (file, image folder, URL) or a feature file (.npy) -> the per-frame table."""
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
        extracted = self.video_features(path)
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

    def video_features(self, path: str | os.PathLike) -> VideoFeatures:
        """Detect and track faces over a video and encode every face crop (batched)."""

        if self.extractor is None:
            raise MambavaError(f"{path}: --backbone is required for videos; pass a features .npy instead")
        video = source_name(path)
        frames: list[int] = []
        times: list[float] = []
        hits: dict[int, list] = {}
        pending: list[tuple[int, int, np.ndarray, float, np.ndarray]] = []  # (track id, position, box, score, crop)

        def flush() -> None:
            if not pending:
                return
            crops = np.stack([p[4] for p in pending])
            features = self.extractor.features(crops)
            expressions = self.crop_expressions(crops, features)
            for i, ((tid, position, box, score, _), feature) in enumerate(zip(pending, features)):
                expression = None if expressions is None else expressions[i]
                hits.setdefault(tid, []).append((position, feature, np.asarray(box, np.float32), score, expression))
            pending.clear()

        with open_video(path, fps=self.fps) as reader:
            stream = iter_tracked_faces(
                reader, self.detector, tracker=FaceTracker(), keep_images=False, detect_every=self.detect_every
            )
            for item in track_items(stream, f"faces+features {video}", reader.n_output_frames, self.progress):
                position = len(frames)
                frames.append(item.index)
                times.append(item.time)
                pending.extend((face.track_id, position, face.box, face.score, face.crop) for face in item.faces)
                if len(pending) >= self.extractor.batch_size:
                    flush()
            flush()
            fps = reader.fps
            source_frames, source_times = reader.decoded()
        n = len(frames)
        if n == 0:
            raise MambavaError(f"{path}: no frame could be read")
        finished, _ = finish_tracks(video, hits, n)  # drop spurious tracks, join, name: as the faces stage
        if not finished:
            raise MambavaError(f"{path}: no face found in any of its {n} frames; nothing to predict")
        tracks = {}
        for track in finished:
            rows = track.rows
            positions = np.array([r[0] for r in rows])
            features = np.zeros((n, self.extractor.dim), np.float32)
            present = np.zeros(n, bool)
            boxes = np.full((n, 4), np.nan, np.float32)
            scores = np.full(n, np.nan, np.float32)
            features[positions] = np.stack([r[1] for r in rows])
            boxes[positions] = np.stack([r[2] for r in rows])
            scores[positions] = [r[3] for r in rows]
            present[positions] = True
            expressions = None
            if self.expression_net is not None:
                expressions = np.full((n, len(EXPRESSIONS)), np.nan, np.float32)
                expressions[positions] = np.stack([r[4] for r in rows])
            tracks[track.name] = TrackFeatures(features, present, boxes, scores, expressions)
        frames = np.asarray(frames, np.int64)
        audio, voice = self._audio_features(path, frames) if self.fusion else (None, None)
        return VideoFeatures(
            video,
            frames,
            np.asarray(times, np.float64),
            fps,
            tracks,
            source_frames if len(source_frames) else None,
            source_times if len(source_times) else None,
            audio,
            voice,
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
                        **expression_columns(track.expressions, row, face),
                        MODEL_COLUMN: self.model_label,
                    }
                )
            )
        extra = ([] if voice is None else ["voice"]) + (list(EXPRESSIONS) if self.expressions else [])
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
            expressions=self.crop_expressions if self.expression_net is not None else None,
        )


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


def submission_predictions(
    predictor: Predictor,
    store,
    frame_counts: Mapping[str, int],
    progress: bool = False,
    allow_length_mismatch: bool = False,
) -> dict[str, np.ndarray]:
    """{video: (frame_counts[video], 2)} for the ABAW submission, from the stored features of each video
    (`mambava.data.store.FeatureStore`, forward-filled with their mask). A video whose store holds another
    number of frames than its count is a MambavaError naming it and both counts (ABAW scores every frame of
    its own frame list, so a wrong count must not pass); with `allow_length_mismatch`, the last prediction is
    carried over to the end (the no-face policy) or the extra frames are cut, with a DataWarning."""

    store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    predictions = {}
    for video, count in track_items(frame_counts.items(), "test videos", len(frame_counts), progress):
        if not store.has(video):
            raise MambavaError(f"{store.root}: no features for test video {video!r}")
        record = store.read(video)
        features, present = record.window(0, record.n_frames)
        values = predictor.predict_timed(features, present, np.arange(record.n_frames) / record.fps, name=video)
        if len(values) != count and not allow_length_mismatch:
            raise MambavaError(
                f"{store.root}: test video {video!r} has {len(values)} stored frames but {count} in the frame "
                f"counts (allow the mismatch to pad or cut)"
            )
        if len(values) != count:
            warnings.warn(
                f"{video}: {len(values)} stored frames but the video has {count}; "
                + ("the last prediction is carried over" if len(values) < count else "the extra frames are cut"),
                DataWarning,
                stacklevel=2,
            )
            values = values[np.minimum(np.arange(count), len(values) - 1)]
        predictions[video] = values
    return predictions


__all__ = [
    "COLUMNS",
    "MODEL_COLUMN",
    "WINDOWING",
    "expression_columns",
    "Predictor",
    "VideoFeatures",
    "TrackFeatures",
    "load_model",
    "submission_predictions",
    "default_audio_sets",
]
