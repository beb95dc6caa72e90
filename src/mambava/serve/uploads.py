"""POST /predict: a video as the multipart field `file` -> predict's rows as JSON (?format=csv: its CSV).

Uploads are predicted one at a time in a thread (`app.state.predict_lock`), with the server's loaded
`Predictor`; the upload is written to a temporary folder that is removed when the answer is sent.
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
from mambava.serve.common import MB, error, records, safe_name

router = APIRouter()


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
        form = await request.form(max_files=1, max_fields=8)
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
            with request.app.state.predict_lock:
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


def too_large(limits, size: float) -> JSONResponse:
    return error(
        413,
        f"upload of {size / MB:.1f} MB is over this server's limit of {limits.max_upload_mb:g} MB (--max-upload-mb)",
    )
