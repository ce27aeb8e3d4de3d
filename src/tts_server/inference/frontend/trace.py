"""Text that remembers where each of its characters came from in the client's original text.

Timestamps are reported against the text the client sent, not against what normalisation made of it: the
syllables of 二零二六年 must point back at ``2026年``. Every rewrite of the text (width folding, whitespace, the
normaliser's rules) therefore goes through ``Traced``, which carries one source span per character: the half-open
range of original offsets the character stands for.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

#: A half-open range of offsets (Python string indices) into the original text.
Src = tuple[int, int]


def union(spans: Iterable[Src]) -> Src | None:
    """The smallest span covering all of ``spans`` (None for none)."""
    start = end = -1
    for s, e in spans:
        if start < 0 or s < start:
            start = s
        end = max(end, e)
    return None if start < 0 else (start, end)


@dataclass(frozen=True, slots=True)
class Traced:
    """``text`` with ``spans[i]`` the original range character ``i`` came from."""

    text: str
    spans: tuple[Src, ...]

    @classmethod
    def of(cls, text: str, offset: int = 0) -> Traced:
        """Original text: each character stands for itself (at ``offset`` in the whole original)."""
        return cls(text, tuple((offset + i, offset + i + 1) for i in range(len(text))))

    @classmethod
    def covering(cls, text: str, span: Src) -> Traced:
        """Text that as a whole stands for ``span`` (an SSML alias for its element's content)."""
        return cls(text, (span,) * len(text))

    def __len__(self) -> int:
        return len(self.text)

    def __getitem__(self, index: slice) -> Traced:
        return Traced(self.text[index], self.spans[index])

    def span(self, start: int = 0, end: int | None = None) -> Src | None:
        return union(self.spans[start:end])

    def map_chars(self, func: Callable[[str], str]) -> Traced:
        """Rewrite character by character: what ``func`` makes of a character stands for that character."""
        out_text: list[str] = []
        out_spans: list[Src] = []
        for ch, span in zip(self.text, self.spans, strict=True):
            new = func(ch)
            out_text.append(new)
            out_spans.extend([span] * len(new))
        return Traced("".join(out_text), tuple(out_spans))

    def sub(self, pattern: re.Pattern[str], repl: Callable[[re.Match[str]], str] | str) -> Traced:
        """``pattern.sub(repl, text)``, tracing each replacement: the part of a replacement that repeats the start
        or the end of its match keeps those characters' spans; the rest stands for the rest of the match."""
        text = self.text
        pieces: list[str] = []
        spans: list[Src] = []
        pos = 0
        for m in pattern.finditer(text):
            new = m.expand(repl) if isinstance(repl, str) else repl(m)
            pieces.append(text[pos : m.start()])
            spans.extend(self.spans[pos : m.start()])
            spans.extend(_replacement_spans(m.group(0), new, self.spans[m.start() : m.end()], self._at(m.start())))
            pieces.append(new)
            pos = m.end()
        if not pieces:
            return self
        pieces.append(text[pos:])
        spans.extend(self.spans[pos:])
        return Traced("".join(pieces), tuple(spans))

    def _at(self, index: int) -> Src:
        """An empty span where character ``index`` starts (for text inserted where nothing was matched)."""
        if index < len(self.spans):
            return (self.spans[index][0], self.spans[index][0])
        return (self.spans[-1][1], self.spans[-1][1]) if self.spans else (0, 0)


def concat(parts: Sequence[Traced]) -> Traced:
    return Traced("".join(p.text for p in parts), tuple(s for p in parts for s in p.spans))


def _replacement_spans(old: str, new: str, old_spans: tuple[Src, ...], empty: Src) -> list[Src]:
    prefix = 0
    limit = min(len(old), len(new))
    while prefix < limit and old[prefix] == new[prefix]:
        prefix += 1
    suffix = 0
    while suffix < limit - prefix and old[len(old) - 1 - suffix] == new[len(new) - 1 - suffix]:
        suffix += 1
    middle_old = old_spans[prefix : len(old) - suffix]
    middle = union(middle_old) or union(old_spans) or empty
    return [
        *old_spans[:prefix],
        *([middle] * (len(new) - prefix - suffix)),
        *old_spans[len(old) - suffix :],
    ]
