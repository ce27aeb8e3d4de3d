"""jieba's word-frequency table in a packed, read-only form.

jieba keeps its dictionary as a ``dict`` of about 500 000 strings (the 349 000 words and every prefix of them, the
prefixes with frequency 0) to ints: ≈ 60 MB of Python objects per process. Here the same keys sit sorted in one
string with an offset array and a frequency array (≈ 7 MB), and a lookup is a bisection within the keys that share
the first character (≈ 40 on average). Lookups answer exactly what the dict answered, so segmentation is unchanged;
they are slower (microseconds instead of tens of nanoseconds), which is nothing beside synthesis.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from typing import TypeVar, overload

_T = TypeVar("_T")


def _typecode(largest: int, smallest: int = 0) -> str:
    # 4-byte ints where they suffice (jieba: offsets up to 1.4 M, frequencies up to 0.9 M), 8-byte otherwise.
    return "i" if smallest >= -(2**31) and largest < 2**31 else "q"


class _Keys:
    """The sorted keys as a sequence (what ``bisect`` needs), sliced out of one string on demand."""

    __slots__ = ("_blob", "_offsets")

    def __init__(self, blob: str, offsets: array[int]) -> None:
        self._blob = blob
        self._offsets = offsets

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self._blob[self._offsets[i] : self._offsets[i + 1]]


class PackedFrequencies(Mapping[str, int]):
    """A read-only ``str -> int`` mapping with the keys and values of ``table``."""

    def __init__(self, table: Mapping[str, int]) -> None:
        keys = sorted(table)
        blob = "".join(keys)
        offsets = array(_typecode(len(blob)), [0])
        total = 0
        for key in keys:
            total += len(key)
            offsets.append(total)
        self._keys = _Keys(blob, offsets)
        values = [table[key] for key in keys]
        self._values = array(_typecode(max(values, default=0), min(values, default=0)), values)
        # The distinct first characters, sorted (a string, so bisect compares in C), and where each one's keys start.
        firsts: list[str] = []
        starts = array(_typecode(len(keys)))
        for i, key in enumerate(keys):
            if key and (not firsts or firsts[-1] != key[0]):
                firsts.append(key[0])
                starts.append(i)
        starts.append(len(keys))
        self._firsts = "".join(firsts)
        self._starts = starts
        self._has_empty = "" in table  # the empty key sorts first and has no first character

    def _index(self, key: object) -> int:
        if not isinstance(key, str):
            return -1
        if not key:
            return 0 if self._has_empty else -1
        j = bisect_left(self._firsts, key[0])
        if j == len(self._firsts) or self._firsts[j] != key[0]:
            return -1
        lo, hi = self._starts[j], self._starts[j + 1]
        i = bisect_left(self._keys, key, lo, hi)
        return i if i < hi and self._keys[i] == key else -1

    def __contains__(self, key: object) -> bool:
        return self._index(key) >= 0

    def __getitem__(self, key: str) -> int:
        i = self._index(key)
        if i < 0:
            raise KeyError(key)
        return self._values[i]

    @overload
    def get(self, key: str, /) -> int | None: ...
    @overload
    def get(self, key: str, default: int, /) -> int: ...
    @overload
    def get(self, key: str, default: _T, /) -> int | _T: ...

    def get(self, key: str, default: object = None, /) -> object:
        i = self._index(key)
        return default if i < 0 else self._values[i]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[str]:
        keys = self._keys
        return (keys[i] for i in range(len(keys)))
