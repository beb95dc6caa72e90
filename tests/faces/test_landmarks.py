"""The learned landmark refiner (`mambava.faces.landmarks`): it learns to move perturbed and MTCNN's 5 points
onto a held-out person's true landmarks, wraps any detector with landmarks, round-trips through its file, and
`mambava train-landmarks` trains one from a synthetic dataset or a landmarks CSV."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from support import run_cli
from typer.testing import CliRunner

from mambava.cli import app
from mambava.core.errors import MambavaError
from mambava.faces import get_detector
from mambava.faces.align import LANDMARK_COLUMNS
from mambava.faces.dataset import alignment_error
from mambava.faces.landmarks import (
    RefinedDetector,
    RefinerConfig,
    _perturb,
    load_refiner,
    train_refiner,
)
from mambava.synth import SynthConfig, generate
from mambava.synth.truth_faces import synth_refiner_samples

SYNTH = dict(n_train=3, n_val=1, n_test=1, frames=(90, 100), two_person_fraction=0.0, seed=3, workers=1)
CONFIG = RefinerConfig(epochs=30, batch_size=32, seed=0)
RELAXED = dict(thresholds=(0.5, 0.5, 0.5), min_score=0.5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny synthetic dataset, a refiner trained on its training people's frames, and the held-out (test)
    person's frames with their true landmarks."""
    root = tmp_path_factory.mktemp("landmarks") / "data"
    summary = generate(root, SynthConfig(**SYNTH))
    frames, samples = synth_refiner_samples(root, summary.splits["train"], every=1)
    refiner = train_refiner(frames, samples, CONFIG)
    held_frames, held = synth_refiner_samples(root, summary.splits["test"], every=1)
    return root, refiner, held_frames, held, len(samples)


def test_learns_to_move_perturbed_points_onto_a_held_out_persons_true_landmarks(trained):
    _, refiner, frames, held, n_train = trained
    assert n_train > 200 and len(held) > 40
    rng = np.random.default_rng(1)
    starts = [_perturb(rng, truth, CONFIG) for _, truth in held]
    truths = np.stack([truth for _, truth in held])
    before = alignment_error(np.stack(starts), truths).mean()
    after = alignment_error(
        np.stack([refiner.refine(frames[i], [s])[0] for (i, _), s in zip(held, starts)]), truths
    ).mean()
    # the perturbations (2.5 px shift, 5% scale, 5 degrees, 1 px per point at 112) leave ~4 px of error
    assert before > 3.0
    assert after < 0.4 * before, (before, after)


def test_refines_mtcnns_points_on_a_held_out_person(trained):
    _, refiner, frames, held, _ = trained
    mtcnn = get_detector("mtcnn", **RELAXED)
    refined = RefinedDetector(mtcnn, refiner)
    found, better, truths = [], [], []
    for index, truth in held[::3]:
        faces = mtcnn.detect(frames[index])
        again = refined.detect(frames[index])
        if not faces:
            continue
        assert len(again) == len(faces)
        assert np.array_equal(again[0].box, faces[0].box) and again[0].score == faces[0].score  # boxes, scores kept
        found.append(faces[0].landmarks)
        better.append(again[0].landmarks)
        truths.append(truth)
    assert len(found) > 12
    plain = alignment_error(np.stack(found), np.stack(truths)).mean()
    ours = alignment_error(np.stack(better), np.stack(truths)).mean()
    assert ours < 0.75 * plain, (plain, ours)


def test_round_trips_through_its_file_and_wraps_detectors_by_name(trained, tmp_path):
    _, refiner, frames, held, _ = trained
    path = refiner.save(tmp_path / "lm.safetensors")
    loaded = load_refiner(path)
    assert loaded.config == refiner.config
    start = held[0][1] + 1.5
    assert np.allclose(loaded.refine(frames[held[0][0]], [start])[0], refiner.refine(frames[held[0][0]], [start])[0])
    det = get_detector("mtcnn", landmarks=path, **RELAXED)
    assert isinstance(det, RefinedDetector) and det.thresholds == (0.5, 0.5, 0.5)  # the wrapped detector's settings
    # the faces stage's marker names the refiner by its weights, not by where its file is
    assert (
        det.refiner_sha256
        == RefinedDetector(get_detector("mtcnn"), loaded).refiner_sha256
        != RefinedDetector(
            get_detector("mtcnn"), train_refiner(frames[:2], held[:2], RefinerConfig(epochs=1, seed=5))
        ).refiner_sha256
    )
    face = det.detect(frames[held[0][0]])[0]
    # detection by tracking's check (O-Net on a known box) is refined too
    checked = det.verify(frames[held[0][0]], [face])[0]
    assert checked is not None and np.abs(checked.landmarks - face.landmarks).max() < 1.0
    with pytest.raises(MambavaError, match="has none"):
        get_detector("haar", landmarks=path)
    with pytest.raises(MambavaError, match="no such landmark refiner"):
        load_refiner(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(MambavaError, match="bad.safetensors: not a readable safetensors file"):
        load_refiner(bad)


def test_train_landmarks_command_from_a_synthetic_dataset_and_from_a_csv(trained, tmp_path, capsys):

    root, _, frames, held, _ = trained
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "train-landmarks",
            str(root),
            "--out",
            str(tmp_path / "a.safetensors"),
            "--epochs",
            "1",
            "--every",
            "10",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    assert load_refiner(tmp_path / "a.safetensors").config.epochs == 1

    from PIL import Image

    rows = []
    for k, (index, truth) in enumerate(held[:6]):
        Image.fromarray(frames[index]).save(tmp_path / f"f{k}.png")
        rows.append({"image": f"f{k}.png", **dict(zip(LANDMARK_COLUMNS, truth.reshape(-1)))})
    table = tmp_path / "faces.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["image", *LANDMARK_COLUMNS])
        writer.writeheader()
        writer.writerows(rows)
    result = runner.invoke(
        app, ["train-landmarks", str(table), "--out", str(tmp_path / "b.safetensors"), "--epochs", "1", "-q"]
    )
    assert result.exit_code == 0, result.output
    assert "6 faces in 6 images" in result.output
    # a bad row is a one-line error naming the file and line
    table.write_text(table.read_text().replace(f"{rows[2]['left_eye_x']}", "left", 1))
    code, _, err = run_cli(["train-landmarks", table, "--out", tmp_path / "c.safetensors"], capsys)
    assert code != 0 and err.strip().splitlines() == [f"error: {table}:4: landmark values must be numbers"]
    assert not (tmp_path / "c.safetensors").exists()
    for text, words in (
        (b"image,left_eye_x\n\xff\xfe\x00", "not a readable CSV"),
        (("image," + ",".join(LANDMARK_COLUMNS) + "\n ," + ",".join(["1"] * 10) + "\n").encode(), ":2: no image named"),
    ):
        table.write_bytes(text)
        code, _, err = run_cli(["train-landmarks", table, "--out", tmp_path / "c.safetensors"], capsys)
        assert code != 0 and len(err.strip().splitlines()) == 1 and words in err, err
    code, _, err = run_cli(["train-landmarks", root, "--out", tmp_path], capsys)  # a folder: before training
    assert code != 0 and "is a folder" in err


def test_predict_names_a_faces_stage_other_than_the_one_that_made_the_training_crops(trained, tmp_path, tiny_mamba_va):
    """A model trained on `faces --dataset` crops: predict reads their marker (the run's data.annotations) and
    says where its own faces stage differs: no refiner, another refiner, another --detect-every."""
    import json

    import torch
    import yaml

    from mambava.backbone import ViTConfig, ViTEncoder
    from mambava.faces.dataset import MARKER
    from mambava.inference.predict import Predictor
    from mambava.temporal import save_temporal_model

    _, refiner, frames, held, _ = trained
    lm = refiner.save(tmp_path / "lm.safetensors")
    other = train_refiner(frames[:2], held[:2], RefinerConfig(epochs=1, seed=5)).save(tmp_path / "other.safetensors")
    root = tmp_path / "own"
    (root / "cropped_aligned").mkdir(parents=True)
    with open(root / "cropped_aligned" / MARKER, "w") as handle:  # as `faces --dataset --landmarks lm` writes it
        json.dump(
            {
                "detector": "mtcnn",
                "detector_kwargs": {"landmarks": str(lm)},
                "detect_every": 1,
                "landmarks_sha256": get_detector("mtcnn", landmarks=lm).refiner_sha256,
            },
            handle,
        )
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"annotations": str(root)}}))
    torch.manual_seed(0)
    ViTEncoder(ViTConfig(img_size=32, patch_size=16, embed_dim=24, depth=1, num_heads=2)).save(
        tmp_path / "vit.safetensors"
    )
    model = save_temporal_model(tiny_mamba_va(24), run / "model.safetensors")

    def notes(detector, every=1):
        return Predictor(model, tmp_path / "vit.safetensors", detector=detector, detect_every=every).face_stage_notes()

    assert notes(get_detector("mtcnn", landmarks=lm)) == []
    assert notes("mtcnn") == [
        f"the model's training crops were made with the landmark refiner {lm}: pass "
        "--landmarks with it, or its faces are aligned differently from what it learned"
    ]
    assert notes(get_detector("mtcnn", landmarks=other)) == [
        f"the model's training crops were made with another landmark refiner ({lm})"
    ]
    assert notes(get_detector("mtcnn", landmarks=lm), 3) == [
        "the model's training crops were made with --detect-every 1, predict uses 3"
    ]
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"annotations": str(tmp_path / "elsewhere")}}))
    assert notes("mtcnn") == []  # crops of unknown origin: nothing to say
