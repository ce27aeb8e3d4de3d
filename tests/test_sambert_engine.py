"""The Sambert engine on tiny random-weight model directories (no ../shared needed)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from tests.tinymodel import HOP, build_tiny_model_dir
from tts_server.config import load_settings
from tts_server.inference.engine import Engine, EngineError, load_engine
from tts_server.inference.sambert import engine as sambert_engine
from tts_server.inference.sambert.engine import SambertEngine, load_sambert_engine
from tts_server.inference.sambert.linguistic import EMOTION_TYPES, SPECIALS


def _tokens(emotion: str = "neutral", speaker: str = "F7") -> str:
    emo = f"emotion_{emotion}"
    return " ".join(
        [
            f"{{n_c$tone2$s_begin$word_begin${emo}${speaker}}}",
            f"{{i_c$tone2$s_end$word_middle${emo}${speaker}}}",
            f"{{h_c$tone3$s_begin$word_middle${emo}${speaker}}}",
            f"{{ao_c$tone3$s_end$word_end${emo}${speaker}}}",
            f"{{#1$tone_none$s_none$word_none$emotion_none${speaker}}}",
            f"{{sh_c$tone4$s_begin$word_begin${emo}${speaker}}}",
            f"{{ih_c$tone4$s_end$word_end${emo}${speaker}}}",
            f"{{#4$tone_none$s_none$word_none$emotion_none${speaker}}}",
        ]
    )


SYMBOLS = _tokens()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model", voices=("zhiyan_emo", "zhitian_emo"))


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> SambertEngine:
    return load_sambert_engine(load_settings(model={"model_dir": str(model_dir)}))


def test_load_engine_by_name_and_protocol(model_dir: Path) -> None:
    engine = load_engine(load_settings(model={"model_dir": str(model_dir)}, engine={"name": "sambert"}))
    assert isinstance(engine, Engine)
    engine.warm_up()


def test_voices_follow_voices_json_order(engine: SambertEngine) -> None:
    voices = engine.voices()
    assert list(voices) == ["zhiyan_emo", "zhitian_emo"]
    info = voices["zhiyan_emo"]
    assert info.default_emotion == "neutral"
    assert info.sample_rate == 16000
    expected = [e.removeprefix("emotion_") for e in EMOTION_TYPES if e != "emotion_none" and "placeholder" not in e]
    assert list(info.emotions) == expected


def test_voice_subset_from_settings(model_dir: Path) -> None:
    engine = load_sambert_engine(load_settings(model={"model_dir": str(model_dir), "voices": ["zhitian_emo"]}))
    assert list(engine.voices()) == ["zhitian_emo"]


def test_synthesize_symbols(engine: SambertEngine) -> None:
    result = engine.synthesize(SYMBOLS, "zhiyan_emo", "neutral", 1.0)
    assert result.sample_rate == 16000
    assert result.audio.dtype == np.float32
    assert result.audio.ndim == 1
    assert result.audio.size > 0
    assert result.audio.size % HOP == 0
    assert np.all(np.abs(result.audio) <= 1.0)
    assert np.any(result.audio != 0)
    assert set(result.stage_seconds) == {"frontend", "acoustic", "vocoder"}
    assert all(v >= 0 for v in result.stage_seconds.values())


def test_synthesis_is_deterministic(engine: SambertEngine) -> None:
    a = engine.synthesize(SYMBOLS, "zhiyan_emo", "neutral", 1.0).audio
    b = engine.synthesize(SYMBOLS, "zhiyan_emo", "neutral", 1.0).audio
    np.testing.assert_array_equal(a, b)


def test_voices_differ(engine: SambertEngine) -> None:
    a = engine.synthesize(SYMBOLS, "zhiyan_emo", "neutral", 1.0).audio
    b = engine.synthesize(SYMBOLS, "zhitian_emo", "neutral", 1.0).audio
    assert a.shape != b.shape or not np.array_equal(a, b)


def test_speed_scales_length(engine: SambertEngine) -> None:
    normal = engine.synthesize(SYMBOLS, "zhiyan_emo", "neutral", 1.0).audio.size
    fast = engine.synthesize(SYMBOLS, "zhiyan_emo", "neutral", 2.0).audio.size
    slow = engine.synthesize(SYMBOLS, "zhiyan_emo", "neutral", 0.5).audio.size
    assert fast < normal < slow
    # Durations are divided by the speed before rounding: within a frame per token of the exact ratio.
    tokens = len(SYMBOLS.split())
    assert abs(fast - normal / 2) <= tokens * HOP
    assert abs(slow - normal * 2) <= 2 * tokens * HOP


@pytest.mark.parametrize("speed", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_speed(engine: SambertEngine, speed: float) -> None:
    with pytest.raises(EngineError) as info:
        engine.synthesize(SYMBOLS, "zhiyan_emo", "neutral", speed)
    assert info.value.param == "speed"


def test_emotion_rewrites_phone_tokens_only(engine: SambertEngine) -> None:
    voice = engine._voices["zhiyan_emo"]
    tokens = voice.unit.with_emotion_and_speaker(voice.unit.parse(SYMBOLS), "happy", None)
    for token in tokens:
        expected = "emotion_none" if token.phone.startswith("#") else "emotion_happy"
        assert token.fields[4] == expected
        assert token.fields[5] == "F7"
    happy = engine.synthesize(SYMBOLS, "zhiyan_emo", "happy", 1.0).audio
    written = engine.synthesize(_tokens("happy"), "zhiyan_emo", "happy", 1.0).audio
    neutral = engine.synthesize(SYMBOLS, "zhiyan_emo", "neutral", 1.0).audio
    np.testing.assert_array_equal(happy, written)
    assert happy.shape != neutral.shape or not np.array_equal(happy, neutral)
    # The "emotion_" prefixed spelling is accepted too.
    np.testing.assert_array_equal(engine.synthesize(SYMBOLS, "zhiyan_emo", "emotion_happy", 1.0).audio, happy)


def test_speaker_field_is_used(engine: SambertEngine) -> None:
    f7 = engine.synthesize(_tokens(speaker="F7"), "zhiyan_emo", "neutral", 1.0).audio
    m7 = engine.synthesize(_tokens(speaker="M7"), "zhiyan_emo", "neutral", 1.0).audio
    assert f7.shape != m7.shape or not np.array_equal(f7, m7)


def test_unknown_emotion(engine: SambertEngine) -> None:
    with pytest.raises(EngineError) as info:
        engine.synthesize(SYMBOLS, "zhiyan_emo", "furious", 1.0)
    assert info.value.param == "emotion"
    assert info.value.client_error
    assert "furious" in info.value.public_message
    assert "neutral" in info.value.public_message
    assert "happy" in info.value.public_message


def test_unknown_voice(engine: SambertEngine) -> None:
    with pytest.raises(EngineError) as info:
        engine.synthesize(SYMBOLS, "nobody", "neutral", 1.0)
    assert info.value.param == "voice"
    assert "zhiyan_emo" in info.value.public_message


@pytest.mark.parametrize(
    ("symbols", "needle"),
    [
        (SYMBOLS.replace("{n_c$", "{qq_c$"), "phone 'qq_c'"),
        (SYMBOLS.replace("$tone2$", "$tone9$"), "tone 'tone9'"),
        (SYMBOLS.replace("$s_begin$", "$s_start$"), "syllable flag 's_start'"),
        (SYMBOLS.replace("$word_begin$", "$word_start$"), "word segment 'word_start'"),
        (SYMBOLS.replace("$F7}", "$Nobody}"), "speaker 'Nobody'"),
        (SYMBOLS.replace("$emotion_none$", "$emotion_bogus$"), "emotion 'emotion_bogus'"),
        (SYMBOLS.replace("{n_c$", "{_$"), "phone '_'"),
        (SYMBOLS.replace("{n_c$", "{~$"), "phone '~'"),
        ("{n_c$tone2$s_begin$word_begin$emotion_neutral}", "6 '$'-separated fields"),
        ("{n_c$tone2 x}", "malformed symbol token"),
    ],
)
def test_unknown_symbols_are_errors(engine: SambertEngine, symbols: str, needle: str) -> None:
    with pytest.raises(EngineError) as info:
        engine.synthesize(symbols, "zhiyan_emo", "neutral", 1.0)
    assert info.value.param == "text"
    assert needle in info.value.public_message
    assert not any(s in info.value.public_message.split("allowed:")[-1].split(", ") for s in SPECIALS)


def test_stream_yields_one_synthesis_per_line(engine: SambertEngine) -> None:
    text = "\n".join([SYMBOLS, "", _tokens("sad")]) + "\n"
    pieces = list(engine.synthesize_stream(text, "zhiyan_emo", "neutral", 1.0))
    assert len(pieces) == 2
    whole = engine.synthesize(text, "zhiyan_emo", "neutral", 1.0)
    np.testing.assert_array_equal(np.concatenate([p.audio for p in pieces]), whole.audio)
    single = engine.synthesize(SYMBOLS, "zhiyan_emo", "neutral", 1.0).audio
    np.testing.assert_array_equal(pieces[0].audio, single)


def test_bad_symbol_in_later_sentence_fails_before_audio(engine: SambertEngine) -> None:
    stream = engine.synthesize_stream(SYMBOLS + "\n" + SYMBOLS.replace("{n_c$", "{qq$"), "zhiyan_emo", "neutral", 1.0)
    with pytest.raises(EngineError):
        next(stream)


def test_empty_text(engine: SambertEngine) -> None:
    with pytest.raises(EngineError) as info:
        engine.synthesize("   \n ", "zhiyan_emo", "neutral", 1.0)
    assert info.value.param == "text"


@dataclass(frozen=True)
class _FakeUtterance:
    symbols: str
    speed: float = 1.0
    pause_after_s: float = 0.0


class _FakeFrontend:
    """Stands in for the Chinese frontend: records the call and returns fixed utterances."""

    calls: ClassVar[list[dict[str, object]]] = []

    def __init__(self, phone_inventory: frozenset[str] | None = None) -> None:
        assert phone_inventory is not None
        assert "n_c" in phone_inventory
        self.phone_inventory = phone_inventory

    def process(
        self, text: str, *, speaker: str, emotion: str, allowed_emotions: Collection[str], ssml: bool | None = None
    ) -> list[_FakeUtterance]:
        _FakeFrontend.calls.append({"text": text, "speaker": speaker, "emotion": emotion, "allowed": allowed_emotions})
        return [_FakeUtterance(_tokens(emotion, speaker), speed=2.0, pause_after_s=0.25), _FakeUtterance(_tokens())]


def test_plain_text_goes_through_frontend(engine: SambertEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sambert_engine, "Frontend", _FakeFrontend)
    monkeypatch.setattr(engine, "_frontends", {})
    _FakeFrontend.calls.clear()
    pieces = list(engine.synthesize_stream("你好。", "zhiyan_emo", "sad", 1.0))
    assert _FakeFrontend.calls == [
        {"text": "你好。", "speaker": "F7", "emotion": "sad", "allowed": engine.voices()["zhiyan_emo"].emotions}
    ]
    assert len(pieces) == 2
    # First sentence: rate 2.0 from the frontend and 0.25 s of silence after it.
    fast = engine.synthesize(_tokens("sad"), "zhiyan_emo", "sad", 2.0).audio
    pause = int(0.25 * 16000)
    assert pieces[0].audio.size == fast.size + pause
    np.testing.assert_array_equal(pieces[0].audio[: fast.size], fast)
    assert not np.any(pieces[0].audio[fast.size :])
    assert pieces[0].stage_seconds["frontend"] >= 0


def test_plain_text_with_real_frontend(engine: SambertEngine) -> None:
    pieces = list(engine.synthesize_stream("你好。今天天气很好！", "zhiyan_emo", "happy", 1.0))
    assert len(pieces) == 2
    for piece in pieces:
        assert piece.audio.dtype == np.float32
        assert piece.audio.size > 0


def test_very_fast_speech_does_not_crash(engine: SambertEngine) -> None:
    """At extreme speeds every duration rounds to zero frames: the result is empty audio, not an error."""
    result = engine.synthesize(SYMBOLS, "zhiyan_emo", "neutral", 1000.0)
    assert result.audio.dtype == np.float32
    assert result.audio.size % HOP == 0


def test_input_longer_than_position_table(engine: SambertEngine) -> None:
    """The tiny model's max_len is 64 tokens; longer sentences extend the sinusoid table instead of failing."""
    voice = engine._voices["zhiyan_emo"]
    max_len = voice.am_config.max_len
    body = " ".join(SYMBOLS.split()[:-1])
    tokens = []
    while len(tokens) < max_len + 10:
        tokens.extend(body.split())
    tokens.append(SYMBOLS.split()[-1])
    result = engine.synthesize(" ".join(tokens), "zhiyan_emo", "neutral", 1.0)
    assert result.audio.size > 0
