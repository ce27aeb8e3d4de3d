"""Parity of a personal voice (speaker-embedding acoustic model + NSF vocoder) with the reference KAN-TTS
implementation, on the shared full-size set (../shared: skipped locally without it, a failure in CI).

The NSF excitation's random phase and noise are the ones the reference drew, injected through ``NsfDraws``."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import torch

from tests.conftest import SHARED, unavailable
from tests.parity import case_arrays, checked_acoustic, load_cases, max_abs
from tts_server.config import load_settings
from tts_server.inference.sambert.engine import SambertEngine, SambertVoice, load_sambert_engine
from tts_server.inference.sambert.nsf import NsfDraws

PARITY = SHARED / "reference" / "sambert-personal-parity"
MODEL_DIR = PARITY / "model"
CASES = PARITY / "cases.npz"
VOICE = "personal_f7"

WAV_TOL = 1e-4
#: End to end the bound is looser: the AM's float32 noise on the normalised f0 (~1e-6, x700 into Hz) is summed into
#: the sine phase over the whole sentence; with the reference's f0 channel the error is <1e-6 (measured 3.5e-4,
#: 4.4e-5, 1.4e-5 on long_fear_breaks, beijing_neutral, nihao_sad_one_word). 1e-4 end to end would need the AM's f0
#: channel bit-identical to the reference's on nearly every frame: moving the reference's own f0 by one float32 ulp
#: alone already costs about 1e-4 on long_fear_breaks (``test_one_ulp_of_f0_moves_the_long_case_by_about_1e4``).
E2E_WAV_TOL = 5e-4
INTERMEDIATE_TOL = 1e-5
STREAMS = ("sy", "tone", "syllable_flag", "word_segment", "emotion")
CASE_NAMES = ("beijing_neutral", "nihao_sad_one_word", "long_fear_breaks")


@pytest.fixture(autouse=True, scope="module")
def _parity_set() -> None:
    if not CASES.is_file():
        unavailable(f"the personal parity set is not at {PARITY}")


@pytest.fixture(scope="module")
def cases() -> dict[str, npt.NDArray[np.generic]]:
    return load_cases(CASES)


@pytest.fixture(scope="module")
def engine() -> SambertEngine:
    return load_sambert_engine(load_settings(model={"model_dir": str(MODEL_DIR), "torch_threads": 1}))


@pytest.fixture(scope="module")
def voice(engine: SambertEngine) -> SambertVoice:
    return engine._voices[VOICE]


def _without_f0(a: torch.Tensor | npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    arr = a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    return np.delete(arr, -2, axis=1)


def _max_rel(a: torch.Tensor, b: npt.NDArray[np.generic]) -> float:
    ref = b.astype(np.float64)
    return float(np.max(np.abs(a.numpy().astype(np.float64) - ref) / np.abs(ref)))


def _draws(cases: dict[str, npt.NDArray[np.generic]], case: str) -> NsfDraws:
    return NsfDraws(torch.from_numpy(cases[f"{case}/nsf_phase"]), torch.from_numpy(cases[f"{case}/nsf_noise"]))


def test_all_cases_listed(cases: dict[str, npt.NDArray[np.generic]]) -> None:
    assert {k.split("/")[0] for k in cases if "/" in k} == {*CASE_NAMES, "vocoder_only"}


def test_voice_is_personal_and_stochastic(engine: SambertEngine, voice: SambertVoice,
                                          cases: dict[str, npt.NDArray[np.generic]]) -> None:
    info = engine.voices()[VOICE]
    assert info.stochastic
    assert info.sample_rate == 16000
    assert voice.se is not None
    np.testing.assert_array_equal(voice.se.numpy(), cases["se"])
    assert voice.am.spk_tokenizer is None


@pytest.mark.parametrize("case", CASE_NAMES)
def test_case_parity(case: str, cases: dict[str, npt.NDArray[np.generic]], voice: SambertVoice) -> None:
    ref = case_arrays(cases, case)
    with torch.inference_mode():
        out = checked_acoustic(voice, ref, STREAMS)
        assert voice.f0_norm is not None
        mel_denorm = voice.f0_norm.denorm(out.postnet_outputs)
        vocoder_input = voice.vocoder_input(out.postnet_outputs)
        errors = {
            "log_duration": max_abs(out.log_duration, ref["log_duration"]),
            "pitch": max_abs(out.pitch, ref["pitch"]),
            "energy": max_abs(out.energy, ref["energy"]),
            "postnet_outputs": max_abs(out.postnet_outputs, ref["postnet_outputs"]),
            # f0 in Hz is the normalised f0 times (max - min) = 700: the AM's float32 noise (~1e-6) becomes
            # ~5e-4 Hz, so the f0 channel is compared relatively (below) and the other channels absolutely.
            "mel_denorm": max_abs(_without_f0(mel_denorm), _without_f0(ref["mel_denorm"])),
            "vocoder_input": max_abs(_without_f0(vocoder_input), _without_f0(ref["vocoder_input"])),
            "mel_denorm_f0_relative": _max_rel(mel_denorm[:, -2], ref["mel_denorm"][:, -2]),
            "vocoder_input_f0_relative": _max_rel(vocoder_input[:, -2], ref["vocoder_input"][:, -2]),
        }
        # On the reference's own AM output the de-normalisation is bit-exact.
        np.testing.assert_array_equal(
            voice.f0_norm.denorm(torch.from_numpy(ref["postnet_outputs"])).numpy(), ref["mel_denorm"]
        )
        np.testing.assert_array_equal(
            voice.vocoder_input(torch.from_numpy(ref["postnet_outputs"])).numpy(), ref["vocoder_input"]
        )
        # The vocoder on the reference's own mel isolates the vocoder; on ours it is the end-to-end error.
        wav_ref_mel = voice.vocode(torch.from_numpy(ref["postnet_outputs"]), draws=_draws(cases, case))
        wav = voice.vocode(out.postnet_outputs, draws=_draws(cases, case))
    for name, err in errors.items():
        assert err <= INTERMEDIATE_TOL, f"{case}: {name} max abs error {err:.3g} > {INTERMEDIATE_TOL}"
    # The voicing flag is exactly 0 or 1 in both.
    np.testing.assert_array_equal(vocoder_input[:, -1].numpy(), ref["vocoder_input"][:, -1])
    assert max_abs(wav_ref_mel, ref["wav"]) <= WAV_TOL
    assert max_abs(wav, ref["wav"]) <= E2E_WAV_TOL


def test_one_ulp_of_f0_moves_the_long_case_by_about_1e4(cases: dict[str, npt.NDArray[np.generic]],
                                                       voice: SambertVoice) -> None:
    """Why the end-to-end bound is not 1e-4: the NSF phase integrates f0 over the whole sentence, so nudging each
    frame of the reference's own normalised f0 by at most one float32 ulp (a seeded +-1/0 pattern) changes the
    long case's waveform by about 1e-4, while the reference's unchanged f0 reproduces it to 1e-6."""
    case = "long_fear_breaks"
    postnet = cases[f"{case}/postnet_outputs"]
    f0 = postnet[:, -2]
    step = np.random.default_rng(0).choice([-1, 0, 1], size=f0.shape[0])
    nudged = postnet.copy()
    nudged[:, -2] = np.where(step > 0, np.nextafter(f0, np.float32(np.inf)),
                             np.where(step < 0, np.nextafter(f0, np.float32(-np.inf)), f0))
    assert np.max(np.abs(nudged[:, -2] - f0) / np.spacing(np.abs(f0))) <= 1.0
    with torch.inference_mode():
        exact = voice.vocode(torch.from_numpy(postnet), draws=_draws(cases, case))
        moved = voice.vocode(torch.from_numpy(nudged), draws=_draws(cases, case))
    assert max_abs(exact, cases[f"{case}/wav"]) <= 2e-6
    assert max_abs(moved, cases[f"{case}/wav"]) >= 5e-5


def test_vocoder_only(cases: dict[str, npt.NDArray[np.generic]], voice: SambertVoice) -> None:
    """The reference's vocoder input is its mel binarised; the vocoder alone on it gives the reference wav."""
    mel = torch.from_numpy(cases["vocoder_only/mel"])
    with torch.inference_mode():
        assert voice.vocoder_input(mel)[:, :-2].equal(mel[:, :-2])
        np.testing.assert_array_equal(
            cases["vocoder_only/vocoder_input"][:, -1], (cases["vocoder_only/mel"][:, -1] >= 0.6).astype(np.float32)
        )
        wav = voice.vocoder(torch.from_numpy(cases["vocoder_only/vocoder_input"]), draws=_draws(cases, "vocoder_only"))
    assert max_abs(wav, cases["vocoder_only/wav"]) <= WAV_TOL


def test_engine_end_to_end_is_reproducible_with_a_seed(
    engine: SambertEngine, cases: dict[str, npt.NDArray[np.generic]]
) -> None:
    """Production draws: the same seed gives the same audio, another seed other audio of the same length."""
    symbols = str(cases["nihao_sad_one_word/symbols"])
    a = engine.synthesize(symbols, VOICE, "sad", 1.0, input_format="symbols", seed=7)
    b = engine.synthesize(symbols, VOICE, "sad", 1.0, input_format="symbols", seed=7)
    c = engine.synthesize(symbols, VOICE, "sad", 1.0, input_format="symbols", seed=8)
    assert a.audio.shape == cases["nihao_sad_one_word/wav"].shape
    np.testing.assert_array_equal(a.audio, b.audio)
    assert c.audio.shape == a.audio.shape
    assert not np.array_equal(a.audio, c.audio)
