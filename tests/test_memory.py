"""Worker memory hygiene: the allocator calls, and the frontend dropping the phrase tables it no longer needs."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from tts_server.inference import memory
from tts_server.inference.frontend import pinyin

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is a glibc call")


@glibc_only
def test_allocator_calls_take_effect_on_glibc() -> None:
    assert memory.release_free_memory() is True


#: In a fresh interpreter: three 8 MiB tensors written and freed; prints the heap's size (glibc ``mallinfo2``:
#: ``arena``) and the mmapped bytes (``hblkhd``) while they live, and the heap's size after they are freed.
_HEAP = """
import ctypes, sys
import torch
from tts_server.inference import memory
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks "
                                                "keepcost").split()]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
if sys.argv[1] == "keep":
    assert memory.keep_heap_pages()
bufs = [torch.ones(2 << 20) for _ in range(3)]
live = libc.mallinfo2()
del bufs
print(live.arena, live.hblkhd, libc.mallinfo2().arena)
"""


@glibc_only
def test_kept_heap_pages_stay_for_the_next_job() -> None:
    def heap(mode: str) -> list[int]:
        out = subprocess.run([sys.executable, "-c", _HEAP, mode], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        return [int(v) for v in out.stdout.split()]

    size = 3 * (8 << 20)
    _, mapped, _ = heap("default")
    assert mapped >= size  # glibc's default: blocks this large are mapped, and unmapped on free
    arena, mapped, after = heap("keep")
    assert mapped < size // 3  # from the heap instead...
    assert arena >= size
    assert after >= size  # ...whose pages stay after the free (until release_free_memory)


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


def test_packed_frequencies_answer_like_a_dict() -> None:
    from tts_server.inference.frontend.wordfreq import PackedFrequencies

    table = {"": 3, "中": 0, "中国": 10, "中国人": 5, "人": 7, "a": 2**40, "ab": -1}
    packed = PackedFrequencies(table)
    assert len(packed) == len(table)
    assert list(packed) == sorted(table)
    for key in [*table, "中国人民", "国", "b", "abc", "人中", "\U00020000"]:
        assert (key in packed) == (key in table)
        assert packed.get(key) == table.get(key)
        assert packed.get(key, 9) == table.get(key, 9)
    assert packed["中国"] == 10
    with pytest.raises(KeyError):
        packed["国"]
    assert PackedFrequencies({}).get("x") is None


def test_segmentation_with_the_packed_jieba_table_is_unchanged() -> None:
    # The shared segmenter's jieba reads a PackedFrequencies; a stock tokenizer with jieba's own dict must agree on
    # every entry and cut the same sentences the same way.
    import random
    import warnings
    from pathlib import Path

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import jieba

    segmenter = pinyin.shared_segmenter()
    stock = jieba.Tokenizer()
    stock.initialize()
    assert len(segmenter._freq) == len(stock.FREQ)
    assert all(segmenter._freq.get(word) == freq for word, freq in stock.FREQ.items())
    data = Path(__file__).parent / "data" / "polyphones.tsv"
    texts = [line.split("\t")[0].replace("\u2581", "") for line in data.read_text("utf-8").splitlines()
             if line and not line.startswith("#")]
    rng = random.Random(12)
    words = [w for w, f in stock.FREQ.items() if f]
    chars = sorted({c for w in words[:20000] for c in w})
    texts += ["".join(rng.choice(words) for _ in range(8)) for _ in range(300)]  # dictionary words run together
    texts += ["".join(rng.choice(chars) for _ in range(30)) for _ in range(300)]  # arbitrary runs (HMM paths)
    for text in texts:
        assert segmenter._tokenizer.lcut(text, HMM=True) == stock.lcut(text, HMM=True), text


def test_neutral_lexicon_round_trip_is_the_table_built_from_the_data() -> None:
    # _neutral_lexicon packs the table into one string and parses it back after the CC-CEDICT modules are freed
    # (so its objects do not pin the data's allocator arenas); the result must be the table itself.
    pinyin._neutral_lexicon.cache_clear()
    table = pinyin._neutral_lexicon()
    try:
        assert table == pinyin._neutral_lexicon_from_cedict()
    finally:
        pinyin._drop_modules("pypinyin_dict.phrase_pinyin_data.cc_cedict")
    assert len(table) > 2000
    assert table["事情"] == ((1, "qing"),)


def test_compacted_pypinyin_phrase_table_holds_the_published_data() -> None:
    # The frontend rebuilds pypinyin's phrase table with shared reading lists; its content must be pypinyin's own
    # json, and its segmenter's prefix set that of the same words.
    import json
    from pathlib import Path

    from pypinyin import Style, constants, lazy_pinyin, phrases_dict
    from pypinyin.seg import mmseg

    pinyin.shared_segmenter()  # compacts once per process
    table = constants.PHRASES_DICT
    published = json.loads(Path(phrases_dict._json_path).read_text("utf-8"))
    assert table == published
    assert phrases_dict.phrases_dict is table
    assert mmseg.p_set._set == {w[: i + 1] for w in published for i in range(len(w))}
    # Equal readings are one shared list: about 1 250 distinct ones among 110 000 syllable readings.
    assert len({id(reading) for readings in table.values() for reading in readings}) < 5000
    assert lazy_pinyin("行长在银行", style=Style.TONE3, neutral_tone_with_five=True) == [
        "hang2", "zhang3", "zai4", "yin2", "hang2"]


def test_cli_module_leaves_the_server_libraries_to_serve() -> None:
    # Every spawned worker re-imports the tts-server script's module (multiprocessing's spawn runs the parent's main
    # module), so importing tts_server.cli must not load uvicorn, FastAPI or prometheus_client (~10 MiB per worker).
    import subprocess

    code = ("import sys, tts_server.cli; "
            "assert not {'uvicorn', 'fastapi', 'prometheus_client'} & set(sys.modules), 'server libraries imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
