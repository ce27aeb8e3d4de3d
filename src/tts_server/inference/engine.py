"""The engine protocol: what a worker process needs from a TTS model.

A worker loads exactly one engine, warms it up and then calls it for every job it is given. The engine is
synchronous and single-threaded from the worker's point of view; parallelism comes from the process pool.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args, runtime_checkable

import numpy as np
import numpy.typing as npt

#: Stage names reported in ``Synthesis.stage_seconds`` (and exported as a metric label).
STAGES = ("frontend", "acoustic", "vocoder")

#: What the ``text`` of a job is, declared by the client: plain text, an SSML document, or KAN-TTS symbol
#: strings. Engines never guess it from the content: a guess lets a client's plain text be read as markup (and
#: markup be read aloud as text).
InputFormat = Literal["text", "ssml", "symbols"]
INPUT_FORMATS: tuple[InputFormat, ...] = get_args(InputFormat)

#: ``pitch``: an additive shift of the acoustic model's predicted per-token pitch, in the model's own units.
#: KAN-TTS models are trained on per-speaker mean/std-normalised f0, so 1.0 is one standard deviation of the
#: speaker's training f0 (roughly 2-4 semitones for typical voices; the exact value depends on the voice's
#: statistics, which published models do not ship). The range keeps the shifted pitch within what the pitch
#: embedding saw in training.
PITCH_MIN, PITCH_MAX = -2.0, 2.0
#: Where a voice comes from: ``built-in`` (the model directory's voices) or ``personal`` (a fine-tuned voice added in
#: the settings).
VoiceKind = Literal["built-in", "personal"]
#: ``volume_db``: gain in dB applied to the waveform, with clipping protection (``audio.apply_gain``).
VOLUME_DB_MIN, VOLUME_DB_MAX = -40.0, 20.0


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
    #: ``built-in`` (from the model directory) or ``personal`` (a fine-tuned voice added in the settings).
    kind: VoiceKind = "built-in"
    #: The audio depends on random draws (NSF excitation): reproducible only with a request ``seed``.
    stochastic: bool = False


# -- timings (the data; ``timestamps`` builds the document) ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Unit:
    """What a run of consecutive symbol tokens reads. ``syllable``: ``label`` is its pinyin, ``source`` the span
    of original text it stands for (None if unknown), ``word`` its word's index in the sentence. ``break``: a
    prosodic break token (``#1``..``#4``). ``mark``: an SSML ``<mark>`` (``label`` is its name) at this point,
    no tokens."""

    kind: Literal["syllable", "break", "mark"]
    label: str
    tokens: int
    source: tuple[int, int] | None = None
    word: int = -1


@dataclass(frozen=True, slots=True)
class SentenceTiming:
    """One sentence's audio as the engine made it: ``frames[i]`` mel frames for token ``i`` (after speed scaling
    and rounding), ``hop`` samples per frame, then ``pause_samples`` of silence. ``units`` cover the tokens in
    order; ``marks_end`` are ``<mark>`` names after the pause."""

    units: tuple[Unit, ...]
    frames: tuple[int, ...]
    hop: int
    pause_samples: int
    marks_end: tuple[str, ...] = ()

    @property
    def samples(self) -> int:
        return sum(self.frames) * self.hop + self.pause_samples


@dataclass(frozen=True)
class Synthesis:
    """Audio for one piece of text: mono float32 in [-1, 1] and how long each stage took.

    ``timings``: how the sentences whose audio starts in this piece were made (frames per token, pause), in audio
    order, for ``timestamps.TimestampBuilder``; for a whole synthesis every sentence. Engines that cannot say
    leave it empty (a timestamps request then fails with a clear message)."""

    audio: npt.NDArray[np.float32]
    sample_rate: int
    stage_seconds: Mapping[str, float] = field(default_factory=dict)
    timings: tuple[SentenceTiming, ...] = ()


@runtime_checkable
class Engine(Protocol):
    """What a worker calls. Implementations must be safe to construct in a spawned process."""

    def voices(self) -> Mapping[str, VoiceInfo]:
        """Voice name -> info; the first entry is the default voice."""
        ...

    def synthesize(
        self, text: str, voice: str, emotion: str, speed: float, *, input_format: InputFormat = "text",
        pitch: float = 0.0, volume_db: float = 0.0, seed: int | None = None,
    ) -> Synthesis:
        """Synthesise the whole text, read as ``input_format``. Raises ``EngineError`` for bad input (an
        ``input_format`` the engine does not support included, with ``param="input_format"``). ``pitch`` and
        ``volume_db`` (see ``PITCH_MIN`` and ``VOLUME_DB_MIN``) apply on top of any SSML ``<prosody>``; their
        defaults change nothing. ``seed`` fixes the random draws of a stochastic voice (``VoiceInfo.stochastic``);
        deterministic voices ignore it."""
        ...

    def synthesize_stream(
        self, text: str, voice: str, emotion: str, speed: float, *, input_format: InputFormat = "text",
        pitch: float = 0.0, volume_db: float = 0.0, seed: int | None = None,
    ) -> Iterator[Synthesis]:
        """Synthesise sentence by sentence, yielding each sentence's audio as soon as it is ready."""
        ...

    def warm_up(self) -> None:
        """Run one short synthesis so that the first real request does not pay for lazy initialisation."""
        ...


@runtime_checkable
class SupportsLexicon(Protocol):
    """An engine with a text frontend that takes a user lexicon (optional: the worker checks for it)."""

    def set_lexicon(self, entries: Mapping[str, str]) -> None:
        """Replace the user lexicon: word -> canonical readings (``chong2 qing4``), already validated."""
        ...

    def preview(self, text: str, voice: str, *, input_format: InputFormat = "text") -> dict[str, Any]:
        """JSON-able view of what the frontend would read (see ``Frontend.preview``). Raises ``EngineError``."""
        ...
