"""Head pose from 68 points (`mambava.faces.pose`): the mean face projected at known angles gives them back,
in OpenFace's axes and signs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from mambava.core.errors import MambavaError
from mambava.faces.pose import (
    MEAN_FACE_68,
    POSE_COLUMNS,
    camera_matrix,
    euler_to_rotation,
    head_pose,
    project,
    rotation_to_euler,
)


@pytest.mark.parametrize("size", [(640, 360), (1920, 1080)])
def test_projected_mean_face_gives_the_angles_back_within_a_degree(size):
    width, height = size
    worst = 0.0
    for pitch, yaw, roll in itertools.product([-25, 0, 25], [-40, 0, 40], [-30, 0, 30]):
        truth = np.array([math.radians(pitch), math.radians(yaw), math.radians(roll), 40.0, -25.0, 650.0])
        found = head_pose(project(truth, width, height), width, height)
        worst = max(worst, float(np.degrees(np.abs(found[:3] - truth[:3])).max()))
        assert found[3:] == pytest.approx(truth[3:], abs=2.0)  # mm
    assert worst < 1.0


def test_openface_axes_and_signs():
    frontal = project(np.array([0, 0, 0, 0, 0, 600.0]), 640, 480)
    nose, right_eye_corner = 30, 45
    # + pitch (Rx): the nose goes down the image; + yaw (Ry): towards the image's left; + roll (Rz): the face's
    # right side in the image goes down
    assert project(np.array([0.3, 0, 0, 0, 0, 600.0]), 640, 480)[nose, 1] > frontal[nose, 1] + 5
    assert project(np.array([0, 0.3, 0, 0, 0, 600.0]), 640, 480)[nose, 0] < frontal[nose, 0] - 5
    assert project(np.array([0, 0, 0.3, 0, 0, 600.0]), 640, 480)[right_eye_corner, 1] > frontal[right_eye_corner, 1] + 5
    # R = Rx · Ry · Rz and back
    angles = np.array([0.2, -0.5, 0.7])
    rx, ry, rz = angles
    c, s = np.cos, np.sin
    composed = (
        np.array([[1, 0, 0], [0, c(rx), -s(rx)], [0, s(rx), c(rx)]])
        @ np.array([[c(ry), 0, s(ry)], [0, 1, 0], [-s(ry), 0, c(ry)]])
        @ np.array([[c(rz), -s(rz), 0], [s(rz), c(rz), 0], [0, 0, 1]])
    )
    assert euler_to_rotation(*angles) == pytest.approx(composed)
    assert rotation_to_euler(composed) == pytest.approx(angles)
    # OpenFace's camera guess: 500 px per 640 of width and per 480 of height, averaged; centre
    assert camera_matrix(640, 480)[0, 0] == 500 and camera_matrix(1280, 720)[0, 0] == pytest.approx(875)
    assert camera_matrix(1280, 720)[:2, 2].tolist() == [640, 360]


def test_mean_face_is_symmetric_and_centred_and_bad_points_are_refused():
    assert MEAN_FACE_68.shape == (68, 3) and np.abs(MEAN_FACE_68.mean(0)).max() < 1e-9
    assert MEAN_FACE_68[36:42, :2].mean(0)[0] == pytest.approx(-MEAN_FACE_68[42:48, :2].mean(0)[0])
    assert POSE_COLUMNS == ["pose_Rx", "pose_Ry", "pose_Rz", "pose_Tx", "pose_Ty", "pose_Tz"]
    assert np.isnan(head_pose(np.full((68, 2), np.nan), 640, 480)).all()
    with pytest.raises(MambavaError, match=r"\(68, 2\)"):
        head_pose(np.zeros((5, 2)), 640, 480)
