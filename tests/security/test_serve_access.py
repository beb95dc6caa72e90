"""`mambava serve` safe to expose (issue 22, item 4): Host and Origin checked against the server's address and
--allow-origin (DNS rebinding, pages of other sites), a token (generated and required beyond loopback, optional
on it), never an absolute path in an answer."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from support import DIM, run_cli

TOKEN = "s3cret-token-for-tests"


def _app(model, **access):
    from mambava.inference.predict import Predictor
    from mambava.serve.access import Access
    from mambava.serve.app import create_app

    return create_app(Predictor(model, windowing="full"), access=Access(**access))


def _get(url: str, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_dns_rebinding_and_other_sites_pages_are_refused(models):
    """A real server on 127.0.0.1: a request naming another host (a page of evil.example whose name now
    points at 127.0.0.1) is refused 400; one naming 127.0.0.1 or localhost is served. A WebSocket or an
    upload from a page of another site (its Origin) is refused 403; from the server's own page, or a program
    that sends no Origin, it is served."""
    import websockets.sync.client
    from websockets.exceptions import InvalidStatus

    from mambava.serve.app import ServerThread

    with ServerThread(_app(models["model"])) as server:
        port = server.port
        base = f"http://127.0.0.1:{port}"
        assert _get(base + "/info")[0] == 200
        assert _get(base + "/info", {"Host": f"localhost:{port}"})[0] == 200
        status, answer = _get(base + "/info", {"Host": f"evil.example:{port}"})
        assert status == 400 and answer["error"].startswith(f"Host 'evil.example:{port}' is not this server's address")
        assert _get(base + "/", {"Host": "evil.example"})[0] == 400
        ws_url = f"ws://127.0.0.1:{port}/ws"
        with pytest.raises(InvalidStatus) as refused:
            websockets.sync.client.connect(ws_url, origin="http://evil.example", open_timeout=10)
        assert refused.value.response.status_code == 403
        assert b"a page of another site may not use this server" in refused.value.response.body
        with websockets.sync.client.connect(ws_url, origin=f"http://127.0.0.1:{port}", open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=10))["session"] == 1
        with websockets.sync.client.connect(ws_url, open_timeout=10) as ws:  # no Origin: not a browser
            assert "session" in json.loads(ws.recv(timeout=10))
        upload = urllib.request.Request(
            base + "/predict", data=b"x", headers={"Origin": "http://evil.example", "Content-Type": "text/plain"}
        )
        with pytest.raises(urllib.error.HTTPError) as post:
            urllib.request.urlopen(upload, timeout=10)
        assert post.value.code == 403


def test_allow_origin_admits_a_reverse_proxys_site(models):
    """--allow-origin https://va.example.org: a request through a proxy that passes Host va.example.org and a
    page of that site (its Origin) are served; other sites are still refused."""
    from fastapi.testclient import TestClient
    from starlette.testclient import WebSocketDenialResponse

    app = _app(models["model"], allow_origins=("https://VA.example.org/",))
    with TestClient(app) as client:
        proxied = {"Host": "va.example.org", "Origin": "https://va.example.org"}
        assert client.get("/info", headers=proxied).status_code == 200
        with client.websocket_connect("/ws", headers=proxied) as ws:
            assert "session" in ws.receive_json()
        assert client.get("/info", headers={"Host": "other.example.org"}).status_code == 400
        with pytest.raises(WebSocketDenialResponse) as denied:
            with client.websocket_connect("/ws", headers={"Origin": "https://other.example.org"}):
                pass
        assert denied.value.status_code == 403
        assert client.get("/info", headers={"Origin": "null"}).status_code == 403


def test_the_token_guards_every_route_but_the_page(models):
    """With a token: /info, POST /predict and /ws need it (Authorization: Bearer, or ?token=), else 401 with one
    line; the page and its script load without it (they carry no data; the page reads ?token= from its URL);
    a wrong token is refused the same way."""
    from fastapi.testclient import TestClient
    from starlette.testclient import WebSocketDenialResponse

    with TestClient(_app(models["model"], token=TOKEN)) as client:
        assert client.get("/").status_code == 200 and client.get("/app.js").status_code == 200
        refused = client.get("/info")
        assert refused.status_code == 401 and refused.json() == {
            "error": "this server needs its token: Authorization: Bearer TOKEN, or ?token=TOKEN"
        }
        assert client.get("/info", headers={"Authorization": "Bearer wrong-token"}).json() == {"error": "wrong token"}
        assert client.get("/info", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert client.get(f"/info?token={TOKEN}").json()["token"] is True
        assert client.post("/predict", files={"file": ("a.mp4", b"x")}).status_code == 401
        for url in ("/ws", "/ws?token=wrong-token"):
            with pytest.raises(WebSocketDenialResponse) as denied:
                with client.websocket_connect(url):
                    pass
            assert denied.value.status_code == 401
        with client.websocket_connect(f"/ws?name=t&token={TOKEN}") as ws:
            assert ws.receive_json()["name"] == "t"
            ws.send_bytes(np.zeros(DIM, "<f4").tobytes())
            assert ws.receive_json()["frame"] == 0


def test_no_absolute_path_in_any_answer(models, media_dir, tmp_path):
    """/info names the model by its file name; an upload that fails names the upload; a session's errors name
    frames. No answer holds a path of the server's (its models, its temporary folder)."""
    from fastapi.testclient import TestClient

    from mambava.core.errors import MambavaError

    folder = str(models["model"].parent)
    with TestClient(_app(models["model"])) as client:
        info = client.get("/info")
        junk = client.post("/predict", files={"file": ("junk.mp4", b"not a video" * 40)})
        with client.websocket_connect("/ws") as ws:
            ws.receive_json()
            ws.send_bytes(b"\x89PNG\r\n\x1a\n broken")
            broken = ws.receive_json()
    assert info.json()["model"] == "model.safetensors"
    assert junk.status_code == 422 and junk.json()["error"].startswith("junk.mp4: ")
    for text in (info.text, junk.text, json.dumps(broken)):
        assert folder not in text and "/tmp" not in text and "mambava-serve-" not in text, text
    from mambava.serve.common import error, no_paths

    assert no_paths(f"{folder}/model.safetensors: a diverged model") == "model.safetensors: a diverged model"
    assert json.loads(error(422, f"{MambavaError(f'{tmp_path}/x/clip.mp4: no face')}").body) == {
        "error": "clip.mp4: no face"
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_command_with_a_token_on_loopback_and_frames_over_the_limit(models):
    """`mambava serve --token T --max-frame-mb 1` (a real process on 127.0.0.1): it prints the token and the
    page's address with it; /info needs it, a foreign Host is refused; a 2.5 MB frame is answered with its
    error (uvicorn reads messages up to 4x the limit; it closed the connection, 1009, at the limit itself
    before); Ctrl-C exits 0 with no traceback."""
    import websockets.sync.client

    port = _free_port()
    command = [sys.executable, "-c", "from mambava.cli import main; main()", "serve", "-c", str(models["model"])]
    command += ["--port", str(port), "--token", TOKEN, "--max-frame-mb", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 60
        while True:
            try:
                status, answer = _get(base + "/info")
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < end, process.communicate()[1][-2000:]
                time.sleep(0.2)
        assert status == 401
        assert _get(base + "/info", {"Authorization": f"Bearer {TOKEN}"})[1]["model"] == "model.safetensors"
        assert _get(base + f"/info?token={TOKEN}", {"Host": f"evil.example:{port}"})[0] == 400
        url = f"ws://127.0.0.1:{port}/ws?token={TOKEN}"
        with websockets.sync.client.connect(url, max_size=None, open_timeout=10) as ws:
            ws.recv(timeout=10)
            ws.send(bytes(int(2.5 * 1024 * 1024)))
            assert (
                json.loads(ws.recv(timeout=30))["error"] == "frame 0: 2.5 MB is over the limit of 1 MB (--max-frame-mb)"
            )
            ws.send(np.zeros(DIM, "<f4").tobytes())
            assert json.loads(ws.recv(timeout=10))["frame"] == 1
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0 and "Traceback" not in err, err[-2000:]
    assert f"token: {TOKEN} (open http://127.0.0.1:{port}/?token={TOKEN})" in err


class _NoServer:
    """Stands in for uvicorn.Server: records that it was asked to run, and runs nothing."""

    ran: list = []

    def __init__(self, config):
        self.started = True

    def run(self, sockets):
        _NoServer.ran.append([s.getsockname() for s in sockets])


def test_a_server_beyond_loopback_gets_a_generated_token_and_a_warning(models, capsys, monkeypatch):
    """--host 0.0.0.0 (never actually served here: uvicorn's Server is replaced): a token is generated and
    printed, with a warning that the server is reachable from the network in plain HTTP and should sit behind
    a TLS reverse proxy; on loopback, no token unless one is given."""
    import uvicorn

    from mambava.serve import app as serve_app

    monkeypatch.setattr(uvicorn, "Server", _NoServer)
    bound = []

    def listen(host, port):
        bound.append((host, port))
        return socket.socket()

    monkeypatch.setattr(serve_app, "listen", listen)
    code, _, err = run_cli(["serve", "-c", models["model"], "--host", "0.0.0.0", "--port", "8123"], capsys)
    assert code == 0, err
    lines = err.strip().splitlines()
    assert lines[0].startswith("mambava serve: model.safetensors on http://127.0.0.1:8123/ (features only")
    assert lines[1] == (
        "warning: --host 0.0.0.0 is reachable from the network, in plain HTTP: clients need the token; "
        "put a TLS reverse proxy in front of it (docs/serve.md)"
    )
    token = lines[2].split()[1]
    assert len(token) == 32 and lines[2] == f"token: {token} (open http://127.0.0.1:8123/?token={token})"
    code, _, err = run_cli(["serve", "-c", models["model"], "--port", "8124"], capsys)
    assert code == 0 and "token" not in err and len(err.strip().splitlines()) == 1
    assert bound == [("0.0.0.0", 8123), ("127.0.0.1", 8124)]
