"""The audio stage: a video's sound as per-frame features on the video's own frame grid.

    track = decode_audio("clip.mp4")                      # 16 kHz mono float32, on the video's clock
    result = frame_features("clip.mp4", ("egemaps", "logmel"))
    result.features  # (T, D) float32, one row per video frame
    result.mask      # (T,) bool: False where the frame has no usable sound

- Decoding: PyAV (FFmpeg), so any container and codec the video stage reads (AAC, MP3, Opus, PCM, ...);
  resampled to 16 kHz mono. Sample times are on the clock `mambava.media.video` gives frames (seconds from the video
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

from mambava.audio.extract import AudioExtractSummary, AudioSource, extract_audio, find_audio_sources
from mambava.audio.features import (
    DEFAULT_FEATURE_SETS,
    EGEMAPS_COLUMNS,
    FEATURE_SETS,
    LOG_OFFSET,
    MEL_FFT,
    MEL_HOP,
    MEL_WINDOW,
    N_MELS,
    AudioFeatures,
    SpeechModel,
    audio_of_frames,
    check_sets,
    egemaps_lld,
    frame_features,
    log_mel,
    mel_filterbank,
    set_dims,
)
from mambava.media.audio import (
    GAP_SECONDS,
    MIN_COVERAGE,
    SAMPLE_RATE,
    SILENCE_DBFS,
    AudioTrack,
    AudioWarning,
    FrameGrid,
    decode_audio,
    frame_grid,
    frame_peaks,
    grid_from_times,
    pool_frames,
)
from mambava.media.video import has_audio

__all__ = [
    "EGEMAPS_COLUMNS",
    "GAP_SECONDS",
    "LOG_OFFSET",
    "MEL_FFT",
    "MEL_HOP",
    "MEL_WINDOW",
    "MIN_COVERAGE",
    "N_MELS",
    "SILENCE_DBFS",
    "set_dims",
    "AudioExtractSummary",
    "AudioFeatures",
    "AudioSource",
    "AudioTrack",
    "AudioWarning",
    "DEFAULT_FEATURE_SETS",
    "FEATURE_SETS",
    "FrameGrid",
    "audio_of_frames",
    "SAMPLE_RATE",
    "SpeechModel",
    "check_sets",
    "decode_audio",
    "egemaps_lld",
    "extract_audio",
    "find_audio_sources",
    "frame_features",
    "frame_grid",
    "frame_peaks",
    "grid_from_times",
    "has_audio",
    "log_mel",
    "mel_filterbank",
    "pool_frames",
]
