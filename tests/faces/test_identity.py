"""Identities (`mambava.faces.identity`, dlib's descriptors from the faces extra): five people in multi_face.jpg
are five persons, the man of single_face.mp4 and face_noface.mov is one person over a batch, two people keep
their ids across a cut that swaps their places, a gallery names them, and a bad gallery is one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from support import run_cli

from mambava.core.errors import MambavaError
from mambava.faces import extract_faces, get_detector
from mambava.faces.identity import (
    PERSONS_COLUMNS,
    TrackIdentity,
    assign_persons,
    cluster_tracks,
    load_gallery,
    track_distance,
)
from mambava.faces.track import CutDetector
from mambava.media.video import open_video, read_image
from mambava.synth.dataset import render_cut_video

pytest.importorskip("dlib", reason="the faces extra (dlib-bin) is not installed")


@pytest.fixture(scope="module")
def gallery_dir(media_dir, tmp_path_factory) -> Path:
    """A gallery with one photo: frame 10 of single_face.mp4 as `man.jpg`."""
    root = tmp_path_factory.mktemp("gallery")
    with open_video(media_dir / "single_face.mp4") as reader:
        frame = next(f for f in reader if f.index == 10)
    cv2.imwrite(str(root / "man.jpg"), frame.image[:, :, ::-1])
    return root


def test_five_faces_in_one_photo_are_five_persons(media_dir, tmp_path, capsys):
    code, _, err = run_cli(["faces", media_dir / "multi_face.jpg", "--out", tmp_path, "--persons", "-q"], capsys)
    assert code == 0, err
    table = pd.read_csv(tmp_path / "multi_face.faces.csv")
    assert len(table) == 5 and table["person"].nunique() == 5
    persons = pd.read_csv(tmp_path / "persons.csv")
    assert list(persons.columns) == PERSONS_COLUMNS
    assert sorted(persons["person"]) == [f"unknown-{k}" for k in range(1, 6)]
    assert (persons["frames"] == 1).all() and (persons["videos"] == "multi_face").all()
    for thumbnail in persons["thumbnail"]:
        assert read_image(tmp_path / thumbnail).shape == (150, 150, 3)


def test_the_same_man_in_two_videos_is_one_person_and_a_gallery_names_him(media_dir, gallery_dir, tmp_path, capsys):
    videos = [media_dir / "single_face.mp4", media_dir / "face_noface.mov"]
    code, _, err = run_cli(
        ["faces", *videos, "--out", tmp_path, "--fps", "10", "--identities", gallery_dir, "-q"], capsys
    )
    assert code == 0, err
    persons = pd.read_csv(tmp_path / "persons.csv")
    assert persons["person"].tolist() == ["man"]
    assert persons["videos"].tolist() == ["single_face;face_noface"]
    for name in ("single_face", "face_noface"):
        table = pd.read_csv(tmp_path / f"{name}.faces.csv")
        assert set(table["person"]) == {"man"}
    # without the gallery: one unknown person over both
    out = tmp_path / "plain"
    code, _, err = run_cli(["faces", *videos, "--out", out, "--fps", "10", "--persons", "-q"], capsys)
    assert code == 0, err
    assert pd.read_csv(out / "persons.csv")["person"].tolist() == ["unknown-1"]


@pytest.fixture(scope="module")
def cut_video(tmp_path_factory):
    """render_cut_video: two people, places swapped at frame 20 of 40."""
    return render_cut_video(tmp_path_factory.mktemp("cut") / "cut.mp4", seed=0)


def _who(table: pd.DataFrame, truth) -> dict[str, list[int]]:
    """For each output track, which true person its face is at (nearest true centre), frame by frame."""
    found = {}
    for track, rows in table[table["present"] == 1].groupby("track"):
        centre = np.stack([(rows["x1"] + rows["x2"]) / 2, (rows["y1"] + rows["y2"]) / 2], axis=1)
        frames = rows["frame"].to_numpy()
        distance = np.linalg.norm(truth.centres[:, frames] - centre[None], axis=2)  # (2 people, frames)
        assert distance.min(0).max() < 25  # every face found is one of the two
        found[track] = distance.argmin(0).tolist()
    return found


def test_two_people_keep_their_ids_across_a_cut_that_swaps_their_places(cut_video, tmp_path):
    detector = get_detector("mtcnn", landmarks="dlib68", thresholds=(0.5, 0.5, 0.5), min_score=0.5)
    result = extract_faces(cut_video.path, tmp_path / "ids", detector=detector, persons=True)
    table = pd.read_csv(result.csv_path)
    who = _who(table, cut_video)
    assert len(who) == 2 and table["person"].nunique() == 2
    for track, people in who.items():
        assert len(people) == cut_video.n_frames  # one track per person over the whole video
        assert len(set(people)) == 1, f"{track} follows both people"
    # by place alone (no descriptors), each track follows a place, so it changes person at the cut
    result = extract_faces(cut_video.path, tmp_path / "places", detector=detector)
    by_place = _who(pd.read_csv(result.csv_path), cut_video)
    assert any(len(set(people)) == 2 for people in by_place.values())


def test_cut_detector_finds_the_cut_and_nothing_else(media_dir, cut_video):
    for path, expected in ((media_dir / "single_face.mp4", []), (cut_video.path, [cut_video.cut])):
        cut = CutDetector()
        with open_video(path) as reader:
            assert [f.index for f in reader if cut(f.image)] == expected
    cut = CutDetector()
    with open_video(media_dir / "face_noface.mov") as reader:
        found = [f.index for f in reader if cut(f.image)]
    assert found and set(found) <= {72, 73}  # the face, then the cartoon card (a two-frame change)


def test_clustering_never_joins_two_tracks_seen_together():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 0.05, (2, 128))
    same = lambda base: base + rng.normal(0, 0.01, (3, 128))  # noqa: E731
    tracks = [
        TrackIdentity("v1", "v1_left", same(a), {0, 1, 2}, 3),
        TrackIdentity("v1", "v1_right", same(a), {1, 2, 3}, 3),  # like v1_left, but seen with it
        TrackIdentity("v2", "v2", same(a), {0, 1}, 2),
        TrackIdentity("v3", "v3", same(b) + 1.0, {0}, 1),  # far from everyone
    ]
    assert track_distance(tracks[0].descriptors, tracks[1].descriptors) < 0.2
    labels = cluster_tracks(tracks)
    assert labels[0] != labels[1] and labels[2] in (labels[0], labels[1]) and labels[3] not in labels[:3]
    persons = assign_persons(tracks)
    assert persons[:2] == ["unknown-1", "unknown-2"] and persons[2] in persons[:2] and persons[3] == "unknown-3"
    named = assign_persons(tracks, {"ann": same(a)})
    assert "ann" in named[:2] and named[0] != named[1]  # one of the two seen together is ann, not both
    assert named[2] in named[:2] and named[3] == "unknown-2"


@pytest.mark.parametrize("bad", ["no face", "two faces", "unreadable"])
def test_a_bad_gallery_is_one_line_naming_the_file_and_nothing_is_written(bad, media_dir, tmp_path, capsys):
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    photo = gallery / "someone.jpg"
    if bad == "no face":
        with open_video(media_dir / "no_face.mp4") as reader:
            cv2.imwrite(str(photo), next(iter(reader)).image[:, :, ::-1])
    elif bad == "two faces":
        (gallery / "someone").mkdir()
        photo = gallery / "someone" / "group.jpg"
        shutil.copy(media_dir / "multi_face.jpg", photo)
    else:
        photo.write_bytes(b"not a JPEG at all")
    out = tmp_path / "out"
    out.mkdir()
    earlier = out / "single_face.faces.csv"
    earlier.write_text("an earlier run's output\n")
    code, stdout, err = run_cli(
        ["faces", media_dir / "single_face.mp4", "--out", out, "--identities", gallery, "-q"], capsys
    )
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and str(photo) in lines[0], err
    assert {"no face": "no face found", "two faces": "5 faces found", "unreadable": "not a readable"}[bad] in lines[0]
    assert earlier.read_text() == "an earlier run's output\n" and sorted(p.name for p in out.iterdir()) == [
        earlier.name
    ]
    with pytest.raises(MambavaError, match="someone"):
        load_gallery(gallery, get_detector("mtcnn"))


def test_stream_gives_each_track_its_person_across_the_cut(cut_video, models, tmp_path, capsys):
    """`stream --persons` (`OnlinePersons`): the cut ends both tracks, and the two new tracks after it take the
    persons of the same two people before it, by face, though their places swapped; every row of a track carries
    its person, in the CSV of `--out` and its summary too. With a gallery holding one of them (a crop of the first
    frame), that one is named and the other is unknown-1."""
    from mambava.faces.detect import _REGISTRY, register_detector
    from mambava.inference.predict import Predictor

    relaxed = dict(thresholds=(0.5, 0.5, 0.5), min_score=0.5)  # the generator's drawn faces
    predictor = Predictor(
        models["model"],
        models["vit"],
        precision="fp32",
        detector=get_detector("mtcnn", **relaxed),
        landmarks="dlib68",
        persons=True,
    )
    rows = [r for r in predictor.stream(cut_video.path) if r.face]
    centres = np.array([r.landmarks68.mean(0) for r in rows])
    truth = cut_video.centres[:, [r.frame for r in rows]]  # (2 people, rows, 2)
    distance = np.linalg.norm(truth - centres[None], axis=2)
    assert distance.min(0).max() < 25  # every face found is one of the two people
    who = distance.argmin(0)
    tracks = {r.track for r in rows}
    assert len(tracks) == 4  # two before the cut, two new ones after it (by place, each swapped person)
    persons = {k: {r.person for r, w in zip(rows, who) if w == k} for k in (0, 1)}
    assert all(len(p) == 1 for p in persons.values()) and persons[0] != persons[1], persons
    assert persons[0] | persons[1] == {"unknown-1", "unknown-2"}
    # a gallery of person 0 (the half of the first frame where they are) names them
    with open_video(cut_video.path) as reader:
        first = next(iter(reader)).image
    x = int(cut_video.centres[0, 0, 0])
    half = first[:, : first.shape[1] // 2] if x < first.shape[1] // 2 else first[:, first.shape[1] // 2 :]
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    cv2.imwrite(str(gallery / "ann.png"), np.ascontiguousarray(half[:, :, ::-1]))
    register_detector("mtcnn-relaxed", lambda: get_detector("mtcnn", **relaxed))
    try:
        out = tmp_path / "rows.csv"
        code, _, err = run_cli(
            ["stream", cut_video.path, "-c", models["model"], "-b", models["vit"], "--precision", "fp32"]
            + ["--detector", "mtcnn-relaxed", "--identities", gallery, "-o", out, "-q"],
            capsys,
        )
    finally:
        _REGISTRY.pop("mtcnn-relaxed", None)
    assert code == 0, err
    table = pd.read_csv(out)
    assert table.columns[-2:].tolist() == ["person", "model"]  # as predict's table: the model's name last
    found = table[table["face"] == 1]
    by_track = found.groupby("track")["person"].agg(set)
    assert all(len(p) == 1 for p in by_track) and set().union(*by_track) == {"ann", "unknown-1"}
    streamed = {r.track: r.person for r in rows}
    assert {t: next(iter(p)) for t, p in by_track.items()} == {
        t: ("ann" if p == next(iter(persons[0])) else "unknown-1") for t, p in streamed.items()
    }
    summary = pd.read_csv(out.with_name("rows.summary.csv"))
    assert dict(zip(summary["track"], summary["person"])) == {t: next(iter(p)) for t, p in by_track.items()}
    with pytest.raises(MambavaError, match="features: --persons and --identities need a video"):
        Predictor(models["model"], persons=True).stream(np.zeros((5, 24), np.float32))
