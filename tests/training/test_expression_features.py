"""A Mamba-VA on the expression net's features (`extract --features expression`), end to end on generated videos:
generate -> extract (the crops' 135 expression features) -> train; the model learns valence and arousal from
them (the number it reaches is asserted)."""

from __future__ import annotations

import numpy as np
from support import TINY_MODEL, run_cli

from mambava.data.store import FeatureStore
from mambava.synth import SynthConfig, generate
from mambava.training.config import load_config
from mambava.training.run import train

P_VA_REACHED = 0.25  # measured 0.34 (CCC valence 0.43, arousal 0.26) on the 2 held-out videos, after 4 epochs


def test_a_mamba_va_learns_from_expression_features(tmp_path, capsys):
    root = tmp_path / "data"
    config = SynthConfig(
        n_train=6, n_val=2, n_test=0, frames=(240, 240), two_person_fraction=0.0, seed=5, workers=1,
        write_videos=False, voices=False,
    )  # fmt: skip
    generate(root, config)
    (root / "Valence_Arousal_Estimation_Challenge_test_set_release.txt").unlink()  # (no test split: an empty list)
    code, out, err = run_cli(
        ["extract", root / "cropped_aligned", "-o", tmp_path / "store", "--features", "expression", "--workers", "0"],
        capsys,
    )
    assert code == 0, err
    store = FeatureStore(tmp_path / "store")
    record = store.read(store.names()[0])
    assert record.features.shape[1] == 135 and record.backbone == "expression:fer2013-mini-xception"
    assert np.isfinite(np.asarray(record.features, np.float32)[record.mask]).all()

    result = train(
        load_config(
            None,
            [
                f"data.features={tmp_path / 'store'}",
                f"data.annotations={root}",
                f"out_dir={tmp_path / 'run'}",
                "progress_bar=false",
                *TINY_MODEL,
                "model.input_dim=135",
                "model.dropout=0.0",
                "epochs=4",
                "warmup_epochs=1",
                "batch_size=4",
                "lr=3e-3",
                "seed=0",
                "data.window=100",
                "data.stride=50",
            ],
        )
    )
    best = result["best"]
    print(f"expression features -> Mamba-VA: {best}")
    assert best["p_va"] >= P_VA_REACHED and best["ccc_valence"] > 0.3
