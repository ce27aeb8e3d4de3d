"""Audio encoding and resampling. Everything happens in memory: no audio file ever touches the disk."""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
import soundfile as sf
import soxr

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


class OggOpusStream:
    """One Ogg Opus stream written as the audio comes: ``push`` returns the Ogg pages libsndfile has completed so
    far (the headers at once, then a page per second of audio or so: libsndfile fills whole pages, and flushing
    does not cut one short), ``close`` the rest with the end-of-stream page. The bytes, concatenated, are one
    complete ``.opus`` file."""

    def __init__(self, sample_rate: int) -> None:
        rates = FORMATS["opus"].rates or ()
        if sample_rate not in rates:
            raise ValueError(f"opus takes {', '.join(map(str, rates))} Hz, not {sample_rate}")
        self._buf = io.BytesIO()
        self._file = sf.SoundFile(self._buf, "w", samplerate=sample_rate, channels=1, format="OGG",
                                  subtype="OPUS")
        self._taken = 0

    def push(self, pcm: npt.NDArray[np.int16]) -> bytes:
        if len(pcm):
            self._file.write(pcm)
        return self._take()

    def close(self) -> bytes:
        self._file.close()
        return self._take()

    def _take(self) -> bytes:
        size = self._buf.seek(0, io.SEEK_END)
        if size == self._taken:
            return b""
        self._buf.seek(self._taken)
        data = self._buf.read()
        self._taken = size
        return data


def wav_stream_header(sample_rate: int) -> bytes:
    """A WAV header for a stream of unknown length (sizes set to the maximum, as streaming players expect)."""
    unknown = 0xFFFFFFFF
    return b"".join((
        b"RIFF", struct.pack("<I", unknown), b"WAVE",
        b"fmt ", struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16),
        b"data", struct.pack("<I", unknown),
    ))


#: soxr's quality preset: "HQ" (20-bit precision, passband to 91% of Nyquist, linear phase) is its default and the
#: same for whole signals and streams, which is what makes a streamed response equal the whole one.
RESAMPLE_QUALITY: Final = "HQ"


def resample(audio: npt.NDArray[np.float32], src_rate: int, dst_rate: int) -> npt.NDArray[np.float32]:
    """The whole signal at ``dst_rate`` (soxr; ``round(len * dst / src)`` samples)."""
    if src_rate == dst_rate or len(audio) == 0:
        return audio
    out: npt.NDArray[np.float32] = soxr.resample(np.ascontiguousarray(audio, dtype=np.float32), src_rate, dst_rate,
                                                 quality=RESAMPLE_QUALITY)
    return out


class StreamResampler:
    """Resamples a signal that arrives in pieces, carrying the filter state from one piece to the next (soxr's
    ``ResampleStream``), so that no boundary click appears: the pieces ``push`` returns, followed by ``flush()``,
    are sample for sample the output of ``resample`` on the whole signal. At the same rate it passes audio through.
    """

    def __init__(self, src_rate: int, dst_rate: int) -> None:
        self._stream = (None if src_rate == dst_rate
                        else soxr.ResampleStream(src_rate, dst_rate, 1, dtype="float32", quality=RESAMPLE_QUALITY))

    def push(self, audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """What can be output so far (the filter holds back a few milliseconds until later input or the flush)."""
        if self._stream is None:
            return audio
        out: npt.NDArray[np.float32] = self._stream.resample_chunk(np.ascontiguousarray(audio, dtype=np.float32))
        return out

    def flush(self) -> npt.NDArray[np.float32]:
        """The held-back tail, once the input has ended."""
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        out: npt.NDArray[np.float32] = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        return out
