"""The serving layer shared by every synthesis route: resolve -> run (whole, cached or streamed) -> record.

Routes only translate their protocol into a ``SpeechJob`` and render what comes back. Everything else happens
here, once: voice and emotion checks, the audio cache, client-disconnect handling, and the request metrics, which an
``Exchange`` records exactly once per request whatever the route and however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import numpy as np
import numpy.typing as npt
from fastapi import Request
from fastapi.responses import StreamingResponse
from starlette.types import Send

from tts_server.api import errors
from tts_server.api.errors import ApiError, api_error, invalid
from tts_server.api.state import AppState, app_state, request_id
from tts_server.inference.audio import (
    FORMATS,
    SUPPORTED_SAMPLE_RATES,
    StreamResampler,
    encode,
    resample,
    to_int16,
)
from tts_server.inference.cache import CachedAudio, CacheKey
from tts_server.inference.engine import InputFormat, VoiceInfo
from tts_server.inference.lexicon import Lexicon
from tts_server.inference.messages import Chunk
from tts_server.inference.pool import JobCancelled, JobHandle, NotReady, PoolError

log = logging.getLogger("tts_server.api")

T = TypeVar("T")

#: Formats that can be sent chunk by chunk (a streaming wav header, or raw PCM).
STREAMABLE: Final = ("wav", "pcm")


@dataclass(frozen=True)
class SpeechJob:
    """One resolved synthesis request, whatever route it came from."""

    text: str
    input_format: InputFormat
    voice: str
    emotion: str
    speed: float
    fmt: str
    rate: int
    request_id: str
    route: str
    #: The user lexicon when the request was resolved: its version goes to the worker, its fingerprint into
    #: the cache key.
    lexicon: Lexicon = field(default_factory=Lexicon)
    pitch: float = 0.0
    volume_db: float = 0.0
    #: The voice's audio depends on random draws (``VoiceInfo.stochastic``).
    stochastic: bool = False
    #: Fixes those draws; always None for a deterministic voice (it would change nothing, so it is neither sent
    #: to the worker nor part of the cache key).
    seed: int | None = None
    #: Timings wanted: the worker builds them, the cache stores them with the audio (under a key of their own).
    timestamps: bool = False

    def cache_key(self, state: AppState) -> CacheKey | None:
        """The job's cache key, or None when its audio must not be cached: no cache, or a stochastic voice
        without a seed (each such request gets fresh draws, so a stored answer would be the wrong one)."""
        if state.cache is None or (self.stochastic and self.seed is None):
            return None
        return state.cache.key(text=self.text, input_format=self.input_format, voice=self.voice,
                               emotion=self.emotion, speed=self.speed, fmt=self.fmt, sample_rate=self.rate,
                               lexicon=self.lexicon.fingerprint, pitch=self.pitch, volume_db=self.volume_db,
                               seed=self.seed, timestamps=self.timestamps)


# --- resolving ----------------------------------------------------------------------------------------------


def voice_info(state: AppState, voice: str | None) -> VoiceInfo:
    """The named voice (the default one when None), or 503 before any worker reported its voices, or 422."""
    voices = state.pool.voices
    if not voices:
        raise NotReady(5, "no worker is ready")
    name = voice or next(iter(voices))
    info = voices.get(name)
    if info is None:
        raise invalid(errors.UNKNOWN_VOICE, f"unknown voice {name!r}; available voices: {', '.join(voices)}",
                      "voice")
    return info


def check_emotion(info: VoiceInfo, emotion: str | None) -> str:
    """The voice's emotion (its default when None), or a 422 that lists the ones it has."""
    if emotion is None:
        return info.default_emotion
    if emotion not in info.emotions:
        raise invalid(errors.UNKNOWN_EMOTION, f"voice {info.name!r} has no emotion {emotion!r}; choose one of: "
                      f"{', '.join(info.emotions)}", "emotion")
    return emotion


def check_text(state: AppState, text: str, param: str) -> None:
    limit = state.settings.limits.max_text_chars
    if len(text) > limit:
        raise invalid(errors.TEXT_TOO_LONG, f"{param} is {len(text)} characters; the limit is {limit}", param)


def check_rate(fmt: str, rate: int) -> None:
    allowed = FORMATS[fmt].rates or SUPPORTED_SAMPLE_RATES
    if rate not in allowed:
        raise invalid(errors.UNSUPPORTED_SAMPLE_RATE, f"sample_rate {rate} is not supported for {fmt}; choose one "
                      f"of: {', '.join(map(str, allowed))}", "sample_rate")


# --- one request ----------------------------------------------------------------------------------------------


class Exchange:
    """One synthesis request from arrival to its last byte. Records the request metrics exactly once: the
    outcome in ``tts_requests_total`` (once voice and emotion are known, so labels stay bounded), the rejection
    reason, and the latency in ``tts_request_duration_seconds`` for failures too (a 504 that took 60 s must
    show in the p95 the alerts watch)."""

    def __init__(self, request: Request, *, route: str, fmt: str, stream: bool) -> None:
        self.request = request
        self.state = app_state(request)
        self.request_id = request_id(request)
        self.route = route
        self.fmt = fmt
        self.stream = stream
        self.started = time.monotonic()
        self.job: SpeechJob | None = None
        self._recorded = False

    def job_for(self, *, text: str, input_format: InputFormat, voice: str, emotion: str, speed: float,
                rate: int, pitch: float = 0.0, volume_db: float = 0.0, stochastic: bool = False,
                seed: int | None = None, timestamps: bool = False) -> SpeechJob:
        self.job = SpeechJob(text=text, input_format=input_format, voice=voice, emotion=emotion, speed=speed,
                             fmt=self.fmt, rate=rate, request_id=self.request_id, route=self.route,
                             lexicon=self.state.lexicon.current, pitch=pitch, volume_db=volume_db,
                             stochastic=stochastic, seed=seed if stochastic else None, timestamps=timestamps)
        return self.job

    @contextlib.contextmanager
    def failures(self) -> Iterator[None]:
        """Record any pool or API error raised inside and re-raise it as the ``ApiError`` the client gets."""
        try:
            yield
        except (PoolError, ApiError) as exc:
            raise self.fail(exc) from None

    def fail(self, exc: PoolError | ApiError) -> ApiError:
        error = api_error(exc)
        if not self._recorded:
            self._recorded = True
            metrics = self.state.metrics
            metrics.count_rejection(error.kind.reject_reason)
            if self.job is not None:
                metrics.requests.labels(self.job.voice, self.job.emotion, error.kind.outcome).inc()
            self._observe_duration()
        return error

    def succeed(self) -> None:
        if self._recorded:
            return
        self._recorded = True
        assert self.job is not None
        self.state.metrics.requests.labels(self.job.voice, self.job.emotion, "ok").inc()
        self._observe_duration()

    def _observe_duration(self) -> None:
        if self.fmt in FORMATS:  # a refused format (OpenAI's aac) is no series of its own
            self.state.metrics.request_duration.labels(self.route, self.fmt, str(self.stream).lower()).observe(
                time.monotonic() - self.started)


# --- whole responses ------------------------------------------------------------------------------------------


async def synthesize_whole(ex: Exchange, job: SpeechJob) -> tuple[CachedAudio, bool]:
    """Encoded audio for ``job`` and whether it came from the cache (or an identical request in flight)."""
    state = ex.state
    key = job.cache_key(state)
    if state.cache is None or key is None:
        return await _until_disconnect(ex.request, _produce(state, job)), False
    cache = state.cache
    return await _until_disconnect(ex.request, cache.get_or_create(key, lambda: _produce(state, job)))


async def cached(ex: Exchange, job: SpeechJob) -> CachedAudio | None:
    """A stored entry for a streaming request (served whole); streams are never stored."""
    key = job.cache_key(ex.state)
    if ex.state.cache is None or key is None:
        return None
    return await ex.state.cache.lookup(key, count=True)


def audio_headers(item: CachedAudio, hit: bool, job: SpeechJob) -> dict[str, str]:
    return {
        "X-Sample-Rate": str(item.sample_rate),
        "X-Audio-Duration": f"{item.audio_seconds:.3f}",
        "X-Cache": "hit" if hit else "miss",
        "Content-Disposition": f'inline; filename="tts-{job.request_id[:16]}.{FORMATS[job.fmt].extension}"',
    }


def _submit(state: AppState, job: SpeechJob, *, stream: bool) -> JobHandle:
    return state.pool.submit(text=job.text, input_format=job.input_format, voice=job.voice, emotion=job.emotion,
                             speed=job.speed, request_id=job.request_id, stream=stream,
                             lexicon_version=job.lexicon.version, pitch=job.pitch, volume_db=job.volume_db,
                             seed=job.seed, timestamps=job.timestamps)


async def _produce(state: AppState, job: SpeechJob) -> CachedAudio:
    handle = _submit(state, job, stream=False)
    try:
        outcome = await handle.result()
    except asyncio.CancelledError:
        state.pool.cancel(handle)
        raise
    t_enc = time.perf_counter()
    data = await asyncio.to_thread(_encode, outcome.audio, outcome.sample_rate, job.rate, job.fmt)
    state.metrics.encode.observe(time.perf_counter() - t_enc)
    state.metrics.observe_synthesis(outcome, len(job.text))
    log.info("request %s: %d chars -> %.2fs audio (queue %.3fs, inference %.3fs)", job.request_id, len(job.text),
             outcome.audio_seconds, outcome.queue_wait_seconds, outcome.inference_seconds)
    return CachedAudio(data, FORMATS[job.fmt].media_type, job.rate, outcome.audio_seconds, outcome.timestamps)


def _encode(audio: npt.NDArray[np.float32], src_rate: int, rate: int, fmt: str) -> bytes:
    return encode(resample(audio, src_rate, rate), rate, fmt)


async def _wait_disconnect(request: Request) -> None:
    # The body has been read, so the next message on the channel is the disconnect.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _until_disconnect(request: Request, work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` unless the client goes away first (then it is cancelled and JobCancelled raised)."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        # The server cancelled the handler (e.g. the connection was torn down).
        task.cancel()
        raise
    finally:
        gone.cancel()
    if not task.done():
        task.cancel()
        await asyncio.wait({task})  # its outcome no longer matters; a cancellation of ours still propagates
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as never retrieved
        raise JobCancelled("client disconnected")
    return task.result()


# --- streams ----------------------------------------------------------------------------------------------------


class LiveStream:
    """A streaming job whose first chunk is ready: iterate ``pcm()`` for s16le PCM at the job's rate."""

    def __init__(self, ex: Exchange, job: SpeechJob, handle: JobHandle, chunks: AsyncIterator[Chunk],
                 first: Chunk | None) -> None:
        self.ex = ex
        self.job = job
        self._handle = handle
        self._chunks = chunks
        self._first = first
        #: Timestamps events (a timestamps job's) of the chunks read so far that nobody has taken yet.
        self._events: list[dict[str, Any]] = []

    def take_timestamps(self) -> list[dict[str, Any]]:
        """The per-sentence timestamps events that arrived with the chunks ``pcm`` has read so far (each comes
        with its sentence's first chunk, so before that sentence's audio), once each."""
        events, self._events = self._events, []
        return events

    def _note(self, chunk: Chunk) -> None:
        if chunk.timestamps:
            self._events.extend(json.loads(chunk.timestamps))

    async def pcm(self) -> AsyncIterator[bytes]:
        """The audio, chunk by chunk as the worker makes them (resampled as one continuous signal, so that the
        concatenation equals the whole response's samples). A failure after the first byte is recorded and raised
        as the ``ApiError`` it maps to; a client that goes away (the iterator is closed or cancelled) cancels the
        job, so its worker stops at the next chunk, and is counted as cancelled."""
        state, job = self.ex.state, self.job
        resampler: StreamResampler | None = None
        try:
            if self._first is not None:
                self._note(self._first)
                resampler = StreamResampler(self._first.sample_rate, job.rate)
                if pcm := _pcm16(resampler.push(self._first.audio)):
                    yield pcm
            async for chunk in self._chunks:
                self._note(chunk)
                if resampler is None:
                    resampler = StreamResampler(chunk.sample_rate, job.rate)
                if pcm := _pcm16(resampler.push(chunk.audio)):
                    yield pcm
            outcome = await self._handle.result()
            if resampler is not None and (pcm := _pcm16(resampler.flush())):
                yield pcm
        except PoolError as exc:
            error = self.ex.fail(exc)
            log.warning("request %s: stream failed after first byte: %s", job.request_id, error.message)
            raise error from None
        finally:
            if not self._handle.done:
                state.pool.cancel(self._handle)
                self.ex.fail(JobCancelled("client disconnected"))
                log.info("request %s: client left mid-stream; job cancelled", job.request_id)
        state.metrics.observe_synthesis(outcome, len(job.text))
        self.ex.succeed()


def _pcm16(audio: npt.NDArray[np.float32]) -> bytes:
    return to_int16(audio).astype("<i2").tobytes()


async def open_stream(ex: Exchange, job: SpeechJob) -> LiveStream:
    """Submit a streaming job and wait for its first chunk, so that errors before any audio still get a
    proper status code; a client that leaves meanwhile cancels the job."""
    state = ex.state
    handle = _submit(state, job, stream=True)
    chunks = handle.chunks()
    try:
        first = await _until_disconnect(ex.request, _next_chunk(chunks))
    except BaseException:
        state.pool.cancel(handle)
        raise
    state.metrics.ttfa.labels(job.route).observe(time.monotonic() - ex.started)
    return LiveStream(ex, job, handle, chunks, first)


async def _next_chunk(chunks: AsyncIterator[Chunk]) -> Chunk | None:
    return await anext(chunks, None)


class StreamAborted(Exception):
    """Raised by a body iterator whose stream failed after the headers went out."""


class AbortableStreamingResponse(StreamingResponse):
    """A chunked response that a failure cuts off without the closing chunk, so the client sees a broken
    transfer rather than a short file that looks complete; raw audio has no in-band error channel. The failure
    was logged once already, with its request id: no traceback."""

    async def stream_response(self, send: Send) -> None:
        with contextlib.suppress(StreamAborted):
            await super().stream_response(send)
