"""Head pose from 68 landmarks: a 3D mean face fitted to the points with `cv2.solvePnP`, in OpenFace's terms.

    pose = head_pose(points68, width, height)      # (6,): Rx, Ry, Rz (radians), Tx, Ty, Tz (mm)

Axes and signs are OpenFace's (`pose_Rx`...`pose_Tz` in its CSV): the camera's frame, X to the image's right, Y
down, Z away from the camera; the rotation R = Rx(pitch) · Ry(yaw) · Rz(roll) takes the mean face (frontal,
upright, looking at the camera: R = I) to the head. So Rx > 0 is the head pitched down (the nose moves down the
image), Ry > 0 the head turned towards the image's left (the person's right), Rz > 0 the head rolled so that
its right side in the image goes down (clockwise on screen). T is the mean face's centre (the centroid of its 68
points) in mm. Without a calibrated camera the intrinsics are OpenFace's guess from the frame size (focal length
500 px per 640 px of width and per 480 px of height, averaged; principal point at the centre), so T scales
with the true focal length while the angles hardly depend on it.

The mean face (`MEAN_FACE_68`, mm, iBUG/OpenFace point order) is ours, written here because none that ships
under a free licence was found: x and y are the mean of dlib's 68 points over the frontal faces of the test
media (tests/data/media), each face scaled to 63 mm between the eye centres (an adult's mean interpupillary
distance) and the set made left-right symmetric; z (depth, + away from the camera) is hand-set per region from
textbook facial proportions: the outline recedes towards the ears, the nose ridge comes forward to a tip 24 mm
in front of the inner eye corners, the lips 8-12 mm. Only points 17-67 enter the fit: the jaw outline (0-16) is
a silhouette, not a place on the face, and slides round it when the head turns.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from mambava.core.errors import MambavaError

POSE_COLUMNS = ["pose_Rx", "pose_Ry", "pose_Rz", "pose_Tx", "pose_Ty", "pose_Tz"]

# x, y (mm, image axes) of the frontal mean shape; see the module doc
_XY = np.array(
    [
        [-73.0, 2.3], [-72.1, 21.4], [-70.4, 39.8], [-66.8, 57.9], [-60.1, 75.7], [-48.9, 90.8], [-34.5, 103.4],
        [-17.9, 113.3], [0.0, 115.7], [17.9, 113.3], [34.5, 103.4], [48.9, 90.8], [60.1, 75.7], [66.8, 57.9],
        [70.4, 39.8], [72.1, 21.4], [73.0, 2.3],  # jaw 0-16
        [-58.6, -13.4], [-50.3, -22.7], [-37.5, -26.1], [-24.2, -24.7], [-12.0, -19.7],  # brow 17-21
        [12.0, -19.7], [24.2, -24.7], [37.5, -26.1], [50.3, -22.7], [58.6, -13.4],  # brow 22-26
        [0.0, -3.7], [0.0, 8.9], [0.0, 21.5], [0.0, 34.2],  # nose ridge 27-30
        [-14.7, 42.1], [-7.3, 44.0], [0.0, 45.9], [7.3, 44.0], [14.7, 42.1],  # nose base 31-35
        [-43.6, 0.4], [-35.7, -3.5], [-27.2, -3.3], [-18.9, 1.4], [-27.4, 2.4], [-36.2, 2.5],  # eye 36-41
        [18.9, 1.4], [27.2, -3.3], [35.7, -3.5], [43.6, 0.4], [36.2, 2.5], [27.4, 2.4],  # eye 42-47
        [-30.0, 62.7], [-18.9, 58.5], [-8.0, 56.3], [0.0, 57.9], [8.0, 56.3], [18.9, 58.5], [30.0, 62.7],
        [19.3, 73.6], [8.4, 78.3], [0.0, 79.2], [-8.4, 78.3], [-19.3, 73.6],  # outer lips 48-59
        [-26.5, 63.6], [-8.2, 61.8], [0.0, 62.5], [8.2, 61.8], [26.5, 63.6],
        [8.5, 69.9], [0.0, 70.6], [-8.5, 69.9],  # inner lips 60-67
    ]
)  # fmt: skip
# depth (mm, + away from the camera), hand-set per region (module doc); mirrored points share a value
_Z = np.array(
    [60, 56, 50, 42, 32, 20, 8, -1, -5, -1, 8, 20, 32, 42, 50, 56, 60]  # jaw
    + [14, 4, -3, -7, -8, -8, -7, -3, 4, 14]  # brows
    + [-6, -12, -18, -24]  # nose ridge
    + [-8, -13, -15, -13, -8]  # nose base
    + [14, 7, 5, 2, 5, 8, 2, 5, 7, 14, 8, 5]  # eyes
    + [-2, -8, -11, -12, -11, -8, -2, -8, -10, -11, -10, -8]  # outer lips
    + [-3, -9, -10, -9, -3, -9, -9, -9],  # inner lips
    dtype=np.float64,
)
MEAN_FACE_68 = np.column_stack([_XY, _Z]) - np.column_stack([_XY, _Z]).mean(0)
FIT_POINTS = np.arange(17, 68)  # the jaw outline is left out of the fit (module doc)


def camera_matrix(width: int, height: int) -> np.ndarray:
    """OpenFace's intrinsics guessed from the frame size: fx = fy = (500·w/640 + 500·h/480) / 2, centre."""
    focal = (500.0 * width / 640.0 + 500.0 * height / 480.0) / 2.0
    return np.array([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]])


def euler_to_rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    """R = Rx · Ry · Rz (OpenFace's Euler2RotationMatrix), angles in radians."""
    s1, s2, s3 = math.sin(rx), math.sin(ry), math.sin(rz)
    c1, c2, c3 = math.cos(rx), math.cos(ry), math.cos(rz)
    return np.array(
        [
            [c2 * c3, -c2 * s3, s2],
            [c1 * s3 + c3 * s1 * s2, c1 * c3 - s1 * s2 * s3, -c2 * s1],
            [s1 * s3 - c1 * c3 * s2, c3 * s1 + c1 * s2 * s3, c1 * c2],
        ]
    )


def rotation_to_euler(rotation: np.ndarray) -> np.ndarray:
    """(Rx, Ry, Rz) in radians of R = Rx · Ry · Rz (OpenFace's RotationMatrix2Euler, by way of a quaternion)."""
    r = np.asarray(rotation, np.float64)
    q0 = math.sqrt(max(1.0 + r[0, 0] + r[1, 1] + r[2, 2], 1e-12)) / 2.0
    q1 = (r[2, 1] - r[1, 2]) / (4.0 * q0)
    q2 = (r[0, 2] - r[2, 0]) / (4.0 * q0)
    q3 = (r[1, 0] - r[0, 1]) / (4.0 * q0)
    yaw = math.asin(max(-1.0, min(1.0, 2.0 * (q0 * q2 + q1 * q3))))
    pitch = math.atan2(2.0 * (q0 * q1 - q2 * q3), q0 * q0 - q1 * q1 - q2 * q2 + q3 * q3)
    roll = math.atan2(2.0 * (q0 * q3 - q1 * q2), q0 * q0 + q1 * q1 - q2 * q2 - q3 * q3)
    return np.array([pitch, yaw, roll])


def project(pose: np.ndarray, width: int, height: int, model: np.ndarray = MEAN_FACE_68) -> np.ndarray:
    """(68, 2) image points of the mean face at `pose` (Rx, Ry, Rz, Tx, Ty, Tz) seen by `camera_matrix`."""
    rotation = euler_to_rotation(*pose[:3])
    camera = (model @ rotation.T + np.asarray(pose[3:6], np.float64)) @ camera_matrix(width, height).T
    return camera[:, :2] / camera[:, 2:3]


def head_pose(points68: np.ndarray, width: int, height: int) -> np.ndarray:
    """The head pose (6,) float32: Rx, Ry, Rz (radians), Tx, Ty, Tz (mm) of a face's (68, 2) points in a
    width×height frame; NaN where the fit fails (points behind the camera, a degenerate shape).

    Args:
        points68: (68, 2) frame pixels, OpenFace's (iBUG) point order.
        width: the frame's width in pixels.
        height: the frame's height in pixels.

    Returns:
        (6,) float32 in OpenFace's axes and signs (module doc).
    """
    points = np.asarray(points68, np.float64)
    if points.shape != (68, 2):
        raise MambavaError(f"head_pose needs (68, 2) points, got shape {points.shape}")
    if not np.isfinite(points).all():
        return np.full(6, np.nan, np.float32)
    model, seen, camera = MEAN_FACE_68[FIT_POINTS], points[FIT_POINTS], camera_matrix(width, height)
    # start from a frontal face at the distance its size implies: solvePnP's own start (a DLT) lands behind the
    # camera or mirrored on some real faces
    scale = float(
        np.sqrt(((seen - seen.mean(0)) ** 2).sum() / max(((model[:, :2] - model[:, :2].mean(0)) ** 2).sum(), 1e-9))
    )
    depth = camera[0, 0] / max(scale, 1e-9)
    centre = seen.mean(0) - model[:, :2].mean(0) * scale
    tvec = np.array(
        [
            [(centre[0] - camera[0, 2]) * depth / camera[0, 0]],
            [(centre[1] - camera[1, 2]) * depth / camera[1, 1]],
            [depth],
        ]
    )
    ok, rvec, tvec = cv2.solvePnP(
        model,
        seen,
        camera,
        None,
        rvec=np.zeros((3, 1)),
        tvec=tvec,
        useExtrinsicGuess=True,
        flags=cv2.SOLVEPNP_ITERATIVE,
    )
    if not ok or tvec[2, 0] <= 0:
        return np.full(6, np.nan, np.float32)
    rotation, _ = cv2.Rodrigues(rvec)
    return np.concatenate([rotation_to_euler(rotation), tvec.reshape(3)]).astype(np.float32)
