"""SSML subset -> spans of normalised text with emotion and prosody, and breaks.

Supported: ``<speak>`` (root), ``<break time|strength>``, ``<emotion category>``, ``<prosody rate pitch volume>``,
``<say-as interpret-as="digits|cardinal|telephone|date|time">``, ``<phoneme ph="pin1 yin1">``, ``<sub alias>``,
``<p>``, ``<s>`` and ``<mark name>``. Elements and attributes are allow-listed; anything else is rejected with an
error naming it. Parsing goes through defusedxml: DTDs, entity declarations and external references are refused.

Every piece of text keeps the offsets of the document characters it came from (``Span.sources``), so timestamps
point into the SSML the client sent: a ``<sub>`` alias and a ``<say-as>`` reading stand for the element's content.
"""

from __future__ import annotations

import bisect
import re
import xml.etree.ElementTree as ET
import xml.parsers.expat
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace

import defusedxml
import defusedxml.ElementTree as SafeET

from tts_server.inference.engine import PITCH_MAX, PITCH_MIN, VOLUME_DB_MAX, VOLUME_DB_MIN
from tts_server.inference.frontend.errors import FrontendError
from tts_server.inference.frontend.normalize import Reading, Segment, TracedSegment, covering, normalize_traced, say_as
from tts_server.inference.frontend.symbols import Syllable, SyllableError, parse_pinyin
from tts_server.inference.frontend.trace import Src, Traced

SSML_NS = "http://www.w3.org/2001/10/synthesis"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"

MAX_BREAK_S = 5.0
MAX_DEPTH = 16
MIN_RATE, MAX_RATE = 0.5, 2.0

_ALLOWED: dict[str, frozenset[str]] = {
    "speak": frozenset({"version", _XML_LANG}),
    "break": frozenset({"time", "strength"}),
    "emotion": frozenset({"category"}),
    "prosody": frozenset({"rate", "pitch", "volume"}),
    "say-as": frozenset({"interpret-as", "format"}),
    "phoneme": frozenset({"ph", "alphabet"}),
    "sub": frozenset({"alias"}),
    "mark": frozenset({"name"}),
    "p": frozenset({_XML_LANG}),
    "s": frozenset({_XML_LANG}),
}
_STRENGTHS = {"none": 0.0, "x-weak": 0.1, "weak": 0.2, "medium": 0.4, "strong": 0.7, "x-strong": 1.0}
_RATES = {"x-slow": 0.5, "slow": 0.75, "medium": 1.0, "default": 1.0, "fast": 1.25, "x-fast": 1.5}
# Named pitches, in the model's normalised pitch units (see ``inference.engine.PITCH_MIN``).
_PITCHES = {"x-low": -1.0, "low": -0.5, "medium": 0.0, "default": 0.0, "high": 0.5, "x-high": 1.0}
_VOLUMES = {"x-soft": -12.0, "soft": -6.0, "medium": 0.0, "default": 0.0, "loud": 6.0, "x-loud": 12.0}
_SAY_AS = ("digits", "cardinal", "telephone", "date", "time")
_PHONEME_ALPHABETS = ("py", "pinyin")
_WS_RE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Span:
    """Normalised text read with one emotion, speed, pitch shift and volume gain (dB). ``sources[i]`` says where
    ``segments[i]`` came from (see ``normalize.TracedSegment``); empty when unknown."""

    segments: tuple[Segment, ...]
    emotion: str
    speed: float
    pitch: float = 0.0
    volume_db: float = 0.0
    sources: tuple[tuple[Src, ...], ...] = ()


@dataclass(frozen=True, slots=True)
class _Prosody:
    speed: float = 1.0
    pitch: float = 0.0
    volume_db: float = 0.0

    def span(self, segments: list[TracedSegment], emotion: str) -> Span:
        return Span(
            tuple(seg for seg, _ in segments), emotion, self.speed, self.pitch, self.volume_db,
            tuple(src for _, src in segments),
        )


@dataclass(frozen=True, slots=True)
class BreakMark:
    """A silence of ``seconds`` (ends the current sentence)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class NamedMark:
    """SSML ``<mark name>``: a point in the text whose time in the audio is reported with the timestamps."""

    name: str


@dataclass(frozen=True, slots=True)
class SentenceMark:
    """End of an SSML ``<s>`` or ``<p>``: the sentence ends here even without punctuation."""


Item = Span | BreakMark | SentenceMark | NamedMark


def _fail(message: str, param: str = "text") -> FrontendError:
    return FrontendError(f"invalid SSML: {message}", param=param)


def _tag(el: ET.Element) -> str:
    tag = el.tag
    if not isinstance(tag, str):
        raise _fail("comments and processing instructions are not supported")
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        if ns != SSML_NS:
            raise _fail(f"element <{local}> in namespace {ns!r} is not supported")
        return local
    return tag


def parse_break(time: str | None, strength: str | None) -> float:
    if time is not None:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s)\s*", time)
        if m is None:
            raise _fail(f"<break time={time!r}>: expected a duration such as '300ms' or '1.5s'")
        seconds = float(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0)
        if seconds > MAX_BREAK_S:
            raise _fail(f"<break time={time!r}>: at most {MAX_BREAK_S:g}s")
        return seconds
    if strength is not None:
        if strength not in _STRENGTHS:
            raise _fail(f"<break strength={strength!r}>: expected one of {', '.join(_STRENGTHS)}")
        return _STRENGTHS[strength]
    return _STRENGTHS["medium"]


def parse_rate(rate: str) -> float:
    value = rate.strip()
    factor: float | None = _RATES.get(value)
    if factor is None:
        m = re.fullmatch(r"([+-]?)(\d+(?:\.\d+)?)(%?)", value)
        if m is not None:
            number = float(m.group(2))
            if m.group(3) and m.group(1):
                factor = 1.0 + (number if m.group(1) == "+" else -number) / 100.0
            elif m.group(3):
                factor = number / 100.0
            elif not m.group(1):
                factor = number
    if factor is None or not MIN_RATE <= factor <= MAX_RATE:
        raise _fail(
            f"<prosody rate={rate!r}>: expected {', '.join(_RATES)}, a percentage or a factor "
            f"between {MIN_RATE:g} and {MAX_RATE:g}"
        )
    return factor


def parse_pitch(pitch: str) -> float:
    """``x-low`` .. ``x-high`` or a signed number in the model's pitch units (``+0.5``): a shift added to the
    enclosing one. Semitones, Hz and percentages are refused: the model's pitch is normalised per speaker and the
    statistics that would convert them are not part of the model."""
    value = pitch.strip()
    shift = _PITCHES.get(value)
    if shift is None and re.fullmatch(r"[+-]\d+(?:\.\d+)?", value):
        shift = float(value)
    if shift is None or not PITCH_MIN <= shift <= PITCH_MAX:
        raise _fail(
            f"<prosody pitch={pitch!r}>: expected {', '.join(_PITCHES)} or a signed shift in model pitch units "
            f"from {PITCH_MIN:+g} to {PITCH_MAX:+g} (e.g. +0.5; st, Hz and % are not supported)"
        )
    return shift


def parse_volume(volume: str) -> float:
    """``x-soft`` .. ``x-loud`` or a signed gain in dB (``+3dB``, ``-6dB``), added to the enclosing one."""
    value = volume.strip()
    gain = _VOLUMES.get(value)
    if gain is None:
        m = re.fullmatch(r"([+-]\d+(?:\.\d+)?)dB", value)
        if m is not None:
            gain = float(m.group(1))
    if gain is None or not VOLUME_DB_MIN <= gain <= VOLUME_DB_MAX:
        raise _fail(
            f"<prosody volume={volume!r}>: expected {', '.join(_VOLUMES)} or a signed gain in dB "
            f"from {VOLUME_DB_MIN:+g}dB to {VOLUME_DB_MAX:+g}dB (e.g. +3dB)"
        )
    return gain


def parse_phoneme(ph: str, check: Callable[[Syllable], None]) -> tuple[Syllable, ...]:
    parts = ph.replace(",", " ").split()
    if not parts:
        raise _fail("<phoneme ph>: empty")
    out = []
    for part in parts:
        try:
            syl = parse_pinyin(part)
            check(syl)
        except SyllableError as exc:
            raise _fail(f"<phoneme ph={ph!r}>: {exc}") from None
        out.append(syl)
    return tuple(out)


class _Walker:
    def __init__(
        self,
        emotion: str,
        allowed_emotions: Collection[str],
        check_syllable: Callable[[Syllable], None],
    ) -> None:
        self.items: list[Item] = []
        self.allowed_emotions = allowed_emotions
        self.check_syllable = check_syllable
        self.root_emotion = emotion
        self.locations: dict[int, _Location] = {}
        self.document: Src = (0, 0)

    def node(self, el: ET.Element, tail: bool = False) -> Traced:
        """``el.text`` (or ``el.tail``) with its offsets in the document (the whole document if unknown)."""
        text = (el.tail if tail else el.text) or ""
        loc = self.locations.get(id(el))
        traced = None if loc is None else loc.tail if tail else loc.text
        if traced is None or traced.text != text:
            return Traced.covering(text, self.document)
        return traced

    def content_span(self, el: ET.Element) -> Src:
        """Where an element's content is (its whole extent when it has none): what an alias or reading stands for."""
        span = self.node(el).span()
        if span is None or span == self.document:
            loc = self.locations.get(id(el))
            return self.document if loc is None else loc.extent
        return span

    def text(self, text: Traced, emotion: str, prosody: _Prosody) -> None:
        if text.text:
            collapsed = text.sub(_WS_RE, " ")
            if collapsed.text.strip():
                self.items.append(prosody.span(normalize_traced(collapsed), emotion))

    def only_text(self, el: ET.Element, name: str) -> str:
        if len(el):
            raise _fail(f"<{name}> may contain only text, found <{_tag(el[0])}>")
        return el.text or ""

    def visit(self, el: ET.Element, emotion: str, prosody: _Prosody, depth: int) -> None:
        name = _tag(el)
        if depth > MAX_DEPTH:
            raise _fail(f"elements nested deeper than {MAX_DEPTH} levels")
        if name not in _ALLOWED:
            raise _fail(f"unsupported element <{name}>")
        if name == "speak" and depth != 0:
            raise _fail("<speak> must be the root element only")
        for attr in el.attrib:
            if attr not in _ALLOWED[name]:
                raise _fail(f"unsupported attribute {attr!r} on <{name}>")
        if name == "break":
            if len(el) or (el.text or "").strip():
                raise _fail("<break> must be empty")
            self.items.append(BreakMark(parse_break(el.get("time"), el.get("strength"))))
            return
        if name == "mark":
            if len(el) or (el.text or "").strip():
                raise _fail("<mark> must be empty")
            mark = el.get("name")
            if not mark or len(mark) > 256:
                raise _fail("<mark> needs a name of 1 to 256 characters")
            self.items.append(NamedMark(mark))
            return
        if name == "say-as":
            kind = el.get("interpret-as")
            if kind is None:
                raise _fail("<say-as> needs interpret-as")
            if kind not in _SAY_AS:
                raise _fail(f"<say-as interpret-as={kind!r}>: expected one of {', '.join(_SAY_AS)}")
            content = self.only_text(el, name)
            try:
                segments = say_as(content, kind)
            except ValueError as exc:
                raise _fail(f"<say-as interpret-as={kind!r}> cannot read {content.strip()!r}: {exc}") from None
            self.items.append(prosody.span(covering(segments, self.content_span(el)), emotion))
            return
        if name == "phoneme":
            ph = el.get("ph")
            if ph is None:
                raise _fail("<phoneme> needs ph")
            alphabet = el.get("alphabet")
            if alphabet is not None and alphabet not in _PHONEME_ALPHABETS:
                raise _fail(f"<phoneme alphabet={alphabet!r}>: only pinyin ('py') is supported")
            content = self.only_text(el, name)
            reading = Reading(parse_phoneme(ph, self.check_syllable), content.strip())
            self.items.append(prosody.span(covering([reading], self.content_span(el)), emotion))
            return
        if name == "sub":
            alias = el.get("alias")
            if alias is None:
                raise _fail("<sub> needs alias")
            self.only_text(el, name)
            self.text(Traced.covering(alias, self.content_span(el)), emotion, prosody)
            return
        if name == "emotion":
            category = el.get("category")
            if category is not None:
                category = category.strip().removeprefix("emotion_")
            if category is None:
                raise _fail("<emotion> needs category", param="emotion")
            if category not in self.allowed_emotions:
                raise FrontendError(
                    f"invalid SSML: <emotion category={category!r}>: this voice supports "
                    f"{', '.join(sorted(self.allowed_emotions))}",
                    param="emotion",
                )
            emotion = category
        elif name == "prosody":
            rate, pitch, volume = el.get("rate"), el.get("pitch"), el.get("volume")
            # Nested values compose (rates multiply, pitch shifts and gains add) and stay in range.
            if rate is not None:
                prosody = replace(prosody, speed=min(MAX_RATE, max(MIN_RATE, prosody.speed * parse_rate(rate))))
            if pitch is not None:
                prosody = replace(prosody, pitch=min(PITCH_MAX, max(PITCH_MIN, prosody.pitch + parse_pitch(pitch))))
            if volume is not None:
                gain = min(VOLUME_DB_MAX, max(VOLUME_DB_MIN, prosody.volume_db + parse_volume(volume)))
                prosody = replace(prosody, volume_db=gain)
        self.text(self.node(el), emotion, prosody)
        for child in el:
            self.visit(child, emotion, prosody, depth + 1)
            self.text(self.node(child, tail=True), emotion, prosody)
        if name in ("p", "s"):
            self.items.append(SentenceMark())


def parse_ssml(
    text: str,
    *,
    emotion: str,
    allowed_emotions: Collection[str],
    check_syllable: Callable[[Syllable], None],
) -> list[Item]:
    """Parse an SSML document into items; FrontendError (naming the element or attribute) for anything else."""
    try:
        root = SafeET.fromstring(text, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DTDForbidden:
        raise _fail("DTDs (<!DOCTYPE>) are not allowed") from None
    except defusedxml.EntitiesForbidden:
        raise _fail("entity declarations are not allowed") from None
    except defusedxml.ExternalReferenceForbidden:
        raise _fail("external references are not allowed") from None
    except defusedxml.DefusedXmlException:
        raise _fail("forbidden XML construct") from None
    except ET.ParseError as exc:
        raise _fail(f"not well-formed XML ({exc})") from None
    except (ValueError, UnicodeError):
        raise _fail("not well-formed XML") from None
    if _tag(root) != "speak":
        raise _fail(f"the root element must be <speak>, not <{_tag(root)}>")
    walker = _Walker(emotion, allowed_emotions, check_syllable)
    walker.document = (0, len(text))
    locations = _locate(text)
    elements = list(root.iter())
    if locations is not None and len(locations) == len(elements):
        walker.locations = {id(el): loc for el, loc in zip(elements, locations, strict=True)}
    walker.visit(root, emotion, _Prosody(), 0)
    return walker.items


@dataclass(slots=True)
class _Location:
    """Where an element is in the document: its extent, its text and its tail with their offsets."""

    extent: Src
    text: Traced
    tail: Traced


def _locate(document: str) -> list[_Location] | None:
    """The elements of an (already validated) document in document order, with offsets. ElementTree keeps none,
    so expat reads the document once more and reports where each piece of character data starts; a piece whose
    raw text is not the data itself (an entity or character reference, a normalised line break) stands as a
    whole for its raw extent. None if expat disagrees with the validated parse."""
    raw = document.encode("utf-8")
    char_at = [i for i, ch in enumerate(document) for _ in range(len(ch.encode("utf-8")))]
    char_at.append(len(document))
    positions: list[int] = []
    found: list[tuple[_Location, list[tuple[str, int]], list[tuple[str, int]]]] = []
    stack: list[int] = []
    target: list[list[tuple[str, int]]] = [[]]
    parser = xml.parsers.expat.ParserCreate()

    def start(_name: str, _attrs: dict[str, str]) -> None:
        positions.append(parser.CurrentByteIndex)
        text: list[tuple[str, int]] = []
        found.append((_Location((char_at[parser.CurrentByteIndex], 0), Traced("", ()), Traced("", ())), text, []))
        stack.append(len(found) - 1)
        target[0] = text

    def end(_name: str) -> None:
        positions.append(parser.CurrentByteIndex)
        loc, _text, tail = found[stack.pop()]
        begin = char_at[parser.CurrentByteIndex]
        close = document.find(">", begin)
        loc.extent = (loc.extent[0], len(document) if close < 0 else close + 1)
        target[0] = tail

    def data(chunk: str) -> None:
        positions.append(parser.CurrentByteIndex)
        target[0].append((chunk, parser.CurrentByteIndex))

    def other(*_args: object) -> None:
        positions.append(parser.CurrentByteIndex)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = data
    parser.CommentHandler = other
    parser.ProcessingInstructionHandler = other
    parser.StartCdataSectionHandler = other
    parser.EndCdataSectionHandler = other
    try:
        parser.Parse(document, True)
    except xml.parsers.expat.ExpatError:
        return None
    positions.sort()

    def traced(pieces: list[tuple[str, int]]) -> Traced:
        parts: list[Src] = []
        for chunk, at in pieces:
            i = bisect.bisect_right(positions, at)
            c0, c1 = char_at[at], char_at[positions[i] if i < len(positions) else len(raw)]
            if document[c0:c1] == chunk:
                parts.extend((c0 + k, c0 + k + 1) for k in range(len(chunk)))
            else:
                parts.extend([(c0, c1)] * len(chunk))
        return Traced("".join(chunk for chunk, _ in pieces), tuple(parts))

    out = []
    for loc, text, tail in found:
        loc.text, loc.tail = traced(text), traced(tail)
        out.append(loc)
    return out
