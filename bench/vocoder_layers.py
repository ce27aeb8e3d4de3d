"""Per-layer benchmark of the HiFi-GAN vocoder's convolutions: direct (oneDNN, what the engine ran before issue 12)
against fast algorithms (``tts_server.inference.sambert.fastconv``), side by side in one process.

    .venv/bin/python bench/vocoder_layers.py [--model-dir DIR] [--case long_fear_breaks] [--repeats 7]

The vocoder runs once on the case's reference mel with every convolution's input recorded; then, for each distinct
convolution shape (C_in, C_out, kernel, dilation, T), one of its layers (with its real weights and its real input)
is timed directly and by each candidate, interleaved, on 1 torch thread, keeping the minimum per-thread CPU time
over the repeats (the machine is shared: wall time counts other jobs' time slices, CPU time does not). Each
candidate's max abs error against the direct output is printed next to its speed ratio (direct time / its time).
``count`` is how many layers share the shape; the stage totals weigh each shape by it. ``engine`` is what the
engine runs (``vocoder.fast_conv_for``), and ``ratio`` its speed against direct timed as the engine calls it (the
causal padding written with the input, ``vocoder._fast_input``).

Candidates: Winograd F(m, r) (Toom-Cook points 0, +-1, +-1/2, +-2, ... and infinity) for m in 2, 4, 6, and DFT
overlap-save of size 16, 32, 64 with Gauss's 3-multiplication complex products.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tts_server.inference.sambert.fastconv import BilinearConv
from tts_server.inference.sambert.vocoder import (
    FAST_CONV_MIN_T,
    _activate,
    _conv,
    _ConvPlan,
    _with_fast,
    fast_conv_for,
)

REPO = Path(__file__).resolve().parents[1]
PARITY = REPO.parent / "shared" / "reference" / "sambert-parity"
WINOGRAD_TILES = (2, 4, 6, 8)
DFT_SIZES = (16, 32, 64)
#: Toom-Cook beyond this many products loses float32 accuracy too fast to be worth timing.
MAX_WINOGRAD_PRODUCTS = 14


#: Table columns: Winograd F(m, k) for the layer's kernel length k, then DFT overlap-save sizes.
COLUMNS = (*(f"F({m},k)" for m in WINOGRAD_TILES), *(f"DFT{n}" for n in DFT_SIZES))


def _column(label: str, kernel: int) -> str:
    """The table column of an algorithm's label (Winograd F(m, 7) is column F(m,k))."""
    return label.replace(f",{kernel})", ",k)")


def candidates(kernel: int) -> dict[str, Callable[[Tensor, Tensor | None, int], BilinearConv]]:
    out: dict[str, Callable[[Tensor, Tensor | None, int], BilinearConv]] = {}
    if kernel > 1:
        for m in WINOGRAD_TILES:
            if m + kernel - 1 <= MAX_WINOGRAD_PRODUCTS:
                out[f"F({m},k)"] = lambda w, b, d, m=m: BilinearConv.winograd(w, b, d, m)
    for n in DFT_SIZES:
        if n > kernel:
            out[f"DFT{n}"] = lambda w, b, d, n=n: BilinearConv.fourier(w, b, d, n)
    return out


def record_layers(model_dir: Path, case: str) -> list[tuple[int, Tensor, _ConvPlan]]:
    """Run the fp32 direct vocoder on the case's mel; returns (stage, input, plan) per convolution call."""
    from tts_server.config import load_settings
    from tts_server.inference.sambert.engine import load_sambert_engine

    engine = load_sambert_engine(load_settings(model={"model_dir": str(model_dir), "torch_threads": 1}))
    voice = engine._voices[next(iter(engine.voices()))]
    voice.vocoder.use_fast_conv(False)
    plan = voice.vocoder._nwc
    assert plan is not None, "the per-layer table needs the causal fast-path vocoder"
    with np.load(PARITY / "cases.npz") as data:
        mel = torch.from_numpy(data[f"{case}/postnet_outputs"])
    calls: list[tuple[int, Tensor, _ConvPlan]] = []
    stage = [0]  # 0: conv_pre; upsampling stage i is i + 1
    upsampling = [id(p[0]) for p in plan.up]

    def recorder(x: Tensor, p: _ConvPlan, slope: float | None, own: bool) -> Tensor:
        if id(p[0]) in upsampling:
            stage[0] = upsampling.index(id(p[0])) + 1  # the polyphase upsampling convolution opens a stage
        # The convolution's own input: after the activation that the engine fuses into it.
        x = _activate(x.clone(memory_format=torch.channels_last), slope, True)
        calls.append((stage[0], x, p))
        return _conv(x, p)

    with torch.inference_mode():
        plan.run(mel, recorder)
    return calls


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=PARITY / "model")
    parser.add_argument("--case", default="long_fear_breaks")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    if not args.model_dir.is_dir():
        print(f"model directory {args.model_dir} not found", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    layer_table(record_layers(args.model_dir, args.case), args.repeats)
    return 0


def layer_table(calls: list[tuple[int, Tensor, _ConvPlan]], repeats: int) -> None:
    groups: dict[tuple[int, int, int, int, int, int], list[tuple[Tensor, _ConvPlan]]] = {}
    for stage, x, p in calls:
        c_out, c_in, _, k = p[0].shape
        groups.setdefault((stage, c_in, c_out, k, p[2], x.shape[-1]), []).append((x, p))
    names = COLUMNS
    print(f"torch {torch.__version__}, 1 thread, min CPU time of {repeats}; cells: speed ratio vs direct "
          "(>1 = faster) / max abs error vs direct")
    header = (f"{'stage':>5} {'C_in':>5} {'C_out':>5} {'k':>3} {'d':>2} {'T':>6} {'count':>5} {'direct ms':>9} "
              + " ".join(f"{n:>14}" for n in names) + f" {'engine':>8} {'ratio':>5}")
    print(header)
    print("-" * len(header))
    stage_direct: dict[int, float] = {}
    stage_engine: dict[int, float] = {}
    with torch.inference_mode():
        for key, members in groups.items():
            stage, c_in, c_out, k, dilation, t = key
            x, p = members[0]
            weight, bias = p[0][:, :, 0, :], p[1]
            rows = F.pad(x.permute(0, 2, 3, 1).reshape(t, c_in), (0, 0, p[3], 0))
            direct = _conv(x, p)
            ref = direct.permute(0, 2, 3, 1).reshape(t, c_out)
            fns: dict[str, Callable[[], Tensor]] = {"direct": lambda x=x, p=p: _conv(x, p)}
            errors: dict[str, float] = {}
            makers = candidates(k)
            alg = fast_conv_for(c_in, c_out, k)
            engine_name = "direct" if alg is None or t < FAST_CONV_MIN_T else _column(alg.label(k), k)
            if engine_name != "direct":
                # The engine's own call: the activation's output written into the padded tile buffer (see
                # vocoder._fast_input), rather than the column's copy of the padded rows.
                fast_plan = _with_fast(p, True)
                fns["engine"] = lambda x=x, fast_plan=fast_plan: _conv(x, fast_plan)
            for name, make in makers.items():
                conv = make(weight, bias, dilation)
                errors[name] = float((conv(rows) - ref).abs().max())
                fns[name] = lambda conv=conv, rows=rows: conv(rows)
            best = dict.fromkeys(fns, float("inf"))
            for _ in range(repeats):
                for name, fn in fns.items():
                    t0 = time.thread_time()
                    fn()
                    best[name] = min(best[name], time.thread_time() - t0)
            engine_s = best["engine" if engine_name != "direct" else "direct"]
            stage_direct[stage] = stage_direct.get(stage, 0.0) + best["direct"] * len(members)
            stage_engine[stage] = stage_engine.get(stage, 0.0) + engine_s * len(members)
            cells = " ".join(
                f"{best['direct'] / best[n]:>5.2f} /{errors[n]:>7.1e}" if n in best else f"{'-':>14}" for n in names
            )
            print(f"{stage:>5} {c_in:>5} {c_out:>5} {k:>3} {dilation:>2} {t:>6} {len(members):>5} "
                  f"{best['direct'] * 1e3:>9.2f} {cells} {engine_name:>8} {best['direct'] / engine_s:>5.2f}",
                  flush=True)
    print("\nconvolution time per stage (sum over layers), direct vs what the engine runs:")
    for stage in sorted(stage_direct):
        d, e = stage_direct[stage], stage_engine[stage]
        print(f"  stage {stage}: direct {d * 1e3:7.1f} ms  engine {e * 1e3:7.1f} ms  ratio {d / e:.2f}")
    d, e = sum(stage_direct.values()), sum(stage_engine.values())
    print(f"  all:     direct {d * 1e3:7.1f} ms  engine {e * 1e3:7.1f} ms  ratio {d / e:.2f}")


if __name__ == "__main__":
    sys.exit(main())
