"""The serving layer shared by every synthesis route: metrics for every outcome on every route, client disconnects
before and during a stream, declared input formats, and the one error vocabulary.

Disconnects are driven at the ASGI level (a ``receive`` that says ``http.disconnect`` when the test decides), so the
app sees exactly what a real server hands it when a client goes away.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Hold, read_log, running_app
from tts_server.api import errors
from tts_server.config import Settings

SPEECH = "/v1/audio/speech"
SYNTH = "/v1/synthesize"


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


async def _metric(client: httpx.AsyncClient, name: str, **labels: str) -> float:
    samples = _samples((await client.get("/metrics")).text)
    return samples.get((name, frozenset(labels.items())), 0.0)


# --- metrics for every outcome, on every route ---------------------------------------------------------------


@pytest.mark.parametrize(("text", "status", "outcome"), [
    ("[boom] 坏", 500, "server_error"),
    ("[fail] 坏", 422, "client_error"),
    ("好", 200, "ok"),
])
async def test_speech_outcomes_reach_request_metrics(make_settings: Callable[..., Settings], text: str,
                                                     status: int, outcome: str) -> None:
    # Regression: failures on /v1/audio/speech never reached tts_request_duration_seconds or tts_requests_total,
    # so the p95 and error-rate alerts could not see them.
    async with running_app(make_settings(pool={"workers": 1})) as (_, client):
        labels = {"route": SPEECH, "format": "wav", "stream": "false"}
        before = await _metric(client, "tts_request_duration_seconds_count", **labels)
        response = await client.post(SPEECH, json={"model": "tts-1", "input": text, "voice": "alpha",
                                                   "response_format": "wav"})
        assert response.status_code == status
        assert await _metric(client, "tts_request_duration_seconds_count", **labels) == before + 1
        assert await _metric(client, "tts_requests_total", voice="alpha", emotion="neutral", outcome=outcome) == 1


async def test_speech_rejection_counts_reason_outcome_and_latency(make_settings: Callable[..., Settings],
                                                                  hold: Hold) -> None:
    settings = make_settings(pool={"workers": 1, "queue_size": 0})
    async with running_app(settings) as (app, client):
        # Held until the rejection is in, and waited for rather than slept on: a sleep of 0.3 s next to a 1 s job
        # could see the job not started yet or already over on a loaded machine, and the request was admitted.
        busy = asyncio.create_task(client.post(SYNTH, json={"text": "[hold] 慢"}))
        await _wait_until(lambda: app.state.tts.pool.stats().in_progress == 1, 10)
        response = await client.post(SPEECH, json={"model": "tts-1", "input": "快", "voice": "alpha",
                                                   "response_format": "mp3"})
        hold.release()
        assert response.status_code == 503
        assert response.headers["Retry-After"].isdigit()
        assert response.json()["error"]["code"] == "queue_full"
        assert (await busy).status_code == 200
        assert await _metric(client, "tts_requests_total", voice="alpha", emotion="neutral",
                             outcome="rejected") == 1
        assert await _metric(client, "tts_requests_rejected_total", reason="queue_full") == 1
        assert await _metric(client, "tts_request_duration_seconds_count", route=SPEECH, format="mp3",
                             stream="false") == 1


# --- client disconnects ----------------------------------------------------------------------------------------


class AsgiCall:
    """One HTTP request driven straight into the app; ``leave()`` makes the client disconnect."""

    def __init__(self, app: FastAPI, path: str, body: dict[str, Any]) -> None:
        self.app = app
        self.body = json.dumps(body).encode()
        self.scope = {
            "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
            "query_string": b"", "headers": [(b"content-type", b"application/json"), (b"host", b"tts.test")],
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80), "state": {},
        }
        self.status: int | None = None
        self.chunks: list[bytes] = []
        self.first_body = asyncio.Event()
        self._gone = asyncio.Event()
        self._sent_body = False
        self.task: asyncio.Task[None] | None = None

    def start(self) -> AsgiCall:
        self.task = asyncio.create_task(self.app(self.scope, self._receive, self._send))
        return self

    def leave(self) -> None:
        self._gone.set()

    async def _receive(self) -> dict[str, Any]:
        if not self._sent_body:
            self._sent_body = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message["type"] == "http.response.body" and message.get("body"):
            self.chunks.append(message["body"])
            self.first_body.set()


async def _wait_until(predicate: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_disconnect_before_first_chunk_cancels_the_stream(make_settings: Callable[..., Settings],
                                                                engine_log: Path, hold: Hold) -> None:
    # Regression: a client leaving before the first sentence was ready was ignored; its job ran to the end.
    async with running_app(make_settings(pool={"workers": 1})) as (app, client):
        # Held until the client has gone, so no audio can precede the disconnect however slow the machine (the
        # first 1.5 s sentence could, and the response began with 200).
        call = AsgiCall(app, SYNTH, {"text": "[hold][sleep=1.5] 一。二。三。四。", "stream": True,
                                     "format": "pcm"}).start()
        await _wait_until(lambda: len(read_log(engine_log)) >= 2, 10)  # warm-up, then our job started
        call.leave()
        assert call.task is not None
        await asyncio.wait_for(call.task, 10)
        hold.release()
        assert call.status == 499 or call.status is None
        assert await _metric(client, "tts_requests_total", voice="alpha", emotion="neutral",
                             outcome="cancelled") == 1
        # The worker stops after the sentence it is in: the next request does not wait for three more.
        started = time.monotonic()
        assert (await client.post(SYNTH, json={"text": "好"})).status_code == 200
        assert time.monotonic() - started < 3 * 1.5


@pytest.mark.parametrize("path", [SYNTH, SPEECH])
async def test_disconnect_mid_stream_stops_the_worker_and_counts_cancelled(
        make_settings: Callable[..., Settings], path: str) -> None:
    # Regression: a streaming client that disconnected kept its worker busy until the whole text was
    # synthesised (11 s seen), and the request was not counted as cancelled.
    text = "[sleep=1] " + "。".join("一二三四五六七八") + "。"
    body: dict[str, Any] = ({"text": text, "stream": True, "format": "pcm"} if path == SYNTH else
                            {"model": "tts-1", "input": text, "voice": "alpha", "response_format": "pcm",
                             "stream_format": "audio"})
    async with running_app(make_settings(pool={"workers": 1})) as (app, client):
        call = AsgiCall(app, path, body).start()
        await asyncio.wait_for(call.first_body.wait(), 15)
        assert call.status == 200
        call.leave()
        assert call.task is not None
        await asyncio.wait_for(call.task, 10)
        started = time.monotonic()
        assert (await client.post(SYNTH, json={"text": "好"})).status_code == 200
        # Seven one-second sentences were left; stopping at the next sentence frees the worker within ~1 s.
        assert time.monotonic() - started < 4.0
        assert await _metric(client, "tts_requests_total", voice="alpha", emotion="neutral",
                             outcome="cancelled") == 1
        assert await _metric(client, "tts_requests_total", voice="alpha", emotion="neutral", outcome="ok") == 1


# --- the error vocabulary ----------------------------------------------------------------------------------


def test_every_5xx_row_has_a_fixed_message_and_every_rejection_a_known_reason() -> None:
    from tts_server.metrics.registry import OUTCOMES, REJECT_REASONS

    rows = [v for v in vars(errors).values() if isinstance(v, errors.ErrorKind)]
    assert len(rows) >= 20
    for row in rows:
        assert row.outcome in OUTCOMES, row
        assert row.reject_reason is None or row.reject_reason in REJECT_REASONS, row
        if row.status >= 500:
            assert row.message, f"{row.code}: a 5xx must never carry the raiser's text"
        assert row.retry_after == (row.status in (429, 503)), row
    # A 5xx built with internal text still says only the row's message.
    leaked = errors.ApiError(errors.INTERNAL, "Traceback: /etc/passwd")
    assert "passwd" not in leaked.body().decode()
    assert json.loads(leaked.body()) == {"error": {"message": "internal server error", "type": "server_error",
                                                   "code": "internal_error", "param": None}}


async def test_middleware_errors_use_the_one_body(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(server={"max_body_bytes": 1024}, auth={"enabled": True, "keys": ["k" * 16]},
                             rate_limit={"enabled": True, "requests_per_second": 0.01, "burst": 1})
    async with running_app(settings) as (_, client):
        auth = {"Authorization": "Bearer " + "k" * 16}
        too_large = await client.post(SYNTH, content=b"{" + b" " * 2048 + b"}", headers=auth)
        assert too_large.status_code == 413
        assert too_large.json()["error"]["code"] == "body_too_large"
        limited = await client.post(SYNTH, json={"text": "好"}, headers=auth)
        assert limited.status_code == 429
        assert limited.json()["error"]["type"] == "rate_limit_error"
        assert int(limited.headers["Retry-After"]) >= 1
        unauthorized = await client.get("/v1/voices")
        assert unauthorized.status_code == 401
        assert set(unauthorized.json()["error"]) == {"message", "type", "code", "param"}
        assert await _metric(client, "tts_requests_rejected_total", reason="too_large") == 1
        assert await _metric(client, "tts_requests_rejected_total", reason="rate_limited") == 1


# --- declared input format ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [SYNTH, SPEECH])
async def test_input_format_travels_from_request_to_engine(make_settings: Callable[..., Settings],
                                                           engine_log: Path, path: str) -> None:
    # SSML is read as SSML only when the client says so; nothing is guessed from the text.
    document = "<speak>你好<break time='1s'/>世界</speak>"

    def body(text: str, fmt: str) -> dict[str, Any]:
        if path == SYNTH:
            return {"text": text, "input_format": fmt}
        return {"model": "tts-1", "input": text, "voice": "alpha", "response_format": "wav", "input_format": fmt}

    async with running_app(make_settings(pool={"workers": 1}, cache={"enabled": True})) as (_, client):
        as_ssml = await client.post(path, json=body(document, "ssml"))
        as_text = await client.post(path, json=body(document, "text"))
        assert as_ssml.status_code == as_text.status_code == 200
        # Same text, different declared format: two syntheses, not one cache entry.
        assert as_ssml.headers["X-Cache"] == as_text.headers["X-Cache"] == "miss"
        assert as_ssml.content != as_text.content
        ran = [text for _, text in read_log(engine_log)]
        assert f"ssml\t{document}" in ran
        assert document in ran
        broken = await client.post(path, json=body("<speak>未闭合", "ssml"))
        assert broken.status_code == 422
        assert broken.json()["error"]["code"] == "invalid_input"
        unknown = await client.post(path, json=body("你好", "markdown"))
        assert unknown.status_code == 422
        assert unknown.json()["error"]["param"].endswith("input_format")
