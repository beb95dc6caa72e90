"""mambava.media.video on the real media and on small clips made here: frames, timestamps, containers, rotation,
variable frame rate, subsampling, streaming, image folders, and the errors/warnings for broken files."""

from __future__ import annotations

import struct
import tracemalloc
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from mambava.core.errors import MambavaError
from mambava.media.video import VideoWarning, open_video


def _encode(
    path: Path, frames: list[np.ndarray], codec: str, rate: int = 10, pts_ms: list[int] | None = None, **opts
) -> Path:
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w", options=opts) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        if pts_ms is not None:
            stream.time_base = Fraction(1, 1000)
            stream.codec_context.time_base = Fraction(1, 1000)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _remux(src: Path, dst: Path, **opts) -> Path:
    with av.open(str(src)) as inp, av.open(str(dst), "w", options=opts) as out:
        stream = inp.streams.video[0]
        out_stream = out.add_stream_from_template(stream)
        for packet in inp.demux(stream):
            if packet.dts is None:
                continue
            packet.stream = out_stream
            out.mux(packet)
    return dst


def _gray_clip(n: int = 10, h: int = 48, w: int = 64) -> list[np.ndarray]:
    return [np.full((h, w, 3), 20 * i, np.uint8) for i in range(n)]


def test_single_face_frames_and_timestamps(media_dir):
    with open_video(media_dir / "single_face.mp4") as reader:
        assert reader.fps == pytest.approx(30.0)
        assert reader.n_frames == 72
        assert (reader.width, reader.height) == (640, 360)
        frames = list(reader)
    assert [f.index for f in frames] == list(range(72))
    times = np.array([f.time for f in frames])
    np.testing.assert_allclose(times, np.arange(72) / 30.0, atol=1e-3)
    assert all(f.image.shape == (360, 640, 3) and f.image.dtype == np.uint8 for f in frames[:3])
    assert frames[0].image.mean() > 30  # a real picture, not a black frame


def test_header_count_may_differ_without_warning(media_dir):
    # no_face.mp4 announces 98 frames but decodes 95: a normal file, read silently.
    with warnings.catch_warnings():
        warnings.simplefilter("error", VideoWarning)
        with open_video(media_dir / "no_face.mp4") as reader:
            assert reader.n_frames == 98
            assert sum(1 for _ in reader) == 95


def test_fps_subsampling_keeps_one_frame_per_slot(media_dir):
    with open_video(media_dir / "face_noface.mov", fps=5) as reader:
        frames = list(reader)
        expected = reader.n_output_frames
    slots = [int(np.floor(f.time * 5 + 1e-6)) for f in frames]
    assert slots == list(range(len(frames)))  # exactly one frame per 0.2 s slot, none skipped
    assert abs(len(frames) - 32) <= 1 and abs(expected - len(frames)) <= 1
    # indices stay the source's frame numbers (26.4 fps → about every 5th frame)
    assert frames[1].index in (5, 6) and frames[-1].index > 160


def test_fps_above_source_rate_keeps_every_frame(media_dir):
    with open_video(media_dir / "single_face.mp4", fps=100) as reader:
        assert sum(1 for _ in reader) == 72


@pytest.mark.parametrize(
    "suffix,codec", [(".webm", "libvpx-vp9"), (".avi", "mpeg4"), (".mkv", "libx264"), (".mov", "libx264")]
)
def test_common_containers(tmp_path, suffix, codec):
    clip = _gray_clip()
    path = _encode(tmp_path / f"clip{suffix}", clip, codec)
    with open_video(path) as reader:
        frames = list(reader)
    assert [f.index for f in frames] == list(range(10))
    np.testing.assert_allclose([f.time for f in frames], np.arange(10) / 10, atol=1e-3)
    means = [f.image.mean() for f in frames]
    np.testing.assert_allclose(means, [20 * i for i in range(10)], atol=4)


def test_variable_frame_rate_uses_timestamps(tmp_path):
    pts = [0, 40, 80, 200, 210, 220, 600, 640, 1000, 1033]
    path = _encode(tmp_path / "vfr.mkv", _gray_clip(), "libx264", rate=25, pts_ms=pts)
    with open_video(path) as reader:
        frames = list(reader)
    np.testing.assert_allclose([f.time for f in frames], np.array(pts) / 1000, atol=1e-6)
    with open_video(path, fps=5) as reader:  # slots of 0.2 s, chosen by time, not by frame count
        assert [(f.index, round(f.time, 3)) for f in reader] == [(0, 0.0), (3, 0.2), (6, 0.6), (8, 1.0)]


def test_rotation_metadata_is_applied(media_dir, tmp_path):
    """A phone-style portrait clip: pixels stored sideways, the track's display matrix says rotate 90°
    clockwise. Frames must come out upright, equal to the original."""
    with open_video(media_dir / "single_face.mp4") as reader:
        upright = [f.image for _, f in zip(range(3), reader)]
    sideways = [np.ascontiguousarray(np.rot90(im, 1)) for im in upright]
    path = _encode(tmp_path / "portrait.mp4", sideways, "libx264", rate=30)
    data = bytearray(path.read_bytes())
    tkhd = data.find(b"tkhd")
    assert data[tkhd + 4] == 0  # version 0 box: the matrix sits 40 bytes after the version/flags
    matrix_at = tkhd + 4 + 40
    assert struct.unpack(">9i", data[matrix_at : matrix_at + 36]) == (1 << 16, 0, 0, 0, 1 << 16, 0, 0, 0, 1 << 30)
    data[matrix_at : matrix_at + 36] = struct.pack(">9i", 0, 1 << 16, 0, -(1 << 16), 0, 0, 0, 0, 1 << 30)
    path.write_bytes(bytes(data))
    with open_video(path) as reader:
        frames = list(reader)
    assert len(frames) == 3
    assert frames[0].image.shape == (360, 640, 3)
    assert np.abs(frames[0].image.astype(int) - upright[0]).mean() < 4  # codec noise only


def test_streaming_holds_one_frame_at_a_time(media_dir):
    tracemalloc.start()
    try:
        with open_video(media_dir / "face_noface.mov") as reader:
            count = sum(int(f.image.shape[0] > 0) for f in reader)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 169
    assert peak < 30 * 2**20  # 169 RGB frames of 960×540 would be 263 MB


def test_image_folder_and_single_image(tmp_path, media_dir):
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    for n in (1, 2, 10):  # Aff-Wild2-style names: 1-based frame numbers
        Image.fromarray(np.full((8, 8, 3), n, np.uint8)).save(folder / f"{n:05d}.png")
    with open_video(folder) as reader:
        frames = list(reader)
    assert [f.index for f in frames] == [0, 1, 9]
    assert [int(f.image[0, 0, 0]) for f in frames] == [1, 2, 10]
    np.testing.assert_allclose([f.time for f in frames], [0, 1 / 30, 9 / 30])

    other = tmp_path / "named"
    other.mkdir()
    for name in ("img2.png", "img10.png", "img1.png"):
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(other / name)
    (other / "notes.txt").write_text("not an image")
    with open_video(other) as reader:
        assert [f.index for f in reader] == [0, 1, 2]
        assert reader._files[1].name == "img2.png"  # natural order

    with open_video(media_dir / "multi_face.jpg") as reader:
        (frame,) = list(reader)
    assert frame.index == 0 and frame.image.shape == (667, 1000, 3)

    with pytest.raises(MambavaError, match="no images"):
        (tmp_path / "empty_dir").mkdir()
        open_video(tmp_path / "empty_dir")


def test_broken_files_raise_errors_naming_the_file(tmp_path, media_dir):
    data = (media_dir / "single_face.mp4").read_bytes()
    cases = {
        "empty.mp4": b"",
        "truncated.mp4": data[: len(data) // 2],  # index (moov) at the end: cut off
        "garbage.mov": bytes(np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8)),
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(MambavaError) as info:
            with open_video(path) as reader:
                list(reader)
        assert name in str(info.value)
    with pytest.raises(MambavaError, match="empty"):
        open_video(tmp_path / "empty.mp4")
    with pytest.raises(MambavaError, match="no such file"):
        open_video(tmp_path / "missing.mp4")
    bad_image = tmp_path / "bad.jpg"
    bad_image.write_bytes(b"not a jpeg")
    with pytest.raises(MambavaError, match="bad.jpg"):
        list(open_video(bad_image))
    with pytest.raises(MambavaError, match="fps"):
        open_video(media_dir / "single_face.mp4", fps=0)


@pytest.mark.parametrize("suffix,opts", [(".mkv", {}), (".mp4", {"movflags": "faststart"})])
def test_video_that_ends_early_is_read_up_to_the_break_with_a_warning(tmp_path, media_dir, suffix, opts):
    full = _remux(media_dir / "single_face.mp4", tmp_path / f"full{suffix}", **opts)
    data = full.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.warns(VideoWarning, match=f"cut{suffix}") as record:
        with open_video(cut) as reader:
            frames = list(reader)
    assert 15 <= len(frames) <= 50  # about half of the 72 frames
    assert [f.index for f in frames] == list(range(len(frames)))
    assert "frames" in str(record[0].message)
    with warnings.catch_warnings():  # the intact file reads completely and silently
        warnings.simplefilter("error", VideoWarning)
        assert sum(1 for _ in open_video(full)) == 72


def test_camera_and_device_errors():
    with pytest.raises(MambavaError, match="camera 99"):
        open_video(99)
    with pytest.raises(MambavaError, match="/dev/video97"):
        open_video("/dev/video97")


def test_reader_streams_once(media_dir):
    reader = open_video(media_dir / "single_face.mp4", fps=2)
    assert len(list(reader)) == 5
    with pytest.raises(MambavaError, match="once"):
        list(reader)
    reader.close()
