"""HTTP API through the real pool (spawned worker processes running the deterministic test engine)."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from tests.conftest import read_log, running_app
from tests.engines import SECONDS_PER_CHAR
from tts_server.config import Settings


async def test_happy_path_wav(make_settings: Callable[..., Settings]) -> None:
    async with running_app(make_settings()) as (_, client):
        r = await client.post("/v1/synthesize", json={"text": "你好世界", "voice": "beta", "emotion": "angry"})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "audio/wav"
        assert r.headers["x-sample-rate"] == "16000"
        assert len(r.headers["x-request-id"]) >= 16
        audio, rate = sf.read(io.BytesIO(r.content), dtype="float32")
        assert rate == 16000
        assert audio.ndim == 1
        assert len(audio) == int(4 * SECONDS_PER_CHAR * 16000)
        assert float(r.headers["x-audio-duration"]) == pytest.approx(len(audio) / 16000, abs=1e-3)
        assert np.abs(audio).max() > 0.1


async def test_defaults_pcm_speed_and_resampling(make_settings: Callable[..., Settings]) -> None:
    async with running_app(make_settings()) as (_, client):
        slow = await client.post("/v1/synthesize", json={"text": "一二三四五六", "format": "pcm"})
        fast = await client.post("/v1/synthesize", json={"text": "一二三四五六", "format": "pcm", "speed": 2.0})
        up = await client.post("/v1/synthesize", json={"text": "一二三四五六", "format": "pcm", "sample_rate": 24000})
        for r in (slow, fast, up):
            assert r.status_code == 200, r.text
            assert r.headers["content-type"] == "audio/L16"
        n = len(slow.content) // 2
        assert n == int(6 * SECONDS_PER_CHAR * 16000)
        assert len(fast.content) // 2 == n // 2
        assert len(up.content) // 2 == n * 3 // 2
        assert up.headers["x-sample-rate"] == "24000"


async def test_client_request_id_is_echoed(make_settings: Callable[..., Settings]) -> None:
    async with running_app(make_settings(pool={"workers": 1})) as (_, client):
        r = await client.post("/v1/synthesize", json={"text": "好"}, headers={"X-Request-Id": "abc-123"})
        assert r.headers["x-request-id"] == "abc-123"
        bad = await client.get("/livez", headers={"X-Request-Id": "evil id with spaces"})
        assert bad.headers["x-request-id"] != "evil id with spaces"


@pytest.mark.parametrize(
    ("body", "param", "needle"),
    [
        ({"text": ""}, "text", "empty"),
        ({"text": "   "}, "text", "empty"),
        ({"text": "好" * 501}, "text", "limit is 500"),
        ({"text": "好", "voice": "gamma"}, "voice", "alpha, beta"),
        ({"text": "好", "voice": "beta", "emotion": "happy"}, "emotion", "neutral, angry"),
        ({"text": "好", "speed": 0.1}, "speed", "0.5"),
        ({"text": "好", "speed": 2.5}, "speed", "2"),
        ({"text": 5}, "text", "string"),
        ({"text": "好", "speed": "fast"}, "speed", "number"),
        ({"text": "好", "format": "aiff"}, "format", "wav"),
        ({"text": "好", "sample_rate": 12345}, "sample_rate", "16000"),
        ({"text": "好", "bogus": 1}, "bogus", "unknown field"),
        ({"voice": "alpha"}, "text", "required"),
        ({"text": "[fail] 好"}, "text", "refuses"),
    ],
)
async def test_validation_errors(make_settings: Callable[..., Settings], body: dict[str, Any], param: str,
                                 needle: str) -> None:
    async with running_app(make_settings(pool={"workers": 1})) as (_, client):
        r = await client.post("/v1/synthesize", json=body)
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert set(err) == {"message", "type", "code", "param"}
        assert err["type"] == "invalid_request_error"
        assert err["param"] == param
        assert needle in err["message"]


async def test_malformed_json_and_wrong_content(make_settings: Callable[..., Settings]) -> None:
    async with running_app(make_settings(pool={"workers": 1})) as (_, client):
        r = await client.post("/v1/synthesize", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422
        assert "JSON" in r.json()["error"]["message"]
        r = await client.post("/v1/synthesize", json=["a list"])
        assert r.status_code == 422
        r = await client.get("/v1/nothing-here")
        assert r.status_code == 404
        assert r.json()["error"]["type"] == "invalid_request_error"


async def test_body_limit_counts_real_bytes(make_settings: Callable[..., Settings]) -> None:
    async with running_app(make_settings(pool={"workers": 1}, server={"max_body_bytes": 2048})) as (_, client):
        big = {"text": "好" * 2000}
        r = await client.post("/v1/synthesize", json=big)
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "body_too_large"

        async def chunked() -> Any:  # no Content-Length at all
            for _ in range(10):
                yield b" " * 1000

        r = await client.post("/v1/synthesize", content=chunked(), headers={"content-type": "application/json"})
        assert r.status_code == 413


async def test_internal_errors_never_leak(make_settings: Callable[..., Settings]) -> None:
    async with running_app(make_settings(pool={"workers": 1})) as (_, client):
        r = await client.post("/v1/synthesize", json={"text": "[boom] 好"})
        assert r.status_code == 500
        assert "secret" not in r.text
        assert "passwd" not in r.text
        assert r.json()["error"]["type"] == "server_error"
        # The worker survived an engine exception.
        assert (await client.post("/v1/synthesize", json={"text": "好"})).status_code == 200


async def test_voices_info_and_health(make_settings: Callable[..., Settings]) -> None:
    async with running_app(make_settings()) as (_, client):
        voices = (await client.get("/v1/voices")).json()
        assert voices["default_voice"] == "alpha"
        assert [v["name"] for v in voices["voices"]] == ["alpha", "beta"]
        assert voices["voices"][1]["emotions"] == ["neutral", "angry"]
        assert [(v["kind"], v["stochastic"], v["sample_rate"]) for v in voices["voices"]] == [
            ("built-in", False, 16000)] * 2
        schema = (await client.get("/openapi.json")).json()["components"]["schemas"]["VoiceModel"]
        assert {"name", "kind", "stochastic", "sample_rate", "emotions"} <= set(schema["required"])
        assert schema["properties"]["kind"]["enum"] == ["built-in", "personal"]
        info = (await client.get("/v1/info")).json()
        assert info["max_text_chars"] == 500
        for _ in range(100):
            health = (await client.get("/health")).json()
            if health["workers"]["ready"] == 2:
                break
            await asyncio.sleep(0.1)
        assert health["status"] == "ok"
        assert health["model_loaded"] is True
        assert health["workers"] == {"total": 2, "starting": 0, "ready": 2, "busy": 0, "dead": 0}
        assert (await client.get("/livez")).json() == {"status": "ok"}


async def test_openapi_documents_errors(make_settings: Callable[..., Settings]) -> None:
    async with running_app(make_settings(pool={"workers": 1})) as (_, client):
        spec = (await client.get("/openapi.json")).json()
        responses = spec["paths"]["/v1/synthesize"]["post"]["responses"]
        for status in ("200", "413", "422", "500", "503", "504"):
            assert status in responses
        assert "ErrorResponse" in spec["components"]["schemas"]
        docs = await client.get("/docs")
        assert docs.status_code == 200


async def test_streaming_sentences(make_settings: Callable[..., Settings]) -> None:
    async with running_app(make_settings(pool={"workers": 1})) as (_, client):
        text = "第一句话。第二句。第三句话很长很长。"
        whole = await client.post("/v1/synthesize", json={"text": text, "format": "pcm"})
        async with client.stream("POST", "/v1/synthesize",
                                 json={"text": text, "format": "wav", "stream": True}) as r:
            assert r.status_code == 200
            data = b"".join([chunk async for chunk in r.aiter_bytes()])
        assert data[:4] == b"RIFF"
        assert data[44:] == whole.content
        r = await client.post("/v1/synthesize", json={"text": text, "format": "flac", "stream": True})
        assert r.status_code == 422


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "mp3", "opus"])
async def test_formats_decode(make_settings: Callable[..., Settings], fmt: str) -> None:
    async with running_app(make_settings(pool={"workers": 1})) as (_, client):
        r = await client.post("/v1/synthesize", json={"text": "你好你好你好你好", "format": fmt})
        assert r.status_code == 200, r.text
        audio, rate = sf.read(io.BytesIO(r.content), dtype="float32")
        assert rate == 16000
        assert audio.ndim == 1
        assert abs(len(audio) - int(8 * SECONDS_PER_CHAR * 16000)) < 2000


async def test_no_audio_file_left_on_disk(make_settings: Callable[..., Settings], tmp_path: Path,
                                          engine_log: Path) -> None:
    import tempfile

    before = set(os.listdir(tempfile.gettempdir()))
    async with running_app(make_settings(pool={"workers": 1})) as (_, client):
        for fmt in ("wav", "mp3", "flac"):
            assert (await client.post("/v1/synthesize", json={"text": "好", "format": fmt})).status_code == 200
    after = set(os.listdir(tempfile.gettempdir()))
    audio_ext = {".wav", ".mp3", ".flac", ".ogg", ".opus", ".pcm"}
    assert not [p for p in after - before if os.path.splitext(p)[1] in audio_ext]
    assert read_log(engine_log)
