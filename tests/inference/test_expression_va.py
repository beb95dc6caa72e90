"""The default model (expression-va) out of the box, and the expression columns, on the real media: predict without
a checkpoint says which model it used and moves with the grin of single_face.mp4; face_noface.mov has no
expression values where there is no face; stream and serve give the same columns; `--expressions` adds them to
any model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from support import DIM, run_cli

from mambava.cli.options import faces_extra_installed
from mambava.core.errors import MambavaError
from mambava.faces.columns import GEOMETRY_COLUMNS
from mambava.faces.expression import EXPRESSIONS
from mambava.inference.predict import COLUMNS, Predictor


@pytest.fixture(scope="module")
def default_predictor(detector):
    return Predictor(detector=detector)


@pytest.fixture(scope="module")
def single_face_table(default_predictor, media_dir):
    return default_predictor.predict_video(media_dir / "single_face.mp4")


def test_predict_without_a_checkpoint_says_its_model_and_writes_expressions(media_dir, detector, tmp_path, capsys):
    code, _, err = run_cli(
        ["predict", media_dir / "single_face.mp4", "-o", tmp_path, "--no-plots", "--detector", detector], capsys
    )
    assert code == 0, err
    assert "model: expression-va:" in err and "not the paper's Mamba-VA model" in err
    table = pd.read_csv(tmp_path / "single_face.csv")
    # --landmarks auto: dlib's 68 points and the head pose where the faces extra is installed
    geometry = GEOMETRY_COLUMNS if faces_extra_installed() else []
    assert list(table.columns) == [*COLUMNS, *geometry, *EXPRESSIONS, "model"]
    assert (table["model"] == "expression-va").all()
    assert len(table) == 72 and table["face"].sum() == 72
    assert np.allclose(table[list(EXPRESSIONS)].sum(axis=1), 1, atol=1e-4)
    summary = pd.read_csv(tmp_path / "single_face.summary.csv")
    assert summary["top_expression"].tolist() == ["happiness"] and summary["happiness_mean"].iloc[0] > 0.6


def test_default_model_follows_the_grin_of_single_face(single_face_table):
    """neutral -> grin -> neutral (the grin from frame ~20 to ~69 of 72): happiness and valence are higher in the
    middle third than in the first and the last; arousal rises with the grin (neutral sits low on the circumplex)."""
    table = single_face_table
    thirds = [table.iloc[i * 24 : (i + 1) * 24] for i in range(3)]
    happiness = [t["happiness"].mean() for t in thirds]
    valence = [t["valence"].mean() for t in thirds]
    assert happiness[1] > happiness[0] + 0.5 and happiness[1] > happiness[2]
    assert valence[1] > valence[0] + 0.5 and valence[1] > valence[2]
    assert thirds[0]["neutral"].mean() > 0.6 and thirds[0]["arousal"].mean() < thirds[1]["arousal"].mean() - 0.5
    assert table["valence"].between(-1, 1).all() and table["arousal"].between(-1, 1).all()


def test_no_expression_values_where_there_is_no_face(default_predictor, media_dir):
    table = default_predictor.predict_video(media_dir / "face_noface.mov")
    face, values = table["face"].astype(bool), table[list(EXPRESSIONS)]
    assert 60 <= face.sum() <= 80 and (~face).sum() >= 90  # the man for about half, then the title card
    assert values[~face].isna().all().all()
    assert values[face].notna().all().all() and np.allclose(values[face].sum(axis=1), 1, atol=1e-4)
    assert np.isfinite(table["valence"]).all()  # the last face's value is held, as for every model


def test_stream_gives_the_same_rows_and_writes_its_expressions(default_predictor, single_face_table, media_dir):
    rows = list(default_predictor.stream(media_dir / "single_face.mp4"))
    assert len(rows) == 72 and all(r.expressions is not None and len(r.expressions) == 7 for r in rows)
    streamed = np.array([[r.valence, r.arousal, *r.expressions] for r in rows])
    offline = single_face_table[["valence", "arousal", *EXPRESSIONS]].to_numpy()
    assert np.abs(streamed - offline).max() < 5e-3  # (the live path detects frame by frame: boxes to rounding)


def test_stream_command_without_checkpoint_writes_expression_columns(media_dir, detector, tmp_path, capsys):
    from support import short_clip

    clip = short_clip(media_dir, tmp_path / "clip.mp4", n=12)
    code, out, err = run_cli(["stream", clip, "-o", tmp_path / "rows.csv", "--detector", detector], capsys)
    assert code == 0, err
    assert "model: expression-va:" in err and out.splitlines()[0].endswith("\texpression")
    table = pd.read_csv(tmp_path / "rows.csv")
    assert len(table) == 12 and (table["model"] == "expression-va").all()
    assert np.allclose(table[list(EXPRESSIONS)].sum(axis=1), 1, atol=1e-4)
    assert "neutral_mean" in pd.read_csv(tmp_path / "rows.summary.csv").columns


def test_expressions_with_any_model_and_from_feature_files(models, detector, media_dir, tmp_path):
    """--expressions adds the columns to a Mamba-VA on ViT features (the expression net runs on the same crops);
    a features .npy has them only with expression-va (whose features end with the logits)."""
    from support import short_clip

    clip = short_clip(media_dir, tmp_path / "clip.mp4", n=8)
    plain = Predictor(models["model"], models["vit"], precision="fp32", detector=detector)
    asked = Predictor(models["model"], models["vit"], precision="fp32", detector=detector, expressions=True)
    a, b = plain.predict_video(clip), asked.predict_video(clip)
    assert list(a.columns) == [*COLUMNS, "model"] and list(b.columns) == [*COLUMNS, *EXPRESSIONS, "model"]
    assert np.allclose(a["valence"], b["valence"]) and b[list(EXPRESSIONS)].notna().all().all()

    features = np.random.default_rng(0).normal(0, 2, (20, 135)).astype(np.float32)
    features[5] = np.nan  # a frame without a face
    np.save(tmp_path / "expr.npy", features)
    table = Predictor().predict(tmp_path / "expr.npy")
    assert table[list(EXPRESSIONS)].iloc[5].isna().all() and table[list(EXPRESSIONS)].drop(index=5).notna().all().all()
    np.save(tmp_path / "vit.npy", np.zeros((10, DIM), np.float32))
    with pytest.raises(MambavaError, match="--expressions needs a video"):
        Predictor(models["model"], expressions=True).predict(tmp_path / "vit.npy")
