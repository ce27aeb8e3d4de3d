"""End to end with a real Prometheus: it scrapes a real tts-server process, evaluates the shipped alert rules
against the real series, and raises the target-down alert once the server is killed.

The server is ``python -m tts_server.cli serve`` with the deterministic tone engine, Prometheus is Debian's
``prometheus`` binary; both listen on free loopback ports and live in a temporary directory. To keep the test
short, the temporary Prometheus config scrapes and evaluates every second and the copy of alerts.yml it loads has
the ``for:`` of TTSServerDown shortened from the shipped value to 2 s; everything else in the rules is as shipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from tests.conftest import TONE_ENGINE, require_binary, stop_process

REPO = Path(__file__).resolve().parents[1]
ALERTS_YML = REPO / "deploy" / "prometheus" / "alerts.yml"
DOWN_ALERT = "TTSServerDown"
DOWN_FOR = "2s"

T = TypeVar("T")


def _require(name: str) -> str:
    return require_binary(name, "install with .ci/install-monitoring.sh")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read()
        exc.close()
        return exc.code, body


def _post_json(url: str, body: dict[str, Any]) -> int:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        exc.close()
        code: int = exc.code
        return code


def _poll(what: str, probe: Callable[[], T | None], deadline: float, logs: Callable[[], str],
          interval: float = 0.2) -> T:
    """Call ``probe`` until it returns something other than None, or fail with the processes' logs."""
    while True:
        with contextlib.suppress(OSError):
            result = probe()
            if result is not None:
                return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{logs()}")
        time.sleep(interval)


class Prom:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, body = _get(f"{self.base}/api/v1/{path}{query}")
        payload = json.loads(body)
        assert status == 200, payload
        assert payload["status"] == "success", payload
        return payload["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=promql)["result"]
        return result

    def scalar(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None


def _stop(proc: subprocess.Popen[bytes], *, group: bool) -> None:
    if group:
        # Kill the whole group, also when the parent is already gone: no worker may outlive the test.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    stop_process(proc)


@contextlib.contextmanager
def _spawn(args: list[str], log: Path, *, env: dict[str, str] | None = None,
           new_group: bool = False) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as log_file:
        proc = subprocess.Popen(args, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT, start_new_session=new_group)
    try:
        yield proc
    finally:
        _stop(proc, group=new_group)


def _tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return f"({path.name}: no output)"
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    return f"--- {path.name}\n" + "\n".join(text)


def _write_server_config(path: Path, port: int, cache: Path) -> None:
    path.write_text(
        f"""
[server]
host = "127.0.0.1"
port = {port}
log_level = "warning"
drain_timeout_s = 1

[pool]
workers = 1
queue_size = 4
startup_timeout_s = 60
restart_backoff_s = 0.1
kill_grace_s = 1

[model]
download_dir = "{cache}"

[engine]
name = "{TONE_ENGINE}"
""",
        encoding="utf-8",
    )


def _write_prometheus_config(directory: Path, server_port: int) -> int:
    """prometheus.yml scraping the server every second, and a copy of the shipped rules; returns the rule count."""
    rules = yaml.safe_load(ALERTS_YML.read_text(encoding="utf-8"))
    count = 0
    for group in rules["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            count += 1
            if rule.get("alert") == DOWN_ALERT:
                rule["for"] = DOWN_FOR
    (directory / "alerts.yml").write_text(yaml.safe_dump(rules, sort_keys=False), encoding="utf-8")
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": ["alerts.yml"],
        "scrape_configs": [{"job_name": "tts-server", "metrics_path": "/metrics",
                            "static_configs": [{"targets": [f"127.0.0.1:{server_port}"]}]}],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return count


@pytest.mark.timeout(90)
def test_prometheus_scrapes_the_server_and_alerts_when_it_dies() -> None:
    prometheus = _require("prometheus")
    started = time.monotonic()
    deadline = started + 55
    with tempfile.TemporaryDirectory(prefix="tts-prom-e2e-") as tmp:
        work = Path(tmp)
        server_port, prom_port = _free_port(), _free_port()
        server_log, prom_log = work / "server.log", work / "prometheus.log"
        _write_server_config(work / "server.toml", server_port, work / "cache")
        rule_count = _write_prometheus_config(work, server_port)

        def logs() -> str:
            return _tail(server_log) + "\n" + _tail(prom_log)

        # Spawned workers import the engine by module path, so they need the repository root on sys.path.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)}
        server_args = [sys.executable, "-m", "tts_server.cli", "serve", "--config", str(work / "server.toml")]
        prom_args = [prometheus, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'data'}",
                     f"--web.listen-address=127.0.0.1:{prom_port}", "--log.level=warn"]
        server_url = f"http://127.0.0.1:{server_port}"
        prom = Prom(prom_port)
        with _spawn(server_args, server_log, env=env, new_group=True) as server, \
                _spawn(prom_args, prom_log) as prom_proc:

            def ready(url: str, proc: subprocess.Popen[bytes]) -> bool | None:
                assert proc.poll() is None, f"process exited with {proc.returncode}\n{logs()}"
                return True if _get(url)[0] == 200 else None

            _poll("the server to be ready", lambda: ready(f"{server_url}/readyz", server), deadline, logs)
            for text in ("你好。", "世界。"):
                assert _post_json(f"{server_url}/v1/synthesize", {"text": text}) == 200
            _poll("prometheus to be ready", lambda: ready(f"{prom.base}/-/ready", prom_proc), deadline, logs)

            # The target is up and the server's own series are queryable, with the traffic already counted.
            _poll("the target to be up", lambda: True if prom.scalar('up{job="tts-server"}') == 1 else None,
                  deadline, logs)
            (target,) = [t for t in prom.api("targets")["activeTargets"] if t["labels"]["job"] == "tts-server"]
            assert target["health"] == "up", target
            assert target["labels"]["instance"] == f"127.0.0.1:{server_port}"
            _poll("the requests to be counted", lambda: True if prom.scalar(
                'sum(tts_requests_total{job="tts-server", outcome="ok"})') == 2 else None, deadline, logs)
            assert prom.scalar('tts_workers{job="tts-server", state="ready"}') == 1
            assert prom.scalar('sum(tts_model_loaded{job="tts-server"})') == 2  # the tone engine's two voices
            assert prom.scalar('tts_queue_capacity{job="tts-server"}') == 4
            assert prom.scalar('count(tts_build_info{job="tts-server"} == 1)') == 1
            names = {r["metric"]["__name__"] for r in prom.query('count by (__name__) ({__name__=~"tts_.+"})')}
            assert {"tts_request_duration_seconds_bucket", "tts_requests_rejected_total", "tts_queue_depth",
                    "tts_worker_restarts_total", "tts_worker_resident_memory_bytes"} <= names

            # Every shipped rule loads and evaluates against real series without error (a vector-matching
            # mistake would show up as health "err" here, not in promtool's offline checks).
            def rules_evaluated() -> list[dict[str, Any]] | None:
                found = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
                return found if found and all(r["health"] != "unknown" for r in found) else None

            evaluated = _poll("every rule to be evaluated", rules_evaluated, deadline, logs)
            assert len(evaluated) == rule_count
            assert {r["name"]: r.get("lastError", "") for r in evaluated if r["health"] != "ok"} == {}
            assert not [a for a in prom.api("alerts")["alerts"] if a["labels"]["alertname"] == DOWN_ALERT]

            # Kill the server (and its workers) without warning: the next scrape fails and the alert follows.
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
            states: list[str] = []

            def down_alert_firing() -> dict[str, Any] | None:
                alerts = [a for a in prom.api("alerts")["alerts"] if a["labels"]["alertname"] == DOWN_ALERT]
                if alerts and (not states or states[-1] != alerts[0]["state"]):
                    states.append(alerts[0]["state"])
                return alerts[0] if alerts and alerts[0]["state"] == "firing" else None

            alert = _poll("the target-down alert to fire", down_alert_firing, deadline, logs, interval=0.1)
            assert states[0] == "pending", f"expected pending before firing, saw {states}"
            assert alert["labels"]["severity"] == "critical"
            assert alert["labels"]["instance"] == f"127.0.0.1:{server_port}"
            assert prom.scalar('up{job="tts-server"}') == 0
    assert time.monotonic() - started < 60
