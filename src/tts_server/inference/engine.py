"""The engine protocol: what a worker process needs from a TTS model.

A worker loads exactly one engine, warms it up and then calls it for every job it is given. The engine is
synchronous and single-threaded from the worker's point of view; parallelism comes from the process pool.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from tts_server.config import Settings

#: How a job's text is to be read: plain text, an SSML document, or KAN-TTS symbol strings.
InputFormat = Literal["text", "ssml", "symbols"]

#: Stage names reported in ``Synthesis.stage_seconds`` (and exported as a metric label).
STAGES = ("frontend", "acoustic", "vocoder")


class EngineError(Exception):
    """A job failed because of its input or the model; the worker itself is healthy.

    ``public_message`` is safe to show to a client (it never contains internals); ``param`` names the request
    field at fault where there is one.
    """

    def __init__(self, public_message: str, *, param: str | None = None, client_error: bool = True) -> None:
        super().__init__(public_message)
        self.public_message = public_message
        self.param = param
        self.client_error = client_error


class EngineLoadError(Exception):
    """The engine could not be loaded (missing model, bad config, corrupted checkpoint)."""


@dataclass(frozen=True)
class VoiceInfo:
    """A voice and the emotions it was trained with. ``default_emotion`` is one of ``emotions``."""

    name: str
    emotions: tuple[str, ...]
    default_emotion: str
    sample_rate: int
    preview_text: str = "欢迎使用语音合成服务。"


@dataclass(frozen=True)
class Synthesis:
    """Audio for one piece of text: mono float32 in [-1, 1] and how long each stage took."""

    audio: npt.NDArray[np.float32]
    sample_rate: int
    stage_seconds: Mapping[str, float] = field(default_factory=dict)


@runtime_checkable
class Engine(Protocol):
    """What a worker calls. Implementations must be safe to construct in a spawned process."""

    def voices(self) -> Mapping[str, VoiceInfo]:
        """Voice name -> info; the first entry is the default voice."""
        ...

    def synthesize(self, text: str, voice: str, emotion: str, speed: float) -> Synthesis:
        """Synthesise the whole text. Raises ``EngineError`` for bad input."""
        ...

    def synthesize_stream(self, text: str, voice: str, emotion: str, speed: float) -> Iterator[Synthesis]:
        """Synthesise sentence by sentence, yielding each sentence's audio as soon as it is ready."""
        ...

    def warm_up(self) -> None:
        """Run one short synthesis so that the first real request does not pay for lazy initialisation."""
        ...


def load_engine(settings: Settings) -> Engine:
    """Build the engine named by ``settings.engine.name``.

    ``sambert`` is the product engine. Any other value must be ``package.module:factory`` where ``factory``
    takes the settings and returns an engine; the tests use this to plug in small deterministic engines.
    """
    name = settings.engine.name
    if name == "sambert":
        from tts_server.inference.sambert.engine import load_sambert_engine

        return load_sambert_engine(settings)
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        raise EngineLoadError(f"engine.name must be 'sambert' or 'module:factory', got {name!r}")
    try:
        module = importlib.import_module(module_name)
        factory = getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise EngineLoadError(f"cannot import engine factory {name!r}: {exc}") from exc
    engine = factory(settings)
    if not isinstance(engine, Engine):
        raise EngineLoadError(f"engine factory {name!r} returned {type(engine).__name__}, not an Engine")
    return engine
