"""Reading a Lightning checkpoint without unpickling code.

Lightning's checkpoints are pickles; `torch.load(weights_only=True)` restricts them to tensors, containers and
primitives, which is all a mambava run writes (its hyper-parameters are a plain dict of the TrainConfig).
Every path that reads a `.ckpt` goes through here, so a planted file fails with one line instead of running.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mambava.core.errors import MambavaError, torch_load_reason


def load_lightning_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """The checkpoint dict at `path`, loaded with `weights_only=True` (MambavaError naming the file otherwise)."""
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # a bad pickle, a truncated zip (RuntimeError), a foreign global (UnpicklingError)
        raise CheckpointReadError(path, torch_load_reason(error)) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointReadError(path, f"holds a {type(checkpoint).__name__}, not a checkpoint dict")
    return checkpoint


class CheckpointReadError(MambavaError):
    """A `.ckpt` that cannot be loaded safely; `reason` is the cause alone, for messages that add advice."""

    def __init__(self, path, reason: str):
        super().__init__(f"{path}: cannot be read as a training checkpoint ({reason})")
        self.reason = reason
