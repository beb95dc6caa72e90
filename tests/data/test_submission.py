import numpy as np
import pytest
from typer.testing import CliRunner

from mambava.cli import app
from mambava.cli.data import official_frame_counts
from mambava.core.errors import MambavaError
from mambava.data.affwild2 import AffWild2
from mambava.data.store import FeatureStore
from mambava.data.submission import HEADER, read_frame_counts, validate_submission, write_submission

COUNTS = {"vidE": 20, "vidF_left": 15}


def _predictions(seed=0):
    rng = np.random.default_rng(seed)
    return {video: rng.uniform(-1.4, 1.4, size=(n, 2)).astype(np.float32) for video, n in COUNTS.items()}


def test_submission_round_trips_through_the_validator(affwild2_root, tmp_path):
    data = AffWild2(affwild2_root)
    counts = data.frame_counts()  # test videos: raw video's frames (vidE), highest crop (vidF_left)
    assert counts == COUNTS
    predictions = _predictions()
    path = write_submission(tmp_path / "sub" / "predictions.txt", predictions, counts)
    validate_submission(path, data.splits["test"], counts)
    lines = path.read_text().splitlines()
    assert lines[0] == HEADER and len(lines) == 1 + 20 + 15
    assert lines[1].startswith("vidE/00001.jpg,") and lines[21].startswith("vidF_left/00001.jpg,")
    assert lines[-1].startswith("vidF_left/00015.jpg,")
    values = np.array([line.split(",")[1:] for line in lines[1:]], dtype=np.float64)
    expected = np.clip(np.concatenate([predictions["vidE"], predictions["vidF_left"]]), -1, 1)
    np.testing.assert_allclose(values, expected, atol=5e-7)
    assert values.max() == 1.0 and values.min() == -1.0  # clipped
    assert not list(path.parent.glob(".*"))  # atomic: no temporary left

    for option in (
        ["--root", str(affwild2_root)],
        ["--crops", str(affwild2_root / "cropped_aligned"), "--test-list", str(data.test_list_path)],
    ):
        result = CliRunner().invoke(app, ["submit", "validate", str(path), *option])
        if option[0] == "--crops":  # highest crop of vidE is 18, its video has 20 frames
            assert isinstance(result.exception, MambavaError)
            assert "frame 19 of 'vidE' outside 1..18" in str(result.exception)
        else:
            assert result.exit_code == 0 and "OK" in result.output, result.output


def test_validate_with_frame_counts_from_the_feature_store(tmp_path):
    store = FeatureStore(tmp_path / "features")
    for video, n in COUNTS.items():
        store.write(video, np.zeros((n, 4)), np.ones(n, bool), fps=30, backbone="b")
    listing = tmp_path / "test.txt"
    listing.write_text("vidE\nvidF_left\n")
    path = write_submission(tmp_path / "s.txt", _predictions())
    command = ["submit", "validate", str(path), "--features", str(store.root), "--test-list", str(listing)]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(app, ["submit", "validate", str(path), "--test-list", str(listing)])
    assert "give exactly one of --frame-counts, --root, --crops, --features" in str(result.exception)


def _edit(path, number, text):
    """Replace (or with text=None delete) line `number` (1-based) of a file."""
    lines = path.read_text().splitlines()
    if text is None:
        del lines[number - 1]
    else:
        lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "number, text, problem",
    [
        (1, "image,valence,arousal", r"s.txt:1: header must be"),
        (5, "vidE/00004.jpg,0.1", r"s.txt:5: expected 3 comma-separated fields"),
        (5, "vidE/4.jpg,0.1,0.2", r"s.txt:5: image_location 'vidE/4.jpg' is not <video>/<NNNNN>.jpg"),
        (5, "vidX/00004.jpg,0.1,0.2", r"s.txt:5: 'vidX' is not a test-set video"),
        (5, "vidE/00021.jpg,0.1,0.2", r"s.txt:5: frame 21 of 'vidE' outside 1..20"),
        (5, "vidE/00003.jpg,0.1,0.2", r"s.txt:5: vidE/00003.jpg appears twice"),
        (5, "vidE/00004.jpg,1.2,0.2", r"s.txt:5: valence '1.2' is not a number in \[-1, 1\]"),
        (5, "vidE/00004.jpg,0.1,nan", r"s.txt:5: arousal 'nan' is not a number in \[-1, 1\]"),
        (5, "", r"s.txt:5: blank line"),
        (5, None, r"s.txt: vidE/00004.jpg missing \(1 of 20 frames of 'vidE' absent\)"),
    ],
)
def test_validator_names_the_first_problem(tmp_path, number, text, problem):
    path = write_submission(tmp_path / "s.txt", _predictions(), COUNTS)
    _edit(path, number, text)
    with pytest.raises(MambavaError, match=problem):
        validate_submission(path, list(COUNTS), COUNTS)


def test_validator_accepts_any_line_order_and_crlf(tmp_path):
    path = write_submission(tmp_path / "s.txt", _predictions(), COUNTS)
    header, *rows = path.read_text().splitlines()
    path.write_bytes(("\r\n".join([header, *reversed(rows)]) + "\r\n").encode())
    validate_submission(path, list(COUNTS), COUNTS)
    with open(path, "a") as handle:
        handle.write("\n \n")  # trailing blank lines are harmless
    validate_submission(path, list(COUNTS), COUNTS)
    with pytest.raises(MambavaError, match="vidF_left/00016.jpg missing"):
        validate_submission(path, list(COUNTS), COUNTS | {"vidF_left": 16})
    path.write_text(HEADER + "\n")
    with pytest.raises(MambavaError, match="vidE/00001.jpg missing"):
        validate_submission(path, list(COUNTS), COUNTS)


def test_writer_refuses_predictions_that_do_not_fit(tmp_path):
    predictions = _predictions()
    with pytest.raises(MambavaError, match="no predictions for 'vidG'"):
        write_submission(tmp_path / "s.txt", predictions, COUNTS | {"vidG": 3})
    with pytest.raises(MambavaError, match="19 predictions for 'vidE', which has 20 frames"):
        write_submission(tmp_path / "s.txt", predictions | {"vidE": predictions["vidE"][:19]}, COUNTS)
    predictions["vidF_left"][4, 1] = np.nan
    with pytest.raises(MambavaError, match="NaN/Inf prediction for vidF_left/00005.jpg"):
        write_submission(tmp_path / "s.txt", predictions, COUNTS)
    with pytest.raises(MambavaError, match=r"must be \(T, 2\)"):
        write_submission(tmp_path / "s.txt", {"vidE": np.zeros(20)})
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_frame_counts_from_abaw_sample_submission_or_count_list(tmp_path):
    sample = tmp_path / "sample.txt"
    sample.write_text(
        "image_location,valence,arousal\n"
        + "".join(f"{video}/{frame:05d}.jpg,,\n" for video, n in COUNTS.items() for frame in range(1, n + 1))
    )
    assert read_frame_counts(sample) == COUNTS
    listing = tmp_path / "frames.txt"  # a bare frame list, any order: the count is the highest frame
    listing.write_text("vidF_left/00015.jpg\nvidE/00020.jpg\nvidE/00001.jpg\n")
    assert read_frame_counts(listing) == {"vidF_left": 15, "vidE": 20}
    counts = tmp_path / "counts.txt"
    counts.write_text("video frames\nvidE 20\n\n# two-person video\nvidF_left 15\n")
    assert read_frame_counts(counts) == COUNTS
    for text, problem in [
        ("vidE/00001.jpg,0,0\nvidE/00001.jpg,0,0\n", r"bad.txt:2: vidE/00001.jpg listed twice \(first on line 1\)"),
        ("vidE/1.jpg\n", r"bad.txt:1: 'vidE/1.jpg' is not <video>/<NNNNN>.jpg"),
        ("vidE,20\nvidE,21\n", r"bad.txt:2: video 'vidE' counted twice"),
        ("vidE,20\nvidF_left/00001.jpg\n", r"bad.txt:2: .* mixes a per-video count list and a frame list"),
        ("vidE,20\nvidF_left,x\n", r"bad.txt:2: expected '<video>,<frames>' or '<video>/<NNNNN>.jpg'"),
        ("image_location,valence,arousal\n", r"bad.txt: no frame counts"),
    ]:
        (tmp_path / "bad.txt").write_text(text)
        with pytest.raises(MambavaError, match=problem):
            read_frame_counts(tmp_path / "bad.txt")


def test_submission_frame_counts_come_from_an_official_source(affwild2_root, tmp_path):
    counts = tmp_path / "counts.txt"
    counts.write_text("vidE,20\nvidF_left,15\n")
    # --frame-counts alone: its videos; with the root's test list: the same videos in the list's order
    assert official_frame_counts(None, None, counts, "x") == (["vidE", "vidF_left"], COUNTS)
    assert official_frame_counts(None, affwild2_root, counts, "x") == (["vidE", "vidF_left"], COUNTS)
    counts.write_text("vidE,20\nvidF_left,15\nvidZ,3\n")
    with pytest.raises(MambavaError, match=r"counts.txt: does not cover .*; 'vidZ' is not a test video \(1 extra\)"):
        official_frame_counts(None, affwild2_root, counts, "x")
    # without it, the raw videos: vidF_left has none (its highest crop is no frame count to submit against)
    with pytest.raises(MambavaError, match=r"no raw video for test video 'vidF_left' .*pass --frame-counts FILE"):
        official_frame_counts(None, affwild2_root, None, "x")
    (affwild2_root / "videos" / "batch1" / "vidE.mp4").rename(affwild2_root / "videos" / "batch1" / "vidF.mp4")
    (affwild2_root / "cropped_aligned" / "vidE").rename(affwild2_root / "cropped_aligned" / "vidF_right")
    (affwild2_root / "Valence_Arousal_Estimation_Challenge_test_set_release.txt").write_text("vidF_left\nvidF_right\n")
    assert official_frame_counts(None, affwild2_root, None, "x") == (
        ["vidF_left", "vidF_right"],
        {"vidF_left": 20, "vidF_right": 20},
    )
    with pytest.raises(MambavaError, match="submit write: pass --frame-counts FILE"):
        official_frame_counts(None, None, None, "submit write")


def test_validate_against_abaw_frame_counts(tmp_path):
    path = write_submission(tmp_path / "s.txt", _predictions(), COUNTS)
    counts = tmp_path / "counts.txt"
    counts.write_text("vidE,20\nvidF_left,15\n")
    result = CliRunner().invoke(app, ["submit", "validate", str(path), "--frame-counts", str(counts)])
    assert result.exit_code == 0 and "OK: " in result.output and "35 frames" in result.output, result.output
    counts.write_text("vidE,21\nvidF_left,15\n")
    result = CliRunner().invoke(app, ["submit", "validate", str(path), "--frame-counts", str(counts)])
    assert "s.txt: vidE/00021.jpg missing (1 of 21 frames of 'vidE' absent)" in str(result.exception)
