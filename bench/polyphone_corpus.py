"""Turn a pinyin-labelled Chinese sentence corpus into training data for ``bench/train_polyphone.py``.

    python bench/polyphone_corpus.py --format baker 000001-010000.txt OUT/baker --exclude CPP/dev
    python bench/polyphone_corpus.py --format aishell3 content.txt OUT/aishell3 --exclude CPP/dev

The corpora are not in the repository; a GitHub copy is read with ``git --git-dir=MIRROR show HEAD:PATH > FILE``
after the ``fetch`` tool (or a ``git clone``) brings the repository named below.

writes ``OUT/baker.sent`` / ``OUT/baker.lb`` in the CPP format (the polyphone between two U+2581 marks, one TONE3
label per line), one line per labelled polyphone: a sentence with three polyphones gives three lines. A
polyphone is a character the reader decides (g2pM's polyphonic characters, ``polyphone.PolyphoneModel.is_polyphone``).

Formats (each labels every Chinese character of the sentence, as spoken by the speaker):

- ``baker``: the Baker/BZNSYP ``ProsodyLabeling/000001-010000.txt``: a line ``000001<TAB>卡尔普#2陪外孙#1玩滑梯#4。``
  (prosody marks ``#N`` are dropped) followed by a line ``<TAB>ka2 er2 pu3 ...``, one syllable per character; an
  erhua syllable (``wanr1``) covers its character and the 儿 after it. 10,000 sentences; a copy is in
  PlayVoice/vits_chinese (``data/000001-010000.txt``). Licence: Baker's, non-commercial use only: fine for
  measuring, not for a shipped model.
- ``aishell3``: AISHELL-3 ``train/content.txt`` / ``test/content.txt``: ``SSB00050001.wav<TAB>广 guang3 州 zhou1
  ...`` (character and syllable alternating; 88k sentences, from openslr.org/93). Licence: Apache-2.0.
- ``phones``: AISHELL-3's labels respelt as initials and finals, ``ID|wav|speaker|汉字|sil t a1 #0 z ou3 ... sil``:
  sos1sos2Sixteen/speechhome-aishell-3-tts ``filelists/ai3.test.txt`` (3,381 sentences, nearly all of AISHELL-3's
  test speakers; the repository states no licence of its own, the labels are AISHELL-3's, Apache-2.0).

Spoken to lexical. These labels are what was said: third-tone sandhi written out (好好 hao2 hao3), neutral tones
(地 di5 in 土地), while CPP labels, which the reader learns, are citation readings. A label is mapped onto one of
the character's candidate readings only when that is unambiguous, and dropped otherwise (the counts are
printed, by reason):

- a label among the candidates is kept, except a tone-2 label of a character that also has the tone-3 reading of
  that syllable when the next character is labelled tone 2 or 3 (it may be a sandhi-raised tone 3): dropped;
- a tone-2 label that is not a candidate becomes the tone-3 candidate of the same syllable when the next
  character is labelled tone 2 or 3 (third-tone sandhi), and is dropped otherwise;
- a tone-5 label becomes the one candidate with that syllable, if there is exactly one, and is dropped otherwise
  (CPP spells many neutral-toned characters with their citation tone: 子 zi3 and zi5, 得 de2 and de5, 头 tou2;
  keeping a tone-5 label whenever it is a candidate scored 96.52% / 96.94% with Baker, against 96.60% / 97.02%);
- anything else (another syllable, erhua, no tone) is dropped.

Sentences whose Chinese characters also occur within a CPP dev sentence (``--exclude``) are dropped, so that the
cross-validated CPP dev figure stays held out; ``train_polyphone.py --exclude`` only drops exact repeats. CPP test
is never read.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "src")]

MARK = "\u2581"
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_SYLLABLE = re.compile(r"([a-zü:]+?)([1-5])")


@dataclass(frozen=True)
class Sentence:
    text: str
    labels: tuple[str | None, ...]  # per character of ``text``: its spoken TONE3 label, None where unlabelled


def _norm(reading: str) -> str:
    return reading.strip().lower().replace("u:", "v").replace("ü", "v")


def _split(reading: str) -> tuple[str, str] | None:
    m = _SYLLABLE.fullmatch(_norm(reading))
    return (m.group(1), m.group(2)) if m else None


def _is_erhua(syllable: str) -> bool:
    return syllable.endswith("r") and syllable != "er"


def align(text: str, syllables: list[str]) -> Sentence | None:
    """Give each Chinese character of ``text`` its syllable; None when they do not line up. An erhua syllable
    (``wanr1``) belongs to its character and the 儿 after it: both are left unlabelled."""
    labels: list[str | None] = [None] * len(text)
    it = iter(syllables)
    skip_er = False
    for i, ch in enumerate(text):
        if not _HAN.match(ch):
            continue
        if skip_er and ch == "儿":
            skip_er = False
            continue
        syl = next(it, None)
        if syl is None:
            return None
        parts = _split(syl)
        if parts is not None and _is_erhua(parts[0]):
            skip_er = True
        else:
            labels[i] = _norm(syl)
    if next(it, None) is not None:
        return None
    return Sentence(text, tuple(labels))


def read_baker(lines: Iterable[str]) -> Iterator[Sentence | None]:
    """None for a sentence whose syllables do not line up with its characters."""
    text: str | None = None
    for line in lines:
        if not line.strip():
            continue
        if not line[0].isspace() and "\t" in line:
            text = re.sub(r"#\d", "", line.split("\t", 1)[1].strip())
        elif text is not None:
            yield align(text, line.split())
            text = None


def read_aishell3(lines: Iterable[str]) -> Iterator[Sentence | None]:
    for line in lines:
        if "\t" not in line:
            continue
        tokens = line.split("\t", 1)[1].split()
        if len(tokens) % 2:
            yield None
            continue
        chars, syllables = tokens[0::2], tokens[1::2]
        if any(len(c) != 1 for c in chars):
            yield None
            continue
        yield align("".join(chars), syllables)


# Initial/final spelling (TensorFlowTTS's Baker/AISHELL-3 preprocessing: ``^`` for no initial, ``ii``/``iii``
# for the apical vowels, ``iou``/``uei``/``uen`` unabridged, ``v`` for ü) back to pinyin.
_ZERO_INITIAL = {"i": "yi", "ia": "ya", "ian": "yan", "iang": "yang", "iao": "yao", "ie": "ye", "in": "yin",
                 "ing": "ying", "iong": "yong", "iou": "you", "u": "wu", "ua": "wa", "uai": "wai", "uan": "wan",
                 "uang": "wang", "uei": "wei", "uen": "wen", "ueng": "weng", "uo": "wo", "v": "yu", "van": "yuan",
                 "ve": "yue", "vn": "yun"}  # fmt: skip
_AFTER_INITIAL = {"ii": "i", "iii": "i", "iou": "iu", "uei": "ui", "uen": "un"}
_ER_CHARS = frozenset("儿二而尔耳饵洱贰迩")


def phones_to_pinyin(initial: str, final: str) -> str:
    """``("^", "iou3")`` -> ``you3``, ``("sh", "iii2")`` -> ``shi2``, ``("q", "vn2")`` -> ``qun2``."""
    tone, final = final[-1], final[:-1]
    if initial == "^":
        return _ZERO_INITIAL.get(final, final) + tone
    final = _AFTER_INITIAL.get(final, final)
    if initial in ("j", "q", "x") and final.startswith("v"):
        final = "u" + final[1:]
    return initial + final + tone


def read_phones(lines: Iterable[str]) -> Iterator[Sentence | None]:
    """``ID|wav|speaker|汉字|sil t a1 #0 z ou3 ... sil`` (a filelist of sos1sos2Sixteen/speechhome-aishell-3-tts,
    AISHELL-3's own labels respelt as initials and finals). ``^ e4 er5`` is the syllable er4 on 二/而/儿...; on
    any other character a trailing ``er5`` is erhua, which takes the 儿 after it."""
    for line in lines:
        fields = line.rstrip("\n").split("|")
        if len(fields) < 5:
            continue
        text = re.sub(r"#\d", "", fields[3])
        groups: list[list[str]] = [[]]
        for token in fields[4].split():
            if token == "sil" or token.startswith("#"):
                groups.append([])
            else:
                groups[-1].append(token)
        syllables: list[str] = []
        han = [ch for ch in text if _HAN.match(ch)]
        ok = True
        for group in (g for g in groups if g):
            if len(group) == 3 and group[2] == "er5":
                if group[0] == "^" and group[1][:-1] == "e" and len(syllables) < len(han) \
                        and han[len(syllables)] in _ER_CHARS:  # fmt: skip
                    syllables.append("er" + group[1][-1])
                    continue
                syllables.append(phones_to_pinyin(group[0], group[1])[:-1] + "r" + group[1][-1])  # erhua
            elif len(group) == 2 and group[1][-1:].isdigit():
                syllables.append(phones_to_pinyin(group[0], group[1]))
            else:
                ok = False
                break
        yield align(text, syllables) if ok else None


READERS: dict[str, Callable[[Iterable[str]], Iterator[Sentence | None]]] = {
    "baker": read_baker, "aishell3": read_aishell3, "phones": read_phones,
}  # fmt: skip


def lexical(spoken: str, candidates: tuple[str, ...], next_tone: str | None) -> tuple[str | None, str]:
    """The candidate reading a spoken label stands for, or None; and why (for the counts)."""
    parts = _split(spoken)
    if parts is None:
        return None, "no tone"
    syllable, tone = parts
    normed = {_norm(c): c for c in candidates}
    same = {t: c for c, (s, t) in ((c, _split(n) or ("", "")) for n, c in normed.items()) if s == syllable}
    if not same:
        return None, "not a candidate"
    if tone == "5":
        # CPP spells many neutral-toned characters with their citation tone (子 zi3, 头 tou2, 得 de2 beside de5):
        # a spoken tone 5 only says which syllable it is.
        if len(same) == 1:
            return next(iter(same.values())), "neutral tone" if "5" not in same else "kept"
        return None, "neutral tone, several readings"
    if tone == "2" and next_tone in ("2", "3") and "3" in same:
        if "2" in same:
            return None, "tone 2 or sandhi-raised 3"
        return same["3"], "third-tone sandhi"
    if tone in same:
        return same[tone], "kept"
    return None, "not a candidate"


def _next_tone(sentence: Sentence, i: int) -> str | None:
    if i + 1 >= len(sentence.text) or sentence.labels[i + 1] is None:
        return None
    parts = _split(sentence.labels[i + 1] or "")
    return parts[1] if parts else None


def convert(sentences: Iterable[Sentence | None], candidates: Callable[[str], tuple[str, ...]],
            excluded: str = "") -> tuple[list[tuple[str, str]], collections.Counter[str]]:  # fmt: skip
    """(marked sentence, label) per polyphone, and counts by outcome. ``excluded``: newline-joined Chinese
    characters of the sentences to keep out (a sentence found within one of them is dropped)."""
    out: list[tuple[str, str]] = []
    counts: collections.Counter[str] = collections.Counter()
    seen: set[str] = set()
    for sentence in sentences:
        if sentence is None:
            counts["sentence: syllables do not line up"] += 1
            continue
        han = "".join(ch for ch in sentence.text if _HAN.match(ch))
        if not han or han in seen:
            counts["sentence: empty or repeated"] += 1
            continue
        seen.add(han)
        if excluded and han in excluded:
            counts["sentence: in the excluded set"] += 1
            continue
        counts["sentence: used"] += 1
        for i, (ch, spoken) in enumerate(zip(sentence.text, sentence.labels, strict=True)):
            readings = candidates(ch)
            if len(readings) < 2:
                continue
            if spoken is None:
                counts["polyphone: unlabelled (erhua)"] += 1
                continue
            label, why = lexical(spoken, readings, _next_tone(sentence, i))
            counts[f"polyphone: {why}"] += 1
            if label is not None:
                out.append((sentence.text[:i] + MARK + ch + MARK + sentence.text[i + 1 :], label))
    return out, counts


def _han_of(prefix: str) -> str:
    lines = Path(prefix + ".sent").read_text(encoding="utf-8").splitlines()
    return "\n".join("".join(ch for ch in line if _HAN.match(ch)) for line in lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", choices=sorted(READERS), required=True)
    parser.add_argument("source", type=Path)
    parser.add_argument("out", help="PREFIX of the PREFIX.sent / PREFIX.lb written")
    parser.add_argument("--exclude", action="append", default=[], help="PREFIX of sentences to keep out (CPP dev)")
    args = parser.parse_args()

    from tts_server.inference.frontend import polyphone

    polyphone.set_mode("g2pm")
    model = polyphone.active()
    assert model is not None
    excluded = "\n".join(_han_of(prefix) for prefix in args.exclude)
    lines = args.source.read_text(encoding="utf-8-sig").splitlines()
    pairs, counts = convert(READERS[args.format](lines), model.candidates, excluded)
    Path(args.out + ".sent").write_text("".join(s + "\n" for s, _ in pairs), encoding="utf-8")
    Path(args.out + ".lb").write_text("".join(lb + "\n" for _, lb in pairs), encoding="utf-8")
    for key, n in sorted(counts.items()):
        print(f"{n:7d}  {key}")
    print(f"wrote {len(pairs)} lines to {args.out}.sent / .lb")


if __name__ == "__main__":
    main()
