"""Neural source-filter (NSF) voices: f0 de-normalisation and the NSF HiFi-GAN vocoder (KAN-TTS
``hifigan`` with ``nsf_params``), inference only.

An NSF acoustic model predicts ``num_mels + 2`` channels: the mel, a normalised f0 and a voicing flag. Before the
vocoder the f0 is mapped back to Hz (``F0Norm.denorm``) and the voicing binarised. The vocoder builds an excitation
from the f0: per harmonic ``k`` (``k = 1 .. nb_harmonics + 1``) a sine whose phase is the running sum of
``k * f0 / sampling_rate`` over the upsampled samples plus a random initial phase, with Gaussian noise added (voiced
samples) or noise alone (unvoiced ones); a 1x1 convolution + tanh merges the harmonics, and a strided convolution per
upsampling stage brings the excitation to that stage's rate, where it is added to the signal.

The random phase and noise are the only randomness of a voice. ``NsfDraws`` holds them: drawn per request from a
``torch.Generator`` (seeded by the request's ``seed`` when it has one, so the audio is reproducible), or injected as
recorded (parity with the reference).

The phase follows the reference's exact operation order (nearest upsampling of f0 to the sample rate, the per-sample
increments in float32, one float32 cumulative sum over the whole sentence, then ``% 1`` and ``2 * pi *``): the
cumulative sum reaches thousands of cycles, so its float32 rounding is part of the signal, and any other order (a
frame-rate sum, float64, wrapping before the sum) drifts by up to 1e-3 of the waveform on a long sentence.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tts_server.inference.engine import EngineLoadError
from tts_server.inference.sambert.vocoder import HifiGanConfig, HifiGanGenerator

#: Voicing flag threshold (ModelScope's ``denorm_f0``/``binarize``) and the floor of the de-normalised f0 (Hz).
UV_THRESHOLD = 0.6
F0_FLOOR = 30.0
#: Source module constants of the reference: sine amplitude and noise standard deviation.
SINE_AMP = 0.1
NOISE_STD = 0.003


@dataclass(frozen=True)
class F0Norm:
    """How the acoustic model's f0 channel was normalised: ``global`` (min/max from the AM config) or ``mean_std``
    (``am/mvn.npy``: row 0 the mean, row 1 the standard deviation)."""

    norm_type: str
    f0_min: float = 30.0
    f0_max: float = 730.0
    mean: float = 0.0
    std: float = 1.0

    @classmethod
    def from_params(cls, params: Mapping[str, Any], source: str, mvn_path: Path | None) -> F0Norm:
        norm_type = params.get("nsf_norm_type", "mean_std")
        if norm_type == "global":
            lo = params.get("nsf_f0_global_minimum", 30.0)
            hi = params.get("nsf_f0_global_maximum", 730.0)
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lo, hi)) or hi <= lo:
                raise EngineLoadError(
                    f"{source}: nsf_f0_global_minimum/maximum must be numbers, minimum < maximum; got {lo!r}, {hi!r}"
                )
            return cls("global", f0_min=float(lo), f0_max=float(hi))
        if norm_type == "mean_std":
            if mvn_path is None:
                raise EngineLoadError(f"{source}: nsf_norm_type mean_std needs the f0 mean/std file mvn.npy, "
                                      f"which was not given (expected a float array of shape (2, 1): mean, std)")
            if not mvn_path.is_file():
                raise EngineLoadError(
                    f"{source}: nsf_norm_type mean_std needs the f0 mean/std file {mvn_path}, which does not exist "
                    f"(expected a float array of shape (2, 1): mean, std)"
                )
            try:
                mvn = np.load(mvn_path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise EngineLoadError(f"cannot read {mvn_path}: {exc} (expected a float array, shape (2, 1))") from exc
            if mvn.dtype.kind != "f" or mvn.size != 2 or mvn.shape[0] != 2 or not np.all(np.isfinite(mvn)):
                raise EngineLoadError(
                    f"{mvn_path}: expected a finite float array of shape (2, 1) (f0 mean, std), "
                    f"got {mvn.dtype} {mvn.shape}"
                )
            flat = mvn.reshape(2).astype(np.float32)
            return cls("mean_std", mean=float(flat[0]), std=float(flat[1]))
        raise EngineLoadError(f"{source}: nsf_norm_type {norm_type!r} is not supported (global or mean_std)")

    def denorm(self, mel: Tensor) -> Tensor:
        """``mel`` [frames, num_mels + 2] as the AM emits it -> f0 in Hz and a 0/1 voicing flag (a new tensor)."""
        out = mel.clone()
        uv = out[:, -1]
        out[:, -1] = (uv >= UV_THRESHOLD).to(out.dtype)
        f0 = out[:, -2]
        if self.norm_type == "global":
            f0 = f0 * (self.f0_max - self.f0_min) + self.f0_min
        else:
            f0 = f0 * torch.tensor(self.std, dtype=out.dtype) + torch.tensor(self.mean, dtype=out.dtype)
        out[:, -2] = torch.clamp_min(f0, F0_FLOOR)
        return out


def binarize_voicing(mel: Tensor) -> Tensor:
    """The vocoder's input: the voicing flag thresholded again (as the reference does before vocoding)."""
    out = mel.clone()
    out[:, -1] = (mel[:, -1] >= UV_THRESHOLD).to(mel.dtype)
    return out


@dataclass(frozen=True)
class NsfDraws:
    """The source module's random draws for one sentence: ``phase`` [1, H, 1] (harmonic 0 at zero) and
    ``noise`` [1, H, samples] (already scaled by the noise standard deviation)."""

    phase: Tensor
    noise: Tensor

    @classmethod
    def draw(cls, harmonics: int, samples: int, generator: torch.Generator | None = None) -> NsfDraws:
        phase = torch.rand(1, harmonics, 1, generator=generator) * (2 * math.pi) - math.pi
        phase[:, 0, :] = 0
        noise = torch.randn(1, harmonics, samples, generator=generator) * NOISE_STD
        return cls(phase, noise)


class SourceModule(nn.Module):
    """Harmonic sine + noise excitation merged by a 1x1 convolution (checkpoint keys ``source_module.ffn.0.*``)."""

    def __init__(self, nb_harmonics: int, upsample_ratio: int, sampling_rate: int) -> None:
        super().__init__()
        self.harmonics = nb_harmonics + 1
        self.upsample_ratio = upsample_ratio
        self.sampling_rate = sampling_rate
        self.ffn = nn.Sequential(nn.Conv1d(self.harmonics, 1, kernel_size=1), nn.Tanh())
        self.register_buffer(
            "multipliers", torch.arange(1, self.harmonics + 1, dtype=torch.float32)[None, :, None], persistent=False
        )

    def forward(self, pitch: Tensor, uv: Tensor, draws: NsfDraws) -> Tensor:
        """``pitch`` (Hz), ``uv``: [1, 1, frames] -> excitation [1, 1, frames * upsample_ratio]."""
        ratio = float(self.upsample_ratio)
        pitch_samples = F.interpolate(pitch, scale_factor=ratio, mode="nearest")
        uv_samples = F.interpolate(uv, scale_factor=ratio, mode="nearest")
        samples = pitch_samples.shape[-1]
        if draws.noise.shape != (1, self.harmonics, samples) or draws.phase.shape != (1, self.harmonics, 1):
            raise ValueError(
                f"NSF draws of shape {tuple(draws.phase.shape)}/{tuple(draws.noise.shape)} do not fit "
                f"{self.harmonics} harmonics x {samples} samples"
            )
        # Same operations, order and dtype as the reference (see the module docstring).
        increments = pitch_samples * self.get_buffer("multipliers") / self.sampling_rate
        theta = 2 * np.pi * (torch.cumsum(increments, dim=-1) % 1)
        noise = draws.noise.to(theta.dtype)
        e_voice = SINE_AMP * torch.sin(theta + draws.phase.to(theta.dtype)) + noise
        e_unvoice = SINE_AMP / 3 / NOISE_STD * noise
        e = e_voice * uv_samples + e_unvoice * (1 - uv_samples)
        out: Tensor = self.ffn(e)
        return out


class SourceDown(nn.Module):
    """Strided convolution bringing the excitation to one upsampling stage's rate (kernel ``2u``, stride ``u``)."""

    def __init__(self, channels: int, rate: int, causal: bool) -> None:
        super().__init__()
        if rate == 1:
            self.left, self.right = 0, 0
            self.conv1d = nn.Conv1d(1, channels, 1)
        else:
            self.left, self.right = (2 * rate - 1, 0) if causal else (rate // 2, rate // 2)
            self.conv1d = nn.Conv1d(1, channels, 2 * rate, rate)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv1d(F.pad(x, (self.left, self.right)) if self.left or self.right else x)
        return out


class NsfHifiGanGenerator(HifiGanGenerator):
    """HiFi-GAN generator driven by an NSF excitation; the input carries f0 (Hz) and voicing as its last two
    channels."""

    def __init__(self, cfg: HifiGanConfig) -> None:
        super().__init__(cfg)
        if cfg.nsf_harmonics is None or cfg.nsf_sampling_rate is None:
            raise EngineLoadError("NsfHifiGanGenerator needs a config with nsf_params")
        self.source_module = SourceModule(cfg.nsf_harmonics, cfg.hop_length, cfg.nsf_sampling_rate)
        self.source_downs = nn.ModuleList()
        # Stage i runs at hop / prod(scales[i+1:]) times the frame rate: the excitation (at the sample rate) is
        # downsampled by prod(scales[i+1:]).
        scales = cfg.upsample_scales
        for i in range(len(scales)):
            rate = math.prod(scales[i + 1 :])
            self.source_downs.append(SourceDown(cfg.channels // (2 ** (i + 1)), rate, cfg.causal))
        self._downs: list[SourceDown] = list(self.source_downs)  # type: ignore[arg-type]

    @property
    def harmonics(self) -> int:
        return self.source_module.harmonics

    #: ``forward`` runs the modules (with the excitation added per stage), never the channels-last plan.
    plan_serves_forward = False

    def prepare(self) -> None:
        super().prepare()
        # The channels-last plan has no excitation inputs; the fused upsampling kernels still apply.
        self._nwc = None

    def forward(
        self, x: Tensor, draws: NsfDraws | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """``x``: [frames, in_channels + 2] (mel, f0 in Hz, 0/1 voicing) -> waveform [frames * hop]."""
        cfg = self.cfg
        if draws is None:
            draws = NsfDraws.draw(self.harmonics, x.shape[0] * cfg.hop_length, generator)
        feats = x.t().unsqueeze(0)
        excitation = self.source_module(feats[:, -2:-1], feats[:, -1:], draws)
        return self._generate(feats[:, :-2], lambda stage: self._downs[stage](excitation))

