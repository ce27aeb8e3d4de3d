"""Resident memory of the API process and of each worker, under several memory settings side by side.

For each configuration a real server (parity model, ``--workers`` workers) is started and its processes are
measured three times: when ready, after a run of distinct everyday sentences, and after one long request. Worker CPU
time per second of audio over the same requests shows what a smaller oneDNN primitive cache costs in recompilation.
RSS counts shared pages (torch's libraries) in every process; USS is what a process alone holds, PSS its fair share.

    python bench/memory.py                # defaults vs one-pass vocoding, no memory release, direct conv
    python bench/memory.py --requests 24
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import PARITY_MODEL, SENTENCES, sambert_choice, tts_server

MiB = 1024 * 1024

#: name -> [pool] settings. "one pass" runs the vocoder over each sentence at once (``model.vocoder_chunk_frames =
#: 0``, the engine before fixed-size pieces) with the 64-entry oneDNN cache that was the default then, or with
#: torch's own 1024; "before" is a worker as it was before the memory settings (no allocator calls, torch's cache,
#: one pass).
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "one pass 64": {"onednn_primitive_cache": 64},
    "one pass 1024": {"onednn_primitive_cache": 1024},
    "before": {"release_memory": False, "onednn_primitive_cache": 1024},
    "direct conv": {},
    "cache 256": {"onednn_primitive_cache": 256},
    "cache 64": {"onednn_primitive_cache": 64},
}
#: name -> [model] settings on top of the parity model's: the vocoder's fast convolutions keep their transformed
#: kernels (``model.vocoder_fast_conv``), so "direct conv" shows what they cost in memory.
MODEL_EXTRA: dict[str, dict[str, Any]] = {
    "one pass 64": {"vocoder_chunk_frames": 0},
    "one pass 1024": {"vocoder_chunk_frames": 0},
    "before": {"vocoder_chunk_frames": 0},
    "direct conv": {"vocoder_fast_conv": False},
}

_EXTRA = ("请注意，本次列车的终点站是北京南站，", "下一站是天津，", "需要换乘的旅客请提前做好准备。")
LONG_TEXT = "".join(SENTENCES) * 4  # about 300 characters, several sentences of distinct lengths


@dataclass(frozen=True)
class Snapshot:
    api: psutil._pslinux.pfullmem  # type: ignore[name-defined]
    workers: tuple[psutil._pslinux.pfullmem, ...]  # type: ignore[name-defined]
    api_has_torch: bool


def _snapshot(pid: int) -> Snapshot:
    root = psutil.Process(pid)
    workers = []
    for child in root.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            if any("torch" in m.path for m in child.memory_maps()):
                workers.append(child.memory_full_info())
    has_torch = any("libtorch" in m.path for m in root.memory_maps())
    return Snapshot(root.memory_full_info(), tuple(workers), has_torch)


def _worker_cpu(pid: int) -> float:
    total = 0.0
    for child in psutil.Process(pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            t = child.cpu_times()
            total += t.user + t.system
    return total


def _texts(n: int) -> list[str]:
    # Distinct texts of distinct lengths: each one brings convolution shapes the previous ones did not have.
    base = [*SENTENCES, *_EXTRA]
    return [base[i % len(base)] + base[(i * 5 + 1) % len(base)] * (i // len(base)) for i in range(n)]


def _synth(client: httpx.Client, text: str) -> float:
    r = client.post("/v1/synthesize", json={"text": text, "format": "pcm"})
    r.raise_for_status()
    return float(r.headers["X-Audio-Duration"])


def measure(name: str, pool: dict[str, Any], workers: int, requests: int) -> dict[str, Any]:
    choice = sambert_choice(1)
    choice.settings["model"].update(MODEL_EXTRA.get(name, {}))
    with tts_server(choice, workers, pool_extra=pool) as server:
        pid = server.proc.pid
        out: dict[str, Any] = {"started": _snapshot(pid)}
        with httpx.Client(base_url=server.url, timeout=300.0) as client:
            cpu0 = _worker_cpu(pid)
            audio = sum(_synth(client, text) for text in _texts(requests))
            out["cpu_per_audio_s"] = (_worker_cpu(pid) - cpu0) / audio
            out["after requests"] = _snapshot(pid)
            _synth(client, LONG_TEXT)
            out["after long"] = _snapshot(pid)
        out["name"] = name
        return out


def _row(label: str, snap: Snapshot) -> str:
    def mb(value: float) -> str:
        return f"{value / MiB:7.0f}"

    worker_rss = max((w.rss for w in snap.workers), default=0)
    worker_uss = max((w.uss for w in snap.workers), default=0)
    worker_pss = max((w.pss for w in snap.workers), default=0)
    return (f"  {label:<15}{mb(snap.api.rss)}{mb(snap.api.uss)}   {mb(worker_rss)}{mb(worker_uss)}{mb(worker_pss)}"
            f"   {'yes' if snap.api_has_torch else 'no'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--requests", type=int, default=12, help="distinct sentences per configuration")
    parser.add_argument("--only", nargs="*", choices=sorted(CONFIGS), help="configurations to run")
    args = parser.parse_args(argv)
    if not PARITY_MODEL.is_dir():
        print(f"parity model not found at {PARITY_MODEL}", file=sys.stderr)
        return 2
    results = [measure(name, CONFIGS[name], args.workers, args.requests) for name in (args.only or CONFIGS)]
    print(f"Resident memory (MiB), parity model, {args.workers} workers, 1 torch thread; worker = the largest one")
    print(f"  {'':<15}{'API rss':>7}{'uss':>7}   {'wrk rss':>7}{'uss':>7}{'pss':>7}   API imports torch")
    for res in results:
        print(f"{res['name']}  (pool: {CONFIGS[res['name']] or 'defaults'}, model: {MODEL_EXTRA.get(res['name'], {})})")
        for phase in ("started", "after requests", "after long"):
            print(_row(phase, res[phase]))
    base = next((r for r in results if r["name"] == "before"), None)
    print("\nWorker CPU seconds per second of audio over the distinct sentences (lower is better):")
    for res in results:
        ratio = f"  ({res['cpu_per_audio_s'] / base['cpu_per_audio_s']:.2f}x 'before')" if base else ""
        print(f"  {res['name']:<14} {res['cpu_per_audio_s']:.3f}{ratio}")
    if base:
        print("\nWorker RSS after the long request, ratio to 'before':")
        for res in results:
            ratio = max(w.rss for w in res["after long"].workers) / max(w.rss for w in base["after long"].workers)
            print(f"  {res['name']:<14} {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
