"""mambava: per-frame valence/arousal from face videos (Mamba-VA, ABAW-8).

Pipeline (data flows one way): video -> faces -> backbone features -> feature store -> windows
-> temporal model (TCN -> Mamba encoder -> head) -> stitching -> CSV / plots / submission / stream.
"""

__version__ = "0.1.0"

from mambava.core.errors import MambavaError  # noqa: F401

# Heavy parts are imported on first use, so `import mambava` stays light (no torch): name -> module.
_LAZY = {"Predictor": "mambava.inference.predict"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mambava' has no attribute {name!r}")
