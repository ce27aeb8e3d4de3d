"""Native HTTP routes: ``/v1/synthesize``, voices, info, probes and metrics. Protocol work only; the serving
layer (``api.serving``) runs and records every synthesis."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from tts_server import __version__
from tts_server.api import errors
from tts_server.api.emotions import core_emotions, emotion_labels
from tts_server.api.errors import GUARDED_ERRORS, SYNTHESIS_ERRORS, ApiError, invalid
from tts_server.api.schemas import (
    SPEED_MAX,
    SPEED_MIN,
    HealthResponse,
    InfoResponse,
    ProbeResponse,
    SynthesizeRequest,
    TimestampedAudio,
    VoiceModel,
    VoicesResponse,
    WorkersModel,
)
from tts_server.api.security import authenticated
from tts_server.api.serving import (
    STREAMABLE,
    AbortableStreamingResponse,
    Exchange,
    LiveStream,
    SpeechJob,
    StreamAborted,
    audio_headers,
    cached,
    check_emotion,
    check_rate,
    check_text,
    open_stream,
    synthesize_whole,
    voice_info,
)
from tts_server.api.state import app_state
from tts_server.inference.audio import FORMATS, SUPPORTED_SAMPLE_RATES, wav_stream_header
from tts_server.inference.cache import CachedAudio
from tts_server.inference.pool import NotReady, WorkerState

router = APIRouter()

ROUTE = "/v1/synthesize"


def _resolve(body: SynthesizeRequest, ex: Exchange) -> SpeechJob:
    state = ex.state
    info = voice_info(state, body.voice)
    emotion = check_emotion(info, body.emotion)
    check_text(state, body.text, "text")
    rate = body.sample_rate or info.sample_rate
    check_rate(body.format, rate)
    if body.stream and body.timestamps:
        raise invalid(errors.INVALID_REQUEST, "timestamps come with a whole response, not with stream; for timings "
                      "per sentence stream server-sent events from /v1/audio/speech (stream_format sse, timestamps "
                      "true)", "timestamps")
    if body.stream and body.format not in STREAMABLE:
        raise invalid(errors.UNSUPPORTED_STREAM_FORMAT, f"streaming supports formats {', '.join(STREAMABLE)}, "
                      f"not {body.format}", "format")
    return ex.job_for(text=body.text, input_format=body.input_format, voice=info.name, emotion=emotion,
                      speed=body.speed, rate=rate, pitch=body.pitch, volume_db=body.volume,
                      stochastic=info.stochastic, seed=body.seed, timestamps=body.timestamps)


@router.post(
    ROUTE,
    summary="Synthesise speech",
    response_class=Response,
    responses={200: {"content": {spec.media_type: {} for spec in FORMATS.values()}, "model": TimestampedAudio,
                     "description": "Audio in the requested format; with `timestamps: true` JSON (application/json: "
                                    "the audio base64 and its timings). Headers: X-Sample-Rate, X-Audio-Duration, "
                                    "X-Cache (hit|miss), X-Request-Id."}, **SYNTHESIS_ERRORS},
    tags=["synthesis"],
)
async def synthesize(body: SynthesizeRequest, request: Request,
                     principal: Annotated[str, Depends(authenticated)]) -> Response:
    ex = Exchange(request, route=ROUTE, fmt=body.format, stream=body.stream)
    with ex.failures():
        job = _resolve(body, ex)
        item = await cached(ex, job) if body.stream else None
        if body.stream and item is None:
            live = await open_stream(ex, job)
            return AbortableStreamingResponse(raw_audio(live), media_type=FORMATS[job.fmt].media_type,
                                              headers={"X-Sample-Rate": str(job.rate), "X-Cache": "miss"})
        hit = item is not None
        if item is None:
            item, hit = await synthesize_whole(ex, job)
    ex.succeed()
    if job.timestamps:
        return Response(timestamped_body(item, job.fmt), media_type="application/json",
                        headers={k: v for k, v in audio_headers(item, hit, job).items() if k.startswith("X-")})
    return Response(item.data, media_type=FORMATS[job.fmt].media_type, headers=audio_headers(item, hit, job))


def timestamped_body(item: CachedAudio, fmt: str) -> bytes:
    """The ``TimestampedAudio`` JSON: the document the worker built, with the encoded audio beside it."""
    document = json.loads(item.timestamps)
    document.pop("sample_rate", None)  # the model's; the response's is the audio's as sent
    body = {"audio": base64.b64encode(item.data).decode("ascii"), "format": fmt,
            "sample_rate": item.sample_rate, "duration": item.audio_seconds, **document}
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


async def raw_audio(live: LiveStream) -> AsyncIterator[bytes]:
    """Chunked wav (with a streaming header) or raw PCM, one HTTP chunk per engine chunk."""
    if live.job.fmt == "wav":
        yield wav_stream_header(live.job.rate)
    try:
        async for piece in live.pcm():
            yield piece
    except ApiError:
        raise StreamAborted from None


@router.get("/v1/voices", response_model=VoicesResponse, tags=["synthesis"],
            responses={**errors.openapi_errors(503), **GUARDED_ERRORS}, summary="Voices: kind, sample rate, emotions",
            dependencies=[Depends(authenticated)])
async def voices(request: Request) -> VoicesResponse:
    pool = app_state(request).pool
    if not pool.voices:
        raise NotReady(5, "no worker is ready")
    return VoicesResponse(
        default_voice=next(iter(pool.voices)),
        voices=[VoiceModel(name=v.name, kind=v.kind,
                           stochastic=v.stochastic, emotions=list(v.emotions), core_emotions=core_emotions(v.emotions),
                           emotion_labels=emotion_labels(v.emotions), default_emotion=v.default_emotion,
                           sample_rate=v.sample_rate, preview_text=v.preview_text) for v in pool.voices.values()],
    )


@router.get("/v1/info", response_model=InfoResponse, tags=["synthesis"], summary="Server limits and formats",
            responses=GUARDED_ERRORS, dependencies=[Depends(authenticated)])
async def info(request: Request) -> InfoResponse:
    settings = app_state(request).settings
    return InfoResponse(version=__version__, max_text_chars=settings.limits.max_text_chars, speed_min=SPEED_MIN,
                        speed_max=SPEED_MAX, formats=list(FORMATS), sample_rates=list(SUPPORTED_SAMPLE_RATES))


@router.get("/livez", response_model=ProbeResponse, tags=["health"], responses=errors.openapi_errors(503),
            summary="Liveness: the process is up and has had a ready worker recently (pool.liveness_timeout_s)")
async def livez(request: Request) -> Response:
    if app_state(request).pool.live:
        return JSONResponse({"status": "ok"})
    # Restarting the pod is the remedy: no worker could be started for longer than any model load takes.
    return ApiError(errors.NOT_LIVE, retry_after=5).response()


@router.get("/readyz", response_model=ProbeResponse, tags=["health"], responses=errors.openapi_errors(503),
            summary="Readiness: a worker is ready and the server is not draining")
async def readyz(request: Request) -> Response:
    pool = app_state(request).pool
    if pool.ready:
        return JSONResponse({"status": "ok"})
    return ApiError(errors.DRAINING if pool.draining else errors.NOT_READY, retry_after=5).response()


@router.get("/health", response_model=HealthResponse, tags=["health"], summary="Detailed health",
            responses={503: {"model": HealthResponse, "description": "No worker is ready."}})
async def health(request: Request) -> JSONResponse:
    stats = app_state(request).pool.stats()
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
    registry = app_state(request).metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
