"""The audio stage (issue 15 items 1, 2, 6): decoding the real media's AAC and MP3 tracks, the frame grid, a
click landing in its video frame, eGeMAPS pooling against opensmile's own output, masks for missing sound, the
speech-model loader, and extraction into the feature store (`mambava extract --audio`, `data check`)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from support import run_cli

from mambava import audio
from mambava.audio import (
    AudioWarning,
    decode_audio,
    extract_audio,
    find_audio_sources,
    frame_features,
    frame_grid,
    grid_from_times,
    log_mel,
    pool_frames,
)
from mambava.core.errors import MambavaError
from mambava.data.store import FeatureStore

# (file, codec, audio start on the video's clock in s, announced audio duration in s, video frames)
REAL = [
    ("single_face.mp4", "mp3float", 0.0, 2.419002, 72),
    ("face_noface.mov", "aac", 107164 / 44100, 3.993832, 169),
    ("no_face.mp4", "aac", 0.0, 3.945011, 95),
]


def write_av(
    path: Path,
    n_frames: int,
    fps: int = 30,
    sound: np.ndarray | None = None,
    rate: int = 48000,
    codec: str = "aac",
    video_start: int = 0,
    gap: tuple[int, int] | None = None,
) -> Path:
    """A small video (black 32x32 frames at `fps`, the first at frame `video_start` of the clock) with `sound`
    (float in [-1, 1], mono at `rate`, from t=0) as its audio track in `codec` (aac, or pcm_s16le), or none.
    `gap=(k, n)`: the audio timestamps jump n samples ahead from sample k on (a hole in the stream)."""
    import av

    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=fps)
        video.width = video.height = 32
        video.pix_fmt = "yuv420p"
        stream = None
        if sound is not None:
            stream = container.add_stream(codec, rate=rate)
            stream.layout = "mono"
        for i in range(n_frames):
            frame = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            frame.pts = video_start + i
            for packet in video.encode(frame):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if stream is not None:
            x = np.asarray(sound, np.float32)
            for k in range(0, len(x), 1024):
                chunk = x[k : k + 1024]
                if codec.startswith("pcm"):
                    frame = av.AudioFrame.from_ndarray(
                        (chunk * 32767).astype(np.int16)[None], format="s16", layout="mono"
                    )
                else:
                    frame = av.AudioFrame.from_ndarray(chunk[None], format="fltp", layout="mono")
                frame.sample_rate, frame.pts = rate, k + (gap[1] if gap and k >= gap[0] else 0)
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return path


def click_track(seconds: float, at: float, rate: int = 48000) -> np.ndarray:
    """Faint noise (-60 dBFS, so no frame is digital silence) with a 1 ms click at `at` seconds."""
    x = np.random.default_rng(0).normal(size=int(seconds * rate)).astype(np.float32) * 1e-3
    x[int(at * rate) : int(at * rate) + rate // 1000] = 0.9
    return x


@pytest.mark.parametrize("name,codec,start,duration,n_frames", REAL)
def test_decode_real_media_sample_counts(media_dir, name, codec, start, duration, n_frames):
    track = decode_audio(media_dir / name)
    assert track.codec == codec and track.sample_rate == 16000 and track.samples.dtype == np.float32
    assert track.samples.ndim == 1 and 0.01 < np.abs(track.samples).max() <= 1.0  # real sound, mono
    # 16 kHz samples for the announced duration, to within the codec's priming and padding (about one frame: AAC
    # 1024, MP3 1152 samples at 44.1 kHz, 23-26 ms; face_noface.mov's header is 28 ms longer), and exactly the
    # 44.1 kHz samples the decoder gives, rescaled (to one sample)
    assert abs(len(track.samples) / 16000 - duration) < 0.03, len(track.samples)
    import av

    with av.open(str(media_dir / name)) as container:
        native = sum(frame.samples for frame in container.decode(audio=0))
    assert abs(len(track.samples) - native * 16000 / 44100) <= 1
    assert track.start == pytest.approx(start, abs=1e-6)
    assert track.segments.shape == (1, 2) and track.segments[0, 0] == pytest.approx(start)


@pytest.mark.parametrize("name,codec,start,duration,n_frames", REAL)
def test_frame_grid_is_the_video_readers_frames(media_dir, name, codec, start, duration, n_frames):
    from mambava.media.video import open_video

    grid = frame_grid(media_dir / name)
    with open_video(media_dir / name) as reader:
        times = np.array([frame.time for frame in reader])
    assert grid.n_frames == n_frames == len(times)  # no_face.mp4: 98 packets, 3 discarded by its edit list
    np.testing.assert_allclose(grid.edges[:-1], times, atol=1e-9)
    assert grid.edges[-1] == pytest.approx(times[-1] + 1 / grid.fps)
    longer = frame_grid(media_dir / name, n_frames=n_frames + 2)  # the header count of the visual features
    np.testing.assert_allclose(longer.edges[-3:], times[-1] + np.arange(1, 4) / grid.fps)


def test_late_audio_masks_the_frames_before_it(media_dir):
    """face_noface.mov's sound starts at 2.430 s: frames less than half covered by it are masked, with one
    warning naming the file; the frames after it carry the sound."""
    path = media_dir / "face_noface.mov"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = frame_features(path, "logmel")
    lines = [str(w.message) for w in caught if w.category is AudioWarning]
    assert lines == [
        f"{path}: sound from 2.430 s to 6.396 s (1 part(s)) covers frames 73..168 of 169 (video to "
        f"6.398 s): 73 frame(s) without sound; the audio of 73 of 169 frames is masked"
    ]
    edges = frame_grid(path).edges
    expected = np.minimum(edges[1:], 6.3956) - np.maximum(edges[:-1], 107164 / 44100) >= 0.5 * np.diff(edges)
    np.testing.assert_array_equal(result.mask, expected)
    assert result.mask.sum() == 96 and not result.features[~result.mask].any()
    assert result.features.shape == (169, 64) and (result.features[result.mask].std(0) > 0).all()


@pytest.mark.parametrize("codec,suffix", [("aac", ".mp4"), ("pcm_s16le", ".mkv"), ("pcm_s16le", ".mov")])
def test_a_click_lands_in_its_video_frame(tmp_path, codec, suffix):
    """A click in the middle of frame 37 (48 kHz sound, resampled to 16 kHz) gives frame 37 the most energy."""
    at = 37.5 / 30
    path = write_av(tmp_path / f"click{suffix}", 60, 30, click_track(2.0, at), codec=codec)
    result = frame_features(path, "logmel")
    assert result.mask.all() and result.features.shape == (60, 64)
    energy = result.features.sum(1)
    assert int(np.argmax(energy)) == 37 and energy[37] > energy[[36, 38]].max() + 64  # e-fold above each neighbour
    track = decode_audio(path)
    assert abs(track.start + np.argmax(np.abs(track.samples)) / 16000 - at) < 0.001


def test_a_click_lands_in_its_frame_when_the_video_starts_late(tmp_path):
    """The video stream's first frame at 0.5 s on the container's clock, the sound from 0: frame times count from
    the first frame (as the video stage gives them), and the click at 1.25 s plays during frame 22."""
    path = write_av(tmp_path / "late.mkv", 40, 30, click_track(2.0, 22.5 / 30 + 0.5), codec="pcm_s16le", video_start=15)
    track = decode_audio(path)
    assert track.start == pytest.approx(-0.5, abs=1e-3)
    result = frame_features(path, "logmel")
    assert int(np.argmax(result.features.sum(1))) == 22 and result.mask.all()


def test_egemaps_pooling_matches_opensmiles_own_output(media_dir):
    """Each video frame's eGeMAPS row is the mean of opensmile's own LLD rows whose window centre (start + end) / 2
    falls in the frame's interval, computed here row by row."""
    import opensmile

    path = media_dir / "single_face.mp4"
    track = decode_audio(path)
    smile = opensmile.Smile(
        feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level=opensmile.FeatureLevel.LowLevelDescriptors
    )
    lld = smile.process_signal(track.samples, 16000)
    centres = (
        track.start
        + (
            lld.index.get_level_values("start").total_seconds().to_numpy()
            + lld.index.get_level_values("end").total_seconds().to_numpy()
        )
        / 2
    )
    edges = frame_grid(path).edges
    expected = np.stack([lld.to_numpy()[(centres >= lo) & (centres < hi)].mean(0) for lo, hi in zip(edges, edges[1:])])
    result = frame_features(path, ("egemaps", "logmel"))
    assert result.columns[:25] == list(lld.columns) == list(audio.EGEMAPS_COLUMNS)
    assert result.features.shape == (72, 25 + 64) and result.mask.all()
    np.testing.assert_allclose(result.features[:, :25], expected, rtol=1e-5, atol=1e-4)
    counts = [int(((centres >= lo) & (centres < hi)).sum()) for lo, hi in zip(edges, edges[1:])]
    assert len(lld) == 237 and set(counts[:-1]) == {3, 4} and counts[-1] == 1  # 10 ms rows in 33 ms frames


def test_pool_frames_means_and_nearest_row():
    values = np.arange(10, dtype=np.float64)[:, None] * [1.0, -2.0]
    times = np.arange(10) * 0.01 + 0.005  # centres 5, 15, ..., 95 ms
    edges = np.array([0.0, 0.03, 0.031, 0.1, 0.2])
    out = pool_frames(values, times, edges)
    # [0, 30 ms): rows 0-2; [30, 31 ms): none, the nearest to its middle (30.5 ms) is row 3 (35 ms; row 2 is at
    # 25 ms); [31, 100 ms): rows 3-9; [100, 200 ms): none, the nearest is row 9
    np.testing.assert_allclose(out[:, 0], [1.0, 3.0, 6.0, 9.0])
    np.testing.assert_allclose(out[:, 1], [-2.0, -6.0, -12.0, -18.0])
    tie = pool_frames(values, times, np.array([0.0, 0.03, 0.03]))  # an empty interval at 30 ms: a tie, the earlier
    np.testing.assert_allclose(tie[:, 0], [1.0, 2.0])
    assert out.dtype == np.float32


def test_log_mel_in_blocks_equals_one_stft(monkeypatch):
    import torch

    x = np.random.default_rng(1).normal(size=16000 * 3 + 77).astype(np.float32) * 0.1
    from mambava.audio import features

    monkeypatch.setattr(features, "_MEL_BLOCK", 37)  # many blocks, the last one short
    values, times, names = log_mel(x)
    spec = (
        torch.stft(
            torch.from_numpy(x),
            512,
            160,
            400,
            torch.hann_window(400),
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        .abs()
        .square()
    )
    reference = torch.log(torch.from_numpy(audio.mel_filterbank()) @ spec + audio.LOG_OFFSET).T.numpy()
    assert values.shape == reference.shape == (1 + len(x) // 160, 64) and len(names) == 64
    np.testing.assert_allclose(values, reference, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(times[:3], [0.0, 0.01, 0.02])
    bank = audio.mel_filterbank()
    assert bank.shape == (64, 257) and bank.max() <= 1.0 and (bank.sum(1) > 0).all()
    assert (np.diff(bank.argmax(1)) >= 0).all() and bank[-1].argmax() > 200  # ascending, up to 8 kHz


def test_no_audio_track_is_masked_with_one_warning(tmp_path):
    path = write_av(tmp_path / "mute.mp4", 12)
    with pytest.warns(AudioWarning) as caught:
        result = frame_features(path)
    assert [str(w.message) for w in caught] == [f"{path}: no audio track; the audio of all 12 frames is masked"]
    assert result.features.shape == (12, 89) and not result.features.any() and not result.mask.any()
    assert result.columns[:25] == list(audio.EGEMAPS_COLUMNS) and result.reason == "no audio track"


def test_digital_silence_is_masked(tmp_path):
    path = write_av(tmp_path / "silent.mkv", 15, sound=np.zeros(48000 // 2), codec="pcm_s16le")
    with pytest.warns(
        AudioWarning,
        match=r"silent.mkv: the audio track is silent \(peak below -80 dBFS\); the "
        r"audio of 15 of 15 frames is masked",
    ):
        result = frame_features(path, "logmel")
    assert not result.mask.any() and not result.features.any()
    # a quiet room (-60 dBFS noise) is sound, not silence
    path = write_av(tmp_path / "quiet.mkv", 15, sound=click_track(0.5, 0.6), codec="pcm_s16le")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert frame_features(path, "logmel").mask.all()


def test_sound_that_ends_early_masks_the_rest(tmp_path):
    path = write_av(tmp_path / "short.mkv", 30, sound=click_track(0.5, 0.2), codec="pcm_s16le")
    with pytest.warns(AudioWarning, match=r"covers frames 0\.\.14 of 30 .*15 frame\(s\) without sound"):
        result = frame_features(path, "logmel")
    np.testing.assert_array_equal(result.mask, np.arange(30) < 15)


def test_a_gap_in_the_sound_is_masked_and_the_rest_stays_in_place(tmp_path):
    """Audio timestamps that jump 0.5 s ahead after 1024 * 10 samples (0.213 s at 48 kHz): the hole is masked
    (frames less than half covered), and the click after it still lands in its frame."""
    path = write_av(
        tmp_path / "gap.mkv", 45, sound=click_track(1.0, 40.5 / 30 - 0.5), codec="pcm_s16le", gap=(10240, 24000)
    )
    track = decode_audio(path)
    # Matroska's timestamps are in ms
    np.testing.assert_allclose(track.segments, [[0, 10240 / 48000], [34240 / 48000, 72000 / 48000]], atol=5e-4)
    assert not track.samples[int(0.25 * 16000) : int(0.7 * 16000)].any()  # the hole holds zeros, never signal
    with pytest.warns(
        AudioWarning,
        match=r"gap.mkv: sound from 0.000 s to 1.500 s \(2 part\(s\)\) covers frames "
        r"0..44 of 45 \(video to 1.500 s\): 15 frame\(s\) without sound",
    ):
        result = frame_features(path, "logmel")
    np.testing.assert_array_equal(np.flatnonzero(~result.mask), np.arange(6, 21))  # [0.2, 0.7) s
    assert int(np.argmax(np.where(result.mask, result.features.sum(1), -np.inf))) == 40


def test_duplicate_timestamps_are_judged_over_one_frame(tmp_path):
    """A grid from a damaged stream's times (frame 5 shares frame 6's timestamp): frame 5's interval is empty, so
    its sound is judged over 1/fps from its time and its features are the nearest 10 ms row."""
    path = write_av(tmp_path / "dup.mkv", 10, sound=click_track(10 / 30, 0.9), codec="pcm_s16le")
    times = np.arange(10) / 30
    times[5] = times[6]
    result = frame_features(path, "logmel", grid=grid_from_times(times, 30.0))
    assert result.mask.all() and result.features.shape == (10, 64)
    mel, mel_times, _ = log_mel(decode_audio(path).samples)
    np.testing.assert_allclose(result.features[5], mel[np.argmin(np.abs(mel_times - times[5]))], rtol=1e-5, atol=1e-5)


def test_coverage_and_peaks_per_interval():
    track = audio.AudioTrack(
        "x",
        np.array([0.1, -0.5, 0.2, 0.0, 0.0, 0.3, -0.9, 0.4], np.float32),
        10,
        1.0,
        np.array([[1.0, 1.3], [1.5, 1.8]]),
    )
    lo, hi = np.array([0.9, 1.2, 1.3, 1.5, 1.75]), np.array([1.2, 1.5, 1.5, 1.9, 1.75])
    np.testing.assert_allclose(track.covered(lo, hi), [0.2, 0.1, 0.0, 0.3, 0.0], atol=1e-12)
    np.testing.assert_allclose(audio.frame_peaks(track, lo, hi), [0.5, 0.2, 0.0, 0.9, 0.0])


def test_a_truncated_file_gives_the_frames_read_and_masks_past_the_sound(media_dir, tmp_path):
    """single_face.mp4 remuxed to Matroska (streamable) and cut at 60% of its bytes: the grid has the frames the
    video stage reads, and the frames after the last decoded sound are masked."""
    import av

    from mambava.media.video import VideoWarning, open_video

    with av.open(str(media_dir / "single_face.mp4")) as source, av.open(str(tmp_path / "full.mkv"), "w") as target:
        streams = {s.index: target.add_stream_from_template(s) for s in source.streams}
        for packet in source.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                target.mux(packet)
    data = (tmp_path / "full.mkv").read_bytes()
    (tmp_path / "cut.mkv").write_bytes(data[: int(len(data) * 0.6)])
    with pytest.warns(VideoWarning), open_video(tmp_path / "cut.mkv") as reader:
        n_read = sum(1 for _ in reader)
    with pytest.warns(AudioWarning, match=r"cut.mkv: sound from .* covers frames 0\.\.\d+ of \d+ .* without sound"):
        result = frame_features(tmp_path / "cut.mkv", "logmel")
    # (here: 41 frames read, the sound ends at 1.295 s, frames 39 and 40 masked)
    end = decode_audio(tmp_path / "cut.mkv").segments[-1, 1]
    edges = frame_grid(tmp_path / "cut.mkv").edges
    assert 20 < n_read == len(result.mask) < 72
    np.testing.assert_array_equal(result.mask, end - edges[:-1] >= 0.5 * np.diff(edges))
    assert 0 < result.mask.sum() < n_read and result.mask[: result.mask.sum()].all()


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(MambavaError, match=r"nope.mp4: no such file"):
        decode_audio(tmp_path / "nope.mp4")
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all")
    with pytest.raises(MambavaError, match=r"bad.mp4: cannot open as a video"):
        frame_features(tmp_path / "bad.mp4")
    with pytest.raises(MambavaError, match=r"got egemaps,mfcc; choose from egemaps, logmel, ssl"):
        audio.check_sets("egemaps,mfcc")
    with pytest.raises(MambavaError, match="'ssl' needs a speech model"):
        audio.check_sets("ssl")
    with pytest.raises(MambavaError, match="at least one frame"):
        grid_from_times([], 30.0)


def _tiny_speech_model(folder: Path, kind: str) -> Path:
    """A randomly initialised wav2vec 2.0 or HuBERT, 2 layers of width 16, saved in Hugging Face format."""
    import torch
    import transformers

    torch.manual_seed(0)
    cls_config, cls_model = {
        "wav2vec2": (transformers.Wav2Vec2Config, transformers.Wav2Vec2Model),
        "hubert": (transformers.HubertConfig, transformers.HubertModel),
    }[kind]
    config = cls_config(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        conv_dim=(8,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
    )
    cls_model(config).eval().save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert"])
def test_speech_model_loader_on_a_tiny_saved_model(tmp_path, media_dir, kind):
    pytest.importorskip(
        "transformers", reason="the speech-model loader needs transformers (not installed: pip install transformers)"
    )
    import torch

    folder = _tiny_speech_model(tmp_path / kind, kind)
    model = audio.SpeechModel(folder)
    assert (model.dim, model.stride, model.receptive_field) == (16, 320, 400)
    x = np.random.default_rng(0).normal(size=16000).astype(np.float32)
    values, times, names = model.features(x)
    assert values.shape == (49, 16) and len(names) == 16
    np.testing.assert_allclose(times, (np.arange(49) * 320 + 200) / 16000)
    with torch.inference_mode():
        reference = model.model(torch.from_numpy((x - x.mean()) / np.sqrt(x.var() + 1e-7))[None]).last_hidden_state[0]
    np.testing.assert_allclose(values, reference.numpy(), rtol=1e-4, atol=1e-5)
    layer0 = audio.SpeechModel(folder, layer=0).features(x)[0]
    assert layer0.shape == (49, 16) and not np.allclose(layer0, values)
    result = frame_features(media_dir / "single_face.mp4", "ssl", speech_model=model)
    assert result.features.shape == (72, 16) and result.mask.all() and result.columns[0] == "ssl0"
    with pytest.raises(MambavaError, match="layer 3 outside 0..2"):
        audio.SpeechModel(folder, layer=3)


def test_speech_model_folder_errors(tmp_path):
    with pytest.raises(MambavaError, match=r"not a Hugging Face model folder \(no config.json\)"):
        audio.SpeechModel(tmp_path)


def _audio_root(root: Path) -> Path:
    """An Aff-Wild2 root whose videos/ holds vidX (sound, 20 frames; annotated as vidX_left and vidX_right) and
    vidY (no sound, 12 frames; annotated as vidY)."""
    write_av(
        (root / "videos" / "b1").mkdir(parents=True) or root / "videos" / "b1" / "vidX.mp4",
        20,
        sound=click_track(20 / 30, 0.3),
    )
    write_av(root / "videos" / "vidY.mp4", 12)
    folder = root / "VA_Estimation_Challenge" / "Train_Set"
    folder.mkdir(parents=True)
    for name, n in (("vidX_left", 20), ("vidX_right", 20), ("vidY", 12)):
        (folder / f"{name}.txt").write_text("valence,arousal\n" + "0.1,0.2\n" * n)
    return root


def test_extract_audio_into_the_store_resumably(tmp_path):
    root = _audio_root(tmp_path / "aff")
    assert [(s.name, s.path.name, s.n_frames) for s in find_audio_sources(root)] == [
        ("vidX", "vidX.mp4", 20),
        ("vidX_left", "vidX.mp4", 20),
        ("vidX_right", "vidX.mp4", 20),
        ("vidY", "vidY.mp4", 12),
    ]
    messages = []
    summary = extract_audio(root, tmp_path / "store", "logmel,egemaps", on_warning=messages.append)
    assert summary.extracted == ["vidX", "vidX_left", "vidX_right", "vidY"] and summary.without_sound == ["vidY"]
    assert summary.frames == 32 and messages == [
        f"{root / 'videos' / 'vidY.mp4'}: no audio track; the audio of all 12 frames is masked"
    ]
    store = FeatureStore(tmp_path / "store")
    x, left = store.read("vidX"), store.read("vidX_left")
    assert (x.n_frames, x.dim, x.dtype, x.fps, x.backbone) == (20, 89, "float32", 30.0, "audio:logmel+egemaps")
    assert x.mask.all() and np.array_equal(np.asarray(x.features), np.asarray(left.features))
    assert x.extra["columns"][:2] == ["logmel0", "logmel1"] and x.extra["columns"][64] == "Loudness_sma3"
    assert x.extra["sets"] == ["logmel", "egemaps"] and x.extra["source"].endswith("vidX.mp4")
    y = store.read("vidY")
    assert not y.mask.any() and not np.asarray(y.features).any() and y.extra["masked"] == "no audio track"
    direct = frame_features(root / "videos" / "b1" / "vidX.mp4", "logmel,egemaps")
    np.testing.assert_array_equal(np.asarray(x.features), direct.features)
    again = extract_audio(root, store, "logmel,egemaps", on_warning=messages.append)
    assert again.extracted == [] and again.skipped == summary.extracted
    store.remove("vidX_right")  # an interrupted run: only the missing entry is redone
    assert extract_audio(root, store, "logmel,egemaps", on_warning=messages.append).extracted == ["vidX_right"]


def test_extract_audio_with_worker_processes_writes_the_same_store(tmp_path):
    """Two worker processes (one pool: each spawn imports torch) give the store the serial run gives, the same
    warning and error lines, in order; a broken video in a worker is its one line and the rest go on."""
    root = _audio_root(tmp_path / "aff")
    (root / "videos" / "vidZ.mp4").write_bytes(b"broken")
    runs = {}
    for workers in (0, 2):
        lines, errors, seen = [], [], []
        summary = extract_audio(
            root,
            tmp_path / f"w{workers}",
            "logmel,egemaps",
            workers=workers,
            on_warning=lines.append,
            on_error=errors.append,
            progress=lambda done, total, name: seen.append((done, total, name)),
        )
        runs[workers] = (summary.extracted, summary.failed, lines, errors, seen)
    assert runs[0] == runs[2]
    extracted, failed, lines, errors, seen = runs[2]
    assert extracted == ["vidX", "vidX_left", "vidX_right", "vidY"] and failed == ["vidZ"]
    assert seen == [(1, 3, "vidX"), (2, 3, "vidY"), (3, 3, "vidZ")]
    assert lines == [f"{root / 'videos' / 'vidY.mp4'}: no audio track; the audio of all 12 frames is masked"]
    assert len(errors) == 1 and errors[0].startswith(f"{root / 'videos' / 'vidZ.mp4'}: cannot open as a video")
    one, two = FeatureStore(tmp_path / "w0"), FeatureStore(tmp_path / "w2")
    for name in extracted:
        np.testing.assert_array_equal(np.asarray(one.read(name).features), np.asarray(two.read(name).features))
        np.testing.assert_array_equal(one.read(name).mask, two.read(name).mask)


def test_extract_audio_cli_and_data_check(tmp_path, capsys):
    root = _audio_root(tmp_path / "aff")
    code, out, err = run_cli(["extract", root, "--audio", "--audio-features", "logmel", "-o", tmp_path / "s"], capsys)
    assert code == 0, err
    assert out.startswith("4 entries from 2 video(s) extracted (32 frames, 1.1 s of video at ")
    assert out.rstrip().endswith(
        f"real time, 1 without sound (masked)), 0 already in {tmp_path / 's'}; audio features logmel float16"
    )
    assert (
        f"warning: {root / 'videos' / 'vidY.mp4'}: no audio track; the audio of all 12 frames is masked"
        in err.splitlines()
    )
    assert FeatureStore(tmp_path / "s").read("vidX_left").dim == 64
    code, out, err = run_cli(["extract", root, "--audio", "--audio-features", "logmel", "-o", tmp_path / "s"], capsys)
    assert code == 0 and out.strip() == (
        f"0 entries from 0 video(s) extracted, 4 already in {tmp_path / 's'}; audio features logmel float16"
    )
    code, out, err = run_cli(["extract", root, "--audio", "--audio-features", "mfcc", "-o", tmp_path / "s"], capsys)
    assert code == 2 and err.strip() == (
        "error: audio feature sets: got mfcc; choose from egemaps, logmel, ssl (comma-separated, each once)"
    )
    code, out, err = run_cli(["data", "check", root], capsys)
    assert "1 raw video(s) without sound: vidY" in out


def test_data_check_lists_videos_without_sound(affwild2_root):
    from mambava.data.check import check

    assert check(affwild2_root, progress=False).videos_without_audio == ["vidD", "vidE"]
