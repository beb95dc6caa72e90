"""mambava: per-frame valence/arousal from face videos (Mamba-VA, ABAW-8).

Pipeline (data flows one way): video -> faces -> backbone features -> feature store -> windows
-> temporal model (TCN -> Mamba encoder -> head) -> stitching -> CSV / plots / submission / stream.
"""

__version__ = "0.1.0"

from mambava.errors import MambavaError  # noqa: F401
