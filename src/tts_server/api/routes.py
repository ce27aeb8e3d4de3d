"""HTTP routes. Only protocol work happens here: validation, mapping to pool jobs, encoding, headers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tts_server import __version__
from tts_server.api.errors import ApiError, api_error_from_pool
from tts_server.api.schemas import (
    SPEED_MAX,
    SPEED_MIN,
    ErrorResponse,
    HealthResponse,
    InfoResponse,
    ProbeResponse,
    SynthesizeRequest,
    VoiceModel,
    VoicesResponse,
    WorkersModel,
)
from tts_server.api.security import authenticated
from tts_server.inference.audio import FORMATS, SUPPORTED_SAMPLE_RATES, encode, resample, to_int16, wav_stream_header
from tts_server.inference.cache import AudioCache, CachedAudio, CacheKey, normalize_text
from tts_server.inference.messages import Chunk
from tts_server.inference.pool import (
    DeadlineExceeded,
    JobCancelled,
    JobFailed,
    JobHandle,
    NotReady,
    Overloaded,
    PoolError,
    SynthesisOutcome,
    WorkerState,
)

if TYPE_CHECKING:
    from tts_server.api.app import AppState

log = logging.getLogger("tts_server.api")

router = APIRouter()

T = TypeVar("T")

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The body could not be decoded at all (e.g. not UTF-8)."},
    401: {"model": ErrorResponse, "description": "Missing or invalid API key (only with auth enabled); see "
                                                 "WWW-Authenticate."},
    413: {"model": ErrorResponse, "description": "Request body too large."},
    422: {"model": ErrorResponse, "description": "Invalid request; the message names the field and allowed values."},
    500: {"model": ErrorResponse, "description": "Internal error (details are logged, never returned)."},
    429: {"model": ErrorResponse, "description": "Rate limit of this key or client exceeded; see Retry-After."},
    503: {"model": ErrorResponse, "description": "Overloaded or not ready; see the Retry-After header."},
    504: {"model": ErrorResponse, "description": "Synthesis did not finish before the deadline."},
}

STREAMABLE = ("wav", "pcm")


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.tts
    return state


def _request_id(request: Request) -> str:
    rid: str = request.scope.get("state", {}).get("request_id", "-")
    return rid


def _outcome_label(exc: PoolError | ApiError) -> str:
    if isinstance(exc, ApiError):
        return "client_error" if exc.status < 500 else "server_error"
    if isinstance(exc, Overloaded | NotReady):
        return "rejected"
    if isinstance(exc, DeadlineExceeded):
        return "timeout"
    if isinstance(exc, JobCancelled):
        return "cancelled"
    if isinstance(exc, JobFailed) and exc.client_error:
        return "client_error"
    return "server_error"


async def _wait_disconnect(request: Request) -> None:
    # The body has been read, so the next message on the channel is the disconnect.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _resolve(body: SynthesizeRequest, state: AppState) -> tuple[str, str, int]:
    """Voice, emotion and output sample rate after defaults, or a 422 that names what is allowed."""
    voices = state.pool.voices
    if not voices:
        raise NotReady(5, "no worker is ready")
    voice = body.voice or next(iter(voices))
    info = voices.get(voice)
    if info is None:
        raise ApiError(422, f"unknown voice {voice!r}; available voices: {', '.join(voices)}",
                       type_="invalid_request_error", code="unknown_voice", param="voice")
    emotion = body.emotion or info.default_emotion
    if emotion not in info.emotions:
        raise ApiError(422, f"voice {voice!r} has no emotion {emotion!r}; choose one of: {', '.join(info.emotions)}",
                       type_="invalid_request_error", code="unknown_emotion", param="emotion")
    limit = state.settings.limits.max_text_chars
    if len(body.text) > limit:
        raise ApiError(422, f"text is {len(body.text)} characters; the limit is {limit}",
                       type_="invalid_request_error", code="text_too_long", param="text")
    rate = body.sample_rate or info.sample_rate
    spec = FORMATS[body.format]
    allowed = spec.rates or SUPPORTED_SAMPLE_RATES
    if rate not in allowed:
        raise ApiError(422, f"sample_rate {rate} is not supported for {body.format}; choose one of: "
                       f"{', '.join(map(str, allowed))}", type_="invalid_request_error",
                       code="unsupported_sample_rate", param="sample_rate")
    if body.stream and body.format not in STREAMABLE:
        raise ApiError(422, f"streaming supports formats {', '.join(STREAMABLE)}, not {body.format}",
                       type_="invalid_request_error", code="unsupported_stream_format", param="format")
    return voice, emotion, rate


@router.post(
    "/v1/synthesize",
    summary="Synthesise speech",
    response_class=Response,
    responses={200: {"content": {spec.media_type: {} for spec in FORMATS.values()},
                     "description": "Audio in the requested format. Headers: X-Sample-Rate, X-Audio-Duration, "
                                    "X-Cache (hit|miss), X-Request-Id."}, **_ERRORS},
    tags=["synthesis"],
)
async def synthesize(body: SynthesizeRequest, request: Request,
                     principal: Annotated[str, Depends(authenticated)]) -> Response:
    state = _state(request)
    started = time.monotonic()
    request_id = _request_id(request)
    voice = body.voice or "-"
    emotion = body.emotion or "-"
    try:
        voice, emotion, rate = _resolve(body, state)
        job = JobSpec(text=body.text, voice=voice, emotion=emotion, speed=body.speed, fmt=body.format, rate=rate,
                      request_id=request_id, route="/v1/synthesize")
        if body.stream:
            cache = state.cache
            cached = await cache.lookup(job.cache_key(cache), count=True) if cache is not None else None
            if cached is None:
                return await raw_stream_response(state, job, {"X-Sample-Rate": str(job.rate), "X-Cache": "miss"},
                                                 started)
            item, hit = cached, True
        else:
            item, hit = await synthesize_encoded(request, state, job)
    except (PoolError, ApiError) as exc:
        _count_failure(state, exc, voice, emotion)
        # Failures are latency too: a 504 that took 60 s must show in the p95 the alerts watch.
        state.metrics.request_duration.labels("/v1/synthesize", body.format, str(body.stream).lower()).observe(
            time.monotonic() - started)
        raise
    state.metrics.requests.labels(voice, emotion, "ok").inc()
    state.metrics.request_duration.labels("/v1/synthesize", body.format, str(body.stream).lower()).observe(
        time.monotonic() - started)
    spec = FORMATS[body.format]
    return Response(item.data, media_type=spec.media_type, headers={
        "X-Sample-Rate": str(item.sample_rate),
        "X-Audio-Duration": f"{item.audio_seconds:.3f}",
        "X-Cache": "hit" if hit else "miss",
        "Content-Disposition": f'inline; filename="tts-{request_id[:16]}.{spec.extension}"',
    })


@dataclass(frozen=True)
class JobSpec:
    """One resolved synthesis request, whatever route it came from."""

    text: str
    voice: str
    emotion: str
    speed: float
    fmt: str
    rate: int
    request_id: str
    route: str

    def cache_key(self, cache: AudioCache) -> CacheKey:
        return cache.key(text=self.text, voice=self.voice, emotion=self.emotion, speed=self.speed, fmt=self.fmt,
                         sample_rate=self.rate)

    def submit(self, state: AppState, *, stream: bool = False) -> JobHandle:
        # With the cache on, the engine gets exactly the text the cache key holds.
        text = normalize_text(self.text) if state.cache is not None else self.text
        return state.pool.submit(text=text, voice=self.voice, emotion=self.emotion, speed=self.speed,
                                 request_id=self.request_id, stream=stream)


async def synthesize_encoded(request: Request, state: AppState, job: JobSpec) -> tuple[CachedAudio, bool]:
    """Encoded audio for ``job`` and whether it came from the cache (or an identical request in flight)."""
    if state.cache is None:
        return await _until_disconnect(request, _produce(state, job)), False
    cache = state.cache
    return await _until_disconnect(request, cache.get_or_create(job.cache_key(cache), lambda: _produce(state, job)))


async def _produce(state: AppState, job: JobSpec) -> CachedAudio:
    handle = job.submit(state)
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
    return CachedAudio(data, FORMATS[job.fmt].media_type, job.rate, outcome.audio_seconds)


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
        with contextlib.suppress(asyncio.CancelledError, PoolError):
            await task
        raise JobCancelled("client disconnected")
    return task.result()


def _encode(audio: np.ndarray[Any, np.dtype[np.float32]], src_rate: int, rate: int, fmt: str) -> bytes:
    return encode(resample(audio, src_rate, rate), rate, fmt)


def _count_failure(state: AppState, exc: PoolError | ApiError, voice: str, emotion: str) -> None:
    outcome = _outcome_label(exc)
    if isinstance(exc, Overloaded):
        state.metrics.rejected.labels("queue_full").inc()
    elif isinstance(exc, NotReady):
        state.metrics.rejected.labels("not_ready").inc()
    elif isinstance(exc, ApiError) and exc.status == 422:
        state.metrics.rejected.labels("invalid").inc()
    voices = state.pool.voices
    if voice in voices and emotion in voices[voice].emotions:
        # Only known label values: client-supplied strings never become label values.
        state.metrics.requests.labels(voice, emotion, outcome).inc()


async def open_stream(state: AppState, job: JobSpec, started: float) -> tuple[JobHandle, AsyncIterator[bytes]]:
    """Submit a streaming job and wait for its first sentence, so that errors before any audio still get a
    proper status code. Returns the handle and an iterator of s16le PCM chunks at ``job.rate``."""
    handle = job.submit(state, stream=True)
    chunks = handle.chunks()
    try:
        first: Chunk | None = await chunks.__anext__()
    except StopAsyncIteration:
        first = None
    except BaseException:
        state.pool.cancel(handle)
        raise
    state.metrics.ttfa.labels(job.route).observe(time.monotonic() - started)

    async def pcm() -> AsyncIterator[bytes]:
        if first is not None:
            yield to_int16(resample(first.audio, first.sample_rate, job.rate)).astype("<i2").tobytes()
        async for chunk in chunks:
            yield to_int16(resample(chunk.audio, chunk.sample_rate, job.rate)).astype("<i2").tobytes()

    return handle, pcm()


def finish_stream(state: AppState, job: JobSpec, outcome: SynthesisOutcome, started: float) -> None:
    state.metrics.observe_synthesis(outcome, len(job.text))
    state.metrics.requests.labels(job.voice, job.emotion, "ok").inc()
    state.metrics.request_duration.labels(job.route, job.fmt, "true").observe(time.monotonic() - started)


async def raw_stream_response(state: AppState, job: JobSpec, headers: dict[str, str],
                              started: float) -> StreamingResponse:
    """Chunked wav/pcm, one chunk per sentence; errors before the first sentence still get their status code."""
    handle, pcm = await open_stream(state, job, started)

    async def body_iter() -> AsyncIterator[bytes]:
        try:
            if job.fmt == "wav":
                yield wav_stream_header(job.rate)
            async for piece in pcm:
                yield piece
            outcome = await handle.result()
        except PoolError as exc:
            # Headers are gone: raw audio has no in-band error channel, so cutting the connection is the signal.
            _count_failure(state, exc, job.voice, job.emotion)
            log.warning("request %s: stream failed after first byte: %s", job.request_id,
                        api_error_from_pool(exc).message)
            raise
        finally:
            if not handle.done:
                state.pool.cancel(handle)
        finish_stream(state, job, outcome, started)

    return StreamingResponse(body_iter(), media_type=FORMATS[job.fmt].media_type, headers=headers)


_GUARDED: dict[int | str, dict[str, Any]] = {401: _ERRORS[401], 429: _ERRORS[429]}


@router.get("/v1/voices", response_model=VoicesResponse, tags=["synthesis"],
            responses={503: _ERRORS[503], **_GUARDED}, summary="Voices and their emotions",
            dependencies=[Depends(authenticated)])
async def voices(request: Request) -> VoicesResponse:
    pool = _state(request).pool
    if not pool.voices:
        raise NotReady(5, "no worker is ready")
    return VoicesResponse(
        default_voice=next(iter(pool.voices)),
        voices=[VoiceModel(name=v.name, emotions=list(v.emotions), default_emotion=v.default_emotion,
                           sample_rate=v.sample_rate, preview_text=v.preview_text) for v in pool.voices.values()],
    )


@router.get("/v1/info", response_model=InfoResponse, tags=["synthesis"], summary="Server limits and formats",
            responses=_GUARDED, dependencies=[Depends(authenticated)])
async def info(request: Request) -> InfoResponse:
    settings = _state(request).settings
    return InfoResponse(version=__version__, max_text_chars=settings.limits.max_text_chars, speed_min=SPEED_MIN,
                        speed_max=SPEED_MAX, formats=list(FORMATS), sample_rates=list(SUPPORTED_SAMPLE_RATES))


@router.get("/livez", response_model=ProbeResponse, tags=["health"],
            responses={503: {"model": ErrorResponse, "description": "No worker has been ready for too long."}},
            summary="Liveness: the process is up and has had a ready worker recently (pool.liveness_timeout_s)")
async def livez(request: Request) -> Response:
    if _state(request).pool.live:
        return JSONResponse({"status": "ok"})
    return _probe_failure("no worker has been ready for too long")


@router.get("/readyz", response_model=ProbeResponse, tags=["health"],
            responses={503: {"model": ErrorResponse, "description": "No worker ready, or draining."}},
            summary="Readiness: a worker is ready and the server is not draining")
async def readyz(request: Request) -> Response:
    pool = _state(request).pool
    if pool.ready:
        return JSONResponse({"status": "ok"})
    return _probe_failure("draining" if pool.draining else "no worker is ready")


def _probe_failure(reason: str) -> JSONResponse:
    api = api_error_from_pool(NotReady(5, reason))
    return JSONResponse(
        ErrorResponse.model_validate({"error": {"message": reason, "type": api.type, "code": api.code,
                                                "param": None}}).model_dump(),
        status_code=503, headers=api.headers)


@router.get("/health", response_model=HealthResponse, tags=["health"], summary="Detailed health",
            responses={503: {"model": HealthResponse, "description": "No worker is ready."}})
async def health(request: Request) -> JSONResponse:
    stats = _state(request).pool.stats()
    workers = WorkersModel(total=len(stats.workers), starting=stats.count(WorkerState.STARTING),
                           ready=stats.count(WorkerState.READY), busy=stats.count(WorkerState.BUSY),
                           dead=stats.count(WorkerState.DEAD))
    serving = workers.ready + workers.busy
    status = "ok" if serving == workers.total and not stats.draining else ("degraded" if serving else "unavailable")
    body = HealthResponse(status=status, model_loaded=serving > 0, draining=stats.draining, workers=workers,
                          queue_depth=stats.queue_depth, queue_capacity=stats.queue_capacity)
    return JSONResponse(body.model_dump(), status_code=200 if serving else 503)


@router.get("/metrics", tags=["health"], summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request) -> Response:
    registry = _state(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
