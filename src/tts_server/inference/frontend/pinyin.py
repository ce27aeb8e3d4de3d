"""Words and pinyin: jieba segmentation, pypinyin phrase-level readings, erhua, 一/不 and third-tone sandhi."""

from __future__ import annotations

import gc
import itertools
import logging
import re
import sys
import threading
import unicodedata
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from tts_server.inference.frontend import polyphone
from tts_server.inference.frontend.normalize import group_reading
from tts_server.inference.frontend.symbols import (
    Syllable,
    SyllableError,
    has_erhua_final,
    parse_pinyin,
    syllable_phones,
    words_of,
)
from tts_server.inference.frontend.tables import NEUTRAL_REDUPLICATED, NEUTRAL_SENSE_PREFERRED
from tts_server.inference.frontend.wordfreq import PackedFrequencies

logger = logging.getLogger(__name__)

# CJK ideographs (basic, extension A, compatibility, extensions B and later) and 〇.
CJK_RE = re.compile(r"[\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]+")

# Words ending in 儿 where 儿 is a full syllable (a child, a son), not the erhua suffix.
_NON_ERHUA_WORDS = frozenset(
    words_of(
        "女儿 婴儿 孤儿 幼儿 健儿 男儿 胎儿 少儿 患儿 宠儿 混血儿 新生儿 孙儿 妻儿 弃儿 乳儿 早产儿 低能儿 "
        "儿儿 育儿 托儿 产儿 侄儿 犬儿 骄儿 病儿 畸形儿 独生儿 小儿 孩儿 幼女儿 养儿 生儿 爱儿"
    )
)
# pypinyin readings with no phone in the PinYin set, mapped to the nearest syllable that has one.
_INTERJECTIONS = {"m": "mu", "n": "en", "ng": "en", "hm": "hen", "hng": "heng", "ê": "ei", "eh": "ei"}

_DIGIT_CHARS = frozenset("零〇幺一二三四五六七八九十两")
_NUMBER_CHARS = _DIGIT_CHARS | frozenset("百千万亿")


@dataclass(slots=True)
class Word:
    """A prosodic word: syllables with the characters they came from (``chars[i]`` reads ``syllables[i]``)."""

    syllables: list[Syllable]
    chars: list[str]
    emotion: str
    fixed: bool = False  # reading given by the client (SSML phoneme) or spelled letters: no sandhi
    speed: float = 1.0
    pitch: float = 0.0
    volume_db: float = 0.0
    #: Where each syllable came from in the original text (``sources[i]`` for ``syllables[i]``); empty if unknown.
    sources: list[tuple[int, int]] = field(default_factory=list)
    #: SSML ``<mark>`` names just before and just after the word.
    marks_before: tuple[str, ...] = ()
    marks_after: tuple[str, ...] = ()


# Characters of number readings; jieba splits 二零二四 or 两千零二十四 arbitrarily, so runs of them are regrouped.
_NUMBER_WORD_CHARS = frozenset("零〇幺一二三四五六七八九十百千万亿两点")


def _number_words(number: str) -> list[str]:
    """A run of number characters as prosodic words, grouped like the normaliser's readings; a trailing unit
    character jieba glued on (二零二 | 六年) stays with the last group."""
    unit = ""
    if number[-1] not in _NUMBER_WORD_CHARS:
        number, unit = number[:-1], number[-1]
    parts = group_reading(number)
    parts[-1] += unit
    return parts


class Segmenter:
    """jieba (one private tokenizer, initialised once, quiet) plus cached pypinyin lookups. It holds no per-voice
    state: processes share one (``shared_segmenter``), since each jieba dictionary costs about 50 MB."""

    def __init__(self) -> None:
        with warnings.catch_warnings():
            # jieba imports pkg_resources when it exists, which setuptools 67-80 mark deprecated on import; that
            # is jieba's business and must not fail a caller that turns warnings into errors.
            warnings.simplefilter("ignore", DeprecationWarning)
            import jieba

            logging.getLogger("jieba").setLevel(logging.WARNING)
            self._tokenizer: Any = jieba.Tokenizer()
            self._tokenizer.initialize()
        # jieba only reads its table after initialize (we never add words to it): the packed copy answers the same
        # lookups in ~12 MB instead of ~60 MB.
        self._freq: Mapping[str, int] = PackedFrequencies(self._tokenizer.FREQ)
        self._tokenizer.FREQ = self._freq
        global _WORD_FREQ
        _WORD_FREQ = self._freq
        self._lock = threading.Lock()
        _adjust_pypinyin()
        polyphone.load()

    def words(self, run: str) -> list[str]:
        """Segment a run of CJK characters. Long dictionary compounds are split into their prosodic words."""
        with self._lock:
            raw: list[str] = self._tokenizer.lcut(run, HMM=True)
        out: list[str] = []
        number = ""
        for w in raw:
            if _NUMBER_WORD_CHARS.issuperset(w):
                number += w
                continue
            if number and len(w) == 2 and w[0] in _NUMBER_WORD_CHARS:
                # jieba glued the last digit to a unit (二零二 | 六年): keep the number and its unit together.
                out.extend(_number_words(number + w))
                number = ""
                continue
            if number:
                out.extend(_number_words(number))
                number = ""
            out.extend(self._split_compound(w))
        if number:
            out.extend(_number_words(number))
        return out

    def _split_compound(self, word: str) -> list[str]:
        # jieba's dictionary holds compounds such as 今天天气 or 中华人民共和国 that are read as several prosodic
        # words; split a 4+ character word into two dictionary words of 2+ characters when it has such a split.
        if len(word) < 4:
            return [word]
        best: tuple[int, int] | None = None
        for i in range(2, len(word) - 1):
            left, right = word[:i], word[i:]
            score = min(self._freq.get(left, 0), self._freq.get(right, 0))
            if score > 0 and (best is None or score > best[0]):
                best = (score, i)
        if best is None:
            return [word]
        i = best[1]
        return self._split_compound(word[:i]) + self._split_compound(word[i:])


_shared: Segmenter | None = None
_shared_lock = threading.Lock()


def shared_segmenter() -> Segmenter:
    """The process's one ``Segmenter``: a worker serving four voices builds one frontend per voice (their phone
    sets differ), and a jieba dictionary per frontend was 4x the memory for identical segmentation."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Segmenter()
        return _shared


# jieba's word frequencies, shared with the third-tone sandhi to find the internal structure of a word.
_WORD_FREQ: Mapping[str, int] = {}

_adjusted = False


def _adjust_pypinyin() -> None:
    """Make 长 default to cháng where pypinyin has no phrase for it (很长, 长度); its phrase table already covers
    the zhǎng words (长大, 校长). This changes pypinyin's process-wide table, which only the frontend uses."""
    global _adjusted
    if not _adjusted:
        from pypinyin import load_single_dict

        load_single_dict({ord("长"): "cháng,zhǎng"})
        _compact_pypinyin_phrases()
        _raw_pinyin.cache_clear()
        word_reading.cache_clear()
        _adjusted = True


def _compact_pypinyin_phrases() -> None:
    """Rebuild pypinyin's phrase table (47 000 words) with one shared list per distinct reading and one string per
    syllable, and drop its second copy: ~13 MB less per process, the same content (pypinyin deep-copies a phrase's
    readings before using them, so sharing is invisible to it).

    Every object is made anew (keys and syllables copied, the prefix set of its segmenter retrained) and the old
    ones are all released, because the json decoder had interleaved them in Python's allocator arenas: freeing only
    the duplicates would leave every arena partly used and nothing returned. pypinyin versions without these
    module attributes keep their table as it is."""
    try:
        from pypinyin import constants, phrases_dict
        from pypinyin.seg import mmseg
    except ImportError:  # pragma: no cover - a pypinyin with another layout
        return
    table: dict[str, list[list[str]]] = getattr(constants, "PHRASES_DICT", None) or {}
    prefixes = getattr(getattr(mmseg, "p_set", None), "_set", None)
    if not table or not isinstance(prefixes, set) or getattr(mmseg, "PHRASES_DICT", None) is not table:
        logger.debug("pypinyin's phrase table left as it is (unknown layout)")
        return

    def fresh(text: str) -> str:
        return text.encode().decode()  # a new object, not a reference into the old arenas

    syllables: dict[str, str] = {}
    readings: dict[str, list[str]] = {}
    rebuilt: dict[str, list[list[str]]] = {}
    for word, options in table.items():
        out: list[list[str]] = []
        for option in options:
            key = "\0".join(option)
            shared = readings.get(key)
            if shared is None:
                shared = readings[key] = [syllables.setdefault(py, fresh(py)) for py in option]
            out.append(shared)
        rebuilt[fresh(word)] = out
    table.clear()
    table.update(rebuilt)
    del rebuilt, readings
    phrases_dict.phrases_dict = table  # the table pypinyin copied from at import: only that module still held it
    trained = mmseg.PrefixSet()
    trained.train(iter(table))
    mmseg.p_set._set = trained._set


# pypinyin's default reading of a character, where that default is the less common one when the character is a
# word on its own (跑 得 很快: de, 教 你: jiāo, 切 菜: qiē).
_SINGLE_CHAR_READINGS = {"得": "de5", "教": "jiao1", "切": "qie1"}


@lru_cache(maxsize=65536)
def _raw_pinyin(word: str) -> tuple[str, ...]:
    from pypinyin import Style, lazy_pinyin

    if word in _SINGLE_CHAR_READINGS:
        return (_SINGLE_CHAR_READINGS[word],)
    # One entry per character even for characters without a reading, so that readings stay aligned.
    no_reading: Any = _no_reading
    return tuple(lazy_pinyin(word, style=Style.TONE3, neutral_tone_with_five=True, errors=no_reading))


def _no_reading(chars: str) -> list[str]:
    return [""] * len(chars)


def _to_syllable(py: str) -> Syllable | None:
    if not py:
        return None
    m = re.fullmatch(r"([a-zü:]+)([0-5]?)", py)
    if m is not None and m.group(1) in _INTERJECTIONS:
        py = _INTERJECTIONS[m.group(1)] + m.group(2)
    try:
        syllable = parse_pinyin(py)
        syllable_phones(syllable.base)
    except SyllableError:
        return None
    return syllable


# Neutral tones in CC-CEDICT's phrase readings (via pypinyin-dict): a syllable written without a tone mark.
_TONE_MARKS = re.compile("[\u0300-\u036f]")


@lru_cache(maxsize=1)
def _neutral_lexicon() -> dict[str, tuple[tuple[int, str], ...]]:
    """Word -> (position, syllable) of each non-initial syllable that CC-CEDICT reads with the neutral tone in
    every reading it lists (事情, 衣服, 丈夫; not 东西 or 地方, which are toned in one of their senses). Words
    of up to four characters; the data modules are dropped afterwards, keeping only this small table (~3000
    words).

    The table is built, written into one string, and parsed back only once CC-CEDICT's objects are freed: built
    directly, its few thousand small objects sat among the ~35 MB of phrase data in Python's allocator arenas and
    kept ~14 MB of them from being returned (an arena is released only when it is entirely empty)."""
    packed = _pack_neutral(_neutral_lexicon_from_cedict())
    _drop_modules("pypinyin_dict.phrase_pinyin_data.cc_cedict")
    gc.collect()  # the dropped modules hold reference cycles (their functions' globals): free them before parsing
    return _unpack_neutral(packed)


def _pack_neutral(table: dict[str, tuple[tuple[int, str], ...]]) -> str:
    return "\n".join(word + "".join(f" {i}{base}" for i, base in neutral) for word, neutral in table.items())


def _unpack_neutral(packed: str) -> dict[str, tuple[tuple[int, str], ...]]:
    table: dict[str, tuple[tuple[int, str], ...]] = {}
    for line in packed.split("\n"):
        word, *neutral = line.split(" ")
        table[word] = tuple((int(item[0]), item[1:]) for item in neutral)
    return table


def _neutral_lexicon_from_cedict() -> dict[str, tuple[tuple[int, str], ...]]:
    """The neutral-tone table straight from pypinyin-dict's CC-CEDICT phrases (``_neutral_lexicon`` keeps it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pypinyin_dict.phrase_pinyin_data import cc_cedict  # type: ignore[import-untyped]

    table: dict[str, tuple[tuple[int, str], ...]] = {}
    for word, readings in cc_cedict.phrases_dict.items():
        if len(word) > 4 or len(readings) != len(word) or word[0] == word[1]:
            continue  # reduplications (老老, 刚刚) are NEUTRAL_REDUPLICATED's to decide
        neutral: list[tuple[int, str]] = []
        for i, options in enumerate(readings):
            if i == 0 or word[i] == "儿":
                continue
            bases = {_base(o) for o in options}
            marked = [_TONE_MARKS.search(unicodedata.normalize("NFD", o)) is not None for o in options]
            if not any(marked) and len(bases) == 1:
                neutral.append((i, bases.pop()))
            elif not all(marked) and word in NEUTRAL_SENSE_PREFERRED:
                neutral.append((i, _base(next(o for o, m in zip(options, marked, strict=True) if not m))))
            elif not all(marked):
                break  # toned in one reading, neutral in another: leave the word to pypinyin
        else:
            if neutral:
                table[word] = tuple(neutral)
    return table


def _drop_modules(prefix: str) -> None:
    """Forget the modules whose names start with ``prefix`` (about 35 MB of phrase tables nobody else reads) so
    that they can be freed: not only from ``sys.modules`` — an imported submodule is also an attribute of its parent
    package, which would keep it alive."""
    # cc_cedict, cc_cedict_0, ...
    for name in [m for m in sys.modules if m.startswith(prefix)]:
        del sys.modules[name]
        parent, _, leaf = name.rpartition(".")
        package = sys.modules.get(parent)
        if package is not None and getattr(package, leaf, None) is not None:
            delattr(package, leaf)


def _base(marked: str) -> str:
    return _TONE_MARKS.sub("", unicodedata.normalize("NFD", marked)).replace("u\u0308", "v").replace("ü", "v")


@lru_cache(maxsize=65536)
def word_reading(word: str, context: str = "", start: int = 0) -> tuple[tuple[Syllable, ...], tuple[str, ...]]:
    """A word's syllables and the characters each reads, with a final erhua 儿 merged into its syllable.
    ``context`` is the CJK run the word was cut from, at ``start``: the polyphone model reads it."""
    pys = _raw_pinyin(word)
    if context:
        pys = polyphone.refine(word, pys, context, start)
    syllables: list[Syllable] = []
    chars: list[str] = []
    for ch, py in zip(word, pys, strict=False):
        syl = _to_syllable(py)
        if syl is None:
            # A character with no known reading (rare extension-block ideographs) is not spoken.
            logger.debug("no reading for %r", ch)
            continue
        syllables.append(syl)
        chars.append(ch)
    if len(syllables) == len(word):
        # The word itself, else the longest lexicon word it ends or starts with (很漂亮, 事情上).
        lexicon = _neutral_lexicon()
        spans = [(0, word)] + [(j, word[j:]) for j in range(1, len(word) - 1)] + [
            (0, word[:j]) for j in range(len(word) - 1, 1, -1)
        ]
        for offset, part in spans:
            neutral = lexicon.get(part)
            if neutral is not None:
                for i, base in neutral:
                    if syllables[offset + i].base == base:
                        syllables[offset + i] = Syllable(base, 5)
                break
    if len(word) == 3 and word[1] == "得" and len(syllables) == 3:
        syllables[1] = Syllable(syllables[1].base, 5)  # verb-得-complement: 跑得快, 看得见
    if (
        len(syllables) >= 2
        and chars[-1] == "儿"
        and word not in _NON_ERHUA_WORDS
        and has_erhua_final(syllables[-2].base)
    ):
        prev = syllables[-2]
        syllables[-2:] = [Syllable(prev.base + "r", prev.tone)]
        chars[-2:] = [chars[-2] + "儿"]
    return tuple(syllables), tuple(chars)


# -- sandhi ------------------------------------------------------------------------------------------------------


def apply_sandhi(words: list[Word]) -> None:
    """Tone sandhi over one prosodic phrase (words between two pauses), in place. Fixed words are left alone."""
    flat: list[tuple[Word, int]] = [(w, i) for w in words for i in range(len(w.syllables))]
    n = len(flat)

    def char(k: int) -> str:
        if 0 <= k < n:
            w, i = flat[k]
            return "" if w.fixed else w.chars[i]
        return ""

    def tone(k: int) -> int:
        w, i = flat[k]
        return w.syllables[i].tone

    def set_tone(k: int, t: int) -> None:
        w, i = flat[k]
        s = w.syllables[i]
        if s.tone != t:
            w.syllables[i] = Syllable(s.base, t)

    # 一 and 不: reset to the citation tone first (pypinyin's phrase table applies sandhi to some phrases only).
    for k, (w, i) in enumerate(flat):
        if w.fixed:
            continue
        c = w.chars[i]
        if c == "不":
            set_tone(k, 4)
            if (char(k - 1) and char(k - 1) == char(k + 1)) or (len(w.syllables) == 3 and i == 1):
                set_tone(k, 5)  # A不A (是不是, 好不好) and verb-不-complement words (对不起, 来不及)
            elif k + 1 < n and tone(k + 1) == 4:
                set_tone(k, 2)
        elif c == "一":
            set_tone(k, 1)
            prev, nxt = char(k - 1), char(k + 1)
            if prev == "第" or prev in _NUMBER_CHARS or nxt in _DIGIT_CHARS or nxt in ("月", "日", "号"):
                continue  # ordinal, part of a number or a date: yi1
            if nxt == "点" and char(k + 2) in _DIGIT_CHARS:
                continue  # 一点五
            if prev and prev == nxt:
                set_tone(k, 5)  # 看一看
                continue
            if k + 1 >= n or (i == len(w.syllables) - 1 and len(w.syllables) > 1):
                continue  # end of phrase, or the end of a word such as 统一, 唯一
            set_tone(k, 2 if tone(k + 1) in (4, 5) else 4)

    _context_readings(words)

    # Reduplicated kinship nouns and verbs have a neutral second syllable (妈妈, 看看).
    for w in words:
        if not w.fixed and len(w.chars) == 2 and w.chars[0] == w.chars[1] and w.chars[0] in NEUTRAL_REDUPLICATED:
            w.syllables[1] = Syllable(w.syllables[1].base, 5)

    # Third tone, cyclically from the innermost constituent out (right-branching 小[老虎] xiao3 lao2 hu3, left-
    # branching [展览]馆 zhan2 lan2 guan3): inside a word by its dictionary structure, then across a word boundary
    # when one side is a single syllable, since such words join their neighbour's prosodic word (我很好 reads
    # wo2 hen2 hao3). Two words of two or more syllables keep their own tones (美好 | 理想).
    for w in words:
        if not w.fixed and len(w.syllables) >= 2:
            _third_tone(w.syllables, w.chars, 0, len(w.syllables))
    for a, b in itertools.pairwise(words):
        if a.fixed or b.fixed or not a.syllables or not b.syllables:
            continue
        short = len(a.syllables) == 1 or len(b.syllables) == 1
        if short and a.syllables[-1].tone == 3 and b.syllables[0].tone == 3:
            a.syllables[-1] = Syllable(a.syllables[-1].base, 2)


def _third_tone(syllables: list[Syllable], chars: list[str], start: int, end: int) -> None:
    """Third-tone sandhi over ``syllables[start:end]``: each half first, then the junction with the tones the
    halves ended up with (so 小 stays 3 before 老虎's lao2)."""
    if end - start < 2:
        return
    mid = _split_point(chars, start, end)
    _third_tone(syllables, chars, start, mid)
    _third_tone(syllables, chars, mid, end)
    left, right = syllables[mid - 1], syllables[mid]
    if left.tone == 3 and right.tone == 3:
        syllables[mid - 1] = Syllable(left.base, 2)


def _split_point(chars: list[str], start: int, end: int) -> int:
    # The split whose two parts are the most frequent dictionary words (展览|馆: 展览 is a word, 览馆 is not); a
    # word with no such split is read left to right, every 3 before a 3 becoming 2.
    best, best_score = end - 1, 0
    for i in range(start + 1, end):
        left, right = "".join(chars[start:i]), "".join(chars[i:end])
        score = max(
            _WORD_FREQ.get(left, 0) if len(left) > 1 else 0,
            _WORD_FREQ.get(right, 0) if len(right) > 1 else 0,
        )
        if score > best_score:
            best, best_score = i, score
    return best


# -- readings from context -----------------------------------------------------------------------------------

_NUMERALS = _NUMBER_CHARS | frozenset("第几每半")


def _context_readings(words: list[Word]) -> None:
    """Readings of 数, 长, 得, 地, 还 and 行 that depend on the words around them (verb or noun, adverb or verb),
    for occurrences that no pypinyin phrase covers: single-character words and the character runs jieba's HMM
    glues together (他数, 地玩). Decided from the neighbouring characters, which is where the verb's object, the
    complement or the measure word sits."""
    from pypinyin.constants import PHRASES_DICT

    flat: list[tuple[Word, int]] = [
        (w, i) for w in words if not w.fixed for i in range(len(w.syllables)) if len(w.chars[i]) == 1
    ]
    text = "".join(w.chars[i] for w, i in flat)
    for k, (w, i) in enumerate(flat):
        c = text[k]
        if c not in "数长得地还行":
            continue
        word = "".join(w.chars)
        if len(word) > 1 and word in PHRASES_DICT and not (c == "行" and len(word) == 2):
            continue  # pypinyin's phrase reading (数学, 长度, 还钱, 一行) stands
        prev, nxt = text[k - 1 : k], text[k + 1 : k + 2]
        nxt2 = text[k + 2 : k + 3]
        reading: tuple[str, int] | None = None
        if c == "数":
            # The verb: with an aspect particle, a complement, its reduplication or an object (数了数钱, 数一数,
            # 数不清, 数钱); the noun 数 (数是多少) otherwise.
            if (nxt and nxt in "了过着一不得完遍清钱数") or (prev == "一" and text[k - 2 : k - 1] == "数"):
                reading = ("shu", 3)
        elif c == "长":
            if nxt and nxt in "大高胖出满得成" and prev not in ("很", "太", "更", "最", "多", "那", "这"):
                reading = ("zhang", 3)  # 长大, 长得很高, 长出: to grow
        elif c == "得":
            if len(word) == 1 and prev and prev in "你我他她它们得就也都还" and nxt and nxt not in "了很太到":
                reading = ("dei", 3)  # 你得去, 我们得走: must
        elif c == "地":
            if i == 0 and k > 0 and nxt and (len(word) == 1 or word not in _WORD_FREQ):
                before = flat[k - 1][0]
                if len(before.syllables) >= 2 and before is not w:
                    reading = ("de", 5)  # 开心地玩: the adverbial particle
        elif c == "还":
            lends = nxt and nxt in "你我他她" and nxt2 and nxt2 not in "是要会能在没不也"
            if (nxt and nxt in "给钱债款清账") or lends:
                reading = ("huan", 2)  # 还钱, 还给他, 还你钱: to return
            elif w.syllables[i].base == "huan":
                reading = ("hai", 2)
        elif c == "行" and prev and prev in _NUMERALS and nxt != "人":
            reading = ("hang", 2)  # 第三行, 两行字: a line
        if reading is not None:
            w.syllables[i] = Syllable(*reading)
