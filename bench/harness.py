"""Shared pieces of the benchmarks: engine choice, a real server subprocess, an httpx load generator, statistics.

All traffic stays on 127.0.0.1. Every run is bounded in time (per level) and in outstanding requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
PARITY_MODEL = REPO.parent / "shared" / "reference" / "sambert-parity" / "model"
HOST = "127.0.0.1"

#: Varied everyday sentences (about 1-2.5 s of speech each); varied so that nothing can be served from a cache.
SENTENCES = (
    "欢迎使用语音合成服务。",
    "今天天气很好，我们一起去公园散步吧。",
    "请在听到提示音后留言，我们会尽快回复您。",
    "这是一段用于测试服务器吞吐量的中文句子。",
    "会议将在下午三点开始，请大家准时参加。",
    "列车即将到站，请带好您的随身物品。",
)
#: Three sentences: streaming sends the first one as soon as it is ready, so TTFA < total latency.
STREAM_TEXT = "今天天气很好。我们一起去公园散步吧。晚上回家再一起吃饭。"


@dataclass(frozen=True)
class EngineChoice:
    """Which engine the servers run, and how to make request texts for it."""

    label: str  # "sambert" or "tone"
    settings: dict[str, Any]  # [engine] and [model] sections
    #: The tone engine has no real cost; a sleep per sentence makes its jobs take as long as real ones.
    sleep_s: float = 0.0

    def text(self, i: int) -> str:
        base = SENTENCES[i % len(SENTENCES)]
        return f"[sleep={self.sleep_s}] {base}" if self.label == "tone" else base

    def stream_text(self) -> str:
        return f"[sleep={self.sleep_s}] {STREAM_TEXT}" if self.label == "tone" else STREAM_TEXT

    def describe(self) -> str:
        if self.label == "sambert":
            return f"Sambert-HifiGan (native engine, parity model at {self.settings['model']['model_dir']})"
        return f"deterministic tone test engine sleeping {self.sleep_s}s per sentence (stand-in for Sambert)"


def sambert_choice(threads: int = 1) -> EngineChoice:
    return EngineChoice("sambert", {"engine": {"name": "sambert"},
                                    "model": {"model_dir": str(PARITY_MODEL), "torch_threads": threads}})


def tone_choice(sleep_s: float) -> EngineChoice:
    return EngineChoice("tone", {"engine": {"name": "tests.engines:tone_engine"}, "model": {}}, sleep_s)


# --- processes ----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def toml_text(sections: dict[str, dict[str, Any]]) -> str:
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTS_")}
    # Spawned workers import tests.engines for the tone engine.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), str(REPO / "src"), env.get("PYTHONPATH")]))
    return env


class Process:
    """A server subprocess (``tts-server serve`` or the naive server), stopped with SIGTERM on exit."""

    def __init__(self, command: list[str], url: str, log: Path) -> None:
        self.url = url
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=child_env(), cwd=REPO)

    def wait_ready(self, workers: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}: {self.tail()}")
                with contextlib.suppress(httpx.TransportError, ValueError, KeyError):
                    r = client.get("/health")
                    if r.status_code == 200 and r.json()["workers"]["ready"] >= workers:
                        return
                time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout_s}s: {self.tail()}")

    def cpu_seconds(self) -> float:
        """CPU time used so far by the server and its workers (live ones; replaced workers are not counted)."""
        import psutil

        total = 0.0
        try:
            root = psutil.Process(self.proc.pid)
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    t = proc.cpu_times()
                    total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
        return total

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@contextlib.contextmanager
def tts_server(engine: EngineChoice, workers: int, *, queue_size: int = 16, job_timeout_s: float = 120.0,
               startup_timeout_s: float = 300.0, pool_extra: dict[str, Any] | None = None) -> Iterator[Process]:
    with tempfile.TemporaryDirectory(prefix="tts-bench-") as tmp:
        port = free_port()
        config = Path(tmp) / "server.toml"
        model = {"download_dir": str(Path(tmp) / "cache"), **engine.settings["model"]}
        config.write_text(toml_text({
            "server": {"host": HOST, "port": port, "log_level": "warning", "drain_delay_s": 0.0},
            "pool": {"workers": workers, "queue_size": queue_size, "job_timeout_s": job_timeout_s,
                     "startup_timeout_s": startup_timeout_s, **(pool_extra or {})},
            "engine": engine.settings["engine"],
            "model": model,
        }))
        script = Path(sys.executable).with_name("tts-server")
        prefix = [str(script)] if script.exists() else [sys.executable, "-m", "tts_server.cli"]
        proc = Process([*prefix, "serve", "--config", str(config)], f"http://{HOST}:{port}", Path(tmp) / "log")
        try:
            proc.wait_ready(workers, startup_timeout_s)
            yield proc
        finally:
            proc.stop()


@contextlib.contextmanager
def naive_server(engine: EngineChoice, threads: int, startup_timeout_s: float = 300.0) -> Iterator[Process]:
    with tempfile.TemporaryDirectory(prefix="tts-naive-") as tmp:
        port = free_port()
        command = [sys.executable, str(REPO / "bench" / "naive.py"), "--port", str(port),
                   "--engine", engine.settings["engine"]["name"], "--threads", str(threads)]
        if "model_dir" in engine.settings["model"]:
            command += ["--model-dir", engine.settings["model"]["model_dir"]]
        proc = Process(command, f"http://{HOST}:{port}", Path(tmp) / "log")
        try:
            proc.wait_ready(1, startup_timeout_s)
            yield proc
        finally:
            proc.stop()


# --- load ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    started: float
    latency: float
    status: int  # 0 = transport error or client timeout
    audio_s: float = 0.0
    ttfa: float | None = None  # streaming only: time to the first audio byte


async def request(client: httpx.AsyncClient, text: str, *, stream: bool = False) -> Sample:
    body = {"text": text, "format": "pcm", "stream": stream}
    t0 = time.monotonic()
    try:
        if not stream:
            r = await client.post("/v1/synthesize", json=body)
            audio_s = float(r.headers.get("x-audio-duration", 0.0)) if r.status_code == 200 else 0.0
            return Sample(t0, time.monotonic() - t0, r.status_code, audio_s)
        ttfa = None
        nbytes = 0
        async with client.stream("POST", "/v1/synthesize", json=body) as resp:
            rate = int(resp.headers.get("x-sample-rate", 16000))
            async for chunk in resp.aiter_raw():
                if chunk and ttfa is None:
                    ttfa = time.monotonic() - t0
                nbytes += len(chunk)
            status = resp.status_code
        audio_s = nbytes / 2 / rate if status == 200 else 0.0
        return Sample(t0, time.monotonic() - t0, status, audio_s, ttfa if status == 200 else None)
    except (httpx.TransportError, httpx.TimeoutException):
        return Sample(t0, time.monotonic() - t0, 0)


def make_client(url: str, timeout_s: float = 120.0) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    return httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits)


async def closed_loop(url: str, concurrency: int, duration_s: float, engine: EngineChoice, *,
                      stream: bool = False) -> tuple[list[Sample], float]:
    """``concurrency`` clients, each sending its next request as soon as the previous one is answered, for
    ``duration_s``; requests in flight at the end are awaited. Returns the samples and the wall time."""
    counter = iter(range(10**9))
    samples: list[Sample] = []
    async with make_client(url) as client:
        start = time.monotonic()

        async def user() -> None:
            while True:  # at least one request per client
                text = engine.stream_text() if stream else engine.text(next(counter))
                samples.append(await request(client, text, stream=stream))
                if time.monotonic() - start >= duration_s:
                    return

        await asyncio.gather(*(user() for _ in range(concurrency)))
        return samples, time.monotonic() - start


async def open_loop(url: str, rate: float, duration_s: float, engine: EngineChoice, *, seed: int = 1,
                    max_outstanding: int = 200) -> tuple[list[Sample], float]:
    """Poisson arrivals at ``rate`` per second for ``duration_s``, whatever the server is doing (arrivals beyond
    ``max_outstanding`` in flight are counted as client-side drops, status -1, to keep the run bounded)."""
    rng = random.Random(seed)
    tasks: list[asyncio.Task[Sample]] = []
    dropped: list[Sample] = []
    async with make_client(url) as client:
        start = time.monotonic()
        next_at = start
        i = 0
        while True:
            next_at += rng.expovariate(rate)
            if next_at - start > duration_s:
                break
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            if sum(1 for t in tasks if not t.done()) >= max_outstanding:
                dropped.append(Sample(time.monotonic(), 0.0, -1))
                continue
            tasks.append(asyncio.create_task(request(client, engine.text(i))))
            i += 1
        samples = list(await asyncio.gather(*tasks)) + dropped
        return samples, time.monotonic() - start


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(samples: Sequence[Sample], wall_s: float) -> dict[str, Any]:
    ok = [s for s in samples if s.status == 200]
    rejected = [s for s in samples if s.status == 503]
    errors = [s for s in samples if s.status not in (200, 503)]
    lat = [s.latency for s in ok]
    rtf = [s.latency / s.audio_s for s in ok if s.audio_s > 0]
    ttfa = [s.ttfa for s in ok if s.ttfa is not None]
    audio = sum(s.audio_s for s in ok)

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 1)

    return {
        "requests": len(samples), "ok": len(ok), "rejected_503": len(rejected), "errors": len(errors),
        "error_statuses": sorted({s.status for s in errors}),
        "wall_s": round(wall_s, 2),
        "throughput_rps": round(len(ok) / wall_s, 3) if wall_s else None,
        "audio_s_per_s": round(audio / wall_s, 3) if wall_s else None,
        "latency_ms": {"p50": ms(percentile(lat, 50)), "p95": ms(percentile(lat, 95)), "p99": ms(percentile(lat, 99)),
                       "mean": ms(statistics.fmean(lat)) if lat else None},
        "rtf_p50": round(v, 3) if (v := percentile(rtf, 50)) is not None else None,
        "ttfa_ms": {"p50": ms(percentile(ttfa, 50)), "p95": ms(percentile(ttfa, 95))} if ttfa else None,
        "rejection_latency_ms": {"p50": ms(percentile([s.latency for s in rejected], 50)),
                                 "p99": ms(percentile([s.latency for s in rejected], 99))} if rejected else None,
    }


def machine() -> dict[str, Any]:
    import platform

    load = os.getloadavg()
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "loadavg_at_start": [round(x, 2) for x in load]}
