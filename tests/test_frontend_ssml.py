"""SSML subset: accepted documents and their effect, rejected documents and their messages."""

from __future__ import annotations

import pytest

from tts_server.inference.frontend import Frontend, FrontendError, Utterance

EMOTIONS = ("neutral", "happy", "sad")


@pytest.fixture(scope="module")
def frontend() -> Frontend:
    return Frontend()


def run(frontend: Frontend, text: str, ssml: bool = True) -> list[Utterance]:
    return frontend.process(text, speaker="F7", emotion="neutral", allowed_emotions=EMOTIONS, ssml=ssml)


def emotions_of(utt: Utterance) -> list[str]:
    return [tok[1:-1].split("$")[4] for tok in utt.symbols.split()]


def test_plain_speak_equals_plain_text(frontend: Frontend) -> None:
    assert run(frontend, "<speak>北京今天天气怎么样</speak>") == run(frontend, "北京今天天气怎么样", ssml=False)


def test_text_is_never_parsed_as_ssml(frontend: Frontend) -> None:
    """Whether the input is SSML is declared, not guessed: the default is plain text, whatever it looks like."""
    doc = '<speak>你好<break time="1s"/>世界</speak>'
    as_text = frontend.process(doc, speaker="F7", emotion="neutral", allowed_emotions=EMOTIONS)
    assert as_text == run(frontend, doc, ssml=False)
    # Read as text, the markup is letters and punctuation: one sentence, no silence.
    assert [u.pause_after_s for u in as_text] == [0.0]
    assert frontend.pinyin("<speak>你好</speak>") == frontend.pinyin("speak 你好 speak")
    assert [u.pause_after_s for u in run(frontend, doc)] == [1.0, 0.0]
    with pytest.raises(FrontendError, match="not well-formed"):
        run(frontend, "你好")


def test_namespaced_document_with_xml_declaration(frontend: Frontend) -> None:
    doc = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<speak version="1.0" xmlns="http://www.w3.org/2001/10/synthesis" '
        'xml:lang="zh-CN">\n  <s>你好</s>\n  <s>世界</s>\n</speak>'
    )
    assert [u.symbols for u in run(frontend, doc)] == [u.symbols for u in run(frontend, "你好。世界。", ssml=False)]


@pytest.mark.parametrize(
    ("attrs", "seconds"),
    [('time="300ms"', 0.3), ('time="1.5s"', 1.5), ('time="5s"', 5.0), ('strength="strong"', 0.7), ("", 0.4),
     ('strength="none"', 0.0)],
)  # fmt: skip
def test_break(frontend: Frontend, attrs: str, seconds: float) -> None:
    utts = run(frontend, f"<speak>你好<break {attrs}/>世界</speak>")
    assert len(utts) == 2
    assert utts[0].pause_after_s == pytest.approx(seconds)
    assert utts[1].pause_after_s == 0.0


def test_consecutive_breaks_add_up_to_the_cap(frontend: Frontend) -> None:
    utts = run(frontend, '<speak>你好<break time="4s"/><break time="4s"/>世界<break time="1s"/></speak>')
    assert [u.pause_after_s for u in utts] == [5.0, 1.0]


def test_emotion_span(frontend: Frontend) -> None:
    (utt,) = run(frontend, '<speak>你好<emotion category="happy">世界</emotion></speak>')
    assert emotions_of(utt) == ["emotion_neutral"] * 4 + ["emotion_none"] + ["emotion_happy"] * 4 + ["emotion_none"]


def test_emotion_category_may_carry_the_symbol_prefix(frontend: Frontend) -> None:
    (utt,) = run(frontend, '<speak><emotion category="emotion_sad">你好</emotion></speak>')
    assert set(emotions_of(utt)) == {"emotion_sad", "emotion_none"}


def test_prosody_rate(frontend: Frontend) -> None:
    utts = run(frontend, '<speak>你好<prosody rate="slow">世界<prosody rate="50%">好</prosody></prosody></speak>')
    assert [u.speed for u in utts] == [1.0, 0.75, 0.5]  # nested rates multiply, clamped to 0.5


@pytest.mark.parametrize(
    ("rate", "speed"),
    [("x-fast", 1.5), ("120%", 1.2), ("+20%", 1.2), ("-20%", 0.8), ("1.3", 1.3), ("medium", 1.0)],
)
def test_prosody_rate_values(frontend: Frontend, rate: str, speed: float) -> None:
    (utt,) = run(frontend, f'<speak><prosody rate="{rate}">你好</prosody></speak>')
    assert utt.speed == pytest.approx(speed)


@pytest.mark.parametrize(
    ("element", "expected"),
    [
        ('<say-as interpret-as="digits">2024</say-as>', "er4 ling2 er4 si4"),
        ('<say-as interpret-as="telephone">110</say-as>', "yao1 yao1 ling2"),
        ('<say-as interpret-as="cardinal">2024</say-as>', "liang3 qian1 ling2 er4 shi2 si4"),
        (
            '<say-as interpret-as="cardinal">1234567</say-as>',
            "yi4 bai3 er4 shi2 san1 wan4 #1 si4 qian1 wu2 bai3 liu4 shi2 qi1",
        ),
        ('<say-as interpret-as="time">08:30</say-as>', "ba1 dian3 #1 san1 shi2 fen1"),
        ('<phoneme alphabet="py" ph="chong2 qing4">重庆</phoneme>', "chong2 qing4"),
        ('<phoneme ph="zhong4">重</phoneme>', "zhong4"),
        ('<phoneme ph="lü4 nv3">绿女</phoneme>', "lv4 nv3"),
        ('<sub alias="世界卫生组织">WHO</sub>', "shi4 jie4 #1 wei4 sheng1 #1 zu3 zhi1"),
    ],
)
def test_say_as_phoneme_sub(frontend: Frontend, element: str, expected: str) -> None:
    assert frontend.pinyin(f"<speak>{element}</speak>", ssml=True) == [expected + " #4"]


def test_phoneme_is_not_changed_by_sandhi(frontend: Frontend) -> None:
    assert frontend.pinyin('<speak><phoneme ph="ni3 hao3">你好</phoneme></speak>', ssml=True) == ["ni3 hao3 #4"]


REJECTED = [
    ("<speak><audio src='x.wav'/></speak>", "<audio>"),
    ("<speak><voice name='x'>你好</voice></speak>", "<voice>"),
    ("<speak><prosody contour='(0%,+20Hz)'>你好</prosody></speak>", "'contour' on <prosody>"),
    ("<speak><prosody pitch='+2st'>你好</prosody></speak>", "<prosody pitch='+2st'>"),
    ("<speak><break time='10s'/></speak>", "<break time='10s'>"),
    ("<speak><break time='soon'/></speak>", "<break time='soon'>"),
    ("<speak><break strength='huge'/></speak>", "<break strength='huge'>"),
    ("<speak><break>你好</break></speak>", "<break> must be empty"),
    ("<speak><prosody rate='10'>你好</prosody></speak>", "<prosody rate='10'>"),
    ("<speak><prosody rate='fastest'>你好</prosody></speak>", "<prosody rate='fastest'>"),
    ("<speak><say-as interpret-as='spell-out'>abc</say-as></speak>", "interpret-as='spell-out'"),
    ("<speak><say-as interpret-as='date'>明天</say-as></speak>", "interpret-as='date'"),
    ("<speak><say-as>12</say-as></speak>", "<say-as> needs interpret-as"),
    ("<speak><say-as interpret-as='digits'>1<break/>2</say-as></speak>", "<say-as> may contain only text"),
    ("<speak><phoneme ph='xyz9'>你</phoneme></speak>", "<phoneme ph='xyz9'>"),
    ("<speak><phoneme ph='zhv3'>你</phoneme></speak>", "<phoneme ph='zhv3'>"),
    ("<speak><phoneme>你</phoneme></speak>", "<phoneme> needs ph"),
    ("<speak><phoneme ph='ni3' alphabet='ipa'>你</phoneme></speak>", "alphabet='ipa'"),
    ("<speak><sub>WHO</sub></speak>", "<sub> needs alias"),
    ("<speak><speak>你好</speak></speak>", "root element only"),
    ("<p>你好</p>", "root element must be <speak>"),
    ("<speak>你好", "not well-formed"),
    ("<speak>你好</speek>", "not well-formed"),
    ("<speak><x:y xmlns:x='urn:evil'>你好</x:y></speak>", "namespace"),
    ("<speak>" + "<s>" * 20 + "你好" + "</s>" * 20 + "</speak>", "nested deeper"),
]


@pytest.mark.parametrize(("doc", "message"), REJECTED)
def test_rejected(frontend: Frontend, doc: str, message: str) -> None:
    with pytest.raises(FrontendError) as info:
        run(frontend, doc, ssml=True)
    assert message in info.value.public_message
    assert info.value.public_message.startswith("invalid SSML")
    assert info.value.param == "text"
    assert info.value.client_error


def test_unknown_emotion_names_the_allowed_ones(frontend: Frontend) -> None:
    with pytest.raises(FrontendError) as info:
        run(frontend, '<speak><emotion category="furious">你好</emotion></speak>')
    assert info.value.param == "emotion"
    assert "'furious'" in info.value.public_message
    assert "happy, neutral, sad" in info.value.public_message


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<speak>&lol9;</speak>"""

EXTERNAL_ENTITY = """<?xml version="1.0"?>
<!DOCTYPE speak [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<speak>&xxe;</speak>"""

EXTERNAL_DTD = """<?xml version="1.0"?>
<!DOCTYPE speak SYSTEM "http://example.com/speak.dtd">
<speak>你好</speak>"""


def _without_prolog(doc: str) -> str:
    return doc.removeprefix('<?xml version="1.0"?>\n')


@pytest.mark.parametrize(
    "doc",
    [BILLION_LAUGHS, EXTERNAL_ENTITY, EXTERNAL_DTD,
     _without_prolog(BILLION_LAUGHS), _without_prolog(EXTERNAL_ENTITY), _without_prolog(EXTERNAL_DTD)],
)  # fmt: skip
def test_dtds_and_entities_refused(frontend: Frontend, doc: str) -> None:
    with pytest.raises(FrontendError, match="not allowed") as info:
        run(frontend, doc)
    assert info.value.client_error
    assert info.value.param == "text"


def test_billion_laughs_as_text_is_only_text(frontend: Frontend) -> None:
    """Declared as text, a DTD is never parsed: entity references are read as the characters they are."""
    doc = _without_prolog(BILLION_LAUGHS)
    assert not doc.startswith("<?xml")
    readings = " ".join(frontend.pinyin(doc))
    # Each reference is spelled once (l-o-l ...), never expanded: the reading stays the size of the document.
    assert len(readings.split()) < 10 * len(doc)


def test_undefined_entity_is_a_parse_error(frontend: Frontend) -> None:
    with pytest.raises(FrontendError, match="not well-formed"):
        run(frontend, "<speak>&xxe;</speak>")


def test_predefined_entities_are_fine(frontend: Frontend) -> None:
    assert frontend.pinyin("<speak>A&amp;B</speak>", ssml=True) == ["ei1 #1 he2 #1 bi4 #4"]
