"""Sambert acoustic model (KAN-TTS ``KanTtsSAMBERT``), inference only, batch 1, CPU.

Module and parameter names follow the published checkpoints so that a state dict loads strictly. The forward pass
is written for single-utterance inference: dropout and padding masks are gone (a batch of one has no padding), the
autoregressive loops keep their state in preallocated tensors, and everything that does not depend on the previous
step (memory projections, the attention keys and values of the memory, the conditioning part of the duration LSTM
input) is computed once per utterance instead of once per step.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tts_server.inference.engine import EngineLoadError

#: Options of the KAN-TTS model family that this implementation does not support (filled pauses, byte input).
_UNSUPPORTED_FLAGS = ("FP", "using_byte")
#: Parameters with defaults (the model-family switches); every other field is required in the config.
_OPTIONAL = frozenset({"vocab", "se", "nsf", "mas"})


@dataclass(frozen=True)
class SambertConfig:
    vocab: Mapping[str, int]
    max_len: int
    embedding_dim: int
    encoder_num_layers: int
    encoder_num_heads: int
    encoder_num_units: int
    encoder_ffn_inner_dim: int
    encoder_projection_units: int
    speaker_units: int
    emotion_units: int
    predictor_filter_size: int
    predictor_fsmn_num_layers: int
    predictor_num_memory_units: int
    predictor_ffn_inner_dim: int
    predictor_shift: int
    predictor_lstm_units: int
    dur_pred_prenet_units: tuple[int, ...]
    dur_pred_lstm_units: int
    decoder_prenet_units: tuple[int, ...]
    decoder_num_layers: int
    decoder_num_heads: int
    decoder_num_units: int
    decoder_ffn_inner_dim: int
    outputs_per_step: int
    num_mels: int
    postnet_filter_size: int
    postnet_fsmn_num_layers: int
    postnet_num_memory_units: int
    postnet_ffn_inner_dim: int
    postnet_shift: int
    postnet_lstm_units: int
    #: Speaker embedding input (personal voices): the speaker input is a float vector per token, not an id.
    se: bool = False
    #: The last two mel channels are a normalised f0 and a voicing flag (for an NSF vocoder).
    nsf: bool = False
    #: Trained with monotonic alignment search; the alignment module is training-only.
    mas: bool = False

    @classmethod
    def from_params(cls, params: Mapping[str, Any], vocab: Mapping[str, int], source: str) -> SambertConfig:
        for flag in _UNSUPPORTED_FLAGS:
            if params.get(flag, False):
                raise EngineLoadError(f"{source}: Model.KanTtsSAMBERT.params.{flag} is enabled; not supported")
        values: dict[str, Any] = {"vocab": dict(vocab)}
        for flag in ("SE", "NSF", "MAS"):
            raw_flag = params.get(flag, False)
            if not isinstance(raw_flag, bool):
                raise EngineLoadError(f"{source}: Model.KanTtsSAMBERT.params.{flag} must be true or false")
            values[flag.lower()] = raw_flag
        for name, field_type in cls.__annotations__.items():
            if name in _OPTIONAL:
                continue
            if name not in params:
                raise EngineLoadError(f"{source}: missing key 'Model.KanTtsSAMBERT.params.{name}'")
            raw = params[name]
            try:
                if "tuple" in str(field_type):
                    if not isinstance(raw, list | tuple) or not raw:
                        raise TypeError("expected a non-empty list")
                    values[name] = tuple(_positive_int(v) for v in raw)
                else:
                    values[name] = _positive_int(raw) if "shift" not in name else _int(raw)
            except (TypeError, ValueError) as exc:
                raise EngineLoadError(
                    f"{source}: Model.KanTtsSAMBERT.params.{name} = {raw!r} is invalid: {exc}"
                ) from exc
        cfg = cls(**values)
        if cfg.nsf and cfg.num_mels <= 2:
            raise EngineLoadError(f"{source}: an NSF model needs num_mels > 2 (mel + f0 + voicing)")
        for units, heads, what in (
            (cfg.encoder_num_units, cfg.encoder_num_heads, "encoder"),
            (cfg.decoder_num_units, cfg.decoder_num_heads, "decoder"),
        ):
            if units % heads:
                raise EngineLoadError(f"{source}: {what}_num_units {units} is not divisible by {what}_num_heads")
        return cfg


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("expected an integer")
    return value


def _positive_int(value: Any) -> int:
    v = _int(value)
    if v <= 0:
        raise ValueError("expected a positive integer")
    return v


# --------------------------------------------------------------------------------------------------------------
# building blocks (names match the checkpoint keys)


class Prenet(nn.Module):
    """Linear+ReLU(+dropout) stack; the index gaps of ``fcs`` are the activation and dropout slots."""

    def __init__(self, in_units: int, units: Sequence[int], out_units: int = 0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        dims = [in_units, *units]
        for d_in, d_out in itertools.pairwise(dims):
            layers += [nn.Linear(d_in, d_out), nn.ReLU(), nn.Identity()]
        if out_units:
            layers.append(nn.Linear(dims[-1], out_units))
        self.fcs = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.fcs:
            x = layer(x)
        return x


class SelfAttention(nn.Module):
    def __init__(self, n_head: int, d_in: int, d_model: int, d_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.d_head = d_head
        self.temperature = math.sqrt(d_head)
        self.layer_norm = nn.LayerNorm(d_in, eps=1e-6)
        self.w_qkv = nn.Linear(d_in, 3 * n_head * d_head)
        self.fc = nn.Linear(n_head * d_head, d_model)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: [T, d_in] -> [T, d_model]."""
        length = x.shape[0]
        qkv = self.w_qkv(self.layer_norm(x))
        q, k, v = (t.reshape(length, self.n_head, self.d_head).transpose(0, 1) for t in qkv.chunk(3, -1))
        attn = torch.softmax(torch.bmm(q, k.transpose(1, 2)) / self.temperature, dim=-1)
        heads = torch.bmm(attn, v).transpose(0, 1).reshape(length, -1)
        out: Tensor = self.fc(heads)
        if out.shape[-1] == x.shape[-1]:
            out = out + x
        return out


class ConvFeedForward(nn.Module):
    """Pre-norm position-wise feed-forward with convolutions, residual included."""

    def __init__(self, d_in: int, d_hid: int, kernel_size: tuple[int, int]) -> None:
        super().__init__()
        self.w_1 = nn.Conv1d(d_in, d_hid, kernel_size[0], padding=(kernel_size[0] - 1) // 2)
        self.w_2 = nn.Conv1d(d_hid, d_in, kernel_size[1], padding=(kernel_size[1] - 1) // 2)
        self.layer_norm = nn.LayerNorm(d_in, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: [T, d_in]."""
        h = self.layer_norm(x).t().unsqueeze(0)
        h = self.w_2(F.relu(self.w_1(h)))
        out: Tensor = h.squeeze(0).t() + x
        return out


class FFTBlock(nn.Module):
    def __init__(self, d_in: int, d_model: int, n_head: int, d_inner: int) -> None:
        super().__init__()
        self.slf_attn = SelfAttention(n_head, d_in, d_model, d_model // n_head)
        self.pos_ffn = ConvFeedForward(d_model, d_inner, (3, 1))

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.pos_ffn(self.slf_attn(x))
        return out


class SinusoidalPositions(nn.Module):
    def __init__(self, max_len: int, depth: int) -> None:
        super().__init__()
        self.depth = depth
        self.register_buffer("position_enc", self.table(max_len, depth).unsqueeze(0))

    @staticmethod
    def table(n_position: int, depth: int) -> Tensor:
        # Same formula as the reference (angles in float64, positions from 1, sin half then cos half).
        pos = torch.arange(1, n_position + 1, dtype=torch.float64)[:, None]
        idx = torch.arange(depth // 2, dtype=torch.float64)[None, :]
        angle = pos / torch.pow(10000.0, idx / (depth / 2 - 1))
        table = torch.zeros(n_position, depth, dtype=torch.float64)
        table[:, : depth // 2] = torch.sin(angle)
        table[:, depth // 2 :] = torch.cos(angle)
        return table.float()

    def forward(self, x: Tensor) -> Tensor:
        length = x.shape[0]
        enc = self.get_buffer("position_enc")[0]
        if length > enc.shape[0]:
            enc = self.table(length, self.depth).to(x.dtype)
        return x + enc[:length]


class SelfAttentionEncoder(nn.Module):
    def __init__(self, cfg: SambertConfig) -> None:
        super().__init__()
        d_model = cfg.encoder_num_units
        self.scale = d_model**0.5
        d_in = [cfg.embedding_dim] + [d_model] * (cfg.encoder_num_layers - 1)
        self.fft = nn.ModuleList(FFTBlock(d, d_model, cfg.encoder_num_heads, cfg.encoder_ffn_inner_dim) for d in d_in)
        self.ln = nn.LayerNorm(d_model, eps=1e-6)
        self.position_enc = SinusoidalPositions(cfg.max_len, cfg.embedding_dim)

    def forward(self, x: Tensor) -> Tensor:
        x = self.position_enc(x * self.scale)
        for layer in self.fft:
            x = layer(x)
        out: Tensor = self.ln(x)
        return out


class TextEncoder(nn.Module):
    def __init__(self, cfg: SambertConfig) -> None:
        super().__init__()
        d_emb = cfg.embedding_dim
        self.sy_emb = nn.Embedding(cfg.vocab["sy"], d_emb)
        self.tone_emb = nn.Embedding(cfg.vocab["tone"], d_emb)
        self.syllable_flag_emb = nn.Embedding(cfg.vocab["syllable_flag"], d_emb)
        self.ws_emb = nn.Embedding(cfg.vocab["word_segment"], d_emb)
        self.ling_enc = SelfAttentionEncoder(cfg)
        self.ling_proj = nn.Linear(cfg.encoder_num_units, cfg.encoder_projection_units, bias=False)

    def forward(self, sy: Tensor, tone: Tensor, syllable_flag: Tensor, ws: Tensor) -> Tensor:
        emb = self.sy_emb(sy) + self.tone_emb(tone) + self.syllable_flag_emb(syllable_flag) + self.ws_emb(ws)
        out: Tensor = self.ling_proj(self.ling_enc(emb))
        return out


class FsmnFeedForward(nn.Module):
    def __init__(self, d_in: int, d_hid: int, d_out: int) -> None:
        super().__init__()
        self.w_1 = nn.Conv1d(d_in, d_hid, 1)
        self.w_2 = nn.Conv1d(d_hid, d_out, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: [1, C, T] (channels first, kept so between layers)."""
        out: Tensor = self.w_2(F.relu(self.w_1(x)))
        return out


class MemoryBlock(nn.Module):
    def __init__(self, d: int, filter_size: int, shift: int) -> None:
        super().__init__()
        left = round((filter_size - 1) / 2)
        right = int((filter_size - 1) / 2)
        self.lp, self.rp = left + shift, right - shift
        if self.rp < 0:
            raise EngineLoadError(f"FSMN shift {shift} is larger than half the filter size {filter_size}")
        self.conv_dw = nn.Conv1d(d, d, filter_size, 1, 0, groups=d, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv_dw(F.pad(x, (self.lp, self.rp))) + x
        return out


class FsmnEncoder(nn.Module):
    def __init__(self, filter_size: int, num_layers: int, d_in: int, d_mem: int, d_inner: int, shift: int) -> None:
        super().__init__()
        self.ffn_lst = nn.ModuleList(
            FsmnFeedForward(d_in if i == 0 else d_mem, d_inner, d_mem) for i in range(num_layers)
        )
        self.memory_block_lst = nn.ModuleList(MemoryBlock(d_mem, filter_size, shift) for _ in range(num_layers))

    def forward(self, x: Tensor) -> Tensor:
        """``x``: [1, C, T] -> [1, d_mem, T]."""
        for ffn, block in zip(self.ffn_lst, self.memory_block_lst, strict=True):
            memory = block(ffn(x))
            if memory.shape[1] == x.shape[1]:
                memory = memory + x
            x = memory
        return x


class VarFsmnRnnPredictor(nn.Module):
    """FSMN + BiLSTM predictor of one value per token (pitch, energy)."""

    def __init__(self, cfg: SambertConfig, d_in: int) -> None:
        super().__init__()
        self.fsmn = FsmnEncoder(
            cfg.predictor_filter_size,
            cfg.predictor_fsmn_num_layers,
            d_in,
            cfg.predictor_num_memory_units,
            cfg.predictor_ffn_inner_dim,
            cfg.predictor_shift,
        )
        self.blstm = nn.LSTM(
            cfg.predictor_num_memory_units, cfg.predictor_lstm_units, num_layers=1, batch_first=True, bidirectional=True
        )
        self.fc = nn.Linear(2 * cfg.predictor_lstm_units, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``x``: [T, d_in] -> [T]."""
        h = self.fsmn(x.t().unsqueeze(0)).transpose(1, 2)
        h, _ = self.blstm(h)
        out: Tensor = self.fc(h[0]).squeeze(-1)
        return out


class DurationPredictor(nn.Module):
    """Autoregressive duration predictor: prenet of the previous log-duration + conditioning -> 2-layer LSTM."""

    def __init__(self, cfg: SambertConfig, cond_units: int) -> None:
        super().__init__()
        self.prenet = Prenet(1, cfg.dur_pred_prenet_units)
        self.lstm = nn.LSTM(
            cfg.dur_pred_prenet_units[-1] + cond_units, cfg.dur_pred_lstm_units, num_layers=2, batch_first=True
        )
        self.fc = nn.Linear(cfg.dur_pred_lstm_units, 1)
        self.prenet_units = cfg.dur_pred_prenet_units[-1]

    def prepare(self) -> None:
        lstm = self.lstm
        n_pre = self.prenet_units

        def param(name: str) -> Tensor:
            return lstm.get_parameter(name).detach()

        w_ih0 = param("weight_ih_l0")
        # The conditioning part of the first layer's input does not depend on the previous prediction: it is
        # projected for all tokens at once and enters each step as that step's input bias.
        self._cond_proj = (w_ih0[:, n_pre:].contiguous(), param("bias_ih_l0"))
        self._layer0 = (w_ih0[:, :n_pre].contiguous(), param("weight_hh_l0"), param("bias_hh_l0"))
        self._layer1 = (
            param("weight_ih_l1"),
            param("weight_hh_l1"),
            param("bias_ih_l1"),
            param("bias_hh_l1"),
        )
        self._prenet = [(m.weight.detach(), m.bias.detach()) for m in self.prenet.fcs if isinstance(m, nn.Linear)]
        self._fc = (self.fc.weight.detach(), self.fc.bias.detach())

    def infer(self, cond: Tensor) -> Tensor:
        """``cond``: [T, cond_units] -> log(duration + 1) per token, [T]."""
        if not hasattr(self, "_layer0"):
            self.prepare()
        cond_gates = F.linear(cond, *self._cond_proj)
        w_ih0, w_hh0, b_hh0 = self._layer0
        w_ih1, w_hh1, b_ih1, b_hh1 = self._layer1
        hidden = w_hh0.shape[1]
        state0 = (cond.new_zeros(1, hidden), cond.new_zeros(1, hidden))
        state1 = (cond.new_zeros(1, hidden), cond.new_zeros(1, hidden))
        out = cond.new_empty(cond.shape[0], 1)
        x = cond.new_zeros(1, 1)
        for i in range(cond.shape[0]):
            p = x
            for w, b in self._prenet:
                p = F.relu(F.linear(p, w, b))
            state0 = torch.lstm_cell(p, state0, w_ih0, w_hh0, cond_gates[i], b_hh0)
            state1 = torch.lstm_cell(state0[0], state1, w_ih1, w_hh1, b_ih1, b_hh1)
            x = F.relu(F.linear(state1[0], *self._fc))
            out[i] = x[0]
        return out[:, 0]


class DurSinusoidalPositions(nn.Module):
    def __init__(self, depth: int) -> None:
        super().__init__()
        # Named "inverse" in the reference although frames are divided by it; loaded from the checkpoint.
        scales = [10000 ** (2 * (i // 2) / depth) for i in range(depth)]
        self.register_buffer("inv_timescales", torch.tensor(scales, dtype=torch.float32))

    def forward(self, positions: Tensor) -> Tensor:
        """``positions``: [L] 1-based position of each frame inside its token (0 for padding) -> [L, depth]."""
        angles = positions[:, None] / self.get_buffer("inv_timescales")[None, :]
        out = torch.empty_like(angles)
        out[:, 0::2] = torch.sin(angles[:, 0::2])
        out[:, 1::2] = torch.cos(angles[:, 1::2])
        return out


class VarianceAdaptor(nn.Module):
    def __init__(self, cfg: SambertConfig) -> None:
        super().__init__()
        d_in = cfg.encoder_projection_units + cfg.emotion_units + cfg.speaker_units
        self.pitch_predictor = VarFsmnRnnPredictor(cfg, d_in)
        self.energy_predictor = VarFsmnRnnPredictor(cfg, d_in)
        self.duration_predictor = DurationPredictor(cfg, d_in)
        self.dur_position_encoder = DurSinusoidalPositions(cfg.encoder_projection_units)
        self.pitch_emb = nn.Conv1d(1, cfg.encoder_projection_units, kernel_size=9, padding=4)
        self.energy_emb = nn.Conv1d(1, cfg.encoder_projection_units, kernel_size=9, padding=4)


class PNCAAttention(nn.Module):
    def __init__(self, n_head: int, d_model: int, d_mem: int, d_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.d_head = d_head
        self.layer_norm = nn.LayerNorm(d_model, eps=1e-6)
        self.w_x_qkv = nn.Linear(d_model, 3 * n_head * d_head)
        self.fc_x = nn.Linear(n_head * d_head, d_model)
        self.w_h_kv = nn.Linear(d_mem, 2 * n_head * d_head)
        self.fc_h = nn.Linear(n_head * d_head, d_model)


class PNCABlock(nn.Module):
    def __init__(self, d_model: int, d_mem: int, n_head: int, d_inner: int) -> None:
        super().__init__()
        self.pnca_attn = PNCAAttention(n_head, d_model, d_mem, d_model // n_head)
        self.pos_ffn = ConvFeedForward(d_model, d_inner, (1, 1))


class HybridAttentionDecoder(nn.Module):
    def __init__(self, cfg: SambertConfig, d_mem: int) -> None:
        super().__init__()
        d_model = cfg.decoder_num_units
        self.d_model = d_model
        self.prenet = Prenet(cfg.num_mels, cfg.decoder_prenet_units, d_model)
        self.dec_in_proj = nn.Linear(d_model + d_mem, d_model)
        self.pnca = nn.ModuleList(
            PNCABlock(d_model, d_mem, cfg.decoder_num_heads, cfg.decoder_ffn_inner_dim)
            for _ in range(cfg.decoder_num_layers)
        )
        self.ln = nn.LayerNorm(d_model, eps=1e-6)
        self.dec_out_proj = nn.Linear(d_model, cfg.num_mels * cfg.outputs_per_step)


class MelDecoder(nn.Module):
    def __init__(self, cfg: SambertConfig, d_mem: int) -> None:
        super().__init__()
        self.mel_dec = HybridAttentionDecoder(cfg, d_mem)


class PostNet(nn.Module):
    def __init__(self, cfg: SambertConfig) -> None:
        super().__init__()
        self.fsmn = FsmnEncoder(
            cfg.postnet_filter_size,
            cfg.postnet_fsmn_num_layers,
            cfg.num_mels,
            cfg.postnet_num_memory_units,
            cfg.postnet_ffn_inner_dim,
            cfg.postnet_shift,
        )
        self.lstm = nn.LSTM(cfg.postnet_num_memory_units, cfg.postnet_lstm_units, num_layers=1, batch_first=True)
        self.fc = nn.Linear(cfg.postnet_lstm_units, cfg.num_mels)

    def forward(self, mel: Tensor) -> Tensor:
        """``mel``: [L, num_mels] -> residual [L, num_mels]."""
        h = self.fsmn(mel.t().unsqueeze(0)).transpose(1, 2)
        h, _ = self.lstm(h)
        out: Tensor = self.fc(h[0])
        return out


# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AcousticInputs:
    """One sentence's id streams, each [T] (the trailing end token already dropped); for an SE model ``speaker``
    is the speaker embedding repeated per token, [T, speaker_units] float."""

    sy: Tensor
    tone: Tensor
    syllable_flag: Tensor
    word_segment: Tensor
    emotion: Tensor
    speaker: Tensor


@dataclass(frozen=True)
class AcousticOutput:
    log_duration: Tensor  # [T]
    pitch: Tensor  # [T]
    energy: Tensor  # [T]
    x_band_width: int
    h_band_width: int
    num_frames: int
    dec_outputs: Tensor  # [num_frames, num_mels]
    postnet_outputs: Tensor  # [num_frames, num_mels]
    #: Frames per token after speed scaling and rounding (what the decoder expanded; sums to ``num_frames``),
    #: the basis of the timestamps.
    frames: Tensor  # [T] int64


@dataclass(frozen=True)
class Adapted:
    """What the encoder and variance adaptor give the decoder (``SambertModel._adapt``)."""

    log_duration: Tensor  # [T]
    pitch: Tensor  # [T]
    energy: Tensor  # [T]
    durations: Tensor  # [T] frames per token as the length regulator rounded them (speed applied)
    band: int
    num_frames: int
    memory: Tensor  # [steps, d_mem]


class AcousticStream:
    """One sentence's mel, decoded on demand (``SambertModel.infer_stream``).

    The per-token layout (``durations``, ``pitch``, ...) is known from the start. ``chunks`` runs the
    autoregressive decoder and the postnet as far as each chunk needs: the postnet's FSMN layers look
    ``lookahead`` frames ahead (the sum of their right contexts), so a postnet frame is final once that many later
    decoder frames exist; its LSTM is one-directional and carries its state. No frame is computed twice.
    """

    def __init__(self, adapted: Adapted, plan: _DecoderPlan, postnet: PostNet, r: int, num_mels: int) -> None:
        self._adapted = adapted
        self._plan = plan
        self._postnet = postnet
        self.r = r
        self.num_mels = num_mels
        self.log_duration = adapted.log_duration
        self.pitch = adapted.pitch
        self.energy = adapted.energy
        self.durations = adapted.durations
        self.band = adapted.band
        self.num_frames = adapted.num_frames
        self.lookahead = postnet_lookahead(postnet)

    def chunks(self, first_frames: int, frames: int) -> Iterator[Tensor]:
        """Postnet mel [n, num_mels] in order: the first chunk as soon as ``first_frames`` frames are final, then
        chunks twice as large as the one before up to ``frames`` (so that each is made before the audio already
        sent has played), then chunks of at least ``frames`` (a chunk can be up to ``r - 1`` frames larger: the
        decoder makes ``r`` per step), the rest at the end. Closing the iterator stops the decoder."""
        ad = self._adapted
        total = ad.num_frames
        if total == 0:
            return
        post = _PostnetStream(self._postnet)
        pending: list[Tensor] = []
        decoded = 0  # valid decoder frames made so far
        pushed = 0  # decoder frames handed to the postnet
        sent = 0  # postnet frames yielded so far
        target = max(1, first_frames)
        for x in self._plan.steps(ad.memory, ad.band):
            pending.append(x)
            decoded = min(decoded + self.r, total)
            if decoded < total and decoded - self.lookahead - sent >= target:
                out = post.push(self._mel(pending, decoded - pushed), final=False)
                pending, pushed = [], decoded
                sent += out.shape[0]
                target = min(max(1, frames), 2 * target)
                yield out
        out = post.push(self._mel(pending, decoded - pushed), final=True)
        if out.shape[0]:
            yield out

    def _mel(self, hidden: list[Tensor], valid: int) -> Tensor:
        """Decoder frames of the given steps; ``valid`` drops the last step's padding past the sentence's end."""
        if not hidden:
            return self._adapted.memory.new_zeros(0, self.num_mels)
        return self._plan.project(torch.stack(hidden)).reshape(-1, self.num_mels)[:valid]


def postnet_lookahead(postnet: PostNet) -> int:
    """Future decoder frames one postnet frame depends on: the FSMN layers' right contexts add up."""
    return sum(block.rp for block in postnet.fsmn.memory_block_lst if isinstance(block, MemoryBlock))


class _FsmnLayerState:
    def __init__(self, residual: bool) -> None:
        self.residual = residual
        self.h: Tensor | None = None  # the FFN's output from frame ``h_start`` on
        self.h_start = 0
        self.x: Tensor | None = None  # the layer's input from frame ``done`` on (for the residual)
        self.received = 0
        self.done = 0


class _PostnetStream:
    """``PostNet.forward`` (plus the decoder residual) run incrementally: each FSMN layer emits a frame once its
    right context has arrived (or the sentence ended: then zeros, as the whole-sentence padding), the LSTM keeps its
    state between calls."""

    def __init__(self, postnet: PostNet) -> None:
        self.postnet = postnet
        fsmn = postnet.fsmn
        self.layers: list[tuple[FsmnFeedForward, MemoryBlock, _FsmnLayerState]] = []
        for ffn, block in zip(fsmn.ffn_lst, fsmn.memory_block_lst, strict=True):
            assert isinstance(ffn, FsmnFeedForward)
            assert isinstance(block, MemoryBlock)
            residual = ffn.w_1.in_channels == ffn.w_2.out_channels
            self.layers.append((ffn, block, _FsmnLayerState(residual)))
        self.lstm_state: tuple[Tensor, Tensor] | None = None
        self.dec: Tensor | None = None  # decoder frames not yet emitted (the postnet adds its output to them)

    def push(self, dec: Tensor, final: bool) -> Tensor:
        """New decoder frames [n, num_mels] -> the postnet frames that are now final [m, num_mels]."""
        self.dec = dec if self.dec is None else torch.cat([self.dec, dec])
        x = dec.t().unsqueeze(0)
        for ffn, block, state in self.layers:
            x = self._layer(ffn, block, state, x, final)
        if x.shape[-1] == 0:
            return dec.new_zeros(0, dec.shape[1])
        h, self.lstm_state = self.postnet.lstm(x.transpose(1, 2), self.lstm_state)
        m = h.shape[1]
        out: Tensor = self.postnet.fc(h[0]) + self.dec[:m]
        self.dec = self.dec[m:]
        return out

    @staticmethod
    def _layer(ffn: FsmnFeedForward, block: MemoryBlock, st: _FsmnLayerState, x: Tensor, final: bool) -> Tensor:
        n = x.shape[-1]
        if n:
            h_new = ffn(x)
            st.h = h_new if st.h is None else torch.cat([st.h, h_new], dim=2)
            if st.residual:
                st.x = x if st.x is None else torch.cat([st.x, x], dim=2)
            st.received += n
        end = st.received if final else st.received - block.rp
        start = st.done
        if end <= start or st.h is None:
            channels = block.conv_dw.out_channels
            return x.new_zeros(1, channels, 0)
        lo, hi = start - block.lp, end + block.rp
        avail_lo, avail_hi = st.h_start, st.received
        seg = st.h[:, :, max(lo, avail_lo) - avail_lo : min(hi, avail_hi) - avail_lo]
        window = F.pad(seg, (max(0, avail_lo - lo), max(0, hi - avail_hi)))
        out: Tensor = block.conv_dw(window) + st.h[:, :, start - avail_lo : end - avail_lo]
        if st.residual:
            assert st.x is not None
            out = out + st.x[:, :, : end - start]
            st.x = st.x[:, :, end - start :]
        st.done = end
        keep = max(0, end - block.lp)
        st.h = st.h[:, :, keep - avail_lo :]
        st.h_start = keep
        return out


class SambertModel(nn.Module):
    def __init__(self, cfg: SambertConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.r = cfg.outputs_per_step
        self.num_mels = cfg.num_mels
        d_mem = cfg.encoder_projection_units * cfg.outputs_per_step + cfg.emotion_units + cfg.speaker_units
        self.text_encoder = TextEncoder(cfg)
        # An SE model takes the speaker embedding as it is: it has no speaker table.
        self.spk_tokenizer = None if cfg.se else nn.Embedding(cfg.vocab["speaker"], cfg.speaker_units)
        self.emo_tokenizer = nn.Embedding(cfg.vocab["emotion"], cfg.emotion_units)
        self.variance_adaptor = VarianceAdaptor(cfg)
        self.mel_decoder = MelDecoder(cfg, d_mem)
        self.mel_postnet = PostNet(cfg)
        self._decoder_plan: _DecoderPlan | None = None

    def infer(
        self,
        inputs: AcousticInputs,
        speed: float = 1.0,
        timings: MutableMapping[str, float] | None = None,
        pitch_shift: float = 0.0,
    ) -> AcousticOutput:
        """Run on one sentence (``AcousticInputs``).

        ``speed`` divides the predicted durations (in frames) before they are rounded, so a sentence at speed 2
        has about half the frames. ``pitch_shift`` is added to every token's predicted pitch before the pitch
        embedding; the pitch is in the model's normalised units (KAN-TTS trains on per-speaker mean/std-normalised
        f0, so 1.0 is one standard deviation of the speaker's training f0). The shifted pitch then also conditions
        the duration predictor, as the predicted one does. ``AcousticOutput.pitch`` is the pitch that was used.
        """
        t0 = time.perf_counter()
        ad = self._adapt(inputs, speed, pitch_shift)
        if ad.num_frames == 0:
            empty = ad.memory.new_zeros(0, self.num_mels)
            return AcousticOutput(ad.log_duration, ad.pitch, ad.energy, ad.band, ad.band, 0, empty, empty, ad.durations)
        t1 = time.perf_counter()
        dec = self._decode(ad.memory, ad.band).reshape(-1, self.num_mels)[: ad.num_frames]
        t2 = time.perf_counter()
        post = self.mel_postnet(dec) + dec
        t3 = time.perf_counter()
        if timings is not None:
            timings["encoder_adaptor"] = timings.get("encoder_adaptor", 0.0) + (t1 - t0)
            timings["decoder"] = timings.get("decoder", 0.0) + (t2 - t1)
            timings["postnet"] = timings.get("postnet", 0.0) + (t3 - t2)
        return AcousticOutput(
            ad.log_duration, ad.pitch, ad.energy, ad.band, ad.band, ad.num_frames, dec, post, ad.durations
        )

    def infer_stream(
        self,
        inputs: AcousticInputs,
        speed: float = 1.0,
        pitch_shift: float = 0.0,
    ) -> AcousticStream:
        """Like ``infer``, but the mel comes out in chunks while the decoder runs (see ``AcousticStream``).

        The encoder and variance adaptor run here, at once: durations, pitch and energy are known before any
        frame is decoded. Iterating the stream decodes; the concatenated chunks equal ``infer``'s
        ``postnet_outputs`` up to float rounding.
        """
        ad = self._adapt(inputs, speed, pitch_shift)
        if self._decoder_plan is None:
            self.prepare()
        assert self._decoder_plan is not None
        return AcousticStream(ad, self._decoder_plan, self.mel_postnet, self.r, self.num_mels)

    def _adapt(self, inputs: AcousticInputs, speed: float, pitch_shift: float) -> Adapted:
        """Text encoder and variance adaptor: per-token predictions and the decoder's memory, one row per step."""
        va = self.variance_adaptor
        text_hid = self.text_encoder(inputs.sy, inputs.tone, inputs.syllable_flag, inputs.word_segment)
        emo_hid = self.emo_tokenizer(inputs.emotion)
        spk_hid = inputs.speaker if self.spk_tokenizer is None else self.spk_tokenizer(inputs.speaker)

        pred_in = torch.cat([text_hid, spk_hid, emo_hid], dim=-1)
        pitch = va.pitch_predictor(pred_in)
        if pitch_shift != 0.0:
            pitch = pitch + pitch_shift
        energy = va.energy_predictor(pred_in)
        pitch_emb = va.pitch_emb(pitch[None, None, :])[0].t()
        energy_emb = va.energy_emb(energy[None, None, :])[0].t()
        text_aug = text_hid + pitch_emb + energy_emb
        dur_cond = torch.cat([text_aug, spk_hid, emo_hid], dim=-1)
        log_duration = va.duration_predictor.infer(dur_cond)
        durations = torch.exp(log_duration) - 1
        if speed != 1.0:
            durations = durations / speed

        reps = (durations + 0.5).long()
        num_frames = int(reps.sum().item())
        band = int(durations.max() / self.r + 0.5)
        if num_frames == 0:
            memory = text_hid.new_zeros(0, 0)
            return Adapted(log_duration, pitch, energy, reps, band, 0, memory)

        padded = -(-num_frames // self.r) * self.r
        lr_text = _pad_rows(torch.repeat_interleave(text_aug, reps, dim=0), padded)
        lr_emo = torch.repeat_interleave(emo_hid, reps, dim=0)
        lr_spk = torch.repeat_interleave(spk_hid, reps, dim=0)
        starts = torch.cumsum(reps, 0) - reps
        positions = torch.arange(num_frames) - torch.repeat_interleave(starts, reps) + 1
        positions = _pad_rows(positions.to(text_hid.dtype)[:, None], padded)[:, 0]
        lr_text = lr_text + va.dur_position_encoder(positions)

        steps = padded // self.r
        memory = torch.cat(
            [lr_text.reshape(steps, -1), lr_spk[:: self.r], lr_emo[:: self.r]],
            dim=-1,
        )
        return Adapted(log_duration, pitch, energy, reps, band, num_frames, memory)

    def prepare(self) -> None:
        """Derive the inference-time weight layouts from the loaded parameters (call again after reloading)."""
        self._decoder_plan = _DecoderPlan(self.mel_decoder.mel_dec, self.num_mels)
        self.variance_adaptor.duration_predictor.prepare()

    def _decode(self, memory: Tensor, band: int) -> Tensor:
        if self._decoder_plan is None:
            self.prepare()
        assert self._decoder_plan is not None
        return self._decoder_plan.run(memory, band)


#: Float type of the decoder loop's arrays (the checkpoints are float32).
_F32 = np.float32


def _np(t: Tensor) -> npt.NDArray[np.float64]:
    """A float64 copy for folding weights (the products are rounded to float32 once, at the end)."""
    return t.detach().double().numpy().copy()


def _with_bias(w: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    """``[w | b]`` as float32: ``_with_bias(w, b) @ [v, 1] == w @ v + b`` in one BLAS call.

    The products are memory-bound (the weights are read once per step), and OpenBLAS streams widening products
    (more outputs than inputs) faster in column-major order, narrowing ones in row-major (bench/decoder.py's
    loop, 5-10%).
    """
    wb = np.concatenate([w, b[:, None]], axis=1).astype(_F32)
    return np.asfortranarray(wb) if wb.shape[0] > wb.shape[1] else np.ascontiguousarray(wb)


def _pack(arrays: Sequence[npt.NDArray[np.float32]]) -> list[npt.NDArray[np.float32]]:
    """Copies of ``arrays`` (same shapes and memory orders) side by side in one allocation, each 64-byte aligned.

    A decoder step reads every matrix once (~17 MB for the parity model): more than the L2 TLB covers in 4 KiB
    pages. numpy asks the kernel for transparent huge pages (madvise) on allocations of 4 MiB and more, so one
    allocation instead of ~50 small ones saves a TLB miss per 4 KiB of weights: 2-10% off the loop
    (bench/decoder.py), where the kernel allows it (transparent_hugepage "madvise" or "always").
    """
    align = 16  # floats
    sizes = [-(-a.size // align) * align for a in arrays]
    arena = np.empty(sum(sizes) + align, _F32)
    start = (-arena.ctypes.data // 4) % align
    out = []
    for a, size in zip(arrays, sizes, strict=True):
        flat = arena[start : start + a.size]
        view = flat.reshape(a.shape) if a.flags.c_contiguous else flat.reshape(a.shape[::-1]).T
        view[...] = a
        out.append(view)
        start += size
    return out


def _fold_ln(
    w: npt.NDArray[np.float64], b: npt.NDArray[np.float64], ln: nn.LayerNorm
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """``w @ layer_norm(x) + b`` as ``w' @ normalised(x) + b'``: the norm's scale and shift go into the product."""
    g, s = _np(ln.weight), _np(ln.bias)
    return w * g[None, :], b + w @ s


def _bias_np(module: nn.Conv1d | nn.Linear) -> npt.NDArray[np.float64]:
    if module.bias is None:
        return np.zeros(module.weight.shape[0])
    return _np(module.bias)


class _PncaLayer:
    """One PNCA block's weights, rearranged for the single-step decoder loop (numpy, float32).

    Every product of a step is one matrix-vector call with the bias as an extra column (``_with_bias``), the
    layer norms' scale and shift folded into the product that follows them, and the attention's ``1/sqrt(d)``
    folded into the query rows.
    """

    def __init__(self, block: PNCABlock) -> None:
        attn = block.pnca_attn
        ffn = block.pos_ffn
        self.n_head, self.d_head = attn.n_head, attn.d_head
        hd = attn.n_head * attn.d_head
        w, b = _fold_ln(_np(attn.w_x_qkv.weight), _np(attn.w_x_qkv.bias), attn.layer_norm)
        alpha = 1.0 / math.sqrt(attn.d_head)
        self.w_qkv = _with_bias(np.concatenate([w[:hd] * alpha, w[hd:]]), np.concatenate([b[:hd] * alpha, b[hd:]]))
        self.w_h_kv = (attn.w_h_kv.weight.detach(), attn.w_h_kv.bias.detach())
        self.w_fc = _with_bias(np.concatenate([_np(attn.fc_x.weight), _np(attn.fc_h.weight)], axis=1),
                               _np(attn.fc_x.bias) + _np(attn.fc_h.bias))
        w1, b1 = _fold_ln(_np(ffn.w_1.weight)[:, :, 0], _bias_np(ffn.w_1), ffn.layer_norm)
        self.w_1 = _with_bias(w1, b1)
        self.w_2 = _with_bias(_np(ffn.w_2.weight)[:, :, 0], _bias_np(ffn.w_2))


class _DecoderPlan:
    """PNCA autoregressive decoder, one step of ``r`` frames at a time.

    Step ``t`` attends to its own past ``[t - band, t]`` and to the memory ``[t, t + band]`` (both bands have the
    same width, as in the reference). Per layer, keys of both live in one buffer (values in another) with ``2H``
    heads and ``S + band`` rows: heads ``0..H-1`` hold the decoder's own keys shifted right by ``band`` rows, heads
    ``H..2H-1`` the memory keys (projected once per utterance). The window of step ``t`` is then the single
    slice ``[t, t + band]`` for all ``2H`` heads, with a precomputed additive mask for the rows that fall before
    the start or after the end.

    The loop runs on numpy arrays: a step is ~50 matrix-vector products of a few hundred KiB each plus ~200 tiny
    element-wise operations, where numpy's per-call cost is a fraction of torch's and its BLAS (OpenBLAS) streams
    the weights faster than torch's (MKL) on the CPUs measured (bench/decoder.py: about 2x on the parity model).
    OpenBLAS runs matrix-vector products of these sizes on the calling thread only, so the loop stays within the
    worker's thread budget. Whatever runs once per utterance (the memory's projections) and the output
    projection stay batched torch products.
    """

    def __init__(self, dec: HybridAttentionDecoder, num_mels: int) -> None:
        self.d_model = dec.d_model
        self.num_mels = num_mels
        scale = dec.d_model**0.5
        linears = [m for m in dec.prenet.fcs if isinstance(m, nn.Linear)]
        w_in = dec.dec_in_proj.weight.detach()
        self.d_mem = w_in.shape[1] - dec.d_model
        w_in_x = _np(w_in[:, self.d_mem :])
        # dec_in_proj(cat(memory, prenet_out)) * scale, with the prenet's last linear folded into the projection.
        last = linears[-1]
        self.w_mem = w_in[:, : self.d_mem] * scale
        self.b_mem = (dec.dec_in_proj.bias.detach() + w_in[:, self.d_mem :] @ last.bias.detach()) * scale
        self.w_pre = np.ascontiguousarray(((w_in_x @ _np(last.weight)) * scale).astype(_F32))
        prenet = [(_np(m.weight), _np(m.bias)) for m in linears[:-1]]
        self.prenet = [_with_bias(w, b) for w, b in prenet[1:]]
        self.layers = [_PncaLayer(block) for block in dec.pnca if isinstance(block, PNCABlock)]
        self.ln = (dec.ln.weight.detach(), dec.ln.bias.detach())
        self.w_out = dec.dec_out_proj.weight.detach()
        self.b_out = dec.dec_out_proj.bias.detach()
        # Only the last frame of a step feeds the next step; its projection (after the final layer norm) is folded
        # into the first prenet layer.
        w_p1, b_p1 = prenet[0]
        w_last, b_last = _np(self.w_out[-num_mels:]), _np(self.b_out[-num_mels:])
        self.w_fb = _with_bias(*_fold_ln(w_p1 @ w_last, w_p1 @ b_last + b_p1, dec.ln))
        #: The first prenet layer's output at step 0 (the all-zero "go" frame).
        self.h_go = np.maximum(b_p1, 0).astype(_F32)
        # All the step's matrices in one allocation, in the order a step reads them.
        mats = _pack([self.w_fb, *self.prenet, self.w_pre,
                      *(w for layer in self.layers for w in (layer.w_qkv, layer.w_fc, layer.w_1, layer.w_2))])
        self.w_fb, self.w_pre = mats[0], mats[len(self.prenet) + 1]
        self.prenet = mats[1 : len(self.prenet) + 1]
        for i, layer in enumerate(self.layers):
            layer.w_qkv, layer.w_fc, layer.w_1, layer.w_2 = mats[len(self.prenet) + 2 + 4 * i :][:4]

    def run(self, memory: Tensor, band: int) -> Tensor:
        """``memory``: [S, d_mem] -> decoder output [S, r * num_mels]."""
        return self.project(torch.stack(list(self.steps(memory, band))))

    def project(self, hidden: Tensor) -> Tensor:
        """Hidden states of some steps [n, d_model] -> their mel frames [n, r * num_mels]."""
        return F.linear(F.layer_norm(hidden, (self.d_model,), *self.ln, 1e-6), self.w_out, self.b_out)

    def steps(self, memory: Tensor, band: int) -> Iterator[Tensor]:
        """The decoder loop, one step at a time: yields each step's hidden state [d_model] (before ``project``)."""
        steps = memory.shape[0]
        width = band + 1
        d_model = self.d_model
        memory = memory.float()
        mem_in = F.linear(memory, self.w_mem, self.b_mem).numpy()
        hidden = np.empty((steps, d_model), _F32)
        eps = 1e-6
        inv_d = 1.0 / d_model
        ones = np.ones(d_model, _F32)
        # Product inputs end with a 1 (the bias column of ``_with_bias``); all buffers are reused by every step.
        normed = np.ones(d_model + 1, _F32)
        norm_in = normed[:d_model]
        pre = [np.ones(w.shape[0] + 1, _F32) for w in [self.w_fb, *self.prenet]]

        layers = []
        for layer in self.layers:
            n_head, d_head = layer.n_head, layer.d_head
            # Row r of ``kv`` holds, per group (own past, memory), the keys and values of all heads; the decoder's
            # own step s sits in row s + band, memory position p in row p, so that the window of step t is rows
            # [t, t + band] for both groups. The last column is a 1 for the values (the attention's product then
            # also gives each head's softmax denominator) and unused for the keys.
            kv = np.zeros((steps + band, 2, 2, n_head, d_head + 1), _F32)
            kv[:, :, 1, :, d_head] = 1.0
            hkv = F.linear(memory, *layer.w_h_kv).reshape(steps, 2, n_head, d_head).numpy()
            kv[:steps, 1, :, :, :d_head] = hkv
            qkv = np.empty(layer.w_qkv.shape[0], _F32)
            att = np.empty((2, n_head, 1, d_head + 1), _F32)
            heads = np.ones(layer.w_fc.shape[1], _F32)
            ffn = np.ones(layer.w_1.shape[0] + 1, _F32)
            layers.append((
                # One query for both groups (own past, memory): the attention's product broadcasts it, so that
                # both attentions run as one batched product over 2 * n_head heads.
                layer.w_qkv, qkv, qkv[: n_head * d_head].reshape(1, n_head, 1, d_head),
                qkv[n_head * d_head :].reshape(2, n_head, d_head), kv[:, 0, :, :, :d_head],
                kv[:, :, 0, :, :d_head].transpose(1, 2, 3, 0), kv[:, :, 1].transpose(1, 2, 0, 3),
                np.empty((2, n_head, 1, width), _F32), np.empty((2, n_head, 1, 1), _F32), att,
                att[..., :d_head], att[..., d_head:], heads[:-1].reshape(2, n_head, 1, d_head), heads,
                layer.w_fc, layer.w_1, ffn, ffn[:-1], layer.w_2,
            ))
        n_head = self.layers[0].n_head if self.layers else 1
        offs = np.arange(width)
        pos = np.arange(steps)[:, None]
        invalid = np.stack(
            [
                np.broadcast_to((offs[None, :] < band - pos)[:, None, None, :], (steps, n_head, 1, width)),
                np.broadcast_to((pos + offs[None, :] >= steps)[:, None, None, :], (steps, n_head, 1, width)),
            ],
            axis=1,
        )
        mask = np.where(invalid, _F32(-np.inf), _F32(0.0)).astype(_F32)
        # Only the steps whose window crosses an end need the mask.
        masked = [bool(invalid[t].any()) for t in range(steps)]

        for t in range(steps):
            # Step 0 starts from the all-zero "go" frame: the first prenet layer sees zeros.
            h = pre[0]
            if t > 0:
                x = hidden[t - 1]
                np.subtract(x, np.dot(ones, x) * inv_d, out=norm_in)
                np.multiply(norm_in, 1.0 / math.sqrt(float(np.dot(norm_in, norm_in)) * inv_d + eps), out=norm_in)
                np.dot(self.w_fb, normed, out=h[:-1])
                np.maximum(h[:-1], 0.0, out=h[:-1])
            else:
                h[:-1] = self.h_go
            for w, nxt in zip(self.prenet, pre[1:], strict=True):
                np.dot(w, h, out=nxt[:-1])
                np.maximum(nxt[:-1], 0.0, out=nxt[:-1])
                h = nxt
            x = hidden[t]
            np.dot(self.w_pre, h[:-1], out=x)
            x += mem_in[t]
            for (w_qkv, qkv, q, k_v, own, keys, values, scores, top, att, att_num, att_den, heads_in, heads,
                 w_fc, w_1, ffn, ffn_in, w_2) in layers:
                np.subtract(x, np.dot(ones, x) * inv_d, out=norm_in)
                np.multiply(norm_in, 1.0 / math.sqrt(float(np.dot(norm_in, norm_in)) * inv_d + eps), out=norm_in)
                np.dot(w_qkv, normed, out=qkv)
                own[t + band] = k_v
                np.matmul(q, keys[..., t : t + width], out=scores)
                if masked[t]:
                    scores += mask[t]
                np.max(scores, axis=-1, keepdims=True, out=top)
                scores -= top
                np.exp(scores, out=scores)
                np.matmul(scores, values[:, :, t : t + width], out=att)
                np.divide(att_num, att_den, out=heads_in)
                x += w_fc @ heads
                np.subtract(x, np.dot(ones, x) * inv_d, out=norm_in)
                np.multiply(norm_in, 1.0 / math.sqrt(float(np.dot(norm_in, norm_in)) * inv_d + eps), out=norm_in)
                np.dot(w_1, normed, out=ffn_in)
                np.maximum(ffn_in, 0.0, out=ffn_in)
                x += w_2 @ ffn
            # A view of its row of ``hidden``, which later steps only read.
            yield torch.from_numpy(x)


def _pad_rows(x: Tensor, rows: int) -> Tensor:
    if x.shape[0] == rows:
        return x
    return F.pad(x, (0, 0, 0, rows - x.shape[0]))
