"""Detection by tracking: the detector every k frames, faces followed by optical flow in between."""

import sys

import numpy as np
import pytest

from mambava.core.errors import MambavaError
from mambava.faces import get_detector, iter_tracked_faces
from mambava.faces.detect import Face
from mambava.faces.track import follow_faces


class Counting:
    """A detector that counts the frames it is run on."""

    def __init__(self, inner):
        self.inner, self.name, self.has_landmarks, self.frames = inner, inner.name, inner.has_landmarks, 0

    def detect(self, image):
        self.frames += 1
        return self.inner.detect(image)

    def detect_batch(self, images):
        self.frames += len(images)
        return self.inner.detect_batch(images)


@pytest.fixture(scope="module")
def mtcnn():
    return get_detector("mtcnn")


def _run(path, detector, k):
    counting = Counting(detector)
    frames = [
        (f.index, [(f2.track_id, f2.box, f2.landmarks) for f2 in f.faces])
        for f in iter_tracked_faces(path, counting, detect_every=k, keep_images=False)
    ]
    return frames, counting.frames


def test_every_fifth_frame_follows_the_face(media_dir, mtcnn):
    every, n_every = _run(media_dir / "single_face.mp4", mtcnn, 1)
    fifth, n_fifth = _run(media_dir / "single_face.mp4", mtcnn, 5)
    assert len(every) == len(fifth) == n_every == 72
    assert n_fifth == 15  # frames 0, 5, ..., 70: the flow never lost the face
    assert all(len(faces) == 1 and faces[0][0] == 0 for _, faces in fifth)  # a face, one track, every frame
    # landmarks (640x360) within 3 px (median) and 8 px (worst) of every-frame MTCNN's
    errors = np.array([np.linalg.norm(a[0][2] - b[0][2], axis=1).mean() for (_, a), (_, b) in zip(every, fifth)])
    assert np.median(errors) <= 3.0 and errors.max() <= 8.0
    # boxes follow too: IoU with the detector's box at least 0.8 on every frame
    from mambava.faces import iou

    assert min(iou(a[0][1], b[0][1]) for (_, a), (_, b) in zip(every, fifth)) >= 0.8


def test_k1_is_every_frame_detection(media_dir, mtcnn):
    default = [
        (f.index, [(t.track_id, t.box.tolist(), t.landmarks.tolist(), t.score) for t in f.faces])
        for f in iter_tracked_faces(media_dir / "face_noface.mov", mtcnn, keep_images=False)
    ]
    one = [
        (f.index, [(t.track_id, t.box.tolist(), t.landmarks.tolist(), t.score) for t in f.faces])
        for f in iter_tracked_faces(media_dir / "face_noface.mov", mtcnn, keep_images=False, detect_every=1)
    ]
    assert one == default


def test_no_face_card_is_not_hallucinated(media_dir, mtcnn):
    every, _ = _run(media_dir / "face_noface.mov", mtcnn, 1)
    fifth, n_fifth = _run(media_dir / "face_noface.mov", mtcnn, 5)
    last_face = max(i for i, faces in every if faces)
    assert every[last_face + 1][1] == []  # the card
    # a face after the cut at most k-1 = 4 frames past every-frame MTCNN's last; none at the end
    assert max(i for i, faces in fifth if faces) <= last_face + 4
    assert all(faces == [] for i, faces in fifth if i > last_face + 4)
    assert n_fifth <= (len(fifth) + 4) // 5 + 5  # about one frame in five runs the detector, a few more on loss


def test_follow_faces_drops_a_face_on_a_flat_frame():
    rng = np.random.default_rng(0)
    textured = (rng.random((120, 160)) * 255).astype(np.uint8)
    import cv2

    textured = cv2.GaussianBlur(textured, (5, 5), 1.0)
    face = Face(
        box=np.array([40, 30, 100, 100], np.float32),
        landmarks=np.array([[55, 50], [85, 50], [70, 65], [58, 82], [82, 82]], np.float32),
        score=0.99,
    )
    shifted = np.roll(textured, (2, 3), axis=(0, 1))  # the frame moves 3 px right, 2 px down
    (moved,) = follow_faces(textured, shifted, [face])
    np.testing.assert_allclose(moved.landmarks, face.landmarks + [3, 2], atol=0.2)
    np.testing.assert_allclose(moved.box, face.box + [3, 2, 3, 2], atol=0.3)
    assert moved.score == face.score
    assert follow_faces(textured, np.full_like(textured, 128), [face]) is None  # a cut to a flat card
    assert follow_faces(textured, shifted, []) == []


def test_detect_every_must_be_positive(media_dir, mtcnn, tmp_path, monkeypatch, capsys):
    with pytest.raises(MambavaError, match="--detect-every"):
        next(iter_tracked_faces(media_dir / "single_face.mp4", mtcnn, detect_every=0))
    from mambava.cli import main

    monkeypatch.setattr(
        sys,
        "argv",
        ["mambava", "faces", str(media_dir / "single_face.mp4"), "--out", str(tmp_path), "--detect-every", "0"],
    )
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2 and "--detect-every must be a whole number >= 1, got 0" in capsys.readouterr().err


def test_cli_faces_detect_every(media_dir, tmp_path, monkeypatch, capsys):
    from mambava.cli import main

    monkeypatch.setattr(
        sys,
        "argv",
        [
            "mambava",
            "faces",
            str(media_dir / "single_face.mp4"),
            "--out",
            str(tmp_path),
            "--detect-every",
            "5",
            "--quiet",
        ],
    )
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code in (0, None)
    assert len(list((tmp_path / "single_face").glob("*.jpg"))) == 72
    assert "single_face: 72 frames, a face in 72 (100.0%), 1 track(s)" in capsys.readouterr().err


class CountingWithVerify(Counting):
    """Counting, plus the detector's cheap check of followed faces (O-Net alone), counted apart."""

    def __init__(self, inner):
        super().__init__(inner)
        self.verified = 0

    def verify(self, image, faces):
        self.verified += 1
        return self.inner.verify(image, faces)


def test_followed_faces_are_checked_by_onet_and_the_whole_frame_searched_every_sixth_time(media_dir, mtcnn):
    """With a detector that can verify (MTCNN: O-Net on the followed box), k=5 searches the whole frame on
    frames 0, 30, 60 and checks the followed face on the other scheduled frames; the face and its landmarks
    stay those of every-frame detection within the same bounds as plain k=5."""
    every, _ = _run(media_dir / "single_face.mp4", mtcnn, 1)
    counting = CountingWithVerify(mtcnn)
    checked = [
        (f.index, [(t.track_id, t.box, t.landmarks) for t in f.faces])
        for f in iter_tracked_faces(media_dir / "single_face.mp4", counting, detect_every=5, keep_images=False)
    ]
    assert counting.frames == 3 and counting.verified == 12  # 15 scheduled: 0, 30, 60 whole; 12 checked
    assert all(len(faces) == 1 and faces[0][0] == 0 for _, faces in checked)
    errors = np.array([np.linalg.norm(a[0][2] - b[0][2], axis=1).mean() for (_, a), (_, b) in zip(every, checked)])
    assert np.median(errors) <= 3.0 and errors.max() <= 8.0
    from mambava.faces import iou

    assert min(iou(a[0][1], b[0][1]) for (_, a), (_, b) in zip(every, checked)) >= 0.8


def test_verify_drops_a_face_that_is_gone_and_the_card_stays_empty(media_dir, mtcnn):
    """O-Net's check on the place of a followed face that has gone (the cut to the card) fails, so the whole
    frame is searched at once: no face on the card beyond k-1 frames, as with plain k=5."""
    from mambava.media.video import open_video

    frames = [f.image for f in open_video(media_dir / "face_noface.mov")]
    every, _ = _run(media_dir / "face_noface.mov", mtcnn, 1)
    last_face = max(i for i, faces in every if faces)
    face = mtcnn.detect(frames[last_face])[0]
    assert mtcnn.verify(frames[last_face], [face])[0] is not None
    assert mtcnn.verify(frames[-1], [face]) == [None]  # the card where the face was
    counting = CountingWithVerify(mtcnn)
    fifth = [
        (f.index, f.faces)
        for f in iter_tracked_faces(media_dir / "face_noface.mov", counting, detect_every=5, keep_images=False)
    ]
    assert max(i for i, faces in fifth if faces) <= last_face + 4
    assert all(faces == [] for i, faces in fifth if i > last_face + 4)
    assert counting.verified > 0
