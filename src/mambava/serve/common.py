"""What the routes share: the JSON error answer (never an absolute path), upload names, rows as JSON."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from fastapi.responses import JSONResponse

MB = 1024 * 1024


# An absolute path (POSIX, or a Windows drive): what a client is shown of it is its last part, the file's name.
_ABSOLUTE = re.compile(r"(?<![\w.~-])(?:[A-Za-z]:[\\/]|/)(?:[^\s/\\:'\"()]+[/\\])+(?=[^\s/\\:'\"()]*)")


def no_paths(text: str) -> str:
    """`text` with every absolute path cut to its file name: a client never learns where the server keeps its
    files (`/home/me/models/va.safetensors: ...` -> `va.safetensors: ...`)."""
    return _ABSOLUTE.sub("", text)


def error(status: int, message: str) -> JSONResponse:
    """The one shape of a refusal: {"error": one line}, absolute paths cut to file names."""
    return JSONResponse({"error": no_paths(message).splitlines()[0] if message else ""}, status_code=status)


def safe_name(filename: str | None) -> str:
    """An upload's file name without folders or odd characters (it names the video in the rows)."""
    name = Path(filename or "upload.mp4").name
    name = re.sub(r"[^A-Za-z0-9._ -]+", "_", name).strip(" .") or "upload.mp4"
    return name[:200]


def records(table) -> list[dict]:
    """The table's rows as JSON objects, NaN as null."""

    clean = table.astype(object).where(table.notna(), None)
    return [
        {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
        for row in clean.to_dict(orient="records")
    ]
