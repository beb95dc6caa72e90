"""POST /predict: a video as the multipart field `file` -> predict's rows as JSON (?format=csv: its CSV), with
every column `predict` writes (`COLUMNS`, then `voice` and the face columns: the 68 points and head pose with
`--landmarks auto`/`dlib68`, null in JSON and empty in CSV where the track has no face; the seven expressions
with `--expressions` or expression-va, and `model`, the temporal model's name).

Uploads are predicted one at a time in a thread (`app.state.predict_lock`), with the server's loaded
`Predictor`, on a fixed number of torch threads (`ServeLimits.threads`): the same video gives the same bits
whatever else is being served. The body is counted while it is read, with or without a Content-Length, and
reading stops at the limit (413); the upload is written to a temporary folder that is removed when the answer
is sent.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from mambava.core.errors import MambavaError
from mambava.core.runtime import fixed_threads
from mambava.serve.common import MB, error, records, safe_name

router = APIRouter()
FRAMING = 64 * 1024  # bytes of multipart framing allowed around the file


class _OverLimit(Exception):
    """The body went past the limit while it was read."""

    def __init__(self, size: int):
        self.size = size


def _bounded(request: Request, limit: int) -> Request:
    """`request` whose body stops with _OverLimit once more than `limit` bytes have come: a chunked body
    (no Content-Length) is never read, nor spooled to disk, past the limit."""
    received = 0

    async def receive():
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _OverLimit(received)
        return message

    return Request(request.scope, receive)


@router.post("/predict")
async def predict(request: Request, format: str = "json"):
    predictor, limits = request.app.state.predictor, request.app.state.limits
    if format not in ("json", "csv"):
        return error(400, f"format={format}: expected json or csv")
    limit = limits.max_upload_mb * MB
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit + 64 * 1024:  # (the multipart framing around the file)
        return too_large(limits, int(length))
    try:
        form = await _bounded(request, limit + FRAMING).form(max_files=1, max_fields=8)
    except _OverLimit as over:
        return too_large(limits, over.size, more=True)
    except Exception as exc:  # a body that is not multipart/form-data
        return error(400, f"POST /predict takes multipart/form-data with the video as the field 'file' ({exc})")
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        return error(400, "POST /predict needs the video as the multipart field 'file'")
    name = safe_name(upload.filename)
    folder = Path(tempfile.mkdtemp(prefix="mambava-serve-"))
    try:
        path = folder / name
        size = 0
        with open(path, "wb") as out:
            while chunk := await upload.read(MB):
                size += len(chunk)
                if size > limit:
                    return too_large(limits, size)
                out.write(chunk)
        if size == 0:
            return error(400, f"{name}: the upload is empty")

        def run():
            with request.app.state.predict_lock, fixed_threads(limits.threads):
                return predictor.predict(path)

        try:
            table = await run_in_threadpool(run)
        except MambavaError as exc:
            return error(422, str(exc).replace(str(path), name).replace(str(folder), "upload"))
        except Exception as exc:  # a decoder's own error on a broken file: one line, no traceback
            return error(422, f"{name}: cannot read this video ({type(exc).__name__}: {exc})".splitlines()[0])
    finally:
        await upload.close()
        shutil.rmtree(folder, ignore_errors=True)
    if format == "csv":
        return Response(
            table.to_csv(index=False, float_format="%.6g"),
            media_type="text/csv",
            headers={"content-disposition": f'attachment; filename="{Path(name).stem}.csv"'},
        )
    return JSONResponse(records(table))


def too_large(limits, size: float, more: bool = False) -> JSONResponse:
    return error(
        413,
        f"upload of {'more than ' if more else ''}{size / MB:.1f} MB is over this server's limit of "
        f"{limits.max_upload_mb:g} MB (--max-upload-mb)",
    )
