"""Training a fusion model: the audio store joined to the visual one per frame (`AudioVisualStore`), the
config checks, and a learning test in which arousal is heard, not seen."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support import smooth_latent

from mambava.core.errors import MambavaError
from mambava.data.store import AudioVisualStore, FeatureStore
from mambava.data.windows import WindowDataset
from mambava.training import load_config, train
from mambava.training.data import check_model_input
from mambava.training.evaluate import evaluate_checkpoint

VIS, AUD = 8, 4


def test_joined_store_rows(tmp_path):
    visual, audio = FeatureStore(tmp_path / "v"), FeatureStore(tmp_path / "a")
    rng = np.random.default_rng(0)
    fv = rng.normal(size=(10, VIS)).astype(np.float32)
    fa = rng.normal(size=(7, AUD)).astype(np.float32)  # the sound's entry is 3 frames shorter
    sound = np.array([1, 1, 0, 1, 1, 1, 0], bool)
    for name in ("clip", "clip2_left", "mute"):
        visual.write(name, fv, np.ones(10, bool), fps=30.0, backbone="t", dtype="float32")
    audio.write("clip", fa, sound, fps=30.0, backbone="audio:t", dtype="float32")
    audio.write("clip2", fa * 2, sound, fps=30.0, backbone="audio:t", dtype="float32")  # the video of a face track
    joined = AudioVisualStore(visual, audio)
    assert joined.meta("clip")["dim"] == VIS + AUD + 1 and joined.audio_name("clip2_left") == "clip2"
    x, present = joined.read("clip").window(2, 10)
    assert x.shape == (8, VIS + AUD + 1) and present.all()
    np.testing.assert_array_equal(x[:, :VIS], fv[2:10])
    np.testing.assert_array_equal(x[:, -1], [0, 1, 1, 1, 0, 0, 0, 0])  # masked, then past the sound's end
    np.testing.assert_array_equal(x[1:4, VIS:-1], fa[3:6])
    assert not x[0, VIS:-1].any() and not x[4:, VIS:-1].any()  # masked frames: zeros, never stale values
    np.testing.assert_array_equal(joined.read("clip2_left").window(0, 2)[0][:, VIS:-1], fa[:2] * 2)
    x, _ = joined.read("mute").window(0, 10)  # no audio entry: all masked
    assert not x[:, VIS:].any()
    # a training window reads the joined rows
    window = WindowDataset(joined, ["clip"], {"clip": np.zeros((10, 2), np.float32)}, window=4, stride=4)[0]
    np.testing.assert_array_equal(window["x"].numpy(), joined.read("clip").window(0, 4)[0])
    audio.write("fast", fa, sound, fps=60.0, backbone="audio:t", dtype="float32")
    visual.write("fast", fv, np.ones(10, bool), fps=30.0, backbone="t", dtype="float32")
    with pytest.raises(MambavaError, match="audio features at 60 fps, the visual entry 'fast' at 30"):
        joined.read("fast")


def test_config_checks(tmp_path):
    visual, audio = FeatureStore(tmp_path / "v"), FeatureStore(tmp_path / "a")
    visual.write("x", np.zeros((5, VIS), np.float32), np.ones(5, bool), fps=30.0, backbone="t")
    audio.write("x", np.zeros((5, AUD), np.float32), np.ones(5, bool), fps=30.0, backbone="t")
    fusion = [
        f"data.features={visual.root}",
        f"data.audio_features={audio.root}",
        "model.modalities=[visual,audio]",
        f"model.input_dim={VIS}",
        "model.audio_dim=3",
    ]
    with pytest.raises(
        MambavaError,
        match=r"features are 8-d visual and 4-d audio, the model takes 8 and 3 "
        r"\(--set model.input_dim=8 model.audio_dim=4\)",
    ):
        check_model_input(load_config(None, fusion), VIS + AUD + 1)
    check_model_input(load_config(None, [*fusion[:-1], f"model.audio_dim={AUD}"]), VIS + AUD + 1)
    with pytest.raises(MambavaError, match="set data.audio_features"):
        check_model_input(load_config(None, [fusion[0], *fusion[2:]]), VIS)
    with pytest.raises(MambavaError, match="takes visual features only"):
        check_model_input(load_config(None, fusion[:2]), VIS + AUD + 1)


def write_heard_arousal(
    root: Path,
    n_train: int = 12,
    n_val: int = 6,
    n_frames: int = 200,
    audio_scale: np.ndarray | None = None,
    audio_offset: np.ndarray | None = None,
) -> tuple[Path, Path, Path]:
    """A visual store, an audio store and Aff-Wild2 annotations. Valence and arousal are independent smooth
    latents; the visual features are a noisy projection of valence only, the audio features of arousal only
    (times `audio_scale` plus `audio_offset` per column, when given). Every video loses its sound for a run of
    20% of its frames (mask False, the store forward-fills); the training videos are face tracks `<v>_left`
    whose sound is stored under `<v>`."""
    rng = np.random.default_rng(7)
    pv, pa = rng.normal(size=VIS), rng.normal(size=AUD)
    visual, audio = FeatureStore(root / "visual"), FeatureStore(root / "audio")
    annotations = root / "affwild2" / "VA_Estimation_Challenge"
    for prefix, folder, count in (("tr", "Train_Set", n_train), ("va", "Validation_Set", n_val)):
        (annotations / folder).mkdir(parents=True)
        for i in range(count):
            video = f"{prefix}{i:02d}"
            name = f"{video}_left" if prefix == "tr" else video
            target = smooth_latent(rng, n_frames, 15.0)
            fv = target[:, :1] * pv + 0.3 * rng.normal(size=(n_frames, VIS))
            fa = target[:, 1:] * pa + 0.3 * rng.normal(size=(n_frames, AUD))
            if audio_scale is not None:
                fa = fa * audio_scale + audio_offset
            sound = np.ones(n_frames, bool)
            gap = int(rng.integers(0, n_frames - n_frames // 5))
            sound[gap : gap + n_frames // 5] = False
            fa[~sound] = fa[gap - 1] if gap else 0.0  # the store's forward fill
            visual.write(name, fv.astype(np.float32), np.ones(n_frames, bool), fps=30.0, backbone="t", dtype="float32")
            audio.write(video, fa.astype(np.float32), sound, fps=30.0, backbone="audio:t", dtype="float32")
            lines = ["valence,arousal"] + [f"{v:.5f},{a:.5f}" for v, a in target]
            (annotations / folder / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return root / "visual", root / "audio", root / "affwild2"


SMALL_MODEL = [
    "model.tcn_channels=[16,16]",
    "model.audio_tcn_channels=[16]",
    "model.kernel_size=3",
    "model.d_model=16",
    "model.n_layers=1",
    "model.d_state=4",
    "model.dt_rank=2",
    "model.head_hidden=8",
    "model.dropout=0.0",
    f"model.input_dim={VIS}",
    f"model.audio_dim={AUD}",
]
RECIPE = [
    "epochs=6",
    "warmup_epochs=1",
    "batch_size=4",
    "lr=3e-3",
    "data.window=100",
    "data.stride=50",
    "progress_bar=false",
]


@pytest.mark.parametrize("fusion", ["early", "mid"])
def test_fused_model_hears_the_arousal_the_visual_model_cannot_see(tmp_path, fusion):
    """Arousal is only in the audio: the fused model's CCC_a must beat the visual-only model's by >= 0.3
    (measured: see the printed scores), and its P_VA by >= 0.15; valence, in the visual features, both learn."""
    visual, audio, annotations = write_heard_arousal(tmp_path)
    data = [f"data.features={visual}", f"data.annotations={annotations}"]
    seen = train(load_config(None, [*data, *SMALL_MODEL, *RECIPE, f"out_dir={tmp_path / 'visual_only'}"]))
    heard = train(
        load_config(
            None,
            [
                *data,
                f"data.audio_features={audio}",
                "model.modalities=[visual,audio]",
                f"model.fusion={fusion}",
                "model.modality_dropout=0.1",
                *SMALL_MODEL,
                *RECIPE,
                f"out_dir={tmp_path / 'fused'}",
            ],
        )
    )
    print(f"{fusion}: visual-only {seen['best']}, fused {heard['best']}")
    assert heard["best"]["ccc_arousal"] >= seen["best"]["ccc_arousal"] + 0.3
    assert heard["best"]["p_va"] >= seen["best"]["p_va"] + 0.15
    assert min(seen["best"]["ccc_valence"], heard["best"]["ccc_valence"]) > 0.5
    # evaluate reads the audio store from the run's config and scores the exported model as validation did
    result, _ = evaluate_checkpoint(tmp_path / "fused" / "model.safetensors", out=tmp_path / "e.csv")
    assert abs(result.p_va - heard["best"]["p_va"]) < 1e-4


def test_fusion_learns_from_audio_at_its_extracted_scale(tmp_path):
    """Audio columns as far apart as eGeMAPS' (std 0.01 to 2000, means up to 3000): training sets the model's
    statistics from the training videos' frames with sound (each video's entry once), keeps them in the
    exported model, and the fused model still hears arousal."""
    from mambava.data.store import column_statistics
    from mambava.temporal import load_temporal_model

    scale, offset = np.array([0.01, 1.0, 40.0, 2000.0]), np.array([0.1, -5.0, 300.0, 3000.0])
    visual, audio, annotations = write_heard_arousal(tmp_path, audio_scale=scale, audio_offset=offset)
    heard = train(
        load_config(
            None,
            [
                f"data.features={visual}",
                f"data.annotations={annotations}",
                f"data.audio_features={audio}",
                "model.modalities=[visual,audio]",
                "model.fusion=mid",
                *SMALL_MODEL,
                *RECIPE,
                f"out_dir={tmp_path / 'fused'}",
            ],
        )
    )
    model = load_temporal_model(tmp_path / "fused" / "model.safetensors").model
    mean, std = column_statistics(FeatureStore(audio), [f"tr{i:02d}" for i in range(12)])
    np.testing.assert_allclose(model.audio_mean.numpy(), mean, rtol=1e-5)
    np.testing.assert_allclose(model.audio_std.numpy(), std, rtol=1e-5)
    assert std.max() / std.min() > 1e4
    print(f"scaled audio: fused {heard['best']}")
    assert heard["best"]["ccc_arousal"] > 0.6 and heard["best"]["ccc_valence"] > 0.5
