"""One exception type for bad input: the CLI prints its message as one line, no traceback."""

from __future__ import annotations

import os


class MambavaError(Exception):
    """A user-facing error. The message names the file (and line or frame) at fault."""


class OutputError(MambavaError):
    """An output that cannot be written (read-only, no space, no permission). `path` is the output named in
    the message; whatever was there before is left as it was."""

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = path
