"""Pool faults against a real ``tts-server serve`` process: permanent worker death, a hung (SIGSTOP) idle worker,
and a model that cannot load at all. Helpers come from test_server_process.py."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from bench.harness import free_port, toml_text
from tests.conftest import REPO, stop_process
from tests.test_server_process import (
    _client,
    _post,
    _replaced,
    _restarts,
    _server_command,
    _statuses,
    _wait_for,
    serve,
)

pytestmark = pytest.mark.slow


async def _ready_one(client: httpx.AsyncClient) -> bool:
    with contextlib.suppress(httpx.TransportError, ValueError, KeyError):
        return bool((await client.get("/health")).json()["workers"]["ready"] == 1)
    return False


async def test_worker_killed_again_and_again_keeps_coming_back(tmp_path: Path) -> None:
    # Before: a slot whose worker died crash_loop_threshold times was dead for good (Ready did not reset the count).
    pool = {"workers": 1, "crash_loop_threshold": 2, "restart_backoff_s": 0.1, "restart_backoff_max_s": 0.5}
    async with serve(tmp_path, pool=pool) as srv, _client(srv) as client:
        for _ in range(4):
            initial = srv.worker_pids()
            (victim,) = initial
            os.kill(victim, signal.SIGKILL)
            await _wait_for(lambda v=victim, i=initial: _replaced(srv, v, i), 30.0, "the worker is replaced")
            await _wait_for(lambda: _ready_one(client), 30.0, "the new worker is ready")
        outcome = await _post(client, "还活着。")
        assert outcome.status == 200
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.get("/livez")).status_code == 200
        assert (await _restarts(client))["crash"] == 4.0


async def test_sigstop_idle_worker_is_replaced_and_others_serve(tmp_path: Path) -> None:
    pool = {"workers": 2, "job_timeout_s": 6.0, "heartbeat_interval_s": 0.3, "heartbeat_timeout_s": 1.0}
    async with serve(tmp_path, pool=pool) as srv, _client(srv) as client:
        initial = srv.worker_pids()
        victim = min(initial)
        os.kill(victim, signal.SIGSTOP)
        try:
            t_stop = time.monotonic()
            outcomes = [await _post(client, f"[sleep=0.1] 其他{i}。") for i in range(8)]
            # The pool's own reaction (missed heartbeats -> kill) is what is bounded; starting the replacement
            # (a fresh interpreter importing torch) takes as long as the machine's load makes it.
            killed_after = await _wait_for(lambda: victim not in srv.worker_pids(), 10.0,
                                           "the hung worker is killed") + (time.monotonic() - t_stop)
            await _wait_for(lambda: _replaced(srv, victim, initial), 60.0, "the hung worker is replaced")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        # Before: the request handed to the stopped worker waited its whole deadline and got a 504.
        assert _statuses(outcomes) == {200: len(outcomes)}
        assert max(o.latency for o in outcomes) < 3.0
        assert killed_after < 6.0
        assert (await _restarts(client))["timeout"] == 1.0
        print(f"[sigstop-idle] killed_after_s={killed_after:.2f} "
              f"max_latency_s={max(o.latency for o in outcomes):.2f}")


def test_serve_with_a_model_that_cannot_load_exits_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "broken.toml"
    config.write_text(toml_text({
        "server": {"host": "127.0.0.1", "log_level": "warning"},
        "pool": {"workers": 1, "restart_backoff_s": 0.1},
        "model": {"model_dir": str(tmp_path / "no-such-model"), "download_dir": str(tmp_path / "cache")},
    }), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTS_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(_server_command(config, free_port()), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, cwd=tmp_path)
    try:
        # Before: it kept serving 503 forever.
        _, err = proc.communicate(timeout=120)
    finally:
        stop_process(proc)
    stderr = err.decode("utf-8", "replace")
    assert proc.returncode not in (0, None)
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("tts-server: no worker could load the engine:"), stderr
    assert "no-such-model" in last or "model" in last.lower()


