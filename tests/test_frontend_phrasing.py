"""Prosodic phrasing: predicted #2 inside long comma-free stretches; punctuation levels unchanged."""

from __future__ import annotations

import re

import pytest

from tts_server.inference.frontend import Frontend
from tts_server.inference.frontend.core import MAX_PHRASE_SYLLABLES


@pytest.fixture(scope="module")
def frontend() -> Frontend:
    return Frontend(warm_up=False)


def _stretches(pinyin: str) -> list[list[str]]:
    """Syllable runs between breaks of level 2 or more, each run as its words."""
    runs: list[list[str]] = [[]]
    for part in re.split(r" (#\d) ", pinyin.removesuffix(" #4")):
        if part in ("#2", "#3", "#4"):
            runs.append([])
        elif part != "#1":
            runs[-1].append(part)
    return runs


LONG = [
    "他们昨天下午在学校图书馆里认真地复习了一整天的功课",
    "这是我见过的最漂亮的一座古老的石桥",
    "我们公司的技术人员正在努力解决这个非常复杂的问题",
    "那位穿着红色衣服的小姑娘把自己的玩具送给了邻居家的孩子",
]


@pytest.mark.parametrize("text", LONG)
def test_long_clause_gets_breaks(frontend: Frontend, text: str) -> None:
    (pinyin,) = frontend.pinyin(text)
    assert "#2" in pinyin
    for run in _stretches(pinyin):
        syllables = sum(len(w.split()) for w in run)
        assert syllables <= MAX_PHRASE_SYLLABLES or len(run) == 1, pinyin


def test_break_at_grammatical_places(frontend: Frontend) -> None:
    # Before the prepositional predicate, and after the 的-phrase.
    (a,) = frontend.pinyin("他们昨天下午在学校图书馆里认真地复习了一整天的功课")
    assert a.startswith("ta1 men5 #1 zuo2 tian1 #1 xia4 wu3 #2 zai4 ")
    (b,) = frontend.pinyin("这是我见过的最漂亮的一座古老的石桥")
    assert " de5 #2 " in b
    # 地 before its verb stays the particle even though the stretch is cut nearby.
    assert "ren4 zhen1 #1 de5 #1 fu4 xi2" in a


def test_no_break_inside_a_word(frontend: Frontend) -> None:
    (pinyin,) = frontend.pinyin("中华人民共和国国务院新闻办公室")
    words = frontend.pinyin("中华人民共和国")[0].removesuffix(" #4").split(" #1 ")
    # The word boundaries are unchanged; only one of them became a #2.
    assert pinyin.replace("#2", "#1").startswith(" #1 ".join(words))
    assert pinyin.count("#2") == 1


@pytest.mark.parametrize(
    "text",
    ["北京今天天气怎么样", "我们今天去公园", "这个地方非常漂亮", "然后还要去吃饭"],
)
def test_short_stretch_has_no_predicted_break(frontend: Frontend, text: str) -> None:
    assert "#2" not in frontend.pinyin(text)[0]


def test_punctuation_levels_unchanged(frontend: Frontend) -> None:
    (pinyin,) = frontend.pinyin("我们今天去公园，散步、然后还要去吃饭，这个地方非常漂亮。")
    assert [t for t in pinyin.split() if t.startswith("#") and t != "#1"] == ["#3", "#2", "#3", "#4"]
    assert frontend.pinyin("你好，世界！再见。") == ["ni2 hao3 #3 shi4 jie4 #4", "zai4 jian4 #4"]


def test_one_long_word_is_not_cut(frontend: Frontend) -> None:
    from tts_server.inference.frontend.core import _cut_stretch
    from tts_server.inference.frontend.pinyin import Word, word_reading

    syllables, chars = word_reading("中华人民共和国国务院")
    word = Word(list(syllables), list(chars), "neutral")
    assert _cut_stretch([word]) == [word]
