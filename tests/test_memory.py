"""Worker memory hygiene: the allocator calls, and the frontend dropping the phrase tables it no longer needs."""

from __future__ import annotations

import os
import platform
import sys

import pytest

from tts_server.inference import memory
from tts_server.inference.frontend import pinyin

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt/malloc_trim are glibc calls")


@glibc_only
def test_allocator_calls_take_effect_on_glibc() -> None:
    assert memory.pin_mmap_threshold() is True
    assert memory.release_free_memory() is True


def test_primitive_cache_capacity_goes_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    memory.limit_primitive_cache(64)
    assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"


def test_neutral_lexicon_leaves_no_reference_to_the_phrase_tables() -> None:
    # Regression: the CC-CEDICT tables (~35 MB) were removed from sys.modules but stayed reachable as an attribute
    # of their parent package, so they were never freed.
    pinyin._neutral_lexicon.cache_clear()
    table = pinyin._neutral_lexicon()
    assert table["事情"]  # the small table itself is kept
    prefix = "pypinyin_dict.phrase_pinyin_data.cc_cedict"
    assert not [name for name in sys.modules if name.startswith(prefix)]
    package = sys.modules.get("pypinyin_dict.phrase_pinyin_data")
    assert package is None or getattr(package, "cc_cedict", None) is None


def test_frontends_of_different_voices_share_one_jieba_dictionary() -> None:
    # One frontend per voice (phone sets differ); each used to load its own jieba dictionary (~50 MB).
    from tts_server.inference.frontend import Frontend
    from tts_server.inference.frontend.symbols import DEFAULT_PHONES

    first = Frontend(warm_up=False)
    second = Frontend(frozenset(DEFAULT_PHONES), warm_up=False)
    assert first._segmenter is second._segmenter
    assert pinyin.shared_segmenter() is first._segmenter
