"""Audio-visual fusion models (`kind: fusion`): shapes, causality, step = full pass, the mask removing the
audio, modality dropout, the config keys and the checkpoint round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mambava.core.errors import MambavaError
from mambava.inference.stream import stream_features
from mambava.temporal import (
    FusionMambaVA,
    build_temporal_model,
    count_parameters,
    load_temporal_model,
    model_input_dim,
    resolve_model_config,
    save_temporal_model,
)

V, A = 12, 6
WIDTH = V + A + 1
SMALL = {
    "input_dim": V,
    "audio_dim": A,
    "tcn_channels": [16, 16],
    "audio_tcn_channels": [8],
    "kernel_size": 3,
    "d_model": 16,
    "n_layers": 2,
    "d_state": 4,
    "dt_rank": 2,
    "head_hidden": 8,
    "dropout": 0.0,
}


def fused(fusion: str, **extra) -> FusionMambaVA:
    torch.manual_seed(0)
    return build_temporal_model({**SMALL, "modalities": ["visual", "audio"], "fusion": fusion, **extra}).eval()


def inputs(b: int, t: int, seed: int = 1, present: float = 0.7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, WIDTH, generator=g)
    x[..., -1] = (torch.rand(b, t, generator=g) < present).float()
    return x


@pytest.mark.parametrize("fusion", ["early", "mid"])
def test_shape_and_causality(fusion):
    model = fused(fusion)
    assert isinstance(model, FusionMambaVA) and model.kind == "fusion" and model_input_dim(model) == WIDTH
    x = inputs(2, 60)
    with torch.no_grad():
        y = model(x)
        assert y.shape == (2, 60, 2) and torch.isfinite(y).all()
        for t in (0, 20, 45):
            later = x.clone()
            later[:, t + 1 :, :-1] = torch.randn(2, 59 - t, WIDTH - 1)  # the future's features...
            later[:, t + 1 :, -1] = 1 - later[:, t + 1 :, -1]  # ...and its mask
            out = model(later)
            assert torch.equal(out[:, : t + 1], y[:, : t + 1])
            assert (out[:, t + 1 :] - y[:, t + 1 :]).abs().max() > 1e-4  # the future does change


@pytest.mark.parametrize("fusion", ["early", "mid"])
def test_step_equals_full_pass(fusion):
    model = fused(fusion)
    x = inputs(3, 320)
    with torch.no_grad():
        full = model(x)
    state = model.init_state(3)
    stepped = torch.stack([model.step(x[:, t], state)[0] for t in range(320)], 1)
    assert (stepped - full).abs().max() < 1e-4
    # `stream` (one stream, the features as a (T, D) array) gives the same
    streamed = np.stack(list(stream_features(model, x[0].numpy())))
    assert np.abs(streamed - full[0].numpy()).max() < 1e-4


@pytest.mark.parametrize("fusion", ["early", "mid"])
def test_masked_audio_is_ignored(fusion):
    model = fused(fusion)
    x = inputs(2, 80)
    x[:, 30:50, -1] = 0.0  # no sound on frames 30..49
    other = x.clone()
    other[:, 30:50, V:-1] = torch.randn(2, 20, A) * 10
    other[0, 35, V] = float("nan")  # a masked frame's values are never read, not even a NaN
    with torch.no_grad():
        assert torch.equal(model(x), model(other))
        x[:, :, -1] = 0.0  # no sound at all: the audio values change nothing
        noise = x.clone()
        noise[..., V:-1] = torch.randn(2, 80, A)
        assert torch.equal(model(x), model(noise))
        x[:, :, -1] = 1.0  # with sound they do
        noise[:, :, -1] = 1.0
        assert (model(x) - model(noise)).abs().max() > 1e-4


def test_mid_fusion_without_sound_is_the_visual_path():
    # the gate is 0 where the mask is: the joined features are the visual TCN's alone
    model = fused("mid")
    x = inputs(1, 40)
    x[..., -1] = 0.0
    visual, audio, mask = model._split(x)
    with torch.no_grad():
        ha = model.audio_temporal(torch.cat([audio, mask], -1))
        hv = model.temporal(visual)
        assert torch.equal(model._join(hv, ha, mask), hv)


def test_modality_dropout_masks_whole_windows_in_training_only():
    model = fused("early", modality_dropout=0.5).train()
    x = inputs(400, 5, present=1.0)
    torch.manual_seed(3)
    _, _, mask = model._split(x)
    per_window = mask[..., 0]
    assert ((per_window == 0).all(1) | (per_window == 1).all(1)).all()  # whole windows
    dropped = float((per_window[:, 0] == 0).float().mean())
    assert 0.4 < dropped < 0.6  # 400 windows at p = 0.5: 5 sigma is 0.125
    model.eval()
    assert model._split(x)[2].min() == 1.0


@pytest.mark.parametrize("fusion", ["early", "mid"])
def test_save_load_round_trip(fusion, tmp_path):
    model = fused(fusion)
    path = save_temporal_model(model, tmp_path / "fusion.safetensors")
    loaded = load_temporal_model(path)
    assert loaded.kind == "fusion" and loaded.config["fusion"] == fusion
    assert count_parameters(loaded.model) == count_parameters(model)
    x = inputs(1, 50)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), model(x))


@pytest.mark.parametrize("fusion", ["early", "mid"])
def test_audio_is_z_scored_inside_with_statistics_kept_in_the_checkpoint(fusion, tmp_path):
    from safetensors.torch import load_file, save_file

    model = fused(fusion)
    assert not model.audio_normalised  # mean 0, std 1 until training sets them
    x = inputs(2, 80)
    mean, std = torch.linspace(-3, 900, A), torch.linspace(0.05, 400, A)
    raw = x.clone()
    raw[..., V:-1] = x[..., V:-1] * std + mean  # features at eGeMAPS-like scales
    with torch.no_grad():
        plain = model(x)
        model.set_audio_normalisation(mean.numpy(), std.numpy())
        assert model.audio_normalised
        assert (model(raw) - plain).abs().max() < 1e-4  # raw features in, the same as z-scored ones
        state = model.init_state(2)
        stepped = torch.stack([model.step(raw[:, t], state)[0] for t in range(80)], 1)
        assert (stepped - plain).abs().max() < 1e-4  # the streaming step too
    path = save_temporal_model(model, tmp_path / "fusion.safetensors")
    loaded = load_temporal_model(path).model
    assert torch.equal(loaded.audio_mean, mean) and torch.equal(loaded.audio_std, std)
    with torch.no_grad():
        assert torch.equal(loaded(raw), model(raw))
    # a file written before the statistics existed loads as mean 0, std 1 (what it was trained with)
    old = {k: v for k, v in load_file(str(path)).items() if k not in ("audio_mean", "audio_std")}
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    save_file(old, str(tmp_path / "old.safetensors"), metadata=metadata)
    before = load_temporal_model(tmp_path / "old.safetensors").model
    assert not before.audio_normalised
    with torch.no_grad():
        assert torch.equal(before(x), plain)
    with pytest.raises(MambavaError, match="audio statistics of 3 columns"):
        model.set_audio_normalisation(np.zeros(3), np.ones(3))


def test_config_keys():
    # [visual] keeps the paper model: its class, parameters and checkpoint keys
    paper = build_temporal_model({"modalities": ["visual"]})
    assert type(paper).__name__ == "MambaVA" and count_parameters(paper) == 67_155_598
    assert resolve_model_config({"modalities": ["visual", "audio"]})["kind"] == "fusion"
    assert resolve_model_config({"kind": "fusion"})["modalities"] == ["visual", "audio"]
    mid = fused("mid")
    assert {k.split(".")[0] for k in mid.state_dict()} == {
        "temporal",
        "audio_temporal",
        "gate",
        "mamba",
        "head",
        "audio_mean",
        "audio_std",
    }
    for bad, words in [
        ({"modalities": ["audio"]}, "must be [visual] or [visual, audio]"),
        ({"kind": "tcn", "modalities": ["visual", "audio"]}, "kind 'tcn' takes visual features only"),
        ({"kind": "fusion", "fusion": "late"}, "'model.fusion' must be one of early, mid"),
        ({"kind": "fusion", "modality_dropout": 1.0}, "modality_dropout"),
        ({"kind": "fusion", "audio_tcn_channels": [8, 0]}, "must be positive channel counts"),
    ]:
        with pytest.raises(MambavaError, match=None) as error:
            resolve_model_config(bad)
        assert words in str(error.value)
    with pytest.raises(MambavaError, match="expects 19 input columns"):
        fused("early")(torch.zeros(1, 4, V))


def test_stream_batch_rows_equal_their_own_streams():
    # StreamBatch: a row that joins later (join_last) and one that leaves, as with the paper model
    from mambava.inference.stream import StreamBatch

    model = fused("mid")
    x = inputs(2, 60).numpy()
    batch = StreamBatch(model)
    batch.join("a")
    out = {"a": [], "b": []}
    for t in range(60):
        if t == 20:
            out["b"].append(batch.join_last({"b": x[1, 0]})["b"])
        step = batch.step({"a": x[0, t], **({"b": x[1, t - 19]} if t >= 20 else {})})
        for key, y in step.items():
            out[key].append(y)
    with torch.no_grad():
        full = model(torch.from_numpy(x))
    assert np.abs(np.stack(out["a"]) - full[0].numpy()).max() < 1e-4
    assert np.abs(np.stack(out["b"]) - full[1, :41].numpy()).max() < 1e-4


def test_predict_takes_joined_features():
    from mambava.inference.predict import Predictor

    model = fused("early")
    x = inputs(1, 90)[0].numpy()
    predictor = Predictor(model, windowing="full")
    with torch.no_grad():
        expected = np.clip(model(torch.from_numpy(x)[None])[0].numpy(), -1, 1)
    assert np.abs(predictor.predict_features(x) - expected).max() < 1e-5
    with pytest.raises(MambavaError, match="takes visual features only"):
        Predictor(build_temporal_model({**SMALL, "kind": "tcn"}), audio="egemaps,logmel")


def test_predict_audio_joins_each_frames_own_sound(media_dir):
    """face_noface.mov: a face for about half the clip, sound from frame 73 on (its track starts at 2.43 s).
    `predict --audio` joins each frame's own sound (a no-face frame holds the last face's features, not its
    sound) and marks it in `voice`; the values equal the model run by hand on the joined features."""
    import warnings

    from mambava.audio import frame_features
    from mambava.backbone import FeatureExtractor, ViTConfig, ViTEncoder
    from mambava.data.store import forward_fill
    from mambava.data.timebase import to_grid
    from mambava.inference.predict import COLUMNS, Predictor

    torch.manual_seed(0)
    encoder = ViTEncoder(ViTConfig(img_size=32, embed_dim=24, depth=1, num_heads=2, name="tiny"))
    model = build_temporal_model({**SMALL, "input_dim": 24, "audio_dim": 89, "kind": "fusion", "fusion": "mid"}).eval()
    assert Predictor(model, FeatureExtractor(encoder)).audio == ["egemaps", "logmel"]  # on by default: its 89 columns
    odd = build_temporal_model({**SMALL, "input_dim": 24, "audio_dim": 7, "kind": "fusion"})
    with pytest.raises(
        MambavaError,
        match="7 audio features per frame: pass --audio with the feature sets it was trained on, or --no-audio",
    ):
        Predictor(odd, FeatureExtractor(encoder))
    with pytest.raises(MambavaError, match="--audio logmel: 64 audio features per frame, but the fusion model"):
        Predictor(model, FeatureExtractor(encoder), audio="logmel")
    predictor = Predictor(model, FeatureExtractor(encoder, batch_size=16), audio="egemaps,logmel")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        extracted = predictor.video_features(media_dir / "face_noface.mov")
        sound = frame_features(media_dir / "face_noface.mov", "egemaps,logmel")
        table = predictor.predict_video(media_dir / "face_noface.mov")
    assert list(table.columns) == COLUMNS + ["voice", "model"] and len(table) == 169
    with pytest.raises(MambavaError, match="audio is not supported live .* stream with --no-audio"):
        predictor.stream(0)  # a webcam: refused before it is opened
    assert table["voice"].tolist() == [0] * 73 + [1] * 96
    ((name, track),) = extracted.tracks.items()
    assert not track.present[120:].any()  # the title card: no face, but sound
    x = np.concatenate(
        [
            forward_fill(track.features, track.present),
            np.where(sound.mask[:, None], sound.features, 0),
            sound.mask[:, None],
        ],
        1,
    ).astype(np.float32)
    grid = to_grid(extracted.times, 30.0, extracted.source_times)  # the model's frame grid (the clip: 26.4 fps)
    with torch.no_grad():
        expected = np.clip(model(torch.from_numpy(x[grid.held])[None])[0].numpy(), -1, 1)[grid.tick]
    np.testing.assert_allclose(table[["valence", "arousal"]].to_numpy(), expected, atol=1e-5)
