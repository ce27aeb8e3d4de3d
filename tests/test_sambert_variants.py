"""Other published Sambert-HifiGan variants on tiny models: 24 kHz (KAN-TTS ``sambert_24k`` + ``hifigan_v1_24k``,
hop 240) end to end, a MAS checkpoint (its alignment module is training-only), and the variants we refuse."""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from tests.conftest import running_app
from tests.tinymodel import Variant, build_tiny_model_dir
from tts_server.config import Settings, load_settings
from tts_server.inference.engine import EngineLoadError
from tts_server.inference.sambert.engine import SambertEngine, load_sambert_engine

VOICE = "zhitian_emo"
TEXT = "你好，世界。今天天气很好。"


def _engine(model_dir: Path, **engine: Any) -> SambertEngine:
    return load_sambert_engine(load_settings(model={"model_dir": str(model_dir)}, engine=engine))


@pytest.fixture(scope="module")
def khz24(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("k24") / "model", variant=Variant(khz24=True))


def test_24khz_voice_runs_at_its_rate_with_hop_240(khz24: Path) -> None:
    engine = _engine(khz24)
    info = engine.voices()[VOICE]
    assert info.sample_rate == 24000
    voice = engine._voices[VOICE]
    assert voice.hop_length == 240
    syn = engine.synthesize(TEXT, VOICE, "neutral", 1.0)
    assert syn.sample_rate == 24000
    assert len(syn.audio) > 0
    assert len(syn.audio) % 240 == 0  # whole frames of 240 samples, pauses included
    assert np.all(np.isfinite(syn.audio))
    # Frame-chunked streaming is exact at this hop too.
    streamed = np.concatenate([p.audio for p in engine.synthesize_stream(TEXT, VOICE, "neutral", 1.0)])
    np.testing.assert_allclose(streamed, syn.audio, atol=1e-4)


def test_24khz_config_mismatch_is_refused(khz24: Path, tmp_path: Path) -> None:
    model_dir = Path(shutil.copytree(khz24, tmp_path / "model"))
    audio_config = model_dir / "voices" / VOICE / "audio_config.yaml"
    data = yaml.safe_load(audio_config.read_text(encoding="utf-8"))
    data["audio_config"]["hop_length"] = 200  # a 16 kHz audio config beside the 24 kHz vocoder
    audio_config.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(EngineLoadError, match="hop_length 200 != vocoder upsampling 240"):
        _engine(model_dir)


async def test_24khz_voice_over_http(khz24: Path, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(engine={"name": "sambert", "stream_chunk_frames": 4}, pool={"workers": 1},
                             model={"model_dir": str(khz24)})
    async with running_app(settings) as (_, client):
        voices = (await client.get("/v1/voices")).json()["voices"]
        assert [(v["name"], v["sample_rate"]) for v in voices] == [(VOICE, 24000)]
        wav = await client.post("/v1/synthesize", json={"text": TEXT, "format": "wav"})
        assert wav.status_code == 200
        assert wav.headers["x-sample-rate"] == "24000"
        audio, rate = sf.read(io.BytesIO(wav.content), dtype="int16")
        assert rate == 24000
        assert len(audio) % 240 == 0
        pcm = await client.post("/v1/synthesize", json={"text": TEXT, "format": "pcm"})
        np.testing.assert_array_equal(np.frombuffer(pcm.content, "<i2"), audio)
        streamed = await client.post("/v1/synthesize", json={"text": TEXT, "format": "pcm", "stream": True})
        diff = np.abs(np.frombuffer(streamed.content, "<i2").astype(int) - audio.astype(int))
        assert len(diff) == len(audio)
        assert diff.max() <= 4  # the same audio within 1e-4 of full scale, then rounded to 16 bits
        down = await client.post("/v1/synthesize", json={"text": TEXT, "format": "pcm", "sample_rate": 16000})
        assert down.headers["x-sample-rate"] == "16000"
        assert len(down.content) // 2 == pytest.approx(len(audio) * 2 / 3, abs=2)
        speech = await client.post("/v1/audio/speech", json={"model": "tts-1", "input": TEXT, "voice": VOICE,
                                                             "response_format": "wav"})
        assert speech.status_code == 200
        assert speech.headers["x-sample-rate"] == "24000"


def test_mas_checkpoint_loads_without_its_alignment_module(tmp_path: Path) -> None:
    mas = build_tiny_model_dir(tmp_path / "mas", variant=Variant(mas=True))
    plain = build_tiny_model_dir(tmp_path / "plain")
    ckpt = torch.load(mas / "voices" / VOICE / "am" / "ckpt" / "checkpoint_0.pth", weights_only=True)["model"]
    assert any(k.startswith("align_attention.") for k in ckpt)  # what a MAS training run saves
    mas_engine, plain_engine = _engine(mas), _engine(plain)
    assert not any(k.startswith("align_attention") for k in mas_engine._voices[VOICE].am.state_dict())
    # Same weights otherwise: inference is exactly that of the model without MAS.
    a = mas_engine.synthesize(TEXT, VOICE, "happy", 1.0).audio
    b = plain_engine.synthesize(TEXT, VOICE, "happy", 1.0).audio
    assert len(a) > 0
    np.testing.assert_array_equal(a, b)


def test_alignment_weights_without_the_mas_flag_are_refused(tmp_path: Path) -> None:
    # Strict loading still holds: only a config that says MAS lets the alignment module's keys through.
    model_dir = build_tiny_model_dir(tmp_path / "mas", variant=Variant(mas=True))
    cfg = model_dir / "voices" / VOICE / "am" / "config.yaml"
    data = yaml.safe_load(cfg.read_text(encoding="utf-8"))
    data["Model"]["KanTtsSAMBERT"]["params"]["MAS"] = False
    cfg.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    with pytest.raises(EngineLoadError, match="align_attention"):
        _engine(model_dir)


@pytest.mark.parametrize(("where", "key", "value", "needle"), [
    ("am", "FP", True, "Model.KanTtsSAMBERT.params.FP is enabled; not supported"),
    ("am", "using_byte", True, "Model.KanTtsSAMBERT.params.using_byte is enabled; not supported"),
    ("voc", "out_channels", 4, "out_channels 4 (multi-band PQMF) is not supported"),
])
def test_unsupported_variants_are_refused_clearly(tmp_path: Path, where: str, key: str, value: object,
                                                  needle: str) -> None:
    model_dir = build_tiny_model_dir(tmp_path / "model")
    cfg = model_dir / "voices" / VOICE / where / "config.yaml"
    data = yaml.safe_load(cfg.read_text(encoding="utf-8"))
    params = data["Model"]["KanTtsSAMBERT" if where == "am" else "Generator"]["params"]
    params[key] = value
    cfg.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    with pytest.raises(EngineLoadError) as info:
        _engine(model_dir)
    assert needle in str(info.value)
    assert str(cfg) in str(info.value)
