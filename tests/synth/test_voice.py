"""The generator's voices (`mambava.synth.voice`): the videos' AAC track through the audio stage, determinism,
pitch / loudness / speaking rate following arousal, and turns in two-person videos."""

from __future__ import annotations

import numpy as np
import pytest

from mambava.audio import SAMPLE_RATE, decode_audio, egemaps_lld, frame_features
from mambava.synth import SynthConfig, generate, read_meta, read_truth, simulate
from mambava.synth.voice import Speaker, speaking, video_audio, voice

# seed 1: one two-person video (169 frames) and two single-person ones (173, 151)
CFG = dict(n_train=2, n_val=0, n_test=1, frames=(150, 180), two_person_fraction=0.5, seed=1, workers=1)


@pytest.fixture(scope="module")
def voiced(tmp_path_factory):
    root = tmp_path_factory.mktemp("voiced")
    generate(root, SynthConfig(**CFG))
    return root, read_meta(root)


def test_the_sound_track_decodes_through_the_audio_stage_for_the_whole_video(voiced):
    root, meta = voiced
    assert sorted(v["two_person"] for v in meta["videos"]) == [False, False, True]
    for video in meta["videos"]:
        path = root / video["video"]
        track = decode_audio(path)
        assert track.codec == "aac" and track.sample_rate == SAMPLE_RATE and track.start == 0.0
        duration = video["n_frames"] / video["fps"] * SAMPLE_RATE
        # AAC codes whole 1024-sample frames: the track ends within one frame after the video
        assert 0 <= len(track.samples) - duration < 1024, (len(track.samples), duration)
        result = frame_features(path, "logmel")
        assert result.features.shape == (video["n_frames"], 64)
        assert result.mask.all() and result.reason == ""  # room noise: no frame is digital silence


def test_voices_are_deterministic_and_leave_the_pictures_as_they_were(voiced):
    root, meta = voiced
    seed = np.random.SeedSequence(5, spawn_key=(1, 0))
    va = np.stack([np.linspace(-0.5, 0.5, 90), np.linspace(0.8, -0.8, 90)], 1)
    talking = [np.arange(90) % 40 < 25]
    a, heard_a = video_audio(seed, [va], talking, 30.0)
    b, heard_b = video_audio(np.random.SeedSequence(5, spawn_key=(1, 0)), [va], talking, 30.0)
    c, _ = video_audio(np.random.SeedSequence(6, spawn_key=(1, 0)), [va], talking, 30.0)
    assert a.dtype == np.float32 and len(a) == 3 * SAMPLE_RATE
    assert a.tobytes() == b.tobytes() and np.array_equal(heard_a[0], heard_b[0])
    assert not np.array_equal(a, c)
    # the voice draws from its own generator: with voices off every other truth array is the same
    with_voice, without = simulate(SynthConfig(**CFG)), simulate(SynthConfig(**CFG, voices=False))
    for name, truth in with_voice.items():
        assert sorted(truth) == sorted([*without[name], "voice"])
        for key in without[name]:
            assert np.array_equal(truth[key], without[name][key]), (name, key)
        assert np.array_equal(read_truth(root, name)["voice"], truth["voice"])


def _rows(samples: np.ndarray):
    """eGeMAPS F0 (semitones from 27.5 Hz, 0 unvoiced) and loudness every 10 ms, with the rows' times."""
    values, times, columns = egemaps_lld(samples)
    return values[:, columns.index("F0semitoneFrom27.5Hz_sma3nz")], values[:, columns.index("Loudness_sma3")], times


def test_pitch_loudness_and_speaking_rate_rise_with_arousal():
    """A speaker whose arousal climbs from -0.9 to 0.9 over 24 s, one reading per second."""
    n, fps = 720, 30.0
    va = np.stack([np.zeros(n), np.linspace(-0.9, 0.9, n)], 1)
    x = voice(np.random.default_rng(0), va, np.ones(n, bool), fps, Speaker(120.0, -26.0, 1.0, 1.0))
    f0, loud, times = _rows(x.astype(np.float32))
    second = times.astype(int)
    arousal = np.array([va[int(s * fps) : int((s + 1) * fps), 1].mean() for s in range(24)])
    pitch = np.array([np.median(f0[(second == s) & (f0 > 0)]) for s in range(24)])
    loudness = np.array([loud[second == s].mean() for s in range(24)])
    onsets = np.flatnonzero((f0[1:] > 0) & (f0[:-1] == 0))  # voiced stretches begin about once a syllable
    rate = np.array([(second[onsets] == s).sum() for s in range(24)])
    assert np.corrcoef(pitch, arousal)[0, 1] > 0.95
    assert np.corrcoef(loudness, arousal)[0, 1] > 0.85
    assert np.corrcoef(rate, arousal)[0, 1] > 0.7
    # about 5 semitones up per unit of arousal, as designed (the within-syllable excursion widens too)
    assert 4.0 < np.polyfit(arousal, pitch, 1)[0] < 7.5
    assert rate[-6:].mean() > 1.3 * rate[:6].mean()


def test_generated_voices_follow_each_persons_arousal(voiced):
    """In the generated videos (reverberation, room noise, a second speaker): within each person, eGeMAPS F0 and
    loudness of the 10 ms rows where that person is heard against their true arousal."""
    root, meta = voiced
    pitch, loud, arousal = [], [], []
    for video in meta["videos"]:
        f0, loudness, times = _rows(decode_audio(root / video["video"]).samples)
        frame = np.minimum((times * video["fps"]).astype(int), video["n_frames"] - 1)
        for person in video["persons"]:
            truth = read_truth(root, person["name"])
            heard = truth["voice"][frame] & (f0 > 0)
            if heard.sum() < 50:  # heard for under half a second (a short turn)
                continue
            a = truth["va_true"][frame, 1][heard]
            for out, x in ((pitch, f0[heard]), (loud, loudness[heard]), (arousal, a)):
                out.append(x - x.mean())  # within the person: each speaker has their own pitch and level
    assert len(pitch) >= 3
    pitch, loud, arousal = (np.concatenate(x) for x in (pitch, loud, arousal))
    assert np.corrcoef(pitch, arousal)[0, 1] > 0.6
    assert np.corrcoef(loud, arousal)[0, 1] > 0.25


def test_two_people_take_turns_so_each_voice_is_heard_only_in_its_turns(voiced):
    root, meta = voiced
    video = next(v for v in meta["videos"] if v["two_person"])
    left, right = (read_truth(root, p["name"])["voice"] for p in video["persons"])
    assert not (left & right).any() and left.any() and right.any()
    for person, heard in zip(video["persons"], (left, right)):
        assert person["voice_frames"] == int(heard.sum())
    # each person's own signal is exactly silent outside their turns
    rng = np.random.default_rng(3)
    n = 300
    talking = [np.ones(n, bool), np.ones(n, bool)]
    turns = speaking(rng, talking, 25.0)
    assert not (turns[0] & turns[1]).any() and (turns[0] | turns[1]).all()
    va = np.zeros((n, 2))
    x = voice(rng, va, turns[0], 25.0, Speaker(110.0, -26.0, 1.0, 1.0))
    per_frame = np.abs(x.reshape(n, SAMPLE_RATE // 25)).max(1)  # 640 samples a frame
    assert (per_frame[~turns[0]] == 0).all() and (per_frame[turns[0]] > 0).mean() > 0.95
    # in the file: where nobody is heard only the room noise remains, >= 20 dB below the frames with a voice
    track = decode_audio(root / video["video"])
    hop = len(track.samples) // video["n_frames"]
    rms = np.sqrt((track.samples[: hop * video["n_frames"]].reshape(video["n_frames"], hop) ** 2).mean(1))
    level = 20 * np.log10(rms + 1e-12)
    quiet = ~(left | right)
    quiet[1:] &= quiet[:-1]  # away from the turns' edges (the reverberation's tail)
    quiet[:-1] &= quiet[1:]
    assert quiet.sum() > 5
    assert np.median(level[left | right]) - np.median(level[quiet]) > 20


def test_voices_are_heard_only_while_their_face_talks(voiced):
    from mambava.synth.dataset import people, plan

    root, meta = voiced
    cfg = SynthConfig(**CFG)
    for spec in plan(cfg):
        names, _, tracks = people(np.random.default_rng(spec.seed), spec, cfg)
        heard = [read_truth(root, name)["voice"] for name in names]
        if spec.two_person:
            for h, tr in zip(heard, tracks):
                assert not (h & ~tr.talking).any() and h.sum() < tr.talking.sum()
        else:
            assert np.array_equal(heard[0], tracks[0].talking) and 0 < heard[0].mean() < 1


def test_no_voices_leaves_the_videos_silent(tmp_path):
    from typer.testing import CliRunner

    from mambava.cli import app

    result = CliRunner().invoke(
        app,
        [
            "synth",
            "-o",
            str(tmp_path / "d"),
            "--train",
            "1",
            "--val",
            "1",
            "--test",
            "0",
            "--min-frames",
            "30",
            "--max-frames",
            "32",
            "--no-voices",
            "--workers",
            "1",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    meta = read_meta(tmp_path / "d")
    assert meta["config"]["voices"] is False
    for video in meta["videos"]:
        assert decode_audio(tmp_path / "d" / video["video"]) is None
        assert all("voice_frames" not in p for p in video["persons"])
        assert "voice" not in read_truth(tmp_path / "d", video["persons"][0]["name"])
