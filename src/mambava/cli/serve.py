"""`mambava serve`: the model behind HTTP + WebSocket for many clients, with a browser page (mambava.serve)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from mambava.cli.options import landmark_source, landmarks_option, precision_option
from mambava.cli.predict import BACKBONE_HELP, CHECKPOINT_HELP, DEVICE_HELP, EXPRESSIONS_HELP, default_checkpoint
from mambava.core.errors import MambavaError


def serve_command(
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help=CHECKPOINT_HELP),
    backbone: Optional[Path] = typer.Option(
        None, "--backbone", "-b", help=BACKBONE_HELP + " Without it, sessions send features."
    ),
    expressions: bool = typer.Option(False, "--expressions", help=EXPRESSIONS_HELP),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to bind (default: this machine only; 0.0.0.0 opens it to the network)."
    ),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    max_sessions: int = typer.Option(
        8, "--max-sessions", help="Live sessions at once; one more is refused (WebSocket close 1013)."
    ),
    queue_frames: int = typer.Option(
        2, "--queue-frames", help="Frames a session may have waiting; beyond, the oldest is dropped (and reported)."
    ),
    max_upload_mb: float = typer.Option(
        200.0, "--max-upload-mb", help="Largest video POST /predict takes (413 beyond)."
    ),
    max_frame_mb: float = typer.Option(8.0, "--max-frame-mb", help="Largest frame a session takes."),
    max_frame_pixels: int = typer.Option(
        3840 * 2160, "--max-frame-pixels", help="Largest image (width x height, read from its header) a session takes."
    ),
    token: Optional[str] = typer.Option(
        None,
        "--token",
        envvar="MAMBAVA_SERVE_TOKEN",
        help="Token clients must send (Authorization: Bearer, or ?token=). Default: none on a loopback address, "
        "a generated one (printed) on any other.",
    ),
    allow_origin: Optional[List[str]] = typer.Option(
        None,
        "--allow-origin",
        help="Another site whose pages may use this server, e.g. the https:// address of a reverse proxy in "
        "front of it (repeatable).",
    ),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="Torch threads, fixed whatever the load (default: torch's count; 1 on a busy machine)."
    ),
    detector: str = typer.Option("mtcnn", "--detector", help="Face detector: mtcnn or haar."),
    landmarks: Optional[str] = landmarks_option(),
    device: str = typer.Option("cpu", "--device", help=DEVICE_HELP),
    precision: str = precision_option("auto", what="Backbone precision: "),
    step_precision: str = typer.Option(
        "fp32", "--step-precision", help="Temporal step weights of the live sessions: fp32, bf16 or int8."
    ),
) -> None:
    """Serve the model: POST /predict (a video as the multipart field `file` -> predict's rows as JSON, or
    CSV with ?format=csv), live sessions on the WebSocket /ws (JPEG frames or features in, per-frame
    valence/arousal out, all sessions stepped in one batch), and a browser page at / (a video file or the
    webcam). Ctrl-C stops it: sessions are closed and the worker joined. Requests must name this server (Host)
    and come from its own page or an --allow-origin (Origin); beyond this machine a token is required.

    Without --checkpoint: the built-in expression-va (FER2013 expressions on the circumplex; not Mamba-VA), whose
    rows carry the seven expression probabilities, shown as bars on the page."""
    import importlib.util

    if importlib.util.find_spec("fastapi") is None or importlib.util.find_spec("uvicorn") is None:
        raise MambavaError("mambava serve needs FastAPI and uvicorn: pip install 'mambava[serve]'")
    import torch
    import uvicorn

    from mambava.inference.catalog import resolve_model
    from mambava.inference.config import PredictConfig
    from mambava.inference.predict import Predictor
    from mambava.serve.access import Access, is_loopback, new_token
    from mambava.serve.app import create_app, listen, uvicorn_config
    from mambava.serve.sessions import ServeLimits
    from mambava.temporal.tcn import STEP_PRECISIONS

    if step_precision not in STEP_PRECISIONS:
        raise MambavaError(f"--step-precision {step_precision!r}: expected one of {', '.join(STEP_PRECISIONS)}")
    if not 0 < port < 65536:
        raise MambavaError(f"--port must be 1..65535, got {port}")
    limits = ServeLimits(
        max_sessions=max_sessions,
        queue_frames=queue_frames,
        max_upload_mb=max_upload_mb,
        max_frame_mb=max_frame_mb,
        max_frame_pixels=max_frame_pixels,
        threads=threads if threads is not None else torch.get_num_threads(),
    )
    local = is_loopback(host)
    access = Access(token if token is not None or local else new_token(), tuple(allow_origin or ()))
    sock = listen(host, port)  # a port in use: one line, before the models load
    try:
        checkpoint, backbone = default_checkpoint(checkpoint), resolve_model(backbone, "backbone")
        config = PredictConfig(
            windowing="full",
            detector=detector,
            landmarks=landmark_source(landmarks),
            device=device,
            batch_size=8,
            precision=precision,
            step_precision=step_precision,
            threads=limits.threads,
            expressions=expressions,
        )
        predictor = Predictor(checkpoint, backbone, config)
        app = create_app(predictor, limits, access)  # a model that cannot serve: one line, nothing printed before
        shown = "127.0.0.1" if host in ("0.0.0.0", "") else f"[{host}]" if ":" in host else host
        typer.echo(
            f"mambava serve: {predictor.model_label} on http://{shown}:{port}/ "
            f"({'videos and features' if predictor.extractor is not None else 'features only: no --backbone'}; "
            f"up to {max_sessions} live sessions)",
            err=True,
        )
        if not local:
            typer.echo(
                f"warning: --host {host} is reachable from the network, in plain HTTP: clients need the token; "
                "put a TLS reverse proxy in front of it (docs/serve.md)",
                err=True,
            )
        if access.token is not None:
            typer.echo(f"token: {access.token} (open http://{shown}:{port}/?token={access.token})", err=True)
        server = uvicorn.Server(uvicorn_config(app))
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:  # (uvicorn raises the Ctrl-C it handled again once stopped)
            pass
    finally:
        sock.close()
    if not server.started:
        raise MambavaError(f"the server on {host}:{port} did not start")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_command)
