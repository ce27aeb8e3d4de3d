"""Word, syllable and character timestamps from the durations the acoustic model actually used.

Sambert expands every symbol token to a whole number of mel frames before it makes any audio, and the vocoder turns
each frame into exactly ``hop`` samples. So the time of every token is known exactly: the sum of the frames before
it, times ``hop``. Sentence pauses are whole hops too (the engine rounds them so), so every boundary reported here
is a multiple of ``hop / sample_rate`` and the last sentence ends on the last sample of the audio.

Offsets (``begin``, ``end``) are indices into the text the client sent (Unicode code points, as Python and JSON
count them; for SSML, into the document), mapped back through normalisation: the syllables of 二零二六年 all point
at ``2026年``, an SSML ``<sub>`` alias at the element's content.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from tts_server.inference.engine import SentenceTiming, Unit

__all__ = ["SentenceTiming", "SymbolToken", "TimestampBuilder", "Unit", "build", "pause_samples", "sentence_events",
           "symbol_units"]


class TimestampBuilder:
    """Accumulates sentences in audio order; ``add`` returns that sentence's entries (for a streamed event) and
    ``result`` the whole document (see ``TIMESTAMPS_EXAMPLE`` in the API schemas for the shape)."""

    def __init__(self, text: str, sample_rate: int) -> None:
        self.text = text
        self.sample_rate = sample_rate
        self.position = 0  # samples so far
        self.sentences: list[dict[str, Any]] = []
        self.words: list[dict[str, Any]] = []
        self.syllables: list[dict[str, Any]] = []
        self.marks: list[dict[str, Any]] = []
        self._chars: dict[int, list[int]] = {}  # offset -> [start, end] in samples
        self._hop = 0

    def ms(self, samples: int) -> float:
        return samples * 1000.0 / self.sample_rate

    def add(self, timing: SentenceTiming) -> dict[str, Any]:
        tokens = sum(u.tokens for u in timing.units)
        if tokens != len(timing.frames):
            raise ValueError(f"timing units cover {tokens} tokens, the model expanded {len(timing.frames)}")
        self._hop = timing.hop
        index = len(self.sentences)
        start = self.position
        first_word, first_syllable, first_mark = len(self.words), len(self.syllables), len(self.marks)
        t = start
        k = 0
        current_word = -1  # the sentence-local word index of the last syllable
        for unit in timing.units:
            begin = t
            t += sum(timing.frames[k : k + unit.tokens]) * timing.hop
            k += unit.tokens
            if unit.kind == "mark":
                self.marks.append({"name": unit.label, "time_ms": self.ms(begin), "sentence": index})
            elif unit.kind == "syllable":
                self._syllable(unit, begin, t, index, new_word=unit.word != current_word)
                current_word = unit.word
        speech_end = t
        end = speech_end + timing.pause_samples
        for name in timing.marks_end:
            self.marks.append({"name": name, "time_ms": self.ms(end), "sentence": index})
        sources = [s["begin"] for s in self.syllables[first_syllable:]], [
            s["end"] for s in self.syllables[first_syllable:]
        ]
        begin_offset = min(sources[0]) if sources[0] else None
        end_offset = max(sources[1]) if sources[1] else None
        sentence = {
            "index": index,
            "text": self._slice(begin_offset, end_offset),
            "begin": begin_offset,
            "end": end_offset,
            "start_ms": self.ms(start),
            "speech_end_ms": self.ms(speech_end),
            "end_ms": self.ms(end),
        }
        self.sentences.append(sentence)
        self.position = end
        return {
            "sentence": sentence,
            "words": self.words[first_word:],
            "syllables": self.syllables[first_syllable:],
            "characters": self._characters(
                {o for s in self.syllables[first_syllable:] if s["begin"] is not None
                 for o in range(s["begin"], s["end"])}
            ),
            "marks": self.marks[first_mark:],
        }

    def result(self) -> dict[str, Any]:
        return {
            "sample_rate": self.sample_rate,
            "hop_ms": self.ms(self._hop),
            "duration_ms": self.ms(self.position),
            "sentences": self.sentences,
            "words": self.words,
            "syllables": self.syllables,
            "characters": self._characters(self._chars),
            "marks": self.marks,
        }

    # -- helpers -----------------------------------------------------------------------------------------------

    def _slice(self, begin: int | None, end: int | None) -> str:
        return "" if begin is None or end is None else self.text[begin:end]

    def _syllable(self, unit: Unit, start: int, end: int, sentence: int, *, new_word: bool) -> None:
        begin, stop = unit.source if unit.source is not None else (None, None)
        previous = self.words[-1] if self.words and self.words[-1]["sentence"] == sentence else None
        # Frontend words that stand for overlapping original text (the date 2026年11月24日 is read as three
        # words) are one word here: a word is a piece of the client's text.
        merge = previous is not None and (
            not new_word
            or (begin is not None and previous["begin"] is not None and begin < previous["end"])
        )
        if merge and previous is not None:
            previous["end_ms"] = self.ms(end)
            if begin is not None and stop is not None:
                previous["begin"] = begin if previous["begin"] is None else min(previous["begin"], begin)
                previous["end"] = stop if previous["end"] is None else max(previous["end"], stop)
                previous["text"] = self._slice(previous["begin"], previous["end"])
        else:
            self.words.append({
                "text": self._slice(begin, stop), "begin": begin, "end": stop,
                "start_ms": self.ms(start), "end_ms": self.ms(end), "sentence": sentence,
            })  # fmt: skip
        self.syllables.append({
            "pinyin": unit.label, "text": self._slice(begin, stop), "begin": begin, "end": stop,
            "start_ms": self.ms(start), "end_ms": self.ms(end), "sentence": sentence, "word": len(self.words) - 1,
        })  # fmt: skip
        if begin is not None and stop is not None:
            for offset in range(begin, stop):
                span = self._chars.setdefault(offset, [start, end])
                span[0], span[1] = min(span[0], start), max(span[1], end)

    def _characters(self, offsets: Iterable[int]) -> list[dict[str, Any]]:
        return [
            {"char": self.text[o], "offset": o, "start_ms": self.ms(self._chars[o][0]),
             "end_ms": self.ms(self._chars[o][1])}
            for o in sorted(offsets) if o < len(self.text)
        ]  # fmt: skip


def sentence_events(document: dict[str, Any]) -> list[dict[str, Any]]:
    """A whole document (``TimestampBuilder.result``) cut back into the per-sentence events ``add`` returns, for
    a client that expects events but is answered from a whole (cached) response."""
    characters = {c["offset"]: c for c in document["characters"]}
    events = []
    for sentence in document["sentences"]:
        index = sentence["index"]
        syllables = [s for s in document["syllables"] if s["sentence"] == index]
        offsets = {o for s in syllables if s["begin"] is not None for o in range(s["begin"], s["end"])}
        events.append({
            "sentence": sentence,
            "words": [w for w in document["words"] if w["sentence"] == index],
            "syllables": syllables,
            "characters": [characters[o] for o in sorted(offsets) if o in characters],
            "marks": [m for m in document["marks"] if m["sentence"] == index],
        })
    return events


def pause_samples(seconds: float, sample_rate: int, hop: int) -> int:
    """Silence of ``seconds`` as the engine appends it: rounded to whole hops (at least 0), so that every
    boundary after it is still a multiple of the hop. Halves round up."""
    if not seconds > 0 or hop <= 0:
        return 0
    return math.floor(seconds * sample_rate / hop + 0.5) * hop


#: One symbol token as ``symbol_units`` reads it: phone, tone, syllable flag, word segment, and its span in the
#: client's text.
SymbolToken = tuple[str, str, str, str, tuple[int, int]]


def symbol_units(tokens: Sequence[SymbolToken]) -> tuple[Unit, ...]:
    """Units of a sentence given as KAN-TTS symbols: break tokens (``#1``..``#4``) are breaks; the other tokens
    group into syllables by their syllable flag (``s_begin`` .. ``s_end``, ``s_both`` alone) and into words by
    their word segment (``word_begin``/``word_both`` start one). A syllable's ``label`` is its phones without the
    ``_c`` suffix and its tone digit (``h_c ao_c`` tone3 -> ``hao3``); its ``source`` spans its tokens."""
    units: list[Unit] = []
    current: list[SymbolToken] = []
    word = -1

    def close() -> None:
        if not current:
            return
        tone = current[0][1].removeprefix("tone")
        label = "".join(t[0].removesuffix("_c") for t in current) + (tone if tone.isdigit() else "")
        units.append(Unit("syllable", label, len(current), (current[0][4][0], current[-1][4][1]), max(word, 0)))
        current.clear()

    for token in tokens:
        phone, _tone, flag, segment, _span = token
        if phone.startswith("#") and phone[1:].isdigit():
            close()
            units.append(Unit("break", phone, 1))
            continue
        if flag in ("s_begin", "s_both", "s_none") or not current:
            close()
            if segment in ("word_begin", "word_both") or word < 0:
                word += 1
        current.append(token)
        if flag in ("s_end", "s_both", "s_none"):
            close()
    close()
    return tuple(units)


def build(text: str, sample_rate: int, timings: Sequence[SentenceTiming]) -> dict[str, Any]:
    """The whole timestamps document for ``text`` synthesised as ``timings`` (in audio order)."""
    builder = TimestampBuilder(text, sample_rate)
    for timing in timings:
        builder.add(timing)
    return builder.result()
