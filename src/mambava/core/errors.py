"""One exception type for bad input: the CLI prints its message as one line, no traceback."""

from __future__ import annotations

import os
import re


class MambavaError(Exception):
    """A user-facing error. The message names the file (and line or frame) at fault."""


def torch_load_reason(error: BaseException) -> str:
    """The cause of a failed `torch.load(..., weights_only=True)` in a few words, without torch's advice to
    re-run with weights_only=False: that would execute code from the file, which mambava never does."""

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()
    if "WeightsUnpickler error:" in text:
        detail = " ".join(text.split("WeightsUnpickler error:", 1)[1].split())
        detail = re.split(r"\. |\.$| Please use | Check the documentation", detail)[0]
        global_name = re.search(r"Unsupported global: GLOBAL (\S+)", detail)
        if global_name:
            return (
                f"it holds a Python object ({global_name.group(1)}), not only tensors; mambava loads weights "
                "only, never code from a checkpoint: save its state_dict instead"
            )
        return f"not a PyTorch weights file: {detail}" if detail else "not a PyTorch weights file"
    if isinstance(error, (KeyError, EOFError, IndexError)) or type(error).__name__ == "UnpicklingError":
        return "not a PyTorch weights file"  # the legacy unpickler tripping over arbitrary bytes: "KeyError: 101"
    first = text.splitlines()[0] if text else type(error).__name__
    return first[:200]


def error_line(error: BaseException) -> str:
    """The one-line message for a MambavaError or an OSError (naming its file when it has one)."""
    if isinstance(error, OSError) and not isinstance(error, MambavaError):
        reason = error.strerror or str(error) or type(error).__name__
        return f"{error.filename}: {reason}" if error.filename is not None else reason
    return str(error)


class OutputError(MambavaError):
    """An output that cannot be written (read-only, no space, no permission). `path` is the output named in
    the message; whatever was there before is left as it was."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = path
