"""The vocoder in fixed-size pieces against one pass per sentence, side by side (issue 12).

Each configuration runs in its own process (oneDNN reads its primitive cache size once, before torch loads): the
parity model's engine, warmed up, synthesises the same sentences of random, mostly distinct lengths, with the
worker's idle-time ``malloc_trim`` between them, as a worker serves them. Printed per configuration: CPU seconds per
second of audio (lower is better) and resident memory after the run; runs are interleaved, ``--repeats`` times.

    python bench/vocoder_chunks.py                      # 40 sentences, 2 repeats
    python bench/vocoder_chunks.py --sentences 80 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import PARITY_MODEL

#: name -> (model.vocoder_chunk_frames, pool.onednn_primitive_cache). "one pass, 64" was the default before pieces;
#: 1024 is torch's own cache size.
CONFIGS: dict[str, tuple[int, int]] = {
    "pieces of 128 (default), 128": (128, 128),
    "pieces of 128, 256": (128, 256),
    "one pass, 64": (0, 64),
    "one pass, 1024": (0, 1024),
}
BASELINE = "one pass, 64"
_TEXT = ("这是一个比较长的句子用来测试不同长度的输入会不会产生新的卷积原语从而影响吞吐量"
         "我们一起去北京看看长城吧好不好今天天气很好请注意本次列车的终点站是北京南站"
         "下一站是天津需要换乘的旅客请提前做好准备")


def _sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        start = rng.randint(0, 40)
        out.append(_TEXT[start : start + rng.randint(4, 50)] + "。")
    return out


def child(chunk: int, cache: int, sentences: int, seed: int) -> dict[str, float]:
    os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(cache)
    import psutil

    from tts_server.config import load_settings
    from tts_server.inference.memory import keep_heap_pages, release_free_memory
    from tts_server.inference.sambert.engine import load_sambert_engine

    keep_heap_pages()
    engine = load_sambert_engine(load_settings(model={"model_dir": str(PARITY_MODEL), "torch_threads": 1,
                                                      "vocoder_chunk_frames": chunk}))
    engine.warm_up()
    voice = next(iter(engine.voices()))
    t0 = time.process_time()
    audio = 0.0
    for text in _sentences(sentences, seed):
        result = engine.synthesize(text, voice, "neutral", 1.0)
        audio += len(result.audio) / result.sample_rate
        release_free_memory()
    return {"cpu_per_audio_s": (time.process_time() - t0) / audio, "audio_s": audio,
            "rss_mib": psutil.Process().memory_info().rss / 2**20}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--child", nargs=4, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child)))
        return 0
    if not PARITY_MODEL.is_dir():
        print(f"parity model not found at {PARITY_MODEL}", file=sys.stderr)
        return 2
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in CONFIGS}
    for rep in range(args.repeats):
        for name, (chunk, cache) in CONFIGS.items():
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(chunk), str(cache), str(args.sentences), str(rep)],
                check=True, capture_output=True, text=True,
            ).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
    base = statistics.median(r["cpu_per_audio_s"] for r in runs[BASELINE])
    print(f"Parity model, 1 torch thread, {args.sentences} sentences of random length per run, {args.repeats} runs "
          "each (seed = run), interleaved")
    print(f"  {'configuration':<30}{'CPU s / audio s':>18}{'ratio':>8}{'RSS MiB':>10}")
    for name, rs in runs.items():
        cpu = statistics.median(r["cpu_per_audio_s"] for r in rs)
        spread = "/".join(f"{r['cpu_per_audio_s']:.3f}" for r in rs)
        rss = "/".join(f"{r['rss_mib']:.0f}" for r in rs)
        print(f"  {name:<30}{spread:>18}{base / cpu:>7.2f}x{rss:>10}")
    print(f"  ratio: '{BASELINE}' CPU time over the configuration's (median of runs; higher is faster)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
