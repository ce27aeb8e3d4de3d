"""Frame-level streaming in the engine: the decoder, postnet and vocoder run chunk by chunk, and the streamed audio
equals the whole-sentence audio (issue 14, item 1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
import yaml

from tests.conftest import PARITY_DIR, unavailable
from tests.tinymodel import build_tiny_model_dir
from tts_server.config import load_settings
from tts_server.inference.sambert.engine import SambertEngine, load_sambert_engine

CASES = PARITY_DIR / "cases.npz"
TOL = 1e-4
CHUNKINGS = ((8, 32), (5, 7), (1, 3), (100, 100))


def _engine(model_dir: Path, chunk: int = 32, first: int = 8) -> SambertEngine:
    settings = load_settings(model={"model_dir": str(model_dir), "torch_threads": 1},
                             engine={"stream_chunk_frames": chunk, "stream_first_chunk_frames": first})
    return load_sambert_engine(settings)


@pytest.fixture(scope="module")
def parity_engine() -> SambertEngine:
    if not CASES.is_file():
        unavailable(f"the parity set is not at {PARITY_DIR}")
    return _engine(PARITY_DIR / "model")


@pytest.fixture(scope="module")
def parity_symbols() -> dict[str, str]:
    if not CASES.is_file():
        unavailable(f"the parity set is not at {PARITY_DIR}")
    with np.load(CASES) as data:
        return {k.split("/")[0]: str(data[k]) for k in data.files if k.endswith("/symbols")}


def _streamed(engine: SambertEngine, text: str, voice: str, first: int, chunk: int,
              input_format: str = "symbols") -> tuple[npt.NDArray[np.float32], int]:
    engine.stream_first_chunk_frames, engine.stream_chunk_frames = first, chunk
    stream = engine.synthesize_stream(text, voice, "neutral", 1.0, input_format=input_format)  # type: ignore[arg-type]
    pieces = [p.audio for p in stream]
    return np.concatenate(pieces), len(pieces)


def test_every_parity_case_streams_to_the_same_audio(parity_engine: SambertEngine,
                                                     parity_symbols: dict[str, str]) -> None:
    assert len(parity_symbols) >= 6
    for case, symbols in parity_symbols.items():
        whole = parity_engine.synthesize(symbols, "zhitian_emo", "neutral", 1.0, input_format="symbols").audio
        for first, chunk in CHUNKINGS:
            streamed, n = _streamed(parity_engine, symbols, "zhitian_emo", first, chunk)
            assert streamed.shape == whole.shape, (case, first, chunk)
            diff = float(np.max(np.abs(streamed - whole))) if whole.size else 0.0
            assert diff <= TOL, (case, first, chunk, diff)
            if first == 1 and whole.size > 16000:
                assert n > 5  # really chunked, not one piece per sentence


def test_first_chunk_is_small(parity_engine: SambertEngine, parity_symbols: dict[str, str]) -> None:
    symbols = parity_symbols["long_fear_breaks"]
    parity_engine.stream_first_chunk_frames, parity_engine.stream_chunk_frames = 8, 32
    first = next(iter(parity_engine.synthesize_stream(symbols, "zhitian_emo", "neutral", 1.0,
                                                      input_format="symbols")))
    hop = 200
    # Up to r-1 extra frames: the decoder makes outputs_per_step frames per step.
    assert 8 * hop <= len(first.audio) <= 12 * hop


def test_closing_the_stream_stops_the_decoder(parity_engine: SambertEngine, parity_symbols: dict[str, str]) -> None:
    voice = parity_engine._voices["zhitian_emo"]
    encoded = voice.unit.encode(parity_symbols["long_fear_breaks"])
    with torch.inference_mode():
        stream = voice.acoustic_stream(encoded)
        assert int(stream.durations.sum()) == stream.num_frames  # the layout is known before any audio
        chunks = stream.chunks(8, 32)
        first = next(chunks)
        chunks.close()
    assert 0 < first.shape[0] < stream.num_frames


def test_tiny_model_streams_and_non_causal_falls_back(tmp_path: Path) -> None:
    model = build_tiny_model_dir(tmp_path / "model")
    engine = _engine(model, chunk=4, first=2)
    text = "今天天气很好。我们去公园。"
    voice = "zhitian_emo"
    whole = engine.synthesize(text, voice, "neutral", 1.0).audio
    streamed, n = _streamed(engine, text, voice, 2, 4, input_format="text")
    assert np.max(np.abs(streamed - whole)) <= TOL
    causal = n
    for config in model.glob("voices/*/voc/config.yaml"):
        data = yaml.safe_load(config.read_text())
        data["Model"]["Generator"]["params"]["causal"] = False
        config.write_text(yaml.safe_dump(data))
    engine = _engine(model, chunk=4, first=2)
    whole = engine.synthesize(text, voice, "neutral", 1.0).audio
    streamed, n = _streamed(engine, text, voice, 2, 4, input_format="text")
    assert np.max(np.abs(streamed - whole)) <= TOL
    assert n < causal  # whole sentences: the vocoder has no causal state to carry
