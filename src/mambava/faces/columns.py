"""The columns of a face's geometry in mambava's tables, as OpenFace names them: the 68 points `x_0`...`x_67`,
`y_0`...`y_67` (pixels of the source frame) and the head pose `pose_Rx`...`pose_Tz` (`mambava.faces.pose`).
One builder for the faces CSV, `predict`'s table and `stream`'s rows, so that they agree: NaN (an empty field
in a CSV) exactly where the track has no face."""

from __future__ import annotations

import numpy as np

from mambava.faces.dlib_models import LANDMARK68_COLUMNS
from mambava.faces.pose import POSE_COLUMNS

GEOMETRY_COLUMNS = LANDMARK68_COLUMNS + POSE_COLUMNS


def geometry_columns(points68: np.ndarray, pose: np.ndarray) -> dict[str, np.ndarray]:
    """{column: (N,) float32} from (N, 68, 2) points and (N, 6) poses, NaN rows where there is no face."""
    points68 = np.asarray(points68, np.float32).reshape(-1, 68, 2)
    pose = np.asarray(pose, np.float32).reshape(-1, 6)
    columns = {f"x_{i}": points68[:, i, 0] for i in range(68)}
    columns.update({f"y_{i}": points68[:, i, 1] for i in range(68)})
    columns.update({name: pose[:, k] for k, name in enumerate(POSE_COLUMNS)})
    return columns


def geometry_row(points68: np.ndarray | None, pose: np.ndarray | None) -> list[float]:
    """One face's values in `GEOMETRY_COLUMNS` order (NaN for a face without them)."""
    points = np.full((68, 2), np.nan) if points68 is None else np.asarray(points68, np.float64)
    values = np.full(6, np.nan) if pose is None else np.asarray(pose, np.float64)
    return [*points[:, 0].tolist(), *points[:, 1].tolist(), *values.tolist()]


def gives_landmarks68(detector) -> bool:
    """Whether `detector`'s faces carry 68 points and a pose (`--landmarks dlib68`)."""
    return bool(getattr(detector, "gives_landmarks68", False))
