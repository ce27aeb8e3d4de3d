"""Pinyin syllables -> KAN-TTS phones and symbol tokens.

The published Sambert voices use the PinYin phone set: an initial phone plus a final phone per syllable, both
carrying the syllable's tone. The rules here reproduce the voice's ``py2phoneMap.txt`` (``x`` -> ``xx_c``;
``zhi/chi/shi/ri`` -> ``ih_c``; ``zi/ci/si`` -> ``ii_c``; ``y``/``w`` kept as initials; full finals ``iou``,
``uei``, ``uen``; zero-initial syllables get a ``ga``/``ge``/``go`` filler; erhua finals ``...r_c``) so that any
syllable, not only those listed in the file, gets phones.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import defusedxml.ElementTree as SafeET

_TWO_LETTER_INITIALS = ("zh", "ch", "sh")
_ONE_LETTER_INITIALS = frozenset("bpmfdtnlgkhjqxrzcsyw")
_ZERO_INITIAL_FINALS = frozenset({"a", "ai", "an", "ang", "ao", "e", "ei", "en", "eng", "er", "o", "ou"})
_Y_FINALS = frozenset({"a", "an", "ang", "ao", "e", "i", "in", "ing", "o", "ong", "ou", "v", "van", "ve", "vn"})
_W_FINALS = frozenset({"a", "ai", "an", "ang", "ei", "en", "eng", "o", "u"})
# Finals after a consonant initial, in the phone set's spelling (after the iu/ui/un and zhi/zi rewrites).
_CONSONANT_FINALS = frozenset(
    {
        "a", "ai", "an", "ang", "ao", "e", "ei", "en", "eng", "i", "ia", "ian", "iang", "iao", "ie", "in",
        "ing", "iong", "iou", "ih", "ii", "o", "ong", "ou", "u", "ua", "uai", "uan", "uang", "uei", "uen",
        "uo", "v", "van", "ve", "vn",
    }
)  # fmt: skip
_RETROFLEX = frozenset({"zh", "ch", "sh", "r"})
_DENTAL = frozenset({"z", "c", "s"})
_PALATAL = frozenset({"j", "q", "x"})


#: The Mandarin (non-English) phones of the published PinYin phone set, used when no inventory is given.
def words_of(text: str) -> list[str]:
    return text.split()


DEFAULT_PHONES: frozenset[str] = frozenset(
    words_of(
        "a_c ai_c an_c ang_c ao_c b_c c_c ch_c d_c e_c ei_c en_c eng_c er_c f_c g_c h_c i_c ia_c ian_c iang_c "
        "iao_c ie_c ih_c ii_c in_c ing_c io_c iong_c iou_c j_c k_c l_c m_c n_c o_c ong_c ou_c p_c q_c r_c s_c "
        "sh_c t_c u_c ua_c uai_c uan_c uang_c uei_c uen_c ueng_c uo_c v_c van_c ve_c vn_c xx_c z_c zh_c w_c y_c "
        "ga ge go air_c angr_c anr_c aor_c ar_c eir_c engr_c enr_c iangr_c ianr_c iaor_c iar_c ier_c ihr_c "
        "iir_c ingr_c inr_c iongr_c iour_c ir_c ongr_c or_c our_c uair_c uangr_c uanr_c uar_c ueir_c uenr_c "
        "uor_c ur_c vanr_c ver_c vnr_c vr_c"
    )
)

_PINYIN_RE = re.compile(r"^([a-zü:]+)([0-5]?)$")


class SyllableError(ValueError):
    """A string that is not a Mandarin pinyin syllable (or whose phones the inventory lacks)."""


@dataclass(frozen=True, slots=True)
class Syllable:
    """One syllable: ``base`` is toneless pinyin with ü written ``v`` and a trailing ``r`` for erhua."""

    base: str
    tone: int

    def __str__(self) -> str:
        return f"{self.base}{self.tone}"


def parse_pinyin(text: str) -> Syllable:
    """Parse ``zhuang4``, ``lv4``/``lü4``/``lu:4``, ``wanr2``, ``ma`` (no digit: neutral tone) into a syllable."""
    m = _PINYIN_RE.match(text.strip().lower())
    if m is None:
        raise SyllableError(f"not a pinyin syllable: {text!r}")
    base = m.group(1).replace("u:", "v").replace("ü", "v")
    if ":" in base or not base:
        raise SyllableError(f"not a pinyin syllable: {text!r}")
    tone = int(m.group(2)) if m.group(2) else 5
    if tone == 0:
        tone = 5
    return Syllable(base, tone)


def _split(base: str) -> tuple[str, str, bool]:
    """Toneless pinyin -> (initial letters, final in phone-set spelling, erhua)."""
    erhua = len(base) >= 2 and base.endswith("r") and base != "er"
    if erhua:
        base = base[:-1]
    initial = ""
    if base[:2] in _TWO_LETTER_INITIALS:
        initial = base[:2]
    elif base[:1] in _ONE_LETTER_INITIALS:
        initial = base[:1]
    rest = base[len(initial) :]
    if (initial in _PALATAL or initial == "y") and rest.startswith("u"):
        rest = "v" + rest[1:]  # after j/q/x/y a written u is ü
    if initial == "":
        if rest not in _ZERO_INITIAL_FINALS:
            raise SyllableError(f"not a pinyin syllable: {base!r}")
        if erhua and rest == "er":
            raise SyllableError(f"not a pinyin syllable: {base}r")
        return "", rest, erhua
    if initial == "y":
        if rest not in _Y_FINALS:
            raise SyllableError(f"not a pinyin syllable: {base!r}")
        return initial, rest, erhua
    if initial == "w":
        if rest not in _W_FINALS:
            raise SyllableError(f"not a pinyin syllable: {base!r}")
        return initial, rest, erhua
    final = {"iu": "iou", "ui": "uei", "un": "uen"}.get(rest, rest)
    if final == "i" and initial in _RETROFLEX:
        final = "ih"
    elif final == "i" and initial in _DENTAL:
        final = "ii"
    if final not in _CONSONANT_FINALS:
        raise SyllableError(f"not a pinyin syllable: {base!r}")
    if initial in _PALATAL and final[0] not in "iv":
        raise SyllableError(f"not a pinyin syllable: {base!r}")
    if initial not in _PALATAL and final[0] == "v" and not (initial in ("n", "l") and final in ("v", "ve")):
        raise SyllableError(f"not a pinyin syllable: {base!r}")
    if initial in _RETROFLEX | _DENTAL and final[0] == "i" and final not in ("ih", "ii"):
        raise SyllableError(f"not a pinyin syllable: {base!r}")
    if initial not in _RETROFLEX | _DENTAL and final in ("ih", "ii"):
        raise SyllableError(f"not a pinyin syllable: {base!r}")
    if final == "o" and initial not in ("b", "p", "m", "f", "l"):
        raise SyllableError(f"not a pinyin syllable: {base!r}")
    return initial, final, erhua


def syllable_phones(base: str, inventory: frozenset[str] = DEFAULT_PHONES) -> tuple[str, ...]:
    """Toneless pinyin (``zhuang``, ``lv``, ``wanr``) -> its phones, each checked against ``inventory``.

    An erhua final the inventory lacks falls back to the plain final (the ``r`` colouring is lost, the syllable
    is not); any other missing phone raises ``SyllableError``.
    """
    initial, final, erhua = _split(base)
    if initial == "":
        first = {"a": "ga", "e": "ge", "o": "go"}[final[0]]
    elif initial == "x":
        first = "xx_c"
    else:
        first = initial + "_c"
    final_phone = final + "_c"
    if erhua:
        colored = ("er" if final == "e" else final + "r") + "_c"
        if colored in inventory:
            final_phone = colored
    phones = (first, final_phone)
    for phone in phones:
        if phone not in inventory:
            raise SyllableError(f"phone {phone!r} of syllable {base!r} is not in the voice's phone set")
    return phones


def has_erhua_final(base: str, inventory: frozenset[str] = DEFAULT_PHONES) -> bool:
    """Whether toneless ``base`` (without the r) has an erhua final in ``inventory`` (wan -> anr_c)."""
    try:
        _, final, erhua = _split(base)
    except SyllableError:
        return False
    if erhua or final == "er":
        return False
    return ("er" if final == "e" else final + "r") + "_c" in inventory


class PhoneSetError(ValueError):
    """A ``PhoneSet.xml`` that is missing, not well-formed, or lists no phones; the message names the file."""


def _local_name(tag: object) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def read_phone_set(path: str | Path) -> list[str]:
    """Phone names of a KAN-TTS ``PhoneSet.xml`` (``<phoneSet><phone><name>``, namespaced or not) in file order,
    which is the order of the voice's phone embedding table."""
    try:
        root = SafeET.parse(str(path)).getroot()
    except FileNotFoundError:
        raise PhoneSetError(f"phone set {path} not found") from None
    except Exception as exc:  # defusedxml raises ParseError and its own security errors
        raise PhoneSetError(f"cannot parse phone set {path}: {exc}") from None
    if root is None:
        raise PhoneSetError(f"phone set {path} is empty")
    phones: list[str] = []
    for node in root:
        if _local_name(node.tag) != "phone":
            continue
        name = next((child for child in node if _local_name(child.tag) == "name"), None)
        text = (name.text or "").strip() if name is not None else ""
        if not text:
            raise PhoneSetError(f"{path}: a <phone> entry has no <name>")
        phones.append(text)
    if not phones:
        raise PhoneSetError(f"{path}: no <phone> entries")
    return phones


def load_phone_set(dict_dir: str | Path) -> frozenset[str]:
    """The phone inventory of a voice's ``dict/PinYin`` folder (its ``PhoneSet.xml``)."""
    return frozenset(read_phone_set(Path(dict_dir) / "PhoneSet.xml"))


def break_token(level: int, speaker: str) -> str:
    return f"{{#{level}$tone_none$s_none$word_none$emotion_none${speaker}}}"


def word_tokens(
    syllable_phones_list: Iterable[tuple[tuple[str, ...], int]], emotion_field: str, speaker: str
) -> list[str]:
    """Tokens for one word given each syllable's (phones, tone): syllable and word position flags filled in."""
    sylls = list(syllable_phones_list)
    total = sum(len(p) for p, _ in sylls)
    out: list[str] = []
    k = 0
    for phones, tone in sylls:
        for j, phone in enumerate(phones):
            s_flag = _position_flag("s", j, len(phones))
            w_flag = _position_flag("word", k, total)
            out.append(f"{{{phone}$tone{tone}${s_flag}${w_flag}${emotion_field}${speaker}}}")
            k += 1
    return out


def _position_flag(prefix: str, index: int, count: int) -> str:
    """Where item ``index`` of ``count`` sits (a phone in its syllable, or in its word): ``<prefix>_both`` for
    the only one, else ``_begin``, ``_end`` or ``_middle``."""
    if count == 1:
        return prefix + "_both"
    if index == 0:
        return prefix + "_begin"
    if index == count - 1:
        return prefix + "_end"
    return prefix + "_middle"
