"""Per-frame audio feature sets: eGeMAPS (opensmile), log-mel (torch), a local speech model; `frame_features`
puts them on a video's frame grid with the sound mask. See `mambava.audio`."""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from mambava.core.errors import MambavaError
from mambava.media.audio import (
    MIN_COVERAGE,
    SAMPLE_RATE,
    SILENCE_DBFS,
    AudioTrack,
    AudioWarning,
    FrameGrid,
    decode_audio,
    frame_grid,
    frame_peaks,
    pool_frames,
)
from mambava.media.video import error_reason

DEFAULT_FEATURE_SETS = ("egemaps", "logmel")
N_MELS = 64
MEL_WINDOW = 400  # 25 ms at 16 kHz
MEL_HOP = 160  # 10 ms
MEL_FFT = 512
LOG_OFFSET = 1e-6  # log(mel + offset): bounded at silence, negligible against speech energies
_MEL_BLOCK = 6000  # STFT frames per block (60 s): bounds memory on long videos, same result as one pass
_SSL_CHUNK_SECONDS = 30.0
EGEMAPS_COLUMNS = (
    "Loudness_sma3",
    "alphaRatio_sma3",
    "hammarbergIndex_sma3",
    "slope0-500_sma3",
    "slope500-1500_sma3",
    "spectralFlux_sma3",
    "mfcc1_sma3",
    "mfcc2_sma3",
    "mfcc3_sma3",
    "mfcc4_sma3",
    "F0semitoneFrom27.5Hz_sma3nz",
    "jitterLocal_sma3nz",
    "shimmerLocaldB_sma3nz",
    "HNRdBACF_sma3nz",
    "logRelF0-H1-H2_sma3nz",
    "logRelF0-H1-A3_sma3nz",
    "F1frequency_sma3nz",
    "F1bandwidth_sma3nz",
    "F1amplitudeLogRelF0_sma3nz",
    "F2frequency_sma3nz",
    "F2bandwidth_sma3nz",
    "F2amplitudeLogRelF0_sma3nz",
    "F3frequency_sma3nz",
    "F3bandwidth_sma3nz",
    "F3amplitudeLogRelF0_sma3nz",
)


@dataclass(frozen=True)
class AudioFeatureSet:
    """A registered feature set: `compute(samples, sample_rate, speech_model) -> (values (M, D), times (M,)
    seconds from the track's first sample, column names)`, `dim(speech_model)` its width and `columns(dim)`
    its column names (used where there is no sound to compute them from)."""

    name: str
    compute: Callable
    dim: Callable
    columns: Callable
    needs_speech_model: bool = False


_FEATURE_SETS: dict[str, AudioFeatureSet] = {}
FEATURE_SETS: list[str] = []  # the registered names, in registration order


def register_audio_features(name: str, dim: Callable, columns: Callable, needs_speech_model: bool = False):
    """Decorator: register the decorated `compute(samples, sample_rate, speech_model)` as feature set `name`
    (for `extract --audio --audio-sets`, `predict --audio` and the fusion models).

    Args:
        name: the set's name.
        dim: `dim(speech_model) -> int`, the number of columns.
        columns: `columns(dim) -> list[str]`, their names.
        needs_speech_model: whether it needs `--speech-model`.

    Returns:
        The decorator (which returns the function unchanged).
    """

    def register(compute: Callable):
        _FEATURE_SETS[name] = AudioFeatureSet(name, compute, dim, columns, needs_speech_model)
        if name not in FEATURE_SETS:
            FEATURE_SETS.append(name)
        return compute

    return register


def feature_set(name: str) -> AudioFeatureSet:
    return _FEATURE_SETS[name]


def egemaps_lld(samples: np.ndarray, sample_rate: int = SAMPLE_RATE):
    """The 25 eGeMAPS v02 low-level descriptors every 10 ms through openSMILE, each at its window's centre."""
    smile = _smile()
    frame = smile.process_signal(np.asarray(samples, np.float32), sample_rate)
    start = frame.index.get_level_values("start").total_seconds().to_numpy()
    end = frame.index.get_level_values("end").total_seconds().to_numpy()
    values = np.nan_to_num(frame.to_numpy(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    return values, (start + end) / 2, list(frame.columns)


_SMILE = None


def _smile():
    global _SMILE
    if _SMILE is None:
        try:
            import opensmile
        except ImportError:
            raise MambavaError(
                "eGeMAPS features need the opensmile package: pip install 'mambava[audio]' (or pip install opensmile)"
            ) from None
        _SMILE = opensmile.Smile(
            feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level=opensmile.FeatureLevel.LowLevelDescriptors
        )
    return _SMILE


def mel_filterbank(
    n_mels: int = N_MELS,
    n_fft: int = MEL_FFT,
    sample_rate: int = SAMPLE_RATE,
    fmin: float = 0.0,
    fmax: float | None = None,
) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangular filters, equally spaced on the HTK mel scale, each peaking at 1."""
    fmax = sample_rate / 2 if fmax is None else fmax

    def mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def hz(m):
        return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)

    points = hz(np.linspace(mel(fmin), mel(fmax), n_mels + 2))
    freqs = np.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    lower, centre, upper = points[:-2, None], points[1:-1, None], points[2:, None]
    up = (freqs[None] - lower) / (centre - lower)
    down = (upper - freqs[None]) / (upper - centre)
    return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)


def log_mel(samples: np.ndarray, sample_rate: int = SAMPLE_RATE, n_mels: int = N_MELS):
    """log(mel power + LOG_OFFSET) every 10 ms (25 ms Hann window; frame i centred on sample i * hop, the signal
    reflect-padded at both ends like torch.stft(center=True)), computed with torch in 60 s blocks."""

    x = np.asarray(samples, np.float32)
    pad = MEL_FFT // 2
    if len(x) == 0:
        return np.zeros((0, n_mels)), np.zeros(0), [f"logmel{i}" for i in range(n_mels)]
    padded = np.pad(x, pad, mode="reflect" if len(x) > pad else "constant")
    n_frames = 1 + len(x) // MEL_HOP
    window = torch.hann_window(MEL_WINDOW)
    bank = torch.from_numpy(mel_filterbank(n_mels, MEL_FFT, sample_rate))
    signal = torch.from_numpy(padded)
    blocks = []
    for first in range(0, n_frames, _MEL_BLOCK):
        count = min(_MEL_BLOCK, n_frames - first)
        piece = signal[first * MEL_HOP : (first + count - 1) * MEL_HOP + MEL_FFT]
        spec = torch.stft(
            piece, MEL_FFT, hop_length=MEL_HOP, win_length=MEL_WINDOW, window=window, center=False, return_complex=True
        )
        blocks.append(torch.log(bank @ spec.abs().square() + LOG_OFFSET).T)
    values = torch.cat(blocks).numpy().astype(np.float64)
    return values, np.arange(n_frames) * MEL_HOP / sample_rate, [f"logmel{i}" for i in range(n_mels)]


class SpeechModel:
    """A local self-supervised speech model (wav2vec 2.0, HuBERT, WavLM, data2vec-audio) in Hugging Face format:
    a folder with config.json and its weights (model.safetensors / pytorch_model.bin). Nothing is downloaded.

    `features(samples)` -> (values (M, D), times (M,), names): the hidden states of layer `layer` (None: the last;
    0: the CNN encoder's projected output) for 16 kHz samples, one row per 20 ms, each at the centre of its
    receptive field. The input is normalised to zero mean and unit variance over the whole track where the
    folder's preprocessor_config.json asks for it (do_normalize, the default)."""

    KINDS = ("wav2vec2", "hubert", "wavlm", "data2vec-audio")

    def __init__(self, path: str | os.PathLike, layer: int | None = None, device: str = "cpu"):
        path = Path(path)
        if not (path / "config.json").is_file():
            raise MambavaError(
                f"{path}: not a Hugging Face model folder (no config.json); save one with model.save_pretrained(FOLDER)"
            )
        try:
            import transformers
        except ImportError:
            raise MambavaError(
                f"{path}: the speech model needs the transformers package (pip install transformers); "
                f"eGeMAPS and log-mel features do not"
            ) from None

        try:
            config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        except Exception as error:
            raise MambavaError(f"{path / 'config.json'}: unreadable model config ({error_reason(error)})") from None
        if config.model_type not in self.KINDS:
            raise MambavaError(
                f"{path}: a {config.model_type!r} model; the speech features take one of {', '.join(self.KINDS)}"
            )
        try:
            model = transformers.AutoModel.from_pretrained(path, local_files_only=True)
        except Exception as error:
            raise MambavaError(f"{path}: cannot load the model weights ({error_reason(error)})") from None
        self.path = path
        self.model = model.eval().to(device)
        self.device = torch.device(device)
        n_layers = int(config.num_hidden_layers)
        if layer is not None and not 0 <= layer <= n_layers:
            raise MambavaError(f"{path}: layer {layer} outside 0..{n_layers}")
        self.layer = layer
        self.dim = int(config.hidden_size)
        self.name = f"{config.model_type}:{path.name}" + (f":layer{layer}" if layer is not None else "")
        self.stride = int(np.prod(config.conv_stride))
        receptive = 1
        for kernel, stride in reversed(list(zip(config.conv_kernel, config.conv_stride))):
            receptive = (receptive - 1) * stride + kernel
        self.receptive_field = receptive
        self.normalize = True
        preprocessor = path / "preprocessor_config.json"
        if preprocessor.is_file():
            try:
                self.normalize = bool(json.loads(preprocessor.read_text()).get("do_normalize", True))
            except (OSError, ValueError) as error:
                raise MambavaError(f"{preprocessor}: unreadable ({error})") from None

    def features(self, samples: np.ndarray, sample_rate: int = SAMPLE_RATE):
        if sample_rate != SAMPLE_RATE:
            raise MambavaError(f"{self.path}: the speech model takes {SAMPLE_RATE} Hz audio, got {sample_rate} Hz")
        x = np.asarray(samples, np.float32)
        if self.normalize and len(x):
            x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        chunk = int(_SSL_CHUNK_SECONDS * sample_rate) // self.stride * self.stride
        rows = []
        with torch.inference_mode():
            for first in range(0, len(x), chunk):
                piece = x[first : first + chunk]
                if len(piece) < self.receptive_field:  # too short for one output frame
                    continue
                inputs = torch.from_numpy(np.ascontiguousarray(piece))[None].to(self.device)
                out = self.model(inputs, output_hidden_states=self.layer is not None)
                hidden = out.last_hidden_state if self.layer is None else out.hidden_states[self.layer]
                rows.append(hidden[0].float().cpu().numpy())
        values = np.concatenate(rows).astype(np.float64) if rows else np.zeros((0, self.dim))
        starts = []
        for first in range(0, len(x), chunk):
            piece = min(chunk, len(x) - first)
            if piece >= self.receptive_field:
                starts.append(first + self.stride * np.arange((piece - self.receptive_field) // self.stride + 1))
        starts = np.concatenate(starts) if starts else np.zeros(0)
        times = (starts + self.receptive_field / 2) / sample_rate
        return values, times, [f"ssl{i}" for i in range(self.dim)]


# ---------------------------------------------------------------------------------------------------------
# Per-frame features


@dataclass
class AudioFeatures:
    """One video's audio features on its frame grid."""

    path: str
    features: np.ndarray  # (T, D) float32
    mask: np.ndarray  # (T,) bool: True = the frame has sound
    fps: float
    columns: list[str]
    sets: list[str]
    reason: str = ""  # why frames are masked, "" when none is
    codec: str = ""
    seconds_of_audio: float = 0.0


@register_audio_features("egemaps", dim=lambda _: len(EGEMAPS_COLUMNS), columns=lambda _: list(EGEMAPS_COLUMNS))
def _egemaps_set(samples: np.ndarray, sample_rate: int, speech_model=None):
    return egemaps_lld(samples, sample_rate)


@register_audio_features("logmel", dim=lambda _: N_MELS, columns=lambda dim: [f"logmel{i}" for i in range(dim)])
def _logmel_set(samples: np.ndarray, sample_rate: int, speech_model=None):
    return log_mel(samples, sample_rate)


@register_audio_features(
    "ssl", dim=lambda model: model.dim, columns=lambda dim: [f"ssl{i}" for i in range(dim)], needs_speech_model=True
)
def _speech_model_set(samples: np.ndarray, sample_rate: int, speech_model=None):
    return speech_model.features(samples, sample_rate)


def check_sets(sets: Sequence[str] | str, speech_model: SpeechModel | None = None) -> list[str]:
    """The feature sets asked for, as a list (a comma-separated string is accepted); MambavaError on an unknown
    one, on `ssl` without a speech model, or on none."""
    names = [s.strip() for s in (sets.split(",") if isinstance(sets, str) else sets) if s.strip()]
    if speech_model is not None and "ssl" not in names:
        names.append("ssl")
    unknown = [s for s in names if s not in FEATURE_SETS]
    if unknown or not names or len(set(names)) != len(names):
        raise MambavaError(
            f"audio feature sets: got {','.join(names) or 'none'}; choose from {', '.join(FEATURE_SETS)} "
            f"(comma-separated, each once)"
        )
    for name in names:
        if _FEATURE_SETS[name].needs_speech_model and speech_model is None:
            raise MambavaError(f"audio feature set {name!r} needs a speech model folder (--speech-model PATH)")
    return names


def set_dims(sets: Sequence[str], speech_model: SpeechModel | None = None) -> list[int]:
    return [_FEATURE_SETS[s].dim(speech_model) for s in sets]


def frame_features(
    path: str | os.PathLike,
    sets: Sequence[str] | str = DEFAULT_FEATURE_SETS,
    *,
    speech_model: SpeechModel | None = None,
    grid: FrameGrid | None = None,
    n_frames: int | None = None,
    track: AudioTrack | None = None,
) -> AudioFeatures:
    """Audio features of a video, one row per video frame (see the module doc); `grid` defaults to
    `frame_grid(path, n_frames)`, `track` to `decode_audio(path)`. Masked frames hold zeros here (the store
    forward-fills them); each reason for masking is one AudioWarning naming the file."""
    sets = check_sets(sets, speech_model)
    grid = grid if grid is not None else frame_grid(path, n_frames)
    track = track if track is not None else decode_audio(path)
    edges = grid.edges
    n = grid.n_frames
    dims = set_dims(sets, speech_model)
    columns: list[str] = []
    blocks = []
    if track is None or len(track.samples) == 0:
        reason = "no audio track" if track is None else "an audio track with no decodable sound"
        warnings.warn(f"{path}: {reason}; the audio of all {n} frames is masked", AudioWarning, stacklevel=2)
        for s, dim in zip(sets, dims):
            columns += _FEATURE_SETS[s].columns(dim)
        return AudioFeatures(
            str(path),
            np.zeros((n, sum(dims)), np.float32),
            np.zeros(n, bool),
            grid.fps,
            columns,
            list(sets),
            reason,
            track.codec if track is not None else "",
            0.0,
        )
    # a frame sharing its timestamp with the next (a damaged stream) is judged over 1/fps from its time
    lo = edges[:-1]
    hi = np.where(edges[1:] > lo, edges[1:], lo + 1.0 / grid.fps)
    present = track.covered(lo, hi) >= MIN_COVERAGE * (hi - lo)
    peaks = frame_peaks(track, lo, hi)
    loud = peaks >= 10 ** (SILENCE_DBFS / 20)
    reasons = []
    if not loud.any():
        reasons.append(f"the audio track is silent (peak below {SILENCE_DBFS:.0f} dBFS)")
    else:
        uncovered = int((~present).sum())
        if uncovered:
            inside = np.flatnonzero(present)
            span = f"frames {inside[0]}..{inside[-1]}" if len(inside) else "no frame"
            reasons.append(
                f"sound from {track.segments[0, 0]:.3f} s to {track.segments[-1, 1]:.3f} s "
                f"({len(track.segments)} part(s)) covers {span} of {n} (video to {edges[-1]:.3f} s): "
                f"{uncovered} frame(s) without sound"
            )
        silent = int((present & ~loud).sum())
        if silent:
            reasons.append(f"{silent} frame(s) of digital silence")
    mask = present & loud
    for name in sets:
        values, times, names = _FEATURE_SETS[name].compute(track.samples, track.sample_rate, speech_model)
        columns += names
        if len(values) == 0:  # too little sound for one feature frame
            mask[:] = False
            blocks.append(np.zeros((n, len(names)), np.float32))
            continue
        blocks.append(pool_frames(values, times + track.start, edges))
    features = np.concatenate(blocks, axis=1)
    if not mask.all() and not reasons:
        reasons.append("too little sound for one feature frame")
    features[~mask] = 0.0
    reason = "; ".join(reasons)
    if reason:
        warnings.warn(
            f"{path}: {reason}; the audio of {int((~mask).sum())} of {n} frames is masked", AudioWarning, stacklevel=2
        )
    return AudioFeatures(str(path), features, mask, grid.fps, columns, list(sets), reason, track.codec, track.duration)


def audio_of_frames(features: np.ndarray, mask: np.ndarray, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """((n, D) audio, (n,) voice) of source frames `frames` from a video's per-frame audio `features` (N, D) and
    `mask` (N,): frames past the sound's grid, or masked, are zeros with voice False."""
    frames = np.asarray(frames, np.int64)
    audio = np.zeros((len(frames), features.shape[1]), np.float32)
    voice = np.zeros(len(frames), bool)
    inside = frames < len(mask)
    voice[inside] = mask[frames[inside]]
    audio[voice] = features[frames[voice]]
    return audio, voice
