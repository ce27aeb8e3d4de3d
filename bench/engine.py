"""Benchmark of the native Sambert-HifiGan engine on the parity models (full-size, random weights).

    .venv/bin/python bench/engine.py [--model-dir DIR] [--personal-dir DIR | --no-personal] [--case long_fear_breaks]
                                     [--threads 1 2] [--repeats 5] [--text "中文文本"] [--no-layers]

Prints, per thread count, the real-time factor (synthesis seconds / audio seconds) and the time per stage:
frontend (text or symbols -> id streams), encoder+adaptor, AR decoder, postnet, vocoder; and the peak RSS.
Stage times are medians (or minima, --stat min) over the repeats, after one warm-up run. The personal voice (speaker
embedding + NSF vocoder, ``sambert-personal-parity``) runs the same case (its speaker field is F7) with fresh NSF
draws each run, as an unseeded request does; a closing table puts its RTF beside zhitian_emo's (fp32 vocoders). The
engines take turns run by run, so a busy machine's background load weighs on all of them alike.

Vocoder variants (``--vocoder-precision``): ``fp32`` (the default engine: fast convolutions where they win,
``model.vocoder_fast_conv``), ``fp32-direct`` (direct convolution everywhere, the implementation before issue 12),
``fp32-one-pass`` (each sentence vocoded in one pass, not in fixed-size pieces: ``model.vocoder_chunk_frames = 0``;
this process keeps torch's 1024-entry oneDNN cache and repeats one sentence, so one pass recompiles nothing here),
``bf16``. With both fp32 variants a closing table gives the ratio direct / fast for the vocoder and the whole
synthesis, and both RTFs, per thread count. First (unless ``--no-layers``) the per-layer table of
``bench/vocoder_layers.py``: every distinct convolution shape of the vocoder on the case, direct against each fast
candidate, 1 thread, with the errors against direct.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vocoder_layers import layer_table, record_layers

from tts_server.inference.memory import keep_heap_pages
from tts_server.inference.sambert.engine import SambertEngine, SambertVoice

REPO = Path(__file__).resolve().parents[1]
PARITY = REPO.parent / "shared" / "reference" / "sambert-parity"
PERSONAL = REPO.parent / "shared" / "reference" / "sambert-personal-parity"
STAGES = ("frontend", "encoder_adaptor", "decoder", "postnet", "vocoder")
#: Plain text of about the same length as the default case, for the frontend's share of the time.
DEFAULT_TEXT = "我们今天去公园散步，天气晴朗，心情也很好。然后还要去吃饭，这个地方非常漂亮，适合休息。"


def _case_symbols(case: str, parity: Path = PARITY) -> str:
    with np.load(parity / "cases.npz") as data:
        return str(data[f"{case}/symbols"])


#: (voice, kind, input, threads) -> RTF, for the closing comparison.
Summary = dict[tuple[str, str, str, int], float]


@dataclass
class Subject:
    """One engine under test: its first voice synthesises ``symbols`` (or the shared text)."""

    engine: SambertEngine
    symbols: str
    precision: str

    @property
    def voice(self) -> SambertVoice:
        return self.engine._voices[next(iter(self.engine.voices()))]

    @property
    def kind(self) -> str:
        # The personal parity voice sits in a model directory, but it is a personal (SE + NSF) voice.
        info = self.voice.info
        return "personal" if info.stochastic or info.kind == "personal" else "built-in"


def _load(model_dir: Path, threads: int, precision: str) -> SambertEngine:
    from tts_server.config import load_settings
    from tts_server.inference.sambert.engine import load_sambert_engine

    t0 = time.perf_counter()
    one_pass = {"vocoder_chunk_frames": 0} if precision.endswith("-one-pass") else {}
    engine = load_sambert_engine(load_settings(model={
        "model_dir": str(model_dir), "torch_threads": threads, "vocoder_precision": precision.split("-")[0],
        "vocoder_fast_conv": not precision.endswith("-direct"), **one_pass,
    }))
    print(f"loaded {model_dir} (vocoder {precision}) in {time.perf_counter() - t0:.2f} s")
    return engine


def run(model_dir: Path, symbols: str, text: str | None, threads: list[int], repeats: int, stat: str,
        precisions: list[str], personal: tuple[Path, str] | None = None) -> None:
    print(f"torch {torch.__version__}")
    subjects = [Subject(_load(model_dir, threads[0], p), symbols, p) for p in precisions]
    if personal is not None:
        # Non-causal NSF vocoder: vocoder_precision bf16 does not apply to it.
        subjects.append(Subject(_load(personal[0], threads[0], "fp32"), personal[1], "fp32"))
    summary: Summary = {}
    ratios: Ratios = {}
    measure(subjects, None, threads, repeats, stat, summary, ratios)
    measure(subjects, text if text is not None else DEFAULT_TEXT, threads, repeats, stat, summary, ratios)
    _print_ratios(ratios, stat, repeats)
    if personal is not None:
        _print_summary(summary, stat, repeats)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {rss_mb:.0f} MiB")


#: (input kind, threads) -> {variant: (vocoder s, total s, audio s)} for the fp32 fast vs direct comparison.
Ratios = dict[tuple[str, int], dict[str, tuple[float, float, float]]]


def _print_ratios(ratios: Ratios, stat: str, repeats: int) -> None:
    rows = [(key, v) for key, v in ratios.items() if "fp32" in v and "fp32-direct" in v]
    if not rows:
        return
    print(f"\nfp32 vocoder, fast convolutions (fp32) vs direct (fp32-direct), built-in voice; {stat} of {repeats} "
          "interleaved runs")
    header = (f"{'input':<8} {'threads':>7} {'vocoder direct':>15} {'vocoder fast':>13} {'ratio':>6} "
              f"{'RTF direct':>10} {'RTF fast':>9} {'ratio':>6}")
    print(header)
    print("-" * len(header))
    for (source, n), v in rows:
        (voc_f, tot_f, audio), (voc_d, tot_d, _) = v["fp32"], v["fp32-direct"]
        print(f"{source:<8} {n:>7} {voc_d * 1e3:>12.1f} ms {voc_f * 1e3:>10.1f} ms {voc_d / voc_f:>6.2f} "
              f"{tot_d / audio:>10.3f} {tot_f / audio:>9.3f} {tot_d / tot_f:>6.2f}")


def _print_summary(summary: Summary, stat: str, repeats: int) -> None:
    print(f"\nRTF, built-in vs personal voice (fp32 vocoders; {stat} of {repeats} interleaved runs)")
    header = f"{'voice':<14} {'kind':<9} {'threads':>7} {'symbols':>8} {'text':>8}"
    print(header)
    print("-" * len(header))
    rows = sorted({(voice, kind, n) for voice, kind, _, n in summary}, key=lambda r: (r[1] != "built-in", r[2]))
    for voice, kind, n in rows:
        rtfs = [summary.get((voice, kind, source, n), float("nan")) for source in ("symbols", "text")]
        cells = " ".join(f"{rtf:>8.3f}" for rtf in rtfs)
        print(f"{voice:<14} {kind:<9} {n:>7} {cells}")


def _emotion(subject: Subject, text: str | None) -> str:
    if text is not None:
        return subject.voice.info.default_emotion
    # Keep the case's own emotion so that the audio matches the parity case.
    return subject.symbols.split()[0].strip("{}").split("$")[4].removeprefix("emotion_")


def _once(subject: Subject, text: str | None) -> tuple[dict[str, float], float, int]:
    """One synthesis: stage times, total seconds, samples."""
    engine, voice = subject.engine, subject.voice
    source = text if text is not None else subject.symbols
    timings: dict[str, float] = {}
    start = time.perf_counter()
    # Text sentences come as an iterator (made when reached); the frontend's share is timed here all the same.
    sentences = list(engine._sentences(voice, source, _emotion(subject, text),
                                       "text" if text is not None else "symbols"))
    encoded = [voice.unit.encode_tokens(s.tokens) for s in sentences]
    timings["frontend"] = time.perf_counter() - start
    samples_out = 0
    with torch.inference_mode():
        for sentence, ids in zip(sentences, encoded, strict=True):
            am = voice.acoustic(ids, speed=sentence.speed, timings=timings)
            t = time.perf_counter()
            wav = voice.vocode(am.postnet_outputs)
            timings["vocoder"] = timings.get("vocoder", 0.0) + time.perf_counter() - t
            samples_out += wav.size
    return timings, time.perf_counter() - start, samples_out


def measure(subjects: list[Subject], text: str | None, threads: list[int], repeats: int, stat: str,
            summary: Summary, ratios: Ratios | None = None) -> None:
    """Time every subject at each thread count. The subjects take turns run by run, so that on a shared machine
    they see the same background load and their RTFs compare."""
    rows: dict[int, list[tuple[int, float, dict[str, float]]]] = {i: [] for i in range(len(subjects))}
    for n in threads:
        for subject in subjects:
            subject.engine._threads = n
        torch.set_num_threads(n)
        samples: list[dict[str, list[float]]] = [{s: [] for s in (*STAGES, "total")} for _ in subjects]
        audio_s = [0.0] * len(subjects)
        for i in range(repeats + 1):
            for k, subject in enumerate(subjects):
                timings, total, samples_out = _once(subject, text)
                if i == 0:
                    continue  # warm-up
                audio_s[k] = samples_out / subject.voice.sample_rate
                for s in STAGES:
                    samples[k][s].append(timings.get(s, 0.0))
                samples[k]["total"].append(total)
        pick = statistics.median if stat == "median" else min
        for k, subject in enumerate(subjects):
            med = {key: pick(v) for key, v in samples[k].items()}
            rows[k].append((n, audio_s[k], med))
            if ratios is not None and subject.kind == "built-in":
                ratios.setdefault(("text" if text is not None else "symbols", n), {})[subject.precision] = (
                    med["vocoder"], med["total"], audio_s[k])
            if subject.precision == "fp32":
                summary[(subject.voice.name, subject.kind, "text" if text is not None else "symbols", n)] = (
                    med["total"] / audio_s[k])

    kind = "plain text through the frontend" if text is not None else "symbols"
    for k, subject in enumerate(subjects):
        source = text if text is not None else subject.symbols
        print(f"\nvoice {subject.voice.name} ({subject.kind}, vocoder {subject.precision}), emotion "
              f"{_emotion(subject, text)}, input: {kind}, {len(source)} chars; {stat} of {repeats} runs")
        header = f"{'threads':>7} {'audio s':>8} {'RTF':>6} " + " ".join(f"{s:>15}" for s in (*STAGES, "total"))
        print(header)
        print("-" * len(header))
        for n, seconds, med in rows[k]:
            cells = " ".join(f"{med[s] * 1000:>12.1f} ms" for s in (*STAGES, "total"))
            print(f"{n:>7} {seconds:>8.2f} {med['total'] / seconds:>6.3f} {cells}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=PARITY / "model")
    parser.add_argument("--personal-dir", type=Path, default=PERSONAL / "model",
                        help="a personal voice's model directory (its parity set's cases.npz beside it)")
    parser.add_argument("--no-personal", action="store_true", help="skip the personal voice")
    parser.add_argument("--case", default="long_fear_breaks", help="parity case whose symbols are synthesised")
    parser.add_argument("--text", default=None, help="plain text through the frontend instead of symbols")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--stat",
        choices=("median", "min"),
        default="median",
        help="per-stage statistic over the repeats (min is the better estimate on a shared, busy machine)",
    )
    parser.add_argument("--vocoder-precision", nargs="+", choices=("fp32", "fp32-direct", "fp32-one-pass", "bf16"),
                        default=["fp32", "fp32-direct", "bf16"],
                        help="vocoder variants to measure side by side (fp32-direct: model.vocoder_fast_conv off; "
                             "fp32-one-pass: each sentence vocoded in one pass, model.vocoder_chunk_frames = 0)")
    parser.add_argument("--no-layers", action="store_true", help="skip the per-layer convolution table")
    args = parser.parse_args(argv)
    if not args.model_dir.is_dir():
        print(f"model directory {args.model_dir} not found", file=sys.stderr)
        return 2
    keep_heap_pages()  # as a served worker does (tts_server.inference.memory)
    personal = None
    if not args.no_personal:
        if not (args.personal_dir.parent / "cases.npz").is_file():
            print(f"personal parity set {args.personal_dir.parent} not found (--no-personal to skip it)",
                  file=sys.stderr)
            return 2
        personal = (args.personal_dir, _case_symbols(args.case, args.personal_dir.parent))
    if not args.no_layers:
        print(f"per-layer vocoder convolutions, case {args.case}:")
        torch.set_num_threads(1)
        layer_table(record_layers(args.model_dir, args.case), max(args.repeats, 5))
    run(args.model_dir, _case_symbols(args.case), args.text, args.threads, args.repeats, args.stat,
        args.vocoder_precision, personal)
    return 0


if __name__ == "__main__":
    sys.exit(main())
