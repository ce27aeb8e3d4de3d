"""bench/polyphone_corpus.py: spoken corpus labels become CPP's lexical ones only where that is unambiguous."""

from __future__ import annotations

import pytest

from bench.polyphone_corpus import (
    MARK,
    align,
    convert,
    lexical,
    phones_to_pinyin,
    read_aishell3,
    read_baker,
    read_phones,
)

CANDIDATES = {
    "好": ("hao3", "hao4"),
    "还": ("hai2", "huan2"),
    "和": ("he2", "he4", "hu2", "huo2", "huo4"),
    "地": ("de5", "di4"),
    "铺": ("pu1", "pu4"),
    "只": ("zhi3", "zhi1"),
    "把": ("ba3", "ba4"),
    "率": ("shuai4", "lv4"),
    "子": ("zi3", "zi5"),
}


def candidates(char: str) -> tuple[str, ...]:
    return CANDIDATES.get(char, ())


@pytest.mark.parametrize(
    ("spoken", "char", "next_tone", "expected"),
    [
        ("hai2", "还", "4", ("hai2", "kept")),
        ("hao2", "好", "3", ("hao3", "third-tone sandhi")),  # 好好 hao2 hao3
        ("hao2", "好", "2", ("hao3", "third-tone sandhi")),  # a sandhi chain: 3 3 3 -> 2 2 3
        ("hao2", "好", "4", (None, "not a candidate")),  # no sandhi before tone 4: a label error
        ("hao2", "好", None, (None, "not a candidate")),
        ("di5", "地", "4", ("di4", "neutral tone")),  # 土地 tu3 di5: the only di reading
        ("de5", "地", "4", ("de5", "kept")),  # 地 has one de reading
        ("zi5", "子", "4", (None, "neutral tone, several readings")),  # CPP: 子 zi3 or zi5
        ("huo5", "和", "1", (None, "neutral tone, several readings")),  # 暖和: huo2 or huo4
        ("zhi2", "只", "3", ("zhi3", "third-tone sandhi")),  # 只有 zhi2 you3
        ("lve4", "率", None, (None, "not a candidate")),
        ("lv4", "率", None, ("lv4", "kept")),
        ("ba2", "把", "3", ("ba3", "third-tone sandhi")),
        ("xing2", "好", "1", (None, "not a candidate")),
        ("hao", "好", "1", (None, "no tone")),
    ],
)
def test_lexical_mapping(spoken: str, char: str, next_tone: str | None, expected: tuple[str | None, str]) -> None:
    assert lexical(spoken, candidates(char), next_tone) == expected


def test_tone_2_with_a_tone_3_sibling_is_ambiguous_only_before_tone_2_or_3() -> None:
    readings = ("mi2", "mi3")  # a character with both: a spoken mi2 may be a raised mi3
    assert lexical("mi2", readings, "3") == (None, "tone 2 or sandhi-raised 3")
    assert lexical("mi2", readings, "2") == (None, "tone 2 or sandhi-raised 3")
    assert lexical("mi2", readings, "4") == ("mi2", "kept")
    assert lexical("mi2", readings, None) == ("mi2", "kept")
    assert lexical("mi3", readings, "3") == ("mi3", "kept")


def test_the_reading_is_spelt_as_the_candidate() -> None:
    assert lexical("lü4", ("shuai4", "lu:4"), None) == ("lu:4", "kept")


def test_baker_lines_align_and_erhua_covers_its_er() -> None:
    lines = ["000029\t遛弯儿#2都得#2躲远点#4。", "\tliu4 wanr1 dou1 dei3 duo2 yuan2 dian3",
             "000099\t坏行#4。", "\thuai4"]  # fmt: skip
    first, second = list(read_baker(lines))
    assert first is not None
    assert first.text == "遛弯儿都得躲远点。"
    assert first.labels == ("liu4", None, None, "dou1", "dei3", "duo2", "yuan2", "dian3", None)
    assert second is None  # one syllable for two characters


def test_aishell3_content_line() -> None:
    (sentence,) = read_aishell3(["SSB00050002.wav\t尊 zun1 重 zhong4 的 de5"])
    assert sentence is not None
    assert sentence.text == "尊重的"
    assert sentence.labels == ("zun1", "zhong4", "de5")


@pytest.mark.parametrize(
    ("initial", "final", "pinyin"),
    [("^", "iou3", "you3"), ("sh", "iii2", "shi2"), ("z", "ii4", "zi4"), ("q", "vn2", "qun2"), ("l", "ve4", "lve4"),
     ("^", "van2", "yuan2"), ("h", "uei4", "hui4"), ("c", "uen1", "cun1"), ("^", "uo3", "wo3"), ("^", "e4", "e4")],
)  # fmt: skip
def test_phones_to_pinyin(initial: str, final: str, pinyin: str) -> None:
    assert phones_to_pinyin(initial, final) == pinyin


def test_phones_line_with_er_syllable_and_erhua() -> None:
    lines = ["a|w|s|二歌儿|sil ^ e4 er5 #0 g e1 er5 sil", "b|w|s|而|sil ^ e2 er5 sil"]
    first, second = list(read_phones(lines))
    assert first is not None
    assert second is not None
    assert first.labels == ("er4", None, None)  # 歌儿 is erhua: unlabelled
    assert second.labels == ("er2",)


def test_convert_marks_each_polyphone_and_keeps_held_out_sentences_out() -> None:
    sentences = [align("还好吗", ["hai2", "hao2", "ma5"]),  # 好 before a neutral tone: hao2 is no sandhi
                 align("好好地", ["hao2", "hao3", "de5"]),
                 align("还行", ["hai2", "xing2"]),
                 None]  # fmt: skip
    pairs, counts = convert(sentences, candidates, excluded="他说还行\n")
    assert pairs == [(f"{MARK}还{MARK}好吗", "hai2"), (f"{MARK}好{MARK}好地", "hao3"), (f"好{MARK}好{MARK}地", "hao3"),
                     (f"好好{MARK}地{MARK}", "de5")]  # fmt: skip
    assert counts["polyphone: not a candidate"] == 1  # 好 hao2 in 还好吗
    assert counts["sentence: in the excluded set"] == 1
    assert counts["sentence: syllables do not line up"] == 1
