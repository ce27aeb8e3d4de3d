"""The optimised PNCA decoder loop against a direct transcription of the reference's masked, full-prefix form.

The parity cases all have a band width of 2; these cover the band edge cases (0, 1, wider than the utterance) and
lengths where the band window is clipped at both ends.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.tinymodel import build_tiny_model_dir
from tts_server.config import load_settings
from tts_server.inference.sambert.acoustic import HybridAttentionDecoder, PNCABlock, SambertModel, _pack
from tts_server.inference.sambert.engine import load_sambert_engine


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> SambertModel:
    model_dir = build_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model", seed=3)
    engine = load_sambert_engine(load_settings(model={"model_dir": str(Path(model_dir))}))
    return engine._voices["zhitian_emo"].am


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, d_head: int) -> torch.Tensor:
    scores = torch.bmm(q, k.transpose(1, 2)) / math.sqrt(d_head)
    scores = scores.masked_fill(mask, float("-inf"))
    return torch.bmm(torch.softmax(scores, dim=-1), v)


def _reference_decode(dec: HybridAttentionDecoder, memory: torch.Tensor, band: int, num_mels: int) -> torch.Tensor:
    """Step by step, each step attending over the whole prefix / memory with boolean band masks."""
    steps = memory.shape[0]
    rng = torch.arange(steps)
    outputs = []
    caches: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = [([], []) for _ in dec.pnca]
    prev = memory.new_zeros(1, num_mels)
    for t in range(steps):
        h = dec.prenet(prev)
        x = dec.dec_in_proj(torch.cat([memory[t : t + 1], h], dim=-1)) * dec.d_model**0.5
        x_mask = ~((rng[: t + 1] >= t - band) & (rng[: t + 1] <= t))
        h_mask = ~((rng >= t) & (rng <= t + band))
        for block, (ks, vs) in zip(dec.pnca, caches, strict=True):
            assert isinstance(block, PNCABlock)
            attn = block.pnca_attn
            n_head, d_head = attn.n_head, attn.d_head

            def heads(z: torch.Tensor, n: int = n_head, d: int = d_head) -> torch.Tensor:
                return z.reshape(z.shape[0], n, d).transpose(0, 1)

            q, k, v = attn.w_x_qkv(attn.layer_norm(x)).chunk(3, -1)
            ks.append(heads(k))
            vs.append(heads(v))
            hk, hv = attn.w_h_kv(memory).chunk(2, -1)
            ox = _attention(heads(q), torch.cat(ks, 1), torch.cat(vs, 1), x_mask[None, None, :], d_head)
            oh = _attention(heads(q), heads(hk), heads(hv), h_mask[None, None, :], d_head)
            x = attn.fc_x(ox.transpose(0, 1).reshape(1, -1)) + attn.fc_h(oh.transpose(0, 1).reshape(1, -1)) + x
            ffn = block.pos_ffn
            y = F.relu(ffn.w_1(ffn.layer_norm(x).t().unsqueeze(0)))
            x = ffn.w_2(y).squeeze(0).t() + x
        out = dec.dec_out_proj(dec.ln(x))
        outputs.append(out)
        prev = out[:, -num_mels:]
    return torch.cat(outputs, dim=0)


@pytest.mark.parametrize(("steps", "band"), [(1, 0), (1, 3), (5, 0), (5, 1), (7, 2), (6, 9), (12, 4)])
def test_decoder_matches_full_prefix_form(model: SambertModel, steps: int, band: int) -> None:
    dec = model.mel_decoder.mel_dec
    d_mem = dec.dec_in_proj.in_features - dec.d_model
    torch.manual_seed(steps * 100 + band)
    memory = torch.randn(steps, d_mem)
    with torch.inference_mode():
        expected = _reference_decode(dec, memory, band, model.num_mels)
        got = model._decode(memory, band)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_duration_predictor_matches_lstm_module(model: SambertModel) -> None:
    """The cell-by-cell duration loop equals running the nn.LSTM one step at a time, as the reference does."""
    dp = model.variance_adaptor.duration_predictor
    cond_units = dp.lstm.input_size - dp.prenet_units
    torch.manual_seed(1)
    cond = torch.randn(9, cond_units)
    with torch.inference_mode():
        got = dp.infer(cond)
        x = torch.zeros(1, 1)
        state = None
        expected = []
        for i in range(cond.shape[0]):
            inp = torch.cat([dp.prenet(x[:, None, :]), cond[None, i : i + 1]], dim=-1)
            out, state = dp.lstm(inp, state)
            x = F.relu(dp.fc(out)).reshape(1, 1)
            expected.append(x[0, 0])
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-5, atol=1e-6)


def test_pack_keeps_layouts_in_one_aligned_allocation() -> None:
    """``_pack`` copies each matrix with its shape, memory order and values into one 64-byte aligned buffer."""
    rng = np.random.default_rng(0)
    arrays = [
        np.ascontiguousarray(rng.standard_normal((5, 7), dtype=np.float32)),
        np.asfortranarray(rng.standard_normal((9, 3), dtype=np.float32)),
        np.ascontiguousarray(rng.standard_normal((1, 33), dtype=np.float32)),
    ]
    packed = _pack(arrays)
    base = packed[0].base
    for a, p in zip(arrays, packed, strict=True):
        np.testing.assert_array_equal(p, a)
        assert p.flags.c_contiguous == a.flags.c_contiguous
        assert p.flags.f_contiguous == a.flags.f_contiguous
        assert p.ctypes.data % 64 == 0
        assert np.shares_memory(p, base)
    assert not any(np.shares_memory(p, q) for i, p in enumerate(packed) for q in packed[i + 1 :])


def test_decoder_step_weights_share_one_allocation(model: SambertModel) -> None:
    plan = model._decoder_plan
    assert plan is not None
    mats = [plan.w_fb, plan.w_pre, *plan.prenet]
    mats += [w for layer in plan.layers for w in (layer.w_qkv, layer.w_fc, layer.w_1, layer.w_2)]
    assert all(np.shares_memory(m, mats[0].base) for m in mats)
