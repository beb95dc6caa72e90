"""The corpus jobs beyond one machine: `faces --dataset`, `extract` (visual and `--audio`) and `predict` over
many inputs on a Ray cluster (`--engine ray`), writing the files the local engine writes.

    from mambava.distributed import RayOptions, faces_dataset_ray
    result, run = faces_dataset_ray("affwild2/", "own/", options=RayOptions(address="auto"))

Ray is the optional `distributed` extra (`pip install 'mambava[distributed]'`); this package imports it only
when a job connects (`engine.import_ray`). `engine`: joining or starting a cluster, the driver loop (a bounded
window of videos, retries of dead workers, Ctrl-C), the progress bar. `jobs`: the tasks and the backbone actor
pool, each calling the local engine's own per-video function and writers. See docs/scaling.md.
"""

from mambava.distributed.engine import EXTRA, INSTALL, Cluster, CorpusProgress, RayOptions, connect, import_ray
from mambava.distributed.jobs import (
    BackbonePool,
    EncoderSource,
    PredictRun,
    RayRun,
    extract_audio_ray,
    extract_features_ray,
    faces_dataset_ray,
    predict_ray,
)

__all__ = [
    "EXTRA",
    "INSTALL",
    "BackbonePool",
    "Cluster",
    "EncoderSource",
    "CorpusProgress",
    "PredictRun",
    "RayOptions",
    "RayRun",
    "connect",
    "extract_audio_ray",
    "extract_features_ray",
    "faces_dataset_ray",
    "import_ray",
    "predict_ray",
]
