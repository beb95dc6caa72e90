"""WS /ws: a live session (?name=NAME&fps=FPS). Binary messages are frames (JPEG/PNG, or the model's float32
features), a text message {"time": seconds} sets the next frame's timestamp; each frame is answered with one
JSON message. Sessions are stepped together by the hub's worker thread (`mambava.serve.sessions`).
"""

from __future__ import annotations

import asyncio
import json
import re

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from mambava.core.errors import MambavaError
from mambava.data.timebase import check_fps
from mambava.serve.common import MB
from mambava.serve.sessions import message_line

# WebSocket close codes: 1008 policy (a refused session), 1013 try again later (server full), 1001 going away
FULL, GOING_AWAY, POLICY = 1013, 1001, 1008

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
                        f"{len(payload) / MB:.3g} MB is over the limit of {limits.max_frame_mb:g} MB (--max-frame-mb)",
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
