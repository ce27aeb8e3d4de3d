"""Load benchmark of tts-server: real ``tts-server serve`` processes, real HTTP on 127.0.0.1, httpx async clients.

    .venv/bin/python bench/load.py [--engine auto|sambert|tone] [--levels 1 2 4 8 16] [--duration 10]
                                   [--workers 1 2] [--rates 0.5 1.0 1.5 3.0] [--out bench/results/load.json]

In one run, side by side:
- closed loop: for each worker count, a concurrency sweep (N clients, each sending its next request when the
  previous one is answered) -> throughput (requests/s, audio-seconds/s), p50/p95/p99 latency, RTF, errors and
  503 rejections; streaming requests at a few concurrencies -> time to first audio (TTFA);
- open loop: Poisson arrivals at multiples of the measured peak throughput of the largest pool -> latency of
  admitted requests and fast rejections past capacity;
- the scaling ratio of the largest worker count against 1 worker (peak throughput, same engine);
- the naive deployment (bench/naive.py: thread per request, a lock around one model copy) under the same load;
- the per-request overhead of HTTP + pool against a direct engine call (bench/overhead.py).

Writes a JSON result and, when matplotlib is installed, a PNG plot next to it. The engine is the native Sambert
engine on the parity model when it loads (``auto``), else the tone test engine with per-sentence sleeps as long
as a real synthesis; the output says which.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "src")]

from bench.harness import (  # noqa: E402
    PARITY_MODEL,
    EngineChoice,
    Process,
    closed_loop,
    machine,
    naive_server,
    open_loop,
    sambert_choice,
    summarize,
    tone_choice,
    tts_server,
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def pick_engine(requested: str, tone_sleep: float) -> tuple[EngineChoice, str | None]:
    """The engine to benchmark, and why Sambert was not used (None when it was)."""
    if requested == "tone":
        return tone_choice(tone_sleep), "tone engine requested"
    if not PARITY_MODEL.is_dir():
        if requested == "sambert":
            raise SystemExit(f"model directory {PARITY_MODEL} not found")
        return tone_choice(tone_sleep), f"{PARITY_MODEL} not found"
    engine = sambert_choice()
    try:
        with tts_server(engine, workers=1, startup_timeout_s=180):
            pass
    except RuntimeError as exc:
        if requested == "sambert":
            raise
        return tone_choice(tone_sleep), f"sambert server did not start: {exc}"
    return engine, None


def line(prefix: str, s: dict[str, Any]) -> str:
    lat = s["latency_ms"]
    ttfa = f" ttfa p50 {s['ttfa_ms']['p50']:.0f} ms" if s.get("ttfa_ms") else ""
    rej = ""
    if s["rejected_503"]:
        rej = f" rejected {s['rejected_503']} (p99 {s['rejection_latency_ms']['p99']:.1f} ms)"
    p50 = f"{lat['p50']:.0f}" if lat["p50"] is not None else "-"
    p95 = f"{lat['p95']:.0f}" if lat["p95"] is not None else "-"
    p99 = f"{lat['p99']:.0f}" if lat["p99"] is not None else "-"
    return (f"{prefix}: {s['ok']}/{s['requests']} ok, {s['throughput_rps']:.2f} req/s, {s['audio_s_per_s']:.2f} "
            f"audio-s/s, p50/p95/p99 {p50}/{p95}/{p99} ms, RTF {s['rtf_p50']}, errors {s['errors']}{rej}{ttfa}")


def level(server: Process, coro_factory: Any, key: str, value: float) -> dict[str, Any]:
    """Run one load level against ``server``; adds the CPU cores the server used and the machine's load."""
    cpu0 = server.cpu_seconds()
    samples, wall = asyncio.run(coro_factory())
    row = {key: value, **summarize(samples, wall)}
    row["server_cpu_cores"] = round((server.cpu_seconds() - cpu0) / wall, 2) if wall else None
    row["loadavg_1m"] = round(os.getloadavg()[0], 2)
    return row


def warm(server: Process, workers: int, engine: EngineChoice) -> None:
    """Untimed requests so that every worker has run the text frontend once (lazy dictionaries, allocator)."""
    for _ in range(2):
        asyncio.run(closed_loop(server.url, workers, 0.0, engine))
        asyncio.run(closed_loop(server.url, workers, 0.0, engine, stream=True))


def peak(rows: list[dict[str, Any]], key: str = "throughput_rps") -> float:
    return max((r[key] or 0.0) for r in rows)


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = datetime.datetime.now(datetime.UTC)
    result: dict[str, Any] = {"started_utc": started.isoformat(timespec="seconds"), "machine": machine(),
                              "shared_machine_note": "other jobs ran on the same cores during the run",
                              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    engine, why_not = pick_engine(args.engine, args.tone_sleep)
    result["engine"] = {"label": engine.label, "description": engine.describe(), "sambert_unavailable": why_not}
    log(f"engine: {engine.describe()}" + (f" ({why_not})" if why_not else ""))
    top = max(args.workers)

    # Every server is up for the whole run and the levels interleave (1 worker, 2 workers, naive at the same
    # concurrency, one after the other), so slow drifts in the background load of a shared machine hit all
    # of them alike. An idle server costs memory, not CPU.
    with contextlib.ExitStack() as stack:
        servers: dict[str, Process] = {}
        for workers in args.workers:
            servers[str(workers)] = stack.enter_context(tts_server(engine, workers, queue_size=args.queue_size))
            warm(servers[str(workers)], workers, engine)
        if not args.skip_naive:
            servers["naive"] = stack.enter_context(naive_server(engine, threads=args.naive_threads))
            warm(servers["naive"], 1, engine)
        log("servers ready: " + ", ".join(servers))

        closed: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
        for c in args.levels:
            for name, server in servers.items():
                if name == "naive" and c not in args.naive_levels:
                    continue
                row = level(server, lambda s=server, c=c: closed_loop(s.url, c, args.duration, engine),
                            "concurrency", c)
                log(line(f"{name if name == 'naive' else name + 'w'} c={c}", row))
                closed[name].append(row)

        pools: dict[str, Any] = {}
        for workers in args.workers:
            pools[str(workers)] = {"queue_size": args.queue_size, "closed": closed[str(workers)]}
        entry = pools[str(top)]
        server = servers[str(top)]
        entry["stream"] = []
        for c in args.stream_levels:
            row = level(server, lambda c=c: closed_loop(server.url, c, args.duration, engine, stream=True),
                        "concurrency", c)
            log(line(f"{top}w c={c} stream", row))
            entry["stream"].append(row)
        capacity = peak(entry["closed"])
        entry["capacity_rps"] = capacity
        entry["open"] = []
        for x in args.rates:
            row = level(server, lambda x=x: open_loop(server.url, capacity * x, args.open_duration, engine),
                        "offered_rps", round(capacity * x, 3))
            row["offered_x_capacity"] = x
            log(line(f"{top}w open {capacity * x:.2f} req/s ({x}x)", row))
            entry["open"].append(row)
        result["pool"] = pools
        if not args.skip_naive:
            naive = servers["naive"]
            rate = capacity * args.naive_overload
            row = level(naive, lambda: open_loop(naive.url, rate, args.open_duration, engine), "offered_rps",
                        round(rate, 3))
            row["offered_x_capacity"] = args.naive_overload
            log(line(f"naive open {rate:.2f} req/s ({args.naive_overload}x)", row))
            result["naive"] = {"threads": args.naive_threads, "closed": closed["naive"], "open": [row]}

    summary: dict[str, Any] = {}
    if len(args.workers) > 1 and 1 in args.workers:
        summary["scaling"] = {
            "workers": top,
            "peak_throughput_ratio": round(peak(pools[str(top)]["closed"]) / peak(pools["1"]["closed"]), 3),
            "peak_audio_s_per_s_ratio": round(peak(pools[str(top)]["closed"], "audio_s_per_s")
                                              / peak(pools["1"]["closed"], "audio_s_per_s"), 3),
            "by_concurrency": [
                {"concurrency": a["concurrency"],
                 "throughput_ratio": round(b["throughput_rps"] / a["throughput_rps"], 3),
                 "cores_1w": a["server_cpu_cores"], f"cores_{top}w": b["server_cpu_cores"]}
                for a, b in zip(pools["1"]["closed"], pools[str(top)]["closed"], strict=True)],
        }
        log(f"scaling {top} workers vs 1: x{summary['scaling']['peak_throughput_ratio']} peak throughput")

    if "naive" in result:
        pool_by_c = {r["concurrency"]: r for r in pools[str(top)]["closed"]}
        comparison = []
        for r in result["naive"]["closed"]:
            p = pool_by_c[r["concurrency"]]
            comparison.append({
                "concurrency": r["concurrency"],
                "throughput_ratio_pool_vs_naive": round(p["throughput_rps"] / r["throughput_rps"], 3)
                if r["throughput_rps"] else None,
                "p95_pool_ms": p["latency_ms"]["p95"], "p95_naive_ms": r["latency_ms"]["p95"],
                "cores_pool": p["server_cpu_cores"], "cores_naive": r["server_cpu_cores"],
            })
        summary["naive_vs_pool"] = {"pool_workers": top, "by_concurrency": comparison}
        naive_open = result["naive"]["open"][0]
        pool_open = min(pools[str(top)]["open"], key=lambda row: abs(row["offered_x_capacity"] - args.naive_overload))
        summary["naive_vs_pool"]["overload"] = {
            "offered_x_capacity": args.naive_overload,
            "pool": {k: pool_open[k] for k in ("offered_rps", "ok", "rejected_503", "latency_ms", "wall_s")
                     if k in pool_open},
            "naive": {k: naive_open[k] for k in ("offered_rps", "ok", "errors", "latency_ms", "wall_s")
                      if k in naive_open},
        }

    if not args.skip_overhead:
        from bench.overhead import run as overhead_run

        summary["overhead"] = overhead_run("auto" if engine.label == "sambert" else "tone", args.repeats)
        for r in summary["overhead"]:
            log(f"overhead {r['engine']}: direct p50 {r['direct_p50_ms']} ms, HTTP+pool p50 {r['http_pool_p50_ms']} "
                f"ms, ratio {r['ratio_p50']}, paired overhead p50 {r['paired_overhead_p50_ms']} ms")
    result["summary"] = summary
    result["finished_utc"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def plot(result: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed; no plot written", file=sys.stderr)
        return False
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    ax = axes[0]
    for workers, entry in result["pool"].items():
        rows = entry["closed"]
        ax.plot([r["concurrency"] for r in rows], [r["latency_ms"]["p95"] / 1000 for r in rows], "o-",
                label=f"pool, {workers} worker{'s' if workers != '1' else ''} (p95)")
        ax.plot([r["concurrency"] for r in rows], [r["latency_ms"]["p50"] / 1000 for r in rows], ":", color=ax.lines[-1]
                .get_color(), label=f"pool, {workers}w (p50)")
    if "naive" in result:
        rows = result["naive"]["closed"]
        ax.plot([r["concurrency"] for r in rows], [r["latency_ms"]["p95"] / 1000 for r in rows], "s--k",
                label="naive: lock around one model (p95)")
    ax.set_xscale("log", base=2)
    levels = sorted({r["concurrency"] for e in result["pool"].values() for r in e["closed"]})
    ax.set_xticks(levels, [str(c) for c in levels])
    ax.set_xlabel("concurrent clients (closed loop)")
    ax.set_ylabel("latency (s)")
    ax.set_title("Latency vs offered load")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)

    ax = axes[1]
    top = max(result["pool"], key=int)
    rows = result["pool"][top].get("open", [])
    if rows:
        x = [r["offered_rps"] for r in rows]
        ax.plot(x, [(r["latency_ms"]["p95"] or 0) / 1000 for r in rows], "o-", label=f"admitted p95 ({top}w)")
        ax2 = ax.twinx()
        ax2.bar(x, [r["rejected_503"] / max(1, r["requests"]) * 100 for r in rows], width=min(x) * 0.3, alpha=0.3,
                color="tab:red", label="rejected (503) %")
        ax2.set_ylabel("rejected with 503 (%)")
        ax2.set_ylim(0, 100)
        ax2.legend(loc="upper right", fontsize=8)
        if "naive" in result:
            r = result["naive"]["open"][0]
            ax.plot([r["offered_rps"]], [(r["latency_ms"]["p95"] or 0) / 1000], "sk", label="naive p95")
        ax.axvline(result["pool"][top]["capacity_rps"], color="gray", ls=":", label="measured capacity")
    ax.set_xlabel("offered load, Poisson arrivals (req/s)")
    ax.set_ylabel("latency (s)")
    ax.set_title("Open loop: admission control")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)

    ax = axes[2]
    names, values = [], []
    for workers, entry in sorted(result["pool"].items(), key=lambda kv: int(kv[0])):
        names.append(f"pool {workers}w")
        values.append(peak(entry["closed"], "audio_s_per_s"))
    if "naive" in result:
        names.append("naive")
        values.append(peak(result["naive"]["closed"], "audio_s_per_s"))
    colors = ["gray" if name == "naive" else "tab:blue" for name in names]
    bars = ax.bar(names, values, color=colors)
    for bar, v in zip(bars, values, strict=True):
        ax.text(bar.get_x() + bar.get_width() / 2, v, f"{v:.2f}", ha="center", va="bottom")
    ax.set_ylabel("peak audio seconds per second")
    ax.set_title("Throughput vs workers")
    ax.grid(alpha=0.3, axis="y")
    cpus = result["machine"]["cpus"]
    fig.suptitle(f"tts-server, engine: {result['engine']['label']}, {cpus} CPU cores (shared), "
                 f"{result['started_utc']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def print_table(result: dict[str, Any]) -> None:
    print("\nworkers  conc  req/s  audio-s/s  p50 ms  p95 ms  p99 ms   RTF  503  err")
    for workers, entry in sorted(result["pool"].items(), key=lambda kv: int(kv[0])):
        for r in entry["closed"]:
            lat = r["latency_ms"]
            print(f"{workers:>7} {r['concurrency']:>5} {r['throughput_rps']:>6.2f} {r['audio_s_per_s']:>10.2f} "
                  f"{lat['p50'] or 0:>7.0f} {lat['p95'] or 0:>7.0f} {lat['p99'] or 0:>7.0f} {r['rtf_p50'] or 0:>5.2f} "
                  f"{r['rejected_503']:>4} {r['errors']:>4}")
    print(json.dumps(result["summary"], indent=2, ensure_ascii=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["auto", "sambert", "tone"], default="auto")
    parser.add_argument("--tone-sleep", type=float, default=1.0,
                        help="seconds per sentence of the tone engine (when it stands in for Sambert)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--stream-levels", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per closed-loop level")
    parser.add_argument("--rates", type=float, nargs="+", default=[0.5, 0.8, 1.0, 1.5, 3.0],
                        help="open-loop rates as multiples of the measured peak throughput")
    parser.add_argument("--open-duration", type=float, default=10.0)
    parser.add_argument("--queue-size", type=int, default=16)
    parser.add_argument("--naive-levels", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--naive-threads", type=int, default=2, help="torch threads of the naive model copy")
    parser.add_argument("--naive-overload", type=float, default=1.5,
                        help="open-loop rate for the naive server, as a multiple of the pool's capacity")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--repeats", type=int, default=15, help="requests per side in the overhead measurement")
    parser.add_argument("--out", type=Path, default=Path("bench/results/load.json"))
    parser.add_argument("--plot", type=Path, help="PNG path (default: --out with .png)")
    args = parser.parse_args(argv)
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print_table(result)
    png = args.plot or args.out.with_suffix(".png")
    if plot(result, png):
        log(f"wrote {args.out} and {png}")
    else:
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
