"""``GET /v1/voices`` says which emotions are the core ones and gives each emotion a Chinese label."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import PARITY_DIR, running_app, unavailable
from tests.tinymodel import build_tiny_model_dir
from tts_server.api.emotions import CORE_EMOTIONS, EMOTION_LABELS
from tts_server.config import Settings
from tts_server.inference.sambert.linguistic import EMOTION_TYPES, LinguisticUnit
from tts_server.inference.sambert.loader import config_section, read_yaml, voice_files

HAN = re.compile(r"^[\u4e00-\u9fff]+$")
#: The named categories of the KAN-TTS emotion vocabulary, as the Sambert engine names a voice's emotions.
VOCABULARY = [e.removeprefix("emotion_") for e in EMOTION_TYPES if e != "emotion_none" and "placeholder" not in e]


def _check_labels(voice: dict[str, object]) -> None:
    labels = voice["emotion_labels"]
    assert isinstance(labels, dict)
    assert list(labels) == voice["emotions"]
    bad = {name: label for name, label in labels.items() if not HAN.match(label)}
    assert not bad, f"emotions without a Chinese label: {bad}"
    # A picker could not tell two emotions apart by their Chinese labels alone.
    assert len(set(labels.values())) == len(labels)


def test_every_vocabulary_emotion_has_a_chinese_label() -> None:
    assert len(VOCABULARY) == 23
    assert sorted(EMOTION_LABELS) == sorted(VOCABULARY)
    assert set(CORE_EMOTIONS) <= set(VOCABULARY)


async def test_test_engine_voices(make_settings: Callable[..., Settings]) -> None:
    async with running_app(make_settings()) as (_, client):
        voices = {v["name"]: v for v in (await client.get("/v1/voices")).json()["voices"]}
    assert voices["alpha"]["emotions"] == ["neutral", "happy", "sad"]
    assert voices["alpha"]["core_emotions"] == ["neutral", "happy", "sad"]
    assert voices["alpha"]["emotion_labels"] == {"neutral": "中性", "happy": "开心", "sad": "悲伤"}
    assert voices["beta"]["core_emotions"] == ["neutral", "angry"]
    assert voices["beta"]["emotion_labels"] == {"neutral": "中性", "angry": "生气"}
    for voice in voices.values():
        _check_labels(voice)


@pytest.mark.slow
async def test_sambert_voice_has_the_whole_vocabulary_labelled(make_settings: Callable[..., Settings],
                                                               tmp_path: Path) -> None:
    model_dir = build_tiny_model_dir(tmp_path / "model", voices=("zhitian_emo",))
    settings = make_settings(engine={"name": "sambert"}, model={"model_dir": str(model_dir)},
                             pool={"workers": 1, "startup_timeout_s": 120.0})
    async with running_app(settings) as (_, client):
        r = await client.get("/v1/voices")
    assert r.status_code == 200, r.text
    (voice,) = r.json()["voices"]
    assert voice["emotions"] == VOCABULARY
    # The core order, not the model's (which puts angry, disgust and fear before happy, and hate near the end).
    assert voice["core_emotions"] == ["neutral", "happy", "angry", "sad", "fear", "surprise", "disgust", "hate"]
    _check_labels(voice)


def test_parity_model_emotions_are_all_labelled() -> None:
    # The real zhitian_emo voice's linguistic unit (config and dictionaries only; no weights are loaded).
    model_dir = PARITY_DIR / "model"
    if not (model_dir / "voices" / "zhitian_emo").is_dir():
        unavailable(f"the parity model is not at {model_dir}")
    files = voice_files(model_dir, "zhitian_emo")
    unit = LinguisticUnit(config_section(read_yaml(files.am_config), files.am_config, "linguistic_unit"),
                          files.dict_dir, files.am_config)
    assert len(unit.emotions) == 23
    missing = [e for e in unit.emotions if e not in EMOTION_LABELS]
    assert not missing, missing
    assert [e for e in CORE_EMOTIONS if e in unit.emotions] == list(CORE_EMOTIONS)
