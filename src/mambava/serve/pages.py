"""GET / (the browser page: plain HTML + JS + canvas, nothing from the network), GET /app.js, and GET /info
(the model and the limits, as JSON)."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from mambava.faces.expression import EXPRESSIONS

STATIC = ("index.html", "app.js")

router = APIRouter()


@router.get("/", response_class=HTMLResponse)
def index():
    return HTMLResponse(resources.files("mambava.serve").joinpath("static/index.html").read_text("utf-8"))


@router.get("/app.js")
def script():
    text = resources.files("mambava.serve").joinpath("static/app.js").read_text("utf-8")
    return Response(text, media_type="text/javascript")


@router.get("/info")
def info(request: Request):
    state = request.app.state
    hub, limits = state.hub, state.limits
    return {
        "model": state.predictor.model_label,
        "expressions": list(EXPRESSIONS) if state.predictor.expression_net is not None else None,
        "input_dim": hub.input_dim,
        "fps": hub.model_fps,
        "backbone": state.predictor.extractor is not None,
        "sessions": len(hub.sessions),
        "max_sessions": limits.max_sessions,
        "queue_frames": limits.queue_frames,
        "max_upload_mb": limits.max_upload_mb,
        "max_frame_mb": limits.max_frame_mb,
    }
