"""HiFi-GAN generator as KAN-TTS builds it (``kantts.models.hifigan.Generator``), inference only.

Per upsampling stage the signal goes through ``x = sin(x) + x``, then two branches that are summed: a transposed
convolution and a nearest-neighbour repeat followed by a convolution; then the mean of the residual blocks.
Convolutions are causal (left padding only) when the config says so. Checkpoints store weight-normalised
parameters (``weight_g``/``weight_v``); they are folded into plain weights once, at load time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tts_server.inference.engine import EngineLoadError
from tts_server.inference.sambert.fastconv import Algorithm, BilinearConv
from tts_server.inference.sambert.loader import load_strict


@dataclass(frozen=True)
class HifiGanConfig:
    in_channels: int
    out_channels: int
    channels: int
    kernel_size: int
    upsample_scales: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilations: tuple[tuple[int, ...], ...]
    repeat_upsample: bool
    bias: bool
    causal: bool
    negative_slope: float
    use_weight_norm: bool
    #: NSF vocoders only (``nsf_params``): harmonics above f0 and the rate the excitation is computed at.
    nsf_harmonics: int | None = None
    nsf_sampling_rate: int | None = None

    @classmethod
    def from_params(cls, params: Mapping[str, Any], source: str) -> HifiGanConfig:
        def get(name: str, default: Any = None) -> Any:
            if name not in params:
                if default is None:
                    raise EngineLoadError(f"{source}: missing key 'Model.Generator.params.{name}'")
                return default
            return params[name]

        def ints(name: str) -> tuple[int, ...]:
            raw = get(name)
            if not isinstance(raw, list | tuple) or not raw or not all(_is_pos_int(v) for v in raw):
                raise EngineLoadError(f"{source}: Model.Generator.params.{name} must be a list of positive ints")
            return tuple(int(v) for v in raw)

        def pos_int(name: str) -> int:
            raw = get(name)
            if not _is_pos_int(raw):
                raise EngineLoadError(f"{source}: Model.Generator.params.{name} must be a positive int, got {raw!r}")
            return int(raw)

        nsf = params.get("nsf_params")
        nsf_harmonics: int | None = None
        nsf_rate: int | None = None
        if nsf is not None:
            if not isinstance(nsf, Mapping):
                raise EngineLoadError(f"{source}: Model.Generator.params.nsf_params must be a mapping")
            nsf_harmonics, nsf_rate = nsf.get("nb_harmonics"), nsf.get("sampling_rate")
            if not (isinstance(nsf_harmonics, int) and not isinstance(nsf_harmonics, bool) and nsf_harmonics >= 0):
                raise EngineLoadError(f"{source}: nsf_params.nb_harmonics must be an int >= 0, got {nsf_harmonics!r}")
            if not _is_pos_int(nsf_rate):
                raise EngineLoadError(f"{source}: nsf_params.sampling_rate must be a positive int, got {nsf_rate!r}")
        activation = get("nonlinear_activation", "LeakyReLU")
        if activation != "LeakyReLU":
            raise EngineLoadError(f"{source}: nonlinear_activation {activation!r} is not supported (LeakyReLU only)")
        act_params = get("nonlinear_activation_params", {"negative_slope": 0.01})
        slope = act_params.get("negative_slope", 0.01) if isinstance(act_params, Mapping) else None
        if not isinstance(slope, int | float):
            raise EngineLoadError(f"{source}: nonlinear_activation_params.negative_slope must be a number")
        dilations_raw = get("resblock_dilations")
        if not isinstance(dilations_raw, list | tuple) or not all(
            isinstance(d, list | tuple) and d and all(_is_pos_int(v) for v in d) for d in dilations_raw
        ):
            raise EngineLoadError(f"{source}: Model.Generator.params.resblock_dilations must be a list of int lists")
        cfg = cls(
            in_channels=pos_int("in_channels"),
            out_channels=pos_int("out_channels"),
            channels=pos_int("channels"),
            kernel_size=pos_int("kernel_size"),
            upsample_scales=ints("upsample_scales"),
            upsample_kernel_sizes=ints("upsample_kernal_sizes"),
            resblock_kernel_sizes=ints("resblock_kernel_sizes"),
            resblock_dilations=tuple(tuple(int(v) for v in d) for d in dilations_raw),
            repeat_upsample=bool(get("repeat_upsample", True)),
            bias=bool(get("bias", True)),
            causal=bool(get("causal", True)),
            negative_slope=float(slope),
            use_weight_norm=bool(get("use_weight_norm", True)),
            nsf_harmonics=nsf_harmonics,
            nsf_sampling_rate=nsf_rate,
        )
        if cfg.out_channels != 1:
            raise EngineLoadError(f"{source}: out_channels {cfg.out_channels} (multi-band PQMF) is not supported")
        if cfg.kernel_size % 2 == 0 or any(k % 2 == 0 for k in cfg.resblock_kernel_sizes):
            raise EngineLoadError(f"{source}: kernel sizes must be odd")
        if len(cfg.upsample_scales) != len(cfg.upsample_kernel_sizes):
            raise EngineLoadError(f"{source}: upsample_scales and upsample_kernal_sizes differ in length")
        if len(cfg.resblock_dilations) != len(cfg.resblock_kernel_sizes):
            raise EngineLoadError(f"{source}: resblock_dilations and resblock_kernel_sizes differ in length")
        if cfg.channels % (2 ** len(cfg.upsample_scales)):
            raise EngineLoadError(f"{source}: channels must be divisible by 2**len(upsample_scales)")
        return cfg

    @property
    def hop_length(self) -> int:
        hop = 1
        for s in self.upsample_scales:
            hop *= s
        return hop


def _is_pos_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


class Conv(nn.Module):
    """1-D convolution, causal (all padding on the left) or centred."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int, causal: bool, bias: bool = True) -> None:
        super().__init__()
        self.left = (kernel - 1) * dilation if causal else (kernel * dilation - dilation) // 2
        self.right = 0 if causal else self.left
        self.conv1d = nn.Conv1d(c_in, c_out, kernel, dilation=dilation, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv1d(F.pad(x, (self.left, self.right)))
        return out


class Deconv(nn.Module):
    """Transposed convolution; the causal variant drops the trailing ``kernel - stride`` samples."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, causal: bool) -> None:
        super().__init__()
        self.stride = stride
        self.causal = causal
        self.deconv = nn.ConvTranspose1d(c_in, c_out, kernel, stride, padding=0 if causal else (kernel - stride) // 2)
        self.trim = kernel - stride if causal else 0

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.deconv(x)
        if self.trim > 0:
            out = out[:, :, : out.shape[-1] - self.trim]
        return out


class ResidualBlock(nn.Module):
    def __init__(self, channels: int, kernel: int, dilations: Sequence[int], causal: bool, slope: float) -> None:
        super().__init__()
        self.slope = slope
        self.convs1 = nn.ModuleList(Conv(channels, channels, kernel, d, causal) for d in dilations)
        self.convs2 = nn.ModuleList(Conv(channels, channels, kernel, 1, causal) for _ in dilations)

    def forward(self, x: Tensor) -> Tensor:
        for c1, c2 in zip(self.convs1, self.convs2, strict=True):
            xt = c1(F.leaky_relu(x, self.slope))
            xt = c2(F.leaky_relu_(xt, self.slope))
            x = xt.add_(x)
        return x


class HifiGanGenerator(nn.Module):
    #: Whether ``forward`` runs the channels-last plan once there is one; then the convolution modules' weights are
    #: made views of the plan's (one copy of the weights, not two). The NSF generator runs the modules themselves.
    plan_serves_forward = True

    def __init__(self, cfg: HifiGanConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ch = cfg.channels
        k = cfg.kernel_size
        self.conv_pre = Conv(cfg.in_channels, ch, k, 1, cfg.causal)
        self.transpose_upsamples = nn.ModuleList()
        self.repeat_upsamples = nn.ModuleList()
        self.conv_blocks = nn.ModuleList()
        for i, (scale, up_k) in enumerate(zip(cfg.upsample_scales, cfg.upsample_kernel_sizes, strict=True)):
            c_in, c_out = ch // (2**i), ch // (2 ** (i + 1))
            # Index 0 (and 1 for the repeat branch) hold parameter-free layers in the checkpoint layout.
            self.transpose_upsamples.append(
                nn.ModuleList([nn.Identity(), Deconv(c_in, c_out, up_k, scale, cfg.causal)])
            )
            if cfg.repeat_upsample:
                self.repeat_upsamples.append(
                    nn.ModuleList([nn.Identity(), nn.Identity(), Conv(c_in, c_out, k, 1, cfg.causal)])
                )
            for rk, rd in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilations, strict=True):
                self.conv_blocks.append(ResidualBlock(c_out, rk, rd, cfg.causal, cfg.negative_slope))
        self.conv_post = Conv(ch // (2 ** len(cfg.upsample_scales)), cfg.out_channels, k, 1, cfg.causal)
        # Typed views of the containers above (plain lists are not registered again as submodules).
        self._deconvs: list[Deconv] = [m[1] for m in self.transpose_upsamples]  # type: ignore[index]
        self._repeat_convs: list[Conv] = [m[2] for m in self.repeat_upsamples]  # type: ignore[index]
        self._blocks: list[ResidualBlock] = list(self.conv_blocks)  # type: ignore[arg-type]
        self._fused_up: list[tuple[Tensor, Tensor]] | None = None
        self._nwc: _NwcPlan | None = None
        self.chunk_frames = VOCODER_CHUNK_FRAMES

    def prepare(self) -> None:
        """Derive the fast inference layout from the loaded weights (call after loading).

        With causal convolutions, ``conv(repeat(a, s))`` is itself a transposed convolution of ``a`` with stride
        ``s`` and kernel length ``s + k - 1`` (each output phase sums the conv taps that land on the same input
        sample). Adding that kernel to the transposed branch's kernel gives a single transposed convolution at the
        low rate instead of a convolution at the upsampled rate: same result up to float rounding, less work.
        That transposed convolution then runs as a plain convolution with one output group per phase
        (``_polyphase``), and everything runs on channels-last tensors (``_NwcPlan``).
        """
        self._fused_up = None
        self._nwc = None
        cfg = self.cfg
        if not (cfg.causal and cfg.repeat_upsample):
            return
        fused = []
        for i, scale in enumerate(cfg.upsample_scales):
            deconv = self._deconvs[i].deconv
            conv = self._repeat_convs[i].conv1d
            w_t = deconv.weight.detach()  # [in, out, k_t]
            w_r = conv.weight.detach()  # [out, in, k]
            k = w_r.shape[-1]
            length = max(w_t.shape[-1], scale + k - 1)
            kernel = w_t.new_zeros(w_t.shape[0], w_t.shape[1], length)
            kernel[:, :, : w_t.shape[-1]] += w_t
            taps = w_r.permute(1, 0, 2)  # [in, out, k]
            for phase in range(scale):
                for j in range(k):
                    kernel[:, :, phase + k - 1 - j] += taps[:, :, j]
            bias = _bias_of(deconv) + _bias_of(conv)
            fused.append((kernel.contiguous(), bias))
        self._fused_up = fused
        # Channels-last 2-D layouts ([1, C, 1, T] stored time-major): oneDNN runs these convolutions faster than
        # the 1-D channels-first ones, and with batch 1 a causal trim of the time axis stays a contiguous view.
        self._nwc = _NwcPlan(self, fused)
        if self.plan_serves_forward:
            self._nwc.share_weights(self)

    def use_bfloat16(self) -> bool:
        """Run the fast path in bfloat16 from now on; False (and nothing changes) where that path or native bf16
        support is missing, since emulated bf16 convolutions are much slower than fp32."""
        if self._nwc is None or not _native_bf16():
            return False
        self._nwc.to(torch.bfloat16)
        return True

    def use_fast_conv(self, enabled: bool) -> int:
        """Run the wide convolutions by their fast algorithm (``fast_conv_for``: Winograd or DFT overlap-save) or
        all of them directly; returns how many convolutions take the fast path (0 without the causal fp32 fast
        path)."""
        if self._nwc is None:
            return 0
        return self._nwc.set_fast(enabled)

    def stream(self) -> VocoderStream | None:
        """A chunked vocoding session for one sentence, or None where chunks cannot equal the whole: a
        non-causal generator looks ahead (and only the causal fast path carries its state)."""
        if self._nwc is None:
            return None
        return VocoderStream(self._nwc)

    def set_chunk_frames(self, frames: int) -> None:
        """Vocode a sentence in pieces of ``frames`` mel frames carrying the causal state (0: in one pass); see
        ``forward``."""
        if frames < 0:
            raise ValueError(f"chunk frames must be >= 0, got {frames}")
        self.chunk_frames = frames

    def forward(self, mel: Tensor) -> Tensor:
        """``mel``: [frames, in_channels] -> waveform [frames * hop].

        The causal generator runs in pieces of ``chunk_frames`` (a ``VocoderStream``; the result equals one pass up
        to float rounding), the last piece padded with zero frames to a multiple of ``chunk_frames // 4`` and its
        samples past the sentence dropped (causal: padding after the end changes nothing before it). So every
        convolution sees one of four input lengths whatever the sentence's: oneDNN compiles each convolution's
        primitive per input shape, and over one pass per sentence a worker compiled ~40 new primitives for every
        new sentence length (~20 ms of CPU, and memory growing with its cache), while its activations grew with the
        longest sentence (+0.5 GiB at 500 frames). In pieces, the primitives stay cached and the working set is a
        piece's; the pieces themselves cost 1-5% more CPU than one pass whose primitives are all cached (measured
        interleaved per sentence), about what one pass spends compiling (``bench/vocoder_chunks.py``).
        """
        if self._nwc is None:
            return self._generate(mel.t().unsqueeze(0), None)
        chunk = self.chunk_frames
        frames = mel.shape[0]
        if not chunk or frames == 0:
            return self._nwc.run(mel)
        step = max(1, chunk // VOCODER_TAIL_STEPS)
        hop = self.cfg.hop_length
        stream = VocoderStream(self._nwc)
        out = mel.new_empty(frames * hop, dtype=torch.float32)
        for start in range(0, frames, chunk):
            piece = mel[start : start + chunk]
            n = piece.shape[0]
            padded = min(chunk, -(-n // step) * step)
            if padded > n:
                piece = torch.cat([piece, piece.new_zeros(padded - n, piece.shape[1])])
            out[start * hop : (start + n) * hop] = stream.push(piece)[: n * hop]
        return out

    def _generate(self, feats: Tensor, excitation: Callable[[int], Tensor] | None) -> Tensor:
        """[1, in_channels, frames] -> waveform; an NSF generator adds ``excitation(stage)`` (its source signal
        at that upsampling stage's rate) after each stage's upsampling."""
        cfg = self.cfg
        slope = cfg.negative_slope
        n_kernels = len(cfg.resblock_kernel_sizes)
        fused = self._fused_up
        x = self.conv_pre(feats)
        for i, scale in enumerate(cfg.upsample_scales):
            x = torch.sin(x).add_(x)
            act = F.leaky_relu(x, slope)
            length = act.shape[-1] * scale
            if fused is not None:
                kernel, bias = fused[i]
                x = F.conv_transpose1d(act, kernel, bias, stride=scale)[:, :, :length]
            else:
                x = self._deconvs[i](act)[:, :, :length]
                if cfg.repeat_upsample:
                    x = self._repeat_convs[i](torch.repeat_interleave(act, scale, dim=-1)) + x
            if excitation is not None:
                x = x + excitation(i)
            blocks = self._blocks[i * n_kernels : (i + 1) * n_kernels]
            xs = blocks[0](x)
            for block in blocks[1:]:
                xs = xs.add_(block(x))
            x = xs.div_(n_kernels)
        x = self.conv_post(F.leaky_relu(x))
        return torch.tanh(x).reshape(-1)


#: (weight [C_out, C_in, 1, k] channels-last, bias, dilation, causal left padding, fast algorithm or None)
_ConvPlan = tuple[Tensor, Tensor | None, int, int, BilinearConv | None]

#: The fast algorithm per convolution shape, chosen layer by layer from ``bench/vocoder_layers.py`` (one core, AVX-512,
#: fp32): kernel length -> ((fewest channels, algorithm), ...), the first rule whose channel bound ``min(C_in, C_out)``
#: meets wins; the residual blocks' and the upsampling convolutions alike. DFT overlap-save for kernel 7 from 64
#: channels and kernel 11 from 32 (1.3-2.1x per layer at 64-128 channels). Not taken, measured: Winograd F(8, 7) for
#: kernel 7 (1.6-2.2x, but it errs by 2e-5 to 3e-4 on unit-scale signals, 30-300x direct's float32 rounding; F(4, 7) and
#: F(6, 7) likewise); Winograd F(4, 3) for kernel 3 at 128 channels (1.2-1.35x per layer, no gain measurable over the
#: whole vocoder, +3.9 MiB of transformed kernels, and 10x direct's rounding). DFT32 for kernel 11 also at 32 channels
#: (the whole vocoder 1.05-1.07x faster, +1.5 MiB of transformed kernels); not at 16 channels, nor DFT16 for kernel 7 at
#: 32 (whole vocoder 0.98-1.0x, measured side by side).
#: Narrower layers, and short signals (below ``FAST_CONV_MIN_T`` samples, e.g. small streaming chunks, where the
#: per-call overhead dominates), stay direct: the transforms cost more than the products they save. With more than
#: ``FAST_CONV_MAX_THREADS`` torch threads everything runs direct: oneDNN's convolution scales with threads, the fast
#: path's small per-block GEMMs and copies do not (2 threads: 0.97x of direct, measured).
FAST_CONV: dict[int, tuple[tuple[int, Algorithm], ...]] = {
    7: ((64, Algorithm("fourier", 16)),),
    11: ((32, Algorithm("fourier", 32)),),
}
FAST_CONV_MIN_T = 512
#: ``HifiGanGenerator.forward``'s piece length in mel frames (1.6 s at 16 kHz): measured against 64 and 96 (more
#: per-piece overhead) and 192-256 (more primitives and memory) in ``bench/vocoder_chunks.py``.
VOCODER_CHUNK_FRAMES = 128
#: The last piece is padded to a multiple of ``chunk_frames // VOCODER_TAIL_STEPS`` frames. Cutting the rest into
#: halvings of a piece instead (64 + 32 + 16 + 8, at most 7 frames of padding) measured slower: 164.7 against 158.2
#: ms CPU per audio second (one pass: 156.2), interleaved over 60 random lengths, every primitive cached.
VOCODER_TAIL_STEPS = 4
FAST_CONV_MAX_THREADS = 1


def fast_conv_for(c_in: int, c_out: int, kernel: int) -> Algorithm | None:
    """The fast algorithm the engine uses for this convolution shape, or None (direct)."""
    channels = min(c_in, c_out)
    return next((alg for fewest, alg in FAST_CONV.get(kernel, ()) if channels >= fewest), None)


def _conv_plan(conv: Conv) -> _ConvPlan:
    c = conv.conv1d
    weight = c.weight.detach().unsqueeze(2).contiguous(memory_format=torch.channels_last)
    bias = None if c.bias is None else c.bias.detach()
    return weight, bias, int(c.dilation[0]), conv.left, None


def _with_fast(plan: _ConvPlan, enabled: bool) -> _ConvPlan:
    weight, bias, dilation, left, _ = plan
    c_out, c_in, _, k = weight.shape
    alg = fast_conv_for(c_in, c_out, k) if enabled and weight.dtype == torch.float32 else None
    fast = None if alg is None else alg.build(weight[:, :, 0, :], bias, dilation)
    return weight, bias, dilation, left, fast


def _fast_threads() -> bool:
    return torch.get_num_threads() <= FAST_CONV_MAX_THREADS


def _rows(x: Tensor) -> Tensor:
    """[1, C, 1, T] -> [T, C]: a view of a channels-last signal (its memory is row-major [T, C])."""
    return x.permute(0, 2, 3, 1).reshape(x.shape[-1], x.shape[1])


def _nwc(rows: Tensor) -> Tensor:
    """[T, C] -> channels-last [1, C, 1, T] with the canonical strides (so that e.g. ``torch.cat`` keeps the
    layout): a view of the same memory where ``rows`` is contiguous."""
    rows = rows.contiguous()
    t, c = rows.shape
    return rows.as_strided((1, c, 1, t), (t * c, 1, t * c, c))


def _activate(x: Tensor, slope: float | None, own: bool) -> Tensor:
    """Leaky ReLU of ``x`` (in place when the caller gives ``x`` up: ``own``), or ``x`` itself without a slope."""
    if slope is None:
        return x
    return F.leaky_relu_(x, slope) if own else F.leaky_relu(x, slope)


def _activate_into(rows: Tensor, slope: float | None, out: Tensor) -> None:
    """``out`` [T, C] = leaky ReLU of ``rows`` (a copy without a slope)."""
    if slope is None:
        out.copy_(rows)
    else:
        torch.ops.aten.leaky_relu.out(rows, slope, out=out)


def _fast_input(x: Tensor, slope: float | None, left: int, fast: BilinearConv, past: Tensor | None) -> Tensor:
    """The fast algorithm's input rows for the [1, C, 1, T] signal ``x``: ``left`` rows of causal past (``past``
    [left, C], or zeros), the activated signal, zeros to the end of the last tile. The activation writes straight
    into the buffer, so the padding costs no extra pass over the signal."""
    rows = _rows(x)
    t, c = rows.shape
    buf = rows.new_empty(fast.rows_needed(t), c)
    if past is None:
        buf[:left].zero_()
    else:
        buf[:left].copy_(past)
    buf[left + t :].zero_()
    _activate_into(rows, slope, buf[left : left + t])
    return buf


def _takes_fast(plan: _ConvPlan, t: int) -> bool:
    return plan[4] is not None and t >= FAST_CONV_MIN_T and _fast_threads()


def _conv(x: Tensor, plan: _ConvPlan, slope: float | None = None, own: bool = False) -> Tensor:
    """Causal convolution of the leaky ReLU (``slope``; none without) of a [1, C, 1, T] channels-last signal
    -> [1, C_out, 1, T] channels-last. ``own``: the caller gives ``x`` up (it may be overwritten)."""
    weight, bias, dilation, left, fast = plan
    t = x.shape[-1]
    if fast is not None and _takes_fast(plan, t):
        return _nwc(fast(_fast_input(x, slope, left, fast, None), t))
    x = _activate(x, slope, own)
    return F.conv2d(x, weight, bias, padding=(0, left), dilation=(1, dilation))[..., :t]


#: ``conv(x, plan, slope, own)``: the causal convolution of ``leaky_relu(x, slope)`` (of ``x`` itself when ``slope``
#: is None); ``own``: ``x`` may be overwritten.
ConvFn = Callable[[Tensor, _ConvPlan, float | None, bool], Tensor]


class _NwcPlan:
    """The causal generator's forward pass on channels-last 2-D tensors (see ``HifiGanGenerator.prepare``)."""

    def __init__(self, gen: HifiGanGenerator, fused: list[tuple[Tensor, Tensor]]) -> None:
        cfg = gen.cfg
        self.slope = cfg.negative_slope
        self.dtype = torch.float32
        self.scales = cfg.upsample_scales
        self.n_kernels = len(cfg.resblock_kernel_sizes)
        self.pre = _conv_plan(gen.conv_pre)
        self.post = _conv_plan(gen.conv_post)
        self.up: list[_ConvPlan] = []
        for (kernel, bias), scale in zip(fused, self.scales, strict=True):
            weight, phase_bias = _polyphase(kernel, bias, scale)
            self.up.append((weight, phase_bias, 1, weight.shape[-1] - 1, None))
        self.blocks = [
            [(_conv_plan(c1), _conv_plan(c2)) for c1, c2 in zip(b.convs1, b.convs2, strict=True)]  # type: ignore[arg-type]
            for b in gen._blocks
        ]
        self.set_fast(True)

    def share_weights(self, gen: HifiGanGenerator) -> None:
        """Point the generator's convolution modules at this plan's (channels-last) weights, so that the
        checkpoint's copies can be freed: the plan serves ``forward``, the modules keep their parameters only for
        ``state_dict`` and the like (≈ 17 MiB per full-size vocoder)."""
        convs = [gen.conv_pre, gen.conv_post]
        plans = [self.pre, self.post]
        for block, pairs in zip(gen._blocks, self.blocks, strict=True):
            for c1, c2, (p1, p2) in zip(block.convs1, block.convs2, pairs, strict=True):
                convs += [c1, c2]  # type: ignore[list-item]
                plans += [p1, p2]
        for conv, plan in zip(convs, plans, strict=True):
            weight = plan[0][:, :, 0, :]  # [C_out, C_in, k], a strided view of the channels-last kernel
            if weight.shape != conv.conv1d.weight.shape:
                raise ValueError(f"plan weight {tuple(weight.shape)} for a module of {tuple(conv.conv1d.weight.shape)}")
            conv.conv1d.weight = nn.Parameter(weight, requires_grad=False)

    def set_fast(self, enabled: bool) -> int:
        """Give each residual-block and upsampling convolution its fast algorithm (``fast_conv_for``), or none;
        returns the count of fast ones."""
        self.up = [_with_fast(p, enabled) for p in self.up]
        self.blocks = [[(_with_fast(c1, enabled), _with_fast(c2, enabled)) for c1, c2 in b] for b in self.blocks]
        return sum(p[4] is not None for p in self.fast_plans())

    def fast_plans(self) -> list[_ConvPlan]:
        """Every convolution that may take a fast algorithm (upsampling, then residual blocks)."""
        return [*self.up, *(p for b in self.blocks for pair in b for p in pair)]

    def to(self, dtype: torch.dtype) -> None:
        def cast(plan: _ConvPlan) -> _ConvPlan:
            weight, bias, dilation, left, _ = plan
            return weight.to(dtype), None if bias is None else bias.to(dtype), dilation, left, None

        self.dtype = dtype
        self.pre = cast(self.pre)
        self.post = cast(self.post)
        self.up = [cast(p) for p in self.up]
        self.blocks = [[(cast(c1), cast(c2)) for c1, c2 in block] for block in self.blocks]

    def run(self, mel: Tensor, conv: ConvFn = _conv) -> Tensor:
        """``mel`` [frames, mels] -> waveform [frames * hop]. ``conv`` runs every convolution in order, each on
        the leaky ReLU of its input where a slope is given (the streaming path passes one that carries each
        convolution's past input between chunks)."""
        slope = self.slope
        # [frames, mels] transposed is already the channels-last memory layout of [1, mels, 1, frames].
        x = conv(mel.to(self.dtype).t()[None, :, None, :], self.pre, None, False)
        for i, scale in enumerate(self.scales):
            x = torch.sin(x).add_(x)
            length = x.shape[-1]
            phases = conv(x, self.up[i], slope, True)
            # Channels-last memory of [1, scale * C, 1, T] with channels ordered (phase, channel) is exactly that
            # of [1, C, 1, T * scale]: interleaving the phases is a view.
            x = phases.permute(0, 2, 3, 1).reshape(1, 1, length * scale, -1).permute(0, 3, 1, 2)
            xs: Tensor | None = None
            for block in self.blocks[i * self.n_kernels : (i + 1) * self.n_kernels]:
                y = x
                for c1, c2 in block:
                    yt = conv(y, c1, slope, False)
                    y = conv(yt, c2, slope, True).add_(y)
                xs = y if xs is None else xs.add_(y)
            assert xs is not None
            x = xs.div_(self.n_kernels)
        x = conv(x, self.post, 0.01, True)  # F.leaky_relu's default slope, as the reference has it
        return torch.tanh(x).reshape(-1).float()


class VocoderStream:
    """Chunked vocoding of one sentence: ``push`` mel frames in order, get their samples at once.

    Every convolution of the causal generator keeps the last ``(kernel - 1) * dilation`` samples of its input
    (zeros at the start: the whole-sentence padding), so each output sample sees exactly the inputs it sees in
    one pass over the whole sentence; the upsampling runs as a causal polyphase convolution (see ``_polyphase``)
    and is kept the same way. The concatenated output equals ``HifiGanGenerator.forward`` of the concatenated mel
    up to float rounding: no overlap, no cross-fade.
    """

    def __init__(self, plan: _NwcPlan) -> None:
        self._plan = plan
        self._caches: list[Tensor | None] = []
        self._index = 0

    def push(self, mel: Tensor) -> Tensor:
        """``mel`` [frames, mels] -> waveform [frames * hop]."""
        if mel.shape[0] == 0:
            return mel.new_zeros(0)
        self._index = 0
        return self._plan.run(mel, self._conv)

    def _conv(self, x: Tensor, plan: _ConvPlan, slope: float | None, own: bool) -> Tensor:
        weight, bias, dilation, left, fast = plan
        i = self._index
        self._index += 1
        if i == len(self._caches):
            self._caches.append(_nwc(x.new_zeros(left, x.shape[1])) if left else None)
        past = self._caches[i]  # [1, C, 1, left] channels-last: the last (activated) inputs of the chunks before
        t = x.shape[-1]
        if fast is not None and _takes_fast(plan, t):
            buf = _fast_input(x, slope, left, fast, None if past is None else _rows(past))
            out = _nwc(fast(buf, t))
            seen = buf[: left + t]
        elif past is None:
            out = F.conv2d(_activate(x, slope, own), weight, bias, dilation=(1, dilation))
        else:
            # The past and the activated chunk side by side in one buffer, written once (no separate activation
            # and concatenation passes); channels-last, which keeps oneDNN's convolution (a concatenated 80-channel
            # mel was not, and fell back to torch's slow one).
            rows = _rows(x)
            seen = rows.new_empty(left + t, rows.shape[1])
            seen[:left].copy_(_rows(past))
            _activate_into(rows, slope, seen[left:])
            out = F.conv2d(_nwc(seen), weight, bias, dilation=(1, dilation))
        if past is not None:
            self._caches[i] = _nwc(seen[seen.shape[0] - left :].clone(memory_format=torch.contiguous_format))
        return out


def _native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _polyphase(kernel: Tensor, bias: Tensor, stride: int) -> tuple[Tensor, Tensor]:
    """A causal transposed convolution (weight [in, out, L], output trimmed to ``T * stride``) as a causal
    convolution with ``stride * out`` output channels, one group of ``out`` per output phase.

    Output sample ``n * stride + p`` is ``sum_m W[:, :, m * stride + p]^T a[n - m]``: the conv's tap ``j`` reads
    ``a[n - (taps - 1) + j]``, i.e. ``m = taps - 1 - j``. oneDNN runs the plain convolution about twice as fast.
    """
    c_in, c_out, length = kernel.shape
    taps = -(-length // stride)
    padded = kernel.new_zeros(c_in, c_out, taps * stride)
    padded[:, :, :length] = kernel
    # [in, out, m, p] -> [p, out, in, m] -> taps reversed so that the last tap is the current sample
    w = padded.reshape(c_in, c_out, taps, stride).permute(3, 1, 0, 2).flip(-1)
    w = w.reshape(stride * c_out, c_in, 1, taps).contiguous(memory_format=torch.channels_last)
    return w, bias.repeat(stride)


def _bias_of(conv: nn.Conv1d | nn.ConvTranspose1d) -> Tensor:
    if conv.bias is None:
        return conv.weight.new_zeros(
            conv.weight.shape[1] if isinstance(conv, nn.ConvTranspose1d) else conv.weight.shape[0]
        )
    return conv.bias.detach()


def fold_weight_norm(module: nn.Module, raw: Mapping[str, Tensor], path: Path, weight_norm: bool) -> dict[str, Tensor]:
    """Map a checkpoint state dict onto ``module``'s plain parameters, checking keys and shapes strictly.

    With weight norm every ``<p>.weight`` of the module must come as ``<p>.weight_g`` + ``<p>.weight_v`` in the
    checkpoint; ``weight = g * v / ||v||`` with the norm over all dimensions but the first.
    """
    own = module.state_dict()
    expected: dict[str, tuple[int, ...]] = {}
    for key, value in own.items():
        shape = tuple(value.shape)
        if weight_norm and key.endswith(".weight"):
            stem = key[: -len("weight")]
            expected[stem + "weight_v"] = shape
            expected[stem + "weight_g"] = (shape[0],) + (1,) * (len(shape) - 1)
        else:
            expected[key] = shape
    missing = [k for k in expected if k not in raw]
    if missing:
        raise EngineLoadError(f"checkpoint {path}: missing key {missing[0]!r}")
    unexpected = [k for k in raw if k not in expected]
    if unexpected:
        raise EngineLoadError(f"checkpoint {path}: unexpected key {unexpected[0]!r}")
    for key, shape in expected.items():
        if tuple(raw[key].shape) != shape:
            raise EngineLoadError(
                f"checkpoint {path}: shape mismatch for key {key!r}: checkpoint has {tuple(raw[key].shape)}, "
                f"the generator built from its config expects {shape}"
            )
    folded: dict[str, Tensor] = {}
    for key in own:
        if weight_norm and key.endswith(".weight"):
            stem = key[: -len("weight")]
            v = raw[stem + "weight_v"].float()
            g = raw[stem + "weight_g"].float()
            norm = torch.linalg.vector_norm(v, dim=tuple(range(1, v.dim())), keepdim=True)
            folded[key] = v * (g / norm)
        else:
            folded[key] = raw[key]
    return folded


def build_generator(
    cfg: HifiGanConfig, raw_state: Mapping[str, Tensor], path: Path,
    generator: type[HifiGanGenerator] = HifiGanGenerator,
) -> HifiGanGenerator:
    """Build ``generator`` (the NSF one for a personal voice) from the config, load the checkpoint strictly with
    weight norm folded, and freeze it for inference."""
    gen = generator(cfg)
    load_strict(gen, fold_weight_norm(gen, raw_state, path, cfg.use_weight_norm), path)
    gen.eval()
    gen.prepare()
    for p in gen.parameters():
        p.requires_grad_(False)
    return gen
