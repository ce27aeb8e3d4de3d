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
- ``stream_format``: omitted -> the whole file (cacheable); ``audio`` -> wav/pcm sent chunk by chunk (a few mel
  frames each) as they are synthesised (wav with a streaming header), other formats whole; ``sse`` ->
  ``speech.audio.delta`` events with base64 audio and a final ``speech.audio.done`` with usage (tokens are input
  characters). An error after the first event is sent in-band as an ``error`` event. With our ``timestamps``
  extension (sse only) a ``speech.timestamps`` event precedes each sentence's audio: its ``sentence``, ``words``,
  ``syllables``, ``characters`` and ``marks``, shaped like the /v1/synthesize timestamps answer.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Final

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse

from tts_server.api import errors
from tts_server.api.errors import GUARDED_ERRORS, SYNTHESIS_ERRORS, ApiError, invalid
from tts_server.api.routes import raw_audio
from tts_server.api.schemas import SPEED_MAX, SPEED_MIN, ModelList, ModelObject, SpeechRequest, VoiceRef
from tts_server.api.security import authenticated
from tts_server.api.serving import (
    STREAMABLE,
    AbortableStreamingResponse,
    Exchange,
    LiveStream,
    SpeechJob,
    audio_headers,
    cached,
    check_emotion,
    check_text,
    open_stream,
    synthesize_whole,
    voice_info,
)
from tts_server.api.state import AppState, app_state
from tts_server.inference.audio import FORMATS, wav_stream_header
from tts_server.inference.cache import CachedAudio
from tts_server.inference.timestamps import sentence_events

router = APIRouter()

ROUTE: Final = "/v1/audio/speech"
OPENAI_VOICES: Final = ("alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer",
                        "verse", "marin", "cedar")
#: OpenAI model names accepted as aliases of the one model this server runs.
OPENAI_MODELS: Final = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "gpt-4o-mini-tts-2025-12-15")
OPENAI_PCM_RATE: Final = 24000
#: Seconds since the epoch at import; OpenAI's model objects carry a creation time.
_CREATED: Final = int(time.time())

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


def _model_ids(state: AppState) -> list[str]:
    return [state.settings.model.model_id, *OPENAI_MODELS]


_SPEECH_CONTENT: dict[str, Any] = {
    **{FORMATS[f].media_type: {"schema": {"type": "string", "format": "binary"}}
       for f in ("mp3", "opus", "flac", "wav", "pcm")},
    "text/event-stream": {"schema": {"type": "string"}},
}


@router.post(
    ROUTE,
    summary="Synthesise speech (OpenAI-compatible)",
    response_class=Response,
    responses={200: {"content": _SPEECH_CONTENT,
                     "description": "Audio in response_format, or server-sent events with stream_format=sse. "
                                    "Headers: X-Sample-Rate, X-Cache, and X-Voice-Mapped, X-Emotion, "
                                    "X-Instructions-Ignored, X-Speed-Applied where they apply."}, **SYNTHESIS_ERRORS},
    tags=["openai"],
)
async def speech(body: SpeechRequest, request: Request, principal: Annotated[str, Depends(authenticated)],
                 pcm_24khz: Annotated[bool | None, Query(description="Resample pcm to 24 kHz (OpenAI-exact); "
                                                                     "default from openai.pcm_24khz.")] = None,
                 ) -> Response:
    ex = Exchange(request, route=ROUTE, fmt=body.response_format, stream=body.stream_format is not None)
    with ex.failures():
        job, headers = _resolve(body, ex, pcm_24khz)
        streaming = body.stream_format is not None and job.fmt in STREAMABLE
        item = await cached(ex, job) if streaming else None
        if streaming and item is None:
            live = await open_stream(ex, job)
            headers.update({"X-Sample-Rate": str(job.rate), "X-Cache": "miss"})
            if body.stream_format == "sse":
                return StreamingResponse(_sse_live(live), media_type="text/event-stream",
                                         headers={**headers, "Cache-Control": "no-cache"})
            return AbortableStreamingResponse(raw_audio(live), media_type=FORMATS[job.fmt].media_type,
                                              headers=headers)
        hit = item is not None
        if item is None:
            item, hit = await synthesize_whole(ex, job)
    ex.succeed()
    headers.update(audio_headers(item, hit, job))
    if body.stream_format == "sse":
        return StreamingResponse(_sse_whole(item, len(job.text)), media_type="text/event-stream",
                                 headers={**headers, "Cache-Control": "no-cache"})
    return Response(item.data, media_type=item.media_type, headers=headers)


def _resolve(body: SpeechRequest, ex: Exchange, pcm_24khz: bool | None) -> tuple[SpeechJob, dict[str, str]]:
    state = ex.state
    headers: dict[str, str] = {}
    if body.model not in _model_ids(state):
        raise invalid(errors.UNKNOWN_MODEL, f"unknown model {body.model!r}; available models: "
                      f"{', '.join(_model_ids(state))}", "model")
    if body.response_format == "aac":
        raise invalid(errors.UNSUPPORTED_FORMAT, "response_format aac is not supported by this server; use mp3, "
                      "opus, flac, wav or pcm", "response_format")
    requested = body.voice.id if isinstance(body.voice, VoiceRef) else body.voice
    default = voice_info(state, None)
    if requested.lower() in OPENAI_VOICES and requested not in state.pool.voices:
        info = default
        headers["X-Voice-Mapped"] = f"{requested}={info.name}"
    else:
        try:
            info = voice_info(state, requested)
        except ApiError as exc:
            raise invalid(errors.UNKNOWN_VOICE, f"{exc.message} (OpenAI voice names map to {default.name})",
                          "voice") from None
    if body.emotion is not None:
        emotion = check_emotion(info, body.emotion)
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
    check_text(state, body.input, "input")
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
    if body.timestamps and body.stream_format != "sse":
        raise invalid(errors.INVALID_REQUEST, "timestamps are sent as server-sent events: set stream_format to sse "
                      "(or use /v1/synthesize with timestamps for one JSON answer)", "timestamps")
    job = ex.job_for(text=body.input, input_format=body.input_format, voice=info.name, emotion=emotion,
                     speed=speed, rate=rate, stochastic=info.stochastic, seed=body.seed, timestamps=body.timestamps)
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


def _timestamps(event: dict[str, Any]) -> bytes:
    return _event({"type": "speech.timestamps", **event})


async def _sse_whole(item: CachedAudio, characters: int) -> AsyncIterator[bytes]:
    if item.timestamps:
        # A whole answer (cached, or a format sent whole): every sentence's timings first, then the audio.
        for event in sentence_events(json.loads(item.timestamps)):
            yield _timestamps(event)
    for offset in range(0, max(1, len(item.data)), _SSE_PIECE):
        yield _delta(item.data[offset:offset + _SSE_PIECE])
    yield _done(characters)


async def _sse_live(live: LiveStream) -> AsyncIterator[bytes]:
    if live.job.fmt == "wav":
        yield _delta(wav_stream_header(live.job.rate))
    try:
        async for piece in live.pcm():
            for event in live.take_timestamps():
                yield _timestamps(event)
            yield _delta(piece)
        for event in live.take_timestamps():
            yield _timestamps(event)
    except ApiError as error:
        # The status line is long gone; SSE can still say what happened, in the one error body.
        yield b"data: " + _sse_error(error) + b"\n\n"
        return
    yield _done(len(live.job.text))


def _sse_error(error: ApiError) -> bytes:
    body: dict[str, Any] = json.loads(error.body())
    return json.dumps({"type": "error", **body}, separators=(",", ":")).encode()


@router.get("/v1/models", response_model=ModelList, tags=["openai"], summary="Models (OpenAI-compatible)",
            responses=GUARDED_ERRORS, dependencies=[Depends(authenticated)])
async def models(request: Request) -> ModelList:
    return ModelList(data=[ModelObject(id=m, created=_CREATED, owned_by="tts-server")
                           for m in _model_ids(app_state(request))])


@router.get("/v1/models/{model_id:path}", response_model=ModelObject, tags=["openai"],
            summary="One model (OpenAI-compatible)", dependencies=[Depends(authenticated)],
            responses={**errors.openapi_errors(404), **GUARDED_ERRORS})
async def model(model_id: str, request: Request) -> ModelObject:
    if model_id not in _model_ids(app_state(request)):
        raise invalid(errors.MODEL_NOT_FOUND, f"model {model_id!r} not found", "model")
    return ModelObject(id=model_id, created=_CREATED, owned_by="tts-server")
