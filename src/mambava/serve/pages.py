"""GET / (the browser page: plain HTML + JS + canvas, nothing from the network), GET /app.js, and GET /info
(the model's file name, the expression names where the rows carry them, and the limits, as JSON: never a path of
the server's)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from mambava.faces.expression import EXPRESSIONS

STATIC = ("index.html", "app.js")
# The page is not to be framed by another site's page, nor to pass its address (with ?token=) on as a Referer.
HEADERS = {"X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer", "X-Content-Type-Options": "nosniff"}

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
def index():
    text = resources.files("mambava.serve").joinpath("static/index.html").read_text("utf-8")
    return HTMLResponse(text, headers=HEADERS)


@router.get("/app.js")
def script():
    text = resources.files("mambava.serve").joinpath("static/app.js").read_text("utf-8")
    return Response(text, media_type="text/javascript", headers=HEADERS)


@router.get("/info")
def info(request: Request):
    state = request.app.state
    hub, limits = state.hub, state.limits
    return {
        "model": state.predictor.model_label,  # the file's name, never where it is
        "expressions": list(EXPRESSIONS) if state.predictor.expression_net is not None else None,
        "input_dim": hub.input_dim,
        "fps": hub.model_fps,
        "backbone": state.predictor.extractor is not None,
        "sessions": len(hub.sessions),
        "max_sessions": limits.max_sessions,
        "queue_frames": limits.queue_frames,
        "max_upload_mb": limits.max_upload_mb,
        "max_frame_mb": limits.max_frame_mb,
        "max_frame_pixels": limits.max_frame_pixels,
        "token": state.access.token is not None,
    }
