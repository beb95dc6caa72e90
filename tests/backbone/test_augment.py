"""Alignment jitter (mambava.backbone.augment): the transform is exactly the stated similarity, and the
training crops get it only when asked."""

import numpy as np
import pytest

from mambava.backbone.augment import AlignJitter, jitter_matrix, warp_crop
from mambava.core.errors import MambavaError


def _image(size=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_integer_shift_moves_every_pixel_exactly():
    img = _image()
    out = warp_crop(img, jitter_matrix(16, dx=3, dy=-2, log_scale=0.0, angle_deg=0.0))
    # output pixel (x + 3, y - 2) takes input pixel (x, y); uncovered pixels replicate the crop's edge
    np.testing.assert_array_equal(out[:14, 3:], img[2:, :13])
    np.testing.assert_array_equal(out[:14, :3], np.repeat(img[2:, :1], 3, axis=1))
    np.testing.assert_array_equal(out[14:], np.repeat(out[13:14], 2, axis=0))


def test_quarter_turn_about_the_centre_is_a_rotation_of_the_array():
    img = _image(15)
    out = warp_crop(img, jitter_matrix(15, 0.0, 0.0, 0.0, 90.0))
    # p -> c + R(90°)(p - c): (x, y) -> (14 - y, x), i.e. out[x, 14 - y] = img[y, x]
    ys, xs = np.mgrid[0:15, 0:15]
    np.testing.assert_array_equal(out[xs, 14 - ys], img[ys, xs])


def test_matrix_is_the_stated_similarity():
    m = jitter_matrix(112, dx=1.5, dy=-0.5, log_scale=0.05, angle_deg=3.0)
    c = np.array([55.5, 55.5])
    np.testing.assert_allclose(m[:, :2] @ c + m[:, 2], c + [1.5, -0.5], atol=1e-12)  # the centre only shifts
    assert np.sqrt(np.linalg.det(m[:, :2])) == pytest.approx(np.exp(0.05), abs=1e-12)
    assert np.degrees(np.arctan2(m[1, 0], m[0, 0])) == pytest.approx(3.0, abs=1e-12)


def test_sample_spans_the_ranges_scaled_to_the_crop():
    jitter = AlignJitter(shift=2.0, scale=0.04, angle=5.0)
    high = jitter.sample(224, lambda: np.ones(4))  # u = 1: the upper end of every range
    np.testing.assert_allclose(high, jitter_matrix(224, 4.0, 4.0, 0.04, 5.0), atol=1e-12)  # shift in px at 112
    low = jitter.sample(112, lambda: np.zeros(4))
    np.testing.assert_allclose(low, jitter_matrix(112, -2.0, -2.0, -0.04, -5.0), atol=1e-12)
    assert not AlignJitter().active and jitter.active
    with pytest.raises(MambavaError, match="jitter"):
        AlignJitter(shift=-1.0)


def test_crop_images_jitter_only_when_asked(tmp_path):
    import cv2
    import torch

    from mambava.backbone.finetune import CropImages

    path = tmp_path / "00001.png"  # lossless, so the comparison below is exact
    cv2.imwrite(str(path), _image(112)[:, :, ::-1])
    items = [(path, np.zeros(2, np.float32))]
    plain = CropImages(items, 112)[0][0]
    assert torch.equal(CropImages(items, 112, jitter=AlignJitter())[0][0], plain)
    torch.manual_seed(0)
    u = torch.rand(4).numpy()
    torch.manual_seed(0)
    jittered = CropImages(items, 112, jitter=AlignJitter(2.0, 0.03, 2.0))[0][0]
    from mambava.data.affwild2 import read_crop

    expected = warp_crop(read_crop(path), AlignJitter(2.0, 0.03, 2.0).sample(112, lambda: u))
    np.testing.assert_array_equal(jittered.permute(1, 2, 0).numpy(), expected)


@pytest.mark.parametrize("value", ["1,2", "a,b,c", "1,-0.1,2"])
def test_cli_align_jitter_bad_value_is_one_line_error(tmp_path, value):
    """A bad --align-jitter stops before any model is built, with one line (the CLI's main exits 2 on it)."""
    from typer.testing import CliRunner

    from mambava.cli import app

    result = CliRunner().invoke(app, ["finetune-backbone", str(tmp_path), "--random-init", "--align-jitter", value])
    assert isinstance(result.exception, MambavaError)
    assert "jitter" in str(result.exception) and "\n" not in str(result.exception)
