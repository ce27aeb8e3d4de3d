"""The whole frontend: sentences, length limits, long and mixed input, empty input, validation, properties."""

from __future__ import annotations

import itertools
import re
import time
from functools import cache

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tts_server.inference.frontend import Frontend, FrontendError, Utterance
from tts_server.inference.frontend.symbols import DEFAULT_PHONES

EMOTIONS = ("neutral", "happy", "sad")
_TOKEN_RE = re.compile(
    r"\{(?P<phone>[^${} ]+)\$(?P<tone>tone[1-5]|tone_none)\$(?P<s>s_begin|s_end|s_middle|s_both|s_none)"
    r"\$(?P<w>word_begin|word_middle|word_end|word_both|word_none)\$(?P<emo>emotion_[a-z_]+)\$(?P<spk>[A-Za-z0-9_]+)\}"
)
_BREAKS = {"#1", "#2", "#3", "#4"}


@cache
def shared_frontend() -> Frontend:
    return Frontend(max_sentence_chars=60)


@pytest.fixture(scope="module")
def frontend() -> Frontend:
    return shared_frontend()


def run(frontend: Frontend, text: str, **kwargs: object) -> list[Utterance]:
    args: dict[str, object] = {"speaker": "F7", "emotion": "neutral", "allowed_emotions": EMOTIONS, **kwargs}
    return frontend.process(text, **args)  # type: ignore[arg-type]


def assert_valid(utt: Utterance, inventory: frozenset[str] = DEFAULT_PHONES) -> list[re.Match[str]]:
    """Every token well formed, phones from the inventory, breaks between words, #4 last and only last."""
    tokens = utt.symbols.split(" ")
    matches = []
    for tok in tokens:
        m = _TOKEN_RE.fullmatch(tok)
        assert m is not None, tok
        if m["phone"] in _BREAKS:
            assert (m["tone"], m["s"], m["w"], m["emo"]) == ("tone_none", "s_none", "word_none", "emotion_none")
        else:
            assert m["phone"] in inventory, tok
            assert (m["tone"], m["s"], m["w"]) != ("tone_none", "s_none", "word_none")
            assert "none" not in m["tone"] + m["s"] + m["w"]
        matches.append(m)
    assert matches[-1]["phone"] == "#4"
    assert all(m["phone"] != "#4" for m in matches[:-1])
    assert matches[0]["phone"] not in _BREAKS
    for a, b in itertools.pairwise(matches):
        assert not (a["phone"] in _BREAKS and b["phone"] in _BREAKS), utt.symbols
    assert 0.5 <= utt.speed <= 2.0
    assert 0.0 <= utt.pause_after_s <= 5.0
    return matches


def syllable_count(utt: Utterance) -> int:
    return sum(1 for m in assert_valid(utt) if m["s"] in ("s_begin", "s_both"))


def test_sentences_split_on_chinese_and_western_punctuation(frontend: Frontend) -> None:
    utts = run(frontend, "你好。今天天气怎么样？很好!Really?谢谢\n再见")
    assert len(utts) == 6
    for utt in utts:
        assert_valid(utt)


def test_long_sentence_splits_at_the_last_comma_that_fits(frontend: Frontend) -> None:
    clause = "我们今天去公园散步"  # 9 syllables
    text = "，".join([clause] * 10) + "。"  # 90 syllables
    utts = run(frontend, text)
    counts = [syllable_count(u) for u in utts]
    assert counts == [54, 36]  # six clauses fit in 60, the cut is at a comma
    assert sum(counts) == 90


def test_long_run_without_punctuation_splits_at_word_boundaries(frontend: Frontend) -> None:
    text = "北京今天天气怎么样" * 20  # 180 syllables, no punctuation
    utts = run(frontend, text)
    assert sum(syllable_count(u) for u in utts) == 180
    assert all(syllable_count(u) <= 60 for u in utts)
    pinyin = " ".join(s.replace(" #4", "") for s in frontend.pinyin(text))
    assert pinyin.split().count("bei3") == 20


def test_overlong_single_word_is_split_not_dropped(frontend: Frontend) -> None:
    utts = run(frontend, "A" * 150)  # one spelled word of 150 syllables
    assert [syllable_count(u) for u in utts] == [60, 60, 30]


def run_linear(frontend: Frontend, text: str) -> list[Utterance]:
    """``run``, checking that the time grows about linearly with the length: ten times the text may take at most
    forty times as long as its first tenth (a quadratic path or regex backtracking takes ~100x). A ratio, not a
    wall-clock bound, so that a loaded machine slows both measurements alike; the constant absorbs a scheduler
    hiccup in the long run, and a second try one on a busy shared machine (a quadratic path fails both)."""
    for _ in range(2):
        start = time.perf_counter()
        run(frontend, text[: len(text) // 10])
        small = time.perf_counter() - start
        start = time.perf_counter()
        utts = run(frontend, text)
        big = time.perf_counter() - start
        if big < 40 * small + 0.5:
            return utts
    raise AssertionError(f"{len(text)} chars took {big:.2f}s, a tenth of them {small:.3f}s")


def test_ten_thousand_characters(frontend: Frontend) -> None:
    base = "今天的天气非常好，我们一起去公园散步、看花，然后回家吃饭。"
    text = (base * (10_000 // len(base) + 1))[:10_000]
    hanzi = sum(1 for ch in text if "\u4e00" <= ch <= "\u9fff")
    utts = run_linear(frontend, text)
    assert sum(syllable_count(u) for u in utts) == hanzi  # nothing lost
    assert all(syllable_count(u) <= 60 for u in utts)


def test_ten_thousand_characters_without_punctuation(frontend: Frontend) -> None:
    text = ("我们今天去公园散步" * 1200)[:10_000]
    utts = run(frontend, text)
    assert sum(syllable_count(u) for u in utts) == 10_000
    assert all(syllable_count(u) <= 60 for u in utts)


@pytest.mark.parametrize(
    "unit", ["9", "13812345678", "1.", "1 ", "1-1%", "1km", "1,", "1:", "1/", "a1", "¥1", "第1", "2026-11-24 "]
)
def test_pathological_ten_thousand_character_inputs_stay_fast(frontend: Frontend, unit: str) -> None:
    text = (unit * (10_000 // len(unit) + 1))[:10_000]
    utts = run_linear(frontend, text)
    for utt in utts:
        assert_valid(utt)


@pytest.mark.parametrize(
    "text",
    [
        "我用iPhone 15拍了3张照片😀，花了¥5,999.00！",
        "GDP增长6.5%，CPI上涨2.1%。",
        "Hello world! 你好，世界。",
        "会议在2026-11-24 08:30开始，地点：3号楼502室。",
        "联系电话：13812345678，或者010-12345678。",
        "温度-5℃~3℃，风速20km/h。👍🏻🇨🇳",
        "ＡＢＣ１２３，們這個國家",
        "第1名、第2名和第3名分别得到1/2、1/3和1/6。",
    ],
)
def test_mixed_input_gives_valid_symbols(frontend: Frontend, text: str) -> None:
    utts = run(frontend, text)
    assert utts
    for utt in utts:
        assert_valid(utt)


@pytest.mark.parametrize(
    ("text", "ssml"),
    [("", False), ("   ", False), ("\n\n", False), ("😀😀😀", False), ("。。。！？", False), ("🇨🇳", False),
     ("<speak></speak>", True), ("<speak><break time='1s'/></speak>", True)],
)  # fmt: skip
def test_empty_after_normalisation(frontend: Frontend, text: str, ssml: bool) -> None:
    with pytest.raises(FrontendError) as info:
        run(frontend, text, ssml=ssml)
    assert info.value.param == "text"
    assert "nothing to read aloud" in info.value.public_message


def test_emotion_and_speaker_fields(frontend: Frontend) -> None:
    (utt,) = run(frontend, "你好", speaker="F74", emotion="emotion_happy")
    matches = assert_valid(utt)
    assert {m["spk"] for m in matches} == {"F74"}
    assert [m["emo"] for m in matches] == ["emotion_happy"] * 4 + ["emotion_none"]


def test_emotion_must_be_allowed(frontend: Frontend) -> None:
    with pytest.raises(FrontendError) as info:
        run(frontend, "你好", emotion="furious")
    assert info.value.param == "emotion"
    assert "happy, neutral, sad" in info.value.public_message


def test_bad_speaker_name(frontend: Frontend) -> None:
    with pytest.raises(FrontendError) as info:
        run(frontend, "你好", speaker="F7$x")
    assert info.value.param == "voice"


def test_inventory_lacking_a_phone_raises_a_clear_error() -> None:
    frontend = Frontend(DEFAULT_PHONES - {"xx_c"}, warm_up=False)
    with pytest.raises(FrontendError, match="谢"):
        run(frontend, "谢谢")
    with pytest.raises(FrontendError, match="<phoneme"):
        run(frontend, '<speak><phoneme ph="xie4">谢</phoneme></speak>', ssml=True)
    assert run(frontend, "你好")


def test_inventory_lacking_an_erhua_final_falls_back() -> None:
    frontend = Frontend(DEFAULT_PHONES - {"anr_c"}, warm_up=False)
    (utt,) = run(frontend, "玩儿")
    assert [m["phone"] for m in assert_valid(utt, DEFAULT_PHONES)] == ["w_c", "an_c", "#4"]


def test_max_sentence_chars_is_configurable() -> None:
    frontend = Frontend(max_sentence_chars=5, warm_up=False)
    utts = run(frontend, "北京今天天气怎么样")
    assert [syllable_count(u) for u in utts] == [4, 5]


_MIXED_ALPHABET = list(
    "你好世界一不儿了长行重0123456789.,:-/%¥$ABCabc，。！？、；：…“” \n\t<>&;/=\"'speakbrtimem😀\u200b\x00"
)


@settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.text(), st.text(alphabet=st.characters(codec=None, categories=None)),
                 st.text(alphabet=st.sampled_from(_MIXED_ALPHABET), max_size=200)))  # fmt: skip
def test_any_string_gives_symbols_or_a_frontend_error(text: str) -> None:
    frontend = shared_frontend()
    messages: list[str] = []
    for ssml in (False, True):
        try:
            utts = frontend.process(text, speaker="F7", emotion="neutral", allowed_emotions=EMOTIONS, ssml=ssml)
        except FrontendError as exc:
            messages.append(exc.public_message)
            continue
        assert utts
        for utt in utts:
            assert_valid(utt)
            assert syllable_count(utt) <= 60
    assert all(message.strip() for message in messages)
