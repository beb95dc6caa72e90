"""Training on Lightning, the paper's recipe by default, validation the official way (paper §4.3).

Recipe (the defaults of `TrainConfig`, written out in `configs/paper.yaml`). From the paper (§4.2): AdamW,
lr 3e-4, weight decay 1e-3, 50 epochs, 5-epoch warmup, dropout 0.3, CCC loss. The paper states no batch size,
no window/stride values (only ⌊n/s⌋ + 1 segments, §3.2), no clipping and no schedule after the warmup; those
come from the authors' code (FreedomPuppy77/Charon): batch 32 and windows 300/200 from its VA/config/config.yml,
gradient clipping at norm 1.0 from VA/vaestimation.py:243-247. Weight decay is on every parameter, as there.
Loss (1 - CCC_v) + (1 - CCC_a) over all valid frames of the batch (-5 and padding masked). The learning rate
is stepped once per optimizer step: linear warmup from lr/W to lr over the first W = warmup_epochs *
steps_per_epoch steps, then a cosine from lr down to 0 at the last step (ours; `schedule: cosine`).

The authors' recipe as their code runs it is `configs/authors.yaml` (folds 1-5) and `configs/authors_fold0.yaml`
(fold 0), chosen by `recipe_config("authors", fold)` (`mambava train --recipe authors`): per-fold values,
AdamW eps 1e-7, warmup from ~0 then CosineAnnealingWarmRestarts stepped per iteration (`schedule:
warm_restarts`, `warm_restarts_lrs`), drop_last, their loss (`loss: authors`), their per-video sequences and split
of windows (`data.span: crops`, `data.tails: drop`) on the stored frames (`data.resample: false`), seed 42, their
validation protocol (`protocol: authors`) and timing (`val_check: authors`: four validations an epoch, before an
update). Each value is cited to its file and line in those configs; docs/fidelity.md lists what is not reproduced.

Validation (every `val_every_n_epochs`), `protocol: videos` (ours): each validation video is run whole, as
overlapping windows stitched back to one prediction per frame (`mambava.data.windows.predict_sequence`), and CCC per
dimension is computed over all valid frames of all validation videos concatenated; P_VA = (CCC_v + CCC_a) / 2.
`protocol: authors`: CCC over the frames of the windows the reference's validation loop sees
(`mambava.data.windows.authors_window_dataset`: each video from its first crop to before its last, its split, its
file order, its last partial batch dropped, overlapping frames counted once per window). The metric
(`mambava.core.ccc_metric.ConcordanceCCC`) keeps float64 sufficient statistics whose DDP reduction is a sum, so ranks
that each validated a share give exactly the single-process number (torchmetrics' `ConcordanceCorrCoef` uses sample,
n-1, moments where ABAW uses population moments).

Reproducibility and resume: `seed` seeds the model's initialisation; the training windows are shuffled by a
sampler seeded with (seed, epoch) and the global RNG (dropout) is re-seeded from (seed, epoch, batch, rank)
before every batch, so a run resumed from `checkpoints/last.ckpt` (written at the end of every epoch) goes
on bit for bit as the uninterrupted run would have (on CPU; CUDA kernels may add their own nondeterminism
unless `deterministic: true`). Progress inside an interrupted epoch is redone. Checkpoints are written beside
their target, fsynced and renamed (`AtomicCheckpointIO`), so a full disk never truncates one; a missing or
unreadable last.ckpt stops `resume=True` with a one-line MambavaError.

Outputs in `out_dir`: `config.yaml` (the resolved config), `checkpoints/best.ckpt` (best validation P_VA) and
`checkpoints/last.ckpt`, `model.safetensors` (the best model, loadable by `mambava.temporal.load_temporal_model`
and, for the paper model, `MambaVA.load`), `metrics.csv` (one row per epoch), `logs/` (Lightning's per-step CSV
log), `tensorboard/` (when tensorboard is installed), `summary.json`, `curves.png`.

Modules: `config` (TrainConfig, YAML + overrides, recipes), `data` (labels, folds, samplers), `module` (the
Lightning module and data module), `callbacks` (metrics.csv, atomic checkpoints), `outputs` (run folder,
metrics, curves, summary), `run` (`train`), `evaluate` (`mambava evaluate`), `cv` (Table 1). Importing this
package does not import Lightning; `module` and `callbacks` do.
"""

from __future__ import annotations

from mambava.core.schedule import lr_factor, warm_restarts_lrs
from mambava.training.config import (
    MONITOR,
    PAPER_CONFIG,
    RECIPES,
    DataConfig,
    TrainConfig,
    config_items,
    load_config,
    load_recipe,
    recipe_config,
    save_config,
)
from mambava.training.data import (
    EpochShuffleSampler,
    FoldData,
    LabelSource,
    ShardSampler,
    load_fold_data,
    resolve_folds,
)
from mambava.training.outputs import RunPaths, plot_curves, read_metrics, read_summary
from mambava.training.run import check_resume_checkpoint, train

__all__ = [
    "MONITOR",
    "PAPER_CONFIG",
    "RECIPES",
    "DataConfig",
    "TrainConfig",
    "config_items",
    "load_config",
    "load_recipe",
    "recipe_config",
    "save_config",
    "EpochShuffleSampler",
    "FoldData",
    "LabelSource",
    "ShardSampler",
    "load_fold_data",
    "resolve_folds",
    "RunPaths",
    "plot_curves",
    "read_metrics",
    "read_summary",
    "check_resume_checkpoint",
    "train",
    "lr_factor",
    "warm_restarts_lrs",
]
