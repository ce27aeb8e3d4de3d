"""Time to first audio (TTFA) of tts-server: frame-level streaming vs the old per-sentence streaming, side by side.

    .venv/bin/python bench/ttfa.py [--repeats 15] [--lengths 10 300] [--transports http ws]
                                   [--modes frame sentence] [--out bench/results/ttfa.json]

For each mode a real ``tts-server serve`` subprocess (1 worker, 1 torch thread, the Sambert engine on the parity
model in shared/reference/sambert-parity, full size with random weights) is started on 127.0.0.1; both run at once,
and the requests go round-robin over all cells, one at a time, so that load drifting on a shared machine during the
run weighs on every cell alike:

- ``frame``: the default settings (``[engine] stream_chunk_frames`` 32, first chunk ``stream_first_chunk_frames`` 4);
- ``sentence``: ``stream_chunk_frames = 0``, i.e. every sentence is sent whole, as before frame streaming.

Per input length (10 and 300 Chinese characters), ``--repeats`` measured rounds after ``--warmup`` untimed ones:

- ``http``: ``POST /v1/synthesize`` with ``stream: true`` (pcm) through an httpx streaming client, a fresh
  connection per request; TTFA = request sent -> first audio byte received.
- ``ws``: ``/v1/tts/ws`` through the ``websockets`` client; after ``start`` and ``ready``, the whole text is sent as
  one ``text`` message followed by ``flush``; TTFA = text sent -> first binary audio frame. (The server speaks
  the text clause by clause, so only the first clause's length can matter here.)

Only the first audio is waited for: then the client hangs up (HTTP) or sends ``cancel`` (WebSocket), and the next
request starts once ``/health`` shows the worker idle again, so that no request waits behind the previous one.
Prints a table (p50/p90/min/max in ms) and writes the samples to JSON.
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

import httpx  # noqa: E402
import websockets  # noqa: E402

from bench.harness import PARITY_MODEL, EngineChoice, machine, percentile, tts_server  # noqa: E402

#: Exactly 10 characters, one sentence.
SHORT = "今天天气很好出去走。"
_SENTENCES = (
    "欢迎使用语音合成服务。", "今天天气很好，我们一起去公园散步吧。",
    "请在听到提示音后留言，我们会尽快回复您。", "这是一段用于测试服务器吞吐量的中文句子。",
    "会议将在下午三点开始，请大家准时参加。", "列车即将到站，请带好您的随身物品。",
)


def long_text(chars: int) -> str:
    """``chars`` characters of varied everyday sentences, ending with a full stop."""
    text = ""
    i = 0
    while len(text) < chars:
        text += _SENTENCES[i % len(_SENTENCES)]
        i += 1
    return text[: chars - 1] + "。"


def text_of(chars: int) -> str:
    return SHORT if chars == len(SHORT) else long_text(chars)


def engine_choice(mode: str, threads: int) -> EngineChoice:
    engine: dict[str, Any] = {"name": "sambert"}
    if mode == "sentence":
        engine["stream_chunk_frames"] = 0
    return EngineChoice("sambert", {"engine": engine, "model": {"model_dir": str(PARITY_MODEL),
                                                                 "torch_threads": threads}})


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


async def wait_idle(client: httpx.AsyncClient, timeout_s: float = 120.0) -> None:
    """Until no worker is busy and nothing is queued (a hung-up request is cancelled at its next chunk)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        health = (await client.get("/health")).json()
        if health["workers"]["busy"] == 0 and health["queue_depth"] == 0:
            return
        await asyncio.sleep(0.02)
    raise RuntimeError("the worker stayed busy")


async def http_ttfa(url: str, text: str) -> float:
    body = {"text": text, "format": "pcm", "stream": True}
    async with httpx.AsyncClient(base_url=url, timeout=120.0) as client:
        t0 = time.perf_counter()
        async with client.stream("POST", "/v1/synthesize", json=body) as resp:
            if resp.status_code != 200:
                raise RuntimeError(f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}")
            async for chunk in resp.aiter_raw():
                if chunk:
                    return time.perf_counter() - t0
    raise RuntimeError("the stream ended without audio")


async def ws_ttfa(url: str, text: str) -> float:
    async with websockets.connect(url.replace("http://", "ws://") + "/v1/tts/ws", max_size=None) as ws:
        await ws.send(json.dumps({"type": "start", "format": "pcm"}))
        first = json.loads(await ws.recv())
        if first.get("type") != "ready":
            raise RuntimeError(f"expected ready, got {first}")
        t0 = time.perf_counter()
        await ws.send(json.dumps({"type": "text", "text": text}))
        await ws.send(json.dumps({"type": "flush"}))
        while True:
            message = await ws.recv()
            if isinstance(message, bytes) and message:
                ttfa = time.perf_counter() - t0
                break
            event = json.loads(message)
            if event.get("type") == "error":
                raise RuntimeError(f"error event: {event}")
        await ws.send(json.dumps({"type": "cancel"}))
        await ws.send(json.dumps({"type": "close"}))
        async for _ in ws:  # until the server's end event and close
            pass
        return ttfa


Cell = tuple[str, str, int]  # (mode, transport, chars)


async def measure(urls: dict[str, str], cells: list[Cell], repeats: int, warmup: int) -> dict[Cell, list[float]]:
    """Round-robin: every round sends one request per cell (its server idle first), so that a machine whose
    load drifts during the run weighs on every cell alike instead of on whichever ran last."""
    samples: dict[Cell, list[float]] = {cell: [] for cell in cells}
    clients = {mode: httpx.AsyncClient(base_url=url, timeout=10.0) for mode, url in urls.items()}
    try:
        for round_ in range(warmup + repeats):
            for mode, transport, chars in cells:
                await wait_idle(clients[mode])
                probe = http_ttfa if transport == "http" else ws_ttfa
                ttfa = await probe(urls[mode], text_of(chars))
                if round_ >= warmup:
                    samples[(mode, transport, chars)].append(ttfa)
            if round_ >= warmup:
                log(f"round {round_ - warmup + 1}/{repeats} done")
        for client in clients.values():
            await wait_idle(client)
    finally:
        for client in clients.values():
            await client.aclose()
    return samples


def stats_ms(samples: list[float]) -> dict[str, float | None]:
    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 1)

    return {"p50": ms(percentile(samples, 50)), "p90": ms(percentile(samples, 90)),
            "min": ms(min(samples) if samples else None), "max": ms(max(samples) if samples else None)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    if not PARITY_MODEL.is_dir():
        raise SystemExit(f"model directory {PARITY_MODEL} not found")
    result: dict[str, Any] = {
        "started_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "machine": machine(),
        "model": str(PARITY_MODEL), "workers": 1, "torch_threads": args.threads, "repeats": args.repeats,
        "warmup": args.warmup, "texts": {str(n): text_of(n) for n in args.lengths}, "rows": [],
    }
    cells = [(mode, transport, chars) for mode in args.modes for transport in args.transports
             for chars in args.lengths]
    with contextlib.ExitStack() as stack:
        urls = {}
        for mode in args.modes:
            log(f"starting a server ({mode} streaming)")
            urls[mode] = stack.enter_context(tts_server(engine_choice(mode, args.threads), workers=1,
                                                        startup_timeout_s=300)).url
        samples = asyncio.run(measure(urls, cells, args.repeats, args.warmup))
    for (mode, transport, chars), values in samples.items():
        row = {"mode": mode, "transport": transport, "chars": chars, **stats_ms(values),
               "samples_ms": [round(v * 1000, 1) for v in values]}
        log(f"{mode:8} {transport:4} {chars:4} chars: p50 {row['p50']} ms, p90 {row['p90']} ms")
        result["rows"].append(row)
    result["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return result


def print_table(result: dict[str, Any]) -> None:
    rows = {(r["mode"], r["transport"], r["chars"]): r for r in result["rows"]}
    modes = list(dict.fromkeys(r["mode"] for r in result["rows"]))
    print(f"TTFA (ms), 1 worker, {result['torch_threads']} torch thread(s), {result['repeats']} requests each, "
          f"parity model; p50 / p90")
    print(f"{'transport':9} {'chars':>5}  " + "  ".join(f"{m + ' p50':>14} {m + ' p90':>14}" for m in modes))
    for transport in dict.fromkeys(r["transport"] for r in result["rows"]):
        for chars in dict.fromkeys(r["chars"] for r in result["rows"]):
            cells = []
            for mode in modes:
                r = rows.get((mode, transport, chars))
                cells.append(f"{r['p50'] if r else '-':>14} {r['p90'] if r else '-':>14}")
            print(f"{transport:9} {chars:>5}  " + "  ".join(cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15, help="measured requests per cell")
    parser.add_argument("--warmup", type=int, default=2, help="untimed requests before each cell")
    parser.add_argument("--lengths", type=int, nargs="+", default=[10, 300], help="input lengths in characters")
    parser.add_argument("--transports", nargs="+", choices=["http", "ws"], default=["http", "ws"])
    parser.add_argument("--modes", nargs="+", choices=["frame", "sentence"], default=["frame", "sentence"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the worker")
    parser.add_argument("--out", type=Path, default=Path("bench/results/ttfa.json"))
    args = parser.parse_args(argv)
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print_table(result)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
