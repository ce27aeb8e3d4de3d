"""The frontend pipeline: text or SSML -> sentences of KAN-TTS symbols.

Prosodic breaks before each word, strongest wins:

- ``#4`` ends a sentence (。！？, a line break, the end of the text);
- ``#3`` at clause punctuation (，；：…);
- ``#2`` at a short pause: 、, dashes, a space between Chinese words, and predicted inside a long stretch: a run of
  more than ``MAX_PHRASE_SYLLABLES`` syllables with no break of level 2 or more is cut at the word boundary with
  the best score, recursively, until no part is longer. A boundary scores for the grammar around it (after a
  的-phrase or a 地/得 particle, before a preposition, conjunction or adverb that opens a predicate such as 在, 把,
  被, 因为, 就, 都, after a subject pronoun) and for balance (close to the middle, parts of at least three
  syllables). A single word is never cut, however long, nor a number between its groups; stretches of up to ten
  syllables keep only their #1s, as in the reference frontend;
- ``#1`` between any other two words (prosodic words: jieba words, long compounds split in two);
- nothing (``#0``) for quotes and brackets, which only separate words.

Whether the input is SSML is the caller's to say (the client declares it); the frontend never guesses from the
content, so plain text that happens to start with ``<speak`` is read as text and SSML is never read aloud.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tts_server.inference.frontend.errors import FrontendError
from tts_server.inference.frontend.normalize import NUMBER_CLOSE, NUMBER_OPEN, WORD_SEP, Reading, normalize_traced
from tts_server.inference.frontend.pinyin import CJK_RE, Word, apply_sandhi, shared_segmenter, word_reading
from tts_server.inference.frontend.ssml import (
    MAX_BREAK_S,
    BreakMark,
    Item,
    NamedMark,
    SentenceMark,
    Span,
    parse_ssml,
)
from tts_server.inference.frontend.symbols import (
    DEFAULT_PHONES,
    Syllable,
    SyllableError,
    break_token,
    load_phone_set,
    parse_pinyin,
    syllable_phones,
    word_tokens,
    words_of,
)
from tts_server.inference.frontend.trace import Src, Traced, union
from tts_server.inference.timestamps import Unit

logger = logging.getLogger(__name__)

DEFAULT_MAX_SENTENCE_CHARS = 60

# Punctuation -> prosodic break level: 4 ends the sentence, 3 a clause (comma), 2 a short pause, 0 a word
# boundary with no extra pause (quotes, brackets).
_PUNCT_LEVELS: dict[str, int] = {
    **dict.fromkeys("。！？!?.\n\r\u2029\u2028", 4),
    **dict.fromkeys("，,；;：:…", 3),
    **dict.fromkeys("、—–-~～", 2),
    **dict.fromkeys("\"'“”‘’「」『』《》〈〉()（）[]【】{}<>·•/|", 0),
}
_TOKEN_RE = re.compile(
    NUMBER_OPEN + "([^" + NUMBER_CLOSE + "]*)" + NUMBER_CLOSE
    + r"|(" + CJK_RE.pattern + r")|([^\S\n\r\u2028\u2029]+)|(.)",
    re.DOTALL,
)  # fmt: skip
_NAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


@dataclass(frozen=True)
class Utterance:
    """One sentence: its symbol string (ends with a #4 break), speed factor, silence to append after it, pitch
    shift (model pitch units) and volume gain (dB) from SSML ``<prosody>``. ``units`` cover the symbol tokens in
    order (their ``tokens`` add up to the number of tokens); ``marks_end`` are ``<mark>`` names after the pause."""

    symbols: str
    speed: float = 1.0
    pause_after_s: float = 0.0
    pitch: float = 0.0
    volume_db: float = 0.0
    # Where the speech came from, not what is said: two utterances that say the same are equal.
    units: tuple[Unit, ...] = field(default=(), compare=False)
    marks_end: tuple[str, ...] = field(default=(), compare=False)


@dataclass(slots=True)
class _Pause:
    level: int


@dataclass(slots=True)
class _Sentence:
    tokens: list[Word | _Pause]
    speed: float
    pause_after_s: float = 0.0
    pitch: float = 0.0
    volume_db: float = 0.0
    marks_end: tuple[str, ...] = ()


_Token = Word | _Pause | BreakMark | SentenceMark | NamedMark


def _word(span: Span, syllables: list[Syllable], chars: list[str], fixed: bool, sources: list[Src]) -> Word:
    return Word(syllables, chars, span.emotion, fixed, span.speed, span.pitch, span.volume_db, sources)


def _char_sources(word: str, chars: Iterable[str], sources: tuple[Src, ...], offset: int) -> list[Src]:
    """Source span of each syllable of ``word`` (at ``offset`` in a segment with per-character ``sources``);
    ``chars`` are the characters each syllable reads, in order (an erhua syllable reads two)."""
    out: list[Src] = []
    pos = 0
    for c in chars:
        i = word.find(c, pos)
        span = union(sources[offset + i : offset + i + len(c)]) if i >= 0 else None
        if span is None:
            return []
        out.append(span)
        pos = i + len(c)
    return out


def _bare_emotion(name: str) -> str:
    return name.removeprefix("emotion_")


class Frontend:
    """Chinese text frontend, one per phone set (voice); the first one in a process loads jieba's dictionary, which
    later ones share. Then ``process``."""

    def __init__(
        self,
        phone_inventory: frozenset[str] | None = None,
        *,
        max_sentence_chars: int = DEFAULT_MAX_SENTENCE_CHARS,
        warm_up: bool = True,
    ) -> None:
        if max_sentence_chars < 1:
            raise ValueError("max_sentence_chars must be at least 1")
        self._inventory = DEFAULT_PHONES if phone_inventory is None else phone_inventory
        self._max_chars = max_sentence_chars
        self._segmenter = shared_segmenter()
        self._phones: dict[str, tuple[str, ...]] = {}
        self._lexicon: dict[str, tuple[Syllable, ...]] = {}
        self._lexicon_lengths: list[int] = []
        if warm_up:
            # Fills pypinyin's and jieba's lazy structures and the caches, so the first request does not pay.
            try:
                self.process("北京今天天气怎么样？2026年11月24日，气温-3℃。", speaker="F7", emotion="neutral",
                             allowed_emotions=())  # fmt: skip
            except FrontendError as exc:
                logger.warning("frontend warm-up text cannot be read with this phone set: %s", exc.public_message)

    @classmethod
    def from_dict_dir(
        cls, path: str | Path, *, max_sentence_chars: int = DEFAULT_MAX_SENTENCE_CHARS, warm_up: bool = True
    ) -> Frontend:
        """A frontend limited to the phones in ``<voice>/dict/PinYin/PhoneSet.xml`` (``path`` is that folder)."""
        return cls(load_phone_set(path), max_sentence_chars=max_sentence_chars, warm_up=warm_up)

    # -- public ----------------------------------------------------------------------------------------------

    def set_lexicon(self, entries: Mapping[str, str]) -> None:
        """Replace the user lexicon: word -> readings (``chong2 qing4``, one syllable per character). A listed
        word is always cut as one word and read exactly so (no sandhi), whatever jieba and pypinyin say. An entry
        this voice's phone set cannot pronounce is skipped with a warning rather than failing every request."""
        lexicon: dict[str, tuple[Syllable, ...]] = {}
        for word, reading in entries.items():
            try:
                syllables = tuple(parse_pinyin(part) for part in reading.split())
                for syllable in syllables:
                    self._syllable_phones(syllable.base)
            except SyllableError as exc:
                logger.warning("lexicon entry %r skipped: %s", word, exc)
                continue
            if len(syllables) == len(word):
                lexicon[word] = syllables
        self._lexicon = lexicon
        self._lexicon_lengths = sorted({len(w) for w in lexicon}, reverse=True)

    def process(
        self,
        text: str,
        *,
        speaker: str,
        emotion: str,
        allowed_emotions: Collection[str],
        ssml: bool = False,
    ) -> list[Utterance]:
        """Text (or, with ``ssml=True``, an SSML document) -> one ``Utterance`` per sentence. Raises
        ``FrontendError`` for unusable input."""
        return list(self.utterances(text, speaker=speaker, emotion=emotion, allowed_emotions=allowed_emotions,
                                    ssml=ssml))

    def utterances(
        self,
        text: str,
        *,
        speaker: str,
        emotion: str,
        allowed_emotions: Collection[str],
        ssml: bool = False,
    ) -> Iterator[Utterance]:
        """``process``, one sentence at a time, for streaming: the first sentence's symbols are ready without
        the later sentences' phrasing, tone sandhi and symbols. Everything that can reject the input (names,
        SSML, normalisation, every word's pronunciation) is checked before this returns, so a ``FrontendError``
        never comes from the iterator."""
        if not _NAME_RE.fullmatch(speaker):
            raise FrontendError(f"invalid speaker name {speaker!r}", param="voice")
        allowed = {_bare_emotion(e) for e in allowed_emotions}
        emotion = _bare_emotion(emotion)
        if not _NAME_RE.fullmatch(emotion) or (allowed and emotion not in allowed):
            raise FrontendError(
                f"emotion {emotion!r} is not supported; expected one of {', '.join(sorted(allowed))}",
                param="emotion",
            )
        sentences = self._sentences(self._tokens(self._items(text, emotion, allowed, ssml)))
        if not sentences:
            raise FrontendError(
                "the text has nothing to read aloud after normalisation (no Chinese characters, digits or letters)"
            )
        for sentence in sentences:
            for tok in sentence.tokens:
                if isinstance(tok, Word):
                    self._word_phones(tok)  # phrasing, sandhi and splitting keep every syllable's base
        return self._utterances(sentences, speaker)

    def _utterances(self, sentences: list[_Sentence], speaker: str) -> Iterator[Utterance]:
        for chunk, sentence, pause, last in self._sentence_chunks(sentences):
            symbols, units = self._emit(chunk, speaker)
            yield Utterance(
                symbols, sentence.speed, pause, sentence.pitch, sentence.volume_db, units,
                sentence.marks_end if last else (),
            )

    def pinyin(self, text: str, *, ssml: bool = False, emotion: str = "neutral") -> list[str]:
        """The readings ``process`` would use, one string per sentence: ``ni2 hao3 #1 shi4 jie4 #4``.

        For tests and debugging; raises like ``process``.
        """
        out = []
        for chunk, _sentence, _pause, _last in self._chunks(text, emotion, (), ssml):
            parts: list[str] = []
            for level, word in _words_with_breaks(chunk):
                if level:
                    parts.append(f"#{level}")
                parts.append(" ".join(str(s) for s in word.syllables))
            out.append(" ".join([*parts, "#4"]))
        return out

    def preview(self, text: str, *, ssml: bool = False) -> dict[str, Any]:
        """What ``process`` would read, as JSON-able data: the normalised text and, per sentence, each word with
        its syllables, the break before it and where its reading came from (``lexicon``, ``fixed`` for SSML
        phonemes and spelled letters, else ``frontend``). Raises like ``process``."""
        items = self._items(text, "neutral", (), ssml)
        normalized = "".join(
            seg if isinstance(seg, str) else seg.source
            for item in items if isinstance(item, Span) for seg in item.segments
        ).translate({ord(NUMBER_OPEN): None, ord(NUMBER_CLOSE): None, ord(WORD_SEP): None})
        sentences = []
        for chunk, _sentence, _pause, _last in self._chunks(text, "neutral", (), ssml, items):
            words: list[dict[str, Any]] = []
            parts: list[str] = []
            for level, word in _words_with_breaks(chunk):
                chars = "".join(word.chars)
                source = "lexicon" if word.fixed and chars in self._lexicon else "fixed" if word.fixed else "frontend"
                syllables = [str(s) for s in word.syllables]
                words.append({"text": chars, "syllables": syllables, "break_before": level, "source": source})
                parts.extend([f"#{level}", *syllables] if level else syllables)
            text_read = "".join(str(w["text"]) for w in words)
            sentences.append({"text": text_read, "pinyin": " ".join([*parts, "#4"]), "words": words})
        return {"normalized": normalized, "sentences": sentences}

    def _items(self, text: str, emotion: str, allowed: Collection[str], ssml: bool) -> list[Item]:
        if ssml:
            return parse_ssml(text, emotion=emotion, allowed_emotions=allowed, check_syllable=self._check)
        segments = normalize_traced(Traced.of(text))
        return [Span(tuple(seg for seg, _ in segments), emotion, 1.0, sources=tuple(src for _, src in segments))]

    def _chunks(
        self, text: str, emotion: str, allowed: Collection[str], ssml: bool, items: list[Item] | None = None
    ) -> Iterator[tuple[list[Word | _Pause], _Sentence, float, bool]]:
        if items is None:
            items = self._items(text, emotion, allowed, ssml)
        yield from self._sentence_chunks(self._sentences(self._tokens(items)))

    def _sentence_chunks(
        self, sentences: list[_Sentence]
    ) -> Iterator[tuple[list[Word | _Pause], _Sentence, float, bool]]:
        for sentence in sentences:
            sentence.tokens = _phrase_breaks(sentence.tokens)
            self._sandhi(sentence.tokens)
            chunks = _split_long(sentence.tokens, self._max_chars)
            for i, chunk in enumerate(chunks):
                last = i == len(chunks) - 1
                yield chunk, sentence, sentence.pause_after_s if last else 0.0, last

    # -- stages ------------------------------------------------------------------------------------------------

    def _check(self, syllable: Syllable) -> None:
        self._syllable_phones(syllable.base)

    def _syllable_phones(self, base: str) -> tuple[str, ...]:
        phones = self._phones.get(base)
        if phones is None:
            phones = syllable_phones(base, self._inventory)
            if len(self._phones) < 100_000:
                self._phones[base] = phones
        return phones

    def _tokens(self, items: Iterable[Item]) -> Iterator[_Token]:
        for item in items:
            if not isinstance(item, Span):
                yield item
                continue
            for index, seg in enumerate(item.segments):
                src = item.sources[index] if index < len(item.sources) else ()
                if isinstance(seg, Reading):
                    if seg.syllables:
                        n = len(seg.syllables)
                        yield _word(item, list(seg.syllables), [""] * n, True, list(src) if len(src) == n else [])
                    continue
                last = len(seg)
                for m in _TOKEN_RE.finditer(seg):
                    fixed_words, run, space, other = m.group(1), m.group(2), m.group(3), m.group(4)
                    if fixed_words is not None:
                        # Readings the normaliser produced, already cut into words.
                        pos = m.start(1)
                        for piece in fixed_words.split(WORD_SEP):
                            offset, pos = pos, pos + len(piece) + 1
                            if piece in _PUNCT_LEVELS:
                                yield _Pause(_PUNCT_LEVELS[piece])
                                continue
                            syllables, chars = word_reading(piece)
                            if syllables:
                                sources = _char_sources(piece, chars, src, offset)
                                yield _word(item, list(syllables), list(chars), False, sources)
                    elif run:
                        start = 0
                        for w, user in self._words(run):
                            # The polyphone model reads a word in the context of its whole run.
                            syllables, chars = (user, tuple(w)) if user else word_reading(w, run, start)
                            sources = _char_sources(w, chars, src, m.start(2) + start)
                            start += len(w)
                            if syllables:
                                yield _word(item, list(syllables), list(chars), bool(user), sources)
                    elif space:
                        # Spaces between Chinese words are a short pause; next to Latin words (segment edges)
                        # they only separate words.
                        if m.start() > 0 and m.end() < last:
                            yield _Pause(2)
                    else:
                        level = _PUNCT_LEVELS.get(other)
                        if level is not None:
                            yield _Pause(level)
                        # Anything else (emoji, symbols without a reading) is not spoken.

    def _words(self, run: str) -> Iterator[tuple[str, tuple[Syllable, ...] | None]]:
        """jieba's words, except that user lexicon words (longest first, left to right) are cut out beforehand,
        so they stay whole and jieba only segments the text between them."""
        if not self._lexicon:
            yield from ((w, None) for w in self._segmenter.words(run))
            return
        start = i = 0
        while i < len(run):
            for n in self._lexicon_lengths:
                user = self._lexicon.get(run[i : i + n])
                if user is not None and i + n <= len(run):
                    break
            else:
                i += 1
                continue
            yield from ((w, None) for w in (self._segmenter.words(run[start:i]) if start < i else ()))
            yield run[i : i + n], user
            i += n
            start = i
        yield from ((w, None) for w in (self._segmenter.words(run[start:]) if start < len(run) else ()))

    def _sentences(self, tokens: Iterable[_Token]) -> list[_Sentence]:
        sentences: list[_Sentence] = []
        current: list[Word | _Pause] = []
        prosody = (1.0, 0.0, 0.0)  # speed, pitch, volume_db: one value per sentence, so a change cuts it
        has_word = False
        # <mark>s not yet placed: they go before the next word, or after the previous one when a pause or the
        # end of the sentence comes first (so a mark before a comma is at the end of the word, not after the pause).
        marks: list[str] = []

        def close() -> None:
            nonlocal current, has_word
            if has_word:
                sentences.append(_Sentence(current, prosody[0], 0.0, prosody[1], prosody[2]))
            current, has_word = [], False

        for tok in tokens:
            if isinstance(tok, NamedMark):
                marks.append(tok.name)
                continue
            if isinstance(tok, Word):
                if marks:
                    tok.marks_before = (*tok.marks_before, *marks)
                    marks = []
            elif marks and has_word:
                previous = next(t for t in reversed(current) if isinstance(t, Word))
                previous.marks_after = (*previous.marks_after, *marks)
                marks = []
            if isinstance(tok, Word):
                word_prosody = (tok.speed, tok.pitch, tok.volume_db)
                if has_word and word_prosody != prosody:
                    close()
                prosody = word_prosody
                current.append(tok)
                has_word = True
            elif isinstance(tok, _Pause):
                if tok.level >= 4:
                    close()
                elif has_word:
                    current.append(tok)
            elif isinstance(tok, BreakMark):
                close()
                # A break before any speech has no sentence to follow; it is not rendered.
                if sentences:
                    last = sentences[-1]
                    last.pause_after_s = min(MAX_BREAK_S, last.pause_after_s + tok.seconds)
            else:
                close()
        if marks and has_word:
            previous = next(t for t in reversed(current) if isinstance(t, Word))
            previous.marks_after = (*previous.marks_after, *marks)
            marks = []
        close()
        if marks and sentences:
            # Marks after everything (after a final <break>) are at the very end of the audio.
            sentences[-1].marks_end = (*sentences[-1].marks_end, *marks)
        return sentences

    def _sandhi(self, tokens: list[Word | _Pause]) -> None:
        phrase: list[Word] = []
        for tok in tokens:
            if isinstance(tok, Word):
                phrase.append(tok)
            elif tok.level >= 2:
                apply_sandhi(phrase)
                phrase = []
        apply_sandhi(phrase)

    def _word_phones(self, word: Word) -> list[tuple[tuple[str, ...], int]]:
        """Each syllable's phones (and tone), or the ``FrontendError`` for one this voice cannot pronounce."""
        phones = []
        for syl in word.syllables:
            try:
                phones.append((self._syllable_phones(syl.base), syl.tone))
            except SyllableError as exc:
                source = "".join(word.chars) or str(syl)
                raise FrontendError(f"cannot pronounce {source!r} with this voice: {exc}") from None
        return phones

    def _emit(self, tokens: list[Word | _Pause], speaker: str) -> tuple[str, tuple[Unit, ...]]:
        parts: list[str] = []
        units: list[Unit] = []
        for index, (level, word) in enumerate(_words_with_breaks(tokens)):
            phones = self._word_phones(word)
            if level:
                parts.append(break_token(level, speaker))
                units.append(Unit("break", f"#{level}", 1))
            units.extend(Unit("mark", name, 0) for name in word.marks_before)
            parts.extend(word_tokens(phones, "emotion_" + word.emotion, speaker))
            sources = word.sources if len(word.sources) == len(word.syllables) else [None] * len(word.syllables)
            units.extend(
                Unit("syllable", str(syl), len(p), source, index)
                for syl, (p, _tone), source in zip(word.syllables, phones, sources, strict=True)
            )
            units.extend(Unit("mark", name, 0) for name in word.marks_after)
        parts.append(break_token(4, speaker))
        units.append(Unit("break", "#4", 1))
        return " ".join(parts), tuple(units)


def _words_with_breaks(tokens: list[Word | _Pause]) -> Iterator[tuple[int, Word]]:
    """Each word with the break level before it: 0 for the first word, else the strongest pause since the
    previous word, at least 1 (#1 separates every pair of words)."""
    level = 0
    first = True
    for tok in tokens:
        if isinstance(tok, _Pause):
            level = max(level, tok.level)
            continue
        yield (0 if first else max(level, 1)), tok
        first = False
        level = 0


def _syllable_count(tokens: list[Word | _Pause]) -> int:
    return sum(len(t.syllables) for t in tokens if isinstance(t, Word))


def _split_long(tokens: list[Word | _Pause], limit: int) -> list[list[Word | _Pause]]:
    """Cut a sentence longer than ``limit`` syllables: at the last comma that fits, else the last short pause,
    else the last word boundary, else inside a word. Every word ends up in exactly one chunk."""
    out: list[list[Word | _Pause]] = []
    while _syllable_count(tokens) > limit:
        count = 0
        cut_comma = cut_pause = cut_word = 0
        for j, tok in enumerate(tokens):
            if isinstance(tok, Word):
                if count + len(tok.syllables) > limit:
                    break
                count += len(tok.syllables)
                cut_word = j + 1
            elif count:
                if tok.level >= 3:
                    cut_comma = j
                elif tok.level == 2:
                    cut_pause = j
        cut = cut_comma or cut_pause or cut_word
        if not cut:
            first = tokens[0]
            assert isinstance(first, Word)
            head = replace(first, syllables=first.syllables[:limit], chars=first.chars[:limit],
                           sources=first.sources[:limit], marks_after=())  # fmt: skip
            tail = replace(first, syllables=first.syllables[limit:], chars=first.chars[limit:],
                           sources=first.sources[limit:], marks_before=())  # fmt: skip
            tokens = [head, tail, *tokens[1:]]
            cut = 1
        out.append(tokens[:cut])
        rest = tokens[cut:]
        while rest and isinstance(rest[0], _Pause):
            rest = rest[1:]
        tokens = rest
    if tokens:
        out.append(tokens)
    return out


# A stretch longer than this many syllables with no pause gets a predicted #2 (about one breath group).
MAX_PHRASE_SYLLABLES = 10
_MIN_PART = 3
# Words that open a predicate or a new constituent: a #2 before them is natural (他们昨天下午 | 在图书馆…).
_OPENERS = frozenset(
    words_of(
        "在 把 被 让 给 对 从 向 跟 和 与 同 为 为了 因为 所以 但是 可是 而且 如果 虽然 然后 就 都 也 还 又 才 "
        "正在 已经 将 将要 可以 应该 需要 必须 能够 通过 根据 关于 由于 按照 并 而 却"
    )
)
_NUMBER_READING = frozenset("零〇幺一二三四五六七八九十百千万亿两点")
_SUBJECTS = frozenset(words_of("我 你 他 她 它 我们 你们 他们 她们 它们 大家 咱们 这 那 这些 那些"))


def _phrase_breaks(tokens: list[Word | _Pause]) -> list[Word | _Pause]:
    """Insert predicted #2 pauses into every stretch of words between pauses of level 2 or more that is too long
    to read in one breath (see the module docstring for the rules). Quotes and brackets (#0) do not end a
    stretch: ``<speak>你好`` reads like ``speak 你好``."""
    out: list[Word | _Pause] = []
    stretch: list[Word] = []
    quiet: dict[int, list[_Pause]] = {}  # index in stretch -> #0/#1 pauses before that word

    def flush() -> None:
        for tok in _cut_stretch(stretch):
            out.extend(quiet.pop(id(tok), []) if isinstance(tok, Word) else [])
            out.append(tok)
        out.extend(p for ps in quiet.values() for p in ps)  # pauses after the last word
        stretch.clear()
        quiet.clear()

    pending: list[_Pause] = []
    for tok in tokens:
        if isinstance(tok, Word):
            if pending:
                quiet[id(tok)] = pending
                pending = []
            stretch.append(tok)
        elif tok.level >= 2:
            flush()
            out.extend(pending)
            pending = []
            out.append(tok)
        else:
            pending.append(tok)
    flush()
    out.extend(pending)
    return out


def _cut_stretch(words: list[Word]) -> list[Word | _Pause]:
    sizes = [len(w.syllables) for w in words]
    total = sum(sizes)
    if total <= MAX_PHRASE_SYLLABLES or len(words) < 2:
        return list(words)
    best, best_score = 0, float("-inf")
    before = 0
    for j in range(1, len(words)):
        before += sizes[j - 1]
        after = total - before
        if before < _MIN_PART or after < _MIN_PART:
            continue
        left, right = "".join(words[j - 1].chars), "".join(words[j].chars)
        if _NUMBER_READING.issuperset(left) and _NUMBER_READING.issuperset(right):
            continue  # the groups of one number (一百二十三万 | 四千…) are read as one, like a word
        score = 0.0
        if left == "的":
            score += 3  # after a 的-phrase
        if left in ("地", "得"):
            score -= 10  # 地 and 得 are read as particles only before the word they attach to
        if right in _OPENERS:
            score += 3
        if left in _SUBJECTS and j == 1:
            score += 2  # after a pronoun subject
        if right in ("的", "了", "着", "过", "地", "得", "吗", "呢", "吧", "啊"):
            score -= 10  # particles lean on the word before them
        score -= abs(before - after) / total * 4  # prefer balanced halves
        if score > best_score:
            best, best_score = j, score
    if not best:
        return list(words)
    return [*_cut_stretch(words[:best]), _Pause(2), *_cut_stretch(words[best:])]
