"""OpenAI-compatible /v1/audio/speech, driven by the official ``openai`` package as the client."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import numpy as np
import openai
import pytest
import soundfile as sf

from tests.conftest import running_app
from tests.engines import SAMPLE_RATE, SECONDS_PER_CHAR
from tts_server.api.openai_compat import emotion_from_instructions
from tts_server.config import Settings

KEY = "sk-test-0123456789"
TEXT = "第一句话。第二句。第三句话很长。"  # 5 + 4 + 7 characters, three sentences


def samples(text: str, speed: float = 1.0, rate: int = SAMPLE_RATE) -> int:
    """What the test engine produces for ``text`` (sentence by sentence), at 16 kHz or resampled to ``rate``."""
    sentences = [s for s in text.replace("。", "。\n").splitlines() if s.strip()]
    n = sum(max(1, int(len(s) * SECONDS_PER_CHAR * SAMPLE_RATE / speed)) for s in sentences)
    return n if rate == SAMPLE_RATE else -(-n * rate // SAMPLE_RATE)


@asynccontextmanager
async def sdk(settings: Settings) -> AsyncIterator[tuple[openai.AsyncOpenAI, Any]]:
    async with running_app(settings) as (app, client):
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, timeout=60) as http:
            yield openai.AsyncOpenAI(api_key=KEY, base_url="http://tts.test/v1", http_client=http,
                                     max_retries=0), client


def _auth_settings(make_settings: Callable[..., Settings], **extra: Any) -> Settings:
    return make_settings(pool={"workers": 1}, auth={"enabled": True, "keys": [KEY]}, **extra)


@pytest.mark.parametrize(("fmt", "exact"), [("pcm", True), ("wav", True), ("flac", True), ("mp3", False),
                                            ("opus", False)])
async def test_sdk_round_trip(make_settings: Callable[..., Settings], fmt: str, exact: bool) -> None:
    async with sdk(_auth_settings(make_settings)) as (client, _):
        response = await client.audio.speech.create(model="tts-1", input=TEXT, voice="alloy", response_format=fmt)
        data = response.read()
        headers = response.response.headers
        assert headers["x-voice-mapped"] == "alloy=alpha"
        assert headers["x-sample-rate"] == "16000"
        if fmt == "pcm":
            audio = np.frombuffer(data, dtype="<i2")
        else:
            audio, rate = sf.read(io.BytesIO(data), dtype="int16")
            assert rate == 16000
            assert audio.ndim == 1
        expected = samples(TEXT)
        if exact:
            assert len(audio) == expected
        else:
            # Lossy codecs pad to whole frames.
            assert abs(len(audio) - expected) < 2000
        assert np.abs(audio).max() > 3000


async def test_sdk_streaming_audio_matches_whole(make_settings: Callable[..., Settings]) -> None:
    async with sdk(_auth_settings(make_settings)) as (client, _):
        whole = (await client.audio.speech.create(model="tts-1", input=TEXT, voice="alpha",
                                                  response_format="pcm")).read()
        async with client.audio.speech.with_streaming_response.create(
            model="tts-1", input=TEXT, voice="alpha", response_format="pcm", stream_format="audio",
        ) as response:
            assert response.headers["x-sample-rate"] == "16000"
            streamed = b"".join([chunk async for chunk in response.iter_bytes()])
        assert len(streamed) // 2 == samples(TEXT)
        assert streamed == whole

        async with client.audio.speech.with_streaming_response.create(
            model="tts-1", input=TEXT, voice="alpha", response_format="wav", stream_format="audio",
        ) as response:
            wav = b"".join([chunk async for chunk in response.iter_bytes()])
        assert wav[:4] == b"RIFF"
        assert wav[44:] == whole


async def test_sdk_streaming_sse(make_settings: Callable[..., Settings]) -> None:
    async with sdk(_auth_settings(make_settings)) as (client, _):
        async with client.audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts", input=TEXT, voice="alpha", response_format="pcm", stream_format="sse",
        ) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            events = [json.loads(line[len("data: "):]) async for line in response.iter_lines()
                      if line.startswith("data: ")]
        deltas = [e for e in events if e["type"] == "speech.audio.delta"]
        assert len(deltas) == 3  # one per sentence
        audio = b"".join(base64.b64decode(e["audio"]) for e in deltas)
        assert len(audio) // 2 == samples(TEXT)
        assert events[-1]["type"] == "speech.audio.done"
        assert events[-1]["usage"]["input_tokens"] == len(TEXT)

        # A format that cannot be cut per sentence still arrives as SSE, whole.
        async with client.audio.speech.with_streaming_response.create(
            model="tts-1", input=TEXT, voice="alpha", response_format="flac", stream_format="sse",
        ) as response:
            events = [json.loads(line[len("data: "):]) async for line in response.iter_lines()
                      if line.startswith("data: ")]
        flac = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
        decoded, rate = sf.read(io.BytesIO(flac), dtype="int16")
        assert (len(decoded), rate) == (samples(TEXT), 16000)


async def test_sse_error_after_first_event_is_in_band(make_settings: Callable[..., Settings]) -> None:
    # Each sentence takes 0.5 s; the deadline passes while the fifth is being synthesised. (A 1.5 s deadline left
    # a loaded machine only 1 s to get the first sentence out, or the stream began with the error.)
    settings = make_settings(pool={"workers": 1, "job_timeout_s": 2.5})
    async with running_app(settings) as (_, client):
        body = {"model": "tts-1", "input": "[sleep=0.5] 一。二。三。四。五。六。七。八。", "voice": "alpha",
                "response_format": "pcm", "stream_format": "sse"}
        async with client.stream("POST", "/v1/audio/speech", json=body) as r:
            assert r.status_code == 200
            events = [json.loads(line[len("data: "):]) async for line in r.aiter_lines()
                      if line.startswith("data: ")]
        assert events[0]["type"] == "speech.audio.delta"
        assert events[-1]["type"] == "error"
        assert events[-1]["error"]["code"] == "deadline_exceeded"
        assert not any(e["type"] == "speech.audio.done" for e in events)


async def test_instructions_speed_and_pcm_rate(make_settings: Callable[..., Settings]) -> None:
    async with sdk(_auth_settings(make_settings)) as (client, _):
        base = await client.audio.speech.create(model="tts-1", input="你好你好", voice="alpha", response_format="pcm")
        happy = await client.audio.speech.create(model="tts-1", input="你好你好", voice="alpha",
                                                 response_format="pcm", instructions="Speak in a cheerful tone.")
        assert happy.response.headers["x-emotion"] == "happy"
        assert happy.response.headers["x-instructions-ignored"] == "false"
        assert happy.read() != base.read()
        # beta has no "sad": the instruction cannot be honoured and says so.
        sad = await client.audio.speech.create(model="tts-1", input="你好", voice="beta", response_format="pcm",
                                               instructions="sad and slow")
        assert sad.response.headers["x-emotion"] == "neutral"
        assert sad.response.headers["x-instructions-ignored"] == "true"
        ours = await client.audio.speech.create(model="tts-1", input="你好", voice={"id": "beta"},
                                                response_format="pcm", extra_body={"emotion": "angry"})
        assert ours.response.headers["x-emotion"] == "angry"
        assert "x-voice-mapped" not in ours.response.headers

        fast = await client.audio.speech.create(model="tts-1", input="你好你好", voice="alpha",
                                                response_format="pcm", speed=4.0)
        assert fast.response.headers["x-speed-applied"] == "2"
        assert len(fast.read()) // 2 == samples("你好你好", speed=2.0)

        exact = await client.audio.speech.create(model="tts-1", input="你好你好", voice="alpha",
                                                 response_format="pcm", extra_query={"pcm_24khz": "true"})
        assert exact.response.headers["x-sample-rate"] == "24000"
        assert len(exact.read()) // 2 == samples("你好你好", rate=24000)


async def test_pcm_24khz_setting(make_settings: Callable[..., Settings]) -> None:
    async with sdk(_auth_settings(make_settings, openai={"pcm_24khz": True})) as (client, _):
        r = await client.audio.speech.create(model="tts-1", input="你好", voice="alpha", response_format="pcm")
        assert r.response.headers["x-sample-rate"] == "24000"
        # The flag only concerns pcm.
        w = await client.audio.speech.create(model="tts-1", input="你好", voice="alpha", response_format="wav")
        assert sf.info(io.BytesIO(w.read())).samplerate == 16000


async def test_sdk_errors(make_settings: Callable[..., Settings]) -> None:
    async with sdk(_auth_settings(make_settings)) as (client, http):
        with pytest.raises(openai.UnprocessableEntityError) as aac:
            await client.audio.speech.create(model="tts-1", input="你好", voice="alpha", response_format="aac")
        assert aac.value.body["param"] == "response_format"  # type: ignore[index]
        with pytest.raises(openai.UnprocessableEntityError, match="alpha, beta"):
            await client.audio.speech.create(model="tts-1", input="你好", voice="nobody")
        with pytest.raises(openai.UnprocessableEntityError, match="tts-1"):
            await client.audio.speech.create(model="whisper-1", input="你好", voice="alloy")
        with pytest.raises(openai.UnprocessableEntityError, match="limit is 500"):
            await client.audio.speech.create(model="tts-1", input="好" * 501, voice="alloy")
        with pytest.raises(openai.UnprocessableEntityError, match="speed"):
            await client.audio.speech.create(model="tts-1", input="好", voice="alloy", speed=5.0)
        bad_key = client.with_options(api_key="sk-wrong")
        with pytest.raises(openai.AuthenticationError):
            await bad_key.audio.speech.create(model="tts-1", input="你好", voice="alloy")
        r = await http.post("/v1/audio/speech", json={"model": "tts-1", "input": "好", "voice": "alloy"})
        assert r.status_code == 401


async def test_models(make_settings: Callable[..., Settings]) -> None:
    async with sdk(_auth_settings(make_settings)) as (client, _):
        ids = [m.id async for m in client.models.list()]
        assert "tts-1" in ids
        assert ids[0] == "iic/speech_sambert-hifigan_tts_zh-cn_16k"
        assert (await client.models.retrieve("tts-1-hd")).id == "tts-1-hd"
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("nope")


@pytest.mark.parametrize(("instructions", "emotion"), [
    ("Speak cheerfully!", "happy"), ("a SAD voice, then happy", "sad"), ("用生气的语气说", "angry"),
    ("madness", None), ("speak like a pirate", None), ("calm and clear", "neutral"),
])
def test_emotion_words(instructions: str, emotion: str | None) -> None:
    assert emotion_from_instructions(instructions) == emotion


@asynccontextmanager
async def over_tcp(settings: Settings) -> AsyncIterator[str]:
    """The app behind a real uvicorn socket: in-process transports buffer the whole body, hiding streaming."""
    import uvicorn

    async with running_app(settings) as (app, _):
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", ws="none",
                                               log_level="warning"))
        task = asyncio.create_task(server.serve())
        while not server.started:  # noqa: ASYNC110 (uvicorn offers no event for this)
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            await task


@pytest.mark.parametrize(("path", "body"), [
    ("/v1/synthesize", {"format": "pcm", "stream": True}),
    ("/v1/audio/speech", {"model": "tts-1", "voice": "alpha", "response_format": "pcm", "stream_format": "audio"}),
    ("/v1/audio/speech", {"model": "tts-1", "voice": "alpha", "response_format": "wav", "stream_format": "sse"}),
])
async def test_first_audio_before_last_sentence(make_settings: Callable[..., Settings], path: str,
                                                body: dict[str, Any]) -> None:
    per_sentence = 0.3
    text = f"[sleep={per_sentence}] 第一句。第二句。第三句。第四句。第五句。"
    payload = {**body, ("text" if path == "/v1/synthesize" else "input"): text}
    async with over_tcp(make_settings(pool={"workers": 1})) as base_url, \
            httpx2.AsyncClient(base_url=base_url, timeout=30) as http:
        started = time.monotonic()
        arrivals: list[float] = []
        async with http.stream("POST", path, json=payload) as r:
            assert r.status_code == 200
            async for _ in r.aiter_raw():
                arrivals.append(time.monotonic() - started)
        first, total = arrivals[0], arrivals[-1]
        # The first sentence is out while later ones are still being synthesised (buffered, it would come with the
        # last). Two sentences of margin, not three: a loaded machine delays the first chunk more than the rest.
        assert total >= 5 * per_sentence
        assert first < total - 2 * per_sentence, (first, total)
