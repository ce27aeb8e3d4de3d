"""Operator papercuts: config-relative paths, model load errors in the CLI, and no torch in the API process."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from tests.conftest import PARITY_DIR, REPO, TONE_ENGINE
from tts_server.cli import main
from tts_server.config import Settings, load_settings
from tts_server.metrics import ServerMetrics

# ---------------------------------------------------------------------------------------------- config paths


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory that is not the config file's directory."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def _write_config(directory: Path, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tts.toml"
    path.write_text(body, encoding="utf-8")
    return path


def test_relative_paths_in_file_resolve_against_its_directory(tmp_path: Path, elsewhere: Path) -> None:
    conf_dir = tmp_path / "etc" / "tts"
    cfg = _write_config(conf_dir, (
        '[model]\nmodel_dir = "models/sambert"\ndownload_dir = "../downloads"\n'
        '[auth]\nenabled = true\nkeys_file = "keys.txt"\n'
        '[cache]\ndisk_dir = "audio"\n'
    ))
    s = load_settings(cfg)
    assert s.model.model_dir == conf_dir / "models" / "sambert"
    assert s.model.download_dir == conf_dir / ".." / "downloads"
    assert s.auth.keys_file == conf_dir / "keys.txt"
    assert s.cache.disk_dir == conf_dir / "audio"

    # A config file given by a relative path: still its own directory, made absolute.
    rel = load_settings(Path("..") / "etc" / "tts" / "tts.toml")
    assert rel.model.model_dir is not None
    assert rel.model.model_dir.is_absolute()
    assert rel.model.model_dir.resolve() == (conf_dir / "models" / "sambert").resolve()


def test_absolute_and_home_paths_in_file_are_kept(tmp_path: Path, elsewhere: Path) -> None:
    cfg = _write_config(tmp_path / "conf", '[model]\nmodel_dir = "/srv/model"\ndownload_dir = "~/tts-cache"\n')
    s = load_settings(cfg)
    assert s.model.model_dir == Path("/srv/model")
    assert s.model.download_dir == Path.home() / "tts-cache"


def test_env_and_overrides_stay_relative_to_the_working_directory(tmp_path: Path, elsewhere: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _write_config(tmp_path / "conf", '[model]\nmodel_dir = "from-file"\n[cache]\ndisk_dir = "audio"\n')
    monkeypatch.setenv("TTS_CACHE__DISK_DIR", "env-audio")
    s = load_settings(cfg, model={"model_dir": "from-cli"})
    assert s.model.model_dir == Path("from-cli")
    assert s.cache.disk_dir == Path("env-audio")


def test_example_config_finds_the_parity_model_from_any_directory(elsewhere: Path) -> None:
    # config.example.toml's model_dir is relative to the repository root, where the file lives.
    if not (PARITY_DIR / "model").is_dir():
        pytest.skip(f"{PARITY_DIR / 'model'} is not present")
    s = load_settings(REPO / "config.example.toml")
    assert s.model.model_dir is not None
    assert s.model.model_dir.resolve() == (PARITY_DIR / "model").resolve()
    assert (s.model.model_dir / "voices" / "voices.json").is_file()


def test_relative_keys_file_is_read_from_the_config_directory(tmp_path: Path, elsewhere: Path,
                                                              make_settings: Callable[..., Settings]) -> None:
    from tts_server.api.security import KeyStore

    conf_dir = tmp_path / "conf"
    cfg = _write_config(conf_dir, '[auth]\nenabled = true\nkeys_file = "keys.txt"\n')
    (conf_dir / "keys.txt").write_text("# operators\nsecret-one\n", encoding="utf-8")
    store = KeyStore.from_settings(load_settings(cfg))
    assert len(store) == 1
    assert store.identify("secret-one") is not None


# ---------------------------------------------------------------------------------------------- CLI load errors


@pytest.mark.parametrize("command", [["voices"], ["synth", "你好", "-o", "out.wav"]])
@pytest.mark.parametrize("model_dir", ["/nonexistent/model", "not-a-model"])
def test_cli_reports_model_load_errors_in_one_line(elsewhere: Path, capsys: pytest.CaptureFixture[str],
                                                   command: list[str], model_dir: str) -> None:
    (elsewhere / "not-a-model").mkdir()
    code = main([*command, "--model-dir", model_dir])
    captured = capsys.readouterr()
    assert code == 3
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: cannot load the model: ")
    assert model_dir in lines[0]
    assert "Traceback" not in captured.err
    assert captured.out == ""
    assert not (elsewhere / "out.wav").exists()


def test_cli_reports_a_bad_engine_name_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _write_config(tmp_path, '[engine]\nname = "tests.no_such_module:factory"\n')
    assert main(["voices", "--config", str(cfg)]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "tests.no_such_module:factory" in err


def test_cli_load_error_exits_nonzero_without_traceback_as_a_process(elsewhere: Path) -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))
    proc = subprocess.run([sys.executable, "-m", "tts_server.cli", "synth", "你好", "-o", "x.wav",
                           "--model-dir", "/nonexistent"], capture_output=True, text=True, env=env, timeout=120,
                          check=False)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: cannot load the model: model.model_dir /nonexistent does not exist or is not a directory"]


# ---------------------------------------------------------------------------------------------- torch-free API

_API_PROCESS = """
import asyncio, json, sys, tempfile, traceback

importers = []


class Watch:
    # Records who imports torch, so a failure names the import chain instead of only saying "torch".
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            importers.append("".join(traceback.format_stack(limit=12)))
        return None


sys.meta_path.insert(0, Watch())

import httpx
from tts_server.api.app import create_app
from tts_server.config import load_settings


async def run():
    settings = load_settings(None, engine={"name": sys.argv[1]}, pool={"workers": 1},
                             model={"download_dir": tempfile.mkdtemp()})
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        assert await app.state.tts.pool.wait_ready(60), "no worker became ready"
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tts.test", timeout=60) as client:
            statuses = {}
            for method, path, body in [("POST", "/v1/synthesize", {"text": "你好", "format": "wav"}),
                                       ("POST", "/v1/audio/speech", {"model": "tts-1", "input": "你好",
                                                                     "voice": "alpha"}),
                                       ("GET", "/v1/voices", None), ("GET", "/metrics", None),
                                       ("GET", "/docs", None), ("GET", "/health", None)]:
                res = await client.request(method, path, json=body)
                statuses[path] = res.status_code
    print(json.dumps({"torch": "torch" in sys.modules, "importers": importers, "statuses": statuses}))


asyncio.run(run())
"""


def test_api_process_does_not_import_torch(tmp_path: Path) -> None:
    # A fresh interpreter: this pytest process may already hold torch from other tests.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))
    proc = subprocess.run([sys.executable, "-c", _API_PROCESS, TONE_ENGINE], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result["statuses"].values()) == {200}, result["statuses"]
    assert not result["torch"], "the API process imported torch:\n" + "\n---\n".join(result["importers"])


def test_build_info_reports_the_installed_torch_version(make_settings: Callable[..., Settings]) -> None:
    exposition = generate_latest(ServerMetrics(make_settings()).registry).decode()
    version = importlib.metadata.version("torch")
    assert f'torch="{version}"' in exposition
