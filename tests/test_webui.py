"""The WebUI: static serving in-process, and end to end in headless Debian chromium driven by Playwright.

The browser tests run a real uvicorn server (tone engine, one worker) in a background thread and point Playwright
at /usr/bin/chromium; Playwright's own browser downloads are never used. Without chromium or the playwright
package they skip, except under CI (``CI`` set), where they fail: CI installs both (.ci/install-browser.sh).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import uvicorn
from fastapi import FastAPI

from tests.conftest import REPO, unavailable
from tests.engines import SAMPLE_RATE, SECONDS_PER_CHAR
from tts_server.api.app import create_app
from tts_server.api.webui import webui_router
from tts_server.config import Settings
from tts_server.inference.engine import PITCH_MAX, PITCH_MIN, VOLUME_DB_MAX, VOLUME_DB_MIN

CHROMIUM = Path(os.environ.get("TTS_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = REPO / "test-artifacts"
TEXT_LIMIT = 20


def _webui_app(settings: Settings) -> FastAPI:
    app = create_app(settings)
    # Until create_app mounts the UI itself; afterwards this is a no-op.
    if not any(getattr(route, "path", None) == "/" for route in app.routes):
        app.include_router(webui_router)
    return app


# ---------------------------------------------------------------------------------------------- static serving


async def test_index_served_with_security_headers(make_settings: Callable[..., Settings]) -> None:
    app = _webui_app(make_settings())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tts.test") as client:
        page = await client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp
        assert "script-src 'self'" in csp
        assert "media-src 'self' blob:" in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        html = page.text
        assert '<script src="/static/app.js" defer></script>' in html
        # Nothing may come from another origin: the UI must work on an offline network.
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)

        for name, media_type in (("app.js", "text/javascript"), ("style.css", "text/css")):
            res = await client.get(f"/static/{name}")
            assert res.status_code == 200
            assert res.headers["content-type"].startswith(media_type)
            assert not re.search(r"https?://", res.text)

        schema = (await client.get("/openapi.json")).json()
        assert "/" not in schema["paths"]
        assert not any(p.startswith("/static") for p in schema["paths"])


@pytest.mark.parametrize("path", ["/static/missing.js", "/static/..%2Fwebui.py", "/static/%2E%2E%2Fapp.py",
                                  "/static/../webui.py", "/static/"])
async def test_static_only_serves_its_own_files(make_settings: Callable[..., Settings], path: str) -> None:
    app = _webui_app(make_settings())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tts.test") as client:
        res = await client.get(path)
    assert res.status_code == 404
    assert "from __future__" not in res.text
    if res.headers["content-type"].startswith("application/json"):
        assert res.json()["error"]["type"] == "invalid_request_error"


# ---------------------------------------------------------------------------------------------- browser


def _require_browser() -> None:
    missing = []
    if importlib.util.find_spec("playwright") is None:
        missing.append("the playwright Python package is not installed (pip install playwright)")
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} is missing (install it with .ci/install-browser.sh)")
    if not missing:
        return
    unavailable("WebUI browser test needs: " + "; ".join(missing))


class LiveServer:
    """uvicorn on 127.0.0.1 in a background thread, on a port the kernel picked."""

    def __init__(self, app: FastAPI) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        # ws="none": no websocket library is imported (some warn on import, and warnings are errors here).
        config = uvicorn.Config(app, http="h11", ws="none", lifespan="on", log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name="webui-uvicorn")

    def start(self, timeout: float = 60.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while time.monotonic() < deadline:
                if not self.thread.is_alive():
                    raise RuntimeError("uvicorn exited during startup")
                try:
                    if client.get("/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise TimeoutError(f"server at {self.url} not ready after {timeout}s")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
        assert not self.thread.is_alive(), "uvicorn did not shut down"


@pytest.fixture
def serve(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., LiveServer]]:
    """Starts a live server (tone engine, one worker, text limit TEXT_LIMIT unless `limits` is given) with extra
    settings sections."""
    _require_browser()
    servers: list[LiveServer] = []

    def start(**sections: Any) -> LiveServer:
        sections.setdefault("limits", {"max_text_chars": TEXT_LIMIT})
        settings = make_settings(pool={"workers": 1}, server={"drain_timeout_s": 5.0}, **sections)
        server = LiveServer(_webui_app(settings))
        servers.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def open_page(serve: Callable[..., LiveServer]) -> Iterator[Callable[..., Any]]:
    """Opens the UI of a live server in headless chromium; after the test, checks the page stayed healthy."""
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    foreign: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)

        def open_(server: LiveServer, *, wait_ready: bool = True) -> Any:
            context = browser.new_context(accept_downloads=True, viewport={"width": 900, "height": 1000},
                                          locale="zh-CN", color_scheme="light")
            context.set_default_timeout(20_000)
            pg = context.new_page()
            pg.on("pageerror", lambda exc: problems.append(f"uncaught: {exc}"))
            # A CSP violation means the page tried something its own policy forbids: a broken page.
            pg.on("console", lambda msg: problems.append(msg.text)
                  if "Content Security Policy" in msg.text else None)
            pg.on("request", lambda req: None if req.url.startswith((server.url, "blob:", "data:"))
                  else foreign.append(req.url))
            pg.goto(server.url + "/")
            if wait_ready:
                pg.wait_for_selector("body[data-ready='true']")
            return pg

        try:
            yield open_
        finally:
            browser.close()
    assert not problems, problems
    assert not foreign, f"the page reached outside the server: {foreign}"


@pytest.fixture
def page(serve: Callable[..., LiveServer], open_page: Callable[..., Any]) -> Any:
    return open_page(serve())


def _expected_frames(text: str, speed: float) -> int:
    # The tone engine's documented length rule: one piece per sentence, SECONDS_PER_CHAR seconds per character.
    sentences = [s for s in re.split(r"(?<=[。！？.!?])", text) if s.strip()]
    return sum(max(1, int(len(s) * SECONDS_PER_CHAR * SAMPLE_RATE / speed)) for s in sentences)


def _dominant_hz(audio: np.ndarray[Any, Any], rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / rate)[int(np.argmax(spectrum))])


def test_webui_synthesize_play_and_download(page: Any, tmp_path: Path) -> None:
    # Pickers come from /v1/voices: the emotion list follows the voice.
    assert page.locator("#voice option").all_inner_texts() == ["alpha", "beta"]
    assert page.locator("#voice").input_value() == "alpha"
    emotions = page.locator("input[name='emotion']")
    assert [emotions.nth(i).get_attribute("value") for i in range(emotions.count())] == ["neutral", "happy", "sad"]
    page.select_option("#voice", "beta")
    assert [emotions.nth(i).get_attribute("value") for i in range(emotions.count())] == ["neutral", "angry"]
    page.check("input[name='emotion'][value='angry']")
    assert page.locator("input[name='emotion']:checked").get_attribute("value") == "angry"

    formats = page.locator("input[name='format']")
    assert [formats.nth(i).get_attribute("value") for i in range(formats.count())] == \
        ["wav", "mp3", "flac", "ogg", "opus"]
    assert page.locator("input[name='format']:checked").get_attribute("value") == "wav"

    # Live counter against the limit from /v1/info, counting code points like the server.
    text = "今天天气很好。我们去公园散步吧！"
    page.fill("#text", text)
    assert page.inner_text("#char-limit") == str(TEXT_LIMIT)
    assert page.inner_text("#char-used") == str(len(text))

    speed = 0.5
    page.fill("#speed", str(speed))
    assert page.inner_text("#speed-value") == "0.50×"

    # Record the button's busy state as it happens; it is too brief to poll for.
    page.evaluate("""() => {
        window.__busy = [];
        const b = document.getElementById('synthesize');
        const form = document.getElementById('tts-form');
        new MutationObserver(() => window.__busy.push([b.disabled, b.classList.contains('busy'),
                                                      form.getAttribute('aria-busy')]))
            .observe(b, {attributes: true, attributeFilter: ['class', 'disabled']});
    }""")
    page.click("#synthesize")
    page.wait_for_function("""() => {
        const a = document.getElementById('player');
        return a.src.startsWith('blob:') && a.readyState >= 1 && a.duration > 0;
    }""")
    busy = page.evaluate("window.__busy")
    assert [True, True, "true"] in busy, busy
    assert page.is_enabled("#synthesize")
    assert page.get_attribute("#tts-form", "aria-busy") == "false"

    frames = _expected_frames(text, speed)
    duration = page.evaluate("document.getElementById('player').duration")
    assert duration == pytest.approx(frames / SAMPLE_RATE, abs=0.005)
    assert page.is_hidden("#error")
    assert "16 kHz" in page.inner_text("#result-meta")
    assert "Done" in page.inner_text("#status")

    with page.expect_download() as download_info:
        page.click("#download")
    download = download_info.value
    assert re.fullmatch(r"tts-beta-angry-\d{8}-\d{6}\.wav", download.suggested_filename), \
        download.suggested_filename
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    data = saved.read_bytes()
    assert data[:4] == b"RIFF"
    assert data[8:12] == b"WAVE"
    audio, rate = sf.read(saved, dtype="float32")
    assert rate == 16000
    assert audio.ndim == 1
    assert len(audio) == frames
    # beta/angry is the tone engine's 280 Hz voice: the pickers' choice reached the server.
    assert _dominant_hz(audio, rate) == pytest.approx(280.0, abs=5.0)

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "webui.png"), full_page=True)

    # The other offered formats play in the browser too (lossy codecs pad the end a little).
    for fmt in ("mp3", "flac", "ogg", "opus"):
        page.check(f"input[name='format'][value='{fmt}']")
        page.click("#synthesize")
        page.wait_for_function("""(f) => document.getElementById('download').download.endsWith('.' + f)
            && document.getElementById('player').duration > 0""", arg=fmt)
        assert page.evaluate("document.getElementById('player').duration") == \
            pytest.approx(frames / SAMPLE_RATE, abs=0.05), fmt
        assert page.is_hidden("#playback-note")
        assert page.is_hidden("#error")


def test_webui_pitch_and_volume_sliders(page: Any, tmp_path: Path) -> None:
    # Beside speed: a pitch slider in the model's units and a volume slider in dB, each label saying its unit.
    assert "model units" in page.inner_text("label[for='pitch']")
    assert "dB" in page.inner_text("label[for='volume']")
    # The page's ranges are the API's (/v1/info does not carry them, so they are written into the page).
    ranges = page.evaluate("""() => ['pitch', 'volume'].map(id => [Number(document.getElementById(id).min),
                                                                   Number(document.getElementById(id).max)])""")
    assert ranges == [[PITCH_MIN, PITCH_MAX], [VOLUME_DB_MIN, VOLUME_DB_MAX]]
    assert page.inner_text("#pitch-value") == "0.0"
    assert page.inner_text("#volume-value") == "0 dB"

    text = "今天天气很好。我们去公园散步吧！"
    page.fill("#text", text)
    page.fill("#speed", "0.5")
    # Keyboard only: End goes to the top of the range, each arrow one step back.
    page.focus("#pitch")
    page.keyboard.press("End")
    for _ in range(5):
        page.keyboard.press("ArrowLeft")
    assert page.inner_text("#pitch-value") == "+1.5"
    assert page.get_attribute("#pitch", "aria-valuetext") == "+1.5 model units"
    page.fill("#volume", "-6")
    assert page.inner_text("#volume-value") == "-6 dB"
    assert page.get_attribute("#volume", "aria-valuetext") == "-6 dB"

    with page.expect_request(lambda r: r.url.endswith("/v1/synthesize")) as sent:
        page.click("#synthesize")
    body = sent.value.post_data_json
    assert body["pitch"] == 1.5
    assert body["volume"] == -6
    assert body["speed"] == 0.5
    page.wait_for_function("() => document.getElementById('status').textContent.includes('Done')")

    # The server applied them: the tone engine raises its 220 Hz tone by `pitch` semitones, and the gain is real.
    with page.expect_download() as download_info:
        page.click("#download")
    saved = tmp_path / "prosody.wav"
    download_info.value.save_as(saved)
    audio, rate = sf.read(saved, dtype="float32")
    assert len(audio) == _expected_frames(text, 0.5)
    # Each sentence restarts the tone's phase: measure within the first one, zero-padded for a fine bin.
    first = audio[:_expected_frames(text.split("。")[0] + "。", 0.5)]
    spectrum = np.abs(np.fft.rfft(first * np.hanning(len(first)), n=1 << 17))
    peak_hz = float(np.fft.rfftfreq(1 << 17, 1 / rate)[int(np.argmax(spectrum))])
    assert peak_hz == pytest.approx(220.0 * 2 ** (1.5 / 12), abs=1.0)
    assert float(np.max(np.abs(audio))) == pytest.approx(0.3 * 10 ** (-6 / 20), abs=2e-3)

    # Reset puts all three back; the next request carries the neutral values.
    page.click("#reset-prosody")
    assert (page.inner_text("#speed-value"), page.inner_text("#pitch-value"), page.inner_text("#volume-value")) \
        == ("1.00×", "0.0", "0 dB")
    with page.expect_request(lambda r: r.url.endswith("/v1/synthesize")) as sent:
        page.click("#synthesize")
    assert {k: sent.value.post_data_json[k] for k in ("speed", "pitch", "volume")} == \
        {"speed": 1, "pitch": 0, "volume": 0}
    page.wait_for_function("() => document.getElementById('status').textContent.includes('Done')")


def test_webui_stream_plays_as_it_arrives(serve: Callable[..., LiveServer], open_page: Callable[..., Any],
                                         tmp_path: Path) -> None:
    # Three sentences, each made 0.4 s after the one before (the tone engine's sleep directive) and each 0.76 s
    # long at half speed: played as it arrives, the first sentence sounds well before the response is complete
    # (about 0.8 s, so a loaded machine's scheduling noise cannot close the 0.25 s margin asserted below), and
    # later sentences arrive while earlier ones play, so they join without a gap.
    server = serve(limits={"max_text_chars": 200})
    page = open_page(server)
    sentence = "今天天气很好我们一起去公园散步吧好吗" * 2 + "。"
    text = "[sleep=0.4]" + sentence * 3
    frames = _expected_frames(sentence * 3, 0.5)
    page.fill("#text", text)
    page.fill("#speed", "0.5")
    page.fill("#pitch", "1")

    assert page.is_enabled("input[name='format'][value='mp3']")
    page.check("#stream")
    assert page.get_attribute("#stream", "role") == "switch"
    # A stream is PCM played live; the format picker has no say.
    assert page.is_disabled("input[name='format'][value='mp3']")

    with page.expect_request(lambda r: r.url.endswith("/v1/synthesize")) as sent:
        page.click("#synthesize")
    body = sent.value.post_data_json
    assert (body["stream"], body["format"], body["speed"], body["pitch"]) == (True, "pcm", 0.5, 1)

    # Sound starts (the AudioContext clock runs: the click allowed it) while the rest is still on its way.
    page.wait_for_selector("#result[data-playback='playing']")
    assert page.is_visible("#stop")
    page.wait_for_function("() => document.getElementById('live-progress').value > 0.05")
    page.wait_for_selector("#result[data-received-ms]")
    first = int(page.get_attribute("#result", "data-first-audio-ms") or -1)
    received = int(page.get_attribute("#result", "data-received-ms") or -1)
    assert 0 < first < received - 250, (first, received)

    page.wait_for_selector("#result[data-playback='ended']", timeout=10_000)
    assert page.get_attribute("#result", "data-samples") == str(frames)
    assert page.get_attribute("#result", "data-gaps") == "0"
    assert page.evaluate("document.getElementById('live-progress').value") == pytest.approx(frames / SAMPLE_RATE,
                                                                                            abs=0.01)
    assert "Finished" in page.inner_text("#live-state")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "webui-stream.png"), full_page=True)
    assert page.is_disabled("#stop")
    assert page.is_hidden("#error")

    # The download is a WAV of exactly what streamed: the same samples as the whole (non-streamed) response.
    page.wait_for_function("() => document.getElementById('player').duration > 0")
    assert page.evaluate("document.getElementById('player').duration") == pytest.approx(frames / SAMPLE_RATE,
                                                                                        abs=0.005)
    with page.expect_download() as download_info:
        page.click("#download")
    assert download_info.value.suggested_filename.endswith(".wav")
    saved = tmp_path / "stream.wav"
    download_info.value.save_as(saved)
    streamed, rate = sf.read(saved, dtype="int16")
    assert rate == SAMPLE_RATE
    assert len(streamed) == frames
    whole = httpx.post(server.url + "/v1/synthesize", timeout=30,
                       json={"text": text, "speed": 0.5, "pitch": 1, "format": "pcm"})
    assert whole.status_code == 200
    assert np.array_equal(streamed, np.frombuffer(whole.content, "<i2"))


def test_webui_stream_stop_and_errors(serve: Callable[..., LiveServer], open_page: Callable[..., Any]) -> None:
    server = serve(limits={"max_text_chars": 100})
    page = open_page(server)

    # The tone engine reports no timings: Highlight on says so in words.
    page.fill("#text", "你好。")
    page.check("#timestamps")
    page.click("#synthesize")
    page.wait_for_function("() => document.getElementById('error-title').textContent.includes('no timestamps')")
    assert "Turn Highlight off" in page.inner_text("#error")
    page.uncheck("#timestamps")

    # Timestamps come only with a whole response: Stream switches Highlight off.
    page.check("#timestamps")
    page.check("#stream")
    assert page.is_disabled("#timestamps")

    # An error before any audio: shown inline like any other, no result card.
    page.fill("#text", "[fail]你好。")
    page.click("#synthesize")
    page.wait_for_function("() => document.getElementById('error-detail').textContent.includes('refuses')")
    assert page.is_hidden("#result")
    assert page.is_enabled("#synthesize")

    # Stop ends playback at once and cancels the rest of the download.
    page.fill("#text", "[sleep=0.5]" + "今天天气很好。" * 6)
    page.click("#synthesize")
    page.wait_for_selector("#result[data-first-audio-ms]")
    page.click("#stop")
    page.wait_for_selector("#result[data-playback='stopped']")
    page.wait_for_function("() => document.getElementById('status').textContent.includes('Stopped')")
    assert page.is_enabled("#synthesize")
    assert page.is_hidden("#error")
    assert page.is_hidden("#download")

    assert page.get_attribute("#result", "data-received-ms") is None

    # The connection fails: the usual inline error, and again no result card.
    page.route("**/v1/synthesize", lambda route: route.abort("connectionreset"))
    page.fill("#text", "你好。")
    page.click("#synthesize")
    page.wait_for_function("() => document.getElementById('error-title').textContent.includes(\"Can't reach\")")
    assert page.is_hidden("#result")
    page.unroute("**/v1/synthesize")


def test_webui_errors_inline(page: Any) -> None:
    sent: list[str] = []
    page.on("request", lambda req: sent.append(req.url) if req.url.endswith("/v1/synthesize") else None)
    error = page.locator("#error")

    # Every form control is labelled; errors and status are announced.
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, select, textarea')]
        .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map(e => e.outerHTML)""")
    assert unlabelled == []
    assert page.get_attribute("#error", "role") == "alert"
    assert page.get_attribute("#status", "aria-live") == "polite"

    # Empty text: caught in the page, nothing sent.
    page.fill("#text", "   ")
    page.click("#synthesize")
    assert error.is_visible()
    assert "Please enter some text" in error.inner_text()

    # Over the limit: the counter turns red and the message says by how much.
    page.fill("#text", "一" * (TEXT_LIMIT + 5))
    assert "over" in (page.get_attribute("#char-count", "class") or "")
    assert page.get_attribute("#text", "aria-invalid") == "true"
    page.click("#synthesize")
    assert f"the limit is {TEXT_LIMIT}" in error.inner_text()
    assert "Remove 5" in error.inner_text()
    assert sent == []

    # A real ErrorResponse from the server: the tone engine refuses "[fail]" text with a 422.
    page.fill("#text", "[fail]你好")
    assert page.get_attribute("#text", "aria-invalid") == "false"
    page.click("#synthesize")
    page.wait_for_function("() => document.getElementById('error-detail').textContent.includes('refuses')")
    assert "Please check your input" in error.inner_text()
    assert "the test engine refuses this text" in error.inner_text()
    assert len(sent) == 1
    assert page.is_enabled("#synthesize")

    # 429 and 503 carry Retry-After: the message counts it down and the button waits for it.
    def reply(status: int, code: str, retry_after: int) -> Callable[[Any], None]:
        body = {"error": {"message": "slow down", "type": "rate_limit_error", "code": code, "param": None}}
        return lambda route: route.fulfill(status=status, headers={"Retry-After": str(retry_after)},
                                           content_type="application/json", body=json.dumps(body))

    page.fill("#text", "你好。")
    page.route("**/v1/synthesize", reply(429, "rate_limited", 30))
    page.click("#synthesize")
    page.wait_for_function("() => document.getElementById('error-title').textContent.includes('Too many')")
    assert re.search(r"try again in (30|29) s", error.inner_text()), error.inner_text()
    assert page.is_disabled("#synthesize")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "webui-error.png"), full_page=True)
    page.unroute("**/v1/synthesize")

    # Reloading is the way out of a long countdown.
    page.reload()
    page.wait_for_selector("body[data-ready='true']")
    page.fill("#text", "你好。")
    page.route("**/v1/synthesize", reply(503, "queue_full", 2))
    page.click("#synthesize")
    page.wait_for_function("() => document.getElementById('error-title').textContent.includes('busy')")
    assert re.search(r"try again in [12] s", error.inner_text()), error.inner_text()
    assert page.is_disabled("#synthesize")
    page.wait_for_function("() => document.getElementById('error-detail').textContent.includes('try again now')",
                           timeout=5_000)
    assert page.is_enabled("#synthesize")
    page.unroute("**/v1/synthesize")

    # After the wait, a good request clears the error.
    page.click("#synthesize")
    page.wait_for_function("() => document.getElementById('player').duration > 0")
    assert error.is_hidden()


def test_webui_api_key_and_rate_limit(serve: Callable[..., LiveServer], open_page: Callable[..., Any]) -> None:
    # Keys on: the page itself is open, /v1/* is not, so the UI must ask for a key and then work with it.
    key = "webui-test-key"
    server = serve(auth={"enabled": True, "keys": [key]},
                   rate_limit={"enabled": True, "requests_per_second": 0.5, "burst": 3})
    page = open_page(server, wait_ready=False)
    error = page.locator("#error")
    page.wait_for_function("() => document.getElementById('error-title').textContent.includes('API key')")
    assert page.get_attribute("#advanced", "open") is not None
    assert page.is_disabled("#synthesize")

    page.fill("#api-key", key)
    with page.expect_response(lambda r: r.url.endswith("/v1/voices")) as voices:
        page.press("#api-key", "Tab")
    assert voices.value.status == 200
    assert voices.value.request.header_value("authorization") == f"Bearer {key}"
    page.wait_for_selector("body[data-ready='true']")
    assert error.is_hidden()

    # info + voices took two tokens of the three; one synthesis fits, the next is over the limit.
    page.fill("#text", "你好。")
    page.click("#synthesize")
    page.wait_for_function("() => document.getElementById('player').duration > 0")
    page.click("#synthesize")
    page.wait_for_function("() => document.getElementById('error-title').textContent.includes('Too many')")
    assert re.search(r"try again in \d s", error.inner_text()), error.inner_text()
    assert page.is_disabled("#synthesize")
    # The countdown ends when the bucket has a token again, and then the request goes through.
    page.wait_for_function("() => !document.getElementById('synthesize').disabled", timeout=10_000)
    page.click("#synthesize")
    page.wait_for_function("() => document.getElementById('status').textContent.includes('Done')")
    assert error.is_hidden()


def test_webui_pronunciation_preview(serve: Callable[..., LiveServer], open_page: Callable[..., Any],
                                     tmp_path: Path) -> None:
    # The real frontend (tiny random-weight Sambert model) with a user lexicon entry: the Advanced panel shows
    # the words and tones a request would use, and marks the lexicon's.
    from tests.tinymodel import build_tiny_model_dir
    from tts_server.inference.lexicon import Lexicon, write_file

    model_dir = build_tiny_model_dir(tmp_path / "model", voices=("zhitian_emo",))
    lexicon = tmp_path / "lexicon.json"
    write_file(lexicon, Lexicon(1, {"重庆": "zhong4 qing4"}))
    server = serve(engine={"name": "sambert"}, model={"model_dir": str(model_dir)}, lexicon={"path": str(lexicon)})
    page = open_page(server)
    page.fill("#text", "重庆的天气。")
    page.click("#advanced summary")
    page.click("#show-reading")
    page.wait_for_function("() => document.getElementById('reading').textContent.includes('重庆★ (zhong4 qing4)')")
    assert "天气 (tian1 qi4)" in page.text_content("#reading")
    assert "lexicon version 1" in page.text_content("#reading")


def test_webui_highlight_follows_playback(serve: Callable[..., LiveServer], open_page: Callable[..., Any],
                                         tmp_path: Path) -> None:
    # The real engine (tiny random-weight Sambert model) reports syllable timings: with Highlight on, the text is
    # marked syllable by syllable as the audio plays, and the waveform shows where each sentence ends.
    from tests.tinymodel import build_tiny_model_dir

    model_dir = build_tiny_model_dir(tmp_path / "model", voices=("zhitian_emo",))
    page = open_page(serve(engine={"name": "sambert"}, model={"model_dir": str(model_dir)},
                           limits={"max_text_chars": 100}))
    text = "今天天气很好。我们一起去公园散步吧！"
    page.fill("#text", text)
    page.check("#timestamps")
    with page.expect_response(lambda r: r.url.endswith("/v1/synthesize")) as answer:
        page.click("#synthesize")
    assert answer.value.request.post_data_json["timestamps"] is True
    doc = answer.value.json()
    page.wait_for_function("() => document.getElementById('player').duration > 0")
    page.wait_for_selector("#waveform[data-boundaries]")
    assert page.get_attribute("#waveform", "data-boundaries") == str(len(doc["sentences"]) - 1) == "1"
    # The canvas has been drawn on (not all one colour).
    assert page.evaluate("""() => { const c = document.getElementById('waveform');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        return new Set(Array.from(d.filter((_, i) => i % 4 === 3))).size > 1 && c.width > 100; }""")
    assert page.inner_text("#karaoke") == text

    # Seeking (paused) to the middle of a syllable marks exactly its characters.
    syllables = [s for s in doc["syllables"] if s["end_ms"] > s["start_ms"] and s["begin"] is not None]
    assert len(syllables) >= 10
    for s in (syllables[1], syllables[len(syllables) // 2], syllables[-1]):
        page.evaluate("(t) => { const a = document.getElementById('player'); a.currentTime = t; }",
                      (s["start_ms"] + s["end_ms"]) / 2000)
        page.wait_for_function("""(range) => { const spans = [...document.querySelectorAll('#karaoke span')];
            const on = spans.map((x, i) => x.classList.contains('current') ? i : -1).filter(i => i >= 0);
            return on.length === range[1] - range[0] && on[0] === range[0]; }""", arg=[s["begin"], s["end"]])
        spoken = page.evaluate("[...document.querySelectorAll('#karaoke span')].map(x => x.className)")
        assert all(c == "spoken" for c in spoken[:s["begin"]]), spoken

    # Playing from the start: the highlighted syllable moves forward through the text, in time with the audio.
    page.evaluate("""() => { window.__seen = []; const k = document.getElementById('karaoke');
        new MutationObserver(() => window.__seen.push([Number(k.dataset.syllable),
                                                       document.getElementById('player').currentTime]))
            .observe(k, {attributes: true, attributeFilter: ['data-syllable']});
        const a = document.getElementById('player'); a.currentTime = 0; return a.play(); }""")
    page.wait_for_function("() => document.getElementById('player').ended", timeout=30_000)
    seen = [(i, t) for i, t in page.evaluate("window.__seen") if i >= 0]
    indices = [i for i, _ in seen]
    assert len(set(indices)) >= len(syllables) // 2, seen
    assert indices == sorted(indices), seen
    for i, t in seen:
        # Each change happened while the audio was inside that syllable (one animation frame of slack).
        assert syllables[i]["start_ms"] - 40 <= t * 1000 <= syllables[i]["end_ms"] + 40, (i, t, syllables[i])
    ARTIFACTS.mkdir(exist_ok=True)
    middle = len(syllables) // 2
    page.evaluate("(t) => { document.getElementById('player').currentTime = t; }",
                  (syllables[middle]["start_ms"] + syllables[middle]["end_ms"]) / 2000)
    page.wait_for_selector(f"#karaoke[data-syllable='{middle}']")
    page.wait_for_timeout(200)  # the highlight's colour transition
    page.screenshot(path=str(ARTIFACTS / "webui-highlight.png"), full_page=True)


def _chips(page: Any, selector: str) -> list[tuple[str, str]]:
    """(value, visible label) of each emotion radio under the selector, in page order."""
    chips = page.locator(f"{selector} label.chip")
    return [(chips.nth(i).locator("input").get_attribute("value"), chips.nth(i).inner_text())
            for i in range(chips.count())]


def test_webui_core_emotions_first_rest_behind_more(serve: Callable[..., LiveServer],
                                                     open_page: Callable[..., Any], tmp_path: Path) -> None:
    # A Sambert voice accepts the model's whole 23-name emotion vocabulary: the picker shows the core ones, folds
    # the rest behind "More", and labels every one "中文 · english".
    from tests.tinymodel import build_tiny_model_dir
    from tts_server.api.emotions import CORE_EMOTIONS, EMOTION_LABELS

    model_dir = build_tiny_model_dir(tmp_path / "model", voices=("zhitian_emo",))
    page = open_page(serve(engine={"name": "sambert"}, model={"model_dir": str(model_dir)}))
    core = _chips(page, "#emotions")
    assert [value for value, _ in core] == list(CORE_EMOTIONS)
    assert all(page.locator(f"#emotions input[value='{v}']").is_visible() for v, _ in core)
    assert page.locator("input[name='emotion']:checked").get_attribute("value") == "neutral"

    toggle = page.locator("#more-emotions")
    assert toggle.is_visible()
    assert toggle.get_attribute("aria-expanded") == "false"
    more = _chips(page, "#emotions-more")
    assert len(more) == 23 - len(CORE_EMOTIONS)
    assert page.locator("#emotions-more").is_hidden()
    assert not any(page.locator(f"#emotions-more input[value='{v}']").is_visible() for v, _ in more)

    toggle.click()
    assert toggle.get_attribute("aria-expanded") == "true"
    assert all(page.locator(f"#emotions-more input[value='{v}']").is_visible() for v, _ in more)
    for value, label in core + more:
        assert label == f"{EMOTION_LABELS[value]} · {value}"
    page.check("#emotions-more input[value='gentle']")
    assert page.locator("input[name='emotion']:checked").get_attribute("value") == "gentle"
    # Folding keeps the choice; a re-render (the UI reloads /v1/voices after errors) unfolds to show it.
    toggle.click()
    assert page.locator("#emotions-more").is_hidden()
    assert page.locator("input[name='emotion']:checked").get_attribute("value") == "gentle"
    page.dispatch_event("#voice", "change")
    assert page.locator("#emotions-more input[value='gentle']").is_visible()
    assert toggle.get_attribute("aria-expanded") == "true"


def test_webui_voice_without_extra_emotions_has_no_more_toggle(page: Any) -> None:
    # The tone engine's voices have only core emotions: no toggle, and Chinese labels from /v1/voices.
    assert _chips(page, "#emotions") == [("neutral", "中性 · neutral"), ("happy", "开心 · happy"),
                                         ("sad", "悲伤 · sad")]
    assert page.locator("#more-emotions").is_hidden()
    assert _chips(page, "#emotions-more") == []
