"""Issue 15 step 1: every syllable the frontend emits points back at the original text it stands for."""

from __future__ import annotations

from tts_server.inference.frontend import Frontend


def sources(text: str, ssml: bool = False) -> list[tuple[str, str]]:
    frontend = Frontend(warm_up=False)
    out = []
    for utt in frontend.process(text, speaker="F7", emotion="neutral", allowed_emotions=(), ssml=ssml):
        for unit in utt.units:
            if unit.kind == "syllable":
                assert unit.source is not None
                out.append((unit.label, text[unit.source[0] : unit.source[1]]))
            elif unit.kind == "mark":
                out.append(("mark", unit.label))
    return out


def test_numbers_map_to_their_digits() -> None:
    got = sources("北京2026年")
    assert got[:2] == [("bei3", "北"), ("jing1", "京")]
    assert [s for _, s in got[2:]] == ["2026年"] * 5


def test_sub_alias_and_mark_map_to_the_element() -> None:
    got = sources('<speak>你好<mark name="a"/>，<sub alias="世界">WHO</sub>&amp;</speak>', ssml=True)
    assert got == [("ni2", "你"), ("hao3", "好"), ("mark", "a"), ("shi4", "WHO"), ("jie4", "WHO"), ("he2", "&amp;")]
