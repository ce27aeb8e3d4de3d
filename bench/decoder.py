"""Benchmark of the Sambert PNCA decoder loop: the engine's numpy step (issue 12, item 2) against the torch per-op
step it replaced, side by side in one process, on a parity case's real decoder input.

    .venv/bin/python bench/decoder.py [--model-dir DIR] [--case long_fear_breaks] [--threads 1 2] [--repeats 9]

The case runs through the engine's encoder and variance adaptor once; then both loops decode its memory, taking
turns run by run, and the table gives per-thread CPU time (what the loop itself costs; a shared machine's other
jobs do not count in it) and wall time, minimum and median over the repeats, the ratio torch / numpy, and the
largest difference between the two decoders' mel frames.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from tts_server.inference.sambert.acoustic import HybridAttentionDecoder, PNCABlock, SambertModel, _DecoderPlan

REPO = Path(__file__).resolve().parents[1]
PARITY = REPO.parent / "shared" / "reference" / "sambert-parity"


def _gemv_layout(w: Tensor) -> Tensor:
    # MKL's addmv ran widening products faster on column-major storage, narrowing ones on row-major.
    return w.t().contiguous().t() if w.shape[0] > w.shape[1] else w.contiguous()


class TorchStepPlan:
    """The decoder loop as it was before issue 12, item 2: torch ops per step (addmv, layer_norm, baddbmm, ...)."""

    def __init__(self, dec: HybridAttentionDecoder, num_mels: int) -> None:
        self.d_model = dec.d_model
        scale = dec.d_model**0.5
        linears = [m for m in dec.prenet.fcs if isinstance(m, torch.nn.Linear)]
        w_in = dec.dec_in_proj.weight.detach()
        d_mem = w_in.shape[1] - dec.d_model
        w_in_x = w_in[:, d_mem:]
        last = linears[-1]
        self.w_mem = w_in[:, :d_mem] * scale
        self.b_mem = (dec.dec_in_proj.bias.detach() + w_in_x @ last.bias.detach()) * scale
        self.w_pre = _gemv_layout((w_in_x @ last.weight.detach()) * scale)
        self.prenet = [(_gemv_layout(m.weight.detach()), m.bias.detach()) for m in linears[:-1]]
        self.layers = []
        for block in dec.pnca:
            assert isinstance(block, PNCABlock)
            attn, ffn = block.pnca_attn, block.pos_ffn
            hd = attn.n_head * attn.d_head
            w, b = attn.w_x_qkv.weight.detach(), attn.w_x_qkv.bias.detach()
            assert ffn.w_1.bias is not None
            assert ffn.w_2.bias is not None
            self.layers.append({
                "n_head": attn.n_head, "d_head": attn.d_head, "alpha": 1.0 / math.sqrt(attn.d_head),
                "ln": (attn.layer_norm.weight.detach(), attn.layer_norm.bias.detach()),
                "w_qqkv": _gemv_layout(torch.cat([w[:hd], w], dim=0)), "b_qqkv": torch.cat([b[:hd], b]),
                "w_h_kv": (attn.w_h_kv.weight.detach(), attn.w_h_kv.bias.detach()),
                "w_fc": _gemv_layout(torch.cat([attn.fc_x.weight, attn.fc_h.weight], dim=1).detach()),
                "b_fc": (attn.fc_x.bias + attn.fc_h.bias).detach(),
                "ffn_ln": (ffn.layer_norm.weight.detach(), ffn.layer_norm.bias.detach()),
                "w_1": _gemv_layout(ffn.w_1.weight.detach()[:, :, 0]), "b_1": ffn.w_1.bias.detach(),
                "w_2": _gemv_layout(ffn.w_2.weight.detach()[:, :, 0]), "b_2": ffn.w_2.bias.detach(),
            })
        self.ln = (dec.ln.weight.detach(), dec.ln.bias.detach())
        w_out = dec.dec_out_proj.weight.detach()
        b_out = dec.dec_out_proj.bias.detach()
        w_p1, b_p1 = self.prenet[0]
        self.w_fb = _gemv_layout(w_p1 @ w_out[-num_mels:])
        self.b_fb = w_p1 @ b_out[-num_mels:] + b_p1

    def steps(self, memory: Tensor, band: int) -> Iterator[Tensor]:
        steps, width, d_model = memory.shape[0], band + 1, self.d_model
        mem_in = F.linear(memory, self.w_mem, self.b_mem)
        buffers = []
        for layer in self.layers:
            n_head, d_head = layer["n_head"], layer["d_head"]
            keys = memory.new_zeros(2 * n_head, d_head, steps + band)
            values = memory.new_zeros(2 * n_head, steps + band, d_head)
            hkv = F.linear(memory, *layer["w_h_kv"]).reshape(steps, 2, n_head, d_head)
            keys[n_head:, :, :steps] = hkv[:, 0].permute(1, 2, 0)
            values[n_head:, :steps] = hkv[:, 1].transpose(0, 1)
            buffers.append((keys, values, keys[:n_head].transpose(1, 2), values[:n_head]))
        n_head = self.layers[0]["n_head"]
        offs, pos = torch.arange(width), torch.arange(steps)[:, None]
        own_invalid = (offs[None, :] < band - pos)[:, None, None, :].expand(steps, n_head, 1, width)
        mem_invalid = (pos + offs[None, :] >= steps)[:, None, None, :].expand(steps, n_head, 1, width)
        mask = memory.new_zeros(steps, 2 * n_head, 1, width)
        mask.masked_fill_(torch.cat([own_invalid, mem_invalid], dim=1), float("-inf"))
        eps, shape = 1e-6, (d_model,)
        h = F.relu(self.prenet[0][1])
        x = memory.new_empty(d_model)
        for t in range(steps):
            if t > 0:
                h = torch.relu(torch.addmv(self.b_fb, self.w_fb, torch.layer_norm(x, shape, *self.ln, eps)))
            for w, b in self.prenet[1:]:
                h = torch.relu(torch.addmv(b, w, h))
            x = torch.addmv(mem_in[t], self.w_pre, h)
            for layer, (keys, values, own_k, own_v) in zip(self.layers, buffers, strict=True):
                n_head, d_head = layer["n_head"], layer["d_head"]
                qqkv = torch.addmv(layer["b_qqkv"], layer["w_qqkv"], torch.layer_norm(x, shape, *layer["ln"], eps))
                qqkv = qqkv.view(4, n_head, d_head)
                own_k.select(1, t + band).copy_(qqkv[2])
                own_v.select(1, t + band).copy_(qqkv[3])
                q = qqkv[:2].view(2 * n_head, 1, d_head)
                scores = torch.baddbmm(mask[t], q, keys.narrow(2, t, width), alpha=layer["alpha"])
                att = torch.bmm(torch.softmax(scores, dim=-1), values.narrow(1, t, width))
                x = torch.addmv(layer["b_fc"], layer["w_fc"], att.view(-1)) + x
                ff = torch.relu(torch.addmv(layer["b_1"], layer["w_1"],
                                            torch.layer_norm(x, shape, *layer["ffn_ln"], eps)))
                x = torch.addmv(layer["b_2"], layer["w_2"], ff) + x
            yield x


def _load(model_dir: Path, case: str) -> tuple[SambertModel, Tensor, int]:
    from tts_server.config import load_settings
    from tts_server.inference.sambert.engine import load_sambert_engine

    engine = load_sambert_engine(load_settings(model={"model_dir": str(model_dir)}))
    voice = engine._voices[next(iter(engine.voices()))]
    with np.load(model_dir.parent / "cases.npz") as data:
        symbols = str(data[f"{case}/symbols"])
    emotion = symbols.split()[0].strip("{}").split("$")[4].removeprefix("emotion_")
    (sentence,) = list(engine._sentences(voice, symbols, emotion, "symbols"))
    with torch.inference_mode():
        adapted = voice.am._adapt(voice._inputs(voice.unit.encode_tokens(sentence.tokens)), sentence.speed, 0.0)
    return voice.am, adapted.memory, adapted.band


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, default=PARITY / "model")
    parser.add_argument("--case", default="long_fear_breaks")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    if not args.model_dir.is_dir():
        print(f"model directory {args.model_dir} not found", file=sys.stderr)
        return 2
    am, memory, band = _load(args.model_dir, args.case)
    plan = _DecoderPlan(am.mel_decoder.mel_dec, am.num_mels)
    baseline = TorchStepPlan(am.mel_decoder.mel_dec, am.num_mels)
    loops: dict[str, Callable[[], Tensor]] = {
        "torch": lambda: torch.stack(list(baseline.steps(memory, band))),
        "numpy": lambda: torch.stack(list(plan.steps(memory, band))),
    }
    print(f"torch {torch.__version__}, numpy {np.__version__}; case {args.case}: {memory.shape[0]} steps, band {band}, "
          f"{len(plan.layers)} layers")
    with torch.inference_mode():
        diff = (plan.project(loops["torch"]()) - plan.project(loops["numpy"]())).abs().max().item()
        print(f"max |mel torch - mel numpy| = {diff:.2e}")
        header = (f"{'threads':>7} {'loop':>6} {'cpu min':>10} {'cpu med':>10} {'wall min':>10} {'wall med':>10} "
                  f"{'ms/step':>8}")
        print(header)
        print("-" * len(header))
        for n in args.threads:
            torch.set_num_threads(n)
            cpu: dict[str, list[float]] = {k: [] for k in loops}
            wall: dict[str, list[float]] = {k: [] for k in loops}
            for i in range(args.repeats + 1):
                for name, loop in loops.items():
                    c, w = time.thread_time(), time.perf_counter()
                    loop()
                    if i:  # the first round warms up
                        cpu[name].append(time.thread_time() - c)
                        wall[name].append(time.perf_counter() - w)
            for name in loops:
                print(f"{n:>7} {name:>6} {min(cpu[name]) * 1e3:>7.1f} ms {statistics.median(cpu[name]) * 1e3:>7.1f} ms "
                      f"{min(wall[name]) * 1e3:>7.1f} ms {statistics.median(wall[name]) * 1e3:>7.1f} ms "
                      f"{min(cpu[name]) * 1e3 / memory.shape[0]:>8.2f}")
            print(f"{n:>7} {'ratio':>6} {min(cpu['torch']) / min(cpu['numpy']):>10.2f} "
                  f"{statistics.median(cpu['torch']) / statistics.median(cpu['numpy']):>10.2f} "
                  f"{min(wall['torch']) / min(wall['numpy']):>10.2f} "
                  f"{statistics.median(wall['torch']) / statistics.median(wall['numpy']):>10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
