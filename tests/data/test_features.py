import json
import tracemalloc

import numpy as np
import pytest
import torch

from mambava.core.errors import MambavaError
from mambava.data.store import FeatureStore, forward_fill, forward_fill_index


def _features(n=50, d=8, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def test_write_read_round_trip(tmp_path):
    store = FeatureStore(tmp_path / "store")
    x = _features()
    mask = np.ones(50, bool)
    mask[[3, 4, 10]] = False
    store.write("vid1", x, mask, fps=30.0, backbone="mae-vit-l", dtype="float32", extra={"layer": -1})
    store.write("vid2_left", x[:20], mask[:20], fps=25, backbone="mae-vit-l")  # float16 default
    assert store.names() == ["vid1", "vid2_left"] and store.has("vid1") and "vid2_left" in store
    record = store.read("vid1")
    assert isinstance(record.features, np.memmap) and not record.features.flags.writeable
    assert (record.n_frames, record.dim, record.fps) == (50, 8, 30.0)
    assert (record.backbone, record.dtype) == ("mae-vit-l", "float32")
    assert record.extra == {"layer": -1}
    filled = forward_fill(x, mask)  # rows without a face are stored forward-filled
    np.testing.assert_array_equal(filled[[3, 4, 10]], x[[2, 2, 9]])
    np.testing.assert_array_equal(record.features, filled)
    np.testing.assert_array_equal(record.mask, mask)
    half = store.read("vid2_left")
    assert half.features.dtype == np.float16
    np.testing.assert_allclose(half.features, filled[:20], rtol=1e-3, atol=1e-3)
    window, window_mask = store.read_window("vid1", 2, 12)
    assert window.dtype == np.float32 and window.flags.writeable
    np.testing.assert_array_equal(window, filled[2:12])
    np.testing.assert_array_equal(window_mask, mask[2:12])
    meta = json.loads((tmp_path / "store" / "vid1" / "meta.json").read_text())
    assert meta["present_frames"] == 47 and meta["dtype"] == "float32"


def test_reading_a_window_does_not_load_the_video(tmp_path):
    store = FeatureStore(tmp_path)
    n, d = 20_000, 256  # 20 MB of float32
    with store.writer("long", n, d, fps=30, backbone="b", dtype="float32") as writer:
        for start in range(0, n, 4096):
            block = np.full((min(4096, n - start), d), start, np.float32)
            writer.put(start, block)
    tracemalloc.start()
    try:
        x, mask = store.read_window("long", 12_000, 12_300)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert x.shape == (300, 256) and mask.all() and x[0, 0] == 8192
    assert peak < 2_000_000, peak  # one window is 300 KB; the whole video 20 MB


def test_streaming_writer_forward_fills_missing_frames(tmp_path):
    store = FeatureStore(tmp_path)
    x = _features(30, 4)
    present = np.zeros(30, bool)
    present[[2, 3, 7, 8, 20]] = True
    with store.writer("v", 30, 4, fps=30, backbone="b", dtype="float32") as writer:
        frames = np.flatnonzero(present)
        writer.put_frames(frames[:3], x[frames[:3]])
        writer.put_frames(torch.from_numpy(frames[3:]), torch.from_numpy(x[frames[3:]]))
        assert not store.has("v")  # invisible until finished
    record = store.read("v")
    np.testing.assert_array_equal(record.mask, present)
    expected_rows = [2, 2, 2, 3, 3, 3, 3, 7, 8] + [8] * 11 + [20] * 10  # before the first face: the first face
    np.testing.assert_array_equal(record.features, x[expected_rows])
    np.testing.assert_array_equal(forward_fill(x * np.where(present, 1, np.nan)[:, None], present), x[expected_rows])


def test_forward_fill_numpy_and_torch():
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    present = np.array([False, True, False, False, True, False])
    np.testing.assert_array_equal(forward_fill_index(present), [1, 1, 1, 1, 4, 4])
    filled = forward_fill(x, present)
    np.testing.assert_array_equal(filled, x[[1, 1, 1, 1, 4, 4]])
    assert filled is not x and x[0, 0] == 0  # input kept
    t = forward_fill(torch.from_numpy(x), torch.from_numpy(present))
    assert isinstance(t, torch.Tensor)
    np.testing.assert_array_equal(t.numpy(), filled)
    np.testing.assert_array_equal(forward_fill(x, np.zeros(6, bool)), np.zeros_like(x))  # no face at all


def test_half_written_entries_are_redone(tmp_path):
    store = FeatureStore(tmp_path)
    x = _features(40, 4)
    with pytest.raises(RuntimeError):
        with store.writer("v", 40, 4, fps=30, backbone="b") as writer:
            writer.put(0, x[:20])
            raise RuntimeError("killed mid-extraction")
    assert not store.has("v") and store.names() == []
    assert [p.name for p in (tmp_path / "v").iterdir()] == []  # temporary file gone
    # A process killed between renaming the arrays and writing meta.json leaves arrays without metadata.
    np.save(tmp_path / "v" / "features.npy", x[:20])
    np.save(tmp_path / "v" / "mask.npy", np.ones(20, bool))
    (tmp_path / "v" / ".features.npy.abc.tmp").write_bytes(b"half")
    assert not store.has("v")
    todo = [name for name in ["v", "w"] if not store.has(name)]  # what a resumed extraction does
    for name in todo:
        store.write(name, x, np.ones(40, bool), fps=30, backbone="b")
    assert store.names() == ["v", "w"] and store.read("v").n_frames == 40
    assert not list((tmp_path / "v").glob(".*"))
    # Replacing a finished entry hides it until the new one is complete.
    with pytest.raises(RuntimeError):
        with store.writer("w", 10, 4, fps=30, backbone="b"):
            assert not store.has("w")
            raise RuntimeError
    assert store.names() == ["v"]


def test_nan_or_inf_features_are_refused_on_write(tmp_path):
    store = FeatureStore(tmp_path)
    x = _features(10, 4)
    x[6, 1] = np.nan
    with pytest.raises(MambavaError, match=r"v/features.npy: NaN/Inf in the features of frame 6"):
        store.write("v", x, np.ones(10, bool), fps=30, backbone="b")
    x[6, 1] = 1e6  # finite in float32, inf in float16
    with pytest.raises(MambavaError, match="frame 6"):
        store.write("v", x, np.ones(10, bool), fps=30, backbone="b", dtype="float16")
    store.write("v", x, np.ones(10, bool), fps=30, backbone="b", dtype="float32")
    with pytest.raises(MambavaError, match="frame 9"):
        with store.writer("u", 10, 4, fps=30, backbone="b") as writer:
            writer.put(5, np.concatenate([x[:4], np.full((1, 4), np.inf)]))
    assert store.names() == ["v"]


def test_nan_on_disk_is_caught_when_read(tmp_path):
    store = FeatureStore(tmp_path)
    store.write("v", _features(100, 4), np.ones(100, bool), fps=30, backbone="b", dtype="float32")
    corrupt = np.load(tmp_path / "v" / "features.npy", mmap_mode="r+")
    corrupt[57, 2] = np.inf
    corrupt.flush()
    del corrupt
    x, _ = store.read_window("v", 0, 50)  # the bad row is elsewhere
    with pytest.raises(MambavaError, match="v/features.npy: NaN/Inf in the features of frame 57"):
        store.read_window("v", 50, 60)
    with pytest.raises(MambavaError, match="frame 57"):
        store.read("v", verify=True)


def test_bad_arguments_and_corrupt_entries(tmp_path):
    store = FeatureStore(tmp_path)
    x = _features(10, 4)
    for name in ("", "a/b", ".hidden", ".."):
        with pytest.raises(MambavaError, match="invalid feature entry name"):
            store.write(name, x, np.ones(10, bool), fps=30, backbone="b")
    with pytest.raises(MambavaError, match="fps must be a positive number"):
        store.write("v", x, np.ones(10, bool), fps=0, backbone="b")
    with pytest.raises(MambavaError, match="dtype must be one of"):
        store.write("v", x, np.ones(10, bool), fps=30, backbone="b", dtype="int8")
    with pytest.raises(MambavaError, match="present mask of shape"):
        store.write("v", x, np.ones(9, bool), fps=30, backbone="b")
    with pytest.raises(MambavaError, match="no complete feature entry 'nope'"):
        store.read("nope")
    store.write("v", x, np.ones(10, bool), fps=30, backbone="b")
    np.save(tmp_path / "v" / "features.npy", x[:5])
    with pytest.raises(MambavaError, match=r"v/features.npy: holds float32 \(5, 4\), meta.json says float16 \(10, 4\)"):
        store.read("v")
    store.remove("v")
    assert store.names() == [] and not (tmp_path / "v").exists()
