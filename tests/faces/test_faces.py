"""mambava.faces on the real media: MTCNN (facenet-pytorch's weights, shipped in the package; our own cascade and NMS),
alignment to the ArcFace template, tracking, the Aff-Wild2 crop writer, its CSV and contact sheet, the CLI."""

from __future__ import annotations

import csv
import sys

import numpy as np
import pytest

from mambava.core.errors import MambavaError
from mambava.faces import (
    CSV_COLUMNS,
    Face,
    FaceTracker,
    FrameFaces,
    HaarDetector,
    align_face,
    alignment_matrix,
    detect_faces,
    extract_faces,
    get_detector,
    iter_tracked_faces,
    name_tracks,
    nms,
    register_detector,
    similarity_transform,
    stitch_tracks,
    template,
    transform_points,
)
from mambava.faces.track import TrackSummary
from mambava.media.video import VideoFrame, open_video, read_image


@pytest.fixture(scope="module")
def detector():
    return get_detector("mtcnn")


@pytest.fixture(scope="module")
def extracted(media_dir, tmp_path_factory, detector):
    """extract_faces on the three real videos, every frame, once for the module."""
    out = tmp_path_factory.mktemp("cropped_aligned")
    return {
        name: extract_faces(media_dir / name, out, detector=detector, preview=(name == "single_face.mp4"))
        for name in ("single_face.mp4", "face_noface.mov", "no_face.mp4")
    }


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------------------------------ real media


def test_single_face_one_track_aligned_crops(extracted, detector):
    result = extracted["single_face.mp4"]
    assert result.frames == list(range(72))
    assert [t.name for t in result.tracks] == ["single_face"]
    track = result.tracks[0]
    assert len(track.present) >= 0.95 * 72 and len(track.present) + len(track.missing) == 72
    files = sorted(p.name for p in track.directory.iterdir())
    assert files == [f"{i + 1:05d}.jpg" for i in track.present]  # Aff-Wild2 names, 1-based
    rows = _read_csv(result.csv_path)
    assert list(rows[0]) == CSV_COLUMNS and len(rows) == 72
    # The landmarks land on the template through the alignment transform ...
    for row in rows:
        landmarks = np.array([float(row[c]) for c in CSV_COLUMNS[10:]]).reshape(5, 2)
        mapped = transform_points(alignment_matrix(landmarks), landmarks)
        assert np.linalg.norm(mapped[:2] - template()[:2], axis=1).max() < 3.0
    # ... and, checked independently, MTCNN run again on the written crops finds the eyes there.
    eye_errors = []
    for index in track.present[::9]:
        crop = read_image(track.crop_path(index))
        assert crop.shape == (112, 112, 3)
        canvas = np.zeros((176, 176, 3), np.uint8)
        canvas[32:144, 32:144] = crop
        faces = detector.detect(canvas)
        assert len(faces) == 1
        eye_errors.append(np.linalg.norm(faces[0].landmarks[:2] - 32 - template()[:2], axis=1))
    eye_errors = np.array(eye_errors)
    assert eye_errors.max() < 4.5 and eye_errors.mean() < 2.5, eye_errors


def test_contact_sheet_written(extracted):
    from PIL import Image

    result = extracted["single_face.mp4"]
    assert result.preview_path == result.out_dir / "single_face.preview.png"
    with Image.open(result.preview_path) as sheet:
        assert sheet.format == "PNG"
        width, height = sheet.size
        assert width >= 8 * 112 and height >= 112
        pixels = np.asarray(sheet.convert("RGB"))
    tile = pixels[30:142, 150:262]  # the first crop of the only track
    assert tile.std() > 20  # a picture, not background


def test_face_then_cartoon_missing_frames_recorded(extracted):
    result = extracted["face_noface.mov"]
    assert len(result.frames) == 169
    assert [t.name for t in result.tracks] == ["face_noface"]
    track = result.tracks[0]
    present = np.array(track.present)
    assert len(present) >= 60 and present.max() < 100  # the man in the first part only
    assert all(f in track.missing for f in range(110, 169))  # the cartoon card: no face
    rows = _read_csv(result.csv_path)
    assert len(rows) == 169  # every frame has its row; frames without a face say so
    missing_rows = [r for r in rows if r["present"] == "0"]
    assert len(missing_rows) == len(track.missing) and all(
        r["image"] == "" and r["track"] == "face_noface" for r in missing_rows
    )


def test_no_false_faces_on_cartoon(extracted):
    result = extracted["no_face.mp4"]
    assert len(result.frames) == 95 and result.tracks == [] and result.frames_with_face == 0
    rows = _read_csv(result.csv_path)
    assert len(rows) == 95 and all(r["present"] == "0" and r["track"] == "" for r in rows)
    assert not (result.out_dir / "no_face").exists()
    assert not any(p.name.startswith(".no_face") for p in result.out_dir.iterdir())  # staging removed


def test_multi_face_photo_five_faces(media_dir, tmp_path, detector):
    image = read_image(media_dir / "multi_face.jpg")
    faces = detect_faces(image, detector)
    assert len(faces) == 5
    for face in faces:
        x1, y1, x2, y2 = face.box
        assert face.score > 0.95 and 60 < x2 - x1 < 200
        inside = (
            (face.landmarks[:, 0] > x1)
            & (face.landmarks[:, 0] < x2)
            & (face.landmarks[:, 1] > y1)
            & (face.landmarks[:, 1] < y2)
        )
        assert inside.all()
        left_eye, right_eye, nose, mouth_left, mouth_right = face.landmarks
        assert left_eye[0] < right_eye[0] and mouth_left[0] < mouth_right[0]
        assert max(left_eye[1], right_eye[1]) < nose[1] < min(mouth_left[1], mouth_right[1])
    result = extract_faces(media_dir / "multi_face.jpg", tmp_path, detector=detector)
    assert [t.name for t in result.tracks] == [f"multi_face_{k}" for k in range(1, 6)]
    assert all((t.directory / "00001.jpg").is_file() for t in result.tracks)


def test_haar_detector_is_pluggable(media_dir, tmp_path):
    haar = get_detector("haar")
    assert isinstance(haar, HaarDetector) and not haar.has_landmarks
    (face,) = haar.detect(read_image(media_dir / "single_face.jpg"))
    assert face.landmarks is None
    result = extract_faces(media_dir / "single_face.mp4", tmp_path, fps=5, detector=haar)
    assert [t.name for t in result.tracks] == ["single_face"] and len(result.tracks[0].present) == 12
    assert read_image(result.tracks[0].crop_path(result.tracks[0].present[0])).shape == (112, 112, 3)


def test_iter_tracked_faces_streams(media_dir, detector):
    pulled = []

    def frames():
        with open_video(media_dir / "single_face.mp4", fps=10) as reader:
            for frame in reader:
                pulled.append(frame.index)
                yield frame

    stream = iter_tracked_faces(frames(), detector, batch_size=4)
    first = next(stream)
    assert isinstance(first, FrameFaces) and len(pulled) == 4  # one batch read, not the whole video
    items = [first, *stream]
    assert [i.index for i in items] == pulled and len(items) == 24
    assert all(len(i.faces) == 1 and i.faces[0].track_id == 0 for i in items)
    assert items[0].faces[0].crop.shape == (112, 112, 3) and items[0].image.shape == (360, 640, 3)


# --------------------------------------------------------------------------------------- unit pieces


def test_similarity_transform_recovers_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 200, size=(5, 2))
    angle, scale, shift = 0.4, 1.7, np.array([12.0, -30.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    dst = src @ (scale * rotation).T + shift
    matrix = similarity_transform(src, dst)
    np.testing.assert_allclose(matrix[:, :2], scale * rotation, atol=1e-9)
    np.testing.assert_allclose(matrix[:, 2], shift, atol=1e-9)


def test_align_face_puts_landmarks_on_template():
    """Five bright dots at landmark positions in a rotated, scaled frame end up on the template."""
    import cv2

    angle = np.deg2rad(25)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = template() @ (2.5 * rotation).T + np.array([300.0, 150.0])
    image = np.zeros((600, 700, 3), np.uint8)
    for x, y in landmarks:
        cv2.circle(image, (int(round(x)), int(round(y))), 6, (255, 255, 255), -1, lineType=cv2.LINE_AA)
    crop = align_face(image, landmarks)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    gray = crop[:, :, 0].astype(float)
    for tx, ty in template():
        ys, xs = np.mgrid[int(ty) - 5 : int(ty) + 6, int(tx) - 5 : int(tx) + 6]
        weights = gray[ys, xs]
        centre = np.array([(weights * xs).sum(), (weights * ys).sum()]) / weights.sum()
        assert np.linalg.norm(centre - [tx, ty]) < 0.7


def test_nms_keeps_best_of_overlapping():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 4, 4]], float)
    scores = np.array([0.8, 0.9, 0.7, 0.6])
    assert list(nms(boxes, scores, 0.5)) == [1, 2, 3]
    assert list(nms(boxes, scores, 0.5, mode="min")) == [1, 2]  # the small box lies inside the big one


def _face(x, y, size=50.0, score=0.99):
    box = np.array([x, y, x + size, y + size], np.float32)
    landmarks = (template() * size / 112 + np.array([x, y])).astype(np.float32)
    return Face(box=box, landmarks=landmarks, score=score)


def test_tracker_ids_gaps_and_crossing():
    tracker = FaceTracker(max_gap=1.0)
    # two faces moving towards each other keep their ids
    ids = [tracker.update([_face(100 + 5 * k, 100), _face(300 - 5 * k, 100)], time=k / 30) for k in range(10)]
    assert all(i == [0, 1] for i in ids)
    # order of detections does not matter
    assert tracker.update([_face(250, 100), _face(150, 100)], time=10 / 30) == [1, 0]
    # a short gap (0.5 s) with the face a little moved: re-identified
    assert tracker.update([_face(250, 100)], time=0.5) == [1]
    assert tracker.update([_face(150 + 12, 104), _face(252, 100)], time=0.9) == [0, 1]
    # a long gap: a new track
    assert tracker.update([_face(160, 104)], time=3.0) == [2]


def test_stitch_and_name_tracks():
    def summary(tid, frames, x):
        box = np.array([x, 100, x + 50, 150], float)
        return TrackSummary(tid, list(frames), box, box, x + 25)

    # one person leaving for a while and coming back at the same place: one track
    pieces = [summary(0, range(0, 30), 100), summary(1, range(200, 260), 110)]
    owner = stitch_tracks(pieces)
    assert owner == {0: 0, 1: 0}
    # two people seen together: never joined, named by position
    pair = [summary(0, range(0, 50), 400), summary(1, range(10, 60), 100)]
    assert stitch_tracks(pair) == {0: 0, 1: 1}
    assert name_tracks("vid", pair) == {1: "vid_left", 0: "vid_right"}
    assert name_tracks("vid", pair[:1]) == {0: "vid"}
    # two people one after the other at different places: numbered by first appearance
    apart = [summary(5, range(100, 150), 100), summary(3, range(0, 50), 400)]
    assert stitch_tracks(apart) == {5: 5, 3: 3}
    assert name_tracks("vid", apart) == {3: "vid_1", 5: "vid_2"}


@pytest.mark.parametrize("max_gap", [1.0, 0.04])
def test_two_people_left_right_and_short_tracks(tmp_path, max_gap):
    """A synthetic two-person clip through extract_faces with a stand-in detector: _left/_right by position,
    a one-frame false detection dropped, frames where a person is missing recorded. With max_gap=0.04 s the
    tracker loses the left person over its 2-frame gap and the finishing step joins the two pieces."""

    class Scripted:
        name = "scripted"
        has_landmarks = True

        def detect_batch(self, images):
            return [self.detect(im) for im in images]

        def detect(self, image):
            k = int(image[0, 0, 0])  # the frame number is painted in the corner
            faces = [_face(400, 100)]
            if k not in (4, 5):
                faces.append(_face(80 + k, 120))
            if k == 7:
                faces.append(_face(250, 300, score=0.91))  # spurious, one frame only
            return faces

    register_detector("scripted", Scripted)
    folder = tmp_path / "two_people"
    folder.mkdir()
    from PIL import Image

    for k in range(12):
        image = np.full((480, 640, 3), 90, np.uint8)
        image[0, 0] = k
        Image.fromarray(image).save(folder / f"{k + 1:05d}.png")
    result = extract_faces(folder, tmp_path / "out", detector="scripted", tracker=FaceTracker(max_gap=max_gap))
    assert [t.name for t in result.tracks] == ["two_people_left", "two_people_right"]
    left, right = result.tracks
    assert left.missing == [4, 5] and len(left.present) == 10 and len(right.present) == 12
    assert result.dropped_tracks == 1
    assert sorted(p.name for p in left.directory.iterdir())[:4] == ["00001.jpg", "00002.jpg", "00003.jpg", "00004.jpg"]
    assert not (left.directory / "00005.jpg").exists()
    np.testing.assert_array_equal(left.mask(result.frames), [f not in (4, 5) for f in range(12)])


def test_detector_restores_torch_threads(media_dir):
    import torch

    image = read_image(media_dir / "single_face.jpg")
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for threads in (1, 2, None, "auto"):
            assert len(get_detector("mtcnn", num_threads=threads).detect(image)) == 1
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(previous)
    with pytest.raises(MambavaError, match="num_threads"):
        get_detector("mtcnn", num_threads=0)


def test_detector_errors():
    with pytest.raises(MambavaError, match="unknown face detector"):
        get_detector("nope")
    with pytest.raises(MambavaError, match="uint8"):
        detect_faces(np.zeros((10, 10), np.float32), "haar")


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_faces(media_dir, tmp_path, monkeypatch, capsys):
    from mambava.cli import main

    out = tmp_path / "out"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "mambava",
            "faces",
            str(media_dir / "single_face.mp4"),
            "--out",
            str(out),
            "--fps",
            "10",
            "--preview",
            "--quiet",
        ],
    )
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code in (0, None)
    assert len(list((out / "single_face").glob("*.jpg"))) == 24
    assert (out / "single_face.faces.csv").is_file() and (out / "single_face.preview.png").is_file()
    assert "24 crops" in capsys.readouterr().err

    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    monkeypatch.setattr(sys, "argv", ["mambava", "faces", str(empty), "--out", str(out)])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    assert "empty.mp4" in capsys.readouterr().err
    assert not list(out.glob(".empty*"))  # no staging folder left behind


def test_video_frame_is_what_readers_yield(media_dir):
    with open_video(media_dir / "single_face.jpg") as reader:
        (frame,) = list(reader)
    assert isinstance(frame, VideoFrame)
