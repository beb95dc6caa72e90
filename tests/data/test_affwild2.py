import shutil

import numpy as np
import pytest
from support import AFFWILD2_CROPS, AFFWILD2_INVALID, TEST_LIST_NAME
from typer.testing import CliRunner

from mambava.cli import app
from mambava.core.errors import MambavaError
from mambava.data.affwild2 import (
    AffWild2,
    DataWarning,
    align_lengths,
    base_video,
    find_test_list,
    read_crop,
    read_test_list,
    read_va_annotation,
)
from mambava.data.check import check


def test_check_counts_every_split(affwild2_root):
    summary = check(affwild2_root, progress=False)
    got = {
        name: (s.videos, s.frames, s.annotated_frames, s.crop_frames, s.missing_crops, len(s.mismatches))
        for name, s in summary.splits.items()
    }
    # See the table in conftest.py: frames = annotation length, or the raw video's 27 / 20 frames, or the
    # highest crop; missing = frames without a crop.
    assert got == {
        "train": (3, 50 + 40 + 40, 45 + 40 + 40, 46 + 40 + 38, 4 + 0 + 2, 0),
        "validation": (2, 30 + 27, 27 + 25, 30 + 25, 0 + 2, 1),
        "test": (2, 20 + 15, 0, 18 + 14, 2 + 1, 0),
    }
    assert "vidD" in summary.splits["validation"].mismatches[0]
    assert summary.ok and summary.problems == [] and summary.unannotated_crop_folders == []
    assert summary.test_list.name == TEST_LIST_NAME

    result = CliRunner().invoke(app, ["data", "check", str(affwild2_root)], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    rows = {
        line.split()[0]: line.split()[1:]
        for line in result.output.splitlines()
        if line.split()[:1] in (["train"], ["validation"], ["test"])
    }
    assert rows["train"] == ["3", "130", "125", "124", "6", "0", "0"]
    assert rows["validation"] == ["2", "57", "52", "55", "2", "0", "1"]
    assert rows["test"] == ["2", "35", "-", "32", "3", "0", "0"]
    assert "warning: vidD: annotation has 25 frames" in result.output


def test_index_of_the_official_layout(affwild2_root):
    data = AffWild2(affwild2_root)
    assert data.splits == {
        "train": ["vidA", "vidB_left", "vidB_right"],
        "validation": ["vidC", "vidD"],
        "test": ["vidE", "vidF_left"],
    }
    assert data.annotation_path("vidB_left").name == "vidB_left.txt"
    assert data.crops_dir("vidA") == affwild2_root / "cropped_aligned" / "vidA"
    assert data.crop_frames("vidF_left") == AFFWILD2_CROPS["vidF_left"]
    assert data.crop_path("vidA", 3).name == "00003.jpg"
    assert data.video_path("vidE").parent.name == "batch1"
    assert data.video_path("vidB_left") is None
    # raw video's container count, annotation length, highest crop
    assert [data.n_frames(v) for v in ("vidE", "vidD", "vidA", "vidF_left")] == [20, 27, 50, 15]
    assert data.frame_counts() == {"vidE": 20, "vidF_left": 15}
    assert data.split_of("vidC") == "validation" and data.split_of("nope") is None
    assert [base_video(n) for n in ("x_left", "x_right", "x", "_left")] == ["x", "x", "x", "_left"]
    with pytest.raises(MambavaError, match="no annotation for video 'vidE'"):
        data.annotation_path("vidE")


def test_two_person_video_maps_to_its_base_raw_video(affwild2_root):
    (affwild2_root / "videos" / "batch1" / "vidE.mp4").rename(affwild2_root / "videos" / "batch1" / "vidF.mp4")
    data = AffWild2(affwild2_root)
    assert data.video_path("vidF_left").name == "vidF.mp4"
    assert data.n_frames("vidF_left") == 20
    assert data.n_frames("vidE") == 18  # no video any more: highest crop


def test_read_annotation_keeps_invalid_marker(affwild2_root):
    data = AffWild2(affwild2_root)
    labels = data.read_annotation("vidA")
    assert labels.shape == (50, 2) and labels.dtype == np.float32
    assert (labels[AFFWILD2_INVALID["vidA"]] == -5).all()
    assert (np.abs(labels[5:]) <= 1).all()
    lines = data.annotation_path("vidA").read_text().splitlines()
    assert lines[0] == "valence,arousal"
    np.testing.assert_array_equal(labels[7], np.array(lines[8].split(","), dtype=np.float32))


def test_annotation_without_header_and_trailing_blank_lines(tmp_path):
    path = tmp_path / "v.txt"
    path.write_text("0.5,-0.25\n-5,-5\n\n\n")
    np.testing.assert_array_equal(read_va_annotation(path), [[0.5, -0.25], [-5, -5]])


@pytest.mark.parametrize(
    "line, why",
    [
        ("0.1;0.2", "malformed"),
        ("0.1,0.2,0.3", "malformed"),
        ("abc,0.2", "malformed"),
        ("", "malformed"),
        ("1.5,0.2", "value out of range"),
        ("0.1,-4", "value out of range"),
        ("nan,0.1", "value out of range"),
    ],
)
def test_bad_annotation_line_names_file_and_line(affwild2_root, line, why):
    path = affwild2_root / "VA_Estimation_Challenge" / "Train_Set" / "vidA.txt"
    lines = path.read_text().splitlines()
    lines[6] = line  # file line 7
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(MambavaError, match=f"vidA.txt:7: {why}"):
        read_va_annotation(path)
    summary = check(affwild2_root, progress=False)  # collected, not raised
    assert not summary.ok and "vidA.txt:7" in summary.problems[0]
    result = CliRunner().invoke(app, ["data", "check", str(affwild2_root)])
    assert result.exit_code == 1 and "vidA.txt:7" in result.output


def test_bad_header_and_empty_annotation(tmp_path):
    (tmp_path / "h.txt").write_text("valence;arousal\n0.1,0.2\n")
    with pytest.raises(MambavaError, match="h.txt:1: expected the header"):
        read_va_annotation(tmp_path / "h.txt")
    (tmp_path / "e.txt").write_text("valence,arousal\n")
    with pytest.raises(MambavaError, match="e.txt: no annotation lines"):
        read_va_annotation(tmp_path / "e.txt")


def test_length_mismatch_policy_truncates_to_shorter_with_warning():
    with pytest.warns(DataWarning, match="vidX: annotation has 30 frames but the video/features have 27"):
        assert align_lengths("vidX", 27, 30) == 27
    with pytest.warns(DataWarning, match="truncated to 20"):
        assert align_lengths("vidY", 25, 20) == 20


def test_video_folder_with_no_crops(affwild2_root):
    for jpg in (affwild2_root / "cropped_aligned" / "vidC").iterdir():
        jpg.unlink()
    data = AffWild2(affwild2_root)
    with pytest.raises(MambavaError, match=r"cropped_aligned/vidC: crop folder has no NNNNN.jpg crops"):
        data.crop_frames("vidC")
    shutil.rmtree(affwild2_root / "cropped_aligned" / "vidE")
    summary = check(affwild2_root, progress=False)
    assert summary.splits["validation"].videos_without_crops == ["vidC"]
    assert summary.splits["validation"].missing_crops == 30 + 2
    assert summary.splits["test"].videos_without_crops == ["vidE"]
    assert summary.splits["test"].frames == 20 + 15  # vidE's count still comes from its raw video
    assert len(summary.problems) == 2 and not summary.ok


def test_unreadable_jpeg(affwild2_root):
    bad = affwild2_root / "cropped_aligned" / "vidC" / "00004.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert read_crop(affwild2_root / "cropped_aligned" / "vidC" / "00003.jpg").shape == (8, 8, 3)
    with pytest.raises(MambavaError, match="vidC/00004.jpg: unreadable image"):
        read_crop(bad)
    assert check(affwild2_root, progress=False).ok  # not decoded by default
    summary = check(affwild2_root, verify_images=True, progress=False)
    assert summary.unreadable_crops == [str(bad)] and "00004.jpg" in summary.problems[0]


def test_test_list_is_lenient_and_found_by_glob(affwild2_root, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("\n# comment\nvideo_name\nv1.mp4\n\nv2_left, extra\n")
    assert read_test_list(listing) == ["v1", "v2_left"]
    listing.write_text("v1\nv2\nv1\n")
    with pytest.raises(MambavaError, match="list.txt:3: video 'v1' listed twice"):
        read_test_list(listing)
    assert find_test_list(affwild2_root).name == TEST_LIST_NAME
    # the other challenges' lists beside it lose to the valence-arousal one
    (affwild2_root / "Expression_Recognition_Challenge_test_set_release.txt").write_text("x\n")
    assert find_test_list(affwild2_root).name == TEST_LIST_NAME
    (affwild2_root / "Valence_Arousal_test_set_copy.txt").write_text("x\n")
    with pytest.raises(MambavaError, match="several test-set lists"):
        AffWild2(affwild2_root)
    data = AffWild2(affwild2_root, test_list=affwild2_root / "Valence_Arousal_test_set_copy.txt")
    assert data.splits["test"] == ["x"]


def test_crop_folders_grouped_one_level_deeper(affwild2_root):
    crops = affwild2_root / "cropped_aligned"
    (crops / "batch1").mkdir()
    (crops / "vidA").rename(crops / "batch1" / "vidA")
    data = AffWild2(affwild2_root)
    assert data.crops_dir("vidA") == crops / "batch1" / "vidA"
    assert data.crop_frames("vidA") == AFFWILD2_CROPS["vidA"]


def test_missing_or_empty_root(tmp_path):
    with pytest.raises(MambavaError, match="dataset root not found"):
        AffWild2(tmp_path / "nope")
    summary = check(tmp_path, progress=False)
    assert not summary.ok and "no videos found" in summary.problems[0]


def test_abaw_release_layout_with_annotations_one_folder_down(affwild2_root):
    # The ABAW release unpacks as <root>/8th_ABAW_Annotations/VA_Estimation_Challenge/Train_Set/*.txt beside
    # <root>/cropped_aligned/: the same counts as the flat layout.
    flat = check(affwild2_root, progress=False)
    release = affwild2_root / "8th_ABAW_Annotations"
    release.mkdir()
    (affwild2_root / "VA_Estimation_Challenge").rename(release / "VA_Estimation_Challenge")
    data = AffWild2(affwild2_root)
    assert data.annotations_root == release / "VA_Estimation_Challenge"
    assert data.splits["train"] == ["vidA", "vidB_left", "vidB_right"]
    summary = check(affwild2_root, progress=False)
    assert summary.ok and summary.splits == flat.splits
    result = CliRunner().invoke(app, ["data", "check", str(affwild2_root)], env={"COLUMNS": "100"})
    assert result.exit_code == 0 and result.output.rstrip().endswith("OK"), result.output
    # training reads the splits from it too (not every .txt under the root, the test-set list among them)
    from mambava.training.data import LabelSource

    labels = LabelSource(affwild2_root)
    assert labels.splits == data.splits and sorted(labels.paths) == ["vidA", "vidB_left", "vidB_right", "vidC", "vidD"]
    # the split folders straight under a sub-folder are found too
    (release / "VA_Estimation_Challenge").rename(affwild2_root / "va_annotations")
    assert AffWild2(affwild2_root).annotations_root == affwild2_root / "va_annotations"
    # two candidates of one kind: an error listing both
    shutil.copytree(affwild2_root / "va_annotations", affwild2_root / "va_copy")
    with pytest.raises(MambavaError, match=r"several annotation folders found \(.*/va_annotations, .*/va_copy\)"):
        AffWild2(affwild2_root)


def test_no_videos_found_says_what_was_looked_for_and_found(affwild2_root):
    (affwild2_root / "VA_Estimation_Challenge").rename(affwild2_root / "annotations_zip")
    (affwild2_root / "annotations_zip" / "Train_Set").rename(affwild2_root / "annotations_zip" / "train")
    (affwild2_root / "annotations_zip" / "Validation_Set").rename(affwild2_root / "annotations_zip" / "val")
    (affwild2_root / TEST_LIST_NAME).unlink()
    summary = check(affwild2_root, progress=False)
    assert not summary.ok and len(summary.problems) == 1
    assert summary.problems[0] == (
        f"{affwild2_root}: no videos found: looked for VA_Estimation_Challenge/{{Train_Set,Validation_Set}}/*.txt "
        "in the root and one folder down, and a *test*set*.txt test-set list there; found annotations_zip/ "
        "(train/, val/), cropped_aligned/ (vidA/, vidB_left/, vidB_right/, vidC/, ...), videos/ (batch1/, batch2/)"
    )
    # annotation folders found but empty: their counts are named
    (affwild2_root / "VA_Estimation_Challenge" / "Train_Set").mkdir(parents=True)
    summary = check(affwild2_root, progress=False)
    assert (
        f"found {affwild2_root / 'VA_Estimation_Challenge'} (Train_Set: 0 .txt, Validation_Set: 0 .txt); "
        "VA_Estimation_Challenge/ (Train_Set/), annotations_zip/" in summary.problems[0]
    )
