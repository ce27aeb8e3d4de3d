"""Text normalisation: every class of number, symbol and letter reading."""

from __future__ import annotations

import pytest

from tts_server.inference.frontend.normalize import (
    NUMBER_CLOSE,
    NUMBER_OPEN,
    WORD_SEP,
    Reading,
    group_reading,
    normalize,
    read_cardinal,
    read_decimal,
    read_digits,
    say_as,
)


def _text(segments: list[str | Reading], word_sep: str = "|") -> str:
    """Segments as one string, word boundaries of readings as ``word_sep``, spelled words as their pinyin in
    brackets."""
    return "".join(
        s.replace(NUMBER_OPEN, "").replace(NUMBER_CLOSE, "").replace(WORD_SEP, word_sep)
        if isinstance(s, str)
        else "[" + " ".join(map(str, s.syllables)) + "]"
        for s in segments
    )


@pytest.mark.parametrize(
    ("digits", "reading"),
    [
        ("0", "零"),
        ("7", "七"),
        ("10", "十"),
        ("15", "十五"),
        ("20", "二十"),
        ("101", "一百零一"),
        ("110", "一百一十"),
        ("1005", "一千零五"),
        ("1050", "一千零五十"),
        ("2000", "两千"),
        ("10001", "一万零一"),
        ("10500", "一万零五百"),
        ("15000", "一万五千"),
        ("100000", "十万"),
        ("110000", "十一万"),
        ("12000034", "一千二百万零三十四"),
        ("100000001", "一亿零一"),
        ("123456789012", "一千二百三十四亿五千六百七十八万九千零一十二"),
        ("1234567890123", "一二三四五六七八九零一二三"),  # beyond 12 digits: digit by digit
    ],
)
def test_read_cardinal(digits: str, reading: str) -> None:
    assert read_cardinal(digits) == reading


def test_read_digits_and_decimal() -> None:
    assert read_digits("2024") == "二零二四"
    assert read_digits("110", phone=True) == "幺幺零"
    assert read_decimal("3.14") == "三点一四"
    assert read_decimal("-0.5") == "负零点五"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # integers and decimals
        ("123", "一百二十三"),
        ("3.14", "三点一四"),
        ("1,234,567", "一百二十三万|四千五百六十七"),
        ("0012", "零零一二"),
        # negative numbers
        ("-5", "负五"),
        ("气温-3.5度", "气温零下三点五度"),  # a temperature below zero is 零下, not 负
        # percentages
        ("50%", "百分之五十"),
        ("增长12.5%", "增长百分之十二点五"),
        ("-3%", "负百分之三"),
        ("3~5%", "百分之三|到五"),
        ("50％", "百分之五十"),
        # fractions
        ("3/4", "四分之三"),
        ("1/2的人", "二分之一的人"),
        # ordinals
        ("第3名", "第三名"),
        ("第2个", "第二个"),
        # measure words take 两 and join the number
        ("2个人", "两个人"),
        ("3张照片", "三张照片"),
        ("1.5亿", "一点五亿"),
        ("2万", "两万"),
        ("2月", "二月"),
        ("2000", "两千"),
        # years, digit by digit
        ("2024年", "二零二四年"),
        ("1949年10月1日", "一九四九年十月一日"),
        # dates
        ("2026-11-24", "二零二六年|十一月|二十四日"),
        ("2026/11/24", "二零二六年|十一月|二十四日"),
        ("2026.1.5", "二零二六年|一月|五日"),
        ("11月24日", "十一月二十四日"),
        ("2026-11", "二零二六年|十一月"),
        # times
        ("08:30", "八点|三十分"),
        ("8:05", "八点|零五分"),
        ("2:00", "两点"),
        ("23:59:30", "二十三点|五十九分|三十秒"),
        ("比分3:2", "比分三比二"),
        # money
        ("¥12.50", "十二点五元"),
        ("￥100", "一百元"),
        ("12.5元", "十二点五元"),
        ("$5", "五美元"),
        ("€2.5", "二点五欧元"),
        # phone numbers (digit by digit, 1 as yao)
        ("13812345678", "幺三八幺|二三四五|六七八"),
        ("+86 138 1234 5678", "加八六|，|幺三八|，|幺二三四|，|五六七八"),
        ("010-12345678", "零幺零|，|幺二三四|五六七八"),
        ("400-123-4567", "四零零|，|幺二三|，|四五六七"),
        # ranges
        ("3-5", "三到五"),
        ("10~20人", "十到二十人"),
        ("3-5km", "三到五公里"),
        # units
        ("5km", "五公里"),
        ("2kg", "两千克"),
        ("25℃", "二十五摄氏度"),
        ("-3°C", "零下三摄氏度"),
        ("100m", "一百米"),
        ("30km/h", "三十公里每小时"),
        ("500 ml", "五百毫升"),
        ("16GB", "十六吉字节"),
        ("3m²", "三平方米"),
        # full width
        ("１２３", "一百二十三"),
        ("你好！", "你好!"),
        ("ＡＢ", "[ei1 bi4]"),
        # traditional -> simplified
        ("們這個國家", "们这个国家"),
        ("電腦說話", "电脑说话"),
        # symbols between numbers
        ("1+1=2", "一加一等于二"),
        ("3×4", "三乘四"),
        ("A&B", "[ei1]和[bi4]"),
        # Latin letters are spelled
        ("CPU", "[xi1 pi4 you1]"),
        ("iPhone 15", "[ai4 pi4 ei1 qi1 ou1 en1 yi4] 十五"),
        ("café", "[xi1 ei1 ai2 fu5 yi4]"),
        # no digits, nothing to do
        ("今天天气很好", "今天天气很好"),
        ("", ""),
    ],
)
def test_normalize(text: str, expected: str) -> None:
    assert _text(normalize(text)) == expected


def test_no_digit_survives_normalisation() -> None:
    text = "1a2b3-4:5/6.7%8¥9 10km 11:60 99:99 2026-13-45 1/0 007 ３.１４"
    plain = "".join(s for s in normalize(text) if isinstance(s, str))
    assert not any(ch.isdigit() for ch in plain), plain


@pytest.mark.parametrize(
    ("text", "kind", "expected"),
    [
        ("2024", "digits", "二零二四"),
        ("110", "telephone", "幺幺零"),
        ("+86-10-1234", "telephone", "加八六|，|幺零|，|幺二三四"),
        ("1,234", "cardinal", "一千二百三十四"),
        ("-2.5", "cardinal", "负二点五"),
        ("2026-11-24", "date", "二零二六年|十一月|二十四日"),
        ("08:30", "time", "八点|三十分"),
    ],
)
def test_say_as(text: str, kind: str, expected: str) -> None:
    assert _text(say_as(text, kind)) == expected


@pytest.mark.parametrize(
    ("text", "kind"),
    [("abc", "digits"), ("", "digits"), ("12a", "telephone"), ("x", "cardinal"), ("2026-13-01", "date"),
     ("25:00", "time"), ("12", "spell-out")],
)  # fmt: skip
def test_say_as_rejects(text: str, kind: str) -> None:
    with pytest.raises(ValueError, match=r"\w"):
        say_as(text, kind)


@pytest.mark.parametrize(
    ("reading", "words"),
    [
        ("一百二十三万四千五百六十七", ["一百二十三万", "四千五百六十七"]),
        # A cardinal with 万/亿 but no 十/百/千 is cut at 万 and 亿 too, never in fours (三亿零三 | 万 was read
        # with 万 glued to the next word).
        ("三亿零三万", ["三亿", "零三万"]),
        ("三万", ["三万"]),
        ("幺三八幺二三四五六七八", ["幺三八幺", "二三四五", "六七八"]),
        ("三点一四一五九", ["三点一四", "一五九"]),
        ("", []),
    ],
)
def test_group_reading(reading: str, words: list[str]) -> None:
    assert group_reading(reading) == words
