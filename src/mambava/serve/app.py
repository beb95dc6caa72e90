"""The HTTP + WebSocket application of `mambava serve` (FastAPI on uvicorn), one router per concern:

    GET  /, /app.js, /info    the browser page and the model's limits (`pages`)
    POST /predict             a video -> predict's rows (`uploads`)
    WS   /ws                  a live session (`live`, stepped by `mambava.serve.sessions`)

The model is loaded once (`Predictor`: temporal model, backbone, face detector) and shared through
`app.state`: uploads are predicted one at a time in a thread, live sessions are served by the hub's worker
thread.
"""

from __future__ import annotations

import socket
import threading
import time
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI  # (the `serve` extra)

from mambava.core.errors import MambavaError
from mambava.serve import live, pages, uploads
from mambava.serve.common import MB
from mambava.serve.pages import STATIC
from mambava.serve.sessions import ServeLimits, SessionHub


def create_app(predictor, limits: ServeLimits = ServeLimits()) -> FastAPI:
    """The application around a loaded `mambava.inference.predict.Predictor` (its model, detector, backbone
    and `config.step_precision`).

    Args:
        predictor: the loaded models.
        limits: sessions, queues and sizes (`ServeLimits`).

    Returns:
        The FastAPI application; its lifespan starts and stops the session hub.
    """
    detector = predictor.detector if predictor.extractor is not None else None

    @asynccontextmanager
    async def lifespan(app):
        app.state.hub = SessionHub(
            predictor.model,
            detector,
            predictor.extractor,
            limits,
            predictor.config.step_precision,
            expressions=predictor.crop_expressions if predictor.expression_net is not None else None,
        )
        try:
            yield
        finally:
            app.state.hub.close()  # the sessions' sockets are closed by their handlers (GOING_AWAY)

    app = FastAPI(title="mambava serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.predictor = predictor
    app.state.limits = limits
    app.state.predict_lock = threading.Lock()
    for module in (pages, uploads, live):
        app.include_router(module.router)
    return app


class ServerThread:
    """uvicorn serving `app` on host:port (0: a free port) in a background thread, for tests and the load
    benchmark: `with ServerThread(app) as server: server.url ...`; leaving stops it (sessions closed, the hub's
    worker joined) and joins the thread."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
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
