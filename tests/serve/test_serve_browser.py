"""The page of `mambava serve` in a real headless Chromium (issue 17, item 7): Debian's chromium package, driven
by Playwright (never a downloaded browser), with a fake webcam fed from single_face.mp4 converted to .y4m. The
page must show rows arriving, the face box (and with the faces extra, the 68 points when "68 points" is ticked)
and the plots updating; its state is read from the DOM and from `window.mambava`; then the same with a video
file chosen in the page. The server has a token, given to the page in its address (/?token=...), as `mambava
serve` prints it. Skipped only where /usr/bin/chromium (or
Playwright) is absent outside CI; in CI it runs.

MAMBAVA_SERVE_SCREENSHOT=PATH also saves the page's screenshot there (docs/images/serve.png in docs/serve.md)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

CHROMIUM = Path("/usr/bin/chromium")
# The flags the tool notes ask for: no sandbox (root in a container), no GPU, nothing fetched from the network.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
ROWS = int(os.environ.get("MAMBAVA_SERVE_ROWS", 12))  # answers the page must show (more for a screenshot)


def _browser_or_skip():
    missing = [] if CHROMIUM.exists() else [f"{CHROMIUM} (apt-get install chromium; setup.sh does as root)"]
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
        missing.append("Playwright (pip install 'mambava[test]')")
    if missing and not os.environ.get("CI"):
        pytest.skip("the browser test needs " + " and ".join(missing))
    assert not missing, "in CI the browser test must run: " + ", ".join(missing)
    return sync_playwright


def write_y4m(video: Path, path: Path, n_frames: int = 48) -> Path:
    """The first frames of `video` as an uncompressed YUV4MPEG2 file (4:2:0), what Chromium's fake camera plays."""
    import av

    with av.open(str(video)) as source, open(path, "wb") as out:
        stream = source.streams.video[0]
        for i, frame in enumerate(source.decode(stream)):
            if i == n_frames:
                break
            yuv = frame.reformat(format="yuv420p").to_ndarray()
            if i == 0:
                out.write(f"YUV4MPEG2 W{frame.width} H{frame.height} F30:1 Ip A1:1 C420jpeg\n".encode())
            out.write(b"FRAME\n" + np.ascontiguousarray(yuv).tobytes())
    return path


def write_webm(video: Path, path: Path, n_frames: int = 48) -> Path:
    """The first frames of `video` as VP8 WebM (a codec every Chromium build plays), for the page's file input."""
    from support import first_frames

    return first_frames(video, path, n_frames, codec="libvpx", rate=30)


def test_page_shows_rows_box_and_plots_from_a_fake_webcam(models, detector, media_dir, tmp_path):
    sync_playwright = _browser_or_skip()
    from mambava.cli.options import faces_extra_installed, landmark_source
    from mambava.inference.predict import Predictor
    from mambava.serve.access import Access
    from mambava.serve.app import ServerThread, create_app
    from mambava.serve.sessions import ServeLimits

    clip = write_y4m(media_dir / "single_face.mp4", tmp_path / "clip.y4m")
    # as `mambava serve` builds it: --landmarks auto (dlib's 68 points with the faces extra)
    predictor = Predictor(
        models["model"], models["vit"], precision="fp32", detector=detector, landmarks=landmark_source("auto")
    )
    token = "browser-test-token"  # the page is opened as /?token=...: it sends it on the WebSocket
    app = create_app(predictor, ServeLimits(max_sessions=2), Access(token=token))
    with ServerThread(app) as server, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=FLAGS + [f"--use-file-for-fake-video-capture={clip}"],
            viewport={"width": 1000, "height": 760},
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.goto(f"{server.url}/?token={token}")
            assert page.title() == "mambava: live valence/arousal"
            assert page.url == server.url + "/"  # the token is out of the address bar (kept for the tab)
            page.check("#points")
            page.click("#webcam")
            page.wait_for_function("window.mambava.rows.length >= 4", timeout=60_000)
            first = page.evaluate("document.getElementById('circumplex').toDataURL()")
            page.wait_for_function(f"window.mambava.rows.length >= {ROWS}", timeout=60_000)
            page.screenshot(path=str(tmp_path / "serve.png"))
            if os.environ.get("MAMBAVA_SERVE_SCREENSHOT"):
                page.screenshot(path=os.environ["MAMBAVA_SERVE_SCREENSHOT"])
            page.click("#stop")
            webcam = page.evaluate("window.mambava.rows.length")
            state = page.evaluate("""() => ({rows: window.mambava.rows, sent: window.mambava.sent,
                points: window.mambava.pointsDrawn,
                drawn: window.mambava.drawn, point: window.mambava.point, errors: window.mambava.errors,
                session: window.mambava.session, shown: document.getElementById('rows').textContent,
                table: document.querySelectorAll('#latest tr').length,
                valence: document.getElementById('valence').textContent,
                circumplex: document.getElementById('circumplex').toDataURL(),
                timeline: (() => { const c = document.getElementById('timeline');
                    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
                    for (let i = 0; i < d.length; i += 4) if (d[i] === 31 && d[i+1] === 119 && d[i+2] === 180) n++;
                    return n; })(),
                box: (() => { const c = document.getElementById('overlay');
                    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
                    for (let i = 0; i < d.length; i += 4) if (d[i+3] > 0) n++; return n; })()})""")
            # then a video file: a new session named after it, its frames at the video's own times
            page.set_input_files("#file", str(write_webm(media_dir / "single_face.mp4", tmp_path / "talk.webm")))
            page.wait_for_function(
                "window.mambava.session?.name === 'talk' && window.mambava.rows.length >= 6", timeout=60_000
            )
            played = page.evaluate("({rows: window.mambava.rows, errors: window.mambava.errors})")
        finally:
            context.close()
    assert played["errors"] == [] and [r["frame"] for r in played["rows"]] == list(range(len(played["rows"])))
    times = [r["time"] for r in played["rows"]]
    assert times == sorted(times) and times[-1] <= 48 / 30 + 0.1  # the video's currentTime, within the clip
    assert sum(r["face"] for r in played["rows"]) >= len(times) - 1
    rows = state["rows"]
    assert state["errors"] == [] and state["session"]["name"] == "webcam"
    assert len(rows) >= ROWS and int(state["shown"]) == len(rows) and state["table"] == 8
    assert state["sent"] >= len(rows) and state["drawn"] >= len(rows) and webcam >= len(rows)
    assert [r["frame"] for r in rows] == list(range(len(rows)))  # every frame answered, in order
    assert all(r["time"] >= 0 for r in rows) and rows[-1]["time"] > rows[0]["time"]
    faces = [r for r in rows if r["face"]]
    assert len(faces) >= len(rows) - 2  # the man's face in the fake camera's frames
    assert all(r["box"][2] - r["box"][0] > 40 for r in faces)  # a face-sized box in the 640x360 frame
    assert state["box"] > 500  # the box is drawn over the video
    if faces_extra_installed():  # each face's 68 points inside its box, pose in radians; drawn (the box ticked)
        for r in faces:
            points, (x1, y1, x2, y2) = np.array(r["landmarks"]), r["box"]
            assert points.shape == (68, 2) and len(r["pose"]) == 6 and abs(r["pose"][1]) < 1.0
            assert x1 - 10 <= points[:, 0].min() and points[:, 0].max() <= x2 + 10 and y1 <= points[:, 1].mean() <= y2
        assert state["points"] == 68 if rows[-1]["face"] else state["points"] == 0
    else:
        assert all(r["landmarks"] is None for r in rows)
    va = np.array([[r["valence"], r["arousal"]] for r in faces])
    assert np.abs(va).max() <= 1 and va.std(axis=0).min() > 0  # values that move
    assert state["valence"] == f"{rows[-1]['valence']:.3f}"
    assert state["timeline"] > 20  # the valence line is drawn (its exact colour, anti-aliased edges aside)
    assert first != state["circumplex"]  # the circumplex moved between the 4th row and the last
    assert 0 <= state["point"]["x"] <= 320 and 0 <= state["point"]["y"] <= 320


def test_page_shows_the_expression_bars_of_the_default_model(detector, media_dir, tmp_path):
    """`serve` without a checkpoint (the built-in expression-va): the page names the model and draws the seven
    expression bars beside the circumplex from each answer's probabilities."""
    sync_playwright = _browser_or_skip()
    from mambava.faces.expression import EXPRESSIONS
    from mambava.inference.predict import Predictor
    from mambava.serve.app import ServerThread, create_app
    from mambava.serve.sessions import ServeLimits

    clip = write_y4m(media_dir / "single_face.mp4", tmp_path / "clip.y4m", n_frames=36)
    app = create_app(Predictor(detector=detector), ServeLimits(max_sessions=1))
    with ServerThread(app) as server, sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=FLAGS + [f"--use-file-for-fake-video-capture={clip}"],
            viewport={"width": 1000, "height": 760},
        )
        try:
            page = context.pages[0] if context.pages else context.new_page()
            page.goto(server.url + "/")
            page.click("#webcam")
            page.wait_for_function("window.mambava.bars !== null && window.mambava.rows.length >= 6", timeout=60_000)
            page.click("#stop")
            state = page.evaluate("""() => ({bars: window.mambava.bars, rows: window.mambava.rows,
                errors: window.mambava.errors, model: document.getElementById('model').textContent,
                green: (() => { const c = document.getElementById('expressions');
                    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
                    for (let i = 0; i < d.length; i += 4) if (d[i] === 44 && d[i+1] === 160 && d[i+2] === 44) n++;
                    return n; })()})""")
        finally:
            context.close()
    assert state["errors"] == [] and state["model"] == "expression-va"
    assert list(state["bars"]) == list(EXPRESSIONS) and abs(sum(state["bars"].values()) - 1) < 1e-3
    faces = [r for r in state["rows"] if r["face"]]
    assert len(faces) >= len(state["rows"]) - 1 and all(r["expressions"] is not None for r in faces)
    assert state["green"] > 300  # the bars are drawn: their area is the probabilities' (they sum to 1)
