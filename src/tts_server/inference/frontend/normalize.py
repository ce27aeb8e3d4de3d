"""Text normalisation: digits, symbols, units, Latin letters -> Mandarin readings.

The output is a list of segments: ``str`` pieces are Chinese text (with punctuation kept, for segmentation,
pinyin and prosodic breaks later) and ``Reading`` pieces carry a fixed pinyin reading (spelled Latin letters,
SSML ``<phoneme>``). Every rule is a regular expression applied in a fixed order, so the same input always
reads the same way.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from tts_server.inference.frontend.symbols import Syllable, parse_pinyin
from tts_server.inference.frontend.tables import LETTER_READINGS, TRAD_TO_SIMP

DIGIT_CHARS = "零一二三四五六七八九"
_PHONE_DIGIT_CHARS = "零幺二三四五六七八九"

_MAX_CARDINAL_DIGITS = 12

_DIGIT_GROUP = 4

#: Readings the rules produce are already segmented: ``NUMBER_OPEN word WORD_SEP word NUMBER_CLOSE`` marks them so
#: that jieba does not re-cut them (it splits 二零二六年 or 百分之十二点五 arbitrarily). Private-use characters:
#: ``prepare`` removes them from client text.
NUMBER_OPEN, NUMBER_CLOSE, WORD_SEP = "\ue001", "\ue002", "\ue000"


@dataclass(frozen=True, slots=True)
class Reading:
    """A word whose pinyin is fixed (not looked up); ``source`` is the text it stands for."""

    syllables: tuple[Syllable, ...]
    source: str


Segment = str | Reading


# -- numbers -------------------------------------------------------------------------------------------------


def read_digits(digits: str, *, phone: bool = False) -> str:
    """Digit by digit; ``phone=True`` reads 1 as 幺 (yao), as in phone numbers."""
    table = _PHONE_DIGIT_CHARS if phone else DIGIT_CHARS
    return "".join(table[ord(d) - 48] for d in digits if "0" <= d <= "9")


def _section(group: int) -> str:
    """0 < group < 10000 -> reading with 千百十 and inner zeros as a single 零."""
    out = []
    started = False
    zero_pending = False
    for power, unit in ((1000, "千"), (100, "百"), (10, "十"), (1, "")):
        d = (group // power) % 10
        if d == 0:
            zero_pending = started
            continue
        if zero_pending:
            out.append("零")
            zero_pending = False
        out.append(DIGIT_CHARS[d] + unit)
        started = True
    return "".join(out)


def read_cardinal(digits: str) -> str:
    """An unsigned integer as a cardinal number (一万零五百); longer than 12 digits: digit by digit."""
    digits = digits.lstrip("0") or "0"
    if len(digits) > _MAX_CARDINAL_DIGITS:
        return read_digits(digits)
    n = int(digits)
    if n == 0:
        return "零"
    groups = []
    while n:
        groups.append(n % 10000)
        n //= 10000
    out = ""
    gap = False
    for i in range(len(groups) - 1, -1, -1):
        g = groups[i]
        if g == 0:
            gap = bool(out)
            continue
        if out and (gap or g < 1000):
            out += "零"
        out += _section(g) + ("", "万", "亿")[i]
        gap = False
    if out.startswith("一十"):
        out = out[1:]
    elif out.startswith("二") and out[1:2] in ("千", "万", "亿"):
        out = "两" + out[1:]
    return out


def read_decimal(number: str) -> str:
    """``12.50`` -> 十二点五零; ``-3`` -> 负三. Integer part cardinal, fraction digit by digit."""
    sign = ""
    if number.startswith(("-", "−")):
        sign, number = "负", number[1:]
    whole, _, frac = number.partition(".")
    out = read_cardinal(whole or "0")
    if frac:
        out += "点" + read_digits(frac)
    return sign + out


def group_reading(reading: str) -> list[str]:
    """A number reading as prosodic words: a cardinal is cut after 万 and 亿 (一百二十三万 | 四千五百六十七), a
    digit string into groups of at most four (幺三八幺 | 二三四五 | 六七八)."""
    if not reading:
        return []
    if any(c in "十百千万亿" for c in reading):
        return [p for p in re.split(r"(?<=[万亿])(?!$)", reading) if p]
    return [reading[i : i + _DIGIT_GROUP] for i in range(0, len(reading), _DIGIT_GROUP)]


def words(*parts: str) -> str:
    """Mark already segmented words: the frontend reads each as one word and does not re-segment them."""
    return NUMBER_OPEN + WORD_SEP.join(p for p in parts if p) + NUMBER_CLOSE


# -- tables ----------------------------------------------------------------------------------------------------

# Measure words and units that form one word with the number before them (三张, 两公里); a bare 2 before them
# reads 两 (两个人), not 二.
_MEASURE_WORDS = (
    "个", "只", "位", "本", "次", "件", "条", "张", "种", "天", "年", "人", "名", "台", "辆", "家", "块", "份",
    "点", "岁", "周", "倍", "项", "双", "对", "句", "首", "元", "分钟", "小时", "个月", "杯", "瓶", "碗", "斤",
    "公里", "千克", "公斤", "克", "米", "层", "间", "遍", "场", "节", "部", "架", "所", "口", "样", "套", "片",
    "颗", "根", "把", "头", "匹", "棵", "声", "趟", "下", "页", "章", "集", "分", "秒", "度", "角", "号", "月",
    "日", "人民币", "美元", "欧元", "英镑", "韩元", "卢比", "毫米", "厘米", "平方米", "平方公里", "立方米", "毫升",
    "升", "吨", "毫克", "瓦", "千瓦", "伏", "安", "赫兹", "分贝", "摄氏度", "华氏度", "字节", "兆字节", "吉字节",
    "千字节", "太字节", "毫秒", "公里每小时", "米每秒", "千瓦时", "毫安时", "纳米", "千赫兹", "兆赫兹", "吉赫兹",
    "万", "亿", "万亿",
)  # fmt: skip
_NO_LIANG = frozenset({"月", "日", "号", "分", "秒", "度", "角", "页", "章", "集"})

# Longest first so that km/h wins over km and mAh over mA.
_UNITS = {
    "km/h": "公里每小时", "m/s": "米每秒", "km²": "平方公里", "km2": "平方公里", "m²": "平方米", "m2": "平方米",
    "cm²": "平方厘米", "m³": "立方米", "m3": "立方米", "kWh": "千瓦时", "kwh": "千瓦时", "mAh": "毫安时",
    "km": "公里", "cm": "厘米", "mm": "毫米", "nm": "纳米", "kg": "千克", "mg": "毫克", "ml": "毫升",
    "mL": "毫升", "ms": "毫秒", "min": "分钟", "GB": "吉字节", "MB": "兆字节", "KB": "千字节", "kB": "千字节",
    "TB": "太字节", "Mbps": "兆比特每秒", "kHz": "千赫兹", "MHz": "兆赫兹", "GHz": "吉赫兹", "Hz": "赫兹",
    "kW": "千瓦", "kV": "千伏", "mA": "毫安", "dB": "分贝", "°C": "摄氏度", "℃": "摄氏度", "°F": "华氏度",
    "℉": "华氏度", "°": "度", "m": "米", "g": "克", "t": "吨", "L": "升", "h": "小时", "s": "秒", "W": "瓦",
    "V": "伏", "A": "安",
}  # fmt: skip
# Single-letter units only right after the number (5m), so that "5 A" stays a letter; longer ones may be spaced.
_LONG_UNIT_RE = "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True) if len(u) > 1)
_SHORT_UNIT_RE = "|".join(re.escape(u) for u in _UNITS if len(u) == 1)

_CURRENCIES = {"¥": "元", "￥": "元", "$": "美元", "€": "欧元", "£": "英镑", "₩": "韩元", "₹": "卢比"}

_SYMBOL_WORDS = {"&": "和", "@": "艾特", "＆": "和", "×": "乘", "÷": "除以", "=": "等于", "≈": "约等于", "+": "加"}


_MEASURE_RE = "|".join(re.escape(w) for w in sorted(set(_MEASURE_WORDS), key=len, reverse=True))

# -- rules -----------------------------------------------------------------------------------------------------

_NUM = r"[0-9]+(?:\.[0-9]+)?"


def _valid_date(month: str, day: str | None) -> bool:
    return 1 <= int(month) <= 12 and (day is None or 1 <= int(day) <= 31)


def _date(m: re.Match[str]) -> str:
    year, month, day = m.group(1), m.group(2), m.group(3)
    if not _valid_date(month, day):
        return f"{year} {month} {day}"
    return words(read_digits(year) + "年", read_cardinal(month) + "月", read_cardinal(day) + "日")


def _year_month(m: re.Match[str]) -> str:
    year, month = m.group(1), m.group(2)
    if not _valid_date(month, None):
        return f"{year} {month}"
    return words(read_digits(year) + "年", read_cardinal(month) + "月")


def _year(m: re.Match[str]) -> str:
    return words(read_digits(m.group(1)) + "年")


def _clock(m: re.Match[str]) -> str:
    hour, minute, second = int(m.group(1)), int(m.group(2)), m.group(3)
    if hour > 24 or minute > 59 or (second is not None and int(second) > 59):
        # Not a time of day: a score or ratio (3:2).
        parts = [read_cardinal(g) for g in m.groups() if g is not None]
        return words("比".join(parts))
    out = [("两" if hour == 2 else read_cardinal(m.group(1))) + "点"]
    if minute or second is not None:
        out.append(("零" if 0 < minute < 10 else "") + read_cardinal(m.group(2)) + "分")
    if second is not None:
        out.append(read_cardinal(second) + "秒")
    return words(*out)


def _ratio(m: re.Match[str]) -> str:
    return words(read_cardinal(m.group(1)) + "比" + read_cardinal(m.group(2)))


def _phone_words(text: str) -> list[str]:
    out: list[str] = []
    for part in re.split(r"[-\s]+", text.lstrip("+")):
        if part:
            if out:
                out.append("，")  # a short pause between digit groups, as numbers are read out
            out.extend(group_reading(read_digits(part, phone=True)))
    if text.startswith("+") and out:
        out[0] = "加" + out[0]
    return out


def _phone(m: re.Match[str]) -> str:
    return words(*_phone_words(m.group(0)))


def _money(m: re.Match[str]) -> str:
    sign = "-" if m.group(1) else ""
    amount = m.group(3)
    if "." in amount:
        # ¥12.50 is said 十二点五元: trailing zeros of a price are not read.
        amount = amount.rstrip("0").rstrip(".")
    return sign + amount + _CURRENCIES[m.group(2)]


def _percent_range(m: re.Match[str]) -> str:
    return words("百分之" + read_decimal(m.group(1)), "到" + read_decimal(m.group(2)))


def _percent(m: re.Match[str]) -> str:
    sign = "负" if m.group(1) else ""
    return words(sign + "百分之" + read_decimal(m.group(2)))


def _fraction(m: re.Match[str]) -> str:
    num, den = m.group(1), m.group(2)
    if int(den) == 0:
        return words(read_cardinal(num) + "比" + read_cardinal(den))
    return words(read_cardinal(den) + "分之" + read_cardinal(num))


def _range(m: re.Match[str]) -> str:
    return words(read_decimal(m.group(1)) + "到" + read_decimal(m.group(2)) + (m.group(3) or ""))


def _unit(m: re.Match[str]) -> str:
    return m.group(1) + _UNITS[m.group(2)]


def _number(m: re.Match[str]) -> str:
    ordinal, sign, number, measure = m.group(1) or "", m.group(2), m.group(3), m.group(4) or ""
    if "." in number:
        reading = read_decimal(number)
    elif len(number) > 1 and number.startswith("0"):
        reading = read_digits(number)
    elif number == "2" and measure and not ordinal and measure not in _NO_LIANG:
        reading = "两"
    else:
        reading = read_cardinal(number)
    parts = group_reading(reading)
    parts[0] = ordinal + ("负" if sign else "") + parts[0]
    parts[-1] += measure
    return words(*parts)


def _symbol(m: re.Match[str]) -> str:
    return _SYMBOL_WORDS[m.group(1)]


_Rule = tuple[re.Pattern[str], Callable[[re.Match[str]], str]]

# Every pattern that starts with digits is anchored to the start of a digit run (?<![0-9.]): otherwise a long run
# of digits is retried from each of its positions, which is quadratic.
_RULES: list[_Rule] = [
    # 1,234,567 -> 1234567
    (re.compile(r"(?<![0-9.])([0-9]{1,3}(?:,[0-9]{3})+)(?![0-9,])"), lambda m: m.group(1).replace(",", "")),
    # Phone numbers before dates and ranges: +86 138 1234 5678, 13812345678, 010-12345678, 400-123-4567.
    (re.compile(r"(?<![0-9.])(?:\+86[-\s]?)?1[3-9][0-9][-\s]?[0-9]{4}[-\s]?[0-9]{4}(?![0-9.])"), _phone),
    (re.compile(r"(?<![0-9.])(?:0[0-9]{2,3}|400|800)-[0-9]{3,4}-?[0-9]{4}(?![0-9.])"), _phone),
    (re.compile(r"(?<![0-9.])([0-9]{4})[-/.]([0-9]{1,2})[-/.]([0-9]{1,2})(?![0-9.])"), _date),
    (re.compile(r"(?<![0-9.])([0-9]{4})[-/]([0-9]{1,2})(?![0-9./-])"), _year_month),
    (re.compile(r"(?<![0-9.])([0-9]{4})年"), _year),
    (re.compile(r"(?<![0-9.:])([0-9]{1,2}):([0-9]{2})(?::([0-9]{2}))?(?![0-9:])"), _clock),
    (re.compile(r"(?<![0-9.:])([0-9]+):([0-9]+)(?![0-9:])"), _ratio),
    # Unit symbols become words and keep their digits, which the number rule reads together with them (2kg ->
    # 两千克); single-letter units only right after the number (5m), so that "5 A" stays a letter.
    (re.compile(r"(?<![0-9.])(" + _NUM + r")\s?(" + _LONG_UNIT_RE + r")(?![A-Za-z])"), _unit),
    (re.compile(r"(?<![0-9.])(" + _NUM + r")(" + _SHORT_UNIT_RE + r")(?![A-Za-z])"), _unit),
    (re.compile(r"(-?)([¥￥$€£₩₹])\s?(" + _NUM + ")"), _money),
    (re.compile(r"(?<![0-9.])(" + _NUM + r")%?\s?[-~～]\s?(" + _NUM + r")\s?%"), _percent_range),
    (re.compile(r"(?<![0-9.])(-?)(" + _NUM + r")\s?[%％]"), _percent),
    (re.compile(r"(?<![0-9./])([0-9]+)/([0-9]+)(?![0-9/])"), _fraction),
    (re.compile(r"([0-9])\s*([+×÷=≈])\s*(?=[0-9])"), lambda m: m.group(1) + _SYMBOL_WORDS[m.group(2)]),
    (re.compile(r"(?<![0-9.])(" + _NUM + r")\s?[-~～]\s?(" + _NUM + r")(?![0-9.])(" + _MEASURE_RE + ")?"), _range),
    (re.compile(r"(第)?(?:(?<![A-Za-z0-9.)\]])(-))?(" + _NUM + r")(" + _MEASURE_RE + ")?"), _number),
    (re.compile(r"([&@＆×÷=≈])"), _symbol),
]

_LATIN_RE = re.compile(r"[A-Za-z]+")


def _fold_width_and_accents(text: str) -> str:
    out = []
    for ch in text:
        code = ord(ch)
        if 0xFF01 <= code <= 0xFF5E:
            out.append(chr(code - 0xFEE0))
        elif code == 0x3000:
            out.append(" ")
        elif 0xC0 <= code <= 0x24F:
            # é, ñ, ü in Latin words: spell the base letter.
            base = unicodedata.normalize("NFD", ch)[0]
            out.append(base if base.isascii() else ch)
        elif 0xE000 <= code <= 0xF8FF:
            continue  # private use: reserved for the frontend's own word marks, never spoken
        else:
            out.append(ch)
    return "".join(out)


_TRAD_TABLE = str.maketrans(TRAD_TO_SIMP)
_MINUS_TABLE = str.maketrans({"−": "-", "－": "-", "﹣": "-"})


def prepare(text: str) -> str:
    """Width, traditional characters and minus signs: the character-level part of normalisation."""
    return _fold_width_and_accents(text).translate(_TRAD_TABLE).translate(_MINUS_TABLE)


def spell_latin(word: str) -> Reading:
    """Latin letters are spelled one by one with their customary Mandarin letter names."""
    syllables: list[Syllable] = []
    for ch in word.upper():
        syllables.extend(parse_pinyin(p) for p in LETTER_READINGS[ch])
    return Reading(tuple(syllables), word)


def normalize(text: str) -> list[Segment]:
    """Plain text -> segments with every digit, symbol and Latin letter replaced by a reading."""
    text = prepare(text)
    for pattern, repl in _RULES:
        text = pattern.sub(repl, text)
    return split_latin(text)


def split_latin(text: str) -> list[Segment]:
    out: list[Segment] = []
    pos = 0
    for m in _LATIN_RE.finditer(text):
        if m.start() > pos:
            out.append(text[pos : m.start()])
        out.append(spell_latin(m.group(0)))
        pos = m.end()
    if pos < len(text):
        out.append(text[pos:])
    return out


# -- SSML say-as -----------------------------------------------------------------------------------------------


def say_as(text: str, interpret_as: str) -> list[Segment]:
    """Readings forced by SSML ``<say-as interpret-as=...>``; ValueError when the text does not fit the class."""
    raw = prepare(text).strip()
    if interpret_as == "digits":
        if not re.fullmatch(r"[0-9\s-]+", raw) or not re.search(r"[0-9]", raw):
            raise ValueError("digits expects only digits")
        return [words(*group_reading(read_digits(raw)))]
    if interpret_as == "telephone":
        if not re.fullmatch(r"\+?[0-9\s-]+", raw) or not re.search(r"[0-9]", raw):
            raise ValueError("telephone expects digits, spaces, '-' and a leading '+'")
        return [words(*_phone_words(raw))]
    if interpret_as == "cardinal":
        clean = raw.replace(",", "")
        if not re.fullmatch(r"-?" + _NUM, clean):
            raise ValueError("cardinal expects a number")
        return [words(*group_reading(read_decimal(clean)))]
    if interpret_as == "date":
        m = re.fullmatch(r"([0-9]{4})[-/.]([0-9]{1,2})[-/.]([0-9]{1,2})", raw)
        if m is None or not _valid_date(m.group(2), m.group(3)):
            raise ValueError("date expects YYYY-MM-DD")
        return [_date(m)]
    if interpret_as == "time":
        m = re.fullmatch(r"([0-9]{1,2}):([0-9]{2})(?::([0-9]{2}))?", raw)
        if m is None or int(m.group(1)) > 24 or int(m.group(2)) > 59 or int(m.group(3) or 0) > 59:
            raise ValueError("time expects HH:MM or HH:MM:SS")
        return [_clock(m)]
    raise ValueError(f"unsupported interpret-as {interpret_as!r}")
