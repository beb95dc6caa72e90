"""The audio stage: a video's sound as per-frame features on the video's own frame grid.

    track = decode_audio("clip.mp4")                      # 16 kHz mono float32, on the video's clock
    result = frame_features("clip.mp4", ("egemaps", "logmel"))
    result.features  # (T, D) float32, one row per video frame
    result.mask      # (T,) bool: False where the frame has no usable sound

- Decoding: PyAV (FFmpeg), so any container and codec the video stage reads (AAC, MP3, Opus, PCM, ...);
  resampled to 16 kHz mono. Sample times are on the clock `mambava.video` gives frames (seconds from the video
  stream's start), so an audio stream that starts late (an edit list, a muxer offset) lands where it plays.
- The frame grid: frame k of a video covers [t_k, t_{k+1}) (the last one 1/fps), t_k its presentation time
  from the demuxed packets (no video decoding). Each feature set's own frames (10 ms for eGeMAPS and log-mel,
  20 ms for wav2vec 2.0 / HuBERT) are averaged over the video frame whose interval holds their centre; a video
  frame that holds none (above 100 fps) takes the nearest one. Frame t of audio and frame t of face line up.
- Feature sets (concatenated in the order asked): `egemaps`, the 25 eGeMAPS v02 low-level descriptors through
  the `opensmile` package (the affective-computing standard); `logmel`, 64 log-mel energies (25 ms Hann
  window, 10 ms hop, computed with torch); `ssl`, the hidden states of a local wav2vec 2.0 / HuBERT model in
  Hugging Face format (`SpeechModel`; needs `transformers`, never downloads).
- Missing sound is a mask, never fake zeros: a video with no audio track, a frame less than half covered by
  decoded sound (the stream starts late, ends early, has a gap) or a digitally silent frame (peak below
  -80 dBFS) is masked False, and the feature store forward-fills it. Each case is one `AudioWarning` line
  naming the file.
- Extraction (`extract_audio`, `mambava extract --audio`): an Aff-Wild2 root's `videos/` (`<v>_left` and
  `<v>_right` get their video's sound), a folder of videos or one video, into a `FeatureStore`; resumable and
  atomic like the visual store.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from mambava.errors import MambavaError, OutputError
from mambava.video import has_audio, open_container

SAMPLE_RATE = 16000
SILENCE_DBFS = -80.0  # a frame whose peak is below this is digital silence (no recording), not a quiet room
MIN_COVERAGE = 0.5  # a frame needs at least this share of its interval covered by decoded sound
GAP_SECONDS = 0.01  # a jump in the audio timestamps larger than this is a gap (masked), not jitter
FEATURE_SETS = ("egemaps", "logmel", "ssl")
DEFAULT_FEATURE_SETS = ("egemaps", "logmel")
N_MELS = 64
MEL_WINDOW = 400  # 25 ms at 16 kHz
MEL_HOP = 160  # 10 ms
MEL_FFT = 512
LOG_OFFSET = 1e-6  # log(mel + offset): bounded at silence, negligible against speech energies
_MEL_BLOCK = 6000  # STFT frames per block (60 s): bounds memory on long videos, same result as one pass
_SSL_CHUNK_SECONDS = 30.0
EGEMAPS_COLUMNS = (
    "Loudness_sma3", "alphaRatio_sma3", "hammarbergIndex_sma3", "slope0-500_sma3", "slope500-1500_sma3",
    "spectralFlux_sma3", "mfcc1_sma3", "mfcc2_sma3", "mfcc3_sma3", "mfcc4_sma3", "F0semitoneFrom27.5Hz_sma3nz",
    "jitterLocal_sma3nz", "shimmerLocaldB_sma3nz", "HNRdBACF_sma3nz", "logRelF0-H1-H2_sma3nz", "logRelF0-H1-A3_sma3nz",
    "F1frequency_sma3nz", "F1bandwidth_sma3nz", "F1amplitudeLogRelF0_sma3nz", "F2frequency_sma3nz",
    "F2bandwidth_sma3nz", "F2amplitudeLogRelF0_sma3nz", "F3frequency_sma3nz", "F3bandwidth_sma3nz",
    "F3amplitudeLogRelF0_sma3nz",
)


class AudioWarning(UserWarning):
    """A video's sound is missing in part or whole (no track, silent, starts late, ends early, damaged)."""


@dataclass
class AudioTrack:
    """Decoded sound: `samples` (N,) float32 mono at `sample_rate`, samples[0] at `start` seconds on the video's
    clock; `segments` (K, 2) the [start, end) seconds actually decoded (between them the samples are zeros)."""

    path: str
    samples: np.ndarray
    sample_rate: int
    start: float
    segments: np.ndarray
    codec: str = ""
    announced_end: float | None = None  # where the container says the stream ends (seconds, video clock)

    @property
    def end(self) -> float:
        return self.start + len(self.samples) / self.sample_rate

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate

    def covered(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Seconds of decoded sound inside each interval [lo[k], hi[k])."""
        lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
        if not len(self.segments):
            return np.zeros(len(lo))
        s, e = self.segments[:, 0], self.segments[:, 1]

        def before(t):  # seconds of sound before each time t
            return np.clip(t[:, None] - s[None, :], 0, (e - s)[None, :]).sum(1)

        return before(hi) - before(lo)


def _short(error: BaseException) -> str:
    from mambava.video import error_reason

    return error_reason(error)


def _video_origin(container) -> float:
    """The time (seconds) the video stage counts from: the video stream's start; 0 without a video stream."""
    if container.streams.video:
        stream = container.streams.video[0]
        if stream.start_time is not None and stream.time_base is not None:
            return float(stream.start_time * stream.time_base)
    return 0.0


def decode_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> AudioTrack | None:
    """A file's first audio stream as mono float32 at `sample_rate`, on the video's clock; None when the file has
    no audio stream. A stream that breaks mid-way is kept up to the break, with an AudioWarning."""
    import av

    with open_container(path) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        origin = _video_origin(container)
        announced_end = None
        if stream.duration is not None and stream.time_base is not None:
            first = stream.start_time if stream.start_time is not None else 0
            announced_end = float((first + stream.duration) * stream.time_base) - origin
        segments: list[tuple[float, list[np.ndarray]]] = []  # (start seconds, resampled chunks) per contiguous run
        resampler = None
        expected = None  # where the next input frame should start if the stream is contiguous
        decoded_to = None

        def flush():
            if resampler is not None:
                for out in resampler.resample(None):
                    segments[-1][1].append(out.to_ndarray().reshape(-1))

        frames = container.decode(stream)
        while True:
            try:
                frame = next(frames)
            except (StopIteration, av.error.EOFError):
                break
            except Exception as error:  # a damaged or truncated stream
                where = f"after t={decoded_to:.3f} s" if decoded_to is not None else "before the first sample"
                warnings.warn(f"{path}: audio decoding stopped {where}: {_short(error)}; the sound after it is masked",
                              AudioWarning, stacklevel=2)
                break
            if frame.samples == 0 or not frame.sample_rate:
                continue
            time_base = frame.time_base or stream.time_base
            t = float(frame.pts * time_base) - origin if frame.pts is not None and time_base else expected
            if t is None:
                t = 0.0
            if expected is None or t > expected + GAP_SECONDS:
                flush()  # a new contiguous run: a fresh resampler, placed at its own timestamp
                resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
                segments.append((t, []))
            else:
                t = expected  # overlaps and timestamp jitter: the stream is taken as contiguous
            expected = t + frame.samples / frame.sample_rate
            decoded_to = expected
            for out in resampler.resample(frame):
                segments[-1][1].append(out.to_ndarray().reshape(-1))
        flush()
        codec = stream.codec_context.name or ""
    runs = [(t, np.concatenate(chunks).astype(np.float32, copy=False)) for t, chunks in segments if chunks]
    runs = [(t, x) for t, x in runs if len(x)]
    if not runs:
        return AudioTrack(str(path), np.zeros(0, np.float32), sample_rate, 0.0, np.zeros((0, 2)), codec, announced_end)
    start = runs[0][0]
    offsets = [int(round((t - start) * sample_rate)) for t, _ in runs]
    total = max(o + len(x) for o, (_, x) in zip(offsets, runs))
    samples = np.zeros(total, np.float32)
    bounds = []
    for o, (_, x) in zip(offsets, runs):
        samples[o:o + len(x)] = x
        bounds.append((start + o / sample_rate, start + (o + len(x)) / sample_rate))
    return AudioTrack(str(path), samples, sample_rate, start, np.array(bounds, np.float64), codec, announced_end)


# ---------------------------------------------------------------------------------------------------------
# The video's frame grid


@dataclass
class FrameGrid:
    """Frame k of a video spans [edges[k], edges[k+1]) seconds (the video stage's clock)."""

    edges: np.ndarray  # (T + 1,)
    fps: float

    @property
    def n_frames(self) -> int:
        return len(self.edges) - 1


def frame_grid(path: str | os.PathLike, n_frames: int | None = None) -> FrameGrid:
    """The video's frame intervals from its demuxed packets' presentation times (nothing is decoded), in the
    video stage's clock: the frames and times `mambava.video.open_video` yields. `n_frames`: make the grid this
    long (the frame count the visual features use, e.g. the container's header count): missing frames continue
    at 1/fps, extra ones are dropped."""
    with open_container(path) as container:
        if not container.streams.video:
            raise MambavaError(f"{path}: contains no video stream (the audio features follow the video's frames)")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        tb = stream.time_base
        origin = stream.start_time or 0
        try:
            # packets the decoder discards (an edit list's lead-in) are no frames of the video
            pts = [p.pts for p in container.demux(stream)
                   if p.size > 0 and p.pts is not None and not getattr(p, "is_discard", False)]
        except Exception as error:
            raise MambavaError(f"{path}: cannot read the video's frame times ({_short(error)})") from None
    times = np.sort((np.asarray(pts, np.float64) - origin) * float(tb)) if pts and tb is not None else np.zeros(0)
    if not len(times) and not n_frames:
        raise MambavaError(f"{path}: the video stream has no frames")
    step = float(np.median(np.diff(times))) if len(times) > 1 else 0.0
    fps = float(rate) if rate else (1.0 / step if step > 0 else 30.0)
    return grid_from_times(times, fps, n_frames)


def grid_from_times(times, fps: float, n_frames: int | None = None) -> FrameGrid:
    """A FrameGrid from frame timestamps (seconds, sorted; e.g. `VideoReader.decoded()[1]`) and the frame rate."""
    times = np.asarray(times, np.float64)
    n = len(times) if n_frames is None else int(n_frames)
    if n < 1:
        raise MambavaError("the frame grid needs at least one frame")
    if len(times) < n:
        last = times[-1] if len(times) else -1.0 / fps
        times = np.concatenate([times, last + np.arange(1, n - len(times) + 1) / fps])
    times = times[:n]
    return FrameGrid(np.concatenate([times, [times[-1] + 1.0 / fps]]), float(fps))


def pool_frames(values: np.ndarray, times: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Mean of the rows of `values` (M, D) whose time (M,) lies in each [edges[k], edges[k+1]); an interval
    that holds none takes the row nearest its middle. Returns (T, D) float32."""
    values = np.asarray(values, np.float64)
    times = np.asarray(times, np.float64)
    edges = np.asarray(edges, np.float64)
    n_out = len(edges) - 1
    if len(values) == 0:
        return np.zeros((n_out, values.shape[1] if values.ndim == 2 else 0), np.float32)
    lo = np.searchsorted(times, edges[:-1], side="left")
    hi = np.searchsorted(times, edges[1:], side="left")
    cumulative = np.concatenate([np.zeros((1, values.shape[1])), np.cumsum(values, axis=0)])
    counts = hi - lo
    out = (cumulative[hi] - cumulative[lo]) / np.maximum(counts, 1)[:, None]
    empty = np.flatnonzero(counts == 0)
    if len(empty):
        middle = (edges[empty] + edges[empty + 1]) / 2
        right = np.clip(np.searchsorted(times, middle), 0, len(times) - 1)
        left = np.clip(right - 1, 0, len(times) - 1)
        nearest = np.where(np.abs(times[left] - middle) <= np.abs(times[right] - middle), left, right)
        out[empty] = values[nearest]
    return out.astype(np.float32)


def frame_peaks(track: AudioTrack, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The largest |sample| inside each interval [lo[k], hi[k]) (0 where it holds no sample)."""
    n = len(track.samples)

    def index(t):
        return np.clip(np.round((np.asarray(t, np.float64) - track.start) * track.sample_rate).astype(np.int64), 0, n)

    starts, stops = index(lo), index(hi)
    peaks = np.zeros(len(starts), np.float32)
    nonempty = np.flatnonzero(stops > starts)
    if len(nonempty):
        # reduceat over [start, stop) pairs: the even results are the intervals' maxima (a sentinel for stop = n)
        bounds = np.stack([starts[nonempty], stops[nonempty]], 1).reshape(-1)
        peaks[nonempty] = np.maximum.reduceat(np.concatenate([np.abs(track.samples), [0.0]]), bounds)[::2]
    return peaks


# ---------------------------------------------------------------------------------------------------------
# Feature sets: each returns (values (M, D), times (M,) seconds from the track's first sample, column names)


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
            raise MambavaError("eGeMAPS features need the opensmile package: pip install 'mambava[audio]' "
                               "(or pip install opensmile)") from None
        _SMILE = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                                 feature_level=opensmile.FeatureLevel.LowLevelDescriptors)
    return _SMILE


def mel_filterbank(n_mels: int = N_MELS, n_fft: int = MEL_FFT, sample_rate: int = SAMPLE_RATE,
                   fmin: float = 0.0, fmax: float | None = None) -> np.ndarray:
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
    import torch

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
        piece = signal[first * MEL_HOP: (first + count - 1) * MEL_HOP + MEL_FFT]
        spec = torch.stft(piece, MEL_FFT, hop_length=MEL_HOP, win_length=MEL_WINDOW, window=window, center=False,
                          return_complex=True)
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
            raise MambavaError(f"{path}: not a Hugging Face model folder (no config.json); save one with "
                               f"model.save_pretrained(FOLDER)")
        try:
            import transformers
        except ImportError:
            raise MambavaError(f"{path}: the speech model needs the transformers package (pip install transformers); "
                               f"eGeMAPS and log-mel features do not") from None
        import torch

        try:
            config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        except Exception as error:
            raise MambavaError(f"{path / 'config.json'}: unreadable model config ({_short(error)})") from None
        if config.model_type not in self.KINDS:
            raise MambavaError(f"{path}: a {config.model_type!r} model; the speech features take one of "
                               f"{', '.join(self.KINDS)}")
        try:
            model = transformers.AutoModel.from_pretrained(path, local_files_only=True)
        except Exception as error:
            raise MambavaError(f"{path}: cannot load the model weights ({_short(error)})") from None
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
        import torch

        if sample_rate != SAMPLE_RATE:
            raise MambavaError(f"{self.path}: the speech model takes {SAMPLE_RATE} Hz audio, got {sample_rate} Hz")
        x = np.asarray(samples, np.float32)
        if self.normalize and len(x):
            x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        chunk = int(_SSL_CHUNK_SECONDS * sample_rate) // self.stride * self.stride
        rows = []
        with torch.inference_mode():
            for first in range(0, len(x), chunk):
                piece = x[first:first + chunk]
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


def check_sets(sets: Sequence[str] | str, speech_model: SpeechModel | None = None) -> list[str]:
    """The feature sets asked for, as a list (a comma-separated string is accepted); MambavaError on an unknown
    one, on `ssl` without a speech model, or on none."""
    names = [s.strip() for s in (sets.split(",") if isinstance(sets, str) else sets) if s.strip()]
    if speech_model is not None and "ssl" not in names:
        names.append("ssl")
    unknown = [s for s in names if s not in FEATURE_SETS]
    if unknown or not names or len(set(names)) != len(names):
        raise MambavaError(f"audio feature sets: got {','.join(names) or 'none'}; choose from {', '.join(FEATURE_SETS)} "
                           f"(comma-separated, each once)")
    if "ssl" in names and speech_model is None:
        raise MambavaError("audio feature set 'ssl' needs a speech model folder (--speech-model PATH)")
    return names


def set_dims(sets: Sequence[str], speech_model: SpeechModel | None = None) -> list[int]:
    return [{"egemaps": len(EGEMAPS_COLUMNS), "logmel": N_MELS}.get(s) or speech_model.dim for s in sets]


def frame_features(path: str | os.PathLike, sets: Sequence[str] | str = DEFAULT_FEATURE_SETS, *,
                   speech_model: SpeechModel | None = None, grid: FrameGrid | None = None,
                   n_frames: int | None = None, track: AudioTrack | None = None) -> AudioFeatures:
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
        names = {"egemaps": list(EGEMAPS_COLUMNS), "logmel": [f"logmel{i}" for i in range(N_MELS)],
                 "ssl": [f"ssl{i}" for i in range(dims[-1])]}
        for s in sets:
            columns += names[s]
        return AudioFeatures(str(path), np.zeros((n, sum(dims)), np.float32), np.zeros(n, bool), grid.fps, columns,
                             list(sets), reason, track.codec if track is not None else "", 0.0)
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
            reasons.append(f"sound from {track.segments[0, 0]:.3f} s to {track.segments[-1, 1]:.3f} s "
                           f"({len(track.segments)} part(s)) covers {span} of {n} (video to {edges[-1]:.3f} s): "
                           f"{uncovered} frame(s) without sound")
        silent = int((present & ~loud).sum())
        if silent:
            reasons.append(f"{silent} frame(s) of digital silence")
    mask = present & loud
    for name in sets:
        if name == "egemaps":
            values, times, names = egemaps_lld(track.samples, track.sample_rate)
        elif name == "logmel":
            values, times, names = log_mel(track.samples, track.sample_rate)
        else:
            values, times, names = speech_model.features(track.samples, track.sample_rate)
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
        warnings.warn(f"{path}: {reason}; the audio of {int((~mask).sum())} of {n} frames is masked",
                      AudioWarning, stacklevel=2)
    return AudioFeatures(str(path), features, mask, grid.fps, columns, list(sets), reason, track.codec,
                         track.duration)


# ---------------------------------------------------------------------------------------------------------
# Extraction into a feature store


@dataclass
class AudioSource:
    """A store entry and the video whose sound it takes (`<v>_left`/`<v>_right` share `<v>`'s file)."""

    name: str
    path: Path
    n_frames: int | None = None  # the frame count the visual features use; None: the video's packets


def find_audio_sources(source: str | os.PathLike, names: Sequence[str] | None = None) -> list[AudioSource]:
    """The entries to extract from `source`: an Aff-Wild2 root (its videos/ or raw_videos/: one entry per raw
    video, plus each `<v>_left`/`<v>_right` of its annotations, test list or crop folders whose `<v>` is there;
    frame counts as the dataset counts them), a folder of videos (any sub-folders) or one video file."""
    from mambava.affwild2 import VIDEO_DIRS, AffWild2, base_video
    from mambava.video import VIDEO_SUFFIXES

    source = Path(source)
    if source.is_file():
        found = [AudioSource(source.stem, source)]
    elif not source.is_dir():
        raise MambavaError(f"{source}: no such file or folder")
    elif any((source / d).is_dir() for d in VIDEO_DIRS):
        dataset = AffWild2(source)
        raw = dataset.raw_videos
        wanted = set(raw) | {v for v in [*dataset.videos, *dataset.crop_videos] if base_video(v) in raw}
        found = [AudioSource(v, dataset.video_path(v)) for v in sorted(wanted)]
        counts: dict[str, int | None] = {}
        for entry in found:  # `<v>_left`/`<v>_right` take `<v>`'s frame count, as the visual features do
            base = entry.name if entry.name in raw else base_video(entry.name)
            if base not in counts:
                try:
                    counts[base] = dataset.n_frames(base)
                except MambavaError:
                    counts[base] = None  # the packets' count; an unreadable video is reported when extracted
            entry.n_frames = counts[base]
    else:
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        found = [AudioSource(p.stem, p) for p in files]
        seen: dict[str, Path] = {}
        for entry in found:
            if entry.name in seen:
                raise MambavaError(f"{entry.path}: two videos named {entry.name!r} (also {seen[entry.name]})")
            seen[entry.name] = entry.path
    if not found:
        raise MambavaError(f"{source}: no videos found (looked for videos/ or raw_videos/, or video files)")
    if names:
        known = {s.name: s for s in found}
        missing = [n for n in names if n not in known]
        if missing:
            raise MambavaError(f"{source}: no video {missing[0]!r} ({len(missing)} of the names asked for)")
        found = [known[n] for n in names]
    return found


@dataclass
class AudioExtractSummary:
    entries: list[str] = field(default_factory=list)
    extracted: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already complete in the store
    failed: list[str] = field(default_factory=list)
    without_sound: list[str] = field(default_factory=list)  # extracted, every frame masked
    videos: int = 0  # files decoded (`<v>_left`/`<v>_right` share one)
    frames: int = 0
    seconds_of_video: float = 0.0
    seconds: float = 0.0

    @property
    def realtime_factor(self) -> float:
        """Seconds of video processed per second of wall time."""
        return self.seconds_of_video / self.seconds if self.seconds > 0 else 0.0


def _features_job(path: Path, n_frames: int | None, sets: list[str], speech_model: SpeechModel | None = None):
    """One video's features for extraction, in this process or a worker: (AudioFeatures or None, its AudioWarning
    lines, the MambavaError line or None)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AudioWarning)
        try:
            result, error = frame_features(path, sets, speech_model=speech_model, n_frames=n_frames), None
        except OutputError:
            raise
        except MambavaError as exc:
            result, error = None, str(exc)
    for w in caught:
        if not issubclass(w.category, AudioWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result, [str(w.message) for w in caught if issubclass(w.category, AudioWarning)], error


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core: log-mel's STFT must not spread over the others' cores


def extract_audio(source: str | os.PathLike | list[AudioSource], store, sets: Sequence[str] | str = DEFAULT_FEATURE_SETS,
                  *, speech_model: SpeechModel | None = None, dtype: str = "float32", names: Sequence[str] | None = None,
                  overwrite: bool = False, workers: int = 0, on_error: Callable[[str], None] | None = None,
                  on_warning: Callable[[str], None] | None = None,
                  progress: Callable[[int, int, str], None] | None = None) -> AudioExtractSummary:
    """Extract every pending entry of `source` into `store` (a FeatureStore or its folder): features (T, D),
    the sound mask, fps, `backbone` "audio:<sets>", and in `extra` the columns, sets, source file and why frames
    are masked. Resumable: complete entries are skipped (the store publishes an entry only once written), and a
    video's sound is decoded once for all its entries. A video that cannot be read raises a MambavaError naming
    it, or with `on_error` is reported there and listed in `failed`; a store that cannot be written stops the run.
    `on_warning` receives each AudioWarning line (default: Python's warnings). `workers` > 0: that many worker
    processes compute the features (openSMILE runs on one core), this process writes the store in order;
    not with a speech model (one copy of it, in this process). `progress(done, total, name)` after each video."""
    from mambava.features import FeatureStore

    sets = check_sets(sets, speech_model)
    if workers and speech_model is not None:
        raise MambavaError("audio extraction: worker processes (--workers) do not take a speech model; use 0")
    store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    sources = source if isinstance(source, list) else find_audio_sources(source, names)
    summary = AudioExtractSummary(entries=[s.name for s in sources])
    pending: dict[tuple[Path, int | None], list[AudioSource]] = {}
    for entry in sources:
        if not overwrite and store.has(entry.name):
            summary.skipped.append(entry.name)
        else:
            pending.setdefault((entry.path, entry.n_frames), []).append(entry)
    backbone = "audio:" + "+".join(speech_model.name if s == "ssl" else s for s in sets)
    start = time.perf_counter()
    jobs = list(pending.items())
    pool = None
    if workers and len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        # spawn, not fork: the parent may hold torch's and openSMILE's threads
        pool = ProcessPoolExecutor(min(workers, len(jobs)), multiprocessing.get_context("spawn"), _worker_init)
        futures = [pool.submit(_features_job, path, n_frames, sets) for (path, n_frames), _ in jobs]
        results = (future.result() for future in futures)
    else:
        results = (_features_job(path, n_frames, sets, speech_model) for (path, n_frames), _ in jobs)
    try:
        for done, (((path, n_frames), entries), (result, lines, error)) in enumerate(zip(jobs, results), 1):
            for line in lines:
                if on_warning is None:
                    warnings.warn(line, AudioWarning, stacklevel=2)
                else:
                    on_warning(line)
            if error is not None:
                if on_error is None:
                    raise MambavaError(error)
                summary.failed.extend(e.name for e in entries)
                on_error(error)
            else:
                extra = {"columns": result.columns, "sets": result.sets, "source": str(path), "codec": result.codec,
                         "masked": result.reason, "sample_rate": SAMPLE_RATE}
                for entry in entries:  # an OutputError (full disk, read-only store) stops the run
                    store.write(entry.name, result.features, result.mask, result.fps, backbone, dtype, extra)
                    summary.extracted.append(entry.name)
                    if not result.mask.any():
                        summary.without_sound.append(entry.name)
                summary.videos += 1
                summary.frames += len(result.mask)
                summary.seconds_of_video += len(result.mask) / result.fps
            if progress is not None:
                progress(done, len(jobs), entries[0].name)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    summary.seconds = time.perf_counter() - start
    return summary


__all__ = ["AudioExtractSummary", "AudioFeatures", "AudioSource", "AudioTrack", "AudioWarning", "DEFAULT_FEATURE_SETS",
           "FEATURE_SETS", "FrameGrid", "SAMPLE_RATE", "SpeechModel", "check_sets", "decode_audio", "egemaps_lld",
           "extract_audio", "find_audio_sources", "frame_features", "frame_grid", "frame_peaks", "grid_from_times",
           "has_audio", "log_mel", "mel_filterbank", "pool_frames"]
