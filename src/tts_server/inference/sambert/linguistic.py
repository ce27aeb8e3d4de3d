"""KAN-TTS linguistic unit: symbol strings to the six id streams the Sambert acoustic model reads.

A symbol string is a space-separated list of tokens ``{phone$tone$syllable_flag$word_segment$emotion$speaker}``
(field order given by ``linguistic_unit.lfeat_type_list`` in the voice's ``am/config.yaml``). Each field has its own
vocabulary, built the way KAN-TTS builds it so that the ids index the trained embedding tables:

* phones: ``@<name>`` for every phone of ``dict/<language>/PhoneSet.xml`` (file order), then ``@#1``..``@#4``;
* tones: one entry per line of ``tonelist.txt`` (``tone<line>``, an empty line is ``tone_none``);
* syllable flags and word segments: fixed lists;
* emotions: the fixed KAN-TTS emotion category list; speakers: ``linguistic_unit.speaker_list``;

each followed by the special symbols ``_`` (pad), ``~`` (end) and ``@[MASK]``. Every stream ends with ``~``; the
model input drops that trailing token. Unlike the reference (which silently drops unknown phones and thereby
misaligns the streams), an unknown symbol here is an error that names it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from tts_server.inference.engine import EngineError, EngineLoadError
from tts_server.inference.frontend.symbols import PhoneSetError, read_phone_set

PAD = "_"
EOS = "~"
MASK = "@[MASK]"
SPECIALS = (PAD, EOS, MASK)

SYLLABLE_FLAGS = ("s_begin", "s_end", "s_none", "s_both", "s_middle")
WORD_SEGMENTS = ("word_begin", "word_end", "word_middle", "word_both", "word_none")
EMOTION_TYPES = (
    "emotion_none",
    "emotion_neutral",
    "emotion_angry",
    "emotion_disgust",
    "emotion_fear",
    "emotion_happy",
    "emotion_sad",
    "emotion_surprise",
    "emotion_calm",
    "emotion_gentle",
    "emotion_relax",
    "emotion_lyrical",
    "emotion_serious",
    "emotion_disgruntled",
    "emotion_satisfied",
    "emotion_disappointed",
    "emotion_excited",
    "emotion_anxiety",
    "emotion_jealousy",
    "emotion_hate",
    "emotion_pity",
    "emotion_pleasure",
    "emotion_arousal",
    "emotion_dominance",
    *(f"emotion_placeholder{i}" for i in range(1, 10)),
)
EMOTION_PREFIX = "emotion_"
NO_EMOTION = "emotion_none"
BREAK_PHONES = tuple(f"#{i}" for i in range(1, 5))

#: lfeat type name -> the key of the embedding size the acoustic model config takes
STREAM_KEYS = {
    "sy": "sy",
    "tone": "tone",
    "syllable_flag": "syllable_flag",
    "word_segment": "word_segment",
    "emo_category": "emotion",
    "speaker_category": "speaker",
}
REQUIRED_STREAMS = ("sy", "tone", "syllable_flag", "word_segment", "emo_category", "speaker_category")

def parse_phone_set(path: Path) -> list[str]:
    """Phone names of a KAN-TTS ``PhoneSet.xml`` in file order, then the four break symbols."""
    try:
        phones = read_phone_set(path)
    except PhoneSetError as exc:
        raise EngineLoadError(str(exc)) from exc
    return [*phones, *BREAK_PHONES]


def parse_tone_list(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EngineLoadError(f"cannot read tone list {path}: {exc}") from exc
    return [f"tone{line.strip()}" if line.strip() else "tone_none" for line in lines]


def _index(symbols: Sequence[str]) -> dict[str, int]:
    # Later duplicates win, exactly like the reference's dict comprehension.
    return {s: i for i, s in enumerate(symbols)}


@dataclass(frozen=True)
class EncodedSymbols:
    """The six id streams of one sentence, each WITH the trailing end token."""

    sy: npt.NDArray[np.int64]
    tone: npt.NDArray[np.int64]
    syllable_flag: npt.NDArray[np.int64]
    word_segment: npt.NDArray[np.int64]
    emotion: npt.NDArray[np.int64]
    speaker: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return int(self.sy.shape[0])


@dataclass(frozen=True)
class Token:
    fields: tuple[str, ...]

    @property
    def phone(self) -> str:
        return self.fields[0]

    def is_break(self) -> bool:
        return self.phone in BREAK_PHONES

    def render(self) -> str:
        return "{" + "$".join(self.fields) + "}"


class LinguisticUnit:
    """Vocabularies of one voice and the symbol string encoder."""

    def __init__(self, unit_config: Mapping[str, Any], dict_root: Path, config_path: Path) -> None:
        lfeat = unit_config.get("lfeat_type_list")
        if not isinstance(lfeat, str):
            raise EngineLoadError(f"{config_path}: missing key 'linguistic_unit.lfeat_type_list'")
        self.lfeat_types = [x.strip() for x in lfeat.strip().split(",")]
        if tuple(self.lfeat_types) != REQUIRED_STREAMS:
            raise EngineLoadError(
                f"{config_path}: linguistic_unit.lfeat_type_list must be {','.join(REQUIRED_STREAMS)}, got {lfeat!r}"
            )
        speakers = unit_config.get("speaker_list")
        if not isinstance(speakers, str) or not speakers.strip():
            raise EngineLoadError(f"{config_path}: missing key 'linguistic_unit.speaker_list'")
        self.speakers = [s for s in speakers.strip().split(",")]
        if not all(self.speakers):
            raise EngineLoadError(f"{config_path}: linguistic_unit.speaker_list has an empty name: {speakers!r}")
        self.language = str(unit_config.get("language", "PinYin"))
        lang_dir = dict_root / self.language
        self.phones = parse_phone_set(lang_dir / "PhoneSet.xml")
        self.tones = parse_tone_list(lang_dir / "tonelist.txt")
        self.has_mask = bool(unit_config.get("has_mask", True))
        tail = [PAD, EOS, MASK] if self.has_mask else [PAD, EOS]

        self.vocab: dict[str, list[str]] = {
            "sy": ["@" + p for p in self.phones] + tail,
            "tone": [*self.tones, *tail],
            "syllable_flag": [*SYLLABLE_FLAGS, *tail],
            "word_segment": [*WORD_SEGMENTS, *tail],
            "emo_category": [*EMOTION_TYPES, *tail],
            "speaker_category": [*self.speakers, *tail],
        }
        self._ids = {name: _index(symbols) for name, symbols in self.vocab.items()}
        self._phone_set = frozenset(self.phones)
        declared = unit_config.get("emotion_list")
        if isinstance(declared, str) and declared.strip():
            names = [e.strip() for e in declared.split(",") if e.strip()]
            bad = [e for e in names if _full_emotion(e) not in EMOTION_TYPES]
            if bad:
                raise EngineLoadError(f"{config_path}: linguistic_unit.emotion_list has unknown emotions {bad}")
            self.emotions = tuple(_short_emotion(e) for e in names)
        else:
            # The published configs declare no list: every named category of the emotion vocabulary is
            # accepted by the model (emotion_none marks breaks, placeholders were never trained).
            self.emotions = tuple(
                _short_emotion(e) for e in EMOTION_TYPES if e != NO_EMOTION and "placeholder" not in e
            )

    def vocab_sizes(self) -> dict[str, int]:
        """Embedding table sizes keyed as the acoustic model config names them."""
        return {STREAM_KEYS[name]: len(symbols) for name, symbols in self.vocab.items()}

    @property
    def phone_inventory(self) -> frozenset[str]:
        return self._phone_set

    def parse(self, symbols: str) -> list[Token]:
        tokens: list[Token] = []
        raw_tokens = symbols.split()
        if not raw_tokens:
            raise EngineError("the symbol string is empty", param="text")
        n = len(self.lfeat_types)
        for raw in raw_tokens:
            if not (raw.startswith("{") and raw.endswith("}")):
                raise EngineError(f"malformed symbol token {raw!r}: expected {{field$field$...}}", param="text")
            fields = tuple(raw[1:-1].split("$"))
            if len(fields) != n:
                raise EngineError(
                    f"malformed symbol token {raw!r}: expected {n} '$'-separated fields ({'$'.join(self.lfeat_types)})",
                    param="text",
                )
            tokens.append(Token(fields))
        return tokens

    def encode_tokens(self, tokens: Sequence[Token]) -> EncodedSymbols:
        streams: list[npt.NDArray[np.int64]] = []
        for col, name in enumerate(self.lfeat_types):
            ids = self._ids[name]
            out = np.empty(len(tokens) + 1, dtype=np.int64)
            for row, token in enumerate(tokens):
                value = token.fields[col]
                key = "@" + value if name == "sy" else value
                idx = ids.get(key)
                if idx is None or value in SPECIALS or key in SPECIALS:
                    raise EngineError(_unknown_message(name, value, self), param="text")
                out[row] = idx
            out[-1] = ids[EOS]
            streams.append(out)
        return EncodedSymbols(*streams)

    def encode(self, symbols: str) -> EncodedSymbols:
        return self.encode_tokens(self.parse(symbols))

    def with_emotion_and_speaker(
        self, tokens: Sequence[Token], emotion: str | None, speaker: str | None
    ) -> list[Token]:
        """Rewrite the emotion field of phone tokens (breaks keep theirs) and the speaker field of all tokens."""
        emo_col = self.lfeat_types.index("emo_category")
        spk_col = self.lfeat_types.index("speaker_category")
        full = _full_emotion(emotion) if emotion is not None else None
        out: list[Token] = []
        for token in tokens:
            fields = list(token.fields)
            if full is not None and not token.is_break():
                fields[emo_col] = full
            if speaker is not None:
                fields[spk_col] = speaker
            out.append(Token(tuple(fields)))
        return out


def _full_emotion(name: str) -> str:
    return name if name.startswith(EMOTION_PREFIX) else EMOTION_PREFIX + name


def _short_emotion(name: str) -> str:
    return name[len(EMOTION_PREFIX) :] if name.startswith(EMOTION_PREFIX) else name


def _unknown_message(stream: str, value: str, unit: LinguisticUnit) -> str:
    label = {
        "sy": "phone",
        "tone": "tone",
        "syllable_flag": "syllable flag",
        "word_segment": "word segment",
        "emo_category": "emotion",
        "speaker_category": "speaker",
    }[stream]
    allowed = [s for s in unit.vocab[stream] if s not in SPECIALS]
    if stream == "sy":
        allowed = [s[1:] for s in allowed]
    shown = ", ".join(allowed[:40]) + (", ..." if len(allowed) > 40 else "")
    return f"unknown {label} {value!r} in the symbol string; allowed: {shown}"
