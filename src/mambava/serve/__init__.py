"""`mambava serve`: one loaded model behind HTTP and WebSocket for many clients (docs/serve.md).

`sessions`: the live sessions and the worker thread that steps them all in one batch; `app`: the FastAPI
application (POST /predict, the /ws sessions, the browser page in `static/`). FastAPI and uvicorn come with the
`serve` extra (`pip install 'mambava[serve]'`); `mambava.serve.sessions` needs neither.
"""

from mambava.serve.sessions import ServeLimits, Session, SessionHub

__all__ = ["ServeLimits", "Session", "SessionHub"]
