"""One live session of `mambava serve` can never hurt another (issue 22, item 2).

Each hostile message is sent by an attacker session while a victim session streams beside it, in the same
rounds of the worker (the hub is held while both queue their frames): the attacker gets its one-line errors
and goes on (or is closed cleanly), the victim gets every answer, with the values of the same frames served
alone. Ends with a fuzz test of the protocol: random and boundary messages for a bounded number of rounds.
"""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from support import DIM

N_VICTIM = 10


def _app(models, detector, **limits):
    from mambava.inference.predict import Predictor
    from mambava.serve.app import create_app
    from mambava.serve.sessions import ServeLimits

    predictor = Predictor(models["model"], models["vit"], precision="fp32", detector=detector)
    return create_app(predictor, ServeLimits(**{"queue_frames": 64, **limits}))


def _png(width: int, height: int, rows: int | None = None) -> bytes:
    """A PNG of `width`x`height` grey pixels (8-bit), its data holding `rows` rows (None: all; 0: none, a
    header claiming a size and nothing else)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\x00" + bytes(width)
    data = b"".join(packer.compress(row) for _ in range(height if rows is None else rows)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def _jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def face_jpeg(media_dir) -> bytes:
    from mambava.media.video import open_video

    with open_video(media_dir / "single_face.mp4") as reader:
        return _jpeg(next(iter(reader)).image)


def _victim_features() -> np.ndarray:
    return (np.cumsum(np.random.default_rng(5).normal(size=(N_VICTIM, DIM)), axis=0) / 4).astype("<f4")


def _until(ws, frame: int) -> list[dict]:
    """Messages up to and including the answer to `frame`."""
    messages = []
    while True:
        messages.append(ws.receive_json())
        if messages[-1].get("frame") == frame:
            return messages


def _values(messages: list[dict]) -> np.ndarray:
    return np.array([[m["tracks"][0]["valence"], m["tracks"][0]["arousal"]] for m in messages if "tracks" in m])


def _alone(models, detector, features) -> list[dict]:
    from fastapi.testclient import TestClient

    with TestClient(_app(models, detector)) as client, client.websocket_connect("/ws?name=v") as ws:
        ws.receive_json()
        for feature in features:
            ws.send_bytes(feature.tobytes())
        return [m for m in _until(ws, len(features) - 1) if "frame" in m]


def test_bad_times_are_refused_before_a_round_and_both_sessions_go_on(models, detector):
    """{"time": NaN}, Infinity, -Infinity, +-1e308, 1e400, 10**400, a string, true, null, a time going back:
    each is answered with one line, and the attacker's next frame is answered as usual (it takes the time
    1/fps after the last); the victim, in the same rounds, gets its 10 answers, equal to the run alone."""
    from fastapi.testclient import TestClient

    bad = ["NaN", "Infinity", "-Infinity", "1e308", "-1e308", "1e400", "1" + "0" * 400, '"5"', "true", "null", "0.01"]
    features = _victim_features()
    alone = _alone(models, detector, features)
    app = _app(models, detector)
    with (
        TestClient(app) as client,
        client.websocket_connect("/ws?name=a") as attacker,
        client.websocket_connect("/ws?name=v") as victim,
    ):
        attacker.receive_json(), victim.receive_json()
        app.state.hub.pause()  # every frame below waits, then they are served in shared rounds
        attacker.send_text('{"time": 5}')
        attacker.send_bytes(features[0].tobytes())
        for i, text in enumerate(bad):
            attacker.send_text('{"time": ' + text + "}")
            attacker.send_bytes(features[(i + 1) % N_VICTIM].tobytes())
            if i < N_VICTIM:
                victim.send_bytes(features[i].tobytes())
        app.state.hub.resume()
        got_a = _until(attacker, len(bad))
        got_v = [m for m in _until(victim, N_VICTIM - 1) if "frame" in m]
    errors = [m["error"] for m in got_a if "frame" not in m]
    assert errors[0] == "time nan: a time must be a finite number of seconds within +-1e+09"
    assert errors[1] == "time inf: a time must be a finite number of seconds within +-1e+09"
    assert errors[3] == "time 1e+308: a time must be a finite number of seconds within +-1e+09"
    assert errors[6] == "time 10000000000000000000...: a time must be a finite number of seconds within +-1e+09"
    kinds = ("str", "bool", "NoneType")
    assert errors[7:10] == [f'{{"time": ...}} must be a number of seconds, got {t}' for t in kinds]
    assert errors[10] == "time 0.01: before the previous frame's 5.33333 (a session's times never go back)"
    assert len(errors) == len(bad) and all("\n" not in e for e in errors)
    rows = [m for m in got_a if "frame" in m]
    assert [m["frame"] for m in rows] == list(range(len(bad) + 1)) and all("tracks" in m for m in rows)
    assert [m["time"] for m in rows] == [round(5 + i / 30, 6) for i in range(len(bad) + 1)]
    assert [m["frame"] for m in got_v] == list(range(N_VICTIM)) and all("tracks" in m for m in got_v)
    assert np.abs(_values(got_v) - _values(alone)).max() <= 2e-6  # (the batch's other rows: float32 rounding)


def test_an_image_header_claiming_20000x20000_fails_its_own_frame_only(models, detector, face_jpeg, capfd):
    """A 65-byte PNG whose header claims 20000x20000 (PIL's decompression-bomb error) in the same round as a
    victim's real frame: the attacker's frame is refused from its header, in one line; the victim's frame
    finds its face; nothing is printed to the server's log."""
    from fastapi.testclient import TestClient

    bomb = _png(20000, 20000, rows=0)
    assert len(bomb) < 100
    app = _app(models, detector)
    with (
        TestClient(app) as client,
        client.websocket_connect("/ws?name=a") as attacker,
        client.websocket_connect("/ws?name=v") as victim,
    ):
        attacker.receive_json(), victim.receive_json()
        app.state.hub.pause()
        attacker.send_bytes(bomb)
        victim.send_bytes(face_jpeg)
        attacker.send_bytes(face_jpeg)
        app.state.hub.resume()
        got_a, got_v = _until(attacker, 1), _until(victim, 0)
    assert got_a[0] == {
        "frame": 0,
        "error": "frame 0: an image of 400000000 pixels is over the limit of 8294400 pixels (--max-frame-pixels)",
    }
    assert got_a[1]["tracks"][0]["face"] is True  # the attacker goes on
    assert len(got_v) == 1 and got_v[0]["tracks"][0]["face"] is True
    assert capfd.readouterr().err == ""


def test_a_12000x12000_png_is_refused_from_its_header_before_decoding(models, detector):
    """A real 12000x12000 PNG (a few hundred KB; 432 MB once decoded to RGB, 10 s of the worker) is refused
    from its header under the default limit (3840x2160), and the session goes on."""
    from fastapi.testclient import TestClient

    big = _png(12000, 12000)
    assert len(big) < 1_000_000
    with TestClient(_app(models, detector)) as client, client.websocket_connect("/ws") as ws:
        ws.receive_json()
        ws.send_bytes(big)
        ws.send_bytes(_png(40, 30))
        got = _until(ws, 1)
    assert got[0] == {
        "frame": 0,
        "error": "frame 0: a 12000x12000 image (144000000 pixels) is over the limit of 8294400 pixels "
        "(--max-frame-pixels)",
    }
    assert got[1]["frame"] == 1 and got[1]["tracks"] == []  # decoded: no face in a grey rectangle


def test_the_pixel_limit_is_the_servers_option(models, detector):
    """--max-frame-pixels 1000: a 40x30 image is refused from its header, a 20x20 one decoded."""
    from fastapi.testclient import TestClient

    with TestClient(_app(models, detector, max_frame_pixels=1000)) as client, client.websocket_connect("/ws") as ws:
        ws.receive_json()
        ws.send_bytes(_png(40, 30))
        ws.send_bytes(_png(20, 20))
        got = _until(ws, 1)
    assert (
        got[0]["error"] == "frame 0: a 40x30 image (1200 pixels) is over the limit of 1000 pixels (--max-frame-pixels)"
    )
    assert got[1]["tracks"] == []


def test_a_jump_in_time_costs_a_bounded_number_of_steps(models, detector):
    """A features session jumps 120 s ahead, then to 1e6 s: the model steps through max_gap_ticks (15) of each
    gap, holding the last feature as `stream` does, and skips the rest (skipped_total), so each message costs
    the worker at most 16 steps, not 3600 (or 3e7); the session then goes on at 1/fps."""
    from fastapi.testclient import TestClient

    features = _victim_features()
    app = _app(models, detector)
    with TestClient(app) as client, client.websocket_connect("/ws?name=f") as ws:
        hub = app.state.hub
        ws.receive_json()
        ws.send_bytes(features[0].tobytes())
        ws.send_bytes(features[1].tobytes())
        _until(ws, 1)
        calls = hub.step_calls
        ws.send_text('{"time": 120}')
        ws.send_bytes(features[2].tobytes())
        jump = _until(ws, 2)[-1]
        assert hub.step_calls - calls <= 16, hub.step_calls - calls
        assert jump["skipped_total"] == 3600 - 1 - 1 - 15 and jump["time"] == 120
        calls = hub.step_calls
        ws.send_text('{"time": 1e6}')
        ws.send_bytes(features[3].tobytes())
        ws.send_bytes(features[4].tobytes())
        later = _until(ws, 4)
    assert hub.step_calls - calls <= 16 + 1
    assert later[0]["skipped_total"] > 29_000_000 and later[1]["skipped_total"] == later[0]["skipped_total"]
    assert [m["time"] for m in later] == [1e6, round(1e6 + 1 / 30, 6)]
    assert all(np.isfinite(m["tracks"][0]["valence"]) for m in [jump, *later])


def test_a_frame_over_the_limit_is_answered_and_a_message_beyond_4x_closes_1009(tiny_mamba_va):
    """A real uvicorn (the settings `mambava serve` uses): with --max-frame-mb 1, a 2.5 MB frame is answered
    with its one-line error and the session goes on; a message over 4x the limit (what the server reads at
    most) closes the connection with 1009 (message too big), the server having read no more of it."""
    import websockets.sync.client
    from websockets.exceptions import ConnectionClosed

    from mambava.inference.predict import Predictor
    from mambava.serve.app import ServerThread, create_app
    from mambava.serve.sessions import ServeLimits

    app = create_app(Predictor(tiny_mamba_va(DIM), windowing="full"), ServeLimits(max_frame_mb=1))
    with ServerThread(app) as server:
        url = server.url.replace("http", "ws") + "/ws?name=big"
        with websockets.sync.client.connect(url, max_size=None) as ws:
            ws.recv(timeout=10)
            ws.send(bytes(int(2.5 * 1024 * 1024)))
            assert json.loads(ws.recv(timeout=30)) == {
                "frame": 0,
                "error": "frame 0: 2.5 MB is over the limit of 1 MB (--max-frame-mb)",
            }
            ws.send(np.zeros(DIM, "<f4").tobytes())
            assert json.loads(ws.recv(timeout=10))["frame"] == 1
            ws.send(bytes(5 * 1024 * 1024))
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=30)
    assert closed.value.rcvd.code == 1009


def test_a_failure_in_one_sessions_work_closes_that_session_only(models, detector, face_jpeg, monkeypatch):
    """Faults the checks cannot foresee: the face detector raising on one session's image fails that frame
    only (the batch is tried image by image); a session whose own step raises is closed (its error and code
    1011), its tracks leave the batch; the victim gets all its answers, equal to the run alone."""
    from fastapi.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    from mambava.serve.sessions import Session

    features = _victim_features()
    app = _app(models, detector)
    detector_object = app.state.predictor.detector
    detect = detector_object.detect_batch

    def fragile(images):  # a detector that breaks on 30-pixel-wide images
        if any(image.shape[1] == 30 for image in images):
            raise RuntimeError("detector broke")
        return detect(images)

    monkeypatch.setattr(detector_object, "detect_batch", fragile)
    advance = Session.advance

    def broken(self, events):
        if self.name == "a" and any(e.index == 2 for e in events):
            raise RuntimeError("a bug")
        return (yield from advance(self, events))

    monkeypatch.setattr(Session, "advance", broken)
    with (
        TestClient(app) as client,
        client.websocket_connect("/ws?name=a") as attacker,
        client.websocket_connect("/ws?name=v") as victim,
    ):
        hub = app.state.hub
        attacker.receive_json(), victim.receive_json()
        hub.pause()
        attacker.send_bytes(_png(30, 20))
        victim.send_bytes(face_jpeg)
        hub.resume()
        assert attacker.receive_json() == {
            "frame": 0,
            "error": "frame 0: face detection failed (RuntimeError: detector broke)",
        }
        assert victim.receive_json()["tracks"][0]["face"] is True
        for feature in features[:2]:
            attacker.send_bytes(feature.tobytes())
        _until(attacker, 1)
        hub.pause()
        attacker.send_bytes(features[2].tobytes())
        for feature in features:
            victim.send_bytes(feature.tobytes())
        hub.resume()
        assert attacker.receive_json() == {
            "error": "internal error in this session (RuntimeError: a bug); it is closed",
            "close": 1011,
        }
        with pytest.raises(WebSocketDisconnect) as closed:
            attacker.receive_json()
        got_v = [m for m in _until(victim, N_VICTIM) if "frame" in m]
        keys = list(hub.batch.keys)
    assert closed.value.code == 1011
    assert keys == [(2, "v")]  # the attacker's (session 1) track left the batch
    assert [m["frame"] for m in got_v] == list(range(1, N_VICTIM + 1))
    # the victim's face track from its image, then its features: compare the features' part with a run that
    # also starts with the image (the alone run below)
    with TestClient(_app(models, detector)) as client, client.websocket_connect("/ws?name=v") as ws:
        ws.receive_json()
        ws.send_bytes(face_jpeg)
        for feature in features:
            ws.send_bytes(feature.tobytes())
        again = [m for m in _until(ws, N_VICTIM) if "frame" in m]
    assert np.abs(_values(got_v) - _values(again[1:])).max() <= 2e-6


# --------------------------------------------------------------------------------------------------- fuzz

FUZZ_MESSAGES = 160  # the attacker's messages (a bounded number of rounds: about one each)


def _fuzz_message(rng: np.random.Generator, face: bytes):
    """One random or boundary message: ("bytes" | "text", payload)."""
    dim_bytes = 4 * DIM
    kind = int(rng.integers(0, 16))
    if kind == 0:
        return "bytes", rng.bytes(int(rng.integers(0, 3000)))
    if kind == 1:
        return "bytes", rng.bytes(int(rng.choice([dim_bytes - 4, dim_bytes - 1, dim_bytes + 1, dim_bytes + 4])))
    if kind == 2:
        special = rng.choice([np.nan, np.inf, -np.inf, 3.4e38, -3.4e38, 1e30, 0.0, 1e-45])
        feature = rng.normal(size=DIM).astype("<f4")
        feature[rng.integers(0, DIM)] = special
        return "bytes", feature.tobytes()
    if kind == 3:
        return "bytes", rng.normal(size=DIM).astype("<f4").tobytes()
    if kind == 4:  # headers claiming huge or zero sizes, truncated
        width, height = rng.choice([0, 1, 65535, 20000, 2**31 - 1], size=2)
        return "bytes", _png(int(width), int(height), rows=0)
    if kind == 5:
        return "bytes", _png(int(rng.integers(1, 40)), int(rng.integers(1, 40)))
    if kind == 6:
        return "bytes", b"\xff\xd8\xff" + rng.bytes(int(rng.integers(0, 500)))
    if kind == 7:
        return "bytes", face[: int(rng.integers(3, len(face)))]  # a truncated real JPEG
    if kind == 8:
        shape = (int(rng.integers(1, 30)), int(rng.integers(1, 30)), 3)
        return "bytes", _jpeg(rng.integers(0, 256, size=shape, dtype=np.uint8))
    if kind == 9:
        return "bytes", bytes(int(0.06 * 1024 * 1024))  # over the fuzz server's 0.05 MB frame limit
    if kind == 10:
        value = rng.choice(["NaN", "Infinity", "-Infinity", "1e308", "-1e308", "1e999", "-1", "0", "1e9", "1e10"])
        return "text", '{"time": ' + str(value) + "}"
    if kind == 11:
        return "text", json.dumps({"time": float(rng.uniform(-10, 2000))})
    if kind == 12:
        return "text", rng.choice(['"time"', "[]", "{}", '{"time": [1]}', '{"time": {"a": 1}}', "null", "", "{"])
    if kind == 13:
        return "text", "[" * int(rng.integers(1, 5000)) + "]" * int(rng.integers(0, 3))
    if kind == 14:
        return "text", rng.bytes(int(rng.integers(0, 2000))).decode("latin-1")
    return "bytes", face


def test_fuzz_the_protocol_beside_a_victim(models, detector, face_jpeg):
    """FUZZ_MESSAGES random and boundary messages (random bytes, feature-sized bytes with NaN/inf/3.4e38,
    PNG headers claiming 0 to 2^31-1 pixels a side, truncated JPEGs, frames over the limit, times NaN/inf/
    huge/negative/going back, JSON of every shape, 5000-deep brackets, binary text) from an attacker, which
    reconnects whenever it is closed, while a victim streams 10 feature frames with times and gaps beside it.
    The attacker's every frame is answered exactly once, each error one line; the victim gets its 10
    answers, equal to the run alone; nothing is printed to the server's log; the server still serves."""
    from fastapi.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    rng = np.random.default_rng(22)
    features = _victim_features()
    times = [0.0, 0.04, 0.07, 0.1, 0.5, 0.53, 2.0, 2.05, 2.1, 2.2]  # two gaps beyond max_gap_ticks

    def victim_run(ws, between=None):
        for i, feature in enumerate(features):
            if between is not None:
                between(i)
            ws.send_text(json.dumps({"time": times[i]}))
            ws.send_bytes(feature.tobytes())
        return [m for m in _until(ws, N_VICTIM - 1) if "frame" in m]

    with TestClient(_app(models, detector, max_frame_mb=0.05)) as client, client.websocket_connect("/ws?name=v") as ws:
        ws.receive_json()
        alone = victim_run(ws)

    app = _app(models, detector, max_frame_mb=0.05)
    closed, answered, frames_sent, answered_upto, sessions = [], 0, 0, 0, 0
    with TestClient(app) as client, client.websocket_connect("/ws?name=v") as victim:
        victim.receive_json()
        attacker = None

        def connect():
            nonlocal attacker, frames_sent, sessions, answered_upto
            if attacker is not None:
                attacker.__exit__(None, None, None)
            attacker = client.websocket_connect("/ws?name=a").__enter__()
            assert "session" in attacker.receive_json()
            frames_sent, answered_upto, sessions = 0, 0, sessions + 1

        def drain():
            """The attacker's answers so far: a valid frame is sent and everything up to its answer read."""
            nonlocal answered, frames_sent, answered_upto
            attacker.send_bytes(rng.normal(size=DIM).astype("<f4").tobytes())
            frames_sent += 1
            messages = []
            while True:
                try:
                    message = attacker.receive_json()
                except WebSocketDisconnect as gone:
                    closed.append(gone.code)
                    break
                messages.append(message)
                if "close" in message:
                    continue
                if message.get("frame") == frames_sent - 1:
                    break
            frames = sorted(m["frame"] for m in messages if "frame" in m)  # (a refused frame is answered at once)
            assert len(frames) == len(set(frames))  # never twice
            gone = any("close" in m for m in messages)
            if not gone:  # every frame since the last drain, once (a closed session's later frames are not)
                assert frames == list(range(answered_upto, frames_sent))
            assert all("\n" not in m.get("error", "") and "Traceback" not in m.get("error", "") for m in messages)
            answered += len(frames)
            answered_upto = frames_sent
            return any("close" in m for m in messages)

        connect()
        per_victim_frame = FUZZ_MESSAGES // N_VICTIM

        def attack(i):
            nonlocal frames_sent
            for _ in range(per_victim_frame):
                kind, payload = _fuzz_message(rng, face_jpeg)
                if kind == "bytes":
                    attacker.send_bytes(payload)
                    frames_sent += 1
                else:
                    attacker.send_text(payload)
            if drain():
                connect()

        try:
            got = victim_run(victim, attack)
        finally:
            attacker.__exit__(None, None, None)
        assert app.state.hub.alive
        with client.websocket_connect("/ws?name=after") as after:  # the server still serves
            after.receive_json()
            after.send_bytes(features[0].tobytes())
            assert "tracks" in after.receive_json()
    assert [m["frame"] for m in got] == list(range(N_VICTIM)) and all("tracks" in m for m in got)
    assert [m["time"] for m in got] == [m["time"] for m in alone] == times
    assert [m["skipped_total"] for m in got] == [m["skipped_total"] for m in alone] and got[-1]["skipped_total"] > 0
    assert np.abs(_values(got) - _values(alone)).max() <= 2e-6
    assert answered >= FUZZ_MESSAGES // 3 and sessions >= 1
    assert set(closed) <= {1008, 1011}
