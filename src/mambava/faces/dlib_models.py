"""dlib's face models, from the `faces` extra (`pip install 'mambava[faces]'`: dlib-bin, dlib's prebuilt wheel,
and face-recognition-models, dlib's trained models under CC0; see docs/faces.md, Notices).

- `--landmarks dlib68` (`Dlib68Detector`): dlib's 68-point shape predictor (Kazemi & Sullivan 2014, trained on
  iBUG 300-W) on any detector's boxes: OpenFace's point order, the 5 alignment points derived from them (eye
  centres, nose tip, mouth corners) and the head pose (`mambava.faces.pose`).
- `face_descriptors`: dlib's ResNet face descriptor (128-d; two faces of one person lie within 0.6 of each
  other, dlib's threshold), on dlib's own 150×150 face chips; `mambava.faces.identity` uses it.

dlib is imported where it is used: without the extra, asking for either is a one-line error naming it.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
from pathlib import Path
from typing import Sequence

import numpy as np

from mambava.core.errors import MambavaError
from mambava.faces.landmarks import PointsOnDetector, register_landmark_source
from mambava.faces.pose import head_pose

FACES_EXTRA = "pip install 'mambava[faces]'"
MODEL_FILES = {
    "landmarks68": "shape_predictor_68_face_landmarks.dat",
    "landmarks5": "shape_predictor_5_face_landmarks.dat",
    "descriptor": "dlib_face_recognition_resnet_model_v1.dat",
}
# the 5 alignment points from the 68 (image left first, as `mambava.faces.align`): eye centres (mean of each
# eye's 6 points), nose tip, mouth corners
LEFT_EYE, RIGHT_EYE, NOSE_TIP, MOUTH_LEFT, MOUTH_RIGHT = slice(36, 42), slice(42, 48), 30, 48, 54
LANDMARK68_COLUMNS = [f"x_{i}" for i in range(68)] + [f"y_{i}" for i in range(68)]  # OpenFace's names

# Where dlib's shape predictor expects the face: it was trained on the boxes of dlib's HOG detector, and other
# detectors frame a face differently. Measured on the real test media (41 faces found by both; docs/faces.md):
# (centre shift as a fraction of the box's width and height, side as a fraction of its width and height).
BOX_MAPS = {"mtcnn": (0.003, 0.069, 1.118, 0.800), "haar": (-0.013, 0.100, 0.885, 0.884)}
# ... and relative to the 68 points themselves (fractions of their horizontal extent), for a second pass on the
# boxes of a detector measured nowhere
POINTS_BOX = (-0.024, -0.042, 1.077)


def import_dlib(what: str):
    """The dlib module, or a one-line MambavaError naming the extra that installs it."""
    try:
        import dlib
    except ImportError:
        raise MambavaError(f"{what} needs dlib: install the faces extra ({FACES_EXTRA})") from None
    return dlib


def model_path(name: str, what: str) -> Path:
    """A model file of face-recognition-models. Found by the package's place, not by calling it: its
    `*_model_location()` import pkg_resources, which setuptools no longer ships."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise MambavaError(f"{what} needs dlib's models: install the faces extra ({FACES_EXTRA})")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / MODEL_FILES[name]
    if not path.is_file():
        raise MambavaError(f"{path}: dlib's model file is missing; reinstall the faces extra ({FACES_EXTRA})")
    return path


@functools.lru_cache(maxsize=None)
def shape_predictor(points: int = 68):
    """dlib's 68- or 5-point shape predictor (loaded once; ~1 s for the 68-point one's 95 MB)."""
    what = "--landmarks dlib68" if points == 68 else "face descriptors"
    return import_dlib(what).shape_predictor(str(model_path(f"landmarks{points}", what)))


@functools.lru_cache(maxsize=None)
def face_recognizer():
    """dlib's ResNet face descriptor model (loaded once)."""
    what = "person identities (--persons, --identities)"
    return import_dlib(what).face_recognition_model_v1(str(model_path("descriptor", what)))


def _rectangle(dlib, centre_x: float, centre_y: float, side: float):
    half = side / 2.0
    return dlib.rectangle(
        int(round(centre_x - half)),
        int(round(centre_y - half)),
        int(round(centre_x + half)),
        int(round(centre_y + half)),
    )


def dlib_box(dlib, box: np.ndarray, detector: str):
    """The dlib rectangle where the shape predictor expects a face that `detector` boxed (`BOX_MAPS`; a box of an
    unmeasured detector as a square of its size)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    dx, dy, sw, sh = BOX_MAPS.get(detector, (0.0, 0.0, (h / w) ** 0.5, (w / h) ** 0.5))
    return _rectangle(dlib, (x1 + x2) / 2 + dx * w, (y1 + y2) / 2 + dy * h, (sw * w + sh * h) / 2)


def points_box(dlib, points: np.ndarray):
    """The rectangle dlib's HOG detector would have given for a face with these 68 points (`POINTS_BOX`)."""
    extent = max(float(np.ptp(points[:, 0])), 1.0)
    centre = points.mean(0)
    return _rectangle(
        dlib, centre[0] + POINTS_BOX[0] * extent, centre[1] + POINTS_BOX[1] * extent, POINTS_BOX[2] * extent
    )


def _points(shape) -> np.ndarray:
    return np.array([[p.x, p.y] for p in shape.parts()], np.float32)


def five_from_68(points: np.ndarray) -> np.ndarray:
    """The 5 alignment points (5, 2) of 68: eye centres, nose tip, mouth corners (image left first)."""
    points = np.asarray(points, np.float32)
    return np.stack(
        [
            points[LEFT_EYE].mean(0),
            points[RIGHT_EYE].mean(0),
            points[NOSE_TIP],
            points[MOUTH_LEFT],
            points[MOUTH_RIGHT],
        ]
    ).astype(np.float32)


def landmarks68(image: np.ndarray, boxes: Sequence[np.ndarray], detector: str = "mtcnn") -> list[np.ndarray]:
    """dlib's 68 points (68, 2) float32 for each face box of one RGB image (boxes as `detector` draws them;
    two passes for a detector whose boxes were never measured against dlib's, the second on the box the first
    pass's points imply)."""
    dlib = import_dlib("--landmarks dlib68")
    predictor = shape_predictor(68)
    image = np.ascontiguousarray(image)
    found = []
    for box in boxes:
        points = _points(predictor(image, dlib_box(dlib, box, detector)))
        if detector not in BOX_MAPS:
            points = _points(predictor(image, points_box(dlib, points)))
        found.append(points)
    return found


class Dlib68Detector(PointsOnDetector):
    """Any detector (`mambava.faces.FaceDetector`) with dlib's 68 points on its boxes: each face's `landmarks68`,
    its 5 alignment points derived from them and its head `pose`; boxes and scores kept. Built by
    `get_detector(name, landmarks="dlib68")` (`--landmarks dlib68`)."""

    gives_landmarks68 = True
    landmark_source = "dlib68"

    def __init__(self, detector):
        shape_predictor(68)  # a missing extra fails here, before any frame
        self.detector = detector
        self.name = getattr(detector, "name", type(detector).__name__)

    def _with_points(self, image: np.ndarray, faces: list) -> list:
        kept = [f for f in faces if f is not None]
        if not kept:
            return list(faces)
        height, width = image.shape[:2]
        points = iter(landmarks68(image, [f.box for f in kept], self.name))
        out = []
        for face in faces:
            if face is None:
                out.append(None)
                continue
            p = next(points)
            pose = head_pose(p, width, height)
            out.append(dataclasses.replace(face, landmarks=five_from_68(p), landmarks68=p, pose=pose))
        return out

    def annotate(self, image: np.ndarray, faces: list) -> list:
        """Faces found without the detector (followed by optical flow between detections, `--detect-every K`):
        their 68 points come moved with them, by the flow's similarity (`mambava.faces.track.follow_faces`), and
        get the head pose fitted again; the predictor runs only on a face that carries none. On every frame the
        predictor (3-6 ms a face here) would cost more than --detect-every 5 leaves of MTCNN's detection, so it
        runs where the detector runs (docs/faces.md, Cost)."""
        faces = list(faces)
        missing = [f for f in faces if f is not None and f.landmarks68 is None]
        found = iter(self._with_points(image, missing))
        height, width = image.shape[:2]
        out = []
        for face in faces:
            if face is None:
                out.append(None)
            elif face.landmarks68 is None:
                out.append(next(found))
            else:
                out.append(dataclasses.replace(face, pose=head_pose(face.landmarks68, width, height)))
        return out


@register_landmark_source("dlib68")
def dlib68(detector) -> Dlib68Detector:
    """`--landmarks dlib68`: dlib's 68 points on `detector`'s boxes (`Dlib68Detector`)."""
    return Dlib68Detector(detector)


# ----------------------------------------------------------------------------------------- descriptors


def face_chip(image: np.ndarray, box: np.ndarray, points68: np.ndarray | None = None, detector: str = "mtcnn"):
    """dlib's 150×150 aligned chip of a face (what its descriptor model reads): from the face's 68 points when
    it has them, else from dlib's 5-point predictor on its box. Returns an RGB uint8 array."""
    dlib = import_dlib("person identities (--persons, --identities)")
    image = np.ascontiguousarray(image)
    if points68 is not None:
        parts = [dlib.point(int(round(x)), int(round(y))) for x, y in np.asarray(points68)]
        shape = dlib.full_object_detection(points_box(dlib, np.asarray(points68, np.float32)), parts)
    else:
        shape = shape_predictor(5)(image, dlib_box(dlib, box, detector))
    return np.asarray(dlib.get_face_chip(image, shape, size=150, padding=0.25))


def face_descriptors(chips: Sequence[np.ndarray]) -> np.ndarray:
    """(N, 128) float32 descriptors of dlib face chips (`face_chip`), ~0.1 s each on one core."""
    if not len(chips):
        return np.zeros((0, 128), np.float32)
    model = face_recognizer()
    return np.stack([np.asarray(model.compute_face_descriptor(np.ascontiguousarray(c)), np.float32) for c in chips])
