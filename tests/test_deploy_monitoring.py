"""Offline checks of the monitoring deploy files with the real Prometheus tools.

* ``promtool`` validates deploy/prometheus/prometheus.yml and alerts.yml and runs the alert unit tests in
  alerts.test.yml; every alert must have a test where it fires and one where it stays quiet.
* ``amtool`` validates deploy/alertmanager/alertmanager.yml and resolves every case of routes.test.yml; when the
  ``prometheus-alertmanager`` binary is present, a throwaway Alertmanager on loopback proves the inhibition rules.
* Every Grafana panel query in deploy/grafana/tts-server.json, with the dashboard variables substituted, is
  parsed by promtool and evaluated against a synthetic scrape of every exported series, so a query with a typo
  in a metric or label name fails instead of drawing an empty panel.

promtool/amtool come from Debian's ``prometheus`` and ``prometheus-alertmanager`` packages
(.ci/install-monitoring.sh); the tests that need them skip when they are absent, the structural checks always run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import stop_process

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS_YML = DEPLOY / "prometheus" / "alerts.yml"
ALERTS_TEST_YML = DEPLOY / "prometheus" / "alerts.test.yml"
ALERTMANAGER_YML = DEPLOY / "alertmanager" / "alertmanager.yml"
ROUTES_TEST_YML = DEPLOY / "alertmanager" / "routes.test.yml"
DASHBOARD_JSON = DEPLOY / "grafana" / "tts-server.json"

#: In CI a missing tool must fail the test (CI installs them), never skip it.
IN_CI = bool(os.environ.get("CI"))
PROMTOOL = shutil.which("promtool")
AMTOOL = shutil.which("amtool")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
INSTALL_HINT = "install with .ci/install-monitoring.sh (Debian prometheus / prometheus-alertmanager)"
needs_promtool = pytest.mark.skipif(PROMTOOL is None and not IN_CI, reason=f"promtool not on PATH; {INSTALL_HINT}")
needs_amtool = pytest.mark.skipif(AMTOOL is None and not IN_CI, reason=f"amtool not on PATH; {INSTALL_HINT}")

SEVERITIES = {"critical", "warning"}
REQUIRED_ANNOTATIONS = ("summary", "description", "runbook")

# Every series the server (tts_* and the instrumentator's http_*), node_exporter and Prometheus itself expose,
# with plausible label sets: the vocabulary the rules and the dashboard may use, and the synthetic scrape their
# queries are evaluated against. Kinds: histogram (expands to _bucket/_sum/_count), counter, gauge.
TTS = {"job": "tts-server", "instance": "tts-1:8000"}
NODE = {"job": "node", "instance": "node-1:9100"}
SeriesSpec = tuple[str, dict[str, str], list[dict[str, str]]]
EXPORTED: dict[str, SeriesSpec] = {
    "tts_request_duration_seconds": ("histogram", TTS, [
        {"route": "/v1/tts", "format": "wav", "stream": "false"},
        {"route": "/v1/tts/stream", "format": "pcm", "stream": "true"},
    ]),
    "tts_queue_wait_seconds": ("histogram", TTS, [{}]),
    "tts_inference_duration_seconds": ("histogram", TTS, [
        {"stage": stage} for stage in ("frontend", "acoustic", "vocoder")
    ]),
    "tts_encode_duration_seconds": ("histogram", TTS, [{}]),
    "tts_time_to_first_audio_seconds": ("histogram", TTS, [{"route": "/v1/tts/stream"}]),
    "tts_real_time_factor": ("histogram", TTS, [{}]),
    "tts_requests_total": ("counter", TTS, [
        {"voice": "zhitian_emo", "emotion": "neutral", "outcome": outcome}
        for outcome in ("ok", "client_error", "server_error", "timeout", "rejected", "cancelled")
    ]),
    "tts_requests_rejected_total": ("counter", TTS, [
        {"reason": reason} for reason in ("queue_full", "rate_limited", "not_ready", "too_large", "invalid")
    ]),
    "tts_audio_output_seconds_total": ("counter", TTS, [{}]),
    "tts_inference_seconds_total": ("counter", TTS, [{}]),
    "tts_input_characters_total": ("counter", TTS, [{}]),
    "tts_worker_restarts_total": ("counter", TTS, [
        {"reason": reason} for reason in ("crash", "timeout", "recycle_jobs", "recycle_memory")
    ]),
    "tts_cache_lookups_total": ("counter", TTS, [{"result": "hit"}, {"result": "miss"}]),
    "tts_worker_cpu_seconds_total": ("counter", TTS, [{"worker": "0"}, {"worker": "1"}]),
    "tts_queue_depth": ("gauge", TTS, [{}]),
    "tts_queue_capacity": ("gauge", TTS, [{}]),
    "tts_requests_in_progress": ("gauge", TTS, [{}]),
    "tts_workers": ("gauge", TTS, [{"state": state} for state in ("starting", "ready", "busy", "dead")]),
    "tts_model_loaded": ("gauge", TTS, [{"voice": "zhitian_emo"}, {"voice": "zhiyan_emo"}]),
    "tts_model_load_duration_seconds": ("gauge", TTS, [{"worker": "0"}, {"worker": "1"}]),
    "tts_worker_resident_memory_bytes": ("gauge", TTS, [{"worker": "0"}, {"worker": "1"}]),
    "tts_cache_dir_free_bytes": ("gauge", TTS, [{}]),
    "tts_build_info": ("gauge", TTS, [{"version": "0.1.0", "model_id": "sambert-hifigan", "torch": "2.13.0"}]),
    "http_requests_total": ("counter", TTS, [
        {"handler": "/v1/tts", "method": "POST", "status": "2xx"},
        {"handler": "/v1/tts", "method": "POST", "status": "5xx"},
        {"handler": "/metrics", "method": "GET", "status": "2xx"},
    ]),
    "http_request_duration_seconds": ("histogram", TTS, [{"handler": "/v1/tts", "method": "POST"}]),
    "node_cpu_seconds_total": ("counter", NODE, [
        {"cpu": cpu, "mode": mode} for cpu in ("0", "1") for mode in ("idle", "user", "system")
    ]),
    "node_filesystem_avail_bytes": ("gauge", NODE, [
        {"device": "/dev/sda1", "fstype": "ext4", "mountpoint": "/"},
        {"device": "tmpfs", "fstype": "tmpfs", "mountpoint": "/run"},
    ]),
    "node_filesystem_size_bytes": ("gauge", NODE, [
        {"device": "/dev/sda1", "fstype": "ext4", "mountpoint": "/"},
        {"device": "tmpfs", "fstype": "tmpfs", "mountpoint": "/run"},
    ]),
    "up": ("gauge", TTS, [{}]),
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
METRIC_TOKEN = re.compile(r"\b((?:tts|http|node)_[a-z0-9_]+|up)\b")

# Values the dashboard variables take in the parse/evaluate tests: a multi-value $instance as Grafana renders it
# into a regex, and $__rate_interval as Grafana computes it for a 15 s scrape interval.
DASHBOARD_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "30s",
    "__range": "6h",
    "job": "tts-server",
    "instance": "tts-1:8000|tts-2:8000",
    "node": "node-1:9100",
}


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=cwd, check=False)


def _alert_rules() -> list[dict[str, Any]]:
    doc = _load_yaml(ALERTS_YML)
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def _known_metric_names() -> set[str]:
    names: set[str] = set()
    for name, (kind, _, _) in EXPORTED.items():
        names.add(name)
        if kind == "histogram":
            names.update(name + suffix for suffix in HISTOGRAM_SUFFIXES)
    return names


def _dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD_JSON.read_text(encoding="utf-8"))
    return data


def _panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows; rows themselves are not panels."""
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def _panel_queries() -> list[tuple[str, str]]:
    """(``<panel id>_<refId>``, expr) for every query target of the dashboard."""
    return [(key, expr) for key, _, expr in _panel_queries_titled()]


def _panel_queries_titled() -> list[tuple[str, str, str]]:
    out: list[tuple[str, str, str]] = []
    for panel in _panels(_dashboard()):
        for target in panel["targets"]:
            out.append((f"{panel['id']}_{target['refId']}", panel["title"], target["expr"]))
    return out


def _substitute(expr: str) -> str:
    def repl(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in DASHBOARD_VARIABLES:
            raise AssertionError(f"query uses undeclared variable ${name}: {expr}")
        return DASHBOARD_VARIABLES[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, expr)


# ------------------------------------------------------------------------------------------------ Prometheus


@needs_promtool
def test_promtool_check_config() -> None:
    result = _run(str(PROMTOOL), "check", "config", str(PROMETHEUS_YML))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_promtool_check_rules() -> None:
    result = _run(str(PROMTOOL), "check", "rules", str(ALERTS_YML))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alert_rules())} rules found" in result.stdout


@needs_promtool
def test_promtool_test_rules() -> None:
    result = _run(str(PROMTOOL), "test", "rules", str(ALERTS_TEST_YML))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_prometheus_config_scrapes_server_and_node_and_loads_the_rules() -> None:
    config = _load_yaml(PROMETHEUS_YML)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {"tts-server", "node"} <= set(jobs)
    assert jobs["tts-server"].get("metrics_path", "/metrics") == "/metrics"
    assert (PROMETHEUS_YML.parent / "alerts.yml").resolve() in {
        (PROMETHEUS_YML.parent / f).resolve() for f in config["rule_files"]
    }
    assert config["alerting"]["alertmanagers"], "alerts must be sent to an Alertmanager"
    # The rules select on these job names; renaming a job silently disables its alerts.
    rule_jobs = set(re.findall(r'job="([^"]+)"', ALERTS_YML.read_text(encoding="utf-8")))
    assert rule_jobs <= set(jobs)


def test_alert_rules_carry_severity_annotations_and_runbook() -> None:
    rules = _alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names)), "alert names must be unique (tests and inhibition key on them)"
    for rule in rules:
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        for key in REQUIRED_ANNOTATIONS:
            assert str(rule["annotations"].get(key, "")).strip(), f"{rule['alert']} lacks annotation {key}"


def test_required_alerts_exist() -> None:
    exprs = {rule["alert"]: rule["expr"] for rule in _alert_rules()}
    required = {
        "TTSServerDown": r'up\{job="tts-server"\} == 0',
        "TTSServerAbsent": r'absent\(up\{job="tts-server"\}\)',
        "TTSHighErrorRatio": r"status=~\"5\.\.\"",
        "TTSHighLatencyP95": r"histogram_quantile\(0\.95, .*tts_request_duration_seconds_bucket",
        "TTSTimeToFirstAudioHigh": r"tts_time_to_first_audio_seconds_bucket",
        "TTSQueueSaturated": r"tts_queue_depth(.|\n)*tts_queue_capacity(.|\n)*> 0\.8",
        "TTSRequestsRejected": r"tts_requests_rejected_total",
        "TTSNoReadyWorkers": r"tts_workers\{",
        "TTSWorkerCrashLoop": r'tts_worker_restarts_total\{[^}]*reason="crash"',
        "TTSModelNotLoaded": r"tts_model_loaded\{",
        "TTSWorkerMemoryGrowth": r"predict_linear\(tts_worker_resident_memory_bytes",
        "TTSRealTimeFactorDegraded": r"tts_real_time_factor_bucket",
        "HostHighCPU": r"node_cpu_seconds_total(.|\n)*> 80",
        "HostDiskSpaceLow": r"node_filesystem_avail_bytes(.|\n)*< 0\.10",
    }
    for name, pattern in required.items():
        assert name in exprs, f"missing alert {name}"
        assert re.search(pattern, exprs[name]), f"{name}: {exprs[name]!r} does not match {pattern!r}"
    saturated = next(rule for rule in _alert_rules() if rule["alert"] == "TTSQueueSaturated")
    assert saturated["for"] == "2m"


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    tests = _load_yaml(ALERTS_TEST_YML)
    assert [str(f) for f in tests["rule_files"]] == ["alerts.yml"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in _alert_rules()}
    assert not (firing | quiet) - names, "tests for alerts that do not exist"
    assert names - firing == set(), "alerts without a firing test case"
    assert names - quiet == set(), "alerts without a quiet test case"


def test_rules_and_dashboard_use_only_exported_metrics() -> None:
    known = _known_metric_names()
    used_in_rules = set(METRIC_TOKEN.findall("\n".join(rule["expr"] for rule in _alert_rules())))
    used_in_dashboard = set(METRIC_TOKEN.findall("\n".join(expr for _, expr in _panel_queries())))
    assert used_in_rules - known == set()
    assert used_in_dashboard - known == set()


# ----------------------------------------------------------------------------------------------- Alertmanager


def _route_cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = _load_yaml(ROUTES_TEST_YML)["cases"]
    return cases


def _resolve_receivers(labels: dict[str, str], expected: list[str] | None = None) -> list[str]:
    args = [str(AMTOOL), "config", "routes", "test", f"--config.file={ALERTMANAGER_YML}"]
    if expected is not None:
        args.append("--verify.receivers=" + ",".join(expected))
    args.extend(f"{key}={value}" for key, value in labels.items())
    result = _run(*args)
    assert result.returncode == 0, f"{labels}: {result.stdout}{result.stderr}"
    return [r for r in result.stdout.strip().split(",") if r]


@needs_amtool
def test_amtool_check_config() -> None:
    result = _run(str(AMTOOL), "check-config", str(ALERTMANAGER_YML))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_amtool
@pytest.mark.parametrize("case", _route_cases(), ids=lambda case: str(case["name"]))
def test_amtool_routes(case: dict[str, Any]) -> None:
    labels = {str(k): str(v) for k, v in case["labels"].items()}
    expected = [str(r) for r in case["receivers"]]
    assert _resolve_receivers(labels, expected) == expected


@needs_amtool
def test_every_alert_routes_by_its_severity() -> None:
    """Each shipped alert reaches a severity-specific receiver, not just the catch-all root."""
    root = _load_yaml(ALERTMANAGER_YML)["route"]["receiver"]
    by_severity: dict[str, set[str]] = {}
    for rule in _alert_rules():
        labels = {"alertname": rule["alert"], **{k: str(v) for k, v in rule["labels"].items()}}
        receivers = _resolve_receivers(labels)
        assert receivers, rule["alert"]
        assert root not in receivers, f"{rule['alert']} only reaches the fallback {root}"
        by_severity.setdefault(rule["labels"]["severity"], set()).update(receivers)
    # Severities go to different people.
    assert by_severity["critical"].isdisjoint(by_severity["warning"])


def test_alertmanager_config_references_real_alerts_and_receivers() -> None:
    config = _load_yaml(ALERTMANAGER_YML)
    receivers = {receiver["name"] for receiver in config["receivers"]}
    assert {case_receiver for case in _route_cases() for case_receiver in case["receivers"]} <= receivers
    names = {rule["alert"] for rule in _alert_rules()}
    webhooks = [hook for receiver in config["receivers"] for hook in receiver.get("webhook_configs", [])]
    assert any("dingtalk" in hook["url"] for hook in webhooks), "DingTalk example receiver missing"
    assert config["route"]["group_by"], "alerts must be grouped"
    sources: set[str] = set()
    for rule in config["inhibit_rules"]:
        assert rule["equal"] == ["instance"], "inhibition must stay within one instance"
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            match = re.fullmatch(r'alertname(=|!=|=~)"([^"]+)"', matcher)
            if match is None:
                continue
            referenced = set(match.group(2).split("|")) if match.group(1) == "=~" else {match.group(2)}
            assert referenced <= names, f"inhibit rule names unknown alerts {referenced - names}"
            if matcher in rule["source_matchers"]:
                sources |= referenced
    assert "TTSServerDown" in sources


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _http_json(method: str, url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=5) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


@pytest.mark.skipif(ALERTMANAGER is None and not IN_CI, reason=f"Alertmanager binary not on PATH; {INSTALL_HINT}")
def test_alertmanager_inhibits_alerts_of_a_down_target(tmp_path: Path) -> None:
    """A real Alertmanager with the shipped config mutes the rest of a down instance's alerts, nothing else."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}/api/v2"
    log = tmp_path / "alertmanager.log"
    storage = tmp_path / "data"
    with log.open("w") as log_file:
        proc = subprocess.Popen(
            [str(ALERTMANAGER), f"--config.file={ALERTMANAGER_YML}", f"--storage.path={storage}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            stdout=subprocess.DEVNULL, stderr=log_file,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _http_json("GET", f"{base}/status")
                break
            except OSError as exc:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"alertmanager did not start: {log.read_text()}") from exc
                time.sleep(0.2)

        def alert(name: str, severity: str, instance: str, job: str = "tts-server") -> dict[str, Any]:
            labels = {"alertname": name, "severity": severity, "job": job, "instance": instance}
            return {"labels": labels, "annotations": {"summary": name}}

        _http_json("POST", f"{base}/alerts", [
            alert("TTSServerDown", "critical", "tts-1:8000"),
            alert("TTSQueueSaturated", "warning", "tts-1:8000"),
            alert("TTSWorkerCrashLoop", "critical", "tts-1:8000"),
            alert("TTSQueueSaturated", "warning", "tts-2:8000"),
            alert("HostHighCPU", "warning", "node-1:9100", job="node"),
        ])
        expected = {
            ("TTSServerDown", "tts-1:8000"): [],
            ("TTSQueueSaturated", "tts-1:8000"): ["TTSServerDown"],
            ("TTSWorkerCrashLoop", "tts-1:8000"): ["TTSServerDown"],
            ("TTSQueueSaturated", "tts-2:8000"): [],
            ("HostHighCPU", "node-1:9100"): [],
        }
        names_by_fp: dict[str, str] = {}
        got: dict[tuple[str, str], list[str]] = {}
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            alerts = _http_json("GET", f"{base}/alerts")
            names_by_fp = {a["fingerprint"]: a["labels"]["alertname"] for a in alerts}
            got = {
                (a["labels"]["alertname"], a["labels"]["instance"]): sorted(
                    names_by_fp.get(fp, fp) for fp in a["status"]["inhibitedBy"]
                )
                for a in alerts
            }
            if got == expected:
                break
            time.sleep(0.2)
        assert got == expected
    finally:
        stop_process(proc)


# ---------------------------------------------------------------------------------------------------- Grafana


def test_dashboard_variables() -> None:
    variables = {v["name"]: v for v in _dashboard()["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    assert variables["instance"]["multi"]
    assert variables["instance"]["includeAll"]
    assert "$job" in variables["instance"]["definition"], "instance choices must follow the selected job"


def test_every_panel_has_description_unit_datasource_and_queries() -> None:
    dashboard = _dashboard()
    panels = list(_panels(dashboard))
    assert len(panels) >= 12
    ids = [panel["id"] for panel in panels] + [p["id"] for p in dashboard["panels"] if p.get("type") == "row"]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, f"panel {panel['title']!r} is wider than the grid"
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"panels {cells[(x, y)]!r} and {panel['title']!r} overlap"
                cells[(x, y)] = panel["title"]
    for panel in panels:
        title = panel["title"]
        assert panel.get("description", "").strip(), f"panel {title!r} has no description"
        assert panel["fieldConfig"]["defaults"].get("unit"), f"panel {title!r} has no unit"
        assert panel["datasource"]["uid"] == "${datasource}", f"panel {title!r} ignores the datasource variable"
        assert panel["targets"], f"panel {title!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            assert target["expr"].strip()


def test_panel_queries_use_rate_interval_and_variables() -> None:
    for key, expr in _panel_queries():
        windows = re.findall(r"\[([^\]]+)\]", expr)
        assert all(w == "$__rate_interval" for w in windows), f"panel {key}: range {windows} in {expr}"
        for metric in set(METRIC_TOKEN.findall(expr)):
            selectors = re.findall(rf"\b{metric}\{{([^}}]*)\}}", expr)
            assert selectors, f"panel {key}: {metric} without a label selector"
            wanted = ('job="node"', 'instance=~"$node"') if metric.startswith("node_") else (
                'job="$job"', 'instance=~"$instance"')
            for selector in selectors:
                for matcher in wanted:
                    assert matcher in selector, f"panel {key}: {metric}{{{selector}}} lacks {matcher}"


def test_dashboard_covers_the_required_views() -> None:
    panels = list(_panels(_dashboard()))
    exprs_by_panel = ["\n".join(t["expr"] for t in p["targets"]) for p in panels]

    def panel_with(*patterns: str) -> bool:
        return any(all(re.search(p, text) for p in patterns) for text in exprs_by_panel)

    assert panel_with(r"rate\(tts_requests_total"), "QPS"
    assert panel_with(*(rf"histogram_quantile\({q}, .*tts_request_duration_seconds_bucket" for q in
                        ("0.5", "0.95", "0.99"))), "p50/p95/p99 latency"
    assert panel_with(r"tts_time_to_first_audio_seconds_bucket"), "time to first audio"
    assert panel_with(r"tts_queue_depth", r"tts_queue_capacity"), "queue depth vs capacity in one panel"
    assert panel_with(r"sum by \(state\) \(tts_workers"), "workers by state"
    assert panel_with(r"tts_real_time_factor_bucket"), "RTF"
    assert panel_with(r'status=~"5\.\."', r"/ sum\(rate\(http_requests_total"), "error ratio"
    assert panel_with(r"tts_worker_resident_memory_bytes"), "worker RSS"
    assert panel_with(r"rate\(tts_worker_cpu_seconds_total"), "worker CPU"
    assert panel_with(r"tts_worker_restarts_total"), "restarts"


def _synthetic_input_series() -> list[dict[str, str]]:
    """A 20-minute scrape of every exported series at 1 m resolution, with traffic flowing."""

    def series(name: str, labels: dict[str, str]) -> str:
        inner = ", ".join(f'{k}="{v}"' for k, v in labels.items())
        return f"{name}{{{inner}}}"

    out: list[dict[str, str]] = []
    for name, (kind, target, label_sets) in EXPORTED.items():
        for labels in label_sets:
            full = {**target, **labels}
            if kind == "histogram":
                buckets = ("0.1", "1", "5", "+Inf")
                for i, le in enumerate(buckets):
                    out.append({"series": series(f"{name}_bucket", {**full, "le": le}),
                                "values": f"0+{10 * (i + 1)}x20"})
                out.append({"series": series(f"{name}_count", full), "values": "0+40x20"})
                out.append({"series": series(f"{name}_sum", full), "values": "0+50x20"})
            elif kind == "counter":
                out.append({"series": series(name, full), "values": "0+6x20"})
            else:
                out.append({"series": series(name, full), "values": "1+1x20"})
    return out


@needs_promtool
def test_panel_queries_parse_and_return_data(tmp_path: Path) -> None:
    """promtool parses every panel query and each returns at least one series on a synthetic scrape.

    Each query becomes a recording rule; an alert on ``absent()`` of the recorded series fires for any query
    that selects nothing, which a unit test expecting no alerts turns into a failure naming the panel.
    """
    queries = _panel_queries_titled()
    assert queries
    rules: list[dict[str, Any]] = []
    for key, title, expr in queries:
        record = f"dashboard:panel_{key}"
        rules.append({"record": record, "expr": _substitute(expr)})
        rules.append({"alert": "DashboardQueryEmpty", "expr": f"absent({record})",
                      "labels": {"panel": key, "title": title}})
    rules_file = tmp_path / "dashboard.rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")

    check = _run(str(PROMTOOL), "check", "rules", str(rules_file))
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(rules)} rules found" in check.stdout

    test_file = tmp_path / "dashboard.test.yml"
    test_file.write_text(yaml.safe_dump({
        "rule_files": [rules_file.name],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": _synthetic_input_series(),
            "alert_rule_test": [{"eval_time": "15m", "alertname": "DashboardQueryEmpty", "exp_alerts": []}],
        }],
    }), encoding="utf-8")
    result = _run(str(PROMTOOL), "test", "rules", test_file.name, cwd=tmp_path)
    assert result.returncode == 0, "panel queries returning no data:\n" + result.stdout + result.stderr


def test_substitution_rejects_unknown_variables() -> None:
    assert _substitute('rate(x{job="$job"}[$__rate_interval])') == 'rate(x{job="tts-server"}[1m])'
    with pytest.raises(AssertionError, match="undeclared variable"):
        _substitute('x{job="$nope"}')
