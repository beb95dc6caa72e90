"""POST /predict of `mambava serve` under hostile or heavy use (issue 22, item 3): a chunked body is refused
while it is read, not after it was written to disk; the same video gives the same bits whatever else is
being served."""

from __future__ import annotations

import io
import json
import random
import select
import socket
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from support import DIM, short_clip


def _post_chunked(host: str, port: int, limit_bytes: int) -> tuple[int, bytes]:
    """POST /predict a multipart body in chunks (no Content-Length) until the server answers or `limit_bytes`
    are sent: (bytes sent before the answer came, the answer)."""
    sock = socket.create_connection((host, port), timeout=30)
    head = b'--XX\r\nContent-Disposition: form-data; name="file"; filename="big.mp4"\r\nContent-Type: video/mp4\r\n\r\n'
    sock.sendall(
        f"POST /predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: multipart/form-data; boundary=XX\r\n"
        "Transfer-Encoding: chunked\r\n\r\n".encode()
        + b"%x\r\n%s\r\n" % (len(head), head)
    )
    block = bytes(256 * 1024)
    chunk = b"%x\r\n%s\r\n" % (len(block), block)
    sent = 0
    sock.settimeout(5)
    try:
        while sent < limit_bytes and not select.select([sock], [], [], 0)[0]:
            sock.sendall(chunk)
            sent += len(block)
    except OSError:  # the server answered and closed the connection (reset, broken pipe) or stopped reading
        pass
    sock.settimeout(30)
    answer = b""
    try:
        while part := sock.recv(65536):
            answer += part
            if b"\r\n\r\n" in answer and answer.endswith(b"}"):
                break
    except OSError:
        pass
    sock.close()
    return sent, answer


def test_a_chunked_upload_is_refused_at_the_limit_while_it_is_read(tiny_mamba_va):
    """--max-upload-mb 1, a chunked body (no Content-Length, so nothing to refuse up front) streamed up to
    100 MB: the server answers 413 once it has read past the limit, while the client is still sending; it
    never reads (nor spools to disk) the rest. Before, it read the whole body first."""
    from mambava.inference.predict import Predictor
    from mambava.serve.app import ServerThread, create_app
    from mambava.serve.sessions import ServeLimits

    app = create_app(Predictor(tiny_mamba_va(DIM), windowing="full"), ServeLimits(max_upload_mb=1))
    with ServerThread(app) as server:
        sent, answer = _post_chunked(server.host, server.port, 100 * 1024 * 1024)
    status, _, body = answer.partition(b"\r\n\r\n")
    assert status.startswith(b"HTTP/1.1 413"), answer[:300]
    error = json.loads(body[body.index(b"{") :])["error"]
    assert error.startswith("upload of more than 1.") and error.endswith(
        "MB is over this server's limit of 1 MB (--max-upload-mb)"
    )
    assert sent < 40 * 1024 * 1024  # the limit, and what the sockets' buffers held when the answer came


def _upload(url: str, video: bytes) -> list[dict]:
    import httpx

    response = httpx.post(url + "/predict", files={"file": ("clip.mp4", video, "video/mp4")}, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def two_threads():
    """torch on 2 threads for the test (the suite runs on 1), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_the_same_video_gives_the_same_bits_whatever_else_is_served(
    models, media_dir, tmp_path, monkeypatch, two_threads
):
    """Uploads of one clip, alone and then three at once beside a live session streaming its frames, while the
    load average the thread policy reads flips at random between idle and busy (as it does when uploads come
    together: the policy then drops to one thread): every answer equals the first, bit for bit. The control
    shows what the server prevents: the same predictor on 1 and on 2 threads gives different bits (MTCNN's
    boxes move by ~1e-5 px, and the values after them)."""
    import websockets.sync.client

    from mambava.core.runtime import torch_threads
    from mambava.inference.predict import Predictor
    from mambava.media.video import open_video
    from mambava.serve.app import ServerThread, create_app

    clip = short_clip(media_dir, tmp_path / "clip.mp4", n=4)
    video = clip.read_bytes()
    predictor = Predictor(models["model"], models["vit"], precision="fp32", detector="mtcnn")
    idle = (0.0,) * 3  # (the policy keeps the thread count set)
    monkeypatch.setattr("mambava.core.runtime.os.getloadavg", lambda: idle)
    with torch_threads(1):
        one = predictor.predict(clip)
    with torch_threads(2):
        two = predictor.predict(clip)
    columns = ["x1", "y1", "x2", "y2", "valence", "arousal"]
    assert not np.array_equal(one[columns].to_numpy(), two[columns].to_numpy())  # the control

    draw = random.Random(0)
    monkeypatch.setattr(
        "mambava.core.runtime.os.getloadavg", lambda: (99.0,) * 3 if draw.random() < 0.5 else (0.0,) * 3
    )
    jpegs = []
    with open_video(clip) as reader:
        for frame in reader:
            buffer = io.BytesIO()
            Image.fromarray(frame.image).save(buffer, format="JPEG")
            jpegs.append(buffer.getvalue())

    app = create_app(predictor)
    with ServerThread(app) as server:
        first = _upload(server.url, video)
        answers: list = [None] * 3

        def post(i):
            answers[i] = _upload(server.url, video)

        def live():
            with websockets.sync.client.connect(server.url.replace("http", "ws") + "/ws?name=live") as ws:
                ws.recv(timeout=60)
                for _ in range(2):
                    for jpeg in jpegs:
                        ws.send(jpeg)
                        ws.recv(timeout=120)

        threads = [threading.Thread(target=post, args=(i,)) for i in range(3)] + [threading.Thread(target=live)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
    assert all(answer == first for answer in answers)  # the JSON rows, every float bit for bit
