"""`mambava cv` on a tiny generated dataset: 6 folds, the Table 1 layout, skip when finished (trained in
bf16-mixed, so that precision path runs too)."""

from __future__ import annotations

import json
import re

from support import write_drift_dataset
from typer.testing import CliRunner

from mambava.cli import app
from mambava.training.cv import format_table


def test_format_table_like_the_paper():
    rows = [{"fold": k, "ccc_valence": 0.5 + k / 100, "ccc_arousal": 0.4, "p_va": 0.45 + k / 200} for k in range(3)]
    lines = format_table(rows).splitlines()
    assert lines[0].split() == ["Fold", "Valence(CCC)", "Arousal(CCC)", "Average(CCC)"]
    assert lines[1].split() == ["0", "0.5000", "0.4000", "0.4500"]
    assert lines[-1].split() == [
        "Mean",
        "±",
        "std",
        "0.5100",
        "±",
        "0.0100",
        "0.4000",
        "±",
        "0.0000",
        "0.4550",
        "±",
        "0.0050",
    ]


def test_cv_command_runs_six_folds_and_skips_finished_ones(tmp_path):
    features, annotations = write_drift_dataset(
        tmp_path / "data", n_train=6, n_val=4, n_frames=60, dim=4, noise=0.5, scale=10
    )
    cfg = tmp_path / "cv.yaml"
    cfg.write_text(
        "model:\n  input_dim: 4\n  tcn_channels: [8]\n  kernel_size: 3\n  d_model: 8\n  n_layers: 1\n  d_state: 2\n"
        "  dt_rank: 1\n  head_hidden: 4\n"
        f"data:\n  features: {features}\n  annotations: {annotations}\n  window: 40\n  stride: 20\n"
        "epochs: 1\nwarmup_epochs: 0\nbatch_size: 8\nprecision: bf16-mixed\nprogress_bar: false\n"
        f"out_dir: {tmp_path / 'cv'}\n"
    )
    runner = CliRunner()
    result = runner.invoke(app, ["cv", "--config", str(cfg)])
    assert result.exit_code == 0, result.output
    table = [line for line in result.output.splitlines() if re.match(r"^(\d|Fold|Mean)", line)]
    assert table[0].split() == ["Fold", "Valence(CCC)", "Arousal(CCC)", "Average(CCC)"]
    assert [line.split()[0] for line in table[1:]] == ["0", "1", "2", "3", "4", "5", "Mean"]
    for line in table[1:7]:
        v, a, mean = map(float, line.split()[1:])
        assert -1 <= v <= 1 and -1 <= a <= 1 and abs(mean - (v + a) / 2) < 1e-4
    summary = json.loads((tmp_path / "cv/cv_summary.json").read_text())
    assert [f["fold"] for f in summary["folds"]] == [0, 1, 2, 3, 4, 5]
    # fold 0 is the official split; folds 1-5 partition train + validation
    folds = [json.loads((tmp_path / f"cv/fold{k}/summary.json").read_text()) for k in range(6)]
    assert (folds[0]["train_videos"], folds[0]["validation_videos"]) == (6, 4)
    assert sum(f["validation_videos"] for f in folds[1:]) == 10

    again = runner.invoke(app, ["cv", "--config", str(cfg)])
    assert again.exit_code == 0, again.output
    assert again.output.count("finished earlier, skipped") == 6
    assert [line for line in again.output.splitlines() if re.match(r"^(\d|Mean)", line)] == table[1:]

    # folds run as parallel jobs (`cv --folds K` each, as above), then one command gathers the table: the same
    (tmp_path / "cv/cv_results.csv").unlink()
    gathered = runner.invoke(app, ["cv", "--config", str(cfg), "--gather"])
    assert gathered.exit_code == 0, gathered.output
    assert "training" not in gathered.output and "skipped" not in gathered.output
    assert [line for line in gathered.output.splitlines() if re.match(r"^(\d|Mean)", line)] == table[1:]
    assert (tmp_path / "cv/cv_results.csv").is_file()
    (tmp_path / "cv/fold5/summary.json").unlink()  # a fold whose job has not finished
    unfinished = runner.invoke(app, ["cv", "--config", str(cfg), "--gather"])
    assert unfinished.exit_code != 0 and "fold 5 has no finished run" in str(unfinished.exception)


def test_num_nodes_reaches_the_trainer(tmp_path):
    """`--num-nodes N` (config key num_nodes): Lightning's Trainer of the run spans N machines; a runtime key,
    so resuming on another number of machines does not warn."""
    from mambava.training import load_config
    from mambava.training.outputs import RunPaths
    from mambava.training.run import _RUNTIME_KEYS, build_trainer

    cfg = load_config(None, ["num_nodes=2", "accelerator=cpu", "strategy=ddp", f"out_dir={tmp_path}"])
    assert cfg.num_nodes == 2 and "num_nodes" in _RUNTIME_KEYS
    trainer = build_trainer(cfg, RunPaths(tmp_path))
    assert trainer.num_nodes == 2
