"""Server overhead: the same synthesis through HTTP + the worker pool versus a direct in-process engine call.

    .venv/bin/python bench/overhead.py [--engine auto|sambert|tone] [--repeats 15] [--json out.json]

Both sides run the same engine with the same settings (one torch thread). Calls alternate (direct, HTTP, direct,
...) so that background load on a shared machine hits both sides alike. The HTTP side is one request at a time
to a 1-worker ``tts-server serve`` on 127.0.0.1 and includes everything a client pays for: HTTP parsing,
validation, admission, the pipe to the worker and back, and PCM encoding. The tone engine at zero sleep isolates
that fixed cost, since its synthesis is nearly free.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "src")]

from bench.harness import (  # noqa: E402
    PARITY_MODEL,
    EngineChoice,
    make_client,
    percentile,
    request,
    sambert_choice,
    tone_choice,
    tts_server,
)


def _direct_engine(engine: EngineChoice) -> Any:
    from tts_server.config import load_settings
    from tts_server.inference.loading import load_engine

    model = {k: v for k, v in engine.settings["model"].items()}
    loaded = load_engine(load_settings(None, engine=engine.settings["engine"], model=model))
    loaded.warm_up()
    return loaded


async def measure(engine: EngineChoice, repeats: int) -> dict[str, Any]:
    direct = _direct_engine(engine)
    voices = direct.voices()
    voice = next(iter(voices))
    emotion = voices[voice].default_emotion
    direct_s: list[float] = []
    http_s: list[float] = []
    with tts_server(engine, workers=1) as server:
        async with make_client(server.url) as client:
            # One untimed round each: connection setup, first-call caches in the worker and here.
            direct.synthesize(engine.text(0), voice, emotion, 1.0)
            await request(client, engine.text(0))
            for i in range(repeats):
                text = engine.text(i)
                t0 = time.perf_counter()
                direct.synthesize(text, voice, emotion, 1.0)
                direct_s.append(time.perf_counter() - t0)
                sample = await request(client, text)
                if sample.status != 200:
                    raise RuntimeError(f"HTTP request failed with status {sample.status}")
                http_s.append(sample.latency)
    d50 = percentile(direct_s, 50)
    h50 = percentile(http_s, 50)
    assert d50 is not None
    assert h50 is not None
    # Paired differences: each HTTP call against the direct call of the same text right before it.
    diffs = [h - d for h, d in zip(http_s, direct_s, strict=True)]
    diff50 = percentile(diffs, 50)
    assert diff50 is not None
    return {
        "engine": engine.label, "engine_description": engine.describe(), "repeats": repeats,
        "direct_p50_ms": round(d50 * 1000, 2), "http_pool_p50_ms": round(h50 * 1000, 2),
        "ratio_p50": round(h50 / d50, 3) if d50 > 0 else None,
        "overhead_p50_ms": round((h50 - d50) * 1000, 2),
        "paired_overhead_p50_ms": round(diff50 * 1000, 2),
    }


def run(engine: str, repeats: int) -> list[dict[str, Any]]:
    results = []
    if engine in ("auto", "sambert") and PARITY_MODEL.is_dir():
        try:
            results.append(asyncio.run(measure(sambert_choice(), repeats)))
        except Exception as exc:
            if engine == "sambert":
                raise
            print(f"sambert engine unavailable ({exc}); only the tone engine is measured", file=sys.stderr)
    if engine in ("auto", "tone"):
        # Zero sleep: the engine costs ~0.1 ms, so what is left is the server's own fixed cost.
        results.append(asyncio.run(measure(tone_choice(0.0), max(repeats, 50))))
    return results


def print_table(results: list[dict[str, Any]]) -> None:
    print(f"{'engine':<8} {'n':>4} {'direct p50':>12} {'HTTP+pool p50':>14} {'ratio':>7} {'overhead p50':>13}")
    for r in results:
        print(f"{r['engine']:<8} {r['repeats']:>4} {r['direct_p50_ms']:>9.1f} ms {r['http_pool_p50_ms']:>11.1f} ms "
              f"{r['ratio_p50']:>7.3f} {r['paired_overhead_p50_ms']:>10.1f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["auto", "sambert", "tone"], default="auto")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    results = run(args.engine, args.repeats)
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
