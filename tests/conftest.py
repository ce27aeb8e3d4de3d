"""Shared fixtures: settings for the deterministic test engine, and an app running inside its lifespan."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NoReturn

import httpx
import pytest
from fastapi import FastAPI

from tts_server.api.app import create_app
from tts_server.config import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
PARITY_DIR = SHARED / "reference" / "sambert-parity"

TONE_ENGINE = "tests.engines:tone_engine"


def _deep_update(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _deep_update(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


@pytest.fixture
def engine_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """File the test engine appends ``pid<TAB>text`` to for every job it runs (spawned workers inherit the env)."""
    path = tmp_path / "engine.log"
    monkeypatch.setenv("TTS_TEST_ENGINE_LOG", str(path))
    return path


def read_log(path: Path) -> list[tuple[int, str]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        pid, _, text = line.partition("\t")
        rows.append((int(pid), text.encode("ascii").decode("unicode_escape")))
    return rows


class Hold:
    """A gate for ``[hold]`` jobs of the test engine: they wait while its file exists. Holding a worker this way
    cannot run out under load, unlike a ``sleep`` job that must outlast the test's next steps."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()

    def release(self) -> None:
        """Let held jobs (running or yet to start) finish."""
        self.path.unlink(missing_ok=True)


@pytest.fixture
def hold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hold]:
    """A closed ``Hold`` whose file the test engine in spawned workers finds through the env they inherit."""
    gate = Hold(tmp_path / "hold")
    monkeypatch.setenv("TTS_TEST_HOLD_FILE", str(gate.path))
    yield gate
    gate.release()  # a test that failed before releasing must not leave a worker held


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def factory(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "engine": {"name": TONE_ENGINE},
            "pool": {"workers": 2, "queue_size": 8, "job_timeout_s": 20.0, "startup_timeout_s": 60.0,
                     "restart_backoff_s": 0.1, "kill_grace_s": 1.0},
            "model": {"download_dir": str(tmp_path / "cache")},
        }
        return load_settings(None, **_deep_update(base, overrides))

    return factory


@asynccontextmanager
async def running_app(settings: Settings, *, wait_ready: bool = True) -> AsyncIterator[tuple[FastAPI,
                                                                                           httpx.AsyncClient]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        if wait_ready:
            assert await app.state.tts.pool.wait_ready(60), "no worker became ready"
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tts.test", timeout=60) as client:
            yield app, client


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def unavailable(reason: str) -> NoReturn:
    """A tool a test needs is missing: skip locally, but fail in CI, which must install everything."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must install it)")
    pytest.skip(reason)


def require_binary(name: str, install: str) -> str:
    """Path of a binary on PATH or next to the interpreter (where wheels put theirs), else ``unavailable``."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        unavailable(f"{name} is not installed ({install})")
    return found


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """SIGTERM a child, SIGKILL it if it does not exit in time, and reap it."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout_s)
