"""Incremental clause segmentation for text that arrives in pieces (the WebSocket's text deltas).

A clause is ready at sentence punctuation, at a comma once the pending clause is long enough, when it reaches
``max_chars`` without either, or on ``flush``. Every decision depends only on the text received so far (an ASCII
``.`` or ``,`` waits for the next character, so ``3.5`` and ``1,000`` are not cut), which makes the clauses the
same however the text was split into deltas: feeding one character at a time gives what feeding it all at once
gives.
"""

from __future__ import annotations

from typing import Final

#: Always end a clause (included in it).
SENTENCE_END: Final = frozenset("。！？!?；;…\n\r\u2028\u2029")
#: End a clause once it has ``min_comma_chars`` characters.
PAUSES: Final = frozenset("，、：,:")
#: ASCII marks that end a clause only when the next character says so (not inside ``3.5``, ``1,000``, ``12:30``).
_LOOKAHEAD: Final = frozenset(".,:")
#: Closing marks and spaces that carry no sound: stripped from the start of a clause (they belong to the end of
#: the previous one, which has already gone out).
_LEADING_SILENT: Final = frozenset("”’」』）)]}》〉\"' \t\u3000")


class ClauseSegmenter:
    """Feed text deltas with ``feed``; each call returns the clauses that became ready, in order."""

    def __init__(self, *, min_comma_chars: int = 8, max_chars: int = 200) -> None:
        if min_comma_chars < 1 or max_chars < 1:
            raise ValueError("min_comma_chars and max_chars must be at least 1")
        self.min_comma_chars = min_comma_chars
        self.max_chars = max_chars
        self._buffer = ""
        #: Characters of ``_buffer`` already examined (a pending ``.`` or ``,`` at the end is not).
        self._scanned = 0

    @property
    def pending(self) -> str:
        """Text received and not yet part of a ready clause."""
        return self._buffer

    def feed(self, delta: str) -> list[str]:
        self._buffer += delta
        return self._cut()

    def flush(self) -> list[str]:
        """Everything still pending, as one clause (none if it has nothing to say)."""
        ready = self._cut()
        rest, self._buffer, self._scanned = self._buffer, "", 0
        clause = _clean(rest)
        if clause:
            ready.append(clause)
        return ready

    def reset(self) -> None:
        """Drop the pending text (the client cancelled)."""
        self._buffer = ""
        self._scanned = 0

    def _cut(self) -> list[str]:
        ready: list[str] = []
        start = 0
        i = self._scanned
        text = self._buffer
        while i < len(text):
            c = text[i]
            end: int | None = None
            if c in SENTENCE_END:
                end = i + 1
            elif c in _LOOKAHEAD:
                if i + 1 == len(text):
                    break  # wait for the next character before deciding
                nxt = text[i + 1]
                if (c == "." and nxt.isspace()) or (c != "." and not nxt.isdigit() and
                                                    _length(text[start:i + 1]) >= self.min_comma_chars):
                    end = i + 1
            elif c in PAUSES and _length(text[start:i + 1]) >= self.min_comma_chars:
                end = i + 1
            if end is None and i + 1 - start >= self.max_chars:
                end = i + 1
            if end is not None:
                clause = _clean(text[start:end])
                if clause:
                    ready.append(clause)
                start = end
            i += 1
        self._buffer = text[start:]
        self._scanned = i - start
        return ready


def _length(text: str) -> int:
    """What counts towards a clause's length: its letters and digits (not spaces or punctuation)."""
    return sum(1 for c in text if c.isalnum())


def _clean(text: str) -> str:
    """The clause to synthesise: without leading silent marks or surrounding space; empty if it has no letter or
    digit (a clause of punctuation alone would be silence or an engine error)."""
    i = 0
    while i < len(text) and text[i] in _LEADING_SILENT:
        i += 1
    clause = text[i:].strip()
    return clause if any(c.isalnum() for c in clause) else ""
