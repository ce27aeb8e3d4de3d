"""Personal voices added in the settings (``[[voices.extra]]``): loaded beside the model directory's voices, paths
relative to the config file, and a bad entry stops start-up with one line that names it."""

from __future__ import annotations

import asyncio
import hashlib
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import running_app
from tests.tinymodel import build_tiny_model_dir, build_tiny_personal_voice
from tts_server.config import ConfigError, Settings, load_settings
from tts_server.inference.engine import EngineLoadError
from tts_server.inference.sambert.engine import SambertEngine, load_sambert_engine


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("personal")
    build_tiny_model_dir(root / "model")
    build_tiny_personal_voice(root / "finetune")
    return root


@pytest.fixture
def layout(built: Path, tmp_path: Path) -> Path:
    """A copy (tests break files in it): ``model/`` (the base model), ``finetune/`` (the personal voice)."""
    return Path(shutil.copytree(built, tmp_path / "layout"))


def _toml_value(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value).lower()


def _write_config(path: Path, entries: list[dict[str, Any]]) -> Path:
    lines = ['[model]', 'model_dir = "model"', 'torch_threads = 1', '']
    for entry in entries:
        lines.append("[[voices.extra]]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in entry.items()]
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _entry(**changes: Any) -> dict[str, Any]:
    entry = {"name": "my_voice", "am_config": "finetune/am/config.yaml", "am_checkpoint": "finetune/am/ckpt",
             "voc_config": "finetune/voc/config.yaml", "voc_checkpoint": "finetune/voc/ckpt/checkpoint_0.pth",
             "se": "finetune/se/se.npy", "audio_config": "finetune/audio_config.yaml"}
    entry.update(changes)
    return {k: v for k, v in entry.items() if v is not None}


def _engine(layout: Path, *entries: dict[str, Any]) -> SambertEngine:
    return load_sambert_engine(load_settings(_write_config(layout / "tts.toml", list(entries or [_entry()]))))


def test_extra_voice_is_served_beside_the_model_directory(layout: Path) -> None:
    settings = load_settings(_write_config(layout / "tts.toml", [_entry()]))
    (extra,) = settings.voices.extra
    # Relative to the config file, not to the working directory.
    assert extra.am_config == layout / "finetune" / "am" / "config.yaml"
    assert extra.mvn is None
    engine = load_sambert_engine(settings)
    voices = engine.voices()
    assert list(voices) == ["zhitian_emo", "my_voice"]  # the model directory's voices first: its first is default
    mine = voices["my_voice"]
    assert (mine.kind, mine.stochastic, mine.sample_rate) == ("personal", True, 16000)
    assert (voices["zhitian_emo"].kind, voices["zhitian_emo"].stochastic) == ("built-in", False)
    a = engine.synthesize("你好。", "my_voice", "neutral", 1.0, seed=5)
    b = engine.synthesize("你好。", "my_voice", "neutral", 1.0, seed=5)
    c = engine.synthesize("你好。", "my_voice", "neutral", 1.0, seed=6)
    assert len(a.audio) > 0
    np.testing.assert_array_equal(a.audio, b.audio)
    assert not np.array_equal(a.audio, c.audio)


def test_mean_std_f0_norm_reads_mvn(layout: Path) -> None:
    voice = layout / "finetune"
    for path in (voice / "am" / "config.yaml", voice / "voc" / "config.yaml"):
        path.write_text(path.read_text(encoding="utf-8").replace("nsf_norm_type: global",
                                                                 "nsf_norm_type: mean_std"), encoding="utf-8")
    with pytest.raises(EngineLoadError, match=r"mvn\.npy, which was not given"):
        _engine(layout)
    engine = _engine(layout, _entry(mvn="finetune/data/mvn.npy"))
    norm = engine._voices["my_voice"].f0_norm
    assert norm is not None
    assert (norm.norm_type, norm.mean, norm.std) == ("mean_std", 200.0, 50.0)


def _break_se_shape(layout: Path) -> None:
    np.save(layout / "finetune" / "se" / "se.npy", np.zeros((1, 3), dtype=np.float32))


def _break_am_checkpoint(layout: Path) -> None:
    (layout / "finetune" / "am" / "ckpt" / "checkpoint_0.pth").write_bytes(b"not a checkpoint")


@pytest.mark.parametrize(("entry", "breakage", "needles"), [
    (_entry(am_checkpoint="finetune/am/ckpt/checkpoint_9.pth"), None, ["am_checkpoint", "does not exist"]),
    (_entry(voc_config="finetune/voc/nope.yaml"), None, ["voc_config", "nope.yaml"]),
    (_entry(se=None), None, ["no se.npy was given", "(1, 4)"]),
    (_entry(se="finetune/se/other.npy"), None, ["se ", "other.npy", "does not exist"]),
    (_entry(), _break_se_shape, ["se.npy", "(1, 4)", "(1, 3)"]),
    (_entry(), _break_am_checkpoint, ["checkpoint_0.pth"]),
    (_entry(name="zhitian_emo"), None, ["already used by a voice of the model directory"]),
    (_entry(dict_dir="finetune/dict"), None, ["dict_dir", "does not exist"]),
    (_entry(audio_config="model/voices/zhitian_emo/audio_config.yaml", sample_rate=24000), None,
     ["sampling_rate 16000 != model 24000"]),
], ids=["am_checkpoint", "voc_config", "no_se", "se_missing", "se_shape", "bad_checkpoint", "name_clash",
        "dict_dir", "rate_mismatch"])
def test_a_bad_entry_is_one_line_naming_it(layout: Path, entry: dict[str, Any],
                                           breakage: Callable[[Path], None] | None, needles: list[str]) -> None:
    entries = [entry]
    if breakage is not None:
        breakage(layout)
    else:
        entries.insert(0, _entry(name="fine"))  # a good entry before it loads; the bad one is named
    with pytest.raises(EngineLoadError) as info:
        _engine(layout, *entries)
    message = str(info.value)
    assert message.startswith(f"voices.extra entry {entry['name']!r}: "), message
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


@pytest.mark.parametrize(("entries", "needle"), [
    ([_entry(colour="blue")], "unknown key 'voices.extra.0.colour'"),
    ([_entry(am_config=None)], "'voices.extra.0.am_config': Field required"),
    ([_entry(), _entry()], "two entries are named 'my_voice'"),
    ([_entry(name="my voice")], "'voices.extra.0.name'"),
])
def test_settings_refuse_malformed_entries(tmp_path: Path, entries: list[dict[str, Any]], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(_write_config(tmp_path / "tts.toml", entries))
    assert needle in str(info.value)


def test_extra_voices_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTS_VOICES__EXTRA", '[{"name": "v", "am_config": "/a.yaml", "am_checkpoint": "/a", '
                                            '"voc_config": "/v.yaml", "voc_checkpoint": "/v"}]')
    (extra,) = load_settings(None).voices.extra
    assert (extra.name, extra.am_config, extra.se) == ("v", Path("/a.yaml"), None)


async def test_a_bad_entry_stops_start_up_with_its_reason(layout: Path,
                                                          make_settings: Callable[..., Settings]) -> None:
    entry = {k: str(layout / v) if k != "name" else v for k, v in _entry(se=None).items()}
    settings = make_settings(engine={"name": "sambert"}, pool={"workers": 1, "restart_backoff_s": 0.1},
                             model={"model_dir": str(layout / "model")}, voices={"extra": [entry]})
    async with running_app(settings, wait_ready=False) as (app, _):
        pool = app.state.tts.pool
        deadline = time.monotonic() + 60
        while pool.startup_error is None:
            assert time.monotonic() < deadline, "start-up never failed"
            await asyncio.sleep(0.05)
    assert "EngineLoadError: voices.extra entry 'my_voice': the acoustic model takes a speaker embedding (SE) but " \
           "no se.npy was given" in pool.startup_error


# --- served like any voice: HTTP, the OpenAI route, the WebUI ------------------------------------------------------


def _served_settings(layout: Path, make_settings: Callable[..., Settings], **sections: Any) -> Settings:
    entry = {k: str(layout / v) if k != "name" else v for k, v in _entry().items()}
    return make_settings(engine={"name": "sambert"}, pool={"workers": 1},
                         model={"model_dir": str(layout / "model")}, voices={"extra": [entry]}, **sections)


async def test_a_personal_voice_is_served_over_http_and_the_openai_route(
        layout: Path, make_settings: Callable[..., Settings]) -> None:
    settings = _served_settings(layout, make_settings, cache={"enabled": True})
    async with running_app(settings) as (_, client):
        listed = (await client.get("/v1/voices")).json()
        assert listed["default_voice"] == "zhitian_emo"
        mine = {v["name"]: v for v in listed["voices"]}["my_voice"]
        assert (mine["kind"], mine["stochastic"], mine["sample_rate"]) == ("personal", True, 16000)
        assert "neutral" in mine["emotions"]

        body = {"text": "你好，世界。", "voice": "my_voice", "format": "pcm", "seed": 5}
        # A seeded stream (not stored) equals the seeded whole response: same draws, in the same order.
        streamed = await client.post("/v1/synthesize", json={**body, "stream": True})
        whole = await client.post("/v1/synthesize", json=body)
        assert (streamed.status_code, whole.status_code) == (200, 200)
        assert (streamed.headers["x-cache"], whole.headers["x-cache"]) == ("miss", "miss")
        assert len(whole.content) > 1000
        assert streamed.content == whole.content
        again = await client.post("/v1/synthesize", json=body)
        assert (again.headers["x-cache"], again.content) == ("hit", whole.content)
        # Without a seed each request draws afresh: different audio, never from the cache.
        unseeded = [await client.post("/v1/synthesize", json={**body, "seed": None}) for _ in range(2)]
        assert [r.headers["x-cache"] for r in unseeded] == ["miss", "miss"]
        assert unseeded[0].content != unseeded[1].content
        assert len(unseeded[0].content) == len(whole.content)  # the durations are deterministic

        speech = {"model": "tts-1", "input": "你好，世界。", "voice": "my_voice", "response_format": "pcm"}
        r = await client.post("/v1/audio/speech", json={**speech, "seed": 5})
        assert r.status_code == 200
        assert (r.headers["x-cache"], r.content) == ("hit", whole.content)
        r = await client.post("/v1/audio/speech", json={**speech, "seed": 6, "response_format": "wav"})
        assert r.status_code == 200
        assert r.headers["x-cache"] == "miss"
        assert r.content[:4] == b"RIFF"
        r = await client.post("/v1/audio/speech", json=speech)
        assert (r.status_code, r.headers["x-cache"]) == (200, "miss")


@pytest.fixture
def page_of(make_settings: Callable[..., Settings]) -> Iterator[Callable[[Settings], Any]]:
    """Opens the WebUI of a live server with the given settings in headless chromium."""
    from tests.test_webui import CHROMIUM, CHROMIUM_ARGS, LiveServer, _require_browser, _webui_app

    _require_browser()
    from playwright.sync_api import sync_playwright

    servers: list[LiveServer] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)

        def open_(settings: Settings) -> Any:
            server = LiveServer(_webui_app(settings))
            servers.append(server)
            server.start()
            page = browser.new_context(viewport={"width": 900, "height": 1000}, locale="zh-CN").new_page()
            page.set_default_timeout(30_000)
            page.goto(server.url + "/")
            page.wait_for_selector("body[data-ready='true']")
            return page

        try:
            yield open_
        finally:
            browser.close()
            for server in servers:
                server.stop()


def test_a_personal_voice_in_the_webui(layout: Path, make_settings: Callable[..., Settings],
                                       page_of: Callable[[Settings], Any]) -> None:
    page = page_of(_served_settings(layout, make_settings, server={"drain_timeout_s": 5.0}))
    assert page.locator("#voice option").all_inner_texts() == ["zhitian_emo", "my_voice · 个人 personal"]
    assert page.locator("#voice").input_value() == "zhitian_emo"
    page.select_option("#voice", "my_voice")
    page.fill("#text", "你好。")
    page.click("#synthesize")
    page.wait_for_function("""() => {
        const a = document.getElementById('player');
        return a.src.startsWith('blob:') && a.readyState >= 1 && a.duration > 0;
    }""")
    assert page.is_hidden("#error")
    assert re.fullmatch(r"tts-my_voice-neutral-\d{8}-\d{6}\.wav", page.get_attribute("#download", "download"))


def test_webui_seed_for_a_stochastic_voice(layout: Path, make_settings: Callable[..., Settings],
                                           page_of: Callable[[Settings], Any]) -> None:
    page = page_of(_served_settings(layout, make_settings, server={"drain_timeout_s": 5.0}))
    page.click("#advanced summary")
    # The built-in voice is deterministic: the seed has no say there.
    assert page.is_disabled("#seed")
    page.select_option("#voice", "my_voice")
    assert page.is_enabled("#seed")
    page.fill("#text", "你好。")
    page.fill("#seed", "7")
    def synthesize() -> tuple[dict[str, Any], str]:
        """Click, wait for the answer; the request body and a hash of the downloaded audio."""
        with page.expect_request(lambda r: r.url.endswith("/v1/synthesize")) as sent:
            page.click("#synthesize")
        page.wait_for_selector("#synthesize:not([disabled])")
        assert page.is_hidden("#error")
        with page.expect_download() as saved:
            page.click("#download")
        digest = hashlib.sha256(Path(saved.value.path()).read_bytes()).hexdigest()
        return sent.value.post_data_json, digest

    first_body, first = synthesize()
    second_body, second = synthesize()
    assert first_body["seed"] == second_body["seed"] == 7
    # The same seed, the same audio (no cache here: synthesised twice).
    assert first == second
    # Emptied, no seed is sent: the voice draws anew.
    page.fill("#seed", "")
    body, fresh = synthesize()
    assert "seed" not in body
    assert fresh != first
    page.select_option("#voice", "zhitian_emo")
    assert page.is_disabled("#seed")
