"""OpenAI-compatible speech: ``POST /v1/audio/speech`` and ``GET /v1/models``.

Differences from OpenAI, each announced in a response header where it applies:

- ``voice``: our voice names, or OpenAI's names (alloy, echo, ...), which all map to the default voice
  (``X-Voice-Mapped: alloy=zhitian_emo``). A ``{"id": ...}`` voice object names one of our voices.
- ``instructions``: only emotion words are understood (happy/cheerful -> happy, sad -> sad, angry -> angry, ...,
  English or Chinese) and only when the voice has that emotion (``X-Emotion``); anything else is ignored with
  ``X-Instructions-Ignored: true``. Our ``emotion`` field may be sent instead (``extra_body`` in the SDK).
- ``speed``: OpenAI's 0.25-4.0 is accepted and clamped to the model's 0.5-2.0 (``X-Speed-Applied``).
- ``response_format``: mp3, opus, flac, wav, pcm. ``aac`` is refused with 422 (no AAC encoder in libsndfile).
  ``pcm`` is s16le mono at the model's 16 kHz (``X-Sample-Rate``); ``?pcm_24khz=true`` or the setting
  ``openai.pcm_24khz`` resamples it to OpenAI's 24 kHz.
- ``stream_format``: omitted -> the whole file (cacheable); ``audio`` -> wav/pcm sent sentence by sentence as
  they are synthesised (wav with a streaming header), other formats whole; ``sse`` -> ``speech.audio.delta``
  events with base64 audio and a final ``speech.audio.done`` with usage (tokens are input characters). An error
  after the first event is sent in-band as an ``error`` event.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any, Final, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tts_server.api.errors import ApiError, api_error_from_pool
from tts_server.api.routes import (
    _ERRORS,
    JobSpec,
    _count_failure,
    _request_id,
    _state,
    finish_stream,
    open_stream,
    raw_stream_response,
    synthesize_encoded,
)
from tts_server.api.schemas import SPEED_MAX, SPEED_MIN
from tts_server.api.security import authenticated
from tts_server.inference.audio import FORMATS, wav_stream_header
from tts_server.inference.cache import CachedAudio
from tts_server.inference.pool import NotReady, PoolError

if TYPE_CHECKING:
    from tts_server.api.app import AppState

log = logging.getLogger("tts_server.api")

router = APIRouter()

OPENAI_VOICES: Final = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer",
                        "verse", "marin", "cedar")
#: OpenAI model names accepted as aliases of the one model this server runs.
OPENAI_MODELS: Final = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-mini-tts-2025-12-15")
OPENAI_SPEED_MIN: Final = 0.25
OPENAI_SPEED_MAX: Final = 4.0
OPENAI_PCM_RATE: Final = 24000
STREAMABLE: Final = ("wav", "pcm")
#: Seconds since the epoch at import; OpenAI's model objects carry a creation time.
_CREATED: Final = int(time.time())

SpeechFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]

#: Emotion words (English, whole words; Chinese, substrings) -> the emotion names Sambert voices use.
_EMOTION_WORDS: Final[dict[str, tuple[str, ...]]] = {
    "happy": ("happy", "happily", "cheerful", "cheerfully", "joyful", "joyfully", "joyous", "excited", "upbeat",
              "glad", "delighted", "开心", "高兴", "快乐", "愉快"),
    "sad": ("sad", "sadly", "sorrowful", "melancholy", "melancholic", "unhappy", "gloomy", "depressed", "悲伤",
            "难过", "伤心"),
    "angry": ("angry", "angrily", "furious", "mad", "annoyed", "irritated", "生气", "愤怒"),
    "fear": ("fear", "fearful", "scared", "afraid", "frightened", "nervous", "害怕", "恐惧"),
    "surprise": ("surprised", "surprise", "astonished", "amazed", "惊讶", "吃惊"),
    "disgust": ("disgust", "disgusted", "厌恶", "恶心"),
    "neutral": ("neutral", "calm", "calmly", "plain", "flat", "平静", "中性"),
}
_WORD = re.compile(r"[a-z]+")


def emotion_from_instructions(instructions: str) -> str | None:
    """The first emotion word in the instructions, as an emotion name, or None."""
    text = instructions.lower()
    best: tuple[int, str] | None = None
    words = {m.group(): m.start() for m in reversed(list(_WORD.finditer(text)))}
    for emotion, cues in _EMOTION_WORDS.items():
        for cue in cues:
            pos = words.get(cue, -1) if cue.isascii() else text.find(cue)
            if pos >= 0 and (best is None or pos < best[0]):
                best = (pos, emotion)
    return best[1] if best is not None else None


class VoiceRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(..., min_length=1, description="A voice name from GET /v1/voices.")


class SpeechRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"model": "tts-1", "input": "欢迎使用语音合成服务。", "voice": "alloy",
                                         "response_format": "wav", "instructions": "Speak cheerfully."}]},
    )

    model: str = Field(..., description="A model id from GET /v1/models (OpenAI names are aliases).")
    input: str = Field(..., description="Text to speak; at most `limits.max_text_chars` characters.")
    voice: str | VoiceRef = Field(..., description="One of our voices, or an OpenAI voice name (mapped to the "
                                                   "default voice, see X-Voice-Mapped).")
    instructions: str | None = Field(None, max_length=4096, description="Emotion words are mapped to the voice's "
                                                                        "emotions; the rest is ignored.")
    response_format: SpeechFormat = Field("mp3", description="aac is not supported (422).")
    speed: float = Field(1.0, ge=OPENAI_SPEED_MIN, le=OPENAI_SPEED_MAX,
                         description=f"Clamped to {SPEED_MIN}-{SPEED_MAX} (see X-Speed-Applied).")
    stream_format: Literal["sse", "audio"] | None = Field(None, description="Omitted: the whole file. audio: "
                                                                            "chunked per sentence (wav, pcm). sse: "
                                                                            "server-sent events.")
    emotion: str | None = Field(None, description="Extension: one of the voice's emotions (wins over "
                                                  "instructions).")

    @field_validator("input")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("input must not be empty")
        return value


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


def _model_ids(state: AppState) -> list[str]:
    return [state.settings.model.model_id, *OPENAI_MODELS]


def _invalid(message: str, code: str, param: str) -> ApiError:
    return ApiError(422, message, type_="invalid_request_error", code=code, param=param)


_SPEECH_CONTENT: dict[str, Any] = {
    **{FORMATS[f].media_type: {"schema": {"type": "string", "format": "binary"}}
       for f in ("mp3", "opus", "flac", "wav", "pcm")},
    "text/event-stream": {"schema": {"type": "string"}},
}


@router.post(
    "/v1/audio/speech",
    summary="Synthesise speech (OpenAI-compatible)",
    response_class=Response,
    responses={200: {"content": _SPEECH_CONTENT,
                     "description": "Audio in response_format, or server-sent events with stream_format=sse. "
                                    "Headers: X-Sample-Rate, X-Cache, and X-Voice-Mapped, X-Emotion, "
                                    "X-Instructions-Ignored, X-Speed-Applied where they apply."}, **_ERRORS},
    tags=["openai"],
)
async def speech(body: SpeechRequest, request: Request, principal: Annotated[str, Depends(authenticated)],
                 pcm_24khz: Annotated[bool | None, Query(description="Resample pcm to 24 kHz (OpenAI-exact); "
                                                                     "default from openai.pcm_24khz.")] = None,
                 ) -> Response:
    state = _state(request)
    started = time.monotonic()
    voice, emotion = "-", "-"
    try:
        job, headers = _resolve(body, state, _request_id(request), pcm_24khz)
        voice, emotion = job.voice, job.emotion
        headers["X-Sample-Rate"] = str(job.rate)
        streaming = body.stream_format is not None and job.fmt in STREAMABLE
        item: CachedAudio | None = None
        hit = False
        if streaming and state.cache is not None:
            item = await state.cache.lookup(job.cache_key(state.cache), count=True)
            hit = item is not None
        if streaming and item is None:
            headers["X-Cache"] = "miss"
            if body.stream_format == "sse":
                return await _sse_stream(state, job, headers, started)
            return await raw_stream_response(state, job, headers, started)
        if item is None:
            item, hit = await synthesize_encoded(request, state, job)
    except (PoolError, ApiError) as exc:
        _count_failure(state, exc, voice, emotion)
        raise
    headers["X-Cache"] = "hit" if hit else "miss"
    state.metrics.requests.labels(job.voice, job.emotion, "ok").inc()
    state.metrics.request_duration.labels(job.route, job.fmt, str(body.stream_format is not None).lower()).observe(
        time.monotonic() - started)
    if body.stream_format == "sse":
        return StreamingResponse(_sse_whole(item, len(job.text)), media_type="text/event-stream",
                                 headers={**headers, "Cache-Control": "no-cache"})
    return Response(item.data, media_type=item.media_type, headers=headers)


def _resolve(body: SpeechRequest, state: AppState, request_id: str,
             pcm_24khz: bool | None) -> tuple[JobSpec, dict[str, str]]:
    headers: dict[str, str] = {}
    if body.model not in _model_ids(state):
        raise _invalid(f"unknown model {body.model!r}; available models: {', '.join(_model_ids(state))}",
                       "model_not_found", "model")
    if body.response_format == "aac":
        raise _invalid("response_format aac is not supported by this server; use mp3, opus, flac, wav or pcm",
                       "unsupported_format", "response_format")
    voices = state.pool.voices
    if not voices:
        raise NotReady(5, "no worker is ready")
    default_voice = next(iter(voices))
    requested = body.voice.id if isinstance(body.voice, VoiceRef) else body.voice
    if requested in voices:
        voice = requested
    elif requested.lower() in OPENAI_VOICES:
        voice = default_voice
        headers["X-Voice-Mapped"] = f"{requested}={voice}"
    else:
        raise _invalid(f"unknown voice {requested!r}; available voices: {', '.join(voices)} (OpenAI voice names "
                       f"map to {default_voice})", "unknown_voice", "voice")
    info = voices[voice]
    if body.emotion is not None:
        if body.emotion not in info.emotions:
            raise _invalid(f"voice {voice!r} has no emotion {body.emotion!r}; choose one of: "
                           f"{', '.join(info.emotions)}", "unknown_emotion", "emotion")
        emotion = body.emotion
        if body.instructions:
            headers["X-Instructions-Ignored"] = "true"
    else:
        emotion = info.default_emotion
        if body.instructions:
            wanted = emotion_from_instructions(body.instructions)
            if wanted is not None and wanted in info.emotions:
                emotion = wanted
                headers["X-Instructions-Ignored"] = "false"
            else:
                headers["X-Instructions-Ignored"] = "true"
    headers["X-Emotion"] = emotion
    limit = state.settings.limits.max_text_chars
    if len(body.input) > limit:
        raise _invalid(f"input is {len(body.input)} characters; the limit is {limit}", "text_too_long", "input")
    speed = min(SPEED_MAX, max(SPEED_MIN, body.speed))
    if speed != body.speed:
        headers["X-Speed-Applied"] = f"{speed:g}"
    fmt = body.response_format
    rate = info.sample_rate
    if fmt == "pcm" and (pcm_24khz if pcm_24khz is not None else state.settings.openai.pcm_24khz):
        rate = OPENAI_PCM_RATE
    allowed = FORMATS[fmt].rates
    if allowed is not None and rate not in allowed:
        # Only reachable with an unusual model rate; the closest codec rate above keeps the quality.
        rate = min((r for r in allowed if r >= rate), default=allowed[-1])
    job = JobSpec(text=body.input, voice=voice, emotion=emotion, speed=speed, fmt=fmt, rate=rate,
                  request_id=request_id, route="/v1/audio/speech")
    return job, headers


def _event(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


def _delta(audio: bytes) -> bytes:
    return _event({"type": "speech.audio.delta", "audio": base64.b64encode(audio).decode("ascii")})


def _done(characters: int) -> bytes:
    # Nothing here is tokenised; usage counts input characters so clients that sum usage still get a number.
    return _event({"type": "speech.audio.done",
                   "usage": {"input_tokens": characters, "output_tokens": 0, "total_tokens": characters}})


#: Whole files are sent in pieces of this size so no single event is huge.
_SSE_PIECE: Final = 48 * 1024


async def _sse_whole(item: CachedAudio, characters: int) -> AsyncIterator[bytes]:
    for offset in range(0, max(1, len(item.data)), _SSE_PIECE):
        yield _delta(item.data[offset:offset + _SSE_PIECE])
    yield _done(characters)


async def _sse_stream(state: AppState, job: JobSpec, headers: dict[str, str], started: float) -> Response:
    handle, pcm = await open_stream(state, job, started)

    async def body_iter() -> AsyncIterator[bytes]:
        try:
            if job.fmt == "wav":
                yield _delta(wav_stream_header(job.rate))
            async for piece in pcm:
                yield _delta(piece)
            outcome = await handle.result()
        except PoolError as exc:
            _count_failure(state, exc, job.voice, job.emotion)
            api = api_error_from_pool(exc)
            log.warning("request %s: stream failed after first event: %s", job.request_id, api.message)
            # The status line is long gone; SSE can still say what happened.
            yield _event({"type": "error", "error": {"message": api.message, "type": api.type, "code": api.code,
                                                     "param": api.param}})
            return
        finally:
            if not handle.done:
                state.pool.cancel(handle)
        finish_stream(state, job, outcome, started)
        yield _done(len(job.text))

    return StreamingResponse(body_iter(), media_type="text/event-stream",
                             headers={**headers, "Cache-Control": "no-cache"})


@router.get("/v1/models", response_model=ModelList, tags=["openai"], summary="Models (OpenAI-compatible)",
            responses={401: _ERRORS[401], 429: _ERRORS[429]}, dependencies=[Depends(authenticated)])
async def models(request: Request) -> ModelList:
    return ModelList(data=[ModelObject(id=m, created=_CREATED, owned_by="tts-server")
                           for m in _model_ids(_state(request))])


@router.get("/v1/models/{model_id:path}", response_model=ModelObject, tags=["openai"],
            summary="One model (OpenAI-compatible)", dependencies=[Depends(authenticated)],
            responses={404: {"model": _ERRORS[422]["model"], "description": "No such model."},
                       401: _ERRORS[401], 429: _ERRORS[429]})
async def model(model_id: str, request: Request) -> ModelObject:
    if model_id not in _model_ids(_state(request)):
        raise ApiError(404, f"model {model_id!r} not found", type_="invalid_request_error", code="model_not_found",
                       param="model")
    return ModelObject(id=model_id, created=_CREATED, owned_by="tts-server")
