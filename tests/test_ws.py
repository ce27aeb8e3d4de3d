"""The WebSocket ``/v1/tts/ws`` end to end: a real WebSocket client (the ``websockets`` package) against a real
``tts-server serve`` process (uvicorn, one worker running a tiny random-weight Sambert-HifiGan model from
tests/tinymodel.py, so the real frontend, frame streaming and vocoder run).

One server serves the whole module; its settings (validated by the settings model, then written as its TOML file)
are small so that every limit is cheap to reach: a short idle timeout, a small text buffer, a pool queue of one.
Every case ends by checking through ``/metrics`` that the worker is free again and no session is left open.
Each error must give the event and close code that README.md ("WebSocket") documents.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import random
import re
import signal
import subprocess
import sys
import time
import wave
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin

from bench import ws_client
from bench.harness import child_env, free_port, toml_text
from tests.tinymodel import build_tiny_model_dir
from tts_server.api import errors
from tts_server.api.ws import ERROR_CLOSE_BASE
from tts_server.config import Settings, load_settings
from tts_server.inference.clauses import ClauseSegmenter

pytestmark = pytest.mark.slow

HOST = "127.0.0.1"
KEY = "ws-test-key"
#: A key of its own for the rate-limit case, so that the other cases never wait for tokens.
RL_KEY = "ws-rate-limited-key"
VOICE = "zhitian_emo"
RATE = 16000
IDLE_TIMEOUT_S = 1.0
#: Per key. One token every 1/TOKENS_PER_S s > IDLE_TIMEOUT_S; the burst covers every other case's requests.
TOKENS_PER_S = 0.6
BURST = 100
MAX_BUFFERED = 600
#: Long enough that a clause without punctuation keeps the worker busy for a while (see LONG_TEXT).
MAX_CLAUSE = 490
MAX_MESSAGE_BYTES = 16 * 1024
#: No step of a session may take longer than this: a hang fails the test instead of stalling the suite.
STEP_TIMEOUT_S = 20.0
#: Between SIGTERM and closing the listener (readiness is off meanwhile); only the last case stops the server.
DRAIN_DELAY_S = 0.5
STARTUP_TIMEOUT_S = 120.0

#: A clause of MAX_CLAUSE characters without punctuation: at speed 0.5 the tiny model needs well over a second
#: for it on a 2-core machine (hundreds of decoder steps), while it streams its first audio within milliseconds.
LONG_TEXT = ("今天天气很好我们一起去公园散步吧晚上回家再一起吃饭" * 20)[:MAX_CLAUSE]

SETTINGS: dict[str, Any] = {
    "server": {"host": HOST, "log_level": "info", "drain_delay_s": DRAIN_DELAY_S, "drain_timeout_s": 0.5},
    "pool": {"workers": 1, "queue_size": 1, "job_timeout_s": 60.0, "startup_timeout_s": STARTUP_TIMEOUT_S,
             "restart_backoff_s": 0.1, "kill_grace_s": 0.5},
    "limits": {"max_text_chars": 500},
    "auth": {"enabled": True, "keys": [KEY, RL_KEY]},
    "rate_limit": {"enabled": True, "requests_per_second": TOKENS_PER_S, "burst": BURST},
    "websocket": {"idle_timeout_s": IDLE_TIMEOUT_S, "max_buffered_chars": MAX_BUFFERED,
                  "max_clause_chars": MAX_CLAUSE, "min_comma_clause_chars": 6,
                  "max_message_bytes": MAX_MESSAGE_BYTES},
}


# --- the server ---------------------------------------------------------------------------------------------


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    settings: Settings
    #: For /metrics, kept alive across scrapes.
    http: httpx.Client

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.port}/v1/tts/ws"

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("ws")
    port = free_port()
    sections = {**SETTINGS, "server": {**SETTINGS["server"], "port": port},
                "model": {"model_dir": str(build_tiny_model_dir(tmp / "model")),
                          "download_dir": str(tmp / "download")}}
    settings = load_settings(None, **sections)  # the settings model validates every value before the server sees it
    config = tmp / "server.toml"
    config.write_text(toml_text(sections), encoding="utf-8")
    log = tmp / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tts_server.cli", "serve", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env(),
                                cwd=tmp)
    srv = Server(proc, port, log, settings, httpx.Client(base_url=f"http://{HOST}:{port}", timeout=5.0))
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        with httpx.Client(base_url=srv.url, timeout=2.0) as client:
            while True:
                if proc.poll() is not None:
                    raise AssertionError(f"server exited with {proc.returncode}:\n{srv.tail()}")
                with contextlib.suppress(httpx.TransportError, ValueError, KeyError):
                    if client.get("/health").json()["workers"]["ready"] == 1:
                        break
                if time.monotonic() > deadline:
                    raise AssertionError(f"worker not ready after {STARTUP_TIMEOUT_S}s:\n{srv.tail()}")
                time.sleep(0.1)
        yield srv
    finally:
        srv.http.close()
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


# --- metrics ------------------------------------------------------------------------------------------------


@dataclass
class Scrape:
    samples: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels`` (0 when there is none)."""
        return sum(v for lab, v in self.samples.get(name, []) if labels.items() <= lab.items())


_SAMPLE = re.compile(r"^(tts_[A-Za-z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(srv: Server) -> Scrape:
    """The ``tts_*`` samples of one scrape, histogram buckets left out (they are most of the text, and parsing
    all of it after every case would cost seconds on a loaded machine)."""
    response = srv.http.get("/metrics")
    assert response.status_code == 200
    s = Scrape()
    for line in response.text.splitlines():
        if not line.startswith("tts_") or "_bucket{" in line:
            continue
        match = _SAMPLE.match(line)
        assert match is not None, line
        name, labels, value = match.groups()
        s.samples.setdefault(name, []).append((dict(_LABEL.findall(labels or "")), float(value)))
    return s


def idle_problems(s: Scrape) -> list[str]:
    checks = {
        "tts_requests_in_progress": s.value("tts_requests_in_progress"),
        "tts_queue_depth": s.value("tts_queue_depth"),
        "tts_workers{state=busy}": s.value("tts_workers", state="busy"),
        "tts_ws_sessions_open": s.value("tts_ws_sessions_open"),
    }
    problems = [f"{name} = {value:g}" for name, value in checks.items() if value != 0]
    if s.value("tts_workers", state="ready") != 1:
        problems.append(f"tts_workers{{state=ready}} = {s.value('tts_workers', state='ready'):g}")
    return problems


def wait_idle(srv: Server, timeout_s: float = 10.0) -> Scrape:
    """Scrape until the worker is free, its queue empty and no session open; the scrape that showed it."""
    deadline = time.monotonic() + timeout_s
    while True:
        s = scrape(srv)
        problems = idle_problems(s)
        if not problems:
            return s
        if time.monotonic() > deadline:
            raise AssertionError(f"not idle after {timeout_s}s: {', '.join(problems)}\n{srv.tail()}")
        time.sleep(0.05)


@pytest.fixture
def before(server: Server) -> Iterator[Scrape]:
    """The metrics before the test (the server idle); after it, the worker must be free again."""
    yield wait_idle(server)
    wait_idle(server)


def increase(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    return after.value(name, **labels) - before.value(name, **labels)


# --- the client -------------------------------------------------------------------------------------------


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@contextlib.asynccontextmanager
async def session(srv: Server, *, headers: dict[str, str] | None = None,
                  max_size: int | None = 2 ** 20) -> AsyncIterator[ClientConnection]:
    headers = auth() if headers is None else headers
    async with asyncio.timeout(STEP_TIMEOUT_S):
        ws = await connect(srv.ws_url, additional_headers=headers, max_size=max_size, open_timeout=STEP_TIMEOUT_S)
    try:
        yield ws
    finally:
        await ws.close()


async def send(ws: ClientConnection, **message: Any) -> None:
    await ws.send(json.dumps(message, ensure_ascii=False))


async def receive(ws: ClientConnection) -> dict[str, Any] | bytes:
    """The next message: an event (decoded JSON) or a binary audio frame."""
    async with asyncio.timeout(STEP_TIMEOUT_S):
        message = await ws.recv()
    if isinstance(message, bytes):
        return message
    event: dict[str, Any] = json.loads(message)
    return event


async def event(ws: ClientConnection) -> dict[str, Any]:
    """The next message, which must be an event."""
    message = await receive(ws)
    assert isinstance(message, dict), f"expected an event, got {len(message)} bytes of audio"
    return message


async def start(ws: ClientConnection, **fields: Any) -> dict[str, Any]:
    await send(ws, type="start", **fields)
    ready = await event(ws)
    assert ready["type"] == "ready", ready
    return ready


@dataclass
class Transcript:
    """Everything a session received until the server closed it."""

    events: list[dict[str, Any]]
    #: Audio of each clause, by its index.
    audio: dict[int, bytearray]
    #: Audio frames that arrived outside a clause (between clause_done and the next clause_started): none may.
    stray_frames: int
    close_code: int | None
    close_reason: str

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


async def until_closed(ws: ClientConnection) -> Transcript:
    events: list[dict[str, Any]] = []
    audio: dict[int, bytearray] = {}
    current: int | None = None
    stray = 0
    with contextlib.suppress(ConnectionClosed):
        while True:
            message = await receive(ws)
            if isinstance(message, bytes):
                if current is None:
                    stray += 1
                else:
                    audio[current] += message
                continue
            events.append(message)
            if message["type"] == "clause_started":
                current = message["index"]
                audio[current] = bytearray()
            elif message["type"] in ("clause_done", "cancelled"):
                current = None
    async with asyncio.timeout(STEP_TIMEOUT_S):
        await ws.wait_closed()
    return Transcript(events, audio, stray, ws.close_code, ws.close_reason or "")


def assert_error(t: Transcript, code: str, close: int, param: str | None = None) -> dict[str, Any]:
    """The session ended with README's ``error`` event ``code`` and close code ``close``, and nothing after."""
    assert t.events, f"no event before close {t.close_code}"
    last = t.events[-1]
    assert last["type"] == "error", t.events
    assert last["code"] == code, last
    assert isinstance(last["message"], str), last
    assert last["message"], last
    if param is not None:
        assert last["param"] == param, last
    assert (t.close_code, t.close_reason) == (close, code)
    return last


def pcm(data: bytes | bytearray) -> np.ndarray[Any, np.dtype[np.int16]]:
    return np.frombuffer(bytes(data), dtype="<i2")


def deltas(text: str, seed: int) -> list[str]:
    """``text`` cut into pieces of 1 to 3 characters."""
    rng = random.Random(seed)
    pieces, i = [], 0
    while i < len(text):
        n = rng.randint(1, 3)
        pieces.append(text[i:i + n])
        i += n
    return pieces


# --- speech -------------------------------------------------------------------------------------------------

#: Sentence ends (Chinese and ASCII), a comma clause long enough to be cut, a comma clause too short to be cut,
#: a decimal point and a thousands separator that must not cut, and a tail without punctuation that only
#: ``close`` speaks.
PARITY_TEXT = "今天天气很好，我们一起去公园散步吧。好的，走吧！价格是3.5元, 一共1,000个. 晚上回家再一起吃饭"


async def test_text_in_small_deltas_sounds_like_http_synthesis_of_each_clause(server: Server,
                                                                              before: Scrape) -> None:
    expected_clauses = ClauseSegmenter(min_comma_chars=server.settings.websocket.min_comma_clause_chars,
                                       max_chars=MAX_CLAUSE)
    expected = [*expected_clauses.feed(PARITY_TEXT), *expected_clauses.flush()]
    assert len(expected) >= 5  # the text exercises several kinds of clause end
    async with session(server) as ws:
        ready = await start(ws, voice=VOICE)
        assert ready == {"type": "ready", "session_id": ready["session_id"], "voice": VOICE,
                         "emotion": "neutral", "format": "pcm", "encoding": "s16le", "channels": 1,
                         "sample_rate": RATE}
        for piece in deltas(PARITY_TEXT, seed=14):
            await send(ws, type="text", text=piece)
        await send(ws, type="close")
        t = await until_closed(ws)

    assert t.close_code == 1000, t.events
    assert t.stray_frames == 0
    started = t.of_type("clause_started")
    assert [e["text"] for e in started] == expected
    assert [e["index"] for e in started] == list(range(len(expected)))
    assert [e["index"] for e in t.of_type("clause_done")] == list(range(len(expected)))
    assert not t.of_type("error")
    end = t.events[-1]
    total_samples = sum(len(a) // 2 for a in t.audio.values())
    assert end == {"type": "end", "clauses": len(expected), "audio_seconds": round(total_samples / RATE, 3)}

    # The same clauses through the HTTP API. Streamed over HTTP the audio goes through the same frame streaming
    # and the same float -> s16le conversion, so it must be identical sample for sample. Synthesised whole (no
    # streaming), frame streaming equals it within 1e-4 of full scale (tests/test_stream_engine.py); after
    # rounding to 16 bits that is at most 1e-4 * 32767 + 1 < 5 steps of 1/32768.
    async with httpx.AsyncClient(base_url=server.url, headers=auth(), timeout=STEP_TIMEOUT_S) as client:
        for index, clause in enumerate(expected):
            got = pcm(t.audio[index])
            assert len(got) > 0, clause
            body = {"text": clause, "voice": VOICE, "format": "pcm"}
            streamed = await client.post("/v1/synthesize", json={**body, "stream": True})
            assert streamed.status_code == 200, streamed.text
            assert np.array_equal(got, pcm(streamed.content)), clause
            whole = await client.post("/v1/synthesize", json=body)
            assert whole.status_code == 200, whole.text
            reference = pcm(whole.content)
            assert len(got) == len(reference), clause
            assert int(np.max(np.abs(got.astype(np.int32) - reference.astype(np.int32)))) <= 4, clause

    after = wait_idle(server)
    assert increase(before, after, "tts_ws_sessions_total", outcome="ok") == 1
    assert increase(before, after, "tts_ws_audio_sent_seconds_total") == pytest.approx(total_samples / RATE)
    assert increase(before, after, "tts_time_to_first_audio_seconds_count", route="/v1/tts/ws") >= 1
    assert increase(before, after, "tts_requests_total", outcome="ok") == 3 * len(expected)


async def test_api_key_in_the_first_message(server: Server, before: Scrape) -> None:
    async with session(server, headers={}) as ws:
        await start(ws, api_key=KEY)
        await send(ws, type="text", text="你好。")
        await send(ws, type="close")
        t = await until_closed(ws)
    assert t.close_code == 1000
    assert [e["type"] for e in t.events] == ["clause_started", "clause_done", "end"]
    assert len(t.audio[0]) > 0
    after = wait_idle(server)
    assert increase(before, after, "tts_ws_sessions_total", outcome="ok") == 1
    assert increase(before, after, "tts_ws_audio_sent_seconds_total") > 0


@pytest.mark.parametrize(("headers", "first"), [
    pytest.param(auth("wrong-key"), None, id="wrong-key-header"),
    pytest.param({}, {"type": "start"}, id="no-key"),
    pytest.param({}, {"type": "start", "api_key": "wrong-key"}, id="wrong-key-message"),
])
async def test_api_key_refused(server: Server, before: Scrape, headers: dict[str, str],
                               first: dict[str, Any] | None) -> None:
    async with session(server, headers=headers) as ws:
        if first is not None:
            await send(ws, **first)
        t = await until_closed(ws)  # a bad header is refused before the server reads any message
    assert_error(t, "invalid_api_key", 4401)
    assert [e["type"] for e in t.events] == ["error"]
    after = wait_idle(server)
    assert increase(before, after, "tts_ws_sessions_total", outcome="unauthorized") == 1


@pytest.mark.parametrize(("message", "param"), [
    pytest.param(json.dumps({"type": "text", "text": "你好。"}), "type", id="text-before-start"),
    pytest.param(json.dumps({"type": "flush"}), "type", id="flush-before-start"),
    pytest.param("start", None, id="not-json"),
    pytest.param(json.dumps(["start"]), "type", id="not-an-object"),
    pytest.param(json.dumps({"type": "begin"}), "type", id="unknown-type"),
    pytest.param(json.dumps({"type": "start", "speed": 9}), "speed", id="speed-out-of-range"),
    pytest.param(json.dumps({"type": "start", "language": "zh"}), "language", id="unknown-field"),
    pytest.param(b"\x00\x01", None, id="binary"),
])
async def test_bad_first_message(server: Server, before: Scrape, message: str | bytes, param: str | None) -> None:
    async with session(server) as ws:
        await ws.send(message)
        t = await until_closed(ws)
    assert_error(t, "invalid_request", 4422, param)
    assert [e["type"] for e in t.events] == ["error"]
    after = wait_idle(server)
    assert increase(before, after, "tts_ws_sessions_total", outcome="client_error") == 1
    assert increase(before, after, "tts_requests_rejected_total", reason="invalid") == 1


@pytest.mark.parametrize(("start_fields", "code", "param"), [
    pytest.param({"voice": "nobody"}, "unknown_voice", "voice", id="unknown-voice"),
    pytest.param({"emotion": "furious"}, "unknown_emotion", "emotion", id="unknown-emotion"),
    pytest.param({"format": "mp3"}, "unsupported_stream_format", "format", id="mp3"),
    pytest.param({"format": "opus", "sample_rate": 22050}, "unsupported_sample_rate", "sample_rate",
                 id="opus-at-22050"),
    pytest.param({"sample_rate": 12345}, "unsupported_sample_rate", "sample_rate", id="odd-sample-rate"),
])
async def test_bad_start(server: Server, before: Scrape, start_fields: dict[str, Any], code: str,
                         param: str) -> None:
    async with session(server) as ws:
        await send(ws, type="start", **start_fields)
        t = await until_closed(ws)
    last = assert_error(t, code, 4422, param)
    assert [e["type"] for e in t.events] == ["error"]
    if code == "unknown_voice":
        assert VOICE in last["message"]  # it names the voices there are
    after = wait_idle(server)
    assert increase(before, after, "tts_ws_sessions_total", outcome="client_error") == 1


async def test_second_start_is_refused(server: Server, before: Scrape) -> None:
    async with session(server) as ws:
        await start(ws)
        await send(ws, type="start")
        t = await until_closed(ws)
    assert_error(t, "invalid_request", 4422, "type")


async def test_buffered_text_over_the_cap(server: Server, before: Scrape) -> None:
    async with session(server) as ws:
        await start(ws)
        # No punctuation and under max_clause_chars: nothing is ready, everything stays buffered.
        await send(ws, type="text", text="好" * (MAX_BUFFERED // 2))
        await send(ws, type="text", text="好" * (MAX_BUFFERED // 2 + 1))
        t = await until_closed(ws)
    assert_error(t, "text_buffer_full", 4413)
    assert not t.of_type("clause_started")  # the text was refused, not spoken
    after = wait_idle(server)
    assert increase(before, after, "tts_ws_sessions_total", outcome="client_error") == 1
    assert increase(before, after, "tts_requests_rejected_total", reason="too_large") == 1


async def test_message_over_the_size_limit(server: Server, before: Scrape) -> None:
    async with session(server) as ws:
        await start(ws)
        await send(ws, type="text", text="a" * MAX_MESSAGE_BYTES)
        t = await until_closed(ws)
    assert t.close_code == 1009
    assert not t.events
    after = wait_idle(server)
    assert increase(before, after, "tts_ws_sessions_total", outcome="disconnected") == 1


async def test_idle_timeout_counts_from_the_last_audio(server: Server, before: Scrape) -> None:
    async with session(server) as ws:
        await start(ws)
        await send(ws, type="text", text="你好。")
        assert (await event(ws))["type"] == "clause_started"
        while isinstance(message := await receive(ws), bytes):
            pass
        assert message["type"] == "clause_done"
        quiet_since = time.monotonic()
        t = await until_closed(ws)
        waited = time.monotonic() - quiet_since
    assert_error(t, "idle_timeout", 4408)
    assert IDLE_TIMEOUT_S * 0.9 <= waited < IDLE_TIMEOUT_S + 5.0
    after = wait_idle(server)
    assert increase(before, after, "tts_ws_sessions_total", outcome="idle_timeout") == 1
    assert increase(before, after, "tts_ws_audio_sent_seconds_total") > 0


async def test_idle_before_the_first_message(server: Server, before: Scrape) -> None:
    async with session(server) as ws:
        t = await until_closed(ws)
    assert_error(t, "idle_timeout", 4408)
    after = wait_idle(server)
    assert increase(before, after, "tts_ws_sessions_total", outcome="idle_timeout") == 1


async def test_cancel_stops_the_clause_and_drops_pending_text(server: Server, before: Scrape) -> None:
    async with session(server) as ws:
        await start(ws, speed=0.5)
        # One long clause (cut at max_clause_chars), then two sentences queued behind it, then pending text.
        await send(ws, type="text", text=LONG_TEXT + "第二句话。第三句话。还没说完")
        assert await event(ws) == {"type": "clause_started", "index": 0, "text": LONG_TEXT}
        assert isinstance(await receive(ws), bytes)  # the long clause is under way
        await send(ws, type="cancel")
        received = 0
        while isinstance(message := await receive(ws), bytes):
            received += len(message)  # frames already on their way may still arrive before the event
        assert message == {"type": "cancelled", "dropped_clauses": 2}
        # The session goes on: the next text is spoken, with the next index, and nothing of the old clause.
        await send(ws, type="text", text="好的。")
        await send(ws, type="close")
        t = await until_closed(ws)
    assert t.close_code == 1000
    assert t.stray_frames == 0
    assert [(e["type"], e.get("index")) for e in t.events] == [
        ("clause_started", 3), ("clause_done", 3), ("end", None)]
    assert t.events[-1]["clauses"] == 1
    after = wait_idle(server)
    # The running clause stopped at its next chunk (a job that ran to the end would count as "ok").
    assert increase(before, after, "tts_requests_total", outcome="cancelled") == 1
    assert increase(before, after, "tts_requests_total", outcome="ok") == 1
    assert increase(before, after, "tts_ws_sessions_total", outcome="ok") == 1


async def test_disconnect_mid_clause_frees_the_worker(server: Server, before: Scrape) -> None:
    async with session(server) as ws:
        await start(ws, speed=0.5)
        await send(ws, type="text", text=LONG_TEXT + "第二句话。")
        assert (await event(ws))["type"] == "clause_started"
        assert isinstance(await receive(ws), bytes)
        assert scrape(server).value("tts_requests_in_progress") == 1
        # Gone without a closing handshake, mid-clause.
        ws.transport.abort()
    after = wait_idle(server)
    assert increase(before, after, "tts_ws_sessions_total", outcome="disconnected") == 1
    assert increase(before, after, "tts_requests_total", outcome="cancelled") == 1
    assert increase(before, after, "tts_requests_total", outcome="ok") == 0


async def _occupy(srv: Server, done: asyncio.Event, text: str) -> None:
    """A streamed HTTP request for ``text`` that reads until ``done`` is set, then hangs up."""
    async with httpx.AsyncClient(base_url=srv.url, headers=auth(), timeout=STEP_TIMEOUT_S) as client:
        body = {"text": text, "voice": VOICE, "format": "pcm", "speed": 0.5, "stream": True}
        async with client.stream("POST", "/v1/synthesize", json=body) as response:
            async for _ in response.aiter_bytes():
                if done.is_set():
                    return
        await done.wait()


async def _wait_metric(srv: Server, name: str, value: float) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while (got := scrape(srv).value(name)) != value:
        assert time.monotonic() < deadline, f"{name} = {got:g}, waited for {value:g}"
        await asyncio.sleep(0.02)


async def test_full_queue_is_an_error_event_not_a_hang(server: Server, before: Scrape) -> None:
    done = asyncio.Event()
    # The worker busy with a long text; a short one waiting in the queue (its length does not matter).
    busy = asyncio.create_task(_occupy(server, done, LONG_TEXT))
    try:
        await _wait_metric(server, "tts_requests_in_progress", 1)
        queued = asyncio.create_task(_occupy(server, done, "你好。"))
        try:
            await _wait_metric(server, "tts_queue_depth", 1)
            async with session(server) as ws:
                await start(ws)
                await send(ws, type="text", text="你好。")
                t = await until_closed(ws)
            assert_error(t, "queue_full", 4503)
            assert not t.audio
        finally:
            done.set()
            await queued
    finally:
        done.set()
        await busy
    after = wait_idle(server)
    assert increase(before, after, "tts_ws_sessions_total", outcome="rejected") == 1
    assert increase(before, after, "tts_requests_rejected_total", reason="queue_full") == 1


def test_readme_close_codes_match_the_error_table() -> None:
    """README's close-code table: every error code it names closes with 4000 + that error's HTTP status."""
    kinds = {kind.code: kind for kind in vars(errors).values() if isinstance(kind, errors.ErrorKind)}
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### WebSocket `/v1/tts/ws`", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| (4\d\d\d) \| (.*?) \|", section, re.M)
    assert len(rows) >= 9, rows
    named = set()
    for close, cell in rows:
        for code in re.findall(r"`([a-z_]+)`", cell):
            if code in {"param", "type", "pcm", "opus", "start"}:  # words of the descriptions, not codes
                continue
            assert code in kinds, code
            assert ERROR_CLOSE_BASE + kinds[code].status == int(close), (code, close)
            named.add(code)
    # Every error this suite provokes is in the table.
    assert {"invalid_api_key", "idle_timeout", "text_buffer_full", "invalid_request", "unknown_voice",
            "unknown_emotion", "unsupported_stream_format", "unsupported_sample_rate", "queue_full"} <= named


async def _exhaust(srv: Server, key: str) -> None:
    """Spend ``key``'s tokens on cheap requests until one is refused (the bucket then holds less than one)."""
    async with httpx.AsyncClient(base_url=srv.url, headers=auth(key), timeout=STEP_TIMEOUT_S) as client:
        for _ in range(2 * BURST):
            if (await client.get("/v1/voices")).status_code == 429:
                return
    raise AssertionError("the rate limit never refused")


async def _admitted(srv: Server, key: str) -> tuple[ClientConnection, int]:
    """A started session for ``key`` once the rate limit admits it, and how many attempts it refused first (each
    with the ``rate_limit_exceeded`` event and close code 4429)."""
    refused = 0
    while True:
        ws = await connect(srv.ws_url, additional_headers=auth(key), open_timeout=STEP_TIMEOUT_S)
        with contextlib.suppress(ConnectionClosed):  # a refused client may already be closed
            await send(ws, type="start")
        first = await event(ws)
        if first["type"] == "ready":
            return ws, refused
        t = await until_closed(ws)
        assert_error(Transcript([first, *t.events], t.audio, t.stray_frames, t.close_code, t.close_reason),
                     "rate_limit_exceeded", 4429)
        refused += 1
        await asyncio.sleep(0.05)


async def test_rate_limit_at_connection_and_per_clause(server: Server, before: Scrape) -> None:
    await _exhaust(server, RL_KEY)
    # Connecting spends a token: refused until one has accrued, then admitted (which spends it).
    ws, refused = await _admitted(server, RL_KEY)
    try:
        assert refused >= 1
        # The bucket is empty: the clause waits about 1/TOKENS_PER_S s for its token. A cancel meanwhile drops
        # it at once: it is never announced, never synthesised.
        await send(ws, type="text", text="你好。")
        await asyncio.sleep(0.2)
        await send(ws, type="cancel")
        assert await event(ws) == {"type": "cancelled", "dropped_clauses": 1}
        # A clause waiting for its token longer than idle_timeout_s is no idle client.
        waiting_since = time.monotonic()
        await send(ws, type="text", text="好的。")
        assert await event(ws) == {"type": "clause_started", "index": 1, "text": "好的。"}
        assert time.monotonic() - waiting_since > IDLE_TIMEOUT_S
        while isinstance(message := await receive(ws), bytes):
            pass
        assert message["type"] == "clause_done"
        await send(ws, type="close")
        t = await until_closed(ws)
    finally:
        await ws.close()
    assert [e["type"] for e in t.events] == ["end"]
    assert t.events[0]["clauses"] == 1
    assert t.close_code == 1000
    after = wait_idle(server)
    assert increase(before, after, "tts_ws_sessions_total", outcome="ok") == 1
    assert increase(before, after, "tts_ws_sessions_total", outcome="rejected") == refused
    assert increase(before, after, "tts_requests_rejected_total", reason="rate_limited") >= refused + 1
    # Only the second clause reached a worker.
    assert increase(before, after, "tts_requests_total", outcome="ok") == 1
    assert increase(before, after, "tts_requests_total", outcome="cancelled") == 0


async def test_flush_cancel_and_close(server: Server, before: Scrape) -> None:
    async with session(server) as ws:
        await start(ws)
        await send(ws, type="cancel")  # nothing to cancel: acknowledged, the session goes on
        assert await event(ws) == {"type": "cancelled", "dropped_clauses": 0}
        await send(ws, type="text", text="还没说完")  # no punctuation: nothing is ready yet
        await send(ws, type="flush")
        await send(ws, type="text", text="，")
        await send(ws, type="flush")  # punctuation alone is no clause
        await send(ws, type="close")
        with contextlib.suppress(ConnectionClosed):
            await send(ws, type="text", text="再来一句。")  # after close: ignored
        t = await until_closed(ws)
    assert t.close_code == 1000
    assert [(e["type"], e.get("text")) for e in t.events] == [
        ("clause_started", "还没说完"), ("clause_done", None), ("end", None)]
    assert t.events[-1]["clauses"] == 1
    assert len(t.audio[0]) > 0
    after = wait_idle(server)
    assert increase(before, after, "tts_ws_sessions_total", outcome="ok") == 1
    assert increase(before, after, "tts_requests_total", outcome="ok") == 1


async def test_origin(server: Server, before: Scrape) -> None:
    # A browser page on the server's own origin is served; CORS is off, so no other origin is.
    own = await connect(server.ws_url, additional_headers=auth(), origin=Origin(server.url),
                        open_timeout=STEP_TIMEOUT_S)
    try:
        await start(own)
    finally:
        await own.close()
    foreign = await connect(server.ws_url, additional_headers=auth(), origin=Origin("https://evil.example"),
                            open_timeout=STEP_TIMEOUT_S)
    try:
        t = await until_closed(foreign)
    finally:
        await foreign.close()
    assert_error(t, "origin_not_allowed", 4403)
    after = wait_idle(server)
    assert increase(before, after, "tts_ws_sessions_total", outcome="client_error") == 1


@pytest.mark.parametrize("rate", [8000, 24000])
async def test_resampled_clause_equals_http_stream(server: Server, before: Scrape, rate: int) -> None:
    text = "我们一起去公园散步吧。"
    async with session(server) as ws:
        assert (await start(ws, sample_rate=rate))["sample_rate"] == rate
        await send(ws, type="text", text=text)
        await send(ws, type="close")
        t = await until_closed(ws)
    assert t.close_code == 1000
    async with httpx.AsyncClient(base_url=server.url, headers=auth(), timeout=STEP_TIMEOUT_S) as client:
        r = await client.post("/v1/synthesize", json={"text": text, "voice": VOICE, "format": "pcm",
                                                      "sample_rate": rate, "stream": True})
    assert r.status_code == 200, r.text
    assert np.array_equal(pcm(t.audio[0]), pcm(r.content))
    assert t.events[-1]["audio_seconds"] == round(len(pcm(r.content)) / rate, 3)


def _rms(x: np.ndarray[Any, Any]) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


async def test_opus_clauses_are_whole_ogg_streams(server: Server, before: Scrape) -> None:
    # Each clause is one Ogg Opus stream: its frames, concatenated, decode to what /v1/synthesize's whole opus
    # answer for the same clause decodes to.
    texts = ["今天天气很好。", "我们一起去公园散步吧。"]
    async with session(server) as ws:
        ready = await start(ws, format="opus")
        assert (ready["format"], ready["encoding"], ready["sample_rate"]) == ("opus", "ogg-opus", 16000)
        await send(ws, type="text", text="".join(texts))
        await send(ws, type="close")
        t = await until_closed(ws)
    assert t.close_code == 1000
    assert t.stray_frames == 0
    assert sorted(t.audio) == [0, 1]
    async with httpx.AsyncClient(base_url=server.url, headers=auth(), timeout=STEP_TIMEOUT_S) as client:
        for index, text in enumerate(texts):
            data = bytes(t.audio[index])
            assert data.startswith(b"OggS")
            decoded, rate = sf.read(io.BytesIO(data), dtype="float32")
            r = await client.post("/v1/synthesize", json={"text": text, "voice": VOICE, "format": "opus"})
            whole, _ = sf.read(io.BytesIO(r.content), dtype="float32")
            assert rate == 16000
            assert len(decoded) == len(whole)
            # The same encoder on the same samples gives the same packets; the frame-streamed pcm may differ from
            # the whole by an LSB here and there (1e-4 bound), which the lossy coder can turn into a small
            # difference (measured: identical, or 3% of the signal's RMS).
            assert _rms(decoded - whole) <= 0.1 * _rms(whole)
            assert t.of_type("clause_done")[index]["audio_seconds"] == round(len(whole) / 16000, 3)
    after = wait_idle(server)
    assert increase(before, after, "tts_ws_sessions_total", outcome="ok") == 1


def test_bench_ws_client(server: Server, before: Scrape, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """bench/ws_client.py streams a file in deltas, reports the time to first audio and writes the audio."""
    text_file = tmp_path / "text.txt"
    text_file.write_text("今天天气很好。我们一起去公园散步吧。", encoding="utf-8")
    out, report = tmp_path / "out.wav", tmp_path / "report.json"
    code = ws_client.main([str(text_file), "-o", str(out), "--url", server.ws_url, "--key", KEY, "--json",
                           str(report), "--delta-chars", "2", "--sample-rate", "22050"])
    assert code == 0
    summary = json.loads(report.read_text(encoding="utf-8"))
    assert [c["text"] for c in summary["clauses"]] == ["今天天气很好。", "我们一起去公园散步吧。"]
    assert 0 < summary["time_to_first_audio_ms"] <= summary["wall_ms"]
    assert summary["close_code"] == 1000
    with wave.open(str(out), "rb") as wav:
        assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (22050, 1, 2)
        assert wav.getnframes() / 22050 == pytest.approx(summary["audio_seconds"], abs=1e-3)
        assert wav.getnframes() / 22050 == pytest.approx(sum(c["audio_seconds"] for c in summary["clauses"]),
                                                         abs=2e-3)
    assert "time to first audio:" in capsys.readouterr().out
    after = wait_idle(server)
    assert increase(before, after, "tts_ws_sessions_total", outcome="ok") == 1


def test_openapi_description_has_the_protocol(server: Server, before: Scrape) -> None:
    """OpenAPI cannot describe a WebSocket: the API description carries the protocol's summary instead."""
    description = httpx.get(f"{server.url}/openapi.json", timeout=5.0).json()["info"]["description"]
    assert "/v1/tts/ws" in description
    for word in ('"type": "start"', "clause_started", "cancelled", "4408", "4413", "4503"):
        assert word in description, word



async def test_two_sessions_share_the_worker(server: Server, before: Scrape) -> None:
    """Two sessions at once on one worker and a queue of one: their clauses take turns, each session gets its own
    clauses and audio, in order."""
    texts = {"a": "今天天气很好。我们去散步吧。", "b": "晚上回家吃饭。你觉得怎么样？"}

    async def talk(text: str, seed: int) -> Transcript:
        async with session(server) as ws:
            await start(ws)
            for piece in deltas(text, seed):
                await send(ws, type="text", text=piece)
            await send(ws, type="close")
            return await until_closed(ws)

    a, b = await asyncio.gather(talk(texts["a"], 1), talk(texts["b"], 2))
    for t, text in ((a, texts["a"]), (b, texts["b"])):
        assert t.close_code == 1000, t.events
        assert "".join(e["text"] for e in t.of_type("clause_started")) == text
        assert t.events[-1] == {"type": "end", "clauses": 2,
                                "audio_seconds": round(sum(len(x) for x in t.audio.values()) / 2 / RATE, 3)}
    after = wait_idle(server)
    assert increase(before, after, "tts_ws_sessions_total", outcome="ok") == 2
    assert increase(before, after, "tts_requests_total", outcome="ok") == 4


# --- keep this case last: it stops the module's server --------------------------------------------------------


async def test_shutdown_closes_open_sessions_with_1012(server: Server) -> None:
    async with session(server) as speaking, session(server) as listening:
        await start(speaking, speed=0.5)
        await start(listening)
        await send(speaking, type="text", text=LONG_TEXT)
        assert (await event(speaking))["type"] == "clause_started"
        assert isinstance(await receive(speaking), bytes)
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        async with httpx.AsyncClient(base_url=server.url, timeout=5.0) as client:
            for _ in range(int(STEP_TIMEOUT_S / 0.02)):  # readiness turns 503 at once
                if (await client.get("/readyz")).status_code == 503:
                    break
                await asyncio.sleep(0.02)
        # Sessions are still served for server.drain_delay_s (if that has not passed already) ...
        with contextlib.suppress(ConnectionClosed):
            await send(listening, type="cancel")
        # ... then every open session is closed, mid-clause or not: 1012, "service restart".
        for ws in (speaking, listening):
            t = await until_closed(ws)
            assert t.close_code == 1012, t.events
            assert {e["type"] for e in t.events} <= {"cancelled", "clause_done"}, t.events
    assert server.proc.wait(20) == 0
    assert time.monotonic() - signalled < DRAIN_DELAY_S + 10
