"""The incremental clause segmenter: where clauses end, and that deltas of any size give the same clauses."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tts_server.inference.clauses import ClauseSegmenter


def whole(text: str, **kw: int) -> list[str]:
    seg = ClauseSegmenter(**kw)
    return seg.feed(text) + seg.flush()


def in_deltas(text: str, sizes: list[int], **kw: int) -> list[str]:
    seg = ClauseSegmenter(**kw)
    out: list[str] = []
    i = 0
    for n in sizes:
        if i >= len(text):
            break
        out += seg.feed(text[i:i + n])
        i += n
    if i < len(text):
        out += seg.feed(text[i:])
    return out + seg.flush()


def test_sentence_punctuation_ends_a_clause_at_once() -> None:
    seg = ClauseSegmenter(min_comma_chars=100)
    assert seg.feed("今天天气很好。明天") == ["今天天气很好。"]
    assert seg.pending == "明天"
    assert seg.feed("会下雨吗？") == ["明天会下雨吗？"]
    assert seg.feed("Yes! Really") == ["Yes!"]
    assert seg.flush() == ["Really"]
    assert seg.pending == ""


def test_comma_ends_a_clause_only_once_it_is_long_enough() -> None:
    seg = ClauseSegmenter(min_comma_chars=5)
    assert seg.feed("你好，") == []  # 2 characters: too short to stand alone
    assert seg.feed("我是语音助手，很高兴") == ["你好，我是语音助手，"]
    assert seg.flush() == ["很高兴"]


def test_ascii_marks_wait_for_the_next_character() -> None:
    seg = ClauseSegmenter(min_comma_chars=1)
    assert seg.feed("It costs 3.") == []  # "3." may be "3.5"
    assert seg.feed("5 dollars. Then") == ["It costs 3.5 dollars."]
    assert seg.feed(" 1,") == []
    assert seg.feed("000 people, at 12:30") == ["Then 1,000 people,"]
    assert seg.flush() == ["at 12:30"]


def test_long_text_without_punctuation_is_cut_at_max_chars() -> None:
    seg = ClauseSegmenter(max_chars=10)
    assert seg.feed("一二三四五六七八九十十一十二") == ["一二三四五六七八九十"]
    assert seg.flush() == ["十一十二"]


def test_silent_pieces_are_dropped_and_closing_quotes_stripped() -> None:
    assert whole("“你好。”他说。。\n\n  ！") == ["“你好。", "他说。"]
    assert whole("   ") == []
    assert whole("……") == []


def test_reset_drops_pending_text() -> None:
    seg = ClauseSegmenter()
    seg.feed("说到一半")
    seg.reset()
    assert seg.feed("新的一句。") == ["新的一句。"]
    assert seg.flush() == []


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ClauseSegmenter(min_comma_chars=0)


SAMPLE = ("欢迎使用语音合成服务，这是一个流式合成的例子。它的价格是3.5元，一共1,000份，时间是12:30！"
          "“好的。”Then we said: hello, world. This is fine... 最后一句没有标点")


@pytest.mark.parametrize("seed", range(20))
def test_one_to_three_character_deltas_give_the_clauses_of_the_whole_text(seed: int) -> None:
    rng = random.Random(seed)
    sizes = [rng.randint(1, 3) for _ in range(len(SAMPLE))]
    expected = whole(SAMPLE, min_comma_chars=4, max_chars=30)
    assert len(expected) > 6
    assert in_deltas(SAMPLE, sizes, min_comma_chars=4, max_chars=30) == expected


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("你好ab1 ，,.。!?：:\n”")), max_size=60),
       sizes=st.lists(st.integers(1, 4), max_size=60), min_comma=st.integers(1, 6), max_chars=st.integers(1, 20))
def test_any_split_gives_the_same_clauses(text: str, sizes: list[int], min_comma: int, max_chars: int) -> None:
    expected = whole(text, min_comma_chars=min_comma, max_chars=max_chars)
    assert in_deltas(text, sizes, min_comma_chars=min_comma, max_chars=max_chars) == expected
    # Nothing is lost: every letter and digit is in exactly one clause, in order.
    assert "".join(c for c in "".join(expected) if c.isalnum()) == "".join(c for c in text if c.isalnum())
