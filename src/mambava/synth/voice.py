"""Synthetic voices: each person of a video speaks, and the video's sound track carries what they say.

A source-filter voice, vectorised numpy (no per-sample Python):

- *Source*: Rosenberg glottal pulses (the flow's derivative: lip radiation) on a pitch contour, a little
  aspiration noise in the open phase; the pulse's closing phase shortens (a tenser, brighter voice) with arousal.
- *Syllables*: a syllable clock whose rate rises with arousal (about 2.8 syllables/s calm to 6 aroused); each
  syllable a voiced nucleus (raised-sine envelope, a random stress) through one of five vowels' formant filters
  (F1-F3 scaled by the speaker's vocal tract), then a short closure, half of them with a fricative noise burst.
- *Pitch*: the speaker's own F0 (85-240 Hz), raised by up to ±5 semitones with arousal; within each syllable
  an excursion whose range grows with arousal, and a slope that rises with valence and falls without it (the
  weaker valence cue, with the spectral tilt: brighter with positive valence).
- *Loudness*: ±10 dB with arousal around the speaker's level (its distance to the microphone: ±3 dB).
- *Turns and pauses*: a person is heard only while talking (the face's own talking segments, so lips and voice
  start and stop together); in a two-person video the floor alternates (turns of 1-6 s) and only the person
  who holds it is heard: a face's own voice is present only part of the time (`voice` in synth_meta/<v>.npz).
- *Room*: a reverberation (exponentially decaying noise, RT60 0.15-0.5 s, one response per seat), pink room
  noise at -58 to -46 dBFS with a mains hum, so no frame is digitally silent.

The audio's random draws come from a generator of their own (a SeedSequence beside the video's), so adding the
voice leaves every frame, crop and label of a seed as it was; the same seed gives the same samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000  # the audio stage's rate: nothing is lost to resampling
VOICE_KEY = 0x766F  # the spawn-key element of the audio's SeedSequence (beside the video's)

# vowels' formants (F1, F2, F3 Hz) of an adult voice, and their bandwidths (Hz)
VOWELS = np.array(
    [[730, 1090, 2440], [530, 1840, 2480], [270, 2290, 3010], [570, 840, 2410], [300, 870, 2240]], dtype=np.float64
)
BANDWIDTHS = np.array([90.0, 110.0, 160.0])

AROUSAL_SEMITONES = 5.0  # F0 level: ±5 semitones over arousal -1..1
AROUSAL_DB = 10.0  # loudness: ±10 dB
RATE_SYLLABLES = (2.8, 6.0)  # syllables per second at arousal -1 and 1
RANGE_SEMITONES = (0.8, 4.0)  # the syllable's pitch excursion at arousal -1 and 1
VALENCE_SLOPE = 1.5  # semitones across a syllable per unit valence (rising when positive)
VALENCE_TILT = 0.5  # high-band gain per unit valence: 1 + 0.5 v at the top (about ±3.5 dB), none at 0 Hz


@dataclass
class Speaker:
    """A person's voice: F0 at arousal 0 (Hz), level (dBFS RMS of speech at arousal 0), formant scale (vocal
    tract), speaking-rate factor."""

    f0: float
    level_db: float
    formant_scale: float
    rate: float


def voice_rng(seed: np.random.SeedSequence) -> np.random.Generator:
    """The audio's own generator for a video whose generator is seeded by `seed`."""
    return np.random.default_rng(np.random.SeedSequence(seed.entropy, spawn_key=(*seed.spawn_key, VOICE_KEY)))


def sample_speaker(rng: np.random.Generator) -> Speaker:
    low = rng.random() < 0.5  # lower and higher voices
    f0 = rng.uniform(85, 140) if low else rng.uniform(160, 240)
    scale = rng.uniform(0.95, 1.05) * (1.0 if low else 1.15)
    return Speaker(
        f0=float(f0),
        level_db=float(-26 + rng.uniform(-3, 3)),
        formant_scale=float(scale),
        rate=float(rng.uniform(0.9, 1.1)),
    )


def speaking(rng: np.random.Generator, talking: list[np.ndarray], fps: float) -> list[np.ndarray]:
    """Per person, the frames where their voice is heard: their talking segments, and with two people only in
    their turns (the floor alternates, 1-6 s a turn)."""
    if len(talking) == 1:
        return [talking[0].copy()]
    n = len(talking[0])
    floor = np.zeros(n, dtype=np.int64)
    t, holder = 0, int(rng.integers(len(talking)))
    while t < n:
        length = int(rng.uniform(1.0, 6.0) * fps)
        floor[t : t + length] = holder
        t += length
        holder = (holder + 1) % len(talking)
    return [talk & (floor == k) for k, talk in enumerate(talking)]


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Moving average over `width` samples (centred), edges held."""
    if width <= 1:
        return x
    pad = np.pad(x, (width // 2, width - 1 - width // 2), mode="edge")
    c = np.concatenate([[0.0], np.cumsum(pad)])
    return (c[width:] - c[:-width]) / width


def _resonators(freqs: np.ndarray, z: np.ndarray, sr: int) -> np.ndarray:
    """Frequency response at z = exp(-i omega) of a cascade of two-pole resonators at `freqs` with BANDWIDTHS,
    each with unit gain at 0 Hz (Klatt's formant filter)."""
    h = np.ones_like(z)
    for f, bw in zip(freqs, BANDWIDTHS):
        r = math.exp(-math.pi * bw / sr)
        a1, a2 = -2 * r * math.cos(2 * math.pi * f / sr), r * r
        h *= (1 + a1 + a2) / (1 + a1 * z + a2 * z * z)
    return h


def _rosenberg(phase: np.ndarray, closing: np.ndarray, opening: float = 0.4) -> np.ndarray:
    """Glottal flow over one period (phase in [0, 1)): rise over `opening`, fall over `closing`, then closed."""
    g = np.zeros_like(phase)
    rise = phase < opening
    g[rise] = 0.5 * (1 - np.cos(np.pi * phase[rise] / opening))
    fall = ~rise & (phase < opening + closing)
    g[fall] = np.cos(0.5 * np.pi * (phase[fall] - opening) / closing[fall])
    return g


def voice(
    rng: np.random.Generator, va: np.ndarray, heard: np.ndarray, fps: float, speaker: Speaker, sr: int = SAMPLE_RATE
) -> np.ndarray:
    """One person's dry voice (float64 samples covering the video) from their true VA (n, 2) per frame, heard
    only where `heard` (n,) is True (exact zeros elsewhere)."""
    n = len(va)
    n_samples = int(round(n / fps * sr))
    t = np.arange(n_samples) / sr
    frame_t = (np.arange(n) + 0.5) / fps
    v = np.interp(t, frame_t, va[:, 0])
    a = np.interp(t, frame_t, va[:, 1])
    a01 = (a + 1) / 2
    # the syllable clock
    rate = speaker.rate * (RATE_SYLLABLES[0] + (RATE_SYLLABLES[1] - RATE_SYLLABLES[0]) * a01)
    clock = np.cumsum(rate / sr) + rng.uniform(0, 1)
    k = clock.astype(np.int64)
    u = clock - k
    n_syl = int(k[-1]) + 1 if n_samples else 1
    nucleus = rng.uniform(0.6, 0.8, n_syl)  # share of the syllable that is voiced
    stress = rng.uniform(0.0, 1.0, n_syl)
    vowel = rng.integers(len(VOWELS), size=n_syl)
    fricative = rng.random(n_syl) < 0.5
    d = nucleus[k]
    voiced = u < d
    env = np.where(voiced, np.sin(np.pi * np.minimum(u / d, 1.0)) ** 0.6, 0.0)
    # pitch: level + syllable excursion (range with arousal) + valence slope + slow wander
    span = RANGE_SEMITONES[0] + (RANGE_SEMITONES[1] - RANGE_SEMITONES[0]) * a01
    shape = (0.4 + 0.6 * stress[k]) * np.sin(np.pi * np.minimum(u / d, 1.0))
    # a slow wander of ~0.5 semitones (white noise averaged over 0.3 s keeps ~1/3 of its spread)
    wander = np.interp(t, frame_t, 0.5 * _smooth(rng.standard_normal(n), max(int(0.3 * fps), 1)) * 3)
    semitones = AROUSAL_SEMITONES * a + span * shape + VALENCE_SLOPE * v * (u / d - 0.5) + wander
    f0 = speaker.f0 * 2.0 ** (semitones / 12)
    phase = np.cumsum(f0 / sr) + rng.uniform(0, 1)
    closing = 0.28 - 0.14 * a01  # tenser (shorter closing phase, more high harmonics) when aroused
    flow = _rosenberg(phase - np.floor(phase), closing)
    source = np.diff(flow, prepend=flow[:1]) * (f0 / 100.0)  # flow derivative; per-pulse energy ~ independent of F0
    source += 0.02 * rng.standard_normal(n_samples) * flow  # aspiration in the open phase
    source *= env
    # vowels: every vowel's formant filter on the whole source (FFT), cross-faded by syllable (~25 ms)
    n_fft = 1 << (n_samples + int(0.1 * sr) - 1).bit_length()  # 0.1 s of zeros: the filters' ring-out, no wrap
    spectrum = np.fft.rfft(source, n_fft)
    z = np.exp(-2j * np.pi * np.fft.rfftfreq(n_fft))
    out = np.zeros(n_samples)
    weights_all = np.zeros((len(VOWELS), n_samples))
    for j in range(len(VOWELS)):
        weights_all[j] = _smooth((vowel[k] == j).astype(np.float64), int(0.025 * sr))
    for j in range(len(VOWELS)):
        if weights_all[j].any():
            filtered = np.fft.irfft(spectrum * _resonators(VOWELS[j] * speaker.formant_scale, z, sr), n_fft)
            out += weights_all[j] * filtered[:n_samples]
    # fricatives in the closure of half the syllables: high-passed noise
    burst = np.where(~voiced & fricative[k], np.sin(np.pi * (u - d) / np.maximum(1 - d, 1e-3)), 0.0)
    hiss = np.diff(rng.standard_normal(n_samples + 1))
    out += 0.04 * burst * hiss
    # valence: spectral tilt (a first-order high-pass band added or taken away)
    high = 0.5 * np.diff(out, prepend=out[:1])  # a first difference: 0 at 0 Hz, 1 at the Nyquist frequency
    out += VALENCE_TILT * v * high
    # loudness: the speaker's level + arousal, normalised on the source's own level
    rms = math.sqrt(float(np.mean(out[voiced & (env > 0.5)] ** 2))) if np.any(voiced & (env > 0.5)) else 1.0
    gain_db = speaker.level_db + AROUSAL_DB * a + 2.0 * (stress[k] - 0.5)
    out *= 10 ** (gain_db / 20) / max(rms, 1e-9)
    # heard only in the person's talking turns, with 15 ms ramps (no clicks)
    gate = heard[np.minimum((t * fps).astype(np.int64), n - 1)].astype(np.float64)  # each sample's own frame
    gate = np.minimum(_smooth(gate, int(0.015 * sr)), gate)  # ramps stay inside the heard frames
    return out * gate


def _reverb(rng: np.random.Generator, sr: int) -> np.ndarray:
    """A room's impulse response: the direct path and an exponentially decaying noise tail (RT60 0.15-0.5 s)."""
    rt60 = rng.uniform(0.15, 0.5)
    m = int(rt60 * sr)
    tail = rng.standard_normal(m) * np.exp(-6.9 * np.arange(m) / m)  # -60 dB at rt60
    tail[: int(0.003 * sr)] = 0.0  # the first reflection after 3 ms (sample 0: the direct path)
    tail[0] = 1.0
    tail[1:] *= rng.uniform(0.01, 0.03)
    return tail


def _convolve(x: np.ndarray, ir: np.ndarray) -> np.ndarray:
    n = len(x) + len(ir) - 1
    size = 1 << (n - 1).bit_length()
    return np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(ir, size), size)[: len(x)]


def room_noise(rng: np.random.Generator, n_samples: int, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Pink-ish noise (white with a -3 dB/octave slope, by FFT) plus a 50 or 60 Hz hum, at -58 to -46 dBFS."""
    white = rng.standard_normal(n_samples)
    spectrum = np.fft.rfft(white)
    f = np.fft.rfftfreq(n_samples, 1.0 / sr)
    spectrum /= np.sqrt(np.maximum(f, 20.0) / 20.0)
    noise = np.fft.irfft(spectrum, n_samples)
    noise /= max(float(np.std(noise)), 1e-12)
    hum = 0.3 * np.sin(2 * np.pi * (50.0 if rng.random() < 0.5 else 60.0) * np.arange(n_samples) / sr)
    return (noise + hum) * 10 ** (rng.uniform(-58, -46) / 20)


def video_audio(
    seed: np.random.SeedSequence,
    vas: list[np.ndarray],
    talking: list[np.ndarray],
    fps: float,
    sr: int = SAMPLE_RATE,
    render: bool = True,
) -> tuple[np.ndarray | None, list[np.ndarray]]:
    """The sound track of one video (float32 mono at `sr`, the video's duration; None unless `render`) and, per
    person, the frames where their voice is heard. `vas` and `talking`: per person, the true VA (n, 2) and the
    talking frames (n,); `seed`: the video's SeedSequence (the audio draws from `voice_rng(seed)`)."""
    rng = voice_rng(seed)
    speakers = [sample_speaker(rng) for _ in vas]
    heard = speaking(rng, talking, fps)
    if not render:
        return None, heard
    mix = None
    for va, h, speaker in zip(vas, heard, speakers):
        wet = _convolve(voice(rng, va, h, fps, speaker, sr), _reverb(rng, sr))
        mix = wet if mix is None else mix + wet
    mix = mix + room_noise(rng, len(mix), sr)
    return np.clip(mix, -1.0, 1.0).astype(np.float32), heard
