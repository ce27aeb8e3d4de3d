"""Resampling (soxr): a stream resampled piece by piece equals the whole signal resampled at once, in the
library and over HTTP.

The tolerance is exact equality: soxr's ``ResampleStream`` runs the same filter as ``soxr.resample`` and carries
its whole state (input history and output phase) across pieces, so the output is bit for bit the same however the
input is cut (measured for every supported rate and cuttings down to 1 sample). A resampler that restarted at each
piece would differ by up to the signal's amplitude near every boundary (the click this guards against).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

from tests.conftest import running_app
from tts_server.config import Settings
from tts_server.inference.audio import SUPPORTED_SAMPLE_RATES, StreamResampler, resample

SRC = 16000


def _signal(n: int, seed: int = 0) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SRC
    tone = 0.5 * np.sin(2 * np.pi * 440.0 * t) + 0.2 * np.sin(2 * np.pi * 3100.0 * t)
    return (tone + 0.05 * rng.standard_normal(n)).astype(np.float32)


def _streamed(x: npt.NDArray[np.float32], dst: int, sizes: list[int]) -> tuple[npt.NDArray[np.float32], int]:
    """``x`` pushed in pieces of the given sizes (cycled), then flushed; and how many pushes returned audio."""
    resampler = StreamResampler(SRC, dst)
    out: list[npt.NDArray[np.float32]] = []
    pos = i = 0
    while pos < len(x):
        size = sizes[i % len(sizes)]
        out.append(resampler.push(x[pos:pos + size]))
        pos += size
        i += 1
    tail = resampler.flush()
    return np.concatenate([*out, tail]), sum(1 for piece in out if len(piece))


@pytest.mark.parametrize("dst", [8000, 22050, 48000])
@pytest.mark.parametrize("sizes", [[1600], [7, 333, 5000, 1, 12000], [200 * 8, 200 * 32, 200 * 33, 1]],
                         ids=["even", "ragged", "engine-like"])
def test_stream_equals_whole(dst: int, sizes: list[int]) -> None:
    x = _signal(37011)
    whole = resample(x, SRC, dst)
    streamed, nonempty = _streamed(x, dst, sizes)
    assert whole.dtype == streamed.dtype == np.float32
    assert len(whole) == round(len(x) * dst / SRC)
    assert np.array_equal(streamed, whole)
    assert nonempty > 1  # the pieces came out as they went in, not all at the flush


def test_restarting_per_piece_is_what_the_stream_avoids() -> None:
    # The per-piece resampling the stream replaced: each piece's filter starts and ends on silence.
    x = _signal(16000)
    whole = resample(x, SRC, 48000)
    pieces = np.concatenate([resample(x[i:i + 1600], SRC, 48000) for i in range(0, len(x), 1600)])
    assert len(pieces) == len(whole)
    assert np.max(np.abs(pieces - whole)) > 0.05


@pytest.mark.parametrize("dst", SUPPORTED_SAMPLE_RATES)
def test_every_supported_rate_streams_exactly(dst: int) -> None:
    x = _signal(9001, seed=dst)
    streamed, _ = _streamed(x, dst, [401, 3, 1999])
    assert np.array_equal(streamed, resample(x, SRC, dst))


def test_same_rate_passes_through() -> None:
    x = _signal(1000)
    resampler = StreamResampler(SRC, SRC)
    assert resampler.push(x) is x
    assert len(resampler.flush()) == 0
    assert resample(x, SRC, SRC) is x
    assert len(resample(np.zeros(0, np.float32), SRC, 8000)) == 0


@pytest.mark.parametrize("dst", [8000, 24000, 48000])
def test_band_limited_and_faithful(dst: int) -> None:
    t = np.arange(SRC) / SRC
    # A 1 kHz tone keeps its shape (away from the edges the filter sees silence beyond).
    low = resample((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), SRC, dst)
    u = np.arange(len(low)) / dst
    ref = 0.5 * np.sin(2 * np.pi * 1000 * u)
    mid = slice(len(low) // 10, -len(low) // 10)
    assert np.max(np.abs(low[mid] - ref[mid])) < 1e-3
    if dst < SRC:
        # A 6 kHz tone is above 8 kHz's Nyquist (4 kHz): the low-pass removes it instead of folding it to 2 kHz.
        high = resample((0.5 * np.sin(2 * np.pi * 6000 * t)).astype(np.float32), SRC, dst)
        assert np.sqrt(np.mean(high[mid] ** 2)) < 0.5 / np.sqrt(2) * 1e-3


@pytest.mark.parametrize("rate", [8000, 22050, 48000])
async def test_http_stream_equals_whole_response(make_settings: Callable[..., Settings], rate: int) -> None:
    # The tone engine streams sentence by sentence: three chunks, resampled as one signal.
    text = "第一句话。第二句。第三句话很长很长。"
    async with running_app(make_settings(pool={"workers": 1})) as (_, client):
        whole = await client.post("/v1/synthesize", json={"text": text, "format": "pcm", "sample_rate": rate})
        assert whole.status_code == 200, whole.text
        async with client.stream("POST", "/v1/synthesize", json={"text": text, "format": "pcm", "stream": True,
                                                                  "sample_rate": rate}) as r:
            assert r.status_code == 200
            assert r.headers["x-sample-rate"] == str(rate)
            body = b"".join([chunk async for chunk in r.aiter_bytes()])
    assert np.array_equal(np.frombuffer(body, "<i2"), np.frombuffer(whole.content, "<i2"))
