"""Tiny random-weight Sambert-HifiGan model directories in the published ModelScope layout.

The directory has everything the real engine reads (configuration.json, voices.json, per-voice configs, dictionary
and ``checkpoint_0.pth`` files with the published key layout, vocoder weights weight-normalised) but small
dimensions, so tests and worker processes can run the real loading and inference code in milliseconds.

    from tests.tinymodel import build_tiny_model_dir   # or: from tinymodel import ...
    model_dir = build_tiny_model_dir(tmp_path / "model", voices=("zhitian_emo", "zhiyan_emo"))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml

from tts_server.inference.sambert.acoustic import SambertConfig, SambertModel
from tts_server.inference.sambert.linguistic import LinguisticUnit
from tts_server.inference.sambert.vocoder import HifiGanConfig, HifiGanGenerator

SPEAKERS = "F7,F74,FBYN,FRXL,M7,xiaoyu"
SAMPLE_RATE = 16000
HOP = 200


def _words(text: str) -> list[str]:
    return text.split()


# Mandarin phones of the KAN-TTS PinYin phone set (initials, finals, zero-initial fillers, English phones, erhua
# finals, pause), in the published order.
_CN = _words(
    "a ai an ang ao b c ch d e ei en eng er f g h i ia ian iang iao ie ih ii in ing io iong iou j k l m n o ong ou "
    "p q r s sh t u ua uai uan uang uei uen ueng uo v van ve vn xx z zh w y"
)
_FILLERS = ["ga", "ge", "go"]
_EN = _words("aa ae ah ao aw ay b ch d dh eh er ey f g hh ih iy jh k l m n ng ow oy p r s sh t th uh uw v w y z zh")
_ERHUA = _words(
    "air angr anr aor ar eir engr enr iangr ianr iaor iar ier ihr iir ingr inr iongr iour ir ongr or our uair "
    "uangr uanr uar ueir uenr uor ur vanr ver vnr vr"
)
PHONES = [p + "_c" for p in _CN] + _FILLERS + _EN + [p + "_c" for p in _ERHUA] + ["pau"]
TONES = ["1", "", "4", "2", "3", "5", "0"]

AM_PARAMS: dict[str, Any] = {
    "max_len": 64,
    "embedding_dim": 16,
    "encoder_num_layers": 2,
    "encoder_num_heads": 2,
    "encoder_num_units": 8,
    "encoder_ffn_inner_dim": 16,
    "encoder_dropout": 0.1,
    "encoder_attention_dropout": 0.1,
    "encoder_relu_dropout": 0.1,
    "encoder_projection_units": 4,
    "speaker_units": 4,
    "emotion_units": 4,
    "predictor_filter_size": 5,
    "predictor_fsmn_num_layers": 2,
    "predictor_num_memory_units": 8,
    "predictor_ffn_inner_dim": 8,
    "predictor_dropout": 0.1,
    "predictor_shift": 0,
    "predictor_lstm_units": 4,
    "dur_pred_prenet_units": [8, 8],
    "dur_pred_lstm_units": 8,
    "decoder_prenet_units": [8, 8],
    "decoder_num_layers": 2,
    "decoder_num_heads": 2,
    "decoder_num_units": 8,
    "decoder_ffn_inner_dim": 16,
    "decoder_dropout": 0.1,
    "decoder_attention_dropout": 0.1,
    "decoder_relu_dropout": 0.1,
    "outputs_per_step": 3,
    "num_mels": 80,
    "postnet_filter_size": 5,
    "postnet_fsmn_num_layers": 2,
    "postnet_num_memory_units": 8,
    "postnet_ffn_inner_dim": 8,
    "postnet_dropout": 0.1,
    "postnet_shift": 1,
    "postnet_lstm_units": 8,
    "MAS": False,
}

VOC_PARAMS: dict[str, Any] = {
    "in_channels": 80,
    "out_channels": 1,
    "channels": 16,
    "kernel_size": 3,
    "upsample_scales": [10, 5, 4],
    "upsample_kernal_sizes": [20, 10, 8],
    "resblock_kernel_sizes": [3],
    "resblock_dilations": [[1, 2]],
    "bias": True,
    "causal": True,
    "nonlinear_activation": "LeakyReLU",
    "nonlinear_activation_params": {"negative_slope": 0.1},
    "use_weight_norm": True,
}


def _phone_set_xml() -> str:
    entries = []
    for i, name in enumerate(PHONES):
        entries.append(f"  <phone>\n    <id>{i}</id>\n    <name>{name}</name>\n  </phone>")
    body = "\n".join(entries)
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<phoneSet xmlns="http://schemas.alibaba-inc.com/tts">\n'
        f"{body}\n</phoneSet>\n"
    )


def _write_voice(root: Path, seed: int) -> None:
    lang = root / "dict" / "PinYin"
    lang.mkdir(parents=True)
    (lang / "PhoneSet.xml").write_text(_phone_set_xml(), encoding="utf-8")
    (lang / "tonelist.txt").write_text("\n".join(TONES) + "\n", encoding="utf-8")
    (root / "audio_config.yaml").write_text(
        yaml.safe_dump({"audio_config": {"sampling_rate": SAMPLE_RATE, "hop_length": HOP, "n_mels": 80}}),
        encoding="utf-8",
    )
    am_cfg = {
        "model_type": "sambert",
        "Model": {"KanTtsSAMBERT": {"params": dict(AM_PARAMS)}},
        "linguistic_unit": {
            "cleaners": "english_cleaners",
            "lfeat_type_list": "sy,tone,syllable_flag,word_segment,emo_category,speaker_category",
            "speaker_list": SPEAKERS,
        },
    }
    (root / "am" / "ckpt").mkdir(parents=True)
    am_cfg_path = root / "am" / "config.yaml"
    am_cfg_path.write_text(yaml.safe_dump(am_cfg, sort_keys=False), encoding="utf-8")
    unit = LinguisticUnit(am_cfg["linguistic_unit"], root / "dict", am_cfg_path)

    torch.manual_seed(seed)
    am = SambertModel(SambertConfig.from_params(AM_PARAMS, unit.vocab_sizes(), str(am_cfg_path)))
    with torch.no_grad():
        # Like the parity set: make predicted durations land around 3-5 frames instead of collapsing to zero.
        fc = am.variance_adaptor.duration_predictor.fc
        fc.weight.mul_(0.5)
        fc.bias.fill_(1.6)
    torch.save({"model": am.state_dict()}, root / "am" / "ckpt" / "checkpoint_0.pth")

    (root / "voc" / "ckpt").mkdir(parents=True)
    (root / "voc" / "config.yaml").write_text(
        yaml.safe_dump({"model_type": "hifigan", "Model": {"Generator": {"params": dict(VOC_PARAMS)}}}),
        encoding="utf-8",
    )
    voc = HifiGanGenerator(HifiGanConfig.from_params(VOC_PARAMS, "tiny"))
    state: dict[str, torch.Tensor] = {}
    for key, value in voc.state_dict().items():
        if key.endswith(".weight"):
            stem = key[: -len("weight")]
            v = torch.randn_like(value) * 0.1
            state[stem + "weight_g"] = torch.linalg.vector_norm(v, dim=tuple(range(1, v.dim())), keepdim=True)
            state[stem + "weight_v"] = v
        else:
            state[key] = value.clone()
    torch.save({"model": {"generator": state}}, root / "voc" / "ckpt" / "checkpoint_0.pth")


def build_tiny_model_dir(path: Path, *, voices: tuple[str, ...] = ("zhitian_emo",), seed: int = 0) -> Path:
    """Write a tiny model directory at ``path`` (created) and return it. Deterministic for a given seed."""
    path = Path(path)
    (path / "voices").mkdir(parents=True, exist_ok=True)
    (path / "configuration.json").write_text(
        json.dumps(
            {
                "framework": "pytorch",
                "task": "text-to-speech",
                "model": {"type": "sambert-hifigan", "lang_type": "zhcn", "sample_rate": SAMPLE_RATE},
                "pipeline": {"type": "sambert-hifigan-tts"},
            }
        ),
        encoding="utf-8",
    )
    (path / "voices" / "voices.json").write_text(json.dumps({"voices": list(voices)}), encoding="utf-8")
    for i, name in enumerate(voices):
        _write_voice(path / "voices" / name, seed + i)
    return path
