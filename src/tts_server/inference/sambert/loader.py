"""Reading a model directory in the published ModelScope Sambert-HifiGan layout.

Layout (per voice, under ``voices/<name>/``): ``am/config.yaml``, ``am/ckpt/checkpoint_<n>.pth`` (``['model']``),
``voc/config.yaml``, ``voc/ckpt/checkpoint_<n>.pth`` (``['model']['generator']``), ``dict/<language>/`` (phone set
and tone list). ``voices/voices.json`` lists the voices; its first entry is the default voice. Voices outside the
directory (``[[voices.extra]]`` in the settings) name each of their files (``extra_voice_files``).

Everything here fails with :class:`EngineLoadError` whose message names the file (and key) at fault, because a
worker that cannot load its model must say exactly why before it exits.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml

from tts_server.inference.engine import EngineLoadError, VoiceKind

if TYPE_CHECKING:
    from tts_server.config import ExtraVoice

logger = logging.getLogger(__name__)

_CHECKPOINT_RE = re.compile(r"^checkpoint_(\d+)\.pth$")


@dataclass(frozen=True)
class VoiceFiles:
    """Where one voice's files are."""

    name: str
    root: Path
    am_config: Path
    am_checkpoint: Path
    voc_config: Path
    voc_checkpoint: Path
    dict_dir: Path
    #: Speaker embedding (SE acoustic models) and f0 mean/std (NSF ``mean_std``); read only when the configs
    #: need them.
    se: Path | None = None
    mvn: Path | None = None
    #: ``built-in`` (listed in the model directory) or ``personal`` (added by ``[[voices.extra]]``).
    kind: VoiceKind = "built-in"
    #: KAN-TTS ``audio_config.yaml``, checked against the model when it exists.
    audio_config: Path | None = None


def resolve_model_dir(model_dir: Path | None, model_id: str, download_dir: Path) -> Path:
    """Return a local model directory: ``model_dir`` as given, or ``model_id`` fetched through ModelScope."""
    if model_dir is not None:
        path = Path(model_dir).expanduser()
        if not path.is_dir():
            raise EngineLoadError(f"model.model_dir {path} does not exist or is not a directory")
        return path
    try:
        from modelscope import snapshot_download
    except ImportError as exc:
        raise EngineLoadError(
            f"model.model_dir is not set and model {model_id!r} cannot be downloaded: the optional package "
            f"'modelscope' is not installed ({exc}). Either set model.model_dir (TTS_MODEL__MODEL_DIR) to a local "
            f"copy of the model in the published layout, or install modelscope and pre-download it with "
            f"modelscope.snapshot_download({model_id!r}, cache_dir={str(download_dir)!r})."
        ) from exc
    try:
        downloaded = snapshot_download(model_id, cache_dir=str(download_dir))
    except Exception as exc:  # the hub client raises many unrelated types (network, auth, disk)
        raise EngineLoadError(
            f"downloading model {model_id!r} into {download_dir} with modelscope.snapshot_download failed: "
            f"{type(exc).__name__}: {exc}. If this machine is offline, pre-download the model elsewhere and set "
            f"model.model_dir (TTS_MODEL__MODEL_DIR) to it."
        ) from exc
    return Path(downloaded)


def read_voice_names(model_dir: Path) -> list[str]:
    """Voice names from ``voices/voices.json``, in file order (the first is the default)."""
    path = model_dir / "voices" / "voices.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise EngineLoadError(f"{path} not found: {model_dir} is not a Sambert-HifiGan model directory") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EngineLoadError(f"cannot read {path}: {exc}") from exc
    voices = data.get("voices") if isinstance(data, dict) else None
    if not isinstance(voices, list) or not voices or not all(isinstance(v, str) and v for v in voices):
        raise EngineLoadError(f'{path}: expected {{"voices": [<name>, ...]}} with at least one voice name')
    if len(set(voices)) != len(voices):
        raise EngineLoadError(f"{path}: duplicate voice names in {voices}")
    return list(voices)


def latest_checkpoint(ckpt_dir: Path) -> Path:
    """The ``checkpoint_<n>.pth`` with the highest ``n`` (the most trained one, as ModelScope picks it)."""
    if not ckpt_dir.is_dir():
        raise EngineLoadError(f"checkpoint directory {ckpt_dir} not found")
    found: list[tuple[int, Path]] = []
    for entry in ckpt_dir.iterdir():
        m = _CHECKPOINT_RE.match(entry.name)
        if m and entry.is_file():
            found.append((int(m.group(1)), entry))
    if not found:
        raise EngineLoadError(f"no checkpoint_<n>.pth file in {ckpt_dir}")
    return max(found)[1]


def voice_files(model_dir: Path, name: str, language: str | None = None) -> VoiceFiles:
    root = model_dir / "voices" / name
    if not root.is_dir():
        raise EngineLoadError(f"voice {name!r} is listed in voices.json but {root} does not exist")
    am_config = root / "am" / "config.yaml"
    voc_config = root / "voc" / "config.yaml"
    for cfg in (am_config, voc_config):
        if not cfg.is_file():
            raise EngineLoadError(f"voice {name!r}: {cfg} not found")
    return VoiceFiles(
        name=name,
        root=root,
        am_config=am_config,
        am_checkpoint=latest_checkpoint(root / "am" / "ckpt"),
        voc_config=voc_config,
        voc_checkpoint=latest_checkpoint(root / "voc" / "ckpt"),
        dict_dir=root / "dict",
        se=root / "am" / "se.npy",
        mvn=root / "am" / "mvn.npy",
        audio_config=root / "audio_config.yaml",
    )


def _checkpoint(path: Path, what: str) -> Path:
    """A checkpoint file as given, or the latest ``checkpoint_<n>.pth`` of a directory."""
    if path.is_dir():
        return latest_checkpoint(path)
    if not path.is_file():
        raise EngineLoadError(f"{what} {path} does not exist")
    return path


def extra_voice_files(entry: ExtraVoice, default_dict_dir: Path) -> VoiceFiles:
    """The files of a ``[[voices.extra]]`` voice, each checked to exist (the speaker embedding and f0 statistics
    are checked when the configs turn out to need them)."""
    for what, path in (("am_config", entry.am_config), ("voc_config", entry.voc_config)):
        if not path.is_file():
            raise EngineLoadError(f"{what} {path} does not exist")
    dict_dir = entry.dict_dir if entry.dict_dir is not None else default_dict_dir
    if not dict_dir.is_dir():
        raise EngineLoadError(f"dict_dir {dict_dir} does not exist (the folder holding the voice's PinYin/ "
                              f"dictionary)")
    for what, optional in (("se", entry.se), ("mvn", entry.mvn), ("audio_config", entry.audio_config)):
        if optional is not None and not optional.is_file():
            raise EngineLoadError(f"{what} {optional} does not exist")
    return VoiceFiles(
        name=entry.name,
        root=entry.am_config.parent,
        am_config=entry.am_config,
        am_checkpoint=_checkpoint(entry.am_checkpoint, "am_checkpoint"),
        voc_config=entry.voc_config,
        voc_checkpoint=_checkpoint(entry.voc_checkpoint, "voc_checkpoint"),
        dict_dir=dict_dir,
        se=entry.se,
        mvn=entry.mvn,
        kind="personal",
        audio_config=entry.audio_config,
    )


def audio_config_rate(path: Path) -> int | None:
    """``audio_config.sampling_rate`` of a KAN-TTS ``audio_config.yaml`` (None when it has none)."""
    section = read_yaml(path).get("audio_config")
    rate = section.get("sampling_rate") if isinstance(section, Mapping) else None
    return rate if isinstance(rate, int) and not isinstance(rate, bool) and rate > 0 else None


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        with path.open("r", encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise EngineLoadError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise EngineLoadError(f"{path}: expected a YAML mapping at the top level")
    return data


def _walk(node: Any, keys: Sequence[str]) -> tuple[Any, int]:
    """``node[k1][k2]...`` and how many keys were found: fewer than ``len(keys)`` means ``keys[found]`` is
    missing (or its parent is not a mapping)."""
    for found, key in enumerate(keys):
        if not isinstance(node, Mapping) or key not in node:
            return None, found
        node = node[key]
    return node, len(keys)


def config_section(config: Mapping[str, Any], path: Path, *keys: str) -> dict[str, Any]:
    """``config[k1][k2]...`` as a mapping, or an error naming the missing key and file."""
    node, found = _walk(config, keys)
    if found < len(keys):
        raise EngineLoadError(f"{path}: missing key '{'.'.join(keys[: found + 1])}'")
    if not isinstance(node, Mapping):
        raise EngineLoadError(f"{path}: '{'.'.join(keys)}' must be a mapping")
    return dict(node)


def load_state_dict(path: Path, *keys: str) -> dict[str, torch.Tensor]:
    """Load a checkpoint and return ``ckpt[k1][k2]...`` as a tensor dict.

    ``weights_only=True`` first (no code execution from the file); every failure names the file.
    """
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise EngineLoadError(f"checkpoint {path} not found") from exc
    except Exception as exc:  # a damaged file surfaces as any of a dozen unpickler/zip/IO exception types
        raise EngineLoadError(f"cannot load checkpoint {path} (corrupted or not a torch checkpoint): {exc}") from exc
    obj, found = _walk(obj, keys)
    if found < len(keys):
        raise EngineLoadError(f"checkpoint {path}: missing entry {''.join(f'[{k!r}]' for k in keys[: found + 1])}")
    if not isinstance(obj, Mapping):
        raise EngineLoadError(f"checkpoint {path}: {''.join(f'[{k!r}]' for k in keys)} is not a state dict")
    state: dict[str, torch.Tensor] = {}
    for name, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise EngineLoadError(f"checkpoint {path}: entry {name!r} is not a tensor")
        state[str(name)] = value
    return state


def load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Copy ``state`` into ``module``; every key must exist on both sides with the same shape."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise EngineLoadError(f"checkpoint {path}: missing key {missing[0]!r}{more}")
    if unexpected:
        more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
        raise EngineLoadError(f"checkpoint {path}: unexpected key {unexpected[0]!r}{more}")
    for key, target in own.items():
        value = state[key]
        if tuple(value.shape) != tuple(target.shape):
            raise EngineLoadError(
                f"checkpoint {path}: shape mismatch for key {key!r}: checkpoint has {tuple(value.shape)}, "
                f"the model built from its config expects {tuple(target.shape)}"
            )
        if not value.is_floating_point() and target.is_floating_point():
            raise EngineLoadError(f"checkpoint {path}: key {key!r} has dtype {value.dtype}, expected floating point")
    module.load_state_dict(dict(state), strict=True)
