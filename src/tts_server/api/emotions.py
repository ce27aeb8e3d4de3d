"""Chinese display labels for the Sambert emotion vocabulary, and which emotions are the core ones.

The Sambert ``*_emo`` voices are described with a handful of basic emotions, while the model accepts every named
category of the KAN-TTS emotion vocabulary (23 in all). Clients show the core ones first and the rest on
demand, so the list lives here, once, and ``GET /v1/voices`` hands it out instead of every client guessing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

#: The emotions these voices are described with, in the order a picker shows them.
CORE_EMOTIONS: Final = ("neutral", "happy", "angry", "sad", "fear", "surprise", "disgust", "hate")

#: A Chinese label for every named category of the KAN-TTS emotion vocabulary (``sambert.linguistic.EMOTION_TYPES``).
EMOTION_LABELS: Final[dict[str, str]] = {
    "neutral": "中性",
    "angry": "生气",
    "disgust": "厌恶",
    "fear": "害怕",
    "happy": "开心",
    "sad": "悲伤",
    "surprise": "惊讶",
    "calm": "平静",
    "gentle": "温柔",
    "relax": "放松",
    "lyrical": "抒情",
    "serious": "严肃",
    "disgruntled": "不满",
    "satisfied": "满意",
    "disappointed": "失望",
    "excited": "兴奋",
    "anxiety": "焦虑",
    "jealousy": "嫉妒",
    "hate": "憎恨",
    "pity": "怜悯",
    "pleasure": "愉悦",
    "arousal": "激昂",
    "dominance": "强势",
}


def core_emotions(emotions: Iterable[str]) -> list[str]:
    """The voice's emotions that are core ones, in the core order (not the voice's)."""
    have = set(emotions)
    return [e for e in CORE_EMOTIONS if e in have]


def emotion_labels(emotions: Iterable[str]) -> dict[str, str]:
    """A display label per emotion: the Chinese one, or the name itself for a name outside the vocabulary."""
    return {e: EMOTION_LABELS.get(e, e) for e in emotions}
