"""Request and response bodies of the HTTP API (the OpenAPI schema is generated from these)."""

from __future__ import annotations

from typing import Annotated, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from tts_server.inference.engine import (
    PITCH_MAX,
    PITCH_MIN,
    VOLUME_DB_MAX,
    VOLUME_DB_MIN,
    InputFormat,
    VoiceKind,
)

SPEED_MIN = 0.5
SPEED_MAX = 2.0
#: Largest ``seed`` a request may send (the engine seeds a 64-bit generator).
SEED_MAX: Final = 2**63 - 1
SEED_DOC: Final = ("Fixes the random draws of a stochastic voice (`stochastic` in GET /v1/voices: personal voices, "
                   "whose NSF vocoder excitation is random), so the same request gives the same audio; such a "
                   "voice's audio is cached only when a seed is given. Deterministic voices ignore it (it is not "
                   "part of their cache key).")

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


TIMESTAMPS_DOC: Final = ("Answer with JSON instead of audio: the audio base64-encoded plus the start and end (ms) "
                         "of every sentence, word, syllable and spoken character, and the time of every SSML "
                         "<mark>, from the durations the model used (speed, pauses and <break>s included). Offsets "
                         "(`begin`, `end`) index the text as sent (Unicode code points; for SSML the document): the "
                         "syllables of 2026年 all point at `2026年`, a <sub> alias at the element's content.")


class SentenceTimes(BaseModel):
    index: int
    text: str = Field(..., description="The part of the input the sentence reads.")
    begin: int | None = Field(..., description="Offset of its first character in the input (None: unknown).")
    end: int | None = Field(..., description="Offset after its last character.")
    start_ms: float
    speech_end_ms: float = Field(..., description="Where its speech ends and its pause (<break>) begins.")
    end_ms: float


class WordTimes(BaseModel):
    text: str
    begin: int | None
    end: int | None
    start_ms: float
    end_ms: float
    sentence: int


class SyllableTimes(BaseModel):
    pinyin: str = Field(..., description="Pinyin with tone digit (for symbol input: the syllable's phones).")
    text: str = Field(..., description="The input it reads (all of `2026年` for each syllable of the number).")
    begin: int | None
    end: int | None
    start_ms: float
    end_ms: float
    sentence: int
    word: int = Field(..., description="Index into `words`.")


class CharacterTimes(BaseModel):
    char: str
    offset: int
    start_ms: float
    end_ms: float


class MarkTime(BaseModel):
    name: str
    time_ms: float
    sentence: int


class Timestamps(BaseModel):
    hop_ms: float = Field(..., description="Every time is a multiple of this (one mel frame, 12.5 ms at 16 kHz).")
    duration_ms: float = Field(..., description="The audio's length: the last sentence's end, to the sample.")
    sentences: list[SentenceTimes]
    words: list[WordTimes]
    syllables: list[SyllableTimes]
    characters: list[CharacterTimes] = Field(..., description="Each input character that is read, once.")
    marks: list[MarkTime]


class TimestampedAudio(Timestamps):
    """``/v1/synthesize`` with ``timestamps: true``."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "audio": "UklGRiQ...", "format": "wav", "sample_rate": 16000, "duration": 0.6, "hop_ms": 12.5,
        "duration_ms": 600.0,
        "sentences": [{"index": 0, "text": "2026年", "begin": 0, "end": 5, "start_ms": 0.0, "speech_end_ms": 600.0,
                       "end_ms": 600.0}],
        "words": [{"text": "2026年", "begin": 0, "end": 5, "start_ms": 0.0, "end_ms": 537.5, "sentence": 0}],
        "syllables": [{"pinyin": "er4", "text": "2026年", "begin": 0, "end": 5, "start_ms": 0.0, "end_ms": 100.0,
                       "sentence": 0, "word": 0}],
        "characters": [{"char": "2", "offset": 0, "start_ms": 0.0, "end_ms": 537.5}],
        "marks": [],
    }]})

    audio: str = Field(..., description="The audio file in `format`, base64.")
    format: str
    sample_rate: int = Field(..., description="Of the audio as sent (after resampling).")
    duration: float = Field(..., description="Seconds of audio.")


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
    pitch: float = Field(0.0, ge=PITCH_MIN, le=PITCH_MAX,
                         description="Pitch shift added to the model's predicted pitch, in the model's normalised "
                                     "units (1.0 = one standard deviation of the voice's training pitch, roughly 2-4 "
                                     "semitones); 0 leaves it unchanged. Adds to SSML <prosody pitch>.")
    volume: float = Field(0.0, ge=VOLUME_DB_MIN, le=VOLUME_DB_MAX,
                          description="Gain in dB; if the result would exceed 0.999 full scale the audio is scaled "
                                      "down to that peak instead of clipped. Adds to SSML <prosody volume>.")
    format: SynthesisFormat = Field("wav", description="Audio container: wav (16-bit PCM), pcm (raw s16le mono), "
                                                       "flac, mp3, ogg (Vorbis) or opus (Ogg Opus).")
    sample_rate: int | None = Field(
        None, description="Output sample rate in Hz (resampled); the model's native rate (16000) when omitted.",
        ge=8000, le=48000,
    )
    stream: bool = Field(False, description="Send audio sentence by sentence as it is synthesised (chunked).")
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description=SEED_DOC)
    timestamps: bool = Field(False, description=TIMESTAMPS_DOC + " Not with `stream` (use /v1/audio/speech with "
                                                "`stream_format: sse` for timings per sentence).")


OPENAI_SPEED_MIN: Final = 0.25
OPENAI_SPEED_MAX: Final = 4.0

SpeechFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]


class VoiceRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(..., min_length=1, description="A voice name from GET /v1/voices.")


class SpeechRequest(BaseModel):
    """OpenAI's ``POST /v1/audio/speech`` body, plus our ``emotion``, ``input_format`` and ``seed`` extensions."""

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
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="Extension: " + SEED_DOC)
    timestamps: bool = Field(False, description="Extension, with `stream_format: sse` only: a "
                                                "`speech.timestamps` event before each sentence's audio (its "
                                                "sentence, words, syllables, characters and marks, shaped like "
                                                "the /v1/synthesize timestamps response).")


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
    kind: VoiceKind = Field(description="`built-in`: a voice of the model directory; `personal`: a fine-tuned voice "
                                        "added by `[[voices.extra]]` in the settings.")
    stochastic: bool = Field(description="The audio depends on random draws (a personal voice's NSF excitation): "
                                         "the same request gives the same audio only with a `seed`, and without "
                                         "one it is never cached.")
    emotions: list[str] = Field(description="Every emotion the voice accepts, in the model's order.")
    core_emotions: list[str] = Field(description="The voice's emotions that are its core ones (neutral, happy, "
                                                 "angry, sad, fear, surprise, disgust, hate), in that order; "
                                                 "pickers show these first and the rest on demand.")
    emotion_labels: dict[str, str] = Field(description="A Chinese display label for each of the voice's emotions "
                                                       "(the name itself where none is known).")
    default_emotion: str
    sample_rate: int = Field(description="The voice's native sample rate in Hz (a request's default).")
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


# --- user lexicon and frontend preview ------------------------------------------------------------------------


class LexiconResponse(BaseModel):
    version: int = Field(..., description="Goes up by one with every change; 0 for a lexicon never changed.")
    entries: dict[str, str] = Field(..., description="Word -> pinyin with tones, one syllable per character.")


class LexiconUpdate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"entries": {"重庆": "chong2 qing4"}}]},
    )

    entries: dict[str, str] = Field(..., description="Word (Chinese characters) -> pinyin, one syllable with a tone "
                                                     "digit 1-5 per character, e.g. `chong2 qing4`.")
    replace: bool = Field(False, description="Make these entries the whole lexicon instead of adding them (an "
                                             "existing word's reading is replaced either way).")


class PreviewRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"text": "重庆的天气怎么样？", "input_format": "text"}]},
    )

    text: SpeechText = Field(..., description="Text (or SSML) as a synthesis request would send it.")
    input_format: Literal["text", "ssml"] = Field("text", description="`text` or `ssml`; symbols need no preview.")
    voice: str | None = Field(None, description="Voice name; the default voice when omitted.")


class PreviewWord(BaseModel):
    text: str = Field(..., description="The characters of the word.")
    syllables: list[str] = Field(..., description="Pinyin with tone digits (5 = neutral), after tone sandhi.")
    break_before: int = Field(..., description="Prosodic break before the word: 0 first word, 1 word, 2 short "
                                               "pause, 3 comma.")
    source: Literal["lexicon", "fixed", "frontend"] = Field(
        ..., description="`lexicon`: the user lexicon; `fixed`: an SSML phoneme or spelled letters; `frontend`: "
                         "jieba and pypinyin.")


class PreviewSentence(BaseModel):
    text: str
    pinyin: str = Field(..., description="The sentence's readings with breaks: `chong2 qing4 #1 ... #4`.")
    words: list[PreviewWord]


class PreviewResponse(BaseModel):
    voice: str
    input_format: Literal["text", "ssml"]
    lexicon_version: int
    normalized: str = Field(..., description="The text after normalisation (numbers, symbols, letters read out).")
    sentences: list[PreviewSentence]
