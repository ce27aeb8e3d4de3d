"""Audio encoding and resampling. Everything happens in memory: no audio file ever touches the disk."""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import soundfile as sf

AudioFormat = Literal["wav", "pcm", "flac", "mp3", "ogg", "opus"]

#: Sample rates a client may ask for.
SUPPORTED_SAMPLE_RATES: Final = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000)


@dataclass(frozen=True)
class FormatSpec:
    media_type: str
    extension: str
    #: (libsndfile major format, subtype); None for raw PCM.
    sndfile: tuple[str, str] | None
    #: Sample rates the codec accepts (None = any).
    rates: tuple[int, ...] | None = None


FORMATS: Final[dict[str, FormatSpec]] = {
    "wav": FormatSpec("audio/wav", "wav", ("WAV", "PCM_16")),
    "pcm": FormatSpec("audio/L16", "pcm", None),
    "flac": FormatSpec("audio/flac", "flac", ("FLAC", "PCM_16")),
    "mp3": FormatSpec("audio/mpeg", "mp3", ("MP3", "MPEG_LAYER_III"), (8000, 11025, 16000, 22050, 24000, 32000,
                                                                       44100, 48000)),
    "ogg": FormatSpec("audio/ogg", "ogg", ("OGG", "VORBIS")),
    "opus": FormatSpec("audio/ogg; codecs=opus", "opus", ("OGG", "OPUS"), (8000, 12000, 16000, 24000, 48000)),
}


#: Largest absolute sample value a volume gain may produce (just under full scale).
PEAK_LIMIT: Final = 0.999


def apply_gain(audio: npt.NDArray[np.float32], gain_db: float) -> npt.NDArray[np.float32]:
    """Scale ``audio`` by ``gain_db`` decibels with clipping protection: if the scaled peak would exceed
    ``PEAK_LIMIT`` the whole piece is scaled so that its peak is exactly ``PEAK_LIMIT`` instead (never hard-clipped,
    so the waveform keeps its shape). Audio already above the limit is not touched by a gain of 0 dB."""
    if gain_db == 0.0 or audio.size == 0:
        return audio
    factor = 10.0 ** (gain_db / 20.0)
    peak = float(np.max(np.abs(audio))) * factor
    if peak > PEAK_LIMIT:
        factor *= PEAK_LIMIT / peak
    out: npt.NDArray[np.float32] = (audio * np.float32(factor)).astype(np.float32, copy=False)
    return out


def to_int16(audio: npt.NDArray[np.float32]) -> npt.NDArray[np.int16]:
    """Float [-1, 1] -> int16 the way the reference does (x * 32768, truncated), clipped instead of wrapping."""
    scaled: npt.NDArray[np.float32] = np.clip(audio * 32768.0, -32768, 32767)
    return scaled.astype(np.int16)


def encode(audio: npt.NDArray[np.float32], sample_rate: int, fmt: str) -> bytes:
    """Encode mono float audio; ``pcm`` is raw 16-bit little-endian."""
    spec = FORMATS[fmt]
    pcm = to_int16(audio)
    if spec.sndfile is None:
        return pcm.astype("<i2").tobytes()
    buf = io.BytesIO()
    major, subtype = spec.sndfile
    sf.write(buf, pcm, sample_rate, format=major, subtype=subtype)
    return buf.getvalue()


def wav_stream_header(sample_rate: int) -> bytes:
    """A WAV header for a stream of unknown length (sizes set to the maximum, as streaming players expect)."""
    unknown = 0xFFFFFFFF
    return b"".join((
        b"RIFF", struct.pack("<I", unknown), b"WAVE",
        b"fmt ", struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16),
        b"data", struct.pack("<I", unknown),
    ))


@lru_cache(maxsize=32)
def _polyphase_filter(up: int, down: int) -> npt.NDArray[np.float64]:
    # Kaiser-windowed sinc low-pass at the lower of the two Nyquist frequencies.
    cutoff = 1.0 / max(up, down)
    half = 16 * max(up, down)
    n = np.arange(-half, half + 1, dtype=np.float64)
    taps = cutoff * np.sinc(cutoff * n) * np.kaiser(len(n), 8.0)
    return np.asarray(taps * up, dtype=np.float64)


def resample(audio: npt.NDArray[np.float32], src_rate: int, dst_rate: int) -> npt.NDArray[np.float32]:
    """Band-limited rational resampling (zero-stuff by ``up``, low-pass, keep every ``down``-th sample)."""
    if src_rate == dst_rate or len(audio) == 0:
        return audio
    g = math.gcd(src_rate, dst_rate)
    up, down = dst_rate // g, src_rate // g
    taps = _polyphase_filter(up, down)
    # Pad the filter so every phase has the same number of taps.
    per_phase = -(-len(taps) // up)
    padded = np.zeros(per_phase * up, dtype=np.float64)
    padded[: len(taps)] = taps
    delay = (len(taps) - 1) // 2
    out_len = math.ceil(len(audio) * up / down)
    # Output m sits at upsampled position j = m*down + delay; only taps with (j - i) % up == 0 meet a real input
    # sample, i.e. taps r + k*up with r = j % up, applied to x[j // up - k].
    pos = np.arange(out_len, dtype=np.int64) * down + delay
    phase = pos % up
    base = pos // up
    x = np.concatenate([audio.astype(np.float64), np.zeros(1)])  # index len(audio) reads as silence
    out = np.zeros(out_len, dtype=np.float64)
    for k in range(per_phase):
        src = base - k
        valid = (src >= 0) & (src < len(audio))
        out += padded[phase + k * up] * x[np.where(valid, src, len(audio))]
    return out.astype(np.float32)
