"""`--landmarks dlib68` (`mambava.faces.dlib_models`): 68 points in OpenFace's order on any detector's boxes, the
5 alignment points from them, the head pose; steadier eyes than MTCNN's on real video; the columns in the faces
CSV and predict's table, NaN exactly where there is no face; one-line errors without the faces extra."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support import run_cli

from mambava.core.errors import MambavaError
from mambava.faces import dlib_models, extract_faces, get_detector, identity, iter_tracked_faces
from mambava.faces.columns import GEOMETRY_COLUMNS
from mambava.faces.dlib_models import five_from_68
from mambava.faces.expression import EXPRESSIONS
from mambava.inference.predict import COLUMNS
from mambava.media.video import open_video, read_image

pytest.importorskip("dlib", reason="the faces extra (dlib-bin) is not installed")


def _jitter(eyes: np.ndarray) -> float:
    """Mean frame-to-frame jitter of eye centres (T, 2, 2): the second difference, which a smooth head motion
    leaves near 0."""
    return float(np.linalg.norm(eyes[2:] - 2 * eyes[1:-1] + eyes[:-2], axis=2).mean())


def test_68_points_on_mtcnns_boxes_in_a_group_photo(media_dir):
    image = read_image(media_dir / "multi_face.jpg")
    plain = get_detector("mtcnn").detect(image)
    faces = get_detector("mtcnn", landmarks="dlib68").detect(image)
    assert len(faces) == 5
    for face, mtcnn in zip(faces, plain):
        assert face.landmarks68.shape == (68, 2) and face.box.tolist() == mtcnn.box.tolist()
        assert face.landmarks == pytest.approx(five_from_68(face.landmarks68))
        # the eye centres agree with MTCNN's eyes within a tenth of the face's size
        assert np.linalg.norm(face.landmarks[:2] - mtcnn.landmarks[:2], axis=1).max() < 0.1 * face.size
        assert face.pose.shape == (6,) and np.isfinite(face.pose).all() and 200 < face.pose[5] < 3000
        assert np.degrees(np.abs(face.pose[1])) < 45  # everyone looks roughly at the camera


def test_steadier_eyes_than_mtcnn_on_real_video(media_dir):
    """docs/faces.md's table: the eye centres of dlib's 68 points jitter about half as much as MTCNN's eyes."""
    eyes = {"mtcnn": [], "dlib68": []}
    with open_video(media_dir / "single_face.mp4") as reader:
        frames = [f.image for f in reader]
    for face in get_detector("mtcnn", landmarks="dlib68").detect_batch(frames):
        eyes["dlib68"].append(face[0].landmarks[:2])
    for face in get_detector("mtcnn").detect_batch(frames):
        eyes["mtcnn"].append(face[0].landmarks[:2])
    mtcnn, dlib = (np.array(eyes[k]) for k in ("mtcnn", "dlib68"))
    assert _jitter(dlib) < 0.7 * _jitter(mtcnn)
    assert np.linalg.norm(dlib - mtcnn, axis=2).mean() < 3.0  # px, at an eye distance of ~70 px


def test_detect_every_follows_the_68_points_between_detections(media_dir, monkeypatch):
    """--detect-every 5 on single_face.mp4: dlib's predictor runs only where MTCNN runs (frames 0, 5, ..., 70: its
    O-Net check or a whole-frame search), the 68 points follow the face in between, moved with it by the optical
    flow, within 1.5 px (mean) of every-frame dlib68's at an eye distance of ~70 px, the 5 alignment points stay
    those of the 68, and every frame has a pose, its yaw within 1.5° (mean) of every-frame dlib68's."""
    detector = get_detector("mtcnn", landmarks="dlib68")
    every = [f.faces[0] for f in iter_tracked_faces(media_dir / "single_face.mp4", detector, crops=False)]
    calls = []
    predictor = dlib_models.landmarks68

    def counted(image, boxes, name="mtcnn"):
        calls.append(len(boxes))
        return predictor(image, boxes, name)

    monkeypatch.setattr(dlib_models, "landmarks68", counted)
    fifth = [
        f.faces[0] for f in iter_tracked_faces(media_dir / "single_face.mp4", detector, detect_every=5, crops=False)
    ]
    assert len(fifth) == len(every) == 72 and calls == [1] * 15
    assert all(f.landmarks68 is not None and np.isfinite(f.pose).all() for f in fifth)
    assert np.allclose([f.landmarks for f in fifth], [five_from_68(f.landmarks68) for f in fifth], atol=1e-3)
    gap = np.linalg.norm(np.array([f.landmarks68 for f in fifth]) - np.array([f.landmarks68 for f in every]), axis=2)
    assert gap.mean() < 1.5 and gap.mean(axis=1).max() < 4.0  # measured: 0.94 px, the worst frame 2.6 px
    yaw = np.degrees([f.pose[1] for f in fifth]) - np.degrees([f.pose[1] for f in every])
    assert np.abs(yaw).mean() < 1.5  # degrees; measured 0.7 (3.0 at worst)


def test_faces_csv_has_the_columns_nan_exactly_where_there_is_no_face(media_dir, tmp_path):
    detector = get_detector("mtcnn", landmarks="dlib68")
    result = extract_faces(media_dir / "face_noface.mov", tmp_path, fps=10, detector=detector)
    table = pd.read_csv(result.csv_path)
    assert table.columns[-len(GEOMETRY_COLUMNS) :].tolist() == GEOMETRY_COLUMNS
    assert GEOMETRY_COLUMNS[:3] == ["x_0", "x_1", "x_2"] and GEOMETRY_COLUMNS[68] == "y_0"
    face = table["present"] == 1
    assert 0 < face.sum() < len(table)
    assert table.loc[face, GEOMETRY_COLUMNS].notna().all().all()
    assert table.loc[~face, GEOMETRY_COLUMNS].isna().all().all()


def test_predict_batch_columns_and_one_person(models, media_dir, tmp_path, capsys):
    videos = [media_dir / "single_face.mp4", media_dir / "face_noface.mov"]
    code, out, err = run_cli(
        ["predict", *videos, "-c", models["model"], "-b", models["vit"], "-o", tmp_path, "--fps", "10"]
        + ["--precision", "fp32", "--no-plots", "--persons", "--landmarks", "dlib68", "--expressions"],
        capsys,
    )
    assert code == 0, err
    expressions = list(EXPRESSIONS)
    for name in ("single_face", "face_noface"):
        table = pd.read_csv(tmp_path / f"{name}.csv")
        # every column of both: the 68 points, pose and person, then the expressions, the model's name last
        assert list(table.columns) == COLUMNS + GEOMETRY_COLUMNS + ["person"] + expressions + ["model"]
        assert set(table["model"]) == {Path(models["model"]).name}
        face = (table["face"] == 1).to_numpy()
        assert face.any() and table.loc[face, GEOMETRY_COLUMNS + expressions].notna().all().all()
        assert table.loc[~face, GEOMETRY_COLUMNS + expressions].isna().all().all()
        assert np.allclose(table.loc[face, expressions].sum(axis=1), 1.0, atol=1e-5)
        assert set(table["person"]) == {"unknown-1"}
        assert pd.read_csv(tmp_path / f"{name}.summary.csv")["person"].tolist() == ["unknown-1"]
    persons = pd.read_csv(tmp_path / "persons.csv")
    assert persons["person"].tolist() == ["unknown-1"] and persons["videos"].tolist() == ["single_face;face_noface"]
    summary = pd.read_csv(tmp_path / "persons.summary.csv")
    assert summary["person"].tolist() == ["unknown-1"] and summary["face_frames"].iloc[0] == persons["frames"].iloc[0]


@pytest.fixture
def no_faces_extra(monkeypatch):
    """dlib cannot be imported (the faces extra missing); the loaded models forgotten for the test."""
    monkeypatch.setitem(sys.modules, "dlib", None)
    for module, name in ((dlib_models, "shape_predictor"), (dlib_models, "face_recognizer")):
        monkeypatch.setattr(module, name, functools.lru_cache(maxsize=None)(getattr(module, name).__wrapped__))
    monkeypatch.setattr(identity, "face_recognizer", dlib_models.face_recognizer)


def test_without_the_extra_each_option_is_one_line_naming_it(no_faces_extra, media_dir, tmp_path, capsys):
    with pytest.raises(MambavaError, match=r"mambava\[faces\]"):
        get_detector("mtcnn", landmarks="dlib68")
    for option in (["--landmarks", "dlib68"], ["--persons", "--landmarks", "none"]):
        code, _, err = run_cli(["faces", media_dir / "multi_face.jpg", "--out", tmp_path, "-q", *option], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "mambava[faces]" in lines[0], err
    assert not list(tmp_path.glob("*.csv"))
