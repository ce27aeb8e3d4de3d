"""Pinyin syllables -> phones and symbol tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import PARITY_DIR, unavailable
from tts_server.inference.frontend.symbols import (
    DEFAULT_PHONES,
    PhoneSetError,
    Syllable,
    SyllableError,
    break_token,
    has_erhua_final,
    load_phone_set,
    parse_pinyin,
    read_phone_set,
    syllable_phones,
    word_tokens,
)

DICT_DIR = PARITY_DIR / "model" / "voices" / "zhitian_emo" / "dict" / "PinYin"


@pytest.fixture
def parity_dict_dir() -> Path:
    if not (DICT_DIR / "py2phoneMap.txt").is_file():
        unavailable(f"the parity set is not at {PARITY_DIR}")
    return DICT_DIR


def test_every_pinyin_in_py2phonemap_maps_to_the_same_phones(parity_dict_dir: Path) -> None:
    inventory = load_phone_set(DICT_DIR)
    lines = (DICT_DIR / "py2phoneMap.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) > 600
    mismatches = []
    for line in lines:
        pinyin, phones = line.split("\t")
        got = " ".join(syllable_phones(pinyin, inventory))
        if got != phones:
            mismatches.append((pinyin, phones, got))
    assert mismatches == []


def test_default_phones_are_the_published_mandarin_phones(parity_dict_dir: Path) -> None:
    assert load_phone_set(DICT_DIR) >= DEFAULT_PHONES


@pytest.mark.parametrize("namespace", ["", ' xmlns="http://schemas.alibaba-inc.com/tts"'])
def test_read_phone_set_keeps_file_order(tmp_path: Path, namespace: str) -> None:
    (tmp_path / "PhoneSet.xml").write_text(
        f"<phoneSet{namespace}><phone><id>0</id><name> zh_c </name></phone><phone><name>a_c</name></phone>"
        "<other><name>not_a_phone</name></other></phoneSet>",
        encoding="utf-8",
    )
    assert read_phone_set(tmp_path / "PhoneSet.xml") == ["zh_c", "a_c"]
    assert load_phone_set(tmp_path) == frozenset({"zh_c", "a_c"})


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found"),
        ("<phoneSet><phone>", "cannot parse"),
        ("<phoneSet><phone><id>0</id></phone></phoneSet>", "has no <name>"),
        ("<phoneSet></phoneSet>", "no <phone> entries"),
        ('<!DOCTYPE p [<!ENTITY x "a_c">]><phoneSet><phone><name>&x;</name></phone></phoneSet>', "cannot parse"),
    ],
)
def test_read_phone_set_errors_name_the_file(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "PhoneSet.xml"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(PhoneSetError, match=message) as info:
        read_phone_set(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("pinyin", "phones"),
    [
        ("xi", ("xx_c", "i_c")),  # x -> xx_c
        ("zhi", ("zh_c", "ih_c")),
        ("ri", ("r_c", "ih_c")),
        ("ci", ("c_c", "ii_c")),
        ("yi", ("y_c", "i_c")),  # y/w are initials
        ("wu", ("w_c", "u_c")),
        ("you", ("y_c", "ou_c")),
        ("wei", ("w_c", "ei_c")),
        ("yu", ("y_c", "v_c")),
        ("yuan", ("y_c", "van_c")),
        ("ju", ("j_c", "v_c")),  # written u after j/q/x is ü
        ("xue", ("xx_c", "ve_c")),
        ("lv", ("l_c", "v_c")),
        ("nve", ("n_c", "ve_c")),
        ("niu", ("n_c", "iou_c")),  # full finals
        ("gui", ("g_c", "uei_c")),
        ("lun", ("l_c", "uen_c")),
        ("a", ("ga", "a_c")),  # zero-initial fillers
        ("ang", ("ga", "ang_c")),
        ("e", ("ge", "e_c")),
        ("er", ("ge", "er_c")),
        ("ou", ("go", "ou_c")),
        ("wanr", ("w_c", "anr_c")),  # erhua
        ("huar", ("h_c", "uar_c")),
        ("ger", ("g_c", "er_c")),
        ("zhir", ("zh_c", "ihr_c")),
        ("anr", ("ga", "anr_c")),
        ("dianr", ("d_c", "ianr_c")),
        ("wengr", ("w_c", "engr_c")),
        ("kuor", ("k_c", "uor_c")),
    ],
)
def test_syllable_phones_rules(pinyin: str, phones: tuple[str, ...]) -> None:
    assert syllable_phones(pinyin) == phones


def test_erhua_final_missing_from_inventory_falls_back_to_plain_final() -> None:
    inventory = DEFAULT_PHONES - {"anr_c"}
    assert syllable_phones("wanr", inventory) == ("w_c", "an_c")


def test_phone_missing_from_inventory_raises() -> None:
    with pytest.raises(SyllableError, match="xx_c"):
        syllable_phones("xi", DEFAULT_PHONES - {"xx_c"})


@pytest.mark.parametrize("bad", ["", "x", "zhv", "bv", "ji3x", "qa", "zho", "hello", "ng", "wi", "yai", "ri4r", "err"])
def test_invalid_syllables_raise(bad: str) -> None:
    with pytest.raises(SyllableError):
        syllable_phones(parse_pinyin(bad).base) if bad else parse_pinyin(bad)


@pytest.mark.parametrize(
    ("text", "syllable"),
    [
        ("zhuang4", Syllable("zhuang", 4)),
        ("lü4", Syllable("lv", 4)),
        ("lu:4", Syllable("lv", 4)),
        ("LV4", Syllable("lv", 4)),
        ("ma", Syllable("ma", 5)),
        ("ma0", Syllable("ma", 5)),
        ("wanr2", Syllable("wanr", 2)),
    ],
)
def test_parse_pinyin(text: str, syllable: Syllable) -> None:
    assert parse_pinyin(text) == syllable


@pytest.mark.parametrize("bad", ["", "ma6", "ma 3", "3", "ni-hao", "a:"])
def test_parse_pinyin_rejects(bad: str) -> None:
    with pytest.raises(SyllableError):
        parse_pinyin(bad)


def test_word_tokens_flags() -> None:
    tokens = word_tokens([(("b_c", "ei_c"), 3), (("j_c", "ing_c"), 1)], "emotion_neutral", "F7")
    assert tokens == [
        "{b_c$tone3$s_begin$word_begin$emotion_neutral$F7}",
        "{ei_c$tone3$s_end$word_middle$emotion_neutral$F7}",
        "{j_c$tone1$s_begin$word_middle$emotion_neutral$F7}",
        "{ing_c$tone1$s_end$word_end$emotion_neutral$F7}",
    ]
    assert word_tokens([(("pau",), 5)], "emotion_sad", "M7") == ["{pau$tone5$s_both$word_both$emotion_sad$M7}"]
    assert break_token(3, "F74") == "{#3$tone_none$s_none$word_none$emotion_none$F74}"


@pytest.mark.parametrize(
    ("base", "expected"),
    [("wan", True), ("ge", True), ("zhi", True), ("yu", True), ("er", False), ("wanr", False), ("hng", False)],
)
def test_has_erhua_final(base: str, expected: bool) -> None:
    assert has_erhua_final(base) is expected
    assert not has_erhua_final("wan", DEFAULT_PHONES - {"anr_c"})
