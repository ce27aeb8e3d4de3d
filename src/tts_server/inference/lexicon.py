"""The user lexicon: word -> pinyin readings that win over the frontend's own, kept in one JSON file.

The API process is the only writer (``LexiconStore``); every change is written atomically (temporary file, fsync,
rename, fsync of the folder) with a version one higher. Workers never get the entries over their pipe: each job
carries the version the API saw, and a worker whose copy is older re-reads the file before the job (``read_file``),
so a change is in effect for the very next job in every worker, a recycled worker included.

Pure Python (no torch, no jieba): the API process imports it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tts_server.inference.frontend.pinyin import CJK_RE
from tts_server.inference.frontend.symbols import DEFAULT_PHONES, Syllable, SyllableError, parse_pinyin, syllable_phones

#: A client's reading spells every tone: a forgotten digit must not silently become the neutral tone.
_TONED_RE = re.compile(r"[a-zü:]+[1-5]")


class LexiconError(ValueError):
    """An entry (or the file) is unusable; ``word`` names the entry at fault where there is one."""

    def __init__(self, message: str, word: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.word = word


class LexiconFull(LexiconError):
    """The change would exceed ``lexicon.max_entries``."""


class LexiconDisabled(LexiconError):
    """``lexicon.path`` is unset, so there is nowhere to keep a change."""


@dataclass(frozen=True)
class Lexicon:
    """One version of the lexicon. ``entries`` maps a word to its canonical reading (``chong2 qing4``)."""

    version: int = 0
    entries: Mapping[str, str] = field(default_factory=dict)

    @property
    def fingerprint(self) -> str:
        """A digest of the entries (not the version): equal entries read the same, so they share cached audio."""
        if not self.entries:
            return ""
        canonical = json.dumps(sorted(self.entries.items()), ensure_ascii=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def parse_reading(word: str, reading: str, phones: frozenset[str] = DEFAULT_PHONES) -> tuple[Syllable, ...]:
    """``reading`` as syllables, one per character of ``word``, each with an explicit tone 1-5 and phones in
    ``phones``; raises ``LexiconError`` naming the word and the syllable at fault."""
    if not isinstance(reading, str):
        raise LexiconError(f"entry {word!r}: the reading must be a string of pinyin syllables", word)
    parts = reading.split()
    if len(parts) != len(word):
        raise LexiconError(f"entry {word!r}: {len(word)} characters need {len(word)} syllables, got {len(parts)} "
                           f"in {reading!r}", word)
    syllables = []
    for part in parts:
        try:
            syllable = parse_pinyin(part)
            if not _TONED_RE.fullmatch(part.lower()):
                raise SyllableError("a tone digit 1-5 is required")
            syllable_phones(syllable.base, phones)
        except SyllableError as exc:
            raise LexiconError(f"entry {word!r}: syllable {part!r} is not valid pinyin for this voice ({exc})",
                               word) from None
        syllables.append(syllable)
    return tuple(syllables)


def check_word(word: object, max_chars: int) -> str:
    if not isinstance(word, str) or not word:
        raise LexiconError("a lexicon word must not be empty", "")
    if len(word) > max_chars:
        raise LexiconError(f"entry {word[:max_chars]!r}...: a word is at most {max_chars} characters", word)
    if not CJK_RE.fullmatch(word):
        raise LexiconError(f"entry {word!r}: a word must consist of Chinese characters only", word)
    return word


def canonical(word: str, reading: str, max_chars: int) -> str:
    """The entry's reading in canonical spelling (lower case, ü as v), after every check."""
    check_word(word, max_chars)
    return " ".join(str(s) for s in parse_reading(word, reading))


def read_file(path: Path) -> Lexicon:
    """The lexicon in ``path``; an absent file is the empty lexicon. Raises ``LexiconError`` for a file that
    cannot be read or is not a lexicon (never returns a partial one)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Lexicon()
    except OSError as exc:
        raise LexiconError(f"cannot read lexicon file {path}: {exc.strerror or exc}") from None
    try:
        data: Any = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LexiconError(f"lexicon file {path} is corrupt: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("version"), int) or data["version"] < 0 \
            or not isinstance(data.get("entries"), dict):
        raise LexiconError(f"lexicon file {path} is corrupt: expected {{\"version\": int, \"entries\": {{...}}}}")
    entries = {}
    for word, reading in data["entries"].items():
        try:
            entries[word] = canonical(word, reading, 64)
        except LexiconError as exc:
            raise LexiconError(f"lexicon file {path} is corrupt: {exc.message}", exc.word) from None
    return Lexicon(data["version"], entries)


def write_file(path: Path, lexicon: Lexicon) -> None:
    """Replace ``path`` atomically: a reader sees the old file or the new one, never a torn one, even after a
    crash or power loss."""
    body = json.dumps({"version": lexicon.version, "entries": dict(lexicon.entries)}, ensure_ascii=False,
                      indent=1, sort_keys=True).encode()
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a power loss
    finally:
        os.close(dir_fd)


class LexiconStore:
    """The API process's lexicon: validated changes, each persisted before it is visible."""

    def __init__(self, path: Path | None, *, max_entries: int, max_word_chars: int) -> None:
        self.path = path
        self.max_entries = max_entries
        self.max_word_chars = max_word_chars
        self._lock = threading.Lock()
        # Raises LexiconError for a corrupt file: the caller refuses to start rather than drop the entries.
        self._current = read_file(path) if path is not None else Lexicon()

    @property
    def current(self) -> Lexicon:
        return self._current

    def validate(self, entries: Mapping[str, str]) -> dict[str, str]:
        return {word: canonical(word, reading, self.max_word_chars) for word, reading in entries.items()}

    def put(self, entries: Mapping[str, str], *, replace: bool = False) -> Lexicon:
        """Add or replace ``entries`` (or, with ``replace``, make them the whole lexicon)."""
        clean = self.validate(entries)
        with self._lock:
            merged = clean if replace else {**self._current.entries, **clean}
            if len(merged) > self.max_entries:
                raise LexiconFull(f"the lexicon would hold {len(merged)} entries; the limit is "
                                   f"{self.max_entries} (lexicon.max_entries)")
            return self._commit(merged)

    def delete(self, word: str) -> Lexicon | None:
        """Remove ``word``; None when it is not in the lexicon."""
        with self._lock:
            if word not in self._current.entries:
                return None
            return self._commit({w: r for w, r in self._current.entries.items() if w != word})

    def _commit(self, entries: dict[str, str]) -> Lexicon:
        if self.path is None:
            raise LexiconDisabled("the lexicon is off: set lexicon.path to keep one")
        new = Lexicon(self._current.version + 1, entries)
        write_file(self.path, new)
        self._current = new
        return new
