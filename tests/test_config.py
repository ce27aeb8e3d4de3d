"""Settings: TOML file, environment overrides, unknown keys named, frozen."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest

from tts_server.config import ConfigError, Settings, load_settings

REPO = Path(__file__).resolve().parents[1]


def test_defaults() -> None:
    s = Settings()
    assert s.limits.max_text_chars == 500
    assert s.pool.workers >= 1
    assert s.engine.name == "sambert"
    assert s.model.model_id == "iic/speech_sambert-hifigan_tts_zh-cn_16k"


def test_example_config_loads() -> None:
    s = load_settings(REPO / "config.example.toml")
    assert s.server.port == 8000
    assert s.model.download_dir.is_absolute()  # ~ expanded


def test_env_overrides_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[pool]\nworkers = 3\nqueue_size = 7\n[model]\ndownload_dir = '/tmp/x'\n")
    monkeypatch.setenv("TTS_POOL__WORKERS", "5")
    s = load_settings(cfg)
    assert s.pool.workers == 5
    assert s.pool.queue_size == 7
    assert s.model.download_dir == Path("/tmp/x")


def test_explicit_overrides_win(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTS_POOL__WORKERS", "5")
    assert load_settings(None, pool={"workers": 2}).pool.workers == 2


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("[pool]\nworkerz = 3\n", "unknown key 'pool.workerz'"),
        ("[poool]\nworkers = 3\n", "unknown key 'poool'"),
        ("[pool]\nworkers = 0\n", "'pool.workers'"),
        ("[limits]\nmax_text_chars = 'many'\n", "'limits.max_text_chars'"),
        ("[pool\n", "not valid TOML"),
        # Renamed to model.download_dir, so it is not mistaken for the audio cache (cache.disk_dir).
        ("[model]\ncache_dir = '/tmp/x'\n", "unknown key 'model.cache_dir'"),
    ],
)
def test_bad_files_name_the_key(tmp_path: Path, content: str, needle: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(content)
    with pytest.raises(ConfigError, match=None) as info:
        load_settings(cfg)
    assert needle in str(info.value)


def test_unknown_env_key_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTS_POOL__WORKERZ", "3")
    with pytest.raises(ConfigError, match=r"pool\.workerz"):
        load_settings(None)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "nope.toml")


def test_frozen() -> None:
    s = Settings()
    with pytest.raises(pydantic.ValidationError):
        s.pool.workers = 9  # type: ignore[misc]
