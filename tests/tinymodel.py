"""Tiny random-weight Sambert-HifiGan model directories in the published ModelScope layout.

The directory has everything the real engine reads (configuration.json, voices.json, per-voice configs, dictionary
and ``checkpoint_0.pth`` files with the published key layout, vocoder weights weight-normalised) but small
dimensions, so tests and worker processes can run the real loading and inference code in milliseconds.

    from tests.tinymodel import build_tiny_model_dir   # or: from tinymodel import ...
    model_dir = build_tiny_model_dir(tmp_path / "model", voices=("zhitian_emo", "zhiyan_emo"))

Variants (``Variant``): a personal voice (speaker embedding ``am/se.npy`` + NSF f0/voicing channels + an NSF HiFi-GAN,
``nsf_norm`` ``global`` or ``mean_std`` with ``am/mvn.npy``), 24 kHz (KAN-TTS ``sambert_24k`` + ``hifigan_v1_24k``:
hop 240) and a MAS checkpoint (with the training-only ``align_attention`` weights). ``build_tiny_personal_voice``
writes a personal voice laid out like a fine-tune's output and returns its ``[[voices.extra]]`` entry.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml

from tts_server.inference.sambert.acoustic import SambertConfig, SambertModel
from tts_server.inference.sambert.linguistic import LinguisticUnit
from tts_server.inference.sambert.nsf import NsfHifiGanGenerator
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


@dataclass(frozen=True)
class Variant:
    """Which published model variant a tiny voice imitates (the default: the 16 kHz zhitian_emo kind)."""

    #: Speaker embedding input (``am/se.npy``) and NSF f0/voicing channels with an NSF vocoder: a personal voice.
    personal: bool = False
    nsf_norm: Literal["global", "mean_std"] = "global"
    #: 24 kHz with hop 240 (``sambert_24k`` + ``hifigan_v1_24k``) instead of 16 kHz with hop 200.
    khz24: bool = False
    #: Trained with MAS: the checkpoint carries the alignment module's weights (training-only).
    mas: bool = False
    causal: bool = True

    @property
    def sample_rate(self) -> int:
        return 24000 if self.khz24 else SAMPLE_RATE

    @property
    def hop(self) -> int:
        return 240 if self.khz24 else HOP


#: Published 24 kHz vocoder upsampling is [10, 6, 2, 2] = 240; the tiny one keeps three stages.
_UPSAMPLE_24K = {"upsample_scales": [10, 6, 4], "upsample_kernal_sizes": [20, 12, 8]}


def _align_attention(seed: int) -> dict[str, torch.Tensor]:
    """Weights in the layout of KAN-TTS's MAS ``ConvAttention`` (key and query projections); inference ignores them."""
    g = torch.Generator().manual_seed(seed)
    shapes = {"key_proj.0.conv": (16, 8, 3), "key_proj.2.conv": (80, 16, 1), "query_proj.0.conv": (160, 80, 3),
              "query_proj.2.conv": (80, 160, 1), "query_proj.4.conv": (80, 80, 1)}
    out: dict[str, torch.Tensor] = {}
    for stem, shape in shapes.items():
        out[f"align_attention.{stem}.weight"] = torch.randn(shape, generator=g) * 0.1
        out[f"align_attention.{stem}.bias"] = torch.zeros(shape[0])
    return out


def _phone_set_xml() -> str:
    entries = []
    for i, name in enumerate(PHONES):
        entries.append(f"  <phone>\n    <id>{i}</id>\n    <name>{name}</name>\n  </phone>")
    body = "\n".join(entries)
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<phoneSet xmlns="http://schemas.alibaba-inc.com/tts">\n'
        f"{body}\n</phoneSet>\n"
    )


def _write_voice(root: Path, seed: int, variant: Variant = Variant()) -> None:
    lang = root / "dict" / "PinYin"
    lang.mkdir(parents=True)
    (lang / "PhoneSet.xml").write_text(_phone_set_xml(), encoding="utf-8")
    (lang / "tonelist.txt").write_text("\n".join(TONES) + "\n", encoding="utf-8")
    (root / "audio_config.yaml").write_text(
        yaml.safe_dump({"audio_config": {"sampling_rate": variant.sample_rate, "hop_length": variant.hop,
                                         "n_mels": 80, "se_feature": variant.personal}}),
        encoding="utf-8",
    )
    am_params = dict(AM_PARAMS, MAS=variant.mas)
    if variant.personal:
        am_params.update(SE=True, NSF=True, num_mels=82, nsf_norm_type=variant.nsf_norm,
                         nsf_f0_global_minimum=30.0, nsf_f0_global_maximum=730.0)
    am_cfg = {
        "model_type": "sambert",
        "Model": {"KanTtsSAMBERT": {"params": am_params}},
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
    am = SambertModel(SambertConfig.from_params(am_params, unit.vocab_sizes(), str(am_cfg_path)))
    with torch.no_grad():
        # Like the parity set: make predicted durations land around 3-5 frames instead of collapsing to zero.
        fc = am.variance_adaptor.duration_predictor.fc
        fc.weight.mul_(0.5)
        fc.bias.fill_(1.6)
        if variant.personal:
            # Voiced and unvoiced frames both occur, the normalised f0 in a speech-like range (as in the parity set).
            bias = am.mel_postnet.fc.bias
            bias[81] += 0.6
            bias[80] -= 0.5
    am_state = am.state_dict()
    if variant.mas:
        am_state.update(_align_attention(seed))
    torch.save({"model": am_state}, root / "am" / "ckpt" / "checkpoint_0.pth")
    if variant.personal:
        rng = np.random.default_rng(seed)
        np.save(root / "am" / "se.npy", rng.standard_normal((1, AM_PARAMS["speaker_units"])).astype(np.float32))
        # f0 mean and standard deviation in Hz (used by nsf_norm_type mean_std).
        np.save(root / "am" / "mvn.npy", np.array([[200.0], [50.0]], dtype=np.float32))

    voc_params = dict(VOC_PARAMS, causal=variant.causal)
    if variant.khz24:
        voc_params.update(_UPSAMPLE_24K)
    if variant.personal:
        voc_params["nsf_params"] = {"nb_harmonics": 7, "sampling_rate": variant.sample_rate,
                                    "nsf_norm_type": variant.nsf_norm, "nsf_f0_global_minimum": 30.0,
                                    "nsf_f0_global_maximum": 730.0}
    (root / "voc" / "ckpt").mkdir(parents=True)
    (root / "voc" / "config.yaml").write_text(
        yaml.safe_dump({"model_type": "hifigan", "Model": {"Generator": {"params": voc_params}}}),
        encoding="utf-8",
    )
    voc_cfg = HifiGanConfig.from_params(voc_params, "tiny")
    voc = NsfHifiGanGenerator(voc_cfg) if variant.personal else HifiGanGenerator(voc_cfg)
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


def build_tiny_model_dir(path: Path, *, voices: tuple[str, ...] = ("zhitian_emo",), seed: int = 0,
                         variant: Variant = Variant()) -> Path:
    """Write a tiny model directory at ``path`` (created) and return it. Deterministic for a given seed."""
    path = Path(path)
    (path / "voices").mkdir(parents=True, exist_ok=True)
    (path / "configuration.json").write_text(
        json.dumps(
            {
                "framework": "pytorch",
                "task": "text-to-speech",
                "model": {"type": "sambert-hifigan", "lang_type": "zhcn", "sample_rate": variant.sample_rate},
                "pipeline": {"type": "sambert-hifigan-tts"},
            }
        ),
        encoding="utf-8",
    )
    (path / "voices" / "voices.json").write_text(json.dumps({"voices": list(voices)}), encoding="utf-8")
    for i, name in enumerate(voices):
        _write_voice(path / "voices" / name, seed + i, variant)
    return path


def build_tiny_personal_voice(path: Path, name: str = "my_voice", *, seed: int = 7,
                              variant: Variant = Variant(personal=True, causal=False)) -> dict[str, str]:
    """Write a tiny personal voice at ``path`` the way a personal-TTS fine-tune lays out its output (``am/``,
    ``voc/``, ``se/se.npy``, ``data/mvn.npy``, ``audio_config.yaml``; no dictionary: it shares its base model's) and
    return its ``[[voices.extra]]`` entry, with paths relative to ``path``."""
    path = Path(path)
    _write_voice(path, seed, variant)
    (path / "se").mkdir()
    (path / "am" / "se.npy").rename(path / "se" / "se.npy")
    (path / "data").mkdir()
    (path / "am" / "mvn.npy").rename(path / "data" / "mvn.npy")
    for file in sorted((path / "dict").rglob("*"), reverse=True):
        file.unlink() if file.is_file() else file.rmdir()
    (path / "dict").rmdir()
    return {"name": name, "am_config": "am/config.yaml", "am_checkpoint": "am/ckpt", "voc_config": "voc/config.yaml",
            "voc_checkpoint": "voc/ckpt/checkpoint_0.pth", "se": "se/se.npy", "mvn": "data/mvn.npy",
            "audio_config": "audio_config.yaml"}
