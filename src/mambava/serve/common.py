"""What the routes share: the JSON error answer, upload names, rows as JSON."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from fastapi.responses import JSONResponse

MB = 1024 * 1024


def error(status: int, message: str) -> JSONResponse:
    """The one shape of a refusal: {"error": one line}."""
    return JSONResponse({"error": message}, status_code=status)


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
