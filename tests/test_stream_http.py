"""HTTP streaming is frame-level end to end (issue 14, item 2): with the real Sambert engine (tiny random-weight
model) in a worker process, ``stream: true`` on /v1/synthesize and /v1/audio/speech (raw audio and SSE) sends one
sentence as several chunks as the decoder makes them, and the chunks add up to the non-streamed audio.

Chunks are counted where the server hands them to the network: the ``http.response.body`` messages of the ASGI app
(an HTTP client may merge or split them in transit, so counting received pieces would prove nothing).

Tolerance: the engine's streamed float audio equals the whole audio within 1e-4 (tests/test_stream_engine.py); in
16-bit PCM that is 1e-4 * 32768 = 3.3 steps, plus one step where the truncation to int16 falls either side.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
from starlette.types import Message, Receive, Scope, Send

from tests.tinymodel import build_tiny_model_dir
from tts_server.api.app import create_app
from tts_server.config import Settings

#: One sentence: no punctuation inside, so the frontend makes one utterance of it.
TEXT = "今天天气很好我们一起去公园散步吧。"
MAX_STEPS = 5  # int16 steps: 1e-4 of full scale (3.3) plus one for the truncation


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("stream-http") / "model", voices=("zhitian_emo",))


class BodyCounter:
    """The app, wrapped so that the body pieces it sends per request path are recorded."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.pieces: list[bytes] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counting(message: Message) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                self.pieces.append(message["body"])
            await send(message)

        await self.app(scope, receive, counting)


@asynccontextmanager
async def sambert_app(make_settings: Callable[..., Settings], model_dir: Path,
                      chunk_frames: int) -> AsyncIterator[tuple[BodyCounter, httpx.AsyncClient]]:
    settings = make_settings(pool={"workers": 1},
                             engine={"name": "sambert", "stream_chunk_frames": chunk_frames,
                                     "stream_first_chunk_frames": 2},
                             model={"model_dir": str(model_dir), "torch_threads": 1})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        assert await app.state.tts.pool.wait_ready(60), "no worker became ready"
        counter = BodyCounter(app)
        transport = httpx.ASGITransport(app=counter)
        async with httpx.AsyncClient(transport=transport, base_url="http://tts.test", timeout=60) as client:
            yield counter, client


async def _post(counter: BodyCounter, client: httpx.AsyncClient, path: str,
                body: dict[str, Any]) -> tuple[bytes, list[bytes]]:
    """The response body and the pieces the app sent it in."""
    counter.pieces.clear()
    r = await client.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.content, list(counter.pieces)


def _pcm(data: bytes) -> npt.NDArray[np.int32]:
    return np.frombuffer(data, "<i2").astype(np.int32)


def _assert_same_audio(streamed: bytes, whole: bytes) -> None:
    a, b = _pcm(streamed), _pcm(whole)
    assert len(a) == len(b)
    assert np.abs(b).max() > 100  # real audio, not silence
    assert np.abs(a - b).max() <= MAX_STEPS


def _sse_audio(body: bytes) -> list[bytes]:
    events = [json.loads(line[len(b"data: "):]) for line in body.split(b"\n\n") if line.startswith(b"data: ")]
    assert events[-1]["type"] == "speech.audio.done"
    return [base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta"]


async def test_one_sentence_streams_in_several_chunks_on_every_route(make_settings: Callable[..., Settings],
                                                                     model_dir: Path) -> None:
    async with sambert_app(make_settings, model_dir, chunk_frames=4) as (counter, client):
        whole, _ = await _post(counter, client, "/v1/synthesize", {"text": TEXT, "format": "pcm"})
        frames = len(whole) // 2 // 200
        assert frames > 12  # enough mel frames for the chunk sizes below to matter

        # /v1/synthesize: pcm and wav (a streaming header first, then the same chunks).
        body, pieces = await _post(counter, client, "/v1/synthesize", {"text": TEXT, "format": "pcm", "stream": True})
        assert len(pieces) >= 3, len(pieces)
        assert len(pieces[0]) < len(pieces[1])  # the first chunk is the smaller one (stream_first_chunk_frames)
        _assert_same_audio(body, whole)
        body, pieces = await _post(counter, client, "/v1/synthesize", {"text": TEXT, "format": "wav", "stream": True})
        assert body[:4] == b"RIFF"
        assert len(pieces) >= 4
        _assert_same_audio(body[44:], whole)

        # /v1/audio/speech: raw audio stream and server-sent events, one delta per chunk.
        speech = {"model": "tts-1", "input": TEXT, "voice": "alloy", "response_format": "pcm"}
        whole_speech, _ = await _post(counter, client, "/v1/audio/speech", speech)
        assert whole_speech == whole
        body, pieces = await _post(counter, client, "/v1/audio/speech", {**speech, "stream_format": "audio"})
        assert len(pieces) >= 3
        _assert_same_audio(body, whole)
        body, pieces = await _post(counter, client, "/v1/audio/speech", {**speech, "stream_format": "sse"})
        deltas = _sse_audio(body)
        assert len(deltas) >= 3
        assert len(pieces) == len(deltas) + 1  # every delta went out as it was made, then the done event
        _assert_same_audio(b"".join(deltas), whole)

        # Resampled: one continuous signal across the chunks, equal to the whole response at that rate.
        whole_22k, _ = await _post(counter, client, "/v1/synthesize",
                                   {"text": TEXT, "format": "pcm", "sample_rate": 22050})
        body, pieces = await _post(counter, client, "/v1/synthesize",
                                   {"text": TEXT, "format": "pcm", "sample_rate": 22050, "stream": True})
        assert len(pieces) >= 3
        _assert_same_audio(body, whole_22k)


async def test_sentence_streaming_sends_the_sentence_whole(make_settings: Callable[..., Settings],
                                                           model_dir: Path) -> None:
    # stream_chunk_frames = 0 is the old per-sentence streaming: the same text goes out in one piece.
    async with sambert_app(make_settings, model_dir, chunk_frames=0) as (counter, client):
        whole, _ = await _post(counter, client, "/v1/synthesize", {"text": TEXT, "format": "pcm"})
        body, pieces = await _post(counter, client, "/v1/synthesize", {"text": TEXT, "format": "pcm", "stream": True})
        assert len(pieces) == 1
        assert body == whole
