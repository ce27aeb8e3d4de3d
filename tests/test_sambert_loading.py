"""Strict loading of Sambert-HifiGan model directories: every failure names the file (and key) at fault."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tests.tinymodel import build_tiny_model_dir
from tts_server.config import load_settings
from tts_server.inference.engine import EngineLoadError
from tts_server.inference.sambert.engine import SambertEngine, load_sambert_engine
from tts_server.inference.sambert.linguistic import LinguisticUnit
from tts_server.inference.sambert.loader import latest_checkpoint

VOICE = "zhitian_emo"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def model_dir(pristine: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "model"))


def _load(model_dir: Path) -> SambertEngine:
    return load_sambert_engine(load_settings(model={"model_dir": str(model_dir)}))


def _am_ckpt(model_dir: Path) -> Path:
    return model_dir / "voices" / VOICE / "am" / "ckpt" / "checkpoint_0.pth"


def _voc_ckpt(model_dir: Path) -> Path:
    return model_dir / "voices" / VOICE / "voc" / "ckpt" / "checkpoint_0.pth"


def _edit_am(model_dir: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    path = _am_ckpt(model_dir)
    ckpt = torch.load(path, weights_only=True)
    edit(ckpt["model"])
    torch.save(ckpt, path)
    return path


def _edit_voc(model_dir: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    path = _voc_ckpt(model_dir)
    ckpt = torch.load(path, weights_only=True)
    edit(ckpt["model"]["generator"])
    torch.save(ckpt, path)
    return path


def _expect(model_dir: Path, *needles: str) -> str:
    with pytest.raises(EngineLoadError) as info:
        _load(model_dir)
    message = str(info.value)
    for needle in needles:
        assert needle in message, message
    return message


def test_pristine_loads(model_dir: Path) -> None:
    assert list(_load(model_dir).voices()) == [VOICE]


@pytest.mark.parametrize("payload", [b"", b"this is not a checkpoint", b"PK\x03\x04garbage"])
def test_corrupted_checkpoint(model_dir: Path, payload: bytes) -> None:
    path = _am_ckpt(model_dir)
    path.write_bytes(payload)
    _expect(model_dir, str(path), "corrupted")


def test_truncated_checkpoint(model_dir: Path) -> None:
    path = _voc_ckpt(model_dir)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    _expect(model_dir, str(path))


def test_checkpoint_without_model_entry(model_dir: Path) -> None:
    path = _am_ckpt(model_dir)
    torch.save({"state": {}}, path)
    _expect(model_dir, str(path), "['model']")


def test_missing_am_key(model_dir: Path) -> None:
    path = _edit_am(model_dir, lambda sd: sd.pop("mel_postnet.fc.bias"))
    _expect(model_dir, str(path), "missing key 'mel_postnet.fc.bias'")


def test_unexpected_am_key(model_dir: Path) -> None:
    path = _edit_am(model_dir, lambda sd: sd.__setitem__("mel_postnet.extra.weight", torch.zeros(3)))
    _expect(model_dir, str(path), "unexpected key 'mel_postnet.extra.weight'")


def test_am_shape_mismatch(model_dir: Path) -> None:
    def edit(sd: dict[str, torch.Tensor]) -> None:
        sd["text_encoder.ling_proj.weight"] = torch.zeros(5, 8)

    path = _edit_am(model_dir, edit)
    _expect(model_dir, str(path), "shape mismatch", "'text_encoder.ling_proj.weight'", "(5, 8)", "(4, 8)")


def test_missing_vocoder_weight_g(model_dir: Path) -> None:
    path = _edit_voc(model_dir, lambda sd: sd.pop("conv_post.conv1d.weight_g"))
    _expect(model_dir, str(path), "missing key 'conv_post.conv1d.weight_g'")


def test_unexpected_vocoder_key(model_dir: Path) -> None:
    path = _edit_voc(model_dir, lambda sd: sd.__setitem__("conv_post.conv1d.weight", torch.zeros(1, 2, 3)))
    _expect(model_dir, str(path), "unexpected key 'conv_post.conv1d.weight'")


def test_vocoder_shape_mismatch(model_dir: Path) -> None:
    def edit(sd: dict[str, torch.Tensor]) -> None:
        sd["conv_pre.conv1d.weight_v"] = torch.zeros(16, 80, 5)

    path = _edit_voc(model_dir, edit)
    _expect(model_dir, str(path), "shape mismatch", "'conv_pre.conv1d.weight_v'")


def _edit_yaml(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(yaml.safe_dump(data), encoding="utf-8")


def test_wrong_am_config_dimension(model_dir: Path) -> None:
    """A config that does not describe the checkpoint fails on the first mismatching tensor."""
    cfg = model_dir / "voices" / VOICE / "am" / "config.yaml"
    _edit_yaml(cfg, lambda d: d["Model"]["KanTtsSAMBERT"]["params"].__setitem__("encoder_projection_units", 6))
    _expect(model_dir, str(_am_ckpt(model_dir)), "shape mismatch")


def test_am_config_missing_key(model_dir: Path) -> None:
    cfg = model_dir / "voices" / VOICE / "am" / "config.yaml"
    _edit_yaml(cfg, lambda d: d["Model"]["KanTtsSAMBERT"]["params"].pop("num_mels"))
    _expect(model_dir, str(cfg), "Model.KanTtsSAMBERT.params.num_mels")


def test_am_config_bad_value(model_dir: Path) -> None:
    cfg = model_dir / "voices" / VOICE / "am" / "config.yaml"
    _edit_yaml(cfg, lambda d: d["Model"]["KanTtsSAMBERT"]["params"].__setitem__("decoder_num_layers", "twelve"))
    _expect(model_dir, str(cfg), "decoder_num_layers")


def test_se_config_beside_a_speaker_table_is_refused(model_dir: Path) -> None:
    # SE models take an embedding instead of a speaker table (tests/test_sambert_variants.py has the unsupported
    # variants); a checkpoint with a table under an SE config is a mix-up.
    cfg = model_dir / "voices" / VOICE / "am" / "config.yaml"
    _edit_yaml(cfg, lambda d: d["Model"]["KanTtsSAMBERT"]["params"].__setitem__("SE", True))
    _expect(model_dir, str(cfg), "enables SE", "spk_tokenizer.weight")


def test_am_config_not_yaml(model_dir: Path) -> None:
    cfg = model_dir / "voices" / VOICE / "am" / "config.yaml"
    cfg.write_text("Model: [unclosed\n", encoding="utf-8")
    _expect(model_dir, str(cfg))


def test_linguistic_unit_missing(model_dir: Path) -> None:
    cfg = model_dir / "voices" / VOICE / "am" / "config.yaml"
    _edit_yaml(cfg, lambda d: d.pop("linguistic_unit"))
    _expect(model_dir, str(cfg), "linguistic_unit")


def test_speaker_list_changes_vocabulary(model_dir: Path) -> None:
    cfg = model_dir / "voices" / VOICE / "am" / "config.yaml"
    _edit_yaml(cfg, lambda d: d["linguistic_unit"].__setitem__("speaker_list", "F7,F74"))
    _expect(model_dir, "spk_tokenizer.weight", "shape mismatch")


def test_vocoder_config_missing_key(model_dir: Path) -> None:
    cfg = model_dir / "voices" / VOICE / "voc" / "config.yaml"
    _edit_yaml(cfg, lambda d: d["Model"]["Generator"]["params"].pop("upsample_scales"))
    _expect(model_dir, str(cfg), "upsample_scales")


def test_vocoder_config_wrong_channels(model_dir: Path) -> None:
    cfg = model_dir / "voices" / VOICE / "voc" / "config.yaml"
    _edit_yaml(cfg, lambda d: d["Model"]["Generator"]["params"].__setitem__("channels", 32))
    _expect(model_dir, str(_voc_ckpt(model_dir)), "shape mismatch")


def test_missing_phone_set(model_dir: Path) -> None:
    path = model_dir / "voices" / VOICE / "dict" / "PinYin" / "PhoneSet.xml"
    path.unlink()
    _expect(model_dir, str(path))


def test_missing_voices_json(model_dir: Path) -> None:
    (model_dir / "voices" / "voices.json").unlink()
    _expect(model_dir, "voices.json")


def test_voice_listed_but_absent(model_dir: Path) -> None:
    (model_dir / "voices" / "voices.json").write_text('{"voices": ["zhitian_emo", "ghost"]}', encoding="utf-8")
    _expect(model_dir, "'ghost'")


def test_unknown_voice_in_settings(model_dir: Path) -> None:
    with pytest.raises(EngineLoadError, match="ghost"):
        load_sambert_engine(load_settings(model={"model_dir": str(model_dir), "voices": ["ghost"]}))


def test_no_checkpoint(model_dir: Path) -> None:
    _am_ckpt(model_dir).unlink()
    _expect(model_dir, "no checkpoint_<n>.pth", str(_am_ckpt(model_dir).parent))


def test_missing_model_dir(tmp_path: Path) -> None:
    _expect(tmp_path / "nope", str(tmp_path / "nope"))


def test_highest_checkpoint_wins(model_dir: Path, tmp_path: Path) -> None:
    other = build_tiny_model_dir(tmp_path / "other", seed=7)
    ckpt_dir = _am_ckpt(model_dir).parent
    shutil.copy(_am_ckpt(other), ckpt_dir / "checkpoint_10.pth")
    shutil.copy(_am_ckpt(model_dir), ckpt_dir / "checkpoint_9.pth")
    (ckpt_dir / "checkpoint_notanumber.pth").write_bytes(b"ignored")
    assert latest_checkpoint(ckpt_dir) == ckpt_dir / "checkpoint_10.pth"
    engine = _load(model_dir)
    loaded = engine._voices[VOICE].am.text_encoder.sy_emb.weight
    expected = torch.load(ckpt_dir / "checkpoint_10.pth", weights_only=True)["model"]["text_encoder.sy_emb.weight"]
    torch.testing.assert_close(loaded, expected, rtol=0, atol=0)


def test_download_without_modelscope(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "modelscope", None)
    settings = load_settings(model={"model_dir": None, "download_dir": str(tmp_path / "cache")})
    with pytest.raises(EngineLoadError) as info:
        load_sambert_engine(settings)
    message = str(info.value)
    assert "iic/speech_sambert-hifigan_tts_zh-cn_16k" in message
    assert "modelscope" in message
    assert "model_dir" in message


def test_download_failure_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    def snapshot_download(model_id: str, cache_dir: str) -> str:
        raise ConnectionError("network unreachable")

    fake = types.ModuleType("modelscope")
    fake.snapshot_download = snapshot_download  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "modelscope", fake)
    settings = load_settings(model={"download_dir": str(tmp_path / "cache")})
    with pytest.raises(EngineLoadError) as info:
        load_sambert_engine(settings)
    message = str(info.value)
    assert "network unreachable" in message
    assert "offline" in message
    assert "model_dir" in message


def test_download_success_uses_snapshot(pristine: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    seen: dict[str, str] = {}

    def snapshot_download(model_id: str, cache_dir: str) -> str:
        seen.update(model_id=model_id, cache_dir=cache_dir)
        return str(pristine)

    fake = types.ModuleType("modelscope")
    fake.snapshot_download = snapshot_download  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "modelscope", fake)
    engine = load_sambert_engine(load_settings(model={"model_id": "org/model", "download_dir": str(tmp_path)}))
    assert list(engine.voices()) == [VOICE]
    assert seen == {"model_id": "org/model", "cache_dir": str(tmp_path)}


def test_vocabulary_layout(pristine: Path) -> None:
    voice_dir = pristine / "voices" / VOICE
    config = yaml.safe_load((voice_dir / "am" / "config.yaml").read_text(encoding="utf-8"))
    unit = LinguisticUnit(config["linguistic_unit"], voice_dir / "dict", voice_dir / "am" / "config.yaml")
    assert unit.vocab["tone"] == [
        "tone1",
        "tone_none",
        "tone4",
        "tone2",
        "tone3",
        "tone5",
        "tone0",
        "_",
        "~",
        "@[MASK]",
    ]
    assert unit.vocab["sy"][-7:] == ["@#1", "@#2", "@#3", "@#4", "_", "~", "@[MASK]"]
    assert unit.vocab["speaker_category"] == ["F7", "F74", "FBYN", "FRXL", "M7", "xiaoyu", "_", "~", "@[MASK]"]
    assert len(unit.vocab["emo_category"]) == 36
    assert len(unit.vocab["syllable_flag"]) == len(unit.vocab["word_segment"]) == 8
    encoded = unit.encode(
        "{a_c$tone1$s_both$word_both$emotion_neutral$F74} {#4$tone_none$s_none$word_none$emotion_none$F74}"
    )
    assert encoded.sy.tolist() == [0, unit.vocab["sy"].index("@#4"), unit.vocab["sy"].index("~")]
    assert encoded.tone.tolist() == [0, 1, 8]
    assert encoded.speaker.tolist() == [1, 1, 7]


def test_tables_without_mask_row_load(model_dir: Path) -> None:
    """ModelScope builds the embedding tables without the trailing @[MASK] row; such checkpoints load too."""
    tables = (
        "text_encoder.sy_emb.weight",
        "text_encoder.tone_emb.weight",
        "text_encoder.syllable_flag_emb.weight",
        "text_encoder.ws_emb.weight",
        "emo_tokenizer.weight",
        "spk_tokenizer.weight",
    )

    def edit(sd: dict[str, torch.Tensor]) -> None:
        for key in tables:
            sd[key] = sd[key][:-1].clone()

    _edit_am(model_dir, edit)
    engine = _load(model_dir)
    symbols = "{n_c$tone2$s_begin$word_begin$emotion_neutral$F7} {i_c$tone2$s_end$word_end$emotion_neutral$F7}"
    assert engine.synthesize(symbols, VOICE, "neutral", 1.0, input_format="symbols").audio.size > 0


def test_tables_missing_one_row_only_in_some_streams(model_dir: Path) -> None:
    def edit(sd: dict[str, torch.Tensor]) -> None:
        sd["text_encoder.sy_emb.weight"] = sd["text_encoder.sy_emb.weight"][:-1].clone()

    path = _edit_am(model_dir, edit)
    _expect(model_dir, str(path), "shape mismatch")
