"""Nothing before the first audio that the first sentence does not need (issue 14, item 4): the frontend makes a
later sentence's phrasing, tone sandhi and symbols only when synthesis reaches it, so the time to the first chunk
does not grow with the length of the text; errors in any sentence are still raised before any audio."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.tinymodel import build_tiny_model_dir
from tts_server.config import load_settings
from tts_server.inference.frontend import Frontend, FrontendError
from tts_server.inference.frontend.symbols import DEFAULT_PHONES
from tts_server.inference.sambert.engine import SambertEngine, load_sambert_engine

ARGS: dict[str, Any] = {"speaker": "F7", "emotion": "neutral", "allowed_emotions": ("neutral", "happy")}
TEXTS = [
    ("今天天气很好。我们一起去公园散步吧！晚上回家，再一起吃饭？", False),
    ("一二三四五六七八九十一二三四五六七八九十一二三四五六七八九十，一二三四五六七八九十。好。", False),
    ('<speak>第一句<mark name="a"/>话。<break time="300ms"/><prosody rate="fast">第二句。</prosody>'
     '<mark name="end"/></speak>', True),
]


@pytest.fixture(scope="module")
def frontend() -> Frontend:
    return Frontend(max_sentence_chars=12)


@pytest.mark.parametrize(("text", "ssml"), TEXTS)
def test_utterances_one_at_a_time_equal_process(frontend: Frontend, text: str, ssml: bool) -> None:
    whole = frontend.process(text, ssml=ssml, **ARGS)
    assert len(whole) >= 2
    assert list(frontend.utterances(text, ssml=ssml, **ARGS)) == whole


def test_errors_come_before_the_first_utterance() -> None:
    frontend = Frontend(DEFAULT_PHONES - {"xx_c"}, warm_up=False)
    # 谢 needs the missing phone; it is in the last sentence, and the call itself raises.
    with pytest.raises(FrontendError, match="谢"):
        frontend.utterances("你好。今天很好。谢谢", **ARGS)
    with pytest.raises(FrontendError, match="nothing to read"):
        frontend.utterances("。。。", **ARGS)
    with pytest.raises(FrontendError, match="emotion"):
        frontend.utterances("你好", speaker="F7", emotion="bored", allowed_emotions=("neutral",))


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> SambertEngine:
    model = build_tiny_model_dir(tmp_path_factory.mktemp("first-audio") / "model", voices=("zhitian_emo",))
    settings = load_settings(model={"model_dir": str(model), "torch_threads": 1},
                             engine={"stream_chunk_frames": 4, "stream_first_chunk_frames": 2})
    engine = load_sambert_engine(settings)
    engine.warm_up()  # the frontend exists (and has run its own warm-up text) before anything is counted
    return engine


def test_first_chunk_makes_only_the_first_sentence(engine: SambertEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    text = "今天天气很好。" * 20
    made: list[str] = []
    emit = Frontend._emit

    def counting(self: Frontend, tokens: Any, speaker: str) -> Any:
        out = emit(self, tokens, speaker)
        made.append(out[0])
        return out

    monkeypatch.setattr(Frontend, "_emit", counting)
    stream = engine.synthesize_stream(text, "zhitian_emo", "neutral", 1.0)
    first = next(stream)
    assert len(made) == 1  # the first sentence's symbols, none of the 19 others
    assert first.stage_seconds["frontend"] > 0
    rest = list(stream)
    assert len(made) == 20
    assert sum(p.stage_seconds.get("frontend", 0.0) for p in rest) > 0  # later sentences' share is counted too



def test_chunks_double_up_to_the_chunk_size(engine: SambertEngine) -> None:
    # Small first, then each twice the one before (ready before the audio already sent has played), then steady.
    voice = engine._voices["zhitian_emo"]
    text = "今天天气很好我们一起去公园散步吧晚上回家再一起吃饭然后早点休息"
    sentence = next(iter(engine._sentences(voice, text, "neutral", "text")))
    ids = voice.unit.encode_tokens(sentence.tokens)
    with torch.inference_mode():
        stream = voice.acoustic_stream(ids)
        sizes = [int(mel.shape[0]) for mel in stream.chunks(2, 16)]
    assert sum(sizes) == stream.num_frames
    targets = [2, 4, 8, 16, 16, 16, 16, 16, 16, 16, 16, 16]
    assert len(sizes) >= 6
    for size, target in zip(sizes[:-1], targets, strict=False):
        assert target <= size <= target + stream.r - 1
