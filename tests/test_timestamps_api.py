"""Timestamps over HTTP (issue 15): the real engine (tiny model) in a worker, ``timestamps: true`` on
/v1/synthesize, the cache, and the OpenAPI schema."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from starlette.testclient import TestClient

from tests.conftest import running_app
from tests.tinymodel import build_tiny_model_dir
from tts_server.api.app import create_app
from tts_server.config import Settings

RATE = 16000
HOP = 200


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model", voices=("zhitian_emo",))


def _settings(make_settings: Callable[..., Settings], tiny_model: Path, **extra: Any) -> Settings:
    return make_settings(engine={"name": "sambert"}, model={"model_dir": str(tiny_model)},
                         pool={"workers": 1, "startup_timeout_s": 120.0}, **extra)


def _grid(doc: dict[str, Any]) -> list[float]:
    times = [doc["duration_ms"], *(m["time_ms"] for m in doc["marks"])]
    for kind in ("sentences", "words", "syllables", "characters"):
        times += [t for e in doc[kind] for t in (e["start_ms"], e["end_ms"])]
    return times


async def test_timestamps_over_http(make_settings: Callable[..., Settings], tiny_model: Path) -> None:
    ssml = ('<speak>北京<mark name="here"/>2026年<break time="300ms"/><sub alias="世界卫生组织">WHO</sub>'
            '<mark name="end"/></speak>')
    async with running_app(_settings(make_settings, tiny_model, cache={"enabled": True})) as (_, client):
        r = await client.post("/v1/synthesize", json={"text": "今天是2026年11月24日。", "format": "pcm",
                                                      "timestamps": True, "speed": 1.5})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"
        assert r.headers["x-cache"] == "miss"
        doc = r.json()
        pcm = np.frombuffer(base64.b64decode(doc["audio"]), dtype="<i2")
        assert (doc["format"], doc["sample_rate"], doc["hop_ms"]) == ("pcm", RATE, 12.5)
        # Frame-exact: the last end is the audio's length to the sample; every time is on the hop grid.
        assert doc["duration_ms"] * RATE / 1000 == pcm.size == doc["sentences"][-1]["end_ms"] * RATE / 1000
        assert doc["duration"] == pytest.approx(pcm.size / RATE)
        assert all(t * RATE / 1000 % HOP == 0 for t in _grid(doc))
        words = [(w["text"], w["begin"], w["end"]) for w in doc["words"]]
        assert words == [("今天", 0, 2), ("是", 2, 3), ("2026年", 3, 8), ("11月", 8, 11), ("24日", 11, 14)]
        date = [s for s in doc["syllables"] if s["begin"] is not None and 3 <= s["begin"] < 14]
        assert [s["pinyin"] for s in date][:5] == ["er4", "ling2", "er4", "liu4", "nian2"]
        assert {s["text"] for s in date[:5]} == {"2026年"}
        chars = {c["offset"]: c for c in doc["characters"]}
        assert chars[3]["char"] == "2"
        assert chars[3]["start_ms"] == date[0]["start_ms"]

        # The same request again comes from the cache, timings included; the audio-only request is its own entry.
        again = await client.post("/v1/synthesize", json={"text": "今天是2026年11月24日。", "format": "pcm",
                                                          "timestamps": True, "speed": 1.5})
        assert (again.headers["x-cache"], again.json()) == ("hit", doc)
        plain = await client.post("/v1/synthesize", json={"text": "今天是2026年11月24日。", "format": "pcm",
                                                          "speed": 1.5})
        assert (plain.headers["x-cache"], plain.headers["content-type"]) == ("miss", "audio/L16")
        assert plain.content == pcm.tobytes()

        r = await client.post("/v1/synthesize", json={"text": ssml, "input_format": "ssml", "timestamps": True,
                                                      "sample_rate": 24000})
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["sample_rate"] == 24000
        alias = [s for s in doc["syllables"] if s["text"] == "WHO"]
        assert len(alias) == 6
        assert ssml[alias[0]["begin"] : alias[0]["end"]] == "WHO"
        number = next(w for w in doc["words"] if w["text"] == "2026年")
        assert ssml[number["begin"] : number["end"]] == "2026年"
        marks = {m["name"]: m["time_ms"] for m in doc["marks"]}
        # A mark before a word is where that word starts (after the prosodic break the frontend put before it).
        assert next(w for w in doc["words"] if w["text"] == "北京")["end_ms"] < marks["here"] == number["start_ms"]
        assert marks["end"] == alias[-1]["end_ms"]
        first, second = doc["sentences"]
        assert second["start_ms"] - first["speech_end_ms"] == 300.0  # the <break>: 24 hops of silence
        assert doc["duration_ms"] == second["end_ms"]
        assert all(t * RATE / 1000 % HOP == 0 for t in _grid(doc))


async def test_timestamps_refusals(make_settings: Callable[..., Settings]) -> None:
    # The test engine reports no timings: a clear 422 rather than audio without them.
    async with running_app(make_settings(pool={"workers": 1})) as (_, client):
        r = await client.post("/v1/synthesize", json={"text": "你好", "timestamps": True})
        assert r.status_code == 422, r.text
        assert (r.json()["error"]["param"], r.json()["error"]["message"]) == (
            "timestamps", "this engine does not report timestamps")
        r = await client.post("/v1/synthesize", json={"text": "你好", "timestamps": True, "stream": True})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["param"] == "timestamps"
        spec = (await client.get("/openapi.json")).json()
        ok = spec["paths"]["/v1/synthesize"]["post"]["responses"]["200"]["content"]
        assert ok["application/json"]["schema"] == {"$ref": "#/components/schemas/TimestampedAudio"}
        schema = spec["components"]["schemas"]["TimestampedAudio"]
        assert {"audio", "duration", "syllables", "words", "characters", "marks"} <= set(schema["properties"])
        assert schema["examples"][0]["syllables"][0]["text"] == "2026年"


def _sse(body: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in body.decode().split("\n\n") if line.startswith("data: ")]


async def test_timestamps_as_server_sent_events(make_settings: Callable[..., Settings], tiny_model: Path) -> None:
    ssml = '<speak>你好，2026年。<break time="0.1s"/>再见！<mark name="m"/></speak>'
    async with running_app(_settings(make_settings, tiny_model, cache={"enabled": True})) as (_, client):
        whole = (await client.post("/v1/synthesize", json={"text": ssml, "input_format": "ssml", "format": "pcm",
                                                           "timestamps": True})).json()
        r = await client.post("/v1/audio/speech", json={"model": "tts-1", "voice": "zhitian_emo", "input": ssml,
                                                        "input_format": "ssml", "response_format": "pcm",
                                                        "stream_format": "sse", "timestamps": True})
        assert r.status_code == 200, r.text
        events = _sse(r.content)
        # Each sentence's timings come before its audio: the stream opens with the first sentence's.
        assert events[0]["type"] == "speech.timestamps"
        timed = [e for e in events if e["type"] == "speech.timestamps"]
        assert [e["sentence"] for e in timed] == whole["sentences"]
        assert [s for e in timed for s in e["syllables"]] == whole["syllables"]
        assert [m for e in timed for m in e["marks"]] == whole["marks"] == [
            {"name": "m", "time_ms": whole["duration_ms"], "sentence": len(whole["sentences"]) - 1}]
        audio = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
        assert audio == base64.b64decode(whole["audio"])
        assert events[-1]["type"] == "speech.audio.done"
        # The answer from the cache (the /v1/synthesize entry, same key) and a format sent whole: the same events.
        for fmt in ("pcm", "mp3"):
            again = await client.post("/v1/audio/speech", json={
                "model": "tts-1", "voice": "zhitian_emo", "input": ssml, "input_format": "ssml",
                "response_format": fmt, "stream_format": "sse", "timestamps": True})
            assert [e for e in _sse(again.content) if e["type"] == "speech.timestamps"] == timed
        assert again.headers["x-cache"] == "miss"
        refused = await client.post("/v1/audio/speech", json={"model": "tts-1", "voice": "zhitian_emo",
                                                              "input": "你好", "timestamps": True})
        assert refused.status_code == 422
        assert refused.json()["error"]["param"] == "timestamps"


def test_timestamps_over_the_websocket(make_settings: Callable[..., Settings], tiny_model: Path) -> None:
    """With ``timestamps`` in ``start`` each sentence's timings come before its frames, relative to its clause."""
    app = create_app(_settings(make_settings, tiny_model))
    with TestClient(app) as client:
        deadline = time.monotonic() + 120
        while not client.get("/health").json()["workers"]["ready"]:
            assert time.monotonic() < deadline, "no worker became ready"
            time.sleep(0.1)
        texts = ["你好，2026年见。", "再见！"]
        with client.websocket_connect("/v1/tts/ws") as ws:
            ws.send_json({"type": "start", "timestamps": True})
            assert ws.receive_json()["type"] == "ready"
            ws.send_json({"type": "text", "text": "".join(texts)})
            ws.send_json({"type": "close"})
            received: list[dict[str, Any] | int] = []
            while True:
                message = ws.receive()
                if message.get("bytes") is not None:
                    received.append(len(message["bytes"]) // 2)
                    continue
                event = json.loads(message["text"])
                received.append(event)
                if event["type"] in ("end", "error"):
                    break
        assert isinstance(received[-1], dict)
        assert received[-1]["type"] == "end", received[-1]
        for index, text in enumerate(texts):
            whole = client.post("/v1/synthesize", json={"text": text, "format": "pcm", "timestamps": True}).json()
            start = next(i for i, m in enumerate(received)
                         if isinstance(m, dict) and m["type"] == "clause_started" and m["index"] == index)
            # The clause's timings come right after clause_started, before any of its frames.
            events = [m for m in received[start:] if isinstance(m, dict) and m["type"] == "timestamps"
                      and m["index"] == index]
            assert received[start + 1] == events[0]
            assert [e["sentence"] for e in events] == whole["sentences"]
            assert [s for e in events for s in e["syllables"]] == whole["syllables"]
            done = next(i for i, m in enumerate(received) if isinstance(m, dict) and m["type"] == "clause_done"
                        and m["index"] == index)
            samples = sum(m for m in received[start:done] if isinstance(m, int))
            assert samples == whole["duration_ms"] * RATE / 1000
