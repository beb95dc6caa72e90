"""One exception type for bad input: the CLI prints its message as one line, no traceback."""


class MambavaError(Exception):
    """A user-facing error. The message names the file (and line or frame) at fault."""
