"""The HTTP + WebSocket application of `mambava serve` (FastAPI on uvicorn).

    GET  /            the browser page (static/: plain HTML + JS + canvas, nothing from the network)
    GET  /info        the model and the limits, as JSON
    POST /predict     a video as the multipart field `file` -> predict's rows as JSON (?format=csv: its CSV)
    WS   /ws          a live session (?name=NAME&fps=FPS): binary messages are frames (JPEG/PNG, or the model's
                      float32 features), a text message {"time": seconds} sets the next frame's timestamp;
                      each frame is answered with one JSON message (`mambava.serve.sessions`)

The model is loaded once (`Predictor`: temporal model, backbone, face detector) and shared: uploads are
predicted one at a time in a thread, live sessions are served by the hub's worker thread.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import tempfile
import threading
import time
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect  # (the `serve` extra)
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from mambava.core.errors import MambavaError
from mambava.data.timebase import check_fps
from mambava.inference.predict import COLUMNS
from mambava.serve.sessions import ServeLimits, SessionHub, message_line

STATIC = ("index.html", "app.js")
# WebSocket close codes: 1008 policy (a refused session), 1013 try again later (server full), 1001 going away
FULL, GOING_AWAY, POLICY = 1013, 1001, 1008
MB = 1024 * 1024


def _safe_name(filename: str | None) -> str:
    """An upload's file name without folders or odd characters (it names the video in the rows)."""
    name = Path(filename or "upload.mp4").name
    name = re.sub(r"[^A-Za-z0-9._ -]+", "_", name).strip(" .") or "upload.mp4"
    return name[:200]


def _records(table) -> list[dict]:
    """The table's rows as JSON objects, NaN as null."""

    clean = table.astype(object).where(table.notna(), None)
    return [
        {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
        for row in clean.to_dict(orient="records")
    ]


def create_app(predictor, limits: ServeLimits = ServeLimits(), step_precision: str = "fp32"):
    """The application around a loaded `mambava.inference.predict.Predictor` (its model, detector and backbone)."""

    detector = predictor.detector if predictor.extractor is not None else None
    hub_box: dict[str, SessionHub] = {}
    predict_lock = threading.Lock()

    @asynccontextmanager
    async def lifespan(app):
        hub_box["hub"] = SessionHub(predictor.model, detector, predictor.extractor, limits, step_precision)
        app.state.hub = hub_box["hub"]
        try:
            yield
        finally:
            hub_box.pop("hub").close()  # the sessions' sockets are closed by their handlers (GOING_AWAY)

    app = FastAPI(title="mambava serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.get("/", response_class=HTMLResponse)
    def index():
        return HTMLResponse(resources.files("mambava.serve").joinpath("static/index.html").read_text("utf-8"))

    @app.get("/app.js")
    def script():
        text = resources.files("mambava.serve").joinpath("static/app.js").read_text("utf-8")
        return Response(text, media_type="text/javascript")

    @app.get("/info")
    def info():
        hub = hub_box["hub"]
        return {
            "model": predictor.model_name,
            "input_dim": hub.input_dim,
            "fps": hub.model_fps,
            "backbone": predictor.extractor is not None,
            "sessions": len(hub.sessions),
            "max_sessions": limits.max_sessions,
            "queue_frames": limits.queue_frames,
            "max_upload_mb": limits.max_upload_mb,
            "max_frame_mb": limits.max_frame_mb,
        }

    def too_large(size: float) -> JSONResponse:
        return error(
            413,
            f"upload of {size / MB:.1f} MB is over this server's limit of {limits.max_upload_mb:g} MB "
            f"(--max-upload-mb)",
        )

    @app.post("/predict")
    async def predict(request: Request, format: str = "json"):
        if format not in ("json", "csv"):
            return error(400, f"format={format}: expected json or csv")
        limit = limits.max_upload_mb * MB
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit + 64 * 1024:  # (the multipart framing around the file)
            return too_large(int(length))
        try:
            form = await request.form(max_files=1, max_fields=8)
        except Exception as exc:  # a body that is not multipart/form-data
            return error(400, f"POST /predict takes multipart/form-data with the video as the field 'file' ({exc})")
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            return error(400, "POST /predict needs the video as the multipart field 'file'")
        name = _safe_name(upload.filename)
        folder = Path(tempfile.mkdtemp(prefix="mambava-serve-"))
        try:
            path = folder / name
            size = 0
            with open(path, "wb") as out:
                while chunk := await upload.read(MB):
                    size += len(chunk)
                    if size > limit:
                        return too_large(size)
                    out.write(chunk)
            if size == 0:
                return error(400, f"{name}: the upload is empty")

            def run():
                with predict_lock:
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
        table = table[COLUMNS]
        if format == "csv":
            return Response(
                table.to_csv(index=False, float_format="%.6g"),
                media_type="text/csv",
                headers={"content-disposition": f'attachment; filename="{Path(name).stem}.csv"'},
            )
        return JSONResponse(_records(table))

    @app.websocket("/ws")
    async def live(websocket: WebSocket, name: str = "stream", fps: str = "30"):
        hub = hub_box["hub"]
        await websocket.accept()
        loop = asyncio.get_running_loop()
        outbox: asyncio.Queue = asyncio.Queue()

        def deliver(message: dict) -> None:  # from the worker thread
            loop.call_soon_threadsafe(outbox.put_nowait, message)

        try:
            check_fps(fps, "fps")
        except MambavaError as exc:
            await websocket.send_text(message_line({"error": str(exc)}))
            await websocket.close(code=POLICY, reason=str(exc)[:120])
            return
        try:
            session = hub.open(re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:64] or "stream", float(fps), deliver)
        except MambavaError as exc:
            await websocket.send_text(message_line({"error": str(exc)}))
            await websocket.close(code=FULL, reason=str(exc)[:120])
            return
        await websocket.send_text(
            message_line(
                {"session": session.id, "name": session.name, "fps": session.fps, "queue_frames": limits.queue_frames}
            )
        )

        async def send() -> None:
            while True:
                await websocket.send_text(message_line(await outbox.get()))

        sender = asyncio.create_task(send())
        next_time = None
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("bytes") is not None:
                    payload = message["bytes"]
                    if len(payload) > limits.max_frame_mb * MB:
                        hub.refuse(
                            session,
                            f"{len(payload) / MB:.3g} MB is over the limit of {limits.max_frame_mb:g} "
                            f"MB (--max-frame-mb)",
                        )
                        continue
                    hub.put(session, payload, next_time)
                    next_time = None
                elif message.get("text") is not None:
                    try:
                        control = json.loads(message["text"])
                        next_time = float(control["time"])
                    except (ValueError, KeyError, TypeError):
                        outbox.put_nowait(
                            {
                                "error": 'a text message must be {"time": seconds} (the next frame\'s '
                                "timestamp); frames are binary messages"
                            }
                        )
        except WebSocketDisconnect:
            pass
        finally:
            hub.close_session(session)
            # answers still on their way are sent before the socket closes (the client may be gone: ignored)
            while not outbox.empty() and not sender.done():
                await asyncio.sleep(0.01)
            sender.cancel()
            try:
                await websocket.close(code=GOING_AWAY)
            except Exception:  # already closed by the client
                pass

    return app


class ServerThread:
    """uvicorn serving `app` on host:port (0: a free port) in a background thread, for tests and the load
    benchmark: `with ServerThread(app) as server: server.url ...`; leaving stops it (sessions closed, the hub's
    worker joined) and joins the thread."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind((host, port))
        self.host, self.port = self._socket.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        config = uvicorn.Config(app, log_level="warning", ws_max_size=64 * MB, lifespan="on")
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self._socket]}, name="mambava-uvicorn", daemon=True
        )

    def __enter__(self) -> "ServerThread":
        self._thread.start()
        end = time.monotonic() + 30
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > end:
                raise MambavaError(f"the server on {self.url} did not start")
            time.sleep(0.02)
        return self

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self._thread.join(30)
        self._socket.close()


__all__ = ["create_app", "ServerThread", "STATIC"]
