"""The vocoder runs a sentence in fixed-size pieces carrying its causal state (issue 12): the audio equals one pass
over the sentence, and every sentence length reuses the same few convolution input shapes, so oneDNN's compiled
primitives are shared across sentences instead of compiled anew for each length."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import PARITY_DIR, unavailable
from tests.tinymodel import build_tiny_model_dir
from tts_server.config import load_settings
from tts_server.inference.sambert import vocoder as vocoder_module
from tts_server.inference.sambert.engine import load_sambert_engine, load_voices
from tts_server.inference.sambert.vocoder import VOCODER_CHUNK_FRAMES, HifiGanGenerator

#: Float rounding only: a piece's convolutions sum the same products as one pass, in another blocking.
TOL = 1e-5


@pytest.fixture(scope="module")
def tiny_vocoder(tmp_path_factory: pytest.TempPathFactory) -> HifiGanGenerator:
    model = build_tiny_model_dir(tmp_path_factory.mktemp("model") / "model")
    return load_voices(model)[0].vocoder


def _pair(vocoder: HifiGanGenerator, mel: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode():
        vocoder.set_chunk_frames(0)
        whole = vocoder(mel)
        vocoder.set_chunk_frames(chunk)
        pieces = vocoder(mel)
    return whole, pieces


@pytest.mark.parametrize("frames", [1, 2, 3, 15, 16, 17, 31, 33, 50])
def test_pieces_equal_one_pass(tiny_vocoder: HifiGanGenerator, frames: int) -> None:
    mel = torch.randn(frames, 80, generator=torch.Generator().manual_seed(frames))
    whole, pieces = _pair(tiny_vocoder, mel, 16)
    assert pieces.shape == whole.shape == (frames * tiny_vocoder.cfg.hop_length,)
    assert (pieces - whole).abs().max().item() <= TOL


def test_full_size_pieces_equal_one_pass_with_fast_convolutions() -> None:
    """The parity model's vocoder takes the DFT path on long pieces and the direct one on short tails."""
    if not (PARITY_DIR / "model").is_dir():
        unavailable(f"the parity set is not at {PARITY_DIR}")
    vocoder = load_voices(PARITY_DIR / "model")[0].vocoder
    assert vocoder.chunk_frames == VOCODER_CHUNK_FRAMES
    for frames in (37, VOCODER_CHUNK_FRAMES, 301):
        mel = torch.randn(frames, 80, generator=torch.Generator().manual_seed(frames))
        whole, pieces = _pair(vocoder, mel, VOCODER_CHUNK_FRAMES)
        assert (pieces - whole).abs().max().item() <= TOL


def _conv_shapes(vocoder: HifiGanGenerator, chunk: int, lengths: Iterable[int],
                 monkeypatch: pytest.MonkeyPatch) -> set[tuple[int, ...]]:
    """The (input, weight) shapes of the direct convolutions that vocoding these sentence lengths runs."""
    seen: set[tuple[int, ...]] = set()
    conv2d: Callable[..., torch.Tensor] = vocoder_module.F.conv2d

    def recording(x: torch.Tensor, weight: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        seen.add((*x.shape, *weight.shape))
        return conv2d(x, weight, *args, **kwargs)

    vocoder.set_chunk_frames(chunk)
    with monkeypatch.context() as patch, torch.inference_mode():
        patch.setattr(vocoder_module.F, "conv2d", recording)
        for n in lengths:
            vocoder(torch.randn(n, 80))
    vocoder.set_chunk_frames(VOCODER_CHUNK_FRAMES)
    return seen


def test_every_sentence_length_reuses_a_few_convolution_shapes(
    tiny_vocoder: HifiGanGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: one pass per sentence gave each convolution a new input shape for every sentence length (and
    oneDNN a new primitive to compile); in pieces of 32 frames (tails padded to multiples of 8) there are at most
    four per convolution, whatever the lengths."""
    lengths = range(5, 200, 3)  # 65 distinct sentence lengths
    per_length = len(_conv_shapes(tiny_vocoder, 0, [100], monkeypatch))
    one_pass = _conv_shapes(tiny_vocoder, 0, lengths, monkeypatch)
    assert per_length > 0
    assert len(one_pass) == len(lengths) * per_length  # the defect: shapes grow with the distinct lengths
    # A piece's convolutions also read their causal past, which gives more shapes per piece than per pass.
    per_piece = len(_conv_shapes(tiny_vocoder, 32, [32], monkeypatch))
    pieces = _conv_shapes(tiny_vocoder, 32, lengths, monkeypatch)
    assert len(pieces) <= 4 * per_piece < len(one_pass)


def test_setting_reaches_every_voice(tmp_path: Path) -> None:
    model = build_tiny_model_dir(tmp_path / "model")
    for frames in (0, 48):
        settings = load_settings(model={"model_dir": str(model), "vocoder_chunk_frames": frames})
        engine = load_sambert_engine(settings)
        assert {v.vocoder.chunk_frames for v in engine._voices.values()} == {frames}
    with pytest.raises(ValueError, match="chunk frames"):
        load_voices(model)[0].vocoder.set_chunk_frames(-1)
