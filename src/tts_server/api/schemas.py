"""Request and response bodies of the HTTP API (the OpenAPI schema is generated from these)."""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from tts_server.inference.engine import InputFormat

SPEED_MIN = 0.5
SPEED_MAX = 2.0

SynthesisFormat = Literal["wav", "pcm", "flac", "mp3", "ogg", "opus"]

_INPUT_FORMAT_DOC: Final = ("How to read the text: plain `text` (markup is read as text), `ssml` (a <speak> document, "
                            "XML prolog optional) or KAN-TTS `symbols`.")


def _speech_text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    # JSON escapes can smuggle in lone surrogates (``"\ud800"``): not characters at all, so nothing downstream
    # (UTF-8 encoding for the cache key, the frontend, logs) can handle them. Reject them here, with a 422.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"contains an unpaired surrogate (U+{ord(value[exc.start]):04X}) at position "
                         f"{exc.start}; send valid Unicode text") from None
    return value


#: Text to synthesise, for every route that takes some: not blank, and only Unicode scalar values.
SpeechText = Annotated[str, AfterValidator(_speech_text)]


class SynthesizeRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"text": "欢迎使用语音合成服务。", "voice": "zhitian_emo", "emotion": "happy", "speed": 1.0,
                          "format": "wav"}]
        },
    )

    text: SpeechText = Field(..., description="Text to speak: plain Chinese text, SSML or KAN-TTS symbols, as "
                                              "`input_format` says.")
    input_format: InputFormat = Field("text", description=_INPUT_FORMAT_DOC)
    voice: str | None = Field(None, description="Voice name from GET /v1/voices; the default voice when omitted.")
    emotion: str | None = Field(None, description="One of the voice's emotions; the voice's default when omitted.")
    speed: float = Field(1.0, ge=SPEED_MIN, le=SPEED_MAX, description="Speaking rate multiplier.")
    format: SynthesisFormat = Field("wav", description="Audio container: wav (16-bit PCM), pcm (raw s16le mono), "
                                                       "flac, mp3, ogg (Vorbis) or opus (Ogg Opus).")
    sample_rate: int | None = Field(
        None, description="Output sample rate in Hz (resampled); the model's native rate (16000) when omitted.",
        ge=8000, le=48000,
    )
    stream: bool = Field(False, description="Send audio sentence by sentence as it is synthesised (chunked).")


OPENAI_SPEED_MIN: Final = 0.25
OPENAI_SPEED_MAX: Final = 4.0

SpeechFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]


class VoiceRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(..., min_length=1, description="A voice name from GET /v1/voices.")


class SpeechRequest(BaseModel):
    """OpenAI's ``POST /v1/audio/speech`` body, plus our ``emotion`` and ``input_format`` extensions."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"model": "tts-1", "input": "欢迎使用语音合成服务。", "voice": "alloy",
                                         "response_format": "wav", "instructions": "Speak cheerfully."}]},
    )

    model: str = Field(..., description="A model id from GET /v1/models (OpenAI names are aliases).")
    input: SpeechText = Field(..., description="Text to speak; at most `limits.max_text_chars` characters.")
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
    input_format: InputFormat = Field("text", description="Extension: " + _INPUT_FORMAT_DOC)


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class VoiceModel(BaseModel):
    name: str
    emotions: list[str]
    default_emotion: str
    sample_rate: int
    preview_text: str


class VoicesResponse(BaseModel):
    default_voice: str | None
    voices: list[VoiceModel]


class InfoResponse(BaseModel):
    version: str
    max_text_chars: int
    speed_min: float
    speed_max: float
    formats: list[str]
    sample_rates: list[int]


class WorkersModel(BaseModel):
    total: int
    starting: int
    ready: int
    busy: int
    dead: int


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded", "unavailable"]
    model_loaded: bool
    draining: bool
    workers: WorkersModel
    queue_depth: int
    queue_capacity: int


class ProbeResponse(BaseModel):
    status: str


class ErrorDetail(BaseModel):
    message: str = Field(..., description="What went wrong, in plain language.")
    type: str = Field(..., description="Error class, e.g. invalid_request_error, overloaded_error.")
    code: str | None = Field(None, description="Machine-readable code, e.g. queue_full, deadline_exceeded.")
    param: str | None = Field(None, description="The request field at fault, when there is one.")


class ErrorResponse(BaseModel):
    error: ErrorDetail
