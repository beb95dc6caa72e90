"""The HTTP + WebSocket application of `mambava serve` (FastAPI on uvicorn), one router per concern:

    GET  /, /app.js, /info    the browser page and the model's limits (`pages`)
    POST /predict             a video -> predict's rows (`uploads`)
    WS   /ws                  a live session (`live`, stepped by `mambava.serve.sessions`)

The model is loaded once (`Predictor`: temporal model, backbone, face detector) and shared through
`app.state`: uploads are predicted one at a time in a thread, live sessions are served by the hub's worker
thread. In front of every route, `mambava.serve.access.AccessGuard` checks Host, Origin and the token.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from contextlib import asynccontextmanager

import torch
import uvicorn
from fastapi import FastAPI  # (the `serve` extra)

from mambava.core.errors import MambavaError
from mambava.serve import live, pages, uploads
from mambava.serve.access import Access, AccessGuard
from mambava.serve.pages import STATIC
from mambava.serve.sessions import ServeLimits, SessionHub


def create_app(predictor, limits: ServeLimits = ServeLimits(), access: Access = Access()) -> FastAPI:
    """The application around a loaded `mambava.inference.predict.Predictor` (its model, detector, backbone
    and `config.step_precision`).

    Args:
        predictor: the loaded models.
        limits: sessions, queues and sizes (`ServeLimits`).
        access: the token and the other sites' origins allowed (`mambava.serve.access.Access`).

    Returns:
        The FastAPI application; its lifespan starts and stops the session hub. A model that cannot serve
        live sessions (a fusion model) is a MambavaError here, before any server starts.
    """
    SessionHub.check_model(predictor.model)
    if limits.threads is None:  # fixed from now on: an answer must not depend on the load (ServeLimits)
        limits = dataclasses.replace(limits, threads=torch.get_num_threads())
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
    app.state.access = access
    for module in (pages, uploads, live):
        app.include_router(module.router)
    app.add_middleware(AccessGuard, access=access)
    return app


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (0: a free port), for uvicorn to serve on: a port in use or an address that
    is not this machine's is one line here, before anything is printed or loaded.

    Args:
        host: the address (IPv4, IPv6 or a name).
        port: the TCP port.

    Returns:
        The bound socket.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError, ValueError) as error:
        raise MambavaError(f"--host {host}: not an address of this machine ({error})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as error:
        sock.close()
        raise MambavaError(f"cannot listen on {host}:{port} ({error.strerror or error})") from None
    return sock


def uvicorn_config(app: FastAPI) -> uvicorn.Config:
    """uvicorn's settings for `app`: messages up to its limits' `ws_max_bytes` (a frame over --max-frame-mb is
    answered with its error, not a closed connection), its lifespan, warnings only."""
    return uvicorn.Config(app, log_level="warning", ws_max_size=app.state.limits.ws_max_bytes, lifespan="on")


class ServerThread:
    """uvicorn serving `app` on host:port (0: a free port) in a background thread, for tests and the load
    benchmark: `with ServerThread(app) as server: server.url ...`; leaving stops it (sessions closed, the hub's
    worker joined) and joins the thread."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        self._socket = listen(host, port)
        self.host, self.port = self._socket.getsockname()[:2]
        self.url = f"http://{self.host}:{self.port}"
        self.server = uvicorn.Server(uvicorn_config(app))
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


__all__ = ["create_app", "listen", "uvicorn_config", "ServerThread", "STATIC"]
