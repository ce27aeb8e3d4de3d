"""Where a worker's memory goes: RSS and USS after each step of its start, in the worker's order, then after traffic.

Each step is measured after ``gc.collect()`` and ``malloc_trim`` (what the worker does after warm-up), so the figures
are what the step keeps, not its transient peak. One process, parity model, 1 torch thread, the pool's default
oneDNN cache; a served worker adds ≈ 15 MiB (multiprocessing, the pipe thread).

    python bench/memory_steps.py
    python bench/memory_steps.py --direct-conv      # without the vocoder's fast convolutions
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import warnings
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import PARITY_MODEL, SENTENCES

MiB = 1024 * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--direct-conv", action="store_true", help="model.vocoder_fast_conv = false")
    args = parser.parse_args(argv)
    if not PARITY_MODEL.is_dir():
        print(f"parity model not found at {PARITY_MODEL}", file=sys.stderr)
        return 2
    from tts_server.config import PoolSettings
    from tts_server.inference.memory import limit_primitive_cache, release_free_memory

    limit_primitive_cache(PoolSettings().onednn_primitive_cache)  # as the worker does, before torch loads
    proc = psutil.Process()
    last = [0, 0]

    def step(label: str) -> None:
        gc.collect()
        release_free_memory()
        info = proc.memory_full_info()
        print(f"  {label:<38}{info.rss / MiB:7.1f}{(info.rss - last[0]) / MiB:+8.1f}"
              f"{info.uss / MiB:9.1f}{(info.uss - last[1]) / MiB:+8.1f}", flush=True)
        last[:] = [info.rss, info.uss]

    print(f"  {'step':<38}{'RSS':>7}{'added':>8}{'USS':>9}{'added':>8}   (MiB)")
    step("Python, tts_server.inference.memory")
    from tts_server.config import Settings
    from tts_server.inference import worker  # noqa: F401  (what a spawned worker imports first)

    step("config and worker modules")
    import torch  # noqa: F401

    step("import torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pypinyin import lazy_pinyin
    lazy_pinyin("长大")
    step("pypinyin as imported")
    from tts_server.inference.frontend import pinyin, polyphone

    pinyin._adjust_pypinyin()
    step("pypinyin compacted")
    polyphone.load()
    step("polyphone model")
    pinyin.shared_segmenter()
    step("jieba (packed table)")
    pinyin._neutral_lexicon()
    step("neutral-tone lexicon")
    from tts_server.inference.sambert.engine import load_sambert_engine

    step("Sambert engine modules")
    model: dict[str, object] = {"model_dir": str(PARITY_MODEL), "torch_threads": 1}
    if args.direct_conv:
        model["vocoder_fast_conv"] = False
    engine = load_sambert_engine(Settings.model_validate({"engine": {"name": "sambert"}, "model": model}))
    step("model loaded (one voice)")
    engine.warm_up()
    step("warm-up: ready")
    voice = next(iter(engine.voices()))
    emotion = engine.voices()[voice].default_emotion
    for i in range(12):
        text = SENTENCES[i % len(SENTENCES)] + SENTENCES[(i + 1) % len(SENTENCES)][:i]  # distinct lengths
        engine.synthesize(text, voice, emotion, 1.0)
    step("after 12 distinct sentences")
    engine.synthesize("".join(SENTENCES) * 4, voice, emotion, 1.0)
    step("after a ~300-character request")
    print(f"\noneDNN primitive cache: {os.environ.get('ONEDNN_PRIMITIVE_CACHE_CAPACITY')} entries")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
