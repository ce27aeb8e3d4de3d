"""The user lexicon over HTTP: validation, persistence, propagation to every worker, the cache key, the preview."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import running_app
from tests.tinymodel import build_tiny_model_dir
from tts_server.config import ConfigError, Settings
from tts_server.inference.lexicon import Lexicon, read_file, write_file
from tts_server.inference.pool import WorkerState

REPO = Path(__file__).resolve().parents[1]
SYNTH = {"text": "重庆欢迎你。", "format": "wav"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model", voices=("zhitian_emo",))


def _words(preview: dict[str, Any]) -> dict[str, tuple[list[str], str]]:
    return {w["text"]: (w["syllables"], w["source"]) for s in preview["sentences"] for w in s["words"]}


async def _preview(client: httpx.AsyncClient, text: str) -> dict[str, Any]:
    r = await client.post("/v1/frontend/preview", json={"text": text})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def _wait_replaced(app: Any, old_pid: int | None) -> None:
    pool = app.state.tts.pool
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        workers = pool.stats().workers
        if all(w.pid not in (None, old_pid) and w.state is WorkerState.READY for w in workers):
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the worker was not replaced")


@pytest.mark.slow
async def test_lexicon_reaches_the_frontend_survives_recycling_and_restart(
        make_settings: Callable[..., Settings], model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "state" / "lexicon.json"
    settings = make_settings(engine={"name": "sambert"}, model={"model_dir": str(model_dir)},
                             pool={"workers": 2, "startup_timeout_s": 120.0}, lexicon={"path": str(path)})
    async with running_app(settings) as (app, client):
        before = await _preview(client, "重庆欢迎你。")
        assert _words(before)["重庆"] == (["chong2", "qing4"], "frontend")
        assert before["lexicon_version"] == 0
        assert (await client.get("/v1/lexicon")).json() == {"version": 0, "entries": {}}

        r = await client.put("/v1/lexicon", json={"entries": {"重庆": "zhong4 qing4", "欢迎你": "huan1 ying2 ni3"}})
        assert r.status_code == 200, r.text
        assert r.json() == {"version": 1, "entries": {"重庆": "zhong4 qing4", "欢迎你": "huan1 ying2 ni3"}}
        changed_at = time.monotonic()
        # The job carries the version: whichever worker takes a preview re-reads the file first if it must.
        previews = await asyncio.gather(*(client.post("/v1/frontend/preview", json={"text": "重庆欢迎你。"})
                                          for _ in range(4)))
        delay = time.monotonic() - changed_at
        print(f"lexicon change -> in effect in 4 concurrent previews: {delay * 1000:.0f} ms")
        assert delay < 1.0
        for p in previews:
            words = _words(p.json())
            assert words["重庆"] == (["zhong4", "qing4"], "lexicon")
            # A listed word is cut whole and read as given: no third-tone sandhi inside it.
            assert words["欢迎你"] == (["huan1", "ying2", "ni3"], "lexicon")
            assert p.json()["lexicon_version"] == 1
        assert read_file(path) == Lexicon(1, {"重庆": "zhong4 qing4", "欢迎你": "huan1 ying2 ni3"})

        # A recycled worker (kill -9) reads the lexicon again.
        pids = [w.pid for w in app.state.tts.pool.stats().workers]
        for pid in pids:
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
        for pid in pids:
            await _wait_replaced(app, pid)
        assert _words(await _preview(client, "重庆欢迎你。"))["重庆"] == (["zhong4", "qing4"], "lexicon")

        r = await client.delete("/v1/lexicon/欢迎你")
        assert r.json() == {"version": 2, "entries": {"重庆": "zhong4 qing4"}}
        assert _words(await _preview(client, "重庆欢迎你。")).get("欢迎你", ([], ""))[1] != "lexicon"
        assert (await client.delete("/v1/lexicon/欢迎你")).status_code == 404

    # A new server on the same file keeps the lexicon.
    async with running_app(settings) as (_, client):
        assert (await client.get("/v1/lexicon")).json() == {"version": 2, "entries": {"重庆": "zhong4 qing4"}}
        assert _words(await _preview(client, "重庆。"))["重庆"] == (["zhong4", "qing4"], "lexicon")


async def test_a_lexicon_change_is_never_answered_from_the_cache(make_settings: Callable[..., Settings],
                                                                  tmp_path: Path) -> None:
    settings = make_settings(cache={"enabled": True}, lexicon={"path": str(tmp_path / "lexicon.json")})
    async with running_app(settings) as (_, client):
        assert (await client.post("/v1/synthesize", json=SYNTH)).headers["X-Cache"] == "miss"
        assert (await client.post("/v1/synthesize", json=SYNTH)).headers["X-Cache"] == "hit"
        assert (await client.put("/v1/lexicon", json={"entries": {"重庆": "zhong4 qing4"}})).status_code == 200
        assert (await client.post("/v1/synthesize", json=SYNTH)).headers["X-Cache"] == "miss"
        assert (await client.post("/v1/synthesize", json=SYNTH)).headers["X-Cache"] == "hit"
        # Streams are served from the cache too: the same key applies.
        r = await client.post("/v1/synthesize", json={**SYNTH, "stream": True})
        assert r.headers["X-Cache"] == "hit"
        # The same entries again: a new version, the same readings, so the cached audio is still right.
        assert (await client.put("/v1/lexicon", json={"entries": {"重庆": "zhong4 qing4"}})).json()["version"] == 2
        assert (await client.post("/v1/synthesize", json=SYNTH)).headers["X-Cache"] == "hit"
        assert (await client.delete("/v1/lexicon/重庆")).status_code == 200
        assert (await client.post("/v1/synthesize", json=SYNTH)).headers["X-Cache"] == "hit"  # as before any entry


@pytest.mark.parametrize(("entries", "param", "needle"), [
    ({"重庆": "zhong4 qxng4"}, "entries.重庆", "'qxng4'"),
    ({"重庆": "zhong qing4"}, "entries.重庆", "'zhong'"),  # no tone digit
    ({"重庆": "zhong4 qing7"}, "entries.重庆", "'qing7'"),
    ({"重庆": "zhong4"}, "entries.重庆", "2 syllables"),
    ({"abc": "a1 b2 c3"}, "entries.abc", "Chinese characters"),
    ({"": "a1"}, "entries.", "empty"),
    ({"中" * 5: "zhong1 " * 5}, "entries." + "中" * 5, "at most 4"),
])
async def test_bad_entries_are_a_422_naming_them(make_settings: Callable[..., Settings], tmp_path: Path,
                                                 entries: dict[str, str], param: str, needle: str) -> None:
    path = tmp_path / "lexicon.json"
    settings = make_settings(pool={"workers": 1}, lexicon={"path": str(path), "max_word_chars": 4})
    async with running_app(settings, wait_ready=False) as (_, client):
        r = await client.put("/v1/lexicon", json={"entries": {"好": "hao3", **entries}})
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["code"] == "lexicon_invalid"
        assert error["param"] == param
        assert needle in error["message"]
        # Nothing of a refused change is applied, not even its good entries.
        assert (await client.get("/v1/lexicon")).json() == {"version": 0, "entries": {}}
    assert not path.exists()


async def test_limits_bodies_and_a_disabled_lexicon(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings(pool={"workers": 1}, lexicon={"path": str(tmp_path / "l.json"), "max_entries": 2})
    async with running_app(settings, wait_ready=False) as (_, client):
        r = await client.put("/v1/lexicon", json={"entries": {"一": "yi1", "二": "er4", "三": "san1"}})
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "lexicon_full"
        assert "limit is 2" in r.json()["error"]["message"]
        assert (await client.put("/v1/lexicon", json={"entries": {"一": "yi1", "二": "er4"}})).status_code == 200
        assert (await client.put("/v1/lexicon", json={"entries": {"三": "san1"}})).status_code == 422
        # Replacing keeps the count bounded by what is sent, not by what was there.
        r = await client.put("/v1/lexicon", json={"entries": {"三": "san1"}, "replace": True})
        assert r.json() == {"version": 2, "entries": {"三": "san1"}}
        r = await client.put("/v1/lexicon", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 422
        assert "not valid JSON" in r.json()["error"]["message"]
        r = await client.put("/v1/lexicon", json={"entries": {"三": 3}})
        assert r.status_code == 422
        assert r.json()["error"]["param"] == "entries.三"
        r = await client.put("/v1/lexicon", json={"entries": {}, "extra": 1})
        assert r.status_code == 422
    async with running_app(make_settings(pool={"workers": 1}), wait_ready=False) as (_, client):
        assert (await client.get("/v1/lexicon")).json() == {"version": 0, "entries": {}}
        r = await client.put("/v1/lexicon", json={"entries": {"三": "san1"}})
        assert r.status_code == 409
        assert r.json()["error"]["code"] == "lexicon_disabled"


async def test_preview_needs_an_engine_with_a_frontend(make_settings: Callable[..., Settings]) -> None:
    async with running_app(make_settings(pool={"workers": 1})) as (_, client):
        r = await client.post("/v1/frontend/preview", json={"text": "你好"})
        assert r.status_code == 422
        assert "no text frontend" in r.json()["error"]["message"]


async def test_lexicon_routes_need_the_api_key(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings(pool={"workers": 1}, auth={"enabled": True, "keys": ["k" * 24]},
                             lexicon={"path": str(tmp_path / "l.json")})
    ok = {"Authorization": "Bearer " + "k" * 24}
    async with running_app(settings, wait_ready=False) as (_, client):
        assert (await client.get("/v1/lexicon")).status_code == 401
        assert (await client.put("/v1/lexicon", json={"entries": {"三": "san1"}})).status_code == 401
        assert (await client.delete("/v1/lexicon/三")).status_code == 401
        assert (await client.post("/v1/frontend/preview", json={"text": "三"})).status_code == 401
        assert (await client.put("/v1/lexicon", json={"entries": {"三": "san1"}}, headers=ok)).status_code == 200
        assert (await client.get("/v1/lexicon", headers=ok)).json()["entries"] == {"三": "san1"}


def test_write_is_atomic_and_a_corrupt_file_refuses_start_up(make_settings: Callable[..., Settings],
                                                              tmp_path: Path) -> None:
    from tts_server.api.app import create_app

    path = tmp_path / "lexicon.json"
    write_file(path, Lexicon(3, {"重庆": "zhong4 qing4"}))
    assert read_file(path) == Lexicon(3, {"重庆": "zhong4 qing4"})
    assert [p.name for p in tmp_path.iterdir()] == ["lexicon.json"]  # no temporary file left behind
    for corrupt in (b'{"version": 3, "entries": {"\xe9\x87\x8d', b'[]', b'{"version": 1, "entries": {"x": "y1"}}'):
        path.write_bytes(corrupt)
        with pytest.raises(ConfigError, match=r"lexicon\.json"):
            create_app(make_settings(lexicon={"path": str(path)}))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]), TTS_LEXICON__PATH=str(path),
               TTS_ENGINE__NAME="tests.engines:tone_engine")
    proc = subprocess.run([sys.executable, "-m", "tts_server.cli", "serve", "--host", "127.0.0.1", "--port", "0"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "lexicon" in lines[0]
    assert "corrupt" in lines[0]


def test_frontend_hook_longest_word_wins_and_unpronounceable_entries_are_skipped() -> None:
    from tts_server.inference.frontend import Frontend
    from tts_server.inference.frontend.symbols import DEFAULT_PHONES

    # A voice whose phone set lacks "iong": an entry using it cannot be read and is skipped (画 keeps pypinyin's).
    frontend = Frontend(DEFAULT_PHONES - {"iong_c"}, warm_up=False)
    frontend.set_lexicon({"长江": "chang2 jiang1", "长江大桥": "zhang3 jiang1 da4 qiao2", "画": "jiong3"})
    assert frontend.pinyin("南京市长江大桥画。") == ["nan2 jing1 shi4 #1 zhang3 jiang1 da4 qiao2 #1 hua4 #4"]
    frontend.set_lexicon({})
    assert frontend.pinyin("长江大桥") == ["chang2 jiang1 #1 da4 qiao2 #4"]
