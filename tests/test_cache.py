"""Audio cache: hits skip the pool, identical requests coalesce, memory and disk stay within their caps."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import read_log, running_app
from tts_server.config import Settings, load_settings
from tts_server.inference.cache import DISK_SUBDIR, AudioCache, CachedAudio, CacheDirError, model_revision


def jobs(engine_log: Path) -> list[str]:
    """Texts the test engine synthesised (its own warm-up excluded)."""
    return [text for _, text in read_log(engine_log) if text != "warm up"]


def _entry(size: int, tag: int = 0) -> CachedAudio:
    return CachedAudio(bytes([tag % 256]) * size, "audio/wav", 16000, size / 32000)


def _cache_settings(tmp_path: Path, **cache: object) -> Settings:
    return load_settings(None, engine={"name": "tests.engines:tone_engine"},
                         model={"download_dir": str(tmp_path / "models")}, cache={"enabled": True, **cache})


Producer = Callable[[], Awaitable[CachedAudio]]


def _counting(item_for: Callable[[int], CachedAudio]) -> tuple[list[int], Callable[[int], Producer]]:
    """A list of the syntheses run, and a factory of producers that record themselves in it."""
    calls: list[int] = []

    def factory(i: int) -> Producer:
        async def produce() -> CachedAudio:
            calls.append(i)
            await asyncio.sleep(0.01)
            return item_for(i)

        return produce

    return calls, factory


async def test_cache_hit_is_identical_and_skips_the_pool(make_settings: Callable[..., Settings],
                                                         engine_log: Path) -> None:
    async with running_app(make_settings(pool={"workers": 1}, cache={"enabled": True})) as (_, client):
        body = {"text": "你好 世界。", "voice": "beta", "emotion": "angry", "format": "flac"}
        first = await client.post("/v1/synthesize", json=body)
        second = await client.post("/v1/synthesize", json=body)
        assert (first.status_code, second.status_code) == (200, 200)
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
        assert second.content == first.content
        assert second.headers["x-audio-duration"] == first.headers["x-audio-duration"]
        assert len(jobs(engine_log)) == 1
        # Anything that can change the audio is a different entry, whitespace and line breaks included.
        for change in ({"speed": 1.5}, {"format": "wav"}, {"emotion": "neutral"}, {"sample_rate": 8000},
                       {"text": "你好世界。"}, {"text": " 你好 世界。 "}, {"text": "你好\n世界。"}):
            r = await client.post("/v1/synthesize", json={**body, **change})
            assert r.headers["x-cache"] == "miss", change
        assert len(jobs(engine_log)) == 8
        # The OpenAI route shares the cache (same text, voice, emotion, speed, format and rate).
        speech = {"model": "tts-1", "input": "你好 世界。", "voice": "beta", "emotion": "angry",
                  "response_format": "flac"}
        r = await client.post("/v1/audio/speech", json=speech)
        assert (r.headers["x-cache"], r.content) == ("hit", first.content)
        # A streaming request for a stored entry is answered from the cache too.
        pcm = await client.post("/v1/synthesize", json={**body, "format": "pcm"})
        streamed = await client.post("/v1/synthesize", json={**body, "format": "pcm", "stream": True})
        assert (streamed.headers["x-cache"], streamed.content) == ("hit", pcm.content)
        assert len(jobs(engine_log)) == 9
        # A streamed miss is synthesised (and streamed), but not stored: its chunks were resampled one by one.
        fresh = {**body, "text": "新的一句。", "format": "pcm", "stream": True}
        assert (await client.post("/v1/synthesize", json=fresh)).headers["x-cache"] == "miss"
        assert (await client.post("/v1/synthesize", json=fresh)).headers["x-cache"] == "miss"
        assert len(jobs(engine_log)) == 11
        metrics = (await client.get("/metrics")).text
        assert 'tts_cache_lookups_total{result="hit"} 3.0' in metrics
        assert 'tts_cache_lookups_total{result="miss"} 11.0' in metrics


async def test_a_stochastic_voice_is_cached_only_with_a_seed(make_settings: Callable[..., Settings],
                                                             engine_log: Path) -> None:
    settings = make_settings(engine={"name": "tests.engines:stochastic_engine"}, pool={"workers": 1},
                             cache={"enabled": True})
    async with running_app(settings) as (_, client):
        voices = {v["name"]: v for v in (await client.get("/v1/voices")).json()["voices"]}
        assert (voices["gamma"]["kind"], voices["gamma"]["stochastic"]) == ("personal", True)
        assert (voices["alpha"]["kind"], voices["alpha"]["stochastic"]) == ("built-in", False)
        body = {"text": "你好。", "voice": "gamma", "format": "wav"}
        unseeded = [await client.post("/v1/synthesize", json=body) for _ in range(2)]
        assert [r.headers["x-cache"] for r in unseeded] == ["miss", "miss"]
        assert unseeded[0].content != unseeded[1].content  # fresh draws each time: a stored answer would be wrong
        assert jobs(engine_log) == ["你好。", "你好。"]
        seeded = [await client.post("/v1/synthesize", json={**body, "seed": 7}) for _ in range(2)]
        assert [r.headers["x-cache"] for r in seeded] == ["miss", "hit"]
        assert seeded[0].content == seeded[1].content
        other = await client.post("/v1/synthesize", json={**body, "seed": 8})
        assert other.headers["x-cache"] == "miss"
        assert other.content != seeded[0].content
        assert jobs(engine_log)[2:] == ["seed=7\t你好。", "seed=8\t你好。"]
        # The OpenAI route takes the seed as an extension and shares the entry.
        speech = {"model": "tts-1", "input": "你好。", "voice": "gamma", "response_format": "wav"}
        r = await client.post("/v1/audio/speech", json={**speech, "seed": 7})
        assert (r.headers["x-cache"], r.content) == ("hit", seeded[0].content)
        r = await client.post("/v1/audio/speech", json=speech)
        assert r.headers["x-cache"] == "miss"
        # Unseeded streams are neither looked up nor stored either.
        stream = {**body, "format": "pcm", "stream": True}
        assert [(await client.post("/v1/synthesize", json=stream)).headers["x-cache"] for _ in range(2)] == [
            "miss", "miss"]
        assert len(jobs(engine_log)) == 7
        # A deterministic voice ignores the seed: not sent to the engine, not part of its cache key.
        plain = {"text": "你好。", "voice": "alpha", "format": "wav"}
        first = await client.post("/v1/synthesize", json=plain)
        again = await client.post("/v1/synthesize", json={**plain, "seed": 3})
        assert (first.headers["x-cache"], again.headers["x-cache"]) == ("miss", "hit")
        assert jobs(engine_log)[7:] == ["你好。"]
        for bad in (-1, 2**63, 1.5):
            r = await client.post("/v1/synthesize", json={**body, "seed": bad})
            assert r.status_code == 422, bad


async def test_the_cache_never_changes_the_text_the_engine_gets(make_settings: Callable[..., Settings],
                                                                engine_log: Path) -> None:
    # The newline is a sentence break for the frontend (and the test engine): it changes the audio.
    texts = ["你好\n世界。", "你好 世界。", "  你好  世界。\r\n"]
    audio: dict[bool, list[bytes]] = {}
    for enabled in (False, True):
        async with running_app(make_settings(pool={"workers": 1}, cache={"enabled": enabled})) as (_, client):
            responses = [await client.post("/v1/synthesize", json={"text": t, "format": "wav"}) for t in texts]
        assert [r.status_code for r in responses] == [200] * len(texts)
        assert [r.headers["x-cache"] for r in responses] == ["miss"] * len(texts), enabled
        audio[enabled] = [r.content for r in responses]
    assert audio[True] == audio[False]  # byte for byte, cache on or off
    assert audio[False][0] != audio[False][1]  # so a cache that merged them would have served the wrong audio
    assert jobs(engine_log) == texts * 2  # verbatim: no trimming, no collapsing, no newline rewriting


@pytest.mark.parametrize("enabled", [False, True])
async def test_unpaired_surrogates_are_a_422(make_settings: Callable[..., Settings], engine_log: Path,
                                             enabled: bool) -> None:
    async with running_app(make_settings(pool={"workers": 1}, cache={"enabled": enabled})) as (_, client):
        for text in ("\\ud800你好", "你好\\udfff", "\\udc00\\ud800"):  # lone high, lone low, reversed pair
            r = await client.post("/v1/synthesize", content=f'{{"text": "{text}"}}'.encode(),
                                  headers={"content-type": "application/json"})
            assert r.status_code == 422, (text, r.text)
            error = r.json()["error"]
            assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "invalid_request",
                                                                      "text")
            assert "surrogate" in error["message"]
        # A proper pair in the same escape syntax is one character (U+1F600) and fine, as is blank text a 422.
        ok = await client.post("/v1/synthesize", content='{"text": "\\ud83d\\ude00你好"}'.encode(),
                               headers={"content-type": "application/json"})
        assert ok.status_code == 200, ok.text
        blank = await client.post("/v1/synthesize", json={"text": " \n "})
        assert (blank.status_code, blank.json()["error"]["param"]) == (422, "text")
    assert jobs(engine_log) == ["\U0001f600你好"]


@pytest.mark.parametrize("enabled", [False, True])
async def test_unpaired_surrogates_are_a_422_on_the_openai_route(make_settings: Callable[..., Settings],
                                                                  enabled: bool) -> None:
    async with running_app(make_settings(pool={"workers": 1}, cache={"enabled": enabled})) as (_, client):
        r = await client.post("/v1/audio/speech", content=b'{"model": "tts-1", "voice": "alpha", '
                                                          b'"input": "\\ud800\xe4\xbd\xa0"}',
                              headers={"content-type": "application/json"})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["param"] == "input"
        assert "surrogate" in r.json()["error"]["message"]
        blank = await client.post("/v1/audio/speech", json={"model": "tts-1", "voice": "alpha", "input": "  "})
        assert (blank.status_code, blank.json()["error"]["param"]) == (422, "input")


async def test_identical_concurrent_requests_coalesce(make_settings: Callable[..., Settings],
                                                      engine_log: Path) -> None:
    async with running_app(make_settings(pool={"workers": 2}, cache={"enabled": True})) as (_, client):
        body = {"text": "[sleep=0.5] 同一句话。", "format": "wav"}
        responses = await asyncio.gather(*(client.post("/v1/synthesize", json=body) for _ in range(6)))
        assert [r.status_code for r in responses] == [200] * 6
        assert sorted(r.headers["x-cache"] for r in responses) == ["hit"] * 5 + ["miss"]
        assert len({r.content for r in responses}) == 1
        assert jobs(engine_log) == ["[sleep=0.5] 同一句话。"]


async def test_no_cache_no_files(make_settings: Callable[..., Settings], tmp_path: Path, engine_log: Path) -> None:
    disk = tmp_path / "audio-cache"
    async with running_app(make_settings(pool={"workers": 1}, cache={"enabled": False, "disk_dir": disk})) as (
            _, client):
        for _ in range(2):
            r = await client.post("/v1/synthesize", json={"text": "你好"})
            assert r.headers["x-cache"] == "miss"
    assert not disk.exists()
    assert len(jobs(engine_log)) == 2


async def test_disk_cache_survives_restart(make_settings: Callable[..., Settings], tmp_path: Path,
                                           engine_log: Path) -> None:
    disk = tmp_path / "audio-cache"
    settings = make_settings(pool={"workers": 1}, cache={"enabled": True, "disk_dir": disk})
    async with running_app(settings) as (_, client):
        first = await client.post("/v1/synthesize", json={"text": "你好", "format": "mp3"})
    assert len(list((disk / DISK_SUBDIR).glob("*.audio"))) == 1
    assert [p.name for p in disk.iterdir()] == [DISK_SUBDIR]
    async with running_app(settings) as (_, client):
        again = await client.post("/v1/synthesize", json={"text": "你好", "format": "mp3"})
    assert (again.headers["x-cache"], again.content) == ("hit", first.content)
    assert again.headers["content-type"] == "audio/mpeg"
    assert len(jobs(engine_log)) == 1


async def test_disk_byte_cap_evicts_least_recently_used(tmp_path: Path) -> None:
    disk = tmp_path / "audio-cache"
    cache = AudioCache(_cache_settings(tmp_path, max_bytes=0, disk_dir=disk, disk_max_bytes=3500))
    await cache.start()
    disk = disk / DISK_SUBDIR
    calls, produce = _counting(lambda i: _entry(1000, i))
    keys = [cache.key(text=f"text {i}", voice="alpha", emotion="neutral", speed=1.0, fmt="wav", sample_rate=16000)
            for i in range(5)]
    for i in range(3):
        await cache.get_or_create(keys[i], produce(i))
    assert (await cache.get_or_create(keys[0], produce(0)))[1]  # touch 0: now 1 is the oldest
    await cache.get_or_create(keys[3], produce(3))
    files = list(disk.glob("*.audio"))
    assert len(files) == 3
    assert sum(f.stat().st_size for f in files) <= 3500
    assert cache.disk_bytes == sum(f.stat().st_size for f in files)
    assert (await cache.get_or_create(keys[1], produce(1)))[1] is False  # evicted
    assert calls == [0, 1, 2, 3, 1]

    # A restart rebuilds the index from the directory, deletes writes cut short by a crash and enforces a
    # smaller cap.
    interrupted = disk / f".tmp-{uuid.uuid4().hex}"
    interrupted.write_bytes(b"x" * 100)
    smaller = AudioCache(_cache_settings(tmp_path, max_bytes=0, disk_dir=disk.parent, disk_max_bytes=2500))
    await smaller.start()
    assert not interrupted.exists()
    assert sum(f.stat().st_size for f in disk.glob("*.audio")) <= 2500
    item, hit = await smaller.get_or_create(keys[1], produce(9))
    assert hit
    assert item == _entry(1000, 1)
    # An entry larger than the whole cap is served but never stored.
    huge_key = cache.key(text="huge", voice="alpha", emotion="neutral", speed=1.0, fmt="wav", sample_rate=16000)
    _, huge = _counting(lambda i: _entry(10_000, i))
    await smaller.get_or_create(huge_key, huge(0))
    assert sum(f.stat().st_size for f in disk.glob("*.audio")) <= 2500


async def test_memory_byte_cap(tmp_path: Path) -> None:
    cache = AudioCache(_cache_settings(tmp_path, max_bytes=2500))
    calls, produce = _counting(lambda i: _entry(1000, i))
    keys = [cache.key(text=str(i), voice="v", emotion="e", speed=1.0, fmt="pcm", sample_rate=16000)
            for i in range(3)]
    for i in range(3):
        await cache.get_or_create(keys[i], produce(i))
    assert cache.memory_bytes == 2000
    assert (await cache.get_or_create(keys[2], produce(2)))[1]
    assert not (await cache.get_or_create(keys[0], produce(0)))[1]
    assert calls == [0, 1, 2, 0]


async def test_coalesced_waiters_and_cancellation(tmp_path: Path) -> None:
    cache = AudioCache(_cache_settings(tmp_path))
    key = cache.key(text="x", voice="v", emotion="e", speed=1.0, fmt="pcm", sample_rate=16000)
    started = asyncio.Event()
    release = asyncio.Event()
    cancelled = asyncio.Event()
    runs = 0

    async def produce() -> CachedAudio:
        nonlocal runs
        runs += 1
        started.set()
        try:
            await release.wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return _entry(10)

    first = asyncio.create_task(cache.get_or_create(key, produce))
    await started.wait()
    second = asyncio.create_task(cache.get_or_create(key, produce))
    await asyncio.sleep(0)
    # The first client leaves: the synthesis goes on for the second.
    first.cancel()
    await asyncio.sleep(0.01)
    assert not cancelled.is_set()
    release.set()
    item, hit = await second
    assert (item, hit, runs) == (_entry(10), True, 1)

    # When every waiter leaves, the synthesis is stopped and nothing is stored.
    other = cache.key(text="y", voice="v", emotion="e", speed=1.0, fmt="pcm", sample_rate=16000)
    release.clear()
    started.clear()
    lone = asyncio.create_task(cache.get_or_create(other, produce))
    await started.wait()
    lone.cancel()
    await asyncio.wait_for(cancelled.wait(), 1)
    assert await cache.lookup(other) is None

    # A failure reaches every waiter and is not cached.
    async def fail() -> CachedAudio:
        await asyncio.sleep(0.01)
        raise RuntimeError("synthesis failed")

    third = cache.key(text="z", voice="v", emotion="e", speed=1.0, fmt="pcm", sample_rate=16000)
    results = await asyncio.gather(cache.get_or_create(third, fail), cache.get_or_create(third, fail),
                                   return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert await cache.lookup(third) is None


async def test_disk_cache_deletes_only_its_own_files(tmp_path: Path) -> None:
    disk = tmp_path / "shared-dir"
    disk.mkdir()
    digest_like = "0" * 64 + ".audio"  # an entry name, but not in the cache's own folder
    foreign = {name: f"not yours: {name}".encode() for name in ("foo.audio", ".tmp-x", digest_like, "notes.txt")}
    for name, data in foreign.items():
        (disk / name).write_bytes(data)
    settings = _cache_settings(tmp_path, max_bytes=0, disk_dir=disk, disk_max_bytes=2500)
    cache = AudioCache(settings)
    await cache.start()
    own = disk / DISK_SUBDIR
    # Look-alikes of the cache's names inside its own folder, planted after it was created, are not its either.
    planted = {name: f"not yours: {name}".encode() for name in ("foo.audio", ".tmp-x", ".tmp-" + "g" * 32,
                                                                  "A" * 64 + ".audio", "0" * 63 + ".audio")}
    for name, data in planted.items():
        (own / name).write_bytes(data)
    calls, produce = _counting(lambda i: _entry(1000, i))
    for i in range(6):  # well past the cap: eviction runs
        key = cache.key(text=f"t{i}", voice="v", emotion="e", speed=1.0, fmt="wav", sample_rate=16000)
        await cache.get_or_create(key, produce(i))
    assert calls == list(range(6))
    assert 0 < len([p for p in own.glob("*.audio") if p.name not in planted]) <= 2
    # A restart with a cap of nothing evicts everything the cache owns, and nothing else.
    await AudioCache(_cache_settings(tmp_path, max_bytes=0, disk_dir=disk, disk_max_bytes=0)).start()
    assert {p.name: p.read_bytes() for p in disk.iterdir() if p.is_file()} == foreign
    assert {p.name: p.read_bytes() for p in own.iterdir() if p.name in planted} == planted
    assert not [p for p in own.glob("*.audio") if p.name not in planted]


async def test_disk_cache_refuses_a_folder_it_did_not_create(tmp_path: Path) -> None:
    disk = tmp_path / "shared-dir"
    (disk / DISK_SUBDIR).mkdir(parents=True)
    victim = disk / DISK_SUBDIR / ("1" * 64 + ".audio")
    victim.write_bytes(b"someone else's")
    cache = AudioCache(_cache_settings(tmp_path, max_bytes=0, disk_dir=disk, disk_max_bytes=0))
    with pytest.raises(CacheDirError, match=DISK_SUBDIR):
        await cache.start()
    assert victim.read_bytes() == b"someone else's"


def test_revision_follows_model_files(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    weights = model / "weights.pth"
    weights.write_bytes(b"a" * 10)
    settings = load_settings(None, model={"model_dir": model, "download_dir": tmp_path / "c"})
    before = model_revision(settings)
    assert model_revision(settings) == before
    weights.write_bytes(b"b" * 11)
    os.utime(weights, ns=(1, 1))
    assert model_revision(settings) != before
    assert model_revision(load_settings(None, model={"model_dir": model, "download_dir": tmp_path / "c"},
                                        cache={"revision": "2"})) != model_revision(settings)


def test_key_digest_distinguishes_every_field(tmp_path: Path) -> None:
    cache = AudioCache(_cache_settings(tmp_path))
    base: dict[str, Any] = dict(text="a", voice="v", emotion="e", speed=1.0, fmt="wav", sample_rate=16000)
    changes = [("text", "b"), ("text", "a "), ("text", "a\n"), ("text", "\u00e9"), ("text", "e\u0301"),
               ("text", "\ud800"), ("text", "\udfff"), ("voice", "w"), ("emotion", "f"), ("speed", 1.0000001),
               ("speed", 1.5), ("fmt", "pcm"), ("sample_rate", 8000), ("seed", 0), ("seed", 1)]
    digests = [cache.key(**base).digest()] + [cache.key(**{**base, f: v}).digest() for f, v in changes]
    assert len(set(digests)) == len(digests)
    assert AudioCache(_cache_settings(tmp_path, revision="2")).key(**base).digest() not in digests
    # What a restart relies on: another instance derives the same digest for an equal request (an int speed too).
    assert AudioCache(_cache_settings(tmp_path)).key(**{**base, "speed": 1}).digest() == digests[0]
