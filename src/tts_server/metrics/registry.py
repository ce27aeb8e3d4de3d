"""The server's metrics: one registry per app, passed in explicitly (no global default registry).

Event metrics (histograms, counters) are recorded by the API layer as requests finish. State metrics (queue,
workers, model, resources) are read from the pool at scrape time by a custom collector, so they can never drift
from the truth.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tts_server import __version__
from tts_server.config import Settings
from tts_server.inference.audio import FORMATS
from tts_server.inference.engine import STAGES
from tts_server.inference.pool import RESTART_REASONS, WORKER_STATES, PoolStats, SynthesisOutcome, WorkerState

#: Seconds, for TTS on CPU: a short sentence takes ~0.1 s, a long paragraph under load a minute or two.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0)
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
ENCODE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)

OUTCOMES = ("ok", "client_error", "server_error", "timeout", "rejected", "cancelled")
REJECT_REASONS = ("queue_full", "rate_limited", "not_ready", "too_large", "invalid")
ROUTES = ("/v1/synthesize", "/v1/audio/speech")
#: The incremental-text WebSocket: a route of ``tts_time_to_first_audio_seconds`` only (its sessions are counted in
#: ``tts_ws_sessions_total``, not in the per-request duration histogram).
WS_ROUTE = "/v1/tts/ws"
#: How a WebSocket session ended (``tts_ws_sessions_total{outcome}``).
WS_OUTCOMES = ("ok", "disconnected", "idle_timeout", "unauthorized", "client_error", "rejected", "server_error",
               "timeout")


class _PoolCollector(Collector):
    def __init__(self, stats: Callable[[], PoolStats | None], settings: Settings,
                 voices: Callable[[], Sequence[str]]) -> None:
        self._stats = stats
        self._settings = settings
        self._voices = voices
        self._procs: dict[int, psutil.Process] = {}

    def describe(self) -> Iterable[Metric]:
        return []  # collected lazily; describing would force a pool read at registration time

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        depth = GaugeMetricFamily("tts_queue_depth", "Jobs waiting for a worker.")
        capacity = GaugeMetricFamily("tts_queue_capacity", "Maximum jobs waiting before requests are refused.")
        in_progress = GaugeMetricFamily("tts_requests_in_progress", "Jobs running on workers right now.")
        workers = GaugeMetricFamily("tts_workers", "Worker processes by state.", labels=["state"])
        loaded = GaugeMetricFamily("tts_model_loaded", "1 when a ready worker serves this voice.", labels=["voice"])
        load_s = GaugeMetricFamily("tts_model_load_duration_seconds", "Engine load and warm-up time per worker.",
                                   labels=["worker"])
        rss = GaugeMetricFamily("tts_worker_resident_memory_bytes", "Resident memory of each worker process.",
                                labels=["worker"])
        cpu = CounterMetricFamily("tts_worker_cpu_seconds", "CPU time used by each worker process.",
                                  labels=["worker"])
        restarts = CounterMetricFamily("tts_worker_restarts", "Worker replacements by reason.", labels=["reason"])
        if stats is not None:
            depth.add_metric([], stats.queue_depth)
            capacity.add_metric([], stats.queue_capacity)
            in_progress.add_metric([], stats.in_progress)
            for state in WORKER_STATES:
                workers.add_metric([state], stats.count(state))
            serving = stats.count(WorkerState.READY) + stats.count(WorkerState.BUSY) > 0
            # Until a worker has reported its voices, the configured ones are the voices expected, at 0, so a
            # model that never loads shows up as not loaded instead of as no data.
            for voice in self._voices() or self._settings.model.voices:
                loaded.add_metric([voice], 1.0 if serving else 0.0)
            live_pids = set()
            for w in stats.workers:
                label = str(w.slot)
                if w.load_seconds is not None:
                    load_s.add_metric([label], w.load_seconds)
                if w.pid is None or w.state not in (WorkerState.READY, WorkerState.BUSY):
                    continue
                live_pids.add(w.pid)
                proc = self._procs.get(w.pid)
                try:
                    if proc is None:
                        proc = self._procs[w.pid] = psutil.Process(w.pid)
                    with proc.oneshot():
                        rss.add_metric([label], proc.memory_info().rss)
                        times = proc.cpu_times()
                        cpu.add_metric([label], times.user + times.system)
                except psutil.Error:
                    continue
            for pid in set(self._procs) - live_pids:
                del self._procs[pid]
            for reason in RESTART_REASONS:
                restarts.add_metric([reason], stats.restarts.get(reason, 0))
        yield from (depth, capacity, in_progress, workers, loaded, load_s, rss, cpu, restarts)
        # The name predates the setting's rename to model.download_dir; kept so dashboards and alerts keep working.
        free = GaugeMetricFamily("tts_cache_dir_free_bytes",
                                 "Free disk space where models are downloaded (model.download_dir).")
        download_dir = self._settings.model.download_dir
        with contextlib.suppress(OSError):
            free.add_metric([], shutil.disk_usage(_existing_parent(download_dir)).free)
        yield free


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _torch_version() -> str:
    # From the installed distribution's metadata: importing torch just for its version would add ~180 MB to the
    # API process, which never runs a model (the workers do).
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class ServerMetrics:
    """Every ``tts_*`` metric of one server instance, on its own registry."""

    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._settings = settings
        self._stats: Callable[[], PoolStats | None] = lambda: None
        self._voice_names: Callable[[], Sequence[str]] = lambda: ()
        r = self.registry
        self.request_duration = Histogram(
            "tts_request_duration_seconds", "Synthesis request latency, admission to last byte.",
            ["route", "format", "stream"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("tts_queue_wait_seconds", "Time a job waited for a worker.",
                                    buckets=STAGE_BUCKETS, registry=r)
        self.inference = Histogram("tts_inference_duration_seconds", "Time per synthesis stage in the worker.",
                                   ["stage"], buckets=STAGE_BUCKETS, registry=r)
        self.encode = Histogram("tts_encode_duration_seconds", "Time to encode audio into the response format.",
                                buckets=ENCODE_BUCKETS, registry=r)
        self.ttfa = Histogram("tts_time_to_first_audio_seconds", "Streaming: admission to first audio byte.",
                              ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.rtf = Histogram("tts_real_time_factor", "Inference seconds per second of audio produced.",
                             buckets=RTF_BUCKETS, registry=r)
        self.requests = Counter("tts_requests", "Synthesis requests by outcome.", ["voice", "emotion", "outcome"],
                                registry=r)
        self.rejected = Counter("tts_requests_rejected", "Requests refused before synthesis.", ["reason"],
                                registry=r)
        self.audio_seconds = Counter("tts_audio_output_seconds", "Seconds of audio produced.", registry=r)
        self.inference_seconds = Counter("tts_inference_seconds", "Worker seconds spent synthesising.",
                                         registry=r)
        self.input_chars = Counter("tts_input_characters", "Characters of text synthesised.", registry=r)
        self.cache_lookups = Counter("tts_cache_lookups", "Audio cache lookups.", ["result"], registry=r)
        self.ws_open = Gauge("tts_ws_sessions_open", "WebSocket sessions open now.", registry=r)
        self.ws_sessions = Counter("tts_ws_sessions", "WebSocket sessions by how they ended.", ["outcome"],
                                   registry=r)
        self.ws_audio_sent = Counter("tts_ws_audio_sent_seconds", "Seconds of audio sent over WebSockets.",
                                     registry=r)
        self.build_info = Gauge("tts_build_info", "Build information.", ["version", "model_id", "torch"],
                                registry=r)
        self.build_info.labels(__version__, settings.model.model_id, _torch_version()).set(1)
        for reason in REJECT_REASONS:
            self.rejected.labels(reason)
        for result in ("hit", "miss"):
            self.cache_lookups.labels(result)
        for stage in STAGES:
            self.inference.labels(stage)
        for outcome in WS_OUTCOMES:
            self.ws_sessions.labels(outcome)
        self.ttfa.labels(WS_ROUTE)
        for route in ROUTES:
            self.ttfa.labels(route)
            for fmt in FORMATS:
                for stream in ("false", "true"):
                    self.request_duration.labels(route, fmt, stream)
        self.registry.register(_PoolCollector(lambda: self._stats(), settings, lambda: self._voice_names()))

    def bind_pool(self, stats: Callable[[], PoolStats], voices: Callable[[], Mapping[str, object]]) -> None:
        """Attach the pool whose state the gauges report."""
        self._stats = stats
        self._voice_names = lambda: tuple(voices())

    def precreate_voice_series(self, voices: Mapping[str, Sequence[str]]) -> None:
        """Create every voice/emotion/outcome series at 0 so ``increase()`` sees the first burst."""
        for voice, emotions in voices.items():
            for emotion in emotions:
                for outcome in OUTCOMES:
                    self.requests.labels(voice, emotion, outcome)

    def count_rejection(self, reason: str | None) -> None:
        """Count a request refused before synthesis (None: the error is not a rejection, e.g. a 401)."""
        if reason is not None:
            self.rejected.labels(reason).inc()

    def observe_synthesis(self, outcome: SynthesisOutcome, characters: int) -> None:
        self.queue_wait.observe(outcome.queue_wait_seconds)
        for stage, seconds in outcome.stage_seconds.items():
            if stage in STAGES:
                self.inference.labels(stage).observe(seconds)
        self.audio_seconds.inc(outcome.audio_seconds)
        self.inference_seconds.inc(outcome.inference_seconds)
        self.input_chars.inc(characters)
        if outcome.audio_seconds > 0:
            self.rtf.observe(outcome.inference_seconds / outcome.audio_seconds)
