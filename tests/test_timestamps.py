"""Timestamps (issue 15): every syllable the frontend emits points back at the original text it stands for, and
the builder turns the model's frames into times on the hop grid."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tinymodel import Variant, build_tiny_model_dir
from tts_server.config import load_settings
from tts_server.inference.frontend import Frontend
from tts_server.inference.sambert.engine import SambertEngine, load_sambert_engine
from tts_server.inference.timestamps import (
    SentenceTiming,
    TimestampBuilder,
    Unit,
    build,
    pause_samples,
    symbol_units,
)


def sources(text: str, ssml: bool = False) -> list[tuple[str, str]]:
    frontend = Frontend(warm_up=False)
    out = []
    for utt in frontend.process(text, speaker="F7", emotion="neutral", allowed_emotions=(), ssml=ssml):
        for unit in utt.units:
            if unit.kind == "syllable":
                assert unit.source is not None
                out.append((unit.label, text[unit.source[0] : unit.source[1]]))
            elif unit.kind == "mark":
                out.append(("mark", unit.label))
    return out


def test_numbers_map_to_their_digits() -> None:
    got = sources("北京2026年")
    assert got[:2] == [("bei3", "北"), ("jing1", "京")]
    assert [s for _, s in got[2:]] == ["2026年"] * 5


def test_sub_alias_and_mark_map_to_the_element() -> None:
    got = sources('<speak>你好<mark name="a"/>，<sub alias="世界">WHO</sub>&amp;</speak>', ssml=True)
    assert got == [("ni2", "你"), ("hao3", "好"), ("mark", "a"), ("shi4", "WHO"), ("jie4", "WHO"), ("he2", "&amp;")]


# --- the builder ----------------------------------------------------------------------------------------------

RATE, HOP = 16000, 200


def _timings(text: str, frames_per_token: int = 3, ssml: bool = False) -> list[SentenceTiming]:
    """The frontend's sentences of ``text`` as the engine would time them if every token got the same frames."""
    frontend = Frontend(warm_up=False)
    out = []
    for utt in frontend.process(text, speaker="F7", emotion="neutral", allowed_emotions=(), ssml=ssml):
        tokens = sum(u.tokens for u in utt.units)
        assert tokens == len(utt.symbols.split())
        out.append(SentenceTiming(utt.units, (frames_per_token,) * tokens, HOP,
                                  pause_samples(utt.pause_after_s, RATE, HOP), utt.marks_end))
    return out


def _on_hop_grid(ms: float) -> bool:
    samples = ms * RATE / 1000
    return samples == int(samples) and int(samples) % HOP == 0


def test_hand_timed_sentence() -> None:
    units = (Unit("syllable", "ni3", 2, (0, 1), 0), Unit("break", "#1", 1), Unit("mark", "m", 0),
             Unit("syllable", "hao3", 2, (1, 2), 1), Unit("break", "#4", 1))
    timing = SentenceTiming(units, (3, 4, 2, 5, 6, 1), HOP, 400, ("end",))
    doc = build("你好", RATE, [timing])
    # 3+4 frames of ni3 = 7 * 12.5 ms; the #1 break (2 frames) is silence between the words.
    assert [(s["pinyin"], s["start_ms"], s["end_ms"]) for s in doc["syllables"]] == [
        ("ni3", 0.0, 87.5), ("hao3", 112.5, 250.0)]
    assert [(w["text"], w["begin"], w["end"]) for w in doc["words"]] == [("你", 0, 1), ("好", 1, 2)]
    assert doc["marks"] == [{"name": "m", "time_ms": 112.5, "sentence": 0},
                            {"name": "end", "time_ms": 287.5, "sentence": 0}]
    (sentence,) = doc["sentences"]
    assert (sentence["start_ms"], sentence["speech_end_ms"], sentence["end_ms"]) == (0.0, 262.5, 287.5)
    assert doc["duration_ms"] == 287.5 == timing.samples * 1000 / RATE
    assert [c["char"] for c in doc["characters"]] == ["你", "好"]
    assert doc["hop_ms"] == 12.5


def test_units_must_cover_the_frames() -> None:
    with pytest.raises(ValueError, match="cover 1 tokens"):
        build("a", RATE, [SentenceTiming((Unit("break", "#4", 1),), (1, 2), HOP, 0)])


def test_number_maps_back_to_its_digits() -> None:
    text = "北京2026年见"
    doc = build(text, RATE, _timings(text))
    words = [(w["text"], w["start_ms"], w["end_ms"]) for w in doc["words"]]
    # 北京 (4 phone tokens), #1, then 二零二六年 as one word of the client's text: 5 syllables.
    assert words[0] == ("北京", 0.0, 4 * 3 * 12.5)
    number = next(w for w in doc["words"] if w["text"] == "2026年")
    syllables = [s for s in doc["syllables"] if s["text"] == "2026年"]
    assert [s["pinyin"] for s in syllables] == ["er4", "ling2", "er4", "liu4", "nian2"]
    assert (number["start_ms"], number["end_ms"]) == (syllables[0]["start_ms"], syllables[-1]["end_ms"])
    assert (number["begin"], number["end"]) == (2, 7)
    # Every character of 2026年 spans the whole reading; 见 only its own syllable.
    chars = {c["char"] + str(c["offset"]): (c["start_ms"], c["end_ms"]) for c in doc["characters"]}
    assert {chars[k] for k in ("22", "03", "24", "65", "年6")} == {(number["start_ms"], number["end_ms"])}
    assert chars["见7"] == (doc["syllables"][-1]["start_ms"], doc["syllables"][-1]["end_ms"])


def test_ssml_sub_break_and_mark() -> None:
    doc_text = ('<speak>你好<mark name="a"/><break time="333ms"/><sub alias="世界">WHO</sub>'
                '<mark name="b"/><break time="1s"/><mark name="c"/></speak>')
    timings = _timings(doc_text, ssml=True)
    assert [t.pause_samples for t in timings] == [5400, 16000]  # 333 ms -> 27 hops, 1 s -> 80 hops
    doc = build(doc_text, RATE, timings)
    first, second = doc["sentences"]
    assert (first["text"], second["text"]) == ("你好", "WHO")
    alias = [s for s in doc["syllables"] if s["sentence"] == 1]
    assert [(s["pinyin"], s["text"]) for s in alias] == [("shi4", "WHO"), ("jie4", "WHO")]
    assert doc_text[alias[0]["begin"] : alias[0]["end"]] == "WHO"
    marks = {m["name"]: m["time_ms"] for m in doc["marks"]}
    # a: after 好, before the sentence's #4 token; b: after 界; c: after the 1 s break, the very end.
    assert marks["a"] == doc["syllables"][1]["end_ms"]
    assert marks["b"] == alias[-1]["end_ms"]
    assert marks["c"] == doc["duration_ms"] == second["end_ms"]
    assert second["start_ms"] == first["end_ms"] == first["speech_end_ms"] + 337.5


def test_every_boundary_is_on_the_hop_grid_and_the_last_end_is_the_audio() -> None:
    text = "今天是2026年11月24日，气温-3℃。<break>你好！"
    timings = _timings(text, frames_per_token=5) + _timings('<speak>好<break time="0.01s"/>的</speak>', 2, True)
    doc = build(text, RATE, timings)
    times = [doc["duration_ms"]]
    for kind in ("sentences", "words", "syllables", "characters"):
        for entry in doc[kind]:
            times += [entry["start_ms"], entry["end_ms"]]
    times += [m["time_ms"] for m in doc["marks"]]
    assert all(_on_hop_grid(t) for t in times)
    assert doc["duration_ms"] * RATE / 1000 == sum(t.samples for t in timings)
    assert doc["sentences"][-1]["end_ms"] == doc["duration_ms"]
    # Audio order: sentences tile the audio, syllables never overlap.
    for a, b in zip(doc["sentences"], doc["sentences"][1:], strict=False):
        assert a["end_ms"] == b["start_ms"]
    for a, b in zip(doc["syllables"], doc["syllables"][1:], strict=False):
        assert a["end_ms"] <= b["start_ms"]


def test_streamed_events_add_up_to_the_document() -> None:
    text = "你好。今天天气很好！"
    builder = TimestampBuilder(text, RATE)
    events = [builder.add(t) for t in _timings(text)]
    doc = builder.result()
    assert [e["sentence"] for e in events] == doc["sentences"]
    assert [s for e in events for s in e["syllables"]] == doc["syllables"]
    assert [w for e in events for w in e["words"]] == doc["words"]
    assert [c for e in events for c in e["characters"]] == doc["characters"]
    assert "".join(c["char"] for c in doc["characters"]) == "你好今天天气很好"


def test_symbol_units_group_syllables_and_words() -> None:
    tokens = [("h_c", "tone3", "s_begin", "word_begin", (0, 5)), ("ao_c", "tone3", "s_end", "word_end", (6, 9)),
              ("#1", "tone_none", "s_none", "word_none", (10, 12)),
              ("n_c", "tone3", "s_begin", "word_begin", (13, 15)), ("i_c", "tone3", "s_end", "word_middle", (16, 18)),
              ("h_c", "tone3", "s_begin", "word_middle", (19, 20)), ("ao_c", "tone3", "s_end", "word_end", (21, 22)),
              ("#4", "tone_none", "s_none", "word_none", (23, 25))]
    units = symbol_units(tokens)
    assert [(u.kind, u.label, u.tokens, u.source, u.word) for u in units] == [
        ("syllable", "hao3", 2, (0, 9), 0), ("break", "#1", 1, None, -1), ("syllable", "ni3", 2, (13, 18), 1),
        ("syllable", "hao3", 2, (19, 22), 1), ("break", "#4", 1, None, -1)]


@pytest.mark.parametrize(("seconds", "samples"), [(0.0, 0), (-1.0, 0), (0.006, 0), (0.00625, 200), (0.25, 4000),
                                                  (0.333, 5400), (10.0, 160000)])
def test_pauses_are_whole_hops(seconds: float, samples: int) -> None:
    assert pause_samples(seconds, RATE, HOP) == samples


# --- the engine (tiny model) -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_engine(tmp_path_factory: pytest.TempPathFactory) -> SambertEngine:
    model_dir = build_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model", voices=("zhitian_emo",))
    return load_sambert_engine(load_settings(model={"model_dir": str(model_dir)},
                                             engine={"stream_chunk_frames": 4, "stream_first_chunk_frames": 2}))


SSML = ('<speak>2026年<mark name="a"/><break time="130ms"/><sub alias="世界">WHO</sub>，你好。'
        '<break time="0.2s"/><mark name="z"/></speak>')


def test_engine_timings_match_its_audio(tiny_engine: SambertEngine) -> None:
    syn = tiny_engine.synthesize(SSML, "zhitian_emo", "neutral", 1.3, input_format="ssml")
    assert syn.timings
    assert sum(t.samples for t in syn.timings) == syn.audio.size
    assert [t.pause_samples for t in syn.timings] == [2000, 3200]  # 130 ms -> 10.4 -> 10 hops, 0.2 s -> 16
    doc = build(SSML, syn.sample_rate, syn.timings)
    assert doc["duration_ms"] * syn.sample_rate / 1000 == syn.audio.size
    assert {m["name"]: m["time_ms"] for m in doc["marks"]}["z"] == doc["duration_ms"]
    assert [w["text"] for w in doc["words"]][:2] == ["2026年", "WHO"]
    # The pause after the first sentence is silence in the audio.
    first = doc["sentences"][0]
    silent = syn.audio[round(first["speech_end_ms"] * 16) : round(first["end_ms"] * 16)]
    assert silent.size == 2000
    assert not silent.any()


def test_streamed_timings_come_with_each_sentences_first_piece(tiny_engine: SambertEngine) -> None:
    whole = tiny_engine.synthesize(SSML, "zhitian_emo", "neutral", 1.0, input_format="ssml")
    pieces = list(tiny_engine.synthesize_stream(SSML, "zhitian_emo", "neutral", 1.0, input_format="ssml"))
    assert tuple(t for p in pieces for t in p.timings) == whole.timings
    position = 0
    for piece in pieces:
        if piece.timings:
            assert position == sum(t.samples for t in whole.timings[: whole.timings.index(piece.timings[0])])
        position += piece.audio.size
    assert position == whole.audio.size


def test_symbols_map_to_their_tokens(tiny_engine: SambertEngine) -> None:
    symbols = ("{h_c$tone3$s_begin$word_begin$emotion_neutral$F7}  {ao_c$tone3$s_end$word_end$emotion_neutral$F7}"
               " {#4$tone_none$s_none$word_none$emotion_none$F7}\n\n"
               "{n_c$tone3$s_begin$word_begin$emotion_neutral$F7} {i_c$tone3$s_end$word_end$emotion_neutral$F7}"
               " {#4$tone_none$s_none$word_none$emotion_none$F7}")
    syn = tiny_engine.synthesize(symbols, "zhitian_emo", "neutral", 1.0, input_format="symbols")
    doc = build(symbols, syn.sample_rate, syn.timings)
    assert [s["pinyin"] for s in doc["syllables"]] == ["hao3", "ni3"]
    assert [symbols[s["begin"] : s["end"]] for s in doc["syllables"]] == [
        "{h_c$tone3$s_begin$word_begin$emotion_neutral$F7}  {ao_c$tone3$s_end$word_end$emotion_neutral$F7}",
        "{n_c$tone3$s_begin$word_begin$emotion_neutral$F7} {i_c$tone3$s_end$word_end$emotion_neutral$F7}"]
    assert doc["duration_ms"] * 16 == syn.audio.size


def test_sentences_without_frames_still_have_timings(tiny_engine: SambertEngine) -> None:
    """At extreme speed every duration rounds to zero: no audio chunk, but each sentence's timing (and pause)."""
    text = '<speak>你好。<break time="25ms"/>再见。</speak>'
    pieces = list(tiny_engine.synthesize_stream(text, "zhitian_emo", "neutral", 1000.0, input_format="ssml"))
    timings = [t for p in pieces for t in p.timings]
    assert len(timings) == 2
    assert all(sum(t.frames) == 0 for t in timings)
    doc = build(text, RATE, timings)
    assert doc["duration_ms"] * RATE / 1000 == sum(p.audio.size for p in pieces) == 400  # the break: 2 hops


def test_personal_24khz_voice_times_on_its_own_hop(tmp_path: Path) -> None:
    """A 24 kHz NSF voice (hop 240 = 10 ms; vocoded per sentence): boundaries on its grid, last end = audio."""
    variant = Variant(personal=True, khz24=True, causal=False)
    model_dir = build_tiny_model_dir(tmp_path / "model", voices=("zhitian_emo",), variant=variant)
    engine = load_sambert_engine(load_settings(model={"model_dir": str(model_dir)}))
    text = '<speak>你好<break time="0.333s"/>2026年<mark name="m"/></speak>'
    whole = engine.synthesize(text, "zhitian_emo", "neutral", 1.0, input_format="ssml", seed=1)
    pieces = list(engine.synthesize_stream(text, "zhitian_emo", "neutral", 1.0, input_format="ssml", seed=1))
    assert tuple(t for p in pieces for t in p.timings) == whole.timings
    assert [t.hop for t in whole.timings] == [240, 240]
    assert whole.timings[0].pause_samples == 33 * 240  # 0.333 s = 33.3 hops of 10 ms
    doc = build(text, whole.sample_rate, whole.timings)
    assert (whole.sample_rate, doc["hop_ms"]) == (24000, 10.0)
    assert doc["duration_ms"] * 24 == whole.audio.size
    assert all(round(t * 24) % 240 == 0 and t * 24 == round(t * 24) for t in
               [doc["duration_ms"], *(s[k] for s in doc["syllables"] for k in ("start_ms", "end_ms"))])
