"""Frames from videos, cameras, streams and image folders, with their frame numbers and timestamps.

    with open_video("clip.mp4", fps=10) as reader:
        for frame in reader:            # VideoFrame(index, time, image)
            ...

- Streaming: one decoded frame at a time; a video is never held in memory.
- Timestamps are the truth: `time` comes from each frame's presentation timestamp (so variable frame
  rate is handled), in seconds from the start of the stream; `index` is the 0-based number of the frame
  among all decoded frames of the source (a frame skipped by `fps` still counts).
- `fps=N` keeps the first frame of every 1/N-second slot of the timeline (never more frames than the
  source has); frames that are dropped are not converted to RGB, but `reader.decoded()` still lists every
  frame read, kept or not (index, time), so the output can have one row per source frame.
- Rotation metadata (the display matrix phones write) is applied, so images come out upright.
- A file that cannot be opened raises MambavaError naming it; a video that breaks (or ends) before the
  length its container announces is read up to the break and a `VideoWarning` says where it stopped.

Sources: a video file (any container FFmpeg reads: mp4, mov, avi, mkv, webm, ...), a URL or device
(`rtsp://...`, `http://...`, `/dev/video0`), a webcam index (`0` or `"0"`, through OpenCV), a folder
of images (sorted by name; Aff-Wild2-style `00001.jpg` names give the frame numbers), or one image.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time as _time
import warnings
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import av
import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mambava.core.errors import MambavaError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".wmv", ".flv", ".3gp"}
DEFAULT_FOLDER_FPS = 30.0  # frame rate assumed for image folders (Aff-Wild2 videos are mostly 30 fps)


class VideoWarning(UserWarning):
    """A video could be read only in part (it is truncated or damaged)."""


@dataclass(frozen=True, eq=False)
class VideoFrame:
    """One decoded frame. `index`: 0-based frame number in the source; `time`: seconds; `image`: HxWx3 RGB."""

    index: int
    time: float
    image: np.ndarray


class _Sampler:
    """Keeps the first frame of each 1/fps-second slot (all frames when fps is None)."""

    def __init__(self, fps: float | None):
        if fps is not None and not fps > 0:
            raise MambavaError(f"fps must be positive, got {fps}")
        self.fps = fps
        self.last_slot: int | None = None

    def keep(self, t: float) -> bool:
        if self.fps is None:
            return True
        slot = math.floor(t * self.fps + 1e-6)
        if self.last_slot is not None and slot <= self.last_slot:
            return False
        self.last_slot = slot
        return True


class VideoReader:
    """Iterable of VideoFrame; also a context manager. Iterate once (it streams)."""

    path: str
    fps: float | None  # the source's (average) frame rate, None when unknown
    n_frames: int | None  # the container's estimate of the number of frames, None when unknown
    width: int | None
    height: int | None
    duration: float | None  # seconds, from the container; None for live sources
    live: bool  # a camera, device or network stream (timestamps may come from the clock; no length)

    def __init__(self, path: str, target_fps: float | None):
        self.live = False
        self.path = path
        self.target_fps = target_fps
        self._sampler = _Sampler(target_fps)
        self.fps = None
        self.n_frames = None
        self.width = None
        self.height = None
        self.duration = None
        self._decoded_index = array("q")
        self._decoded_time = array("d")

    def _seen(self, index: int, t: float) -> bool:
        """Record a frame read from the source and say whether the `fps` sampling keeps it."""
        self._decoded_index.append(index)
        self._decoded_time.append(t)
        return self._sampler.keep(t)

    def decoded(self, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(indices int64, times float64 seconds) of every frame read so far, kept by `fps` or not, from the
        `start`-th one read on."""
        n = min(len(self._decoded_index), len(self._decoded_time))  # another thread may be reading the source
        return (np.array(self._decoded_index[start:n], np.int64), np.array(self._decoded_time[start:n], np.float64))

    @property
    def n_output_frames(self) -> int | None:
        """How many frames iteration is expected to yield (for progress bars), None when unknown."""
        if self.n_frames is None:
            return None
        if self.target_fps is None or self.fps is None or self.target_fps >= self.fps:
            return self.n_frames
        return max(1, math.ceil(self.n_frames * self.target_fps / self.fps))

    def __iter__(self) -> Iterator[VideoFrame]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, fps={self.fps}, n_frames={self.n_frames})"


def _rotate(image: np.ndarray, degrees_ccw: float) -> np.ndarray:
    """Apply a display-matrix rotation (counter-clockwise degrees, multiples of 90)."""
    k = int(round(degrees_ccw / 90.0)) % 4
    if k == 0:
        return image
    return np.ascontiguousarray(np.rot90(image, k))


class _AVReader(VideoReader):
    """Files, URLs and capture devices through PyAV (FFmpeg)."""

    def __init__(self, path: str, target_fps: float | None, av_format: str | None = None, live: bool = False):
        super().__init__(path, target_fps)

        self._av = av
        self.live = live
        if not live:
            check_media_file(path)
        try:
            options = {"rtsp_transport": "tcp"} if path.startswith("rtsp") else {}
            self._container = av.open(path, format=av_format, options=options, timeout=10.0 if live else None)
        except Exception as error:  # av.error.* and OSError
            hint = "is the device or stream available?" if live else "the file may be corrupt or truncated"
            raise MambavaError(f"{path}: cannot open as a video ({_short(error)}); {hint}") from None
        if not self._container.streams.video:
            self._container.close()
            raise MambavaError(f"{path}: contains no video stream")
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        self._stream = stream
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        self.fps = float(rate) if rate else None
        self.width = stream.codec_context.width or None
        self.height = stream.codec_context.height or None
        self.n_frames = int(stream.frames) or None
        if stream.duration is not None and stream.time_base is not None:
            self.duration = float(stream.duration * stream.time_base)
        elif self._container.duration is not None:
            self.duration = self._container.duration / 1_000_000
        if self.n_frames is None and self.duration and self.fps and not live:
            self.n_frames = max(1, round(self.duration * self.fps))
        self._start = stream.start_time if stream.start_time is not None else None
        self._fallback_rotation = _stream_rotation(stream)
        self._iterated = False

    def __iter__(self) -> Iterator[VideoFrame]:
        if self._iterated:
            raise MambavaError(f"{self.path}: a VideoReader streams once; open the video again to re-read it")
        self._iterated = True
        stream, tb = self._stream, self._stream.time_base
        start = self._start
        index = -1
        last_time = None
        t0 = _time.monotonic()
        frames = self._container.decode(stream)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except self._av.error.EOFError:
                break
            except Exception as error:  # a damaged or truncated stream
                where = (
                    f"after frame {index} (t={last_time:.3f} s)" if last_time is not None else "before the first frame"
                )
                warnings.warn(
                    f"{self.path}: decoding stopped {where}: {_short(error)}; the video is damaged or "
                    f"truncated, {index + 1} frames were read",
                    VideoWarning,
                    stacklevel=2,
                )
                self._container.close()
                return
            index += 1
            if frame.pts is not None and tb is not None:
                t = float((frame.pts - (start or 0)) * tb)
            elif self.live:
                t = _time.monotonic() - t0
            else:
                t = index / self.fps if self.fps else float(index)
            last_time = t
            if not self._seen(index, t):
                continue
            image = frame.to_ndarray(format="rgb24")
            rotation = getattr(frame, "rotation", None)
            if rotation is None:
                rotation = self._fallback_rotation
            yield VideoFrame(index=index, time=t, image=_rotate(image, rotation))
        self._check_complete(index + 1, last_time)

    def _check_complete(self, decoded: int, last_time: float | None) -> None:
        if self.live or not self.duration:
            return
        if last_time is None:
            warnings.warn(f"{self.path}: no frame could be decoded", VideoWarning, stacklevel=3)
            return
        frame_period = 1.0 / self.fps if self.fps else 0.0
        shortfall = self.duration - (last_time + frame_period)
        if shortfall > max(0.5, 0.05 * self.duration):
            warnings.warn(
                f"{self.path}: the video ends early: {decoded} frames up to t={last_time:.3f} s were read, "
                f"its container announces {self.duration:.3f} s; the file is probably truncated",
                VideoWarning,
                stacklevel=3,
            )

    def close(self) -> None:
        try:
            self._container.close()
        except Exception:
            pass


def _stream_rotation(stream) -> float:
    """Rotation for PyAV builds whose frames do not expose `rotation` (older PyAV)."""
    try:
        return -float(stream.metadata.get("rotate", 0))  # the tag is clockwise; frames use counter-clockwise
    except (TypeError, ValueError):
        return 0.0


class _CaptureReader(VideoReader):
    """A camera by index through OpenCV (works on Linux, macOS and Windows)."""

    def __init__(self, index: int, target_fps: float | None):
        super().__init__(f"camera {index}", target_fps)

        self.live = True
        self._cv2 = cv2
        # OpenCV logs its own warnings for a camera it cannot open (one per backend tried): the error below says
        # it in one line, so its log is silenced while it opens.
        level = cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
        try:
            self._cap = cv2.VideoCapture(index)
        finally:
            cv2.utils.logging.setLogLevel(level)
        if not self._cap.isOpened():
            raise MambavaError(f"camera {index}: cannot open the webcam/device (is it connected and free?)")
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and fps > 0 else None
        self.width = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)) or None
        self.height = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) or None

    def __iter__(self) -> Iterator[VideoFrame]:
        t0 = _time.monotonic()
        index = -1
        while True:
            ok, bgr = self._cap.read()
            if not ok:
                break
            index += 1
            t = _time.monotonic() - t0
            if self._seen(index, t):
                yield VideoFrame(index=index, time=t, image=self._cv2.cvtColor(bgr, self._cv2.COLOR_BGR2RGB))

    def close(self) -> None:
        self._cap.release()


def _natural_key(path: Path):
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


# The most pixels an image may have (PIL's own bomb limit): its header is read first, and a larger one is refused
# before a byte is decoded (a 65-byte PNG may claim 20000x20000, 1.2 GB of RGB).
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS
# PIL warns on opening an image over its limit; read_image refuses those itself, in one line, so the warning
# (printed on stderr, once per image) would only be a second line saying the same.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def read_image(path, max_pixels: int | None = None, name: str | None = None) -> np.ndarray:
    """An image file as HxWx3 uint8 RGB, EXIF orientation applied. MambavaError naming the file otherwise.

    Args:
        path: the file (or a binary file object).
        max_pixels: refuse an image whose header claims more pixels than this, before decoding it (default
            `MAX_IMAGE_PIXELS`).
        name: how messages name it (default: `path`).

    Returns:
        The image, (H, W, 3) uint8.
    """

    name = path if name is None else name
    limit = MAX_IMAGE_PIXELS if max_pixels is None else min(int(max_pixels), MAX_IMAGE_PIXELS)
    try:
        with Image.open(path) as im:
            width, height = im.size
            if width * height > limit:
                raise MambavaError(
                    f"{name}: a {width}x{height} image ({width * height} pixels) is over the limit of {limit} pixels"
                )
            im = ImageOps.exif_transpose(im)
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise MambavaError(f"{name}: no such file") from None
    except Image.DecompressionBombError as error:  # PIL's own check, at twice its limit: the header's pixels
        claimed = re.search(r"\((\d+) pixels\)", str(error))
        size = f"{claimed.group(1)} pixels" if claimed else f"over {2 * Image.MAX_IMAGE_PIXELS} pixels"
        raise MambavaError(f"{name}: an image of {size} is over the limit of {limit} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise MambavaError(f"{name}: cannot read as an image ({_short(error)})") from None


class _ImagesReader(VideoReader):
    """A folder of images (or one image) as a video at DEFAULT_FOLDER_FPS."""

    def __init__(self, path: str, files: list[Path], target_fps: float | None, fps: float = DEFAULT_FOLDER_FPS):
        super().__init__(path, target_fps)
        if not files:
            raise MambavaError(f"{path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
        self._files = files
        self.fps = fps
        self.n_frames = len(files)
        self.duration = len(files) / fps
        # Aff-Wild2 style names (00001.jpg, 1-based) give the frame numbers; otherwise the sorted position does.
        stems = [f.stem for f in files]
        if all(s.isdigit() for s in stems) and len(set(int(s) for s in stems)) == len(stems):
            numbers = [int(s) for s in stems]
            base = 0 if min(numbers) == 0 else 1  # 1-based like Aff-Wild2, unless a 0 is there
            self._indices = [n - base for n in numbers]
        else:
            self._indices = list(range(len(files)))

    def __iter__(self) -> Iterator[VideoFrame]:
        for file, index in zip(self._files, self._indices):
            t = index / self.fps
            if self._seen(index, t):
                yield VideoFrame(index=index, time=t, image=read_image(file))


def open_video(source: str | int | os.PathLike, fps: float | None = None) -> VideoReader:
    """Open a video file, URL, device, webcam index, image folder or single image for streaming reads.

    `fps`: keep at most this many frames per second of the source's timeline (None: every frame).
    """
    if isinstance(source, int) or (isinstance(source, str) and source.isdigit()):
        return _CaptureReader(int(source), fps)
    text = os.fspath(source)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text):  # rtsp://, http(s)://, udp://, file://...
        return _AVReader(text, fps, live=not text.startswith("file://"))
    if text.startswith("/dev/video"):
        return _AVReader(text, fps, av_format="v4l2" if sys.platform.startswith("linux") else None, live=True)
    path = Path(text)
    if path.is_dir():
        files = sorted(
            (f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()), key=_natural_key
        )
        return _ImagesReader(text, files, fps)
    if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file() and path.stat().st_size > 0:
        return _ImagesReader(text, [path], fps)
    return _AVReader(text, fps)


def _short(error: BaseException) -> str:
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", str(error).strip()) or type(error).__name__
    return text.splitlines()[0][:200]


def check_media_file(path: str | os.PathLike) -> Path:
    """`path` as a Path, or a MambavaError naming it when it does not exist or is empty."""
    path = Path(path)
    if not path.exists():
        raise MambavaError(f"{path}: no such file")
    if path.is_file() and path.stat().st_size == 0:
        raise MambavaError(f"{path}: the file is empty (0 bytes), not a video")
    return path


def open_container(path: str | os.PathLike):
    """A PyAV container for a media file, or a MambavaError naming it (missing, empty, not readable)."""

    path = check_media_file(path)
    try:
        return av.open(str(path))
    except Exception as error:  # av.error.* and OSError
        raise MambavaError(
            f"{path}: cannot open as a video ({_short(error)}); the file may be corrupt or truncated"
        ) from None


def has_audio(path: str | os.PathLike) -> bool:
    """Whether the file has an audio stream (MambavaError naming it if it cannot be opened)."""
    with open_container(path) as container:
        return bool(container.streams.audio)


def error_reason(error: BaseException) -> str:
    """An FFmpeg/OS error as the short reason of a one-line message (no errno prefix, its first line)."""
    return _short(error)


def source_name(source) -> str:
    """A source's name for outputs: a file's stem, a folder's name, `camera<N>` for a webcam index, a URL's
    last path part."""
    if isinstance(source, int) or (isinstance(source, str) and source.isdigit()):
        return f"camera{source}"
    text = os.fspath(source).rstrip("/")
    if "://" in text:
        text = text.split("?")[0]
    path = Path(text)
    return path.stem if path.suffix else path.name


__all__ = ["VideoFrame", "VideoReader", "VideoWarning", "error_reason", "open_video", "read_image", "source_name"]
