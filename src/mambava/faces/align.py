"""Face alignment: a similarity transform (rotation, uniform scale, translation) that maps the 5 detected
landmarks onto the ArcFace 112×112 template, least squares (Umeyama 1991), applied with one warpAffine.
Detectors without landmarks get a centred square crop of the box instead (`crop_box`)."""

from __future__ import annotations

import cv2
import numpy as np

from mambava.core.errors import MambavaError

# insightface's ArcFace template for 112×112 crops: left eye, right eye, nose tip, mouth left, mouth right
# (image left/right), in pixels.
ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float64,
)


# the 5 points' names, in the template's order, as the faces CSV spells its columns (x then y of each)
LANDMARK_COLUMNS = [f"{p}_{c}" for p in ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right") for c in "xy"]


def template(size: int = 112) -> np.ndarray:
    """The 5-point template for a size×size crop (the 112 template scaled)."""
    return ARCFACE_TEMPLATE_112 * (size / 112.0)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2×3 similarity matrix M minimising Σ‖M·[src;1] − dst‖² (Umeyama's closed form, no reflection)."""
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or len(src) < 2:
        raise MambavaError(f"similarity_transform needs matching (N≥2, 2) point sets, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s, d = src - mu_s, dst - mu_d
    var_s = (s**2).sum() / len(src)
    if var_s < 1e-12:
        raise MambavaError("similarity_transform: the source points coincide")
    cov = d.T @ s / len(src)
    u, sigma, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1, 1] = -1
    rotation = u @ sign @ vt
    scale = float(np.trace(np.diag(sigma) @ sign) / var_s)
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = mu_d - scale * rotation @ mu_s
    return matrix


def alignment_matrix(landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """The 2×3 matrix taking image coordinates into the aligned size×size crop."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (5, 2):
        raise MambavaError(f"align_face needs (5, 2) landmarks, got shape {landmarks.shape}")
    return similarity_transform(landmarks, template(size))


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """The 2×3 matrix of the inverse map (crop coordinates back into the image)."""
    return np.linalg.inv(np.vstack([np.asarray(matrix, np.float64), [0.0, 0.0, 1.0]]))[:2]


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def warp(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    """warpAffine into a size×size crop, black outside the frame. When the crop shrinks the face by more
    than 2×, the region it covers is first reduced with area averaging (warpAffine alone would alias)."""

    image = np.ascontiguousarray(image)
    matrix = np.asarray(matrix, dtype=np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if scale < 0.5:
        inverse = invert_affine(matrix)
        corners = transform_points(inverse, np.array([[0, 0], [size, 0], [0, size], [size, size]], dtype=np.float64))
        h, w = image.shape[:2]
        x0, y0 = (max(int(np.floor(v)) - 2, 0) for v in corners.min(0))
        x1, y1 = min(int(np.ceil(corners[:, 0].max())) + 2, w), min(int(np.ceil(corners[:, 1].max())) + 2, h)
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            factor = 2 * scale  # the region shrinks so that the warp then scales by 0.5
            region = image[y0:y1, x0:x1]
            new_w, new_h = max(1, round((x1 - x0) * factor)), max(1, round((y1 - y0) * factor))
            region = cv2.resize(region, (new_w, new_h), interpolation=cv2.INTER_AREA)
            fx, fy = new_w / (x1 - x0), new_h / (y1 - y0)
            # resize maps pixel centres: region pixel u is image x = x0 + (u + 0.5) / fx - 0.5 (same for v, y)
            to_image = np.array([[1 / fx, 0, x0 + 0.5 / fx - 0.5], [0, 1 / fy, y0 + 0.5 / fy - 0.5], [0, 0, 1]])
            matrix = matrix @ to_image
            image = region
    return cv2.warpAffine(
        image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0)
    )


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """The size×size×3 uint8 crop with the landmarks on the ArcFace template (black outside the frame)."""
    return warp(image, alignment_matrix(landmarks, size), size)


def crop_box(image: np.ndarray, box: np.ndarray, size: int = 112, margin: float = 0.15) -> np.ndarray:
    """A centred square crop around a face box, enlarged by `margin` of its side on each side, resized to
    size×size (black outside the frame). For detectors without landmarks (Haar)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1) * (1 + 2 * margin)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    scale = size / max(side, 1e-6)
    matrix = np.array([[scale, 0, size / 2 - scale * cx], [0, scale, size / 2 - scale * cy]])
    return warp(image, matrix, size)


def face_crop(image: np.ndarray, face, size: int = 112) -> np.ndarray:
    """Aligned crop when the face has landmarks, a centred box crop otherwise."""
    if face.landmarks is not None:
        return align_face(image, face.landmarks, size)
    return crop_box(image, face.box, size)
