"""Messages that cross the parent/worker process boundary.

Every message is a small frozen dataclass so that the protocol is explicit and picklable under ``spawn``.
Parent -> worker: ``Job``, ``Ping``, ``Cancel``, ``Shutdown``. Worker -> parent: ``Ready``, ``StartupFailed``,
``Pong``, ``Chunk``, ``Result``, ``Failure``, ``Cancelled``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from tts_server.inference.engine import InputFormat, VoiceInfo


@dataclass(frozen=True)
class Job:
    job_id: int
    request_id: str
    text: str
    voice: str
    emotion: str
    speed: float
    #: ``time.monotonic()`` value after which the job must not start (CLOCK_MONOTONIC is system-wide on Linux,
    #: so parent and worker agree on it).
    deadline: float
    #: Send one ``Chunk`` per sentence as it is ready instead of one audio array in the ``Result``.
    stream: bool = False
    #: How the engine must read ``text`` (declared by the client, never guessed from the content).
    input_format: InputFormat = "text"
    #: ``preview``: run only the text frontend and answer with its readings (``Result.preview``), no audio.
    kind: Literal["synthesize", "preview"] = "synthesize"
    #: Version of the user lexicon when the job was admitted; a worker holding an older one re-reads the file
    #: first, so a lexicon change is in effect for the next job in every worker.
    lexicon_version: int = 0
    #: Prosody on top of the text's own (``Engine.synthesize``): pitch shift in model units, gain in dB.
    pitch: float = 0.0
    volume_db: float = 0.0
    #: Fixes a stochastic voice's random draws (``Engine.synthesize``); None draws them fresh.
    seed: int | None = None
    #: Report word, syllable and character timings (``timestamps.TimestampBuilder``): in ``Result.timestamps``,
    #: and for a streaming job per sentence in ``Chunk.timestamps``.
    timestamps: bool = False


@dataclass(frozen=True)
class Shutdown:
    """Finish nothing further and exit cleanly."""


@dataclass(frozen=True)
class Ping:
    """Heartbeat: the worker answers with ``Pong`` at once, idle or busy (a thread in the worker reads the pipe)."""


@dataclass(frozen=True)
class Pong:
    pass


@dataclass(frozen=True)
class Cancel:
    """Stop a streaming job at the next sentence boundary; the worker answers ``Cancelled`` (or has finished)."""

    job_id: int


@dataclass(frozen=True)
class Cancelled:
    job_id: int


@dataclass(frozen=True)
class Ready:
    pid: int
    load_seconds: float
    voices: tuple[VoiceInfo, ...]


@dataclass(frozen=True)
class StartupFailed:
    message: str


@dataclass(frozen=True)
class Chunk:
    job_id: int
    seq: int
    audio: npt.NDArray[np.float32]
    sample_rate: int
    #: A timestamps job: JSON list of the events (``TimestampBuilder.add``) of the sentences whose audio starts
    #: in this chunk; empty when none does.
    timestamps: str = ""


@dataclass(frozen=True)
class Result:
    job_id: int
    #: Whole audio for a non-streaming job; empty for a streaming job (the audio went out as chunks).
    audio: npt.NDArray[np.float32]
    sample_rate: int
    audio_seconds: float
    inference_seconds: float
    stage_seconds: tuple[tuple[str, float], ...]
    #: A preview job's answer, as JSON text (keeps the message a flat, picklable dataclass).
    preview: str = ""
    #: A timestamps job's document (``TimestampBuilder.result``) as JSON text.
    timestamps: str = ""


@dataclass(frozen=True)
class Failure:
    """The job failed; the worker is healthy and takes the next job."""

    job_id: int
    message: str
    param: str | None
    #: True when the input was at fault (-> 4xx), False for an engine fault (-> 500).
    client_error: bool
    #: True when the job was refused because its deadline had already passed.
    expired: bool = False


WorkerMessage = Ready | StartupFailed | Pong | Chunk | Result | Failure | Cancelled
