"""The ``tts_*`` and ``http_*`` metrics, read back from real ``/metrics`` scrapes after real traffic through the
worker pool (spawned workers running the deterministic tone engine).

Also checks the scrape with ``promtool check metrics`` and that every metric and label that the shipped alert
rules and Grafana dashboard reference exists in a real scrape, so a rename on either side breaks a test instead
of silently emptying a panel or disabling an alert.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TONE_ENGINE, require_binary, running_app
from tts_server import __version__
from tts_server.api.app import UNMEASURED
from tts_server.config import Settings, load_settings
from tts_server.inference.audio import FORMATS
from tts_server.inference.engine import STAGES
from tts_server.inference.pool import RESTART_REASONS, WORKER_STATES, WorkerPool
from tts_server.metrics.registry import OUTCOMES, REJECT_REASONS, ROUTES

REPO = Path(__file__).resolve().parents[1]
ALERTS_YML = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD_JSON = REPO / "deploy" / "grafana" / "tts-server.json"

#: The tone engine's voices and emotions (tests/engines.py).
VOICES = {"alpha": ("neutral", "happy", "sad"), "beta": ("neutral", "angry")}

#: Every family the server exports: type and label names (``le`` of histogram buckets aside).
EXPECTED: dict[str, tuple[str, frozenset[str]]] = {
    name: (kind, frozenset(labels)) for name, kind, labels in [
        ("tts_request_duration_seconds", "histogram", {"route", "format", "stream"}),
        ("tts_queue_wait_seconds", "histogram", set()),
        ("tts_inference_duration_seconds", "histogram", {"stage"}),
        ("tts_encode_duration_seconds", "histogram", set()),
        ("tts_time_to_first_audio_seconds", "histogram", {"route"}),
        ("tts_real_time_factor", "histogram", set()),
        ("tts_requests", "counter", {"voice", "emotion", "outcome"}),
        ("tts_requests_rejected", "counter", {"reason"}),
        ("tts_audio_output_seconds", "counter", set()),
        ("tts_inference_seconds", "counter", set()),
        ("tts_input_characters", "counter", set()),
        ("tts_worker_restarts", "counter", {"reason"}),
        ("tts_cache_lookups", "counter", {"result"}),
        ("tts_worker_cpu_seconds", "counter", {"worker"}),
        ("tts_queue_depth", "gauge", set()),
        ("tts_queue_capacity", "gauge", set()),
        ("tts_requests_in_progress", "gauge", set()),
        ("tts_workers", "gauge", {"state"}),
        ("tts_model_loaded", "gauge", {"voice"}),
        ("tts_model_load_duration_seconds", "gauge", {"worker"}),
        ("tts_worker_resident_memory_bytes", "gauge", {"worker"}),
        ("tts_cache_dir_free_bytes", "gauge", set()),
        ("tts_build_info", "gauge", {"version", "model_id", "torch"}),
        ("tts_ws_sessions_open", "gauge", set()),
        ("tts_ws_sessions", "counter", {"outcome"}),
        ("tts_ws_audio_sent_seconds", "counter", set()),
        ("http_requests", "counter", {"handler", "method", "status"}),
        ("http_request_duration_seconds", "histogram", {"handler", "method"}),
        ("http_request_duration_highr_seconds", "histogram", set()),
        ("http_request_size_bytes", "summary", {"handler"}),
        ("http_response_size_bytes", "summary", {"handler"}),
    ]
}

#: Label names allowed anywhere: each has a small, fixed set of values. Never text, request id, client, key.
ALLOWED_LABELS = {"route", "format", "stream", "stage", "voice", "emotion", "outcome", "reason", "result", "state",
                  "worker", "version", "model_id", "torch", "handler", "method", "status", "le", "quantile"}

#: Target labels Prometheus attaches at scrape time; the server itself never exports them.
TARGET_LABELS = {"job", "instance"}


# ------------------------------------------------------------------------------------------------ scrape model


@dataclass
class Scrape:
    text: str
    types: dict[str, str] = field(default_factory=dict)
    #: sample name (with _total/_bucket/... suffix) -> [(labels, value)]
    samples: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Scrape:
        scrape = cls(text)
        for family in text_string_to_metric_families(text):
            if family.name.endswith("_created") and family.type == "gauge":
                continue  # prometheus_client's creation timestamps, one per series of the real family
            assert family.name not in scrape.types, f"family {family.name} exported twice"
            scrape.types[family.name] = family.type
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                scrape.samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
        return scrape

    def value(self, name: str, **labels: str) -> float:
        matches = [v for lab, v in self.samples.get(name, []) if lab == labels]
        assert len(matches) == 1, f"{name}{labels}: {len(matches)} series (have {self.samples.get(name)})"
        return matches[0]

    def series(self, name: str) -> list[dict[str, str]]:
        return [lab for lab, _ in self.samples.get(name, [])]

    def label_values(self, name: str, label: str) -> set[str]:
        return {lab[label] for lab in self.series(name) if label in lab}


async def scrape(client: Any) -> Scrape:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return Scrape.parse(response.text)


async def wait_for(predicate: Callable[[], Any], within_s: float = 15.0) -> None:
    deadline = time.monotonic() + within_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def settings_for(tmp: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "engine": {"name": TONE_ENGINE},
        "pool": {"workers": 2, "queue_size": 8, "job_timeout_s": 20.0, "startup_timeout_s": 60.0,
                 "restart_backoff_s": 0.1, "kill_grace_s": 1.0},
        "model": {"download_dir": str(tmp / "cache")},
    }
    for section, values in overrides.items():
        base[section] = {**base.get(section, {}), **values}
    return load_settings(None, **base)


def require_tool(name: str) -> str:
    return require_binary(name, "install with .ci/install-monitoring.sh")


# ------------------------------------------------------------------------------- one traffic run, many checks

#: Marks that must never reach a label: a piece of request text, a client request id, an unknown voice name.
SECRET_TEXT = "机密文本甲乙"
SECRET_REQUEST_ID = "req-secret-9f2c41"
SECRET_VOICE = "voice-from-client-77"


@dataclass
class TrafficRun:
    settings: Settings
    scrape: Scrape
    statuses: list[int]


async def _traffic(settings: Settings) -> TrafficRun:
    async with running_app(settings) as (app, client):
        pool: WorkerPool = app.state.tts.pool
        await wait_for(lambda: _ready_count(pool, settings.pool.workers))
        headers = {"X-Request-Id": SECRET_REQUEST_ID}
        requests = [
            {"text": "你好。世界。"},  # alpha/neutral by default, wav
            {"text": "你好", "voice": "beta", "emotion": "angry", "format": "pcm", "stream": True},
            {"text": "[fail] " + SECRET_TEXT, "voice": "alpha", "emotion": "happy"},  # engine refuses: 422
            {"text": "[boom] 坏", "voice": "alpha", "emotion": "sad"},  # engine bug: 500
            {"text": "好", "voice": SECRET_VOICE},  # unknown voice: 422 before admission
        ]
        statuses = []
        for body in requests:
            response = await client.post("/v1/synthesize", json=body, headers=headers)
            statuses.append(response.status_code)
        too_large = "长" * (settings.server.max_body_bytes // 3 + 1)  # 3 UTF-8 bytes each
        response = await client.post("/v1/synthesize", json={"text": too_large}, headers=headers)
        statuses.append(response.status_code)
        for path in [*UNMEASURED, "/metrics", "/v1/voices"]:
            assert (await client.get(path)).status_code == 200
        return TrafficRun(settings, await scrape(client), statuses)


async def _ready_count(pool: WorkerPool, n: int) -> bool:
    return pool.stats().count("ready") == n


@pytest.fixture(scope="module")
def traffic(tmp_path_factory: pytest.TempPathFactory) -> TrafficRun:
    # One server run shared by the read-only checks below: starting a pool costs seconds.
    settings = settings_for(tmp_path_factory.mktemp("metrics"))
    run = asyncio.run(_traffic(settings))
    assert run.statuses == [200, 200, 422, 500, 422, 413]
    return run


def _family_of(sample_name: str) -> str | None:
    # Longest name wins: tts_requests_rejected_total belongs to tts_requests_rejected, not tts_requests.
    candidates = [f for f in EXPECTED if sample_name == f or sample_name.startswith(f + "_")]
    return max(candidates, key=len) if candidates else None


def test_every_family_has_its_type_and_labels(traffic: TrafficRun) -> None:
    s = traffic.scrape
    for name, (kind, _) in EXPECTED.items():
        assert s.types.get(name) == kind, f"{name}: type {s.types.get(name)}, expected {kind}"
    unexpected = {n for n in s.types if n.startswith(("tts_", "http_"))} - set(EXPECTED)
    assert not unexpected, f"undocumented families {unexpected}: add them to EXPECTED and the docs"
    for sample_name, rows in s.samples.items():
        family = _family_of(sample_name)
        if family is None:
            continue
        want = set(EXPECTED[family][1])
        if sample_name.endswith("_bucket"):
            want.add("le")
        if EXPECTED[family][0] == "summary" and not sample_name.endswith(("_sum", "_count")):
            want.add("quantile")
        for sample_labels, _ in rows:
            assert set(sample_labels) == want, f"{sample_name}: {sorted(sample_labels)}, expected {sorted(want)}"


def test_counters_moved_by_outcome(traffic: TrafficRun) -> None:
    s = traffic.scrape
    moved = {("alpha", "neutral", "ok"): 1, ("beta", "angry", "ok"): 1, ("alpha", "happy", "client_error"): 1,
             ("alpha", "sad", "server_error"): 1}
    for voice, emotions in VOICES.items():
        for emotion in emotions:
            for outcome in OUTCOMES:
                want = moved.get((voice, emotion, outcome), 0)
                got = s.value("tts_requests_total", voice=voice, emotion=emotion, outcome=outcome)
                assert got == want, (voice, emotion, outcome)
    assert len(s.series("tts_requests_total")) == sum(map(len, VOICES.values())) * len(OUTCOMES)
    for reason in REJECT_REASONS:
        assert s.value("tts_requests_rejected_total", reason=reason) == (1 if reason in ("invalid", "too_large")
                                                                          else 0)
    for reason in RESTART_REASONS:
        assert s.value("tts_worker_restarts_total", reason=reason) == 0
    # Only successful syntheses produce audio: "你好。世界。" (6 chars) and "你好" (2 chars), 10 ms per char.
    assert s.value("tts_input_characters_total") == 8
    assert s.value("tts_audio_output_seconds_total") == pytest.approx(0.08, abs=1e-6)
    assert s.value("tts_inference_seconds_total") > 0
    assert s.value("tts_cache_lookups_total", result="hit") == 0


def test_histograms_observed(traffic: TrafficRun) -> None:
    s = traffic.scrape
    for route in ROUTES:
        for fmt in FORMATS:
            for stream in ("false", "true"):
                # Failed requests are latency too: the wav route saw 200, the engine's 422, the 500 and the
                # unknown-emotion 422 (the schema 422 and the 413 never reach the route).
                want = {("/v1/synthesize", "wav", "false"): 4,
                        ("/v1/synthesize", "pcm", "true"): 1}.get((route, fmt, stream), 0)
                labels = {"route": route, "format": fmt, "stream": stream}
                assert s.value("tts_request_duration_seconds_count", **labels) == want, labels
                assert s.value("tts_request_duration_seconds_bucket", le="+Inf", **labels) == want
    assert s.value("tts_time_to_first_audio_seconds_count", route="/v1/synthesize") == 1
    assert s.value("tts_encode_duration_seconds_count") == 1  # streaming writes raw samples, no encoder
    for name in ("tts_queue_wait_seconds", "tts_real_time_factor"):
        assert s.value(f"{name}_count") == 2, name
    for stage in STAGES:
        assert s.value("tts_inference_duration_seconds_count", stage=stage) == 2
    assert s.value("tts_inference_duration_seconds_sum", stage="acoustic") > 0
    rtf = s.value("tts_real_time_factor_sum") / 2
    assert 0 < rtf < 5, "the tone engine is far faster than real time"
    # Buckets are cumulative and end in +Inf == _count.
    for name in ("tts_request_duration_seconds", "tts_real_time_factor", "tts_queue_wait_seconds"):
        by_series: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
        for labels, value in s.samples[f"{name}_bucket"]:
            key = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
            by_series.setdefault(key, []).append((float(labels["le"]), value))
        for key, buckets in by_series.items():
            counts = [v for _, v in sorted(buckets)]
            assert counts == sorted(counts), (name, key)
            assert counts[-1] == s.value(f"{name}_count", **dict(key))


def test_state_gauges_after_traffic(traffic: TrafficRun) -> None:
    s = traffic.scrape
    workers = traffic.settings.pool.workers
    assert {st: s.value("tts_workers", state=st) for st in WORKER_STATES} == {
        "starting": 0, "ready": workers, "busy": 0, "dead": 0}
    assert s.value("tts_queue_depth") == 0
    assert s.value("tts_queue_capacity") == traffic.settings.pool.queue_size
    assert s.value("tts_requests_in_progress") == 0
    assert {v: s.value("tts_model_loaded", voice=v) for v in VOICES} == {"alpha": 1, "beta": 1}
    slots = {str(i) for i in range(workers)}
    for name in ("tts_model_load_duration_seconds", "tts_worker_resident_memory_bytes",
                 "tts_worker_cpu_seconds_total"):
        assert s.label_values(name, "worker") == slots, name
        assert all(v > 0 for _, v in s.samples[name]), name
    assert min(v for _, v in s.samples["tts_worker_resident_memory_bytes"]) > 20 * 1024 * 1024
    assert s.value("tts_cache_dir_free_bytes") > 0
    assert s.value("tts_build_info", version=__version__, model_id=traffic.settings.model.model_id,
                   torch=torch.__version__) == 1


def test_http_metrics_exclude_probes_and_scrapes(traffic: TrafficRun) -> None:
    s = traffic.scrape
    by_status = {lab["status"]: v for lab, v in s.samples["http_requests_total"]
                 if lab["handler"] == "/v1/synthesize" and lab["method"] == "POST"}
    assert by_status == {"2xx": 2, "4xx": 2, "5xx": 1}
    assert s.value("http_request_duration_seconds_count", handler="/v1/synthesize", method="POST") == 5
    handlers = set()
    for name, rows in s.samples.items():
        if name.startswith("http_"):
            handlers |= {lab["handler"] for lab, _ in rows if "handler" in lab}
    assert handlers == {"/v1/synthesize", "/v1/voices"}, "probes and /metrics must stay out of http_* stats"
    assert not set(UNMEASURED) & handlers


def test_no_high_cardinality_labels(traffic: TrafficRun) -> None:
    s = traffic.scrape
    for forbidden in (SECRET_TEXT, SECRET_REQUEST_ID, SECRET_VOICE, "127.0.0.1"):
        assert forbidden not in s.text, f"{forbidden!r} leaked into /metrics"
    for name, rows in s.samples.items():
        if not name.startswith(("tts_", "http_")):
            continue
        for labels, _ in rows:
            assert set(labels) <= ALLOWED_LABELS, f"{name}: unexpected label in {sorted(labels)}"
        for label in {k for lab, _ in rows for k in lab} - {"le", "quantile"}:
            values = s.label_values(name, label)
            assert len(values) <= 16, f"{name}{{{label}}} has {len(values)} values: {sorted(values)}"
    assert s.label_values("tts_requests_total", "voice") == set(VOICES)
    assert s.label_values("tts_model_loaded", "voice") == set(VOICES)


def test_promtool_check_metrics_on_a_real_scrape(traffic: TrafficRun) -> None:
    promtool = require_tool("promtool")
    result = subprocess.run([promtool, "check", "metrics"], input=traffic.scrape.text, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout
    assert result.stderr.strip() == "", result.stderr


# ----------------------------------------------------------------- deploy files reference only real metrics

_METRIC = re.compile(r"\b((?:tts|http)_[a-zA-Z0-9_]+)\b(\s*\{([^}]*)\})?")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_BY = re.compile(r"\b(?:sum|avg|min|max|count|stddev|stdvar|group|topk|bottomk|quantile)\s+by\s*\(([^)]*)\)\s*\(")
_LABEL_VALUES = re.compile(r"label_values\(\s*([^,]+?)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)")


def _deploy_queries() -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every alert rule and every dashboard query and template variable."""
    rules = yaml.safe_load(ALERTS_YML.read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            yield f"alert {rule.get('alert') or rule.get('record')}", rule["expr"]
    dashboard = json.loads(DASHBOARD_JSON.read_text(encoding="utf-8"))
    panels = [p for top in dashboard["panels"] for p in (top.get("panels", []) if top.get("type") == "row"
                                                           else [top])]
    for panel in panels:
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r} {target.get('refId')}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable.get("type") == "query" and query:
            yield f"variable ${variable['name']}", query


def _argument(expr: str, open_at: int) -> str:
    """The text inside the parenthesis that opens at ``open_at``."""
    depth = 0
    for i in range(open_at, len(expr)):
        depth += {"(": 1, ")": -1}.get(expr[i], 0)
        if depth == 0:
            return expr[open_at + 1:i]
    raise AssertionError(f"unbalanced parentheses in {expr!r}")


def _label_problems(s: Scrape, metric: str, label: str) -> str | None:
    if label in TARGET_LABELS:
        return None
    if not s.series(metric):
        return f"metric {metric} is not exported"
    if not s.label_values(metric, label):
        return f"{metric} has no label {label!r} (has {sorted({k for lab in s.series(metric) for k in lab})})"
    return None


def deploy_reference_problems(s: Scrape) -> list[str]:
    problems: list[str] = []
    for where, expr in _deploy_queries():
        for match in _METRIC.finditer(expr):
            metric = match.group(1)
            if not s.series(metric):
                problems.append(f"{where}: metric {metric} is not in the scrape")
                continue
            for label, op, value in _MATCHER.findall(match.group(3) or ""):
                problem = _label_problems(s, metric, label)
                if problem or label in TARGET_LABELS:
                    problems += [f"{where}: {problem}"] if problem else []
                    continue
                have = s.label_values(metric, label)
                if op == "=" and value not in have:
                    problems.append(f'{where}: {metric}{{{label}="{value}"}} never exported (values {sorted(have)})')
                elif op == "=~":
                    if re.fullmatch(r"[A-Za-z0-9_/:-]+(\|[A-Za-z0-9_/:-]+)*", value):
                        missing = set(value.split("|")) - have
                        if missing:
                            problems.append(f"{where}: {metric}{{{label}=~...}} values {sorted(missing)} never "
                                            f"exported (values {sorted(have)})")
                    elif not any(re.fullmatch(value, v) for v in have):
                        problems.append(f'{where}: {metric}{{{label}=~"{value}"}} matches no exported value')
        for match in _BY.finditer(expr):
            labels = [lab.strip() for lab in match.group(1).split(",") if lab.strip()]
            inner = _argument(expr, match.end() - 1)
            for metric in {m.group(1) for m in _METRIC.finditer(inner)}:
                for label in labels:
                    problem = _label_problems(s, metric, label)
                    if problem:
                        problems.append(f"{where}: by ({label}) over {problem}")
        for match in _LABEL_VALUES.finditer(expr):
            metric = _METRIC.search(match.group(1))
            if metric is not None:
                problem = _label_problems(s, metric.group(1), match.group(2))
                if problem:
                    problems.append(f"{where}: label_values: {problem}")
    return problems


def test_deploy_files_reference_only_exported_metrics_and_labels(traffic: TrafficRun) -> None:
    queries = list(_deploy_queries())
    referenced = {m.group(1) for _, expr in queries for m in _METRIC.finditer(expr)}
    # The check must actually cover the files: the core families are all referenced somewhere.
    assert {"tts_requests_total", "tts_queue_depth", "tts_workers", "tts_request_duration_seconds_bucket",
            "tts_worker_restarts_total", "http_requests_total"} <= referenced
    assert deploy_reference_problems(traffic.scrape) == []
    # The Kubernetes autoscaling path (prometheus-adapter rules, HPA) names metrics too.
    k8s_names = {m.group(1) for path in sorted((REPO / "deploy" / "k8s").glob("*.yaml"))
                 for m in _METRIC.finditer(path.read_text(encoding="utf-8"))}
    assert "tts_queue_depth" in k8s_names
    assert {n for n in k8s_names if not traffic.scrape.series(n)} == set()


def test_alert_annotations_only_use_labels_the_expression_keeps() -> None:
    rules = yaml.safe_load(ALERTS_YML.read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            expr = rule["expr"]
            if "node_" in expr:
                continue  # node_exporter label names are not ours to check here
            kept = set(TARGET_LABELS)
            for name in (m.group(1) for m in _METRIC.finditer(expr)):
                family = _family_of(name)
                assert family is not None, f"{rule['alert']}: unknown metric {name}"
                kept |= EXPECTED[family][1]
            for by in _BY.finditer(expr):
                kept &= {lab.strip() for lab in by.group(1).split(",")}
            used = set(re.findall(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)",
                                  json.dumps(rule.get("annotations", {}))))
            assert used <= kept, f"{rule['alert']}: annotations use {sorted(used - kept)}, dropped by the expr"


def test_reference_check_catches_a_wrong_name_and_label(traffic: TrafficRun, monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    # The checker is only worth something if it fails on a typo: feed it an altered copy of the rules.
    doc = yaml.safe_load(ALERTS_YML.read_text(encoding="utf-8"))
    doc["groups"].append({"name": "broken", "rules": [
        {"alert": "Typo", "expr": 'sum by (job) (tts_request_total{job="tts-server"}) > 0'},
        {"alert": "BadLabel", "expr": 'tts_workers{job="tts-server", status="ready"} == 0'},
        {"alert": "BadValue", "expr": 'tts_worker_restarts_total{job="tts-server", reason=~"crash|oom"} > 0'},
        {"alert": "BadBy", "expr": "sum by (voice) (tts_queue_depth) > 0"},
    ]})
    broken = tmp_path / "alerts.yml"
    broken.write_text(yaml.safe_dump(doc), encoding="utf-8")
    monkeypatch.setattr(f"{__name__}.ALERTS_YML", broken)
    problems = "\n".join(deploy_reference_problems(traffic.scrape))
    assert "alert Typo: metric tts_request_total is not in the scrape" in problems
    assert "alert BadLabel: tts_workers has no label 'status'" in problems
    assert "alert BadValue: tts_worker_restarts_total{reason=~...} values ['oom']" in problems
    assert "alert BadBy: by (voice) over tts_queue_depth has no label 'voice'" in problems


# ------------------------------------------------------------------------------------ dynamic behaviour


async def test_label_sets_precreated_at_startup(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, engine={"name": "tests.engines:slow_start_engine"},
                            pool={"workers": 1}, model={"voices": ("alpha", "beta")})
    async with running_app(settings, wait_ready=False) as (app, client):
        s = await scrape(client)
        # Before any worker is ready: every series whose label values are known up front exists, at 0.
        assert {st: s.value("tts_workers", state=st) for st in WORKER_STATES} == {
            "starting": 1, "ready": 0, "busy": 0, "dead": 0}
        assert {v: s.value("tts_model_loaded", voice=v) for v in VOICES} == {"alpha": 0, "beta": 0}
        assert {r: s.value("tts_requests_rejected_total", reason=r) for r in REJECT_REASONS} == dict.fromkeys(
            REJECT_REASONS, 0)
        assert {r: s.value("tts_worker_restarts_total", reason=r) for r in RESTART_REASONS} == dict.fromkeys(
            RESTART_REASONS, 0)
        assert {r: s.value("tts_cache_lookups_total", result=r) for r in ("hit", "miss")} == {"hit": 0, "miss": 0}
        for route in ROUTES:
            assert s.value("tts_time_to_first_audio_seconds_count", route=route) == 0
            for fmt in FORMATS:
                for stream in ("false", "true"):
                    assert s.value("tts_request_duration_seconds_count", route=route, format=fmt,
                                   stream=stream) == 0
        for stage in STAGES:
            assert s.value("tts_inference_duration_seconds_count", stage=stage) == 0
        assert s.value("tts_queue_depth") == 0
        assert s.samples.get("tts_requests_total", []) == [], "voices are unknown until a worker loads"

        refused = await client.post("/v1/synthesize", json={"text": "太早"})
        assert refused.status_code == 503
        assert (await scrape(client)).value("tts_requests_rejected_total", reason="not_ready") == 1

        assert await app.state.tts.pool.wait_ready(60)

        async def voices_precreated() -> bool:
            return len((await scrape(client)).series("tts_requests_total")) > 0

        await wait_for(voices_precreated)
        s = await scrape(client)
        for voice, emotions in VOICES.items():
            for emotion in emotions:
                for outcome in OUTCOMES:
                    assert s.value("tts_requests_total", voice=voice, emotion=emotion, outcome=outcome) == 0
        assert len(s.series("tts_requests_total")) == 5 * len(OUTCOMES)
        assert {v: s.value("tts_model_loaded", voice=v) for v in VOICES} == {"alpha": 1, "beta": 1}
        assert s.value("tts_workers", state="ready") == 1
        assert s.value("tts_model_load_duration_seconds", worker="0") >= 1.5  # SlowStartEngine's warm-up


async def test_queue_depth_rises_under_load_and_returns_to_zero(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, pool={"workers": 1, "queue_size": 3})
    async with running_app(settings) as (app, client):
        pool: WorkerPool = app.state.tts.pool
        # The first job is long so that the queue is still full when the overflow request arrives, however slowly
        # a loaded machine scrapes (a 0.5 s job let a queued one start before the overflow, admitting it).
        running = asyncio.create_task(client.post("/v1/synthesize", json={"text": "[sleep=3] 一"}))

        async def busy() -> bool:
            return (await scrape(client)).value("tts_requests_in_progress") == 1

        await wait_for(busy)
        queued = [asyncio.create_task(client.post("/v1/synthesize", json={"text": f"[sleep=0.5] 二{i}"}))
                  for i in range(3)]

        async def full() -> bool:
            return (await scrape(client)).value("tts_queue_depth") == 3

        await wait_for(full)
        s = await scrape(client)
        assert s.value("tts_queue_capacity") == 3
        assert s.value("tts_workers", state="busy") == 1
        assert s.value("tts_workers", state="ready") == 0
        overflow = await client.post("/v1/synthesize", json={"text": "三"})
        assert overflow.status_code == 503
        assert (await scrape(client)).value("tts_requests_rejected_total", reason="queue_full") == 1

        depths = []
        while not all(t.done() for t in [running, *queued]):
            depths.append((await scrape(client)).value("tts_queue_depth"))
            await asyncio.sleep(0.05)
        assert all(r.status_code == 200 for r in [await running, *await asyncio.gather(*queued)])
        assert depths == sorted(depths, reverse=True), "the queue only drains once admission stops"
        s = await scrape(client)
        assert s.value("tts_queue_depth") == 0
        assert s.value("tts_requests_in_progress") == 0
        assert s.value("tts_workers", state="ready") == 1
        assert s.value("tts_workers", state="busy") == 0
        assert s.value("tts_requests_total", voice="alpha", emotion="neutral", outcome="ok") == 4
        assert s.value("tts_requests_total", voice="alpha", emotion="neutral", outcome="rejected") == 1
        # One job started at once; the three queued ones waited for the jobs ahead of them (3 s, then 0.5 s each).
        assert s.value("tts_queue_wait_seconds_count") == 4
        assert s.value("tts_queue_wait_seconds_bucket", le="0.25") == 1
        assert s.value("tts_queue_wait_seconds_sum") > 2.0
        # Four admitted requests all waited or ran for at least 0.5 s; only the fast 503 lands under 0.25 s.
        assert s.value("tts_request_duration_seconds_count", route="/v1/synthesize", format="wav",
                       stream="false") == 5
        assert s.value("tts_request_duration_seconds_bucket", route="/v1/synthesize", format="wav",
                       stream="false", le="0.25") == 1
        assert pool.stats().queue_depth == 0


async def test_restarts_counted_after_recycle_and_kill9(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, pool={"workers": 1, "max_jobs_per_worker": 2})
    async with running_app(settings) as (app, client):
        pool: WorkerPool = app.state.tts.pool
        for _ in range(2):
            assert (await client.post("/v1/synthesize", json={"text": "好"})).status_code == 200

        async def recycled() -> bool:
            s = await scrape(client)
            return s.value("tts_worker_restarts_total", reason="recycle_jobs") == 1 and s.value(
                "tts_workers", state="ready") == 1

        await wait_for(recycled)
        pid = pool.stats().workers[0].pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        states_seen: set[str] = set()

        async def replaced() -> bool:
            s = await scrape(client)
            states_seen.update(st for st in WORKER_STATES if s.value("tts_workers", state=st) > 0)
            return s.value("tts_worker_restarts_total", reason="crash") == 1 and s.value(
                "tts_workers", state="ready") == 1

        await wait_for(replaced)
        assert "starting" in states_seen, "the replacement worker is visible while it loads"
        s = await scrape(client)
        assert {r: s.value("tts_worker_restarts_total", reason=r) for r in RESTART_REASONS} == {
            "crash": 1, "timeout": 0, "recycle_jobs": 1, "recycle_memory": 0}
        assert pool.stats().workers[0].pid != pid
        assert s.label_values("tts_worker_resident_memory_bytes", "worker") == {"0"}
        assert s.value("tts_model_loaded", voice="alpha") == 1
        assert (await client.post("/v1/synthesize", json={"text": "好"})).status_code == 200
