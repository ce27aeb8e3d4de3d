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
from tts_server.inference.frontend.trace import Src, Traced

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
#: A segment and where it came from in the original text: one span per character of a ``str`` segment, one per
#: syllable of a ``Reading``.
TracedSegment = tuple[Segment, tuple[Src, ...]]


def covering(segments: list[Segment], span: Src) -> list[TracedSegment]:
    """Segments that as a whole stand for ``span`` (an SSML ``<say-as>`` element's content)."""
    return [(seg, (span,) * (len(seg) if isinstance(seg, str) else len(seg.syllables))) for seg in segments]


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
    "cm³": "立方厘米", "mm²": "平方毫米", "kcal": "千卡", "kPa": "千帕", "MPa": "兆帕", "hPa": "百帕",
    "μm": "微米", "µm": "微米", "μg": "微克", "µg": "微克", "MW": "兆瓦", "mW": "毫瓦", "Gbps": "吉比特每秒",
    "kbps": "千比特每秒", "MB/s": "兆字节每秒", "rpm": "转每分钟", "mmHg": "毫米汞柱",
}  # fmt: skip
# Single-letter units only right after the number (5m), so that "5 A" stays a letter; longer ones may be spaced.
_LONG_UNIT_RE = "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True) if len(u) > 1)
_SHORT_UNIT_RE = "|".join(re.escape(u) for u in _UNITS if len(u) == 1)

_CURRENCIES = {"¥": "元", "￥": "元", "$": "美元", "€": "欧元", "£": "英镑", "₩": "韩元", "₹": "卢比"}

_SYMBOL_WORDS = {"&": "和", "@": "艾特", "＆": "和", "×": "乘", "÷": "除以", "=": "等于", "≈": "约等于", "+": "加"}


_MEASURE_RE = "|".join(re.escape(w) for w in sorted(set(_MEASURE_WORDS), key=len, reverse=True))

_CURRENCY_WORDS = frozenset({"元", "块", "美元", "欧元", "英镑", "韩元", "卢比", "人民币", "日元", "港币", "港元"})
_TEMPERATURE_UNITS = frozenset({"摄氏度", "华氏度"})
_TEMPERATURE_BEFORE_RE = re.compile(r"气温|温度|低温|高温|体温|室温|水温|最低|最高")

# Words after which a number is an identifier read digit by digit (编号27149, 投诉电话10015, 房间1208); those in
# _PHONE_KEYWORDS read 1 as 幺, as phone numbers are read out. Only numbers of three or more digits (a shorter
# one reads the same either way, or is a count: 房间2个).
_DIGIT_KEYWORDS = (
    "编号", "号码", "电话", "热线", "专线", "手机", "手机号", "座机", "分机", "传真", "拨打", "致电", "呼叫",
    "房间", "房号", "房间号", "航班", "航班号", "车次", "单号", "订单号", "运单号", "快递单号", "尾号", "工号",
    "学号", "账号", "帐号", "卡号", "邮编", "邮政编码", "验证码", "密码", "代码", "股票代码", "代号", "型号",
    "序列号", "批号", "证号", "身份证", "身份证号", "车牌号", "门牌号", "座位号", "区号", "QQ", "微信号",
)  # fmt: skip
_PHONE_KEYWORDS = frozenset(
    {"号码", "电话", "热线", "专线", "手机", "手机号", "座机", "分机", "传真", "拨打", "致电", "呼叫"}
)
_DIGIT_KEYWORD_RE = "|".join(re.escape(w) for w in sorted(_DIGIT_KEYWORDS, key=len, reverse=True))
# ...but not a number followed by a measure word or unit: 手机3999元, 代码1000行, 电话300个 are quantities. 号 and 次
# may follow an identifier (G1234次, “26314”号).
# A comma ends the number unless it groups thousands (10,015): after width folding a clause comma (，) looks the same.
_NOT_AN_ID_RE = (
    r"(?![0-9%％‰A-Za-z]|\.[0-9]|,[0-9]{3}(?![0-9])|\s?(?:行|"
    + "|".join(re.escape(w) for w in sorted(set(_MEASURE_WORDS) - {"号", "次"}, key=len, reverse=True))
    + "))"
)

# Numbers that name a programme, policy or event (985高校, 930新政, 996工作制, 315晚会, 911事件): only before these
# words, so that a bare number before a measure word stays a quantity (985所高校).
_CODE_NAMED = (
    "高校", "院校", "大学", "工程", "新政", "政策", "新规", "工作制", "计划", "事件", "晚会", "大促", "购物节",
)  # fmt: skip
_CODE_NAMED_RE = "|".join(_CODE_NAMED)

# Two-digit year rule (86年 -> 八六年, but 过了30年 / 30年来 -> 三十年). A two-digit number before 年 is a year
# when followed by a month (86年3月) or a year-context word (出生, 毕业, 那年, 底 …); it is a duration when followed
# by a duration word (里, 来, 后, 多, 以上 …) or preceded by one (过了, 近, 长达, 这, 每 …); otherwise it is a year
# when preceded by 于/在/是/从/到 … or when it starts a clause (nothing, punctuation or a space before it).
# 年代 is never a year here (八十年代), and one-digit numbers are always quantities.
_MONTH_AFTER_RE = re.compile(r"[0-9]{1,2}月")
_YEAR_AFTER_RE = re.compile(
    r"出生|生人|生的|(?:大学|高中|初中|小学|研究生|博士|硕士)?(?:毕业|入学)|入伍|入职|入党|参加工作|高考|考研|结婚|"
    r"那年|那一年|的时候|时候|时(?!间)|底|初|春|夏|秋|冬|"
    r"春节|春晚|版|款|世界杯|奥运会|亚运会|届"
)
_DURATION_AFTER_RE = re.compile(
    r"[里间来后前内中多余左以之了过没不老期半零]|时间|历史|的时间|的历史|工龄|寿命|徒刑|有期"
)
_DURATION_BEFORE_RE = re.compile(
    r"(?:过了|过去|近|将近|接近|约|大约|长达|超过|整整|这|那|几|每|有|用了|花了|满|第|持续|历时|经过|达|共|"
    r"逾|连续|为期|了|上|数|足足|后|前|未来|至少|最多|的)$"
)
# Four digits before 年 are a year (到了2020年) unless a length of time is announced (长达2000年, 近1000年).
_LONG_DURATION_BEFORE_RE = re.compile(
    r"(?:近|将近|接近|长达|约|大约|超过|历时|经过|逾|足足|整整|数|过了|用了|花了|持续|达)$"
)
_YEAR_BEFORE_RE = re.compile(r"(?:于|在|是|从|自|到|至|截至|截止|早在|直到|生于|那是|回到|像)$")
_CJK_OR_ALNUM_RE = re.compile(r"[\u4e00-\u9fff0-9A-Za-z]")

# 比分17:16 / 以3:1战胜: a score, not a time of day.
_SCORE_BEFORE_RE = re.compile(r"比分|战胜|击败|打成|战平|获胜|取胜|大胜|险胜|领先|落后|扳平|总分|赛果")
_SCORE_AFTER_RE = re.compile(r"战胜|击败|取胜|获胜|力克|险胜|大胜|告负|落败|输给|负于|胜|负|的比分|比分|领先|落后|夺")

_UNIT_WORD_RE = "|".join(sorted({re.escape(u) for u in _UNITS.values()}, key=len, reverse=True))

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
    before = m.string[max(0, m.start() - 4) : m.start()]
    if _LONG_DURATION_BEFORE_RE.search(before):
        # 近1000年, 长达2000年: a length of time, not a calendar year.
        return m.group(1) + "年"
    return words(read_digits(m.group(1)) + "年")


def _year_range(m: re.Match[str]) -> str:
    return words(read_digits(m.group(1)) + "到" + read_digits(m.group(2)) + "年")


def _short_year(m: re.Match[str]) -> str:
    """``86年``: a two-digit year (八六年) or a duration (三十年), by the rule above ``_MONTH_AFTER_RE``."""
    before = m.string[max(0, m.start() - 4) : m.start()]
    after = m.string[m.end() : m.end() + 6]
    year = words(read_digits(m.group(1)) + "年")
    if _MONTH_AFTER_RE.match(after) or _YEAR_AFTER_RE.match(after):
        return year
    if _DURATION_AFTER_RE.match(after) or _DURATION_BEFORE_RE.search(before):
        return m.group(0)
    if _YEAR_BEFORE_RE.search(before) or not before or not _CJK_OR_ALNUM_RE.match(before[-1]):
        return year
    return m.group(0)


def _generation(m: re.Match[str]) -> str:
    return words(read_digits(m.group(1)) + "后")


def _is_score(m: re.Match[str]) -> bool:
    before = m.string[max(0, m.start() - 8) : m.start()]
    after = m.string[m.end() : m.end() + 4]
    if _SCORE_BEFORE_RE.search(before) or _SCORE_AFTER_RE.match(after):
        return True
    # 比赛以25:23结束: 以 + a result; 以12:00为准 stays a time.
    return before.endswith("以") and after.startswith(("结束", "告终"))


def _clock(m: re.Match[str]) -> str:
    hour, minute, second = int(m.group(1)), int(m.group(2)), m.group(3)
    if hour > 24 or minute > 59 or (second is not None and int(second) > 59) or _is_score(m):
        # Not a time of day: a score or ratio (3:2).
        parts = [read_cardinal(g) for g in m.groups() if g is not None]
        return words("比".join(parts))
    out = [("两" if hour == 2 else read_cardinal(m.group(1))) + "点"]
    if minute or second is not None:
        out.append(("零" if 0 < minute < 10 else "") + read_cardinal(m.group(2)) + "分")
    if second is not None:
        out.append(read_cardinal(second) + "秒")
    return words(*out)


_CLOCK = r"([0-9]{1,2}):([0-9]{2})(?::([0-9]{2}))?"
_CLOCK_RE = re.compile(_CLOCK)


def _clock_range(m: re.Match[str]) -> str:
    first, second = _CLOCK_RE.fullmatch(m.group(1)), _CLOCK_RE.fullmatch(m.group(5))
    # Both groups matched _CLOCK, so both parse again.
    assert first is not None
    assert second is not None
    if _is_score(m) or not (_is_time(first) and _is_time(second)):
        return _ratio_words(m.group(1)) + "到" + _ratio_words(m.group(5))
    return _clock(first) + "到" + _clock(second)


def _is_time(m: re.Match[str]) -> bool:
    return int(m.group(1)) <= 24 and int(m.group(2)) <= 59 and int(m.group(3) or 0) <= 59


def _ratio_words(text: str) -> str:
    return words("比".join(read_cardinal(g) for g in text.split(":")))


def _ratio(m: re.Match[str]) -> str:
    return words(read_cardinal(m.group(1)) + "比" + read_cardinal(m.group(2)))


def _digit_groups(reading: str) -> list[str]:
    # Up to five digits are said in one breath (幺零零幺五); a group of four would leave one digit alone.
    return [reading] if len(reading) <= _DIGIT_GROUP + 1 else group_reading(reading)


def _phone_words(text: str) -> list[str]:
    out: list[str] = []
    for part in re.split(r"[-\s]+", text.lstrip("+")):
        if part:
            if out:
                out.append("，")  # a short pause between digit groups, as numbers are read out
            out.extend(_digit_groups(read_digits(part, phone=True)))
    if text.startswith("+") and out:
        out[0] = "加" + out[0]
    return out


def _phone(m: re.Match[str]) -> str:
    return words(*_phone_words(m.group(0)))


def _context_digits(m: re.Match[str]) -> str:
    """编号27149, 投诉电话10015: a number named by the word before it is read digit by digit."""
    keyword, sep, number = m.group(1), m.group(2), m.group(3)
    if keyword in _PHONE_KEYWORDS:
        return keyword + sep + words(*_phone_words(number))
    return keyword + sep + _digit_words(number)


def _digit_words(number: str) -> str:
    out: list[str] = []
    for part in re.split(r"[-\s]+", number):
        if part:
            if out:
                out.append("，")
            out.extend(_digit_groups(read_digits(part)))
    return words(*out)


def _quoted_digits(m: re.Match[str]) -> str:
    return m.group(1) + _digit_words(m.group(2)) + m.group(3)


def _code(m: re.Match[str]) -> str:
    """985高校, 930新政, 996工作制: a number that names something is read digit by digit."""
    parts = re.split(r"([^0-9]+)", m.group(1))
    return "".join(_digit_words(p) if p.isdigit() else p for p in parts) + m.group(2)


def _letter_code(m: re.Match[str]) -> str:
    """CA1234, G1234, MU5735: letters then three or more digits are a flight, train or model code."""
    return m.group(1) + _digit_words(m.group(2))


def _leading_dot(m: re.Match[str]) -> str:
    return words("点" + read_digits(m.group(1)))


def _temperature_range(m: re.Match[str]) -> str:
    first = _signed(m.group(1), m.group(2), m.group(3)) + m.group(3)
    second = _signed(m.group(4), m.group(5), m.group(6)) + m.group(6)
    return words(first, "到" + second)


def _signed(sign: str, number: str, unit: str) -> str:
    if not sign:
        return read_decimal(number)
    return ("零下" if unit in _TEMPERATURE_UNITS else "负") + read_decimal(number)


def _money(m: re.Match[str]) -> str:
    sign = "-" if m.group(1) else ""
    amount = _drop_trailing_zeros(m.group(3))
    return sign + amount + _CURRENCIES[m.group(2)]


def _percent_range(m: re.Match[str]) -> str:
    return words("百分之" + read_decimal(m.group(1)), "到" + read_decimal(m.group(2)))


def _percent(m: re.Match[str]) -> str:
    sign = "负" if m.group(1) else ""
    per = {"‰": "千分之", "‱": "万分之"}.get(m.group(3), "百分之")
    # 100% is said 百分之百, not 百分之一百.
    amount = "百" if m.group(2) == "100" and per == "百分之" else read_decimal(m.group(2))
    return words(sign + per + amount)


def _fraction(m: re.Match[str]) -> str:
    num, den = m.group(1), m.group(2)
    if int(den) == 0:
        return words(read_cardinal(num) + "比" + read_cardinal(den))
    return words(read_cardinal(den) + "分之" + read_cardinal(num))


def _range(m: re.Match[str]) -> str:
    first, second, measure = m.group(1), m.group(2), m.group(3) or ""
    if measure and measure not in _NO_LIANG:
        # 2-3个 -> 两到三个, 1-2个 -> 一到两个
        first_r = "两" if first == "2" else read_decimal(first)
        second_r = "两" if second == "2" else read_decimal(second)
    else:
        first_r, second_r = read_decimal(first), read_decimal(second)
    if measure in _CURRENCY_WORDS:
        first_r = read_decimal(_drop_trailing_zeros(first))
        second_r = read_decimal(_drop_trailing_zeros(second))
    return words(first_r + "到" + second_r + measure)


def _drop_trailing_zeros(number: str) -> str:
    # 36.00元 is said 三十六元 and 14.60元 十四点六元: trailing zeros of a price are not read.
    return number.rstrip("0").rstrip(".") if "." in number else number


def _unit(m: re.Match[str]) -> str:
    return m.group(1) + _UNITS[m.group(2)]


def _number(m: re.Match[str]) -> str:
    ordinal, sign, number, measure = m.group(1) or "", m.group(2), m.group(3), m.group(4) or ""
    if measure in _CURRENCY_WORDS:
        number = _drop_trailing_zeros(number)
    if "." in number:
        reading = read_decimal(number)
    elif len(number) > 1 and number.startswith("0"):
        reading = read_digits(number)
    elif number == "2" and measure and not ordinal and measure not in _NO_LIANG:
        reading = "两"
    else:
        reading = read_cardinal(number)
    parts = group_reading(reading)
    if sign:
        before = m.string[max(0, m.start() - 6) : m.start()]
        below_zero = measure in _TEMPERATURE_UNITS or (measure == "度" and _TEMPERATURE_BEFORE_RE.search(before))
        parts[0] = ("零下" if below_zero else "负") + parts[0]
    parts[0] = ordinal + parts[0]
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
    # Identifiers before dates, ranges and cardinals: 编号27149, 投诉电话10015, “26314”号, CA1234, 985高校.
    (
        re.compile(r"(" + _DIGIT_KEYWORD_RE + r")((?:是|为|[:：])?\s?)([0-9]{3,}(?:[-\s][0-9]{2,})*)" + _NOT_AN_ID_RE),
        _context_digits,
    ),
    (re.compile(r"([“\"「『‘])([0-9]{3,})([”\"」』’])"), _quoted_digits),
    (re.compile(r"(?<![A-Za-z])([A-Z]{1,3})([0-9]{3,})" + _NOT_AN_ID_RE), _letter_code),
    (re.compile(r"(?<![0-9.])([0-9]{3,4}(?:[、和与或/][0-9]{3,4}){0,3})(" + _CODE_NAMED_RE + ")"), _code),
    # .22口径: a decimal without its leading zero.
    (re.compile(r"(?<![0-9A-Za-z.])\.([0-9]+)"), _leading_dot),
    # 2020-2023年: a range of years.
    (re.compile(r"(?<![0-9.])([0-9]{4})\s?[-~～至到]\s?([0-9]{4})年"), _year_range),
    (re.compile(r"(?<![0-9.])([0-9]{4})[-/.]([0-9]{1,2})[-/.]([0-9]{1,2})(?![0-9.])"), _date),
    (re.compile(r"(?<![0-9.])([0-9]{4})[-/]([0-9]{1,2})(?![0-9./-])"), _year_month),
    (re.compile(r"(?<![0-9.])([0-9]{4})年"), _year),
    (re.compile(r"(?<![0-9.])([0-9]{2})年(?!代)"), _short_year),
    # 公元前221年, 公元8年: years of the era, digit by digit.
    (re.compile(r"(公元前?)([0-9]{1,4})年"), lambda m: m.group(1) + words(read_digits(m.group(2)) + "年")),
    # 80后, 90后, 00后: generations, read digit by digit.
    (re.compile(r"(?<![0-9.])([0-9][05])后(?![0-9])"), _generation),
    # 10:00-22:00: a range of times of day.
    (re.compile(r"(?<![0-9.:])(" + _CLOCK + r")\s?[-~～至到]\s?(" + _CLOCK + r")(?![0-9:])"), _clock_range),
    (re.compile(r"(?<![0-9.:])" + _CLOCK + r"(?![0-9:])"), _clock),
    (re.compile(r"(?<![0-9.:])([0-9]+):([0-9]+)(?![0-9:])"), _ratio),
    # Unit symbols become words and keep their digits, which the number rule reads together with them (2kg ->
    # 两千克); single-letter units only right after the number (5m), so that "5 A" stays a letter.
    (re.compile(r"(?<![0-9.])(" + _NUM + r")\s?(" + _LONG_UNIT_RE + r")(?![A-Za-z])"), _unit),
    (re.compile(r"(?<![0-9.])(" + _NUM + r")(" + _SHORT_UNIT_RE + r")(?![A-Za-z])"), _unit),
    (re.compile(r"(-?)([¥￥$€£₩₹])\s?(" + _NUM + ")"), _money),
    (re.compile(r"(?<![0-9.])(" + _NUM + r")%?\s?[-~～]\s?(" + _NUM + r")\s?%"), _percent_range),
    (re.compile(r"(?<![0-9.])(-?)(" + _NUM + r")\s?([%％‰‱])"), _percent),
    (re.compile(r"(?<![0-9./])([0-9]+)/([0-9]+)(?![0-9/])"), _fraction),
    (re.compile(r"([0-9])\s*([+×÷=≈])\s*(?=[0-9])"), lambda m: m.group(1) + _SYMBOL_WORDS[m.group(2)]),
    # -5℃~3℃ (after the unit rules): each end keeps its unit, a minus temperature is 零下.
    (re.compile(rf"(?<![0-9A-Za-z.])(-?)({_NUM})({_UNIT_WORD_RE})\s?[~～]\s?(-?)({_NUM})({_UNIT_WORD_RE})"),
     _temperature_range),
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
    return [seg for seg, _ in normalize_traced(Traced.of(text))]


def normalize_traced(text: Traced) -> list[TracedSegment]:
    """``normalize``, keeping for every character (and spelled syllable) the original text it stands for."""
    prepared = prepare(text.text)
    # prepare() maps each character to at most one (TRAD_TO_SIMP is one-to-one): same length, same positions.
    text = Traced(prepared, text.spans) if len(prepared) == len(text) else text.map_chars(prepare)
    for pattern, repl in _RULES:
        text = text.sub(pattern, repl)
    return split_latin_traced(text)


def split_latin(text: str) -> list[Segment]:
    return [seg for seg, _ in split_latin_traced(Traced.of(text))]


def split_latin_traced(text: Traced) -> list[TracedSegment]:
    out: list[TracedSegment] = []
    pos = 0
    for m in _LATIN_RE.finditer(text.text):
        if m.start() > pos:
            out.append((text.text[pos : m.start()], text.spans[pos : m.start()]))
        reading = spell_latin(m.group(0))
        spans: list[Src] = []
        for i, ch in enumerate(m.group(0).upper()):
            spans.extend([text.spans[m.start() + i]] * len(LETTER_READINGS[ch]))
        out.append((reading, tuple(spans)))
        pos = m.end()
    if pos < len(text):
        out.append((text.text[pos:], text.spans[pos:]))
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
