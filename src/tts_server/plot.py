"""``tts-server synth --plot``: waveform, log-mel spectrogram and the syllable boundaries of one synthesis.

A picture to check timing and prosody by eye (where does a syllable start, is a pause where it should be). Drawn
with matplotlib's object API on the Agg canvas (no pyplot state, no display). Labels are the syllables' pinyin, not
the Chinese text: pinyin renders in the default font, Chinese would need a CJK font the machine may not have.
matplotlib is an optional dependency (the ``plot`` extra), imported only here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

_F64 = npt.NDArray[np.float64]


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> _F64:
    """Triangular filters equally spaced on the HTK mel scale from 0 Hz to Nyquist: [n_mels, n_fft // 2 + 1]."""

    def mel(hz: _F64) -> _F64:
        return 2595.0 * np.log10(1.0 + hz / 700.0)

    def hz(m: _F64) -> _F64:
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    bins = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = hz(np.linspace(0.0, float(mel(np.array(sample_rate / 2))), n_mels + 2))
    low, centre, high = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None, :] - low) / (centre - low)
    falling = (high - bins[None, :]) / (high - centre)
    return np.maximum(0.0, np.minimum(rising, falling))


def log_mel(audio: npt.NDArray[np.floating[Any]], sample_rate: int, n_mels: int = 80) -> tuple[_F64, float]:
    """Log-mel spectrogram [n_mels, frames] (dB) with 50 ms Hann windows every 12.5 ms, and the hop in seconds."""
    win = 1 << int(np.ceil(np.log2(0.05 * sample_rate)))
    hop = max(1, round(0.0125 * sample_rate))
    x = np.pad(np.asarray(audio, np.float64), (win // 2, win // 2))
    frames = max(1, 1 + (len(x) - win) // hop)
    index = np.arange(win)[None, :] + hop * np.arange(frames)[:, None]
    index = np.minimum(index, len(x) - 1)
    spectrum = np.abs(np.fft.rfft(x[index] * np.hanning(win)[None, :], axis=1)) ** 2
    mels = mel_filterbank(sample_rate, win, n_mels) @ spectrum.T
    return 10.0 * np.log10(np.maximum(mels, 1e-10)), hop / sample_rate


def plot_synthesis(path: Path, audio: npt.NDArray[np.floating[Any]], sample_rate: int,
                   document: dict[str, Any]) -> None:
    """Write a PNG: waveform with syllable boundaries labelled in pinyin (sentence ends drawn stronger) over the
    log-mel spectrogram, on one time axis. ``document`` is the timestamps document (``timestamps.build``)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    seconds = len(audio) / sample_rate
    fig = Figure(figsize=(max(8.0, min(40.0, 2.0 + 1.6 * seconds)), 6.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    wave_ax, mel_ax = fig.subplots(2, 1, sharex=True, height_ratios=(1, 1.4))
    t = np.arange(len(audio)) / sample_rate
    wave_ax.plot(t, audio, linewidth=0.5, color="#1f4e79")
    wave_ax.set_ylim(-1.05, 1.05)
    wave_ax.set_ylabel("amplitude")
    wave_ax.set_xlim(0.0, seconds)

    spec, hop_s = log_mel(audio, sample_rate)
    mel_ax.imshow(spec, origin="lower", aspect="auto", cmap="magma", interpolation="nearest",
                  extent=(0.0, spec.shape[1] * hop_s, 0.0, float(spec.shape[0])),
                  vmin=float(spec.max()) - 80.0, vmax=float(spec.max()))
    mel_ax.set_ylabel("mel band")
    mel_ax.set_xlabel("time (s)")

    for syllable in document.get("syllables", []):
        start = syllable["start_ms"] / 1000.0
        end = syllable["end_ms"] / 1000.0
        for ax in (wave_ax, mel_ax):
            ax.axvline(start, color="#2ca02c", linewidth=0.6, alpha=0.8)
        wave_ax.text((start + end) / 2, 1.0, str(syllable["pinyin"]), rotation=90, ha="center", va="top",
                     fontsize=7)
    for sentence in document.get("sentences", []):
        for ax in (wave_ax, mel_ax):
            ax.axvline(sentence["speech_end_ms"] / 1000.0, color="#d62728", linewidth=1.2)
    for mark in document.get("marks", []):
        wave_ax.axvline(mark["time_ms"] / 1000.0, color="#9467bd", linestyle="--", linewidth=1.0)
        wave_ax.text(mark["time_ms"] / 1000.0, -1.0, str(mark["name"]), color="#9467bd", fontsize=7, va="bottom")
    fig.savefig(path, format="png")
