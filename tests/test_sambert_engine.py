"""The Sambert engine on tiny random-weight model directories (no ../shared needed)."""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from tests.tinymodel import HOP, build_tiny_model_dir
from tts_server.config import load_settings
from tts_server.inference.engine import Engine, EngineError
from tts_server.inference.loading import load_engine
from tts_server.inference.sambert import engine as sambert_engine
from tts_server.inference.sambert.engine import SambertEngine, load_sambert_engine
from tts_server.inference.sambert.linguistic import EMOTION_TYPES, SPECIALS
from tts_server.inference.timestamps import Unit


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
    # Sentence-level streaming: these tests are about sentences (frame chunks: tests/test_stream_engine.py).
    return load_sambert_engine(load_settings(model={"model_dir": str(model_dir)}, engine={"stream_chunk_frames": 0}))


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
    started = time.perf_counter()
    result = engine.synthesize(SYMBOLS, "zhiyan_emo", "neutral", 1.0, input_format="symbols")
    wall = time.perf_counter() - started
    assert result.sample_rate == 16000
    assert result.audio.dtype == np.float32
    assert result.audio.ndim == 1
    assert result.audio.size > 0
    assert result.audio.size % HOP == 0
    assert np.all(np.abs(result.audio) <= 1.0)
    assert np.any(result.audio != 0)
    assert set(result.stage_seconds) == {"frontend", "acoustic", "vocoder"}
    # Each stage did real work, and the stages together took no longer than the call.
    assert all(v > 0 for v in result.stage_seconds.values())
    assert sum(result.stage_seconds.values()) <= wall


def test_synthesis_is_deterministic(engine: SambertEngine) -> None:
    a = engine.synthesize(SYMBOLS, "zhiyan_emo", "neutral", 1.0, input_format="symbols").audio
    b = engine.synthesize(SYMBOLS, "zhiyan_emo", "neutral", 1.0, input_format="symbols").audio
    np.testing.assert_array_equal(a, b)


def test_voices_differ(engine: SambertEngine) -> None:
    a = engine.synthesize(SYMBOLS, "zhiyan_emo", "neutral", 1.0, input_format="symbols").audio
    b = engine.synthesize(SYMBOLS, "zhitian_emo", "neutral", 1.0, input_format="symbols").audio
    assert a.shape != b.shape or not np.array_equal(a, b)


def test_speed_scales_length(engine: SambertEngine) -> None:
    normal = engine.synthesize(SYMBOLS, "zhiyan_emo", "neutral", 1.0, input_format="symbols").audio.size
    fast = engine.synthesize(SYMBOLS, "zhiyan_emo", "neutral", 2.0, input_format="symbols").audio.size
    slow = engine.synthesize(SYMBOLS, "zhiyan_emo", "neutral", 0.5, input_format="symbols").audio.size
    assert fast < normal < slow
    # Durations are divided by the speed before rounding: within a frame per token of the exact ratio.
    tokens = len(SYMBOLS.split())
    assert abs(fast - normal / 2) <= tokens * HOP
    assert abs(slow - normal * 2) <= 2 * tokens * HOP


@pytest.mark.parametrize("speed", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_speed(engine: SambertEngine, speed: float) -> None:
    with pytest.raises(EngineError) as info:
        engine.synthesize(SYMBOLS, "zhiyan_emo", "neutral", speed, input_format="symbols")
    assert info.value.param == "speed"


def test_emotion_rewrites_phone_tokens_only(engine: SambertEngine) -> None:
    voice = engine._voices["zhiyan_emo"]
    tokens = voice.unit.with_emotion_and_speaker(voice.unit.parse(SYMBOLS), "happy", None)
    for token in tokens:
        expected = "emotion_none" if token.phone.startswith("#") else "emotion_happy"
        assert token.fields[4] == expected
        assert token.fields[5] == "F7"
    happy = engine.synthesize(SYMBOLS, "zhiyan_emo", "happy", 1.0, input_format="symbols").audio
    written = engine.synthesize(_tokens("happy"), "zhiyan_emo", "happy", 1.0, input_format="symbols").audio
    neutral = engine.synthesize(SYMBOLS, "zhiyan_emo", "neutral", 1.0, input_format="symbols").audio
    np.testing.assert_array_equal(happy, written)
    assert happy.shape != neutral.shape or not np.array_equal(happy, neutral)
    # The "emotion_" prefixed spelling is accepted too.
    prefixed = engine.synthesize(SYMBOLS, "zhiyan_emo", "emotion_happy", 1.0, input_format="symbols").audio
    np.testing.assert_array_equal(prefixed, happy)


def test_speaker_field_is_used(engine: SambertEngine) -> None:
    f7 = engine.synthesize(_tokens(speaker="F7"), "zhiyan_emo", "neutral", 1.0, input_format="symbols").audio
    m7 = engine.synthesize(_tokens(speaker="M7"), "zhiyan_emo", "neutral", 1.0, input_format="symbols").audio
    assert f7.shape != m7.shape or not np.array_equal(f7, m7)


def test_unknown_emotion(engine: SambertEngine) -> None:
    with pytest.raises(EngineError) as info:
        engine.synthesize(SYMBOLS, "zhiyan_emo", "furious", 1.0, input_format="symbols")
    assert info.value.param == "emotion"
    assert info.value.client_error
    assert "furious" in info.value.public_message
    assert "neutral" in info.value.public_message
    assert "happy" in info.value.public_message


def test_unknown_voice(engine: SambertEngine) -> None:
    with pytest.raises(EngineError) as info:
        engine.synthesize(SYMBOLS, "nobody", "neutral", 1.0, input_format="symbols")
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
        engine.synthesize(symbols, "zhiyan_emo", "neutral", 1.0, input_format="symbols")
    assert info.value.param == "text"
    assert needle in info.value.public_message
    assert not any(s in info.value.public_message.split("allowed:")[-1].split(", ") for s in SPECIALS)


def test_stream_yields_one_synthesis_per_line(engine: SambertEngine) -> None:
    text = "\n".join([SYMBOLS, "", _tokens("sad")]) + "\n"
    pieces = list(engine.synthesize_stream(text, "zhiyan_emo", "neutral", 1.0, input_format="symbols"))
    assert len(pieces) == 2
    whole = engine.synthesize(text, "zhiyan_emo", "neutral", 1.0, input_format="symbols")
    np.testing.assert_array_equal(np.concatenate([p.audio for p in pieces]), whole.audio)
    single = engine.synthesize(SYMBOLS, "zhiyan_emo", "neutral", 1.0, input_format="symbols").audio
    np.testing.assert_array_equal(pieces[0].audio, single)


def test_bad_symbol_in_later_sentence_fails_before_audio(engine: SambertEngine) -> None:
    text = SYMBOLS + "\n" + SYMBOLS.replace("{n_c$", "{qq$")
    stream = engine.synthesize_stream(text, "zhiyan_emo", "neutral", 1.0, input_format="symbols")
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
    pitch: float = 0.0
    volume_db: float = 0.0
    units: tuple[Unit, ...] = ()  # none: the engine times the syllables of the symbols
    marks_end: tuple[str, ...] = ()


class _FakeFrontend:
    """Stands in for the Chinese frontend: records the call and returns fixed utterances."""

    calls: ClassVar[list[dict[str, object]]] = []

    def __init__(self, phone_inventory: frozenset[str] | None = None) -> None:
        assert phone_inventory is not None
        assert "n_c" in phone_inventory
        self.phone_inventory = phone_inventory

    def utterances(
        self, text: str, *, speaker: str, emotion: str, allowed_emotions: Collection[str], ssml: bool = False
    ) -> Iterator[_FakeUtterance]:
        _FakeFrontend.calls.append(
            {"text": text, "speaker": speaker, "emotion": emotion, "allowed": allowed_emotions, "ssml": ssml}
        )
        return iter([_FakeUtterance(_tokens(emotion, speaker), speed=2.0, pause_after_s=0.25),
                     _FakeUtterance(_tokens())])


def test_plain_text_goes_through_frontend(engine: SambertEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sambert_engine, "Frontend", _FakeFrontend)
    monkeypatch.setattr(engine, "_frontends", {})
    _FakeFrontend.calls.clear()
    pieces = list(engine.synthesize_stream("你好。", "zhiyan_emo", "sad", 1.0))
    assert _FakeFrontend.calls == [
        {"text": "你好。", "speaker": "F7", "emotion": "sad", "allowed": engine.voices()["zhiyan_emo"].emotions,
         "ssml": False}
    ]
    assert len(pieces) == 2
    # First sentence: rate 2.0 from the frontend and 0.25 s of silence after it.
    fast = engine.synthesize(_tokens("sad"), "zhiyan_emo", "sad", 2.0, input_format="symbols").audio
    pause = int(0.25 * 16000)
    assert pieces[0].audio.size == fast.size + pause
    np.testing.assert_array_equal(pieces[0].audio[: fast.size], fast)
    assert not np.any(pieces[0].audio[fast.size :])
    # The frontend ran once; each sentence's share of its time (the first one's includes the whole input's checks)
    # is charged to that sentence's first piece.
    assert pieces[0].stage_seconds["frontend"] > 0
    assert pieces[1].stage_seconds["frontend"] >= 0.0


def test_plain_text_with_real_frontend(engine: SambertEngine) -> None:
    pieces = list(engine.synthesize_stream("你好。今天天气很好！", "zhiyan_emo", "happy", 1.0))
    assert len(pieces) == 2
    for piece in pieces:
        assert piece.audio.dtype == np.float32
        assert piece.audio.size > 0


def test_very_fast_speech_does_not_crash(engine: SambertEngine) -> None:
    """At extreme speeds every duration rounds to zero frames: the result is empty audio, not an error."""
    result = engine.synthesize(SYMBOLS, "zhiyan_emo", "neutral", 1000.0, input_format="symbols")
    assert result.audio.dtype == np.float32
    assert result.audio.size == 0


def test_input_longer_than_position_table(engine: SambertEngine) -> None:
    """The tiny model's max_len is 64 tokens; longer sentences extend the sinusoid table instead of failing."""
    voice = engine._voices["zhiyan_emo"]
    max_len = voice.am_config.max_len
    body = " ".join(SYMBOLS.split()[:-1])
    tokens = []
    while len(tokens) < max_len + 10:
        tokens.extend(body.split())
    tokens.append(SYMBOLS.split()[-1])
    result = engine.synthesize(" ".join(tokens), "zhiyan_emo", "neutral", 1.0, input_format="symbols")
    assert result.audio.size > 0


# -- input_format: declared by the client, never guessed -----------------------------------------------------------

SSML_WITH_BREAK = '<speak>你好<break time="1s"/>世界</speak>'


@pytest.mark.parametrize(
    ("text", "kwargs", "ssml"),
    [
        ("你好。", {}, False),
        # Content that looks like markup or symbols is still plain text unless the client says otherwise.
        (SSML_WITH_BREAK, {}, False),
        (SYMBOLS, {}, False),
        (SSML_WITH_BREAK, {"input_format": "text"}, False),
        ("你好", {"input_format": "ssml"}, True),
        (SSML_WITH_BREAK, {"input_format": "ssml"}, True),
    ],
)
def test_input_format_decides_how_the_frontend_reads(
    engine: SambertEngine, monkeypatch: pytest.MonkeyPatch, text: str, kwargs: dict[str, str], ssml: bool
) -> None:
    monkeypatch.setattr(sambert_engine, "Frontend", _FakeFrontend)
    monkeypatch.setattr(engine, "_frontends", {})
    _FakeFrontend.calls.clear()
    engine.synthesize(text, "zhiyan_emo", "neutral", 1.0, **kwargs)  # type: ignore[arg-type]
    assert [(c["text"], c["ssml"]) for c in _FakeFrontend.calls] == [(text, ssml)]


def test_ssml_without_prolog_is_spoken_as_ssml(engine: SambertEngine) -> None:
    pieces = list(engine.synthesize_stream(SSML_WITH_BREAK, "zhiyan_emo", "neutral", 1.0, input_format="ssml"))
    # <break time="1s"/> ends the first sentence and appends one second of silence to it.
    assert len(pieces) == 2
    assert pieces[0].audio.size > 16000
    assert not np.any(pieces[0].audio[-16000:])
    plain = engine.synthesize("你好。世界。", "zhiyan_emo", "neutral", 1.0, input_format="text").audio
    whole = engine.synthesize(SSML_WITH_BREAK, "zhiyan_emo", "neutral", 1.0, input_format="ssml").audio
    assert whole.size == plain.size + 16000


def test_ssml_under_text_is_not_parsed(engine: SambertEngine) -> None:
    pieces = list(engine.synthesize_stream(SSML_WITH_BREAK, "zhiyan_emo", "neutral", 1.0))
    # Read as text: the markup is letters and punctuation in one sentence, and the break is no silence.
    assert len(pieces) == 1
    assert np.any(pieces[0].audio[-1600:])


# SSML without an XML prolog used to be read aloud as plain text; now it is refused as SSML.
def _lol_entity(i: int) -> str:
    reference = f"&lol{i - 1};"
    return f'<!ENTITY lol{i} "{reference * 10}">'


BILLION_LAUGHS_NO_PROLOG = (
    '<!DOCTYPE speak [<!ENTITY lol0 "lol">' + "".join(_lol_entity(i) for i in range(1, 10)) + "]><speak>&lol9;</speak>"
)


@pytest.mark.parametrize(
    "doc",
    [
        BILLION_LAUGHS_NO_PROLOG,
        '<?xml version="1.0"?>\n' + BILLION_LAUGHS_NO_PROLOG,
        '<!DOCTYPE speak [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><speak>&xxe;</speak>',
        "<speak>你好",
        "你好",
    ],
)
def test_bad_ssml_is_a_client_error(engine: SambertEngine, doc: str) -> None:
    with pytest.raises(EngineError) as info:
        engine.synthesize(doc, "zhiyan_emo", "neutral", 1.0, input_format="ssml")
    assert info.value.client_error
    assert info.value.param == "text"
    assert info.value.public_message.startswith("invalid SSML: ")
    assert "not allowed" in info.value.public_message or "not well-formed" in info.value.public_message


def test_symbols_round_trip(engine: SambertEngine) -> None:
    """The frontend's symbols for a text, sent back as input_format=symbols, give the text's audio exactly."""
    voice = engine._voices["zhiyan_emo"]
    (utt,) = engine._frontend(voice).process(
        "你好世界", speaker=voice.default_speaker, emotion="neutral", allowed_emotions=voice.info.emotions
    )
    from_text = engine.synthesize("你好世界", "zhiyan_emo", "neutral", 1.0).audio
    from_symbols = engine.synthesize(utt.symbols, "zhiyan_emo", "neutral", 1.0, input_format="symbols").audio
    assert from_text.size > 0
    np.testing.assert_array_equal(from_symbols, from_text)


@pytest.mark.parametrize("text", ["你好", "<speak>你好</speak>", SYMBOLS + " 你好"])
def test_text_under_symbols_is_a_client_error(engine: SambertEngine, text: str) -> None:
    with pytest.raises(EngineError) as info:
        engine.synthesize(text, "zhiyan_emo", "neutral", 1.0, input_format="symbols")
    assert info.value.client_error
    assert info.value.param == "text"
    assert "malformed symbol token" in info.value.public_message


def test_unknown_input_format(engine: SambertEngine) -> None:
    with pytest.raises(EngineError) as info:
        engine.synthesize("你好", "zhiyan_emo", "neutral", 1.0, input_format="markdown")  # type: ignore[arg-type]
    assert info.value.client_error
    assert info.value.param == "input_format"
    assert "text, ssml, symbols" in info.value.public_message
