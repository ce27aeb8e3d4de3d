"""Prosody controls: ``pitch`` (a shift of the model's predicted pitch), ``volume`` (gain in dB with clipping
protection) and ``speed``, as request fields and as SSML ``<prosody>``.

The model tests run on the shared parity model (skipped locally without it, a failure in CI); the API tests use
the test engine and the tiny model."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import PARITY_DIR, read_log, running_app, unavailable
from tests.tinymodel import build_tiny_model_dir
from tts_server.config import Settings, load_settings
from tts_server.inference.audio import PEAK_LIMIT, apply_gain
from tts_server.inference.cache import AudioCache, CacheKey
from tts_server.inference.engine import EngineError
from tts_server.inference.frontend import Frontend, FrontendError
from tts_server.inference.frontend.ssml import Span, parse_ssml
from tts_server.inference.sambert.engine import SambertEngine, SambertVoice, load_sambert_engine

CASES = PARITY_DIR / "cases.npz"
TEXT = "北京今天天气怎么样"


# --- the parity model --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def parity_engine() -> SambertEngine:
    if not CASES.is_file():
        unavailable(f"the parity set is not at {PARITY_DIR}")
    return load_sambert_engine(load_settings(model={"model_dir": str(PARITY_DIR / "model"), "torch_threads": 1}))


@pytest.fixture(scope="module")
def voice(parity_engine: SambertEngine) -> SambertVoice:
    return parity_engine._voices["zhitian_emo"]


@pytest.fixture(scope="module")
def symbols() -> str:
    with np.load(CASES) as data:
        return str(data["beijing_neutral/symbols"])


class PitchTap:
    """Records what enters the pitch embedding and what the pitch predictor produced, per acoustic call."""

    def __init__(self, voice: SambertVoice) -> None:
        self.embedded: list[torch.Tensor] = []
        self.predicted: list[torch.Tensor] = []
        va = voice.am.variance_adaptor
        self._hooks = [
            va.pitch_emb.register_forward_hook(lambda _m, args, _out: self.embedded.append(args[0].clone())),
            va.pitch_predictor.register_forward_hook(lambda _m, _args, out: self.predicted.append(out.clone())),
        ]

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()


@pytest.fixture
def tap(voice: SambertVoice) -> Iterator[PitchTap]:
    t = PitchTap(voice)
    yield t
    t.close()


@pytest.mark.parametrize("shift", [0.75, -1.25, 2.0])
def test_pitch_shift_is_added_to_the_predicted_pitch(voice: SambertVoice, symbols: str, tap: PitchTap,
                                                     shift: float) -> None:
    encoded = voice.unit.encode(symbols)
    with torch.inference_mode():
        voice.acoustic(encoded)
        shifted = voice.acoustic(encoded, pitch_shift=shift)
    base_in, shifted_in = tap.embedded
    # The predictor does not see the shift: its output is the same in both runs.
    assert torch.equal(tap.predicted[0], tap.predicted[1])
    # Unshifted, the embedding gets exactly the prediction; shifted, the prediction plus the shift.
    assert torch.equal(base_in[0, 0], tap.predicted[0])
    assert base_in.shape == shifted_in.shape == (1, 1, tap.predicted[0].numel())
    torch.testing.assert_close(shifted_in - base_in, torch.full_like(base_in, shift), rtol=0, atol=1e-6)
    torch.testing.assert_close(shifted.pitch, tap.predicted[1] + shift, rtol=0, atol=1e-6)


def test_zero_pitch_and_volume_change_nothing(parity_engine: SambertEngine, voice: SambertVoice,
                                              symbols: str) -> None:
    encoded = voice.unit.encode(symbols)
    with torch.inference_mode():
        default = voice.acoustic(encoded)
        zero = voice.acoustic(encoded, pitch_shift=0.0)
    assert torch.equal(default.postnet_outputs, zero.postnet_outputs)
    plain = parity_engine.synthesize(symbols, "zhitian_emo", "neutral", 1.0, input_format="symbols").audio
    explicit = parity_engine.synthesize(symbols, "zhitian_emo", "neutral", 1.0, input_format="symbols",
                                        pitch=0.0, volume_db=0.0).audio
    assert np.array_equal(plain, explicit)
    shifted = parity_engine.synthesize(symbols, "zhitian_emo", "neutral", 1.0, input_format="symbols",
                                       pitch=1.0).audio
    assert not np.array_equal(plain, shifted)  # the shift does reach the audio


def test_request_and_ssml_pitch_add_up_at_the_embedding(parity_engine: SambertEngine, tap: PitchTap) -> None:
    ssml = f'<speak><prosody pitch="+0.5">{TEXT}</prosody>。<prosody pitch="low">{TEXT}</prosody></speak>'
    parity_engine.synthesize(ssml, "zhitian_emo", "neutral", 1.0, input_format="ssml", pitch=0.25)
    assert len(tap.embedded) == len(tap.predicted) == 2  # one acoustic call per sentence
    for embedded, predicted, shift in zip(tap.embedded, tap.predicted, (0.75, -0.25), strict=True):
        torch.testing.assert_close(embedded[0, 0], predicted + shift, rtol=0, atol=1e-6)


@pytest.mark.parametrize("speed", [0.5, 0.8, 1.5, 2.0])
def test_speed_divides_the_durations_before_rounding(voice: SambertVoice, symbols: str, speed: float) -> None:
    """Documented in ``SambertModel.infer``: frames per token = round((exp(log_duration) - 1) / speed)."""
    encoded = voice.unit.encode(symbols)
    with torch.inference_mode():
        normal = voice.acoustic(encoded)
        scaled = voice.acoustic(encoded, speed=speed)
    # Speed acts after the duration predictor, so the prediction itself is unchanged.
    assert torch.equal(normal.log_duration, scaled.log_duration)
    durations = np.exp(normal.log_duration.numpy().astype(np.float64)) - 1
    expected = int(np.trunc(durations / speed + 0.5).sum())
    assert scaled.num_frames == expected == scaled.postnet_outputs.shape[0]
    tokens = durations.size
    assert abs(scaled.num_frames - normal.num_frames / speed) <= tokens / 2 + 1


def test_volume_is_a_gain_on_the_engine_output(parity_engine: SambertEngine, symbols: str) -> None:
    plain = parity_engine.synthesize(symbols, "zhitian_emo", "neutral", 1.0, input_format="symbols").audio
    for gain in (-6.0, 6.0, 20.0):
        louder = parity_engine.synthesize(symbols, "zhitian_emo", "neutral", 1.0, input_format="symbols",
                                          volume_db=gain).audio
        np.testing.assert_allclose(louder, apply_gain(plain, gain), rtol=0, atol=1e-6)
        assert float(np.max(np.abs(louder))) <= PEAK_LIMIT + 1e-6


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"pitch": 2.5}, "pitch"), ({"pitch": float("nan")}, "pitch"), ({"volume_db": -41.0}, "volume"),
    ({"volume_db": float("inf")}, "volume"),
])
def test_engine_rejects_out_of_range_prosody(parity_engine: SambertEngine, kwargs: dict[str, float],
                                             param: str) -> None:
    with pytest.raises(EngineError) as info:
        parity_engine.synthesize(TEXT, "zhitian_emo", "neutral", 1.0, **kwargs)  # type: ignore[arg-type]
    assert info.value.param == param


# --- volume ------------------------------------------------------------------------------------------------------


def _tone(peak: float) -> np.ndarray[Any, np.dtype[np.float32]]:
    return (peak * np.sin(np.linspace(0, 40 * np.pi, 4000))).astype(np.float32)


def test_gain_without_clipping() -> None:
    audio = _tone(0.2)
    assert apply_gain(audio, 0.0) is audio
    np.testing.assert_allclose(np.max(np.abs(apply_gain(audio, 6.0))), 0.2 * 10 ** (6 / 20), rtol=1e-5)
    assert 1.99 < np.max(np.abs(apply_gain(audio, 6.0))) / np.max(np.abs(audio)) < 2.0
    np.testing.assert_allclose(np.max(np.abs(apply_gain(audio, -20.0))), 0.02, rtol=1e-5)


def test_gain_is_limited_to_the_peak_not_clipped() -> None:
    audio = _tone(0.5)
    loud = apply_gain(audio, 40.0)
    assert float(np.max(np.abs(loud))) == pytest.approx(PEAK_LIMIT, abs=1e-6)
    # The whole piece is scaled by one factor: the waveform keeps its shape (a hard clip would flatten peaks).
    np.testing.assert_allclose(loud, audio * (PEAK_LIMIT / 0.5), rtol=1e-5, atol=1e-7)
    assert apply_gain(np.zeros(0, np.float32), 6.0).size == 0


# --- SSML --------------------------------------------------------------------------------------------------------


def _spans(doc: str) -> list[Span]:
    return [i for i in parse_ssml(doc, emotion="neutral", allowed_emotions=("neutral",), check_syllable=lambda s: None)
            if isinstance(i, Span)]


@pytest.mark.parametrize(("attrs", "pitch", "volume"), [
    ('pitch="+0.5"', 0.5, 0.0), ('pitch="-1.25"', -1.25, 0.0), ('pitch="x-high"', 1.0, 0.0),
    ('pitch="default"', 0.0, 0.0), ('volume="+3dB"', 0.0, 3.0), ('volume="-10.5dB"', 0.0, -10.5),
    ('volume="loud"', 0.0, 6.0), ('volume="x-soft"', 0.0, -12.0), ('pitch="low" volume="soft" rate="fast"', -0.5, -6.0),
])
def test_ssml_prosody_values(attrs: str, pitch: float, volume: float) -> None:
    (span,) = _spans(f"<speak><prosody {attrs}>你好</prosody></speak>")
    assert (span.pitch, span.volume_db) == (pitch, volume)


def test_ssml_prosody_nests_and_stays_in_range() -> None:
    doc = ('<speak>甲<prosody pitch="+1.5" volume="+15dB">乙<prosody pitch="+1.5" volume="+15dB">丙</prosody>'
           '</prosody>丁</speak>')
    assert [(s.pitch, s.volume_db) for s in _spans(doc)] == [(0.0, 0.0), (1.5, 15.0), (2.0, 20.0), (0.0, 0.0)]


def test_a_prosody_change_is_its_own_utterance() -> None:
    utts = Frontend().process(f'<speak>{TEXT}<prosody pitch="+0.5" volume="-3dB">你好</prosody></speak>',
                              speaker="F7", emotion="neutral", allowed_emotions=("neutral",), ssml=True)
    assert [(u.pitch, u.volume_db) for u in utts] == [(0.0, 0.0), (0.5, -3.0)]


@pytest.mark.parametrize(("attrs", "needle"), [
    ('pitch="+2st"', "pitch="), ('pitch="+10%"', "pitch="), ('pitch="200Hz"', "pitch="), ('pitch="+2.5"', "pitch="),
    ('pitch="0.5"', "pitch="), ('volume="+3"', "volume="), ('volume="silent"', "volume="),
    ('volume="+21dB"', "volume="), ('volume="50%"', "volume="), ('contour="(0%,+20Hz)"', "contour"),
])
def test_bad_ssml_prosody_is_refused_naming_the_attribute(attrs: str, needle: str) -> None:
    with pytest.raises(FrontendError) as info:
        _spans(f"<speak><prosody {attrs}>你好</prosody></speak>")
    assert needle in str(info.value)
    assert info.value.param == "text"


# --- the cache key -----------------------------------------------------------------------------------------------


def test_cache_key_includes_prosody_only_when_set(make_settings: Callable[..., Settings]) -> None:
    base: dict[str, Any] = {"text": "你好", "voice": "v", "emotion": "neutral", "speed": 1.0, "fmt": "wav",
                            "sample_rate": 16000}
    cache = AudioCache(make_settings(cache={"enabled": True}))
    plain = cache.key(**base)
    # Without prosody the digest is what it was before these fields existed (disk entries keep their names).
    legacy = CacheKey("你好", "text", "v", "neutral", 1.0, "wav", 16000, cache.revision)
    assert plain.digest() == legacy.digest()
    fields = ["你好", "text", "v", "neutral", "1.0", "wav", 16000, cache.revision]
    assert plain.digest() == hashlib.sha256(json.dumps(fields).encode()).hexdigest()
    assert cache.key(**base, pitch=0.0, volume_db=0.0) == plain
    keys = {plain.digest()}
    for prosody in ({"pitch": 2.0}, {"pitch": -2.0}, {"volume_db": 2.0}, {"pitch": 2.0, "volume_db": 2.0}):
        keys.add(cache.key(**base, **prosody).digest())
    assert len(keys) == 5


# --- the API -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("body", "param", "needle"), [
    ({"pitch": 2.5}, "pitch", "2"), ({"pitch": -3}, "pitch", "-2"), ({"pitch": "high"}, "pitch", "number"),
    ({"volume": 21}, "volume", "20"), ({"volume": -41}, "volume", "-40"),
])
async def test_out_of_range_prosody_is_a_422(make_settings: Callable[..., Settings], body: dict[str, Any],
                                             param: str, needle: str) -> None:
    async with running_app(make_settings(pool={"workers": 1})) as (_, client):
        r = await client.post("/v1/synthesize", json={"text": "好", **body})
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert (err["type"], err["param"]) == ("invalid_request_error", param)
        assert needle in err["message"]


async def test_prosody_reaches_the_engine_and_is_part_of_the_cache_key(make_settings: Callable[..., Settings],
                                                                       engine_log: Path) -> None:
    async with running_app(make_settings(pool={"workers": 1}, cache={"enabled": True})) as (_, client):
        body = {"text": "你好。", "voice": "alpha"}
        plain = await client.post("/v1/synthesize", json=body)
        assert plain.headers["x-cache"] == "miss"
        higher = await client.post("/v1/synthesize", json={**body, "pitch": 2})
        assert (higher.status_code, higher.headers["x-cache"]) == (200, "miss")
        assert higher.content != plain.content
        louder = await client.post("/v1/synthesize", json={**body, "volume": 6})
        assert (louder.status_code, louder.headers["x-cache"]) == (200, "miss")
        again = await client.post("/v1/synthesize", json={**body, "pitch": 2})
        assert (again.headers["x-cache"], again.content) == ("hit", higher.content)
        assert (await client.post("/v1/synthesize", json=body)).content == plain.content
    texts = [text for _, text in read_log(engine_log) if text != "warm up"]
    assert texts == ["你好。", "pitch=2 volume_db=0\t你好。", "pitch=0 volume_db=6\t你好。"]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model", voices=("zhitian_emo",))


async def test_ssml_prosody_through_the_api(make_settings: Callable[..., Settings], tiny_model: Path) -> None:
    """SSML <prosody pitch volume> reaches the real engine: it sounds exactly like the same request fields."""
    settings = make_settings(engine={"name": "sambert"}, model={"model_dir": str(tiny_model)},
                             pool={"workers": 1, "startup_timeout_s": 120.0})
    async with running_app(settings) as (_, client):
        async def audio(body: dict[str, Any]) -> bytes:
            r = await client.post("/v1/synthesize", json={"format": "pcm", **body})
            assert r.status_code == 200, r.text
            return r.content

        plain = await audio({"text": "你好"})
        fields = await audio({"text": "你好", "pitch": 1.5, "volume": -6})
        ssml = await audio({"text": '<speak><prosody pitch="+1.5" volume="-6dB">你好</prosody></speak>',
                            "input_format": "ssml"})
        assert fields == ssml != plain
        r = await client.post("/v1/synthesize", json={
            "text": '<speak><prosody pitch="+3st">你好</prosody></speak>', "input_format": "ssml"})
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert err["param"] == "text"
        assert "pitch='+3st'" in err["message"]
