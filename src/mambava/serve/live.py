"""WS /ws: a live session (?name=NAME&fps=FPS). Binary messages are frames (JPEG/PNG, or the model's float32
features), a text message {"time": seconds} sets the next frame's timestamp; each frame is answered with one
JSON message. Sessions are stepped together by the hub's worker thread (`mambava.serve.sessions`).

Every message is checked here before it reaches the hub: a frame's size, a text message's size, JSON and time
(`Session.parse_time`); a refused one is answered with its one-line error and the session goes on. A client
that does not read its answers is closed (1008) once MAX_OUTBOX of them wait, rather than fill the memory.
"""

from __future__ import annotations

import asyncio
import json
import re

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from mambava.core.errors import MambavaError
from mambava.data.timebase import check_fps
from mambava.serve.common import MB, no_paths
from mambava.serve.sessions import message_line

# WebSocket close codes: 1008 policy (a refused session), 1013 try again later (server full), 1001 going away
FULL, GOING_AWAY, POLICY = 1013, 1001, 1008
MAX_TEXT = 1024  # bytes of a text message ({"time": seconds} needs a few dozen)
MAX_OUTBOX = 1000  # answers waiting for a client that does not read them: beyond, the session is closed
DRAIN_S = 5.0  # seconds a closing session's last answers may take to leave
FPS_RANGE = (0.01, 1000.0)  # a session's fps: its frames' default times must stay within Session's time range
TIME_HELP = 'a text message must be {"time": seconds} (the next frame\'s timestamp); frames are binary messages'

router = APIRouter()


@router.websocket("/ws")
async def live(websocket: WebSocket, name: str = "stream", fps: str = "30"):
    hub, limits = websocket.app.state.hub, websocket.app.state.limits
    await websocket.accept()
    loop = asyncio.get_running_loop()
    outbox: asyncio.Queue = asyncio.Queue()

    def deliver(message: dict) -> None:  # from the worker thread
        loop.call_soon_threadsafe(outbox.put_nowait, message)

    try:
        if not FPS_RANGE[0] <= check_fps(fps, "fps") <= FPS_RANGE[1]:
            raise MambavaError(f"fps must be within {FPS_RANGE[0]:g}..{FPS_RANGE[1]:g} frames per second, got {fps!r}")
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
            message = await outbox.get()
            if "error" in message:
                message["error"] = no_paths(str(message["error"]))
            try:
                line = message_line(message)
            except (TypeError, ValueError):  # (a value JSON cannot carry): the frame's error instead
                line = message_line({"frame": message.get("frame"), "error": "this answer could not be encoded"})
            await websocket.send_text(line)
            if "close" in message:  # the hub closed this session (its own failure)
                await websocket.close(code=int(message["close"]), reason=str(message.get("error", ""))[:120])
                return

    sender = asyncio.create_task(send())
    next_time = None
    try:
        while not sender.done():
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            if outbox.qsize() > MAX_OUTBOX:  # not read: its answers are dropped, the session closed
                unread = outbox.qsize()
                sender.cancel()
                await websocket.close(code=POLICY, reason=f"{unread} answers unread: the session is closed")
                break
            if message.get("bytes") is not None:
                payload = message["bytes"]
                if len(payload) > limits.max_frame_mb * MB:
                    hub.refuse(
                        session,
                        f"{len(payload) / MB:.3g} MB is over the limit of {limits.max_frame_mb:g} MB (--max-frame-mb)",
                    )
                    continue
                hub.put(session, payload, next_time)
                next_time = None
            elif message.get("text") is not None:
                try:
                    next_time = _parse_time(session, message["text"])
                except MambavaError as refused:
                    outbox.put_nowait({"error": str(refused)})
    except WebSocketDisconnect:
        pass
    finally:
        hub.close_session(session)
        # answers still on their way are sent before the socket closes (the client may be gone: ignored)
        end = loop.time() + DRAIN_S
        while not outbox.empty() and not sender.done() and loop.time() < end:
            await asyncio.sleep(0.01)
        if not sender.done():
            sender.cancel()
            try:
                await websocket.close(code=GOING_AWAY)
            except Exception:  # already closed by the client
                pass


def _parse_time(session, text: str) -> float:
    """The time of a text message {"time": seconds}; MambavaError (one line) for anything else."""
    if len(text) > MAX_TEXT:
        raise MambavaError(f"a text message of {len(text)} characters: {TIME_HELP}")
    try:
        control = json.loads(text)
    except (ValueError, RecursionError):
        raise MambavaError(TIME_HELP) from None
    if not isinstance(control, dict) or "time" not in control:
        raise MambavaError(TIME_HELP)
    return session.parse_time(control["time"])
