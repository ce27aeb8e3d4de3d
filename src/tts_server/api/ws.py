"""WebSocket ``/v1/tts/ws``: speech for text that arrives as it is written (a voice agent's LLM output).

The client sends a ``start`` message, then text deltas; the server cuts the text into clauses as it arrives
(``inference.clauses``), synthesises each one as soon as it is ready, one at a time, through the same pool, and
sends raw PCM as binary frames as the worker produces it, plus JSON events. The protocol is in README.md
("WebSocket"); ``PROTOCOL`` below is its summary for the OpenAPI description.

No HTTP middleware sees a WebSocket (they act on ``http`` scopes), so this module does itself what they do for
HTTP routes: the API key and rate limit (``security.admit``, the same decision), the origin check that CORS makes
for browsers, and the rejection metrics. Every error is a row of the one error table, sent as an ``error`` event
and then a close code of 4000 + its HTTP status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt
from fastapi import APIRouter, WebSocket
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.websockets import WebSocketDisconnect

from tts_server.api import errors
from tts_server.api.errors import ApiError, api_error, validation_error
from tts_server.api.schemas import SEED_MAX, SPEED_MAX, SPEED_MIN
from tts_server.api.security import admit
from tts_server.api.serving import check_emotion, check_rate, voice_info
from tts_server.api.state import AppState
from tts_server.inference.audio import FORMATS, OggOpusStream, StreamResampler, to_int16
from tts_server.inference.clauses import ClauseSegmenter
from tts_server.inference.engine import PITCH_MAX, PITCH_MIN, VOLUME_DB_MAX, VOLUME_DB_MIN
from tts_server.inference.pool import JobCancelled, JobHandle, PoolError
from tts_server.metrics.registry import WS_ROUTE

log = logging.getLogger("tts_server.api")

router = APIRouter()

ROUTE: Final = WS_ROUTE
#: Close code of a session that ended normally (after ``close``).
NORMAL_CLOSE: Final = 1000
#: An error's close code is this plus its HTTP status (4401, 4408, 4413, 4422, 4429, 4503 ...).
ERROR_CLOSE_BASE: Final = 4000

PROTOCOL: Final = """
**WebSocket `/v1/tts/ws`** (OpenAPI cannot describe WebSockets; README.md has the full protocol): speech for text that
arrives piece by piece. Send `{"type": "start", "voice", "emotion", "speed", "pitch", "volume", "seed", "format": "pcm"
or "opus", "sample_rate", "api_key", "timestamps"}` first (every field optional; `api_key` when auth is on and no
`Authorization` header was sent), then `{"type": "text", "text": "..."}` deltas, `{"type": "flush"}` (speak what is
pending), `{"type": "cancel"}` (drop pending text and stop the current clause at its next chunk) and `{"type":
"close"}` (speak the rest, then end). The server answers `ready`, then for each clause `clause_started` `{index,
text}`, binary frames of s16le mono PCM at `sample_rate` (with `"format": "opus"`: the clause as one Ogg Opus stream,
its pages as they are completed) (with `timestamps`: a `timestamps` event `{index, sentence, words, syllables,
characters, marks}` before each sentence's frames), `clause_done`; `cancelled` after a cancel; `end` before closing
with 1000. An error is an `error` event `{code, message, param}` followed by close code 4000 + its HTTP status (4401
key, 4403 origin, 4408 idle, 4413 too much buffered text, 4422 bad message, unknown voice, format or sample rate, 4429
rate limit, 4503 queue full or not ready, 4504 deadline, 4500 engine fault).
"""


#: The formats a session can ask for, and the ``encoding`` its ``ready`` event names: raw s16le frames as the audio is
#: made, or per clause one Ogg Opus stream (libsndfile completes a page about every second of audio).
STREAM_FORMATS: Final = {"pcm": "s16le", "opus": "ogg-opus"}


# --- messages -----------------------------------------------------------------------------------------------


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StartMessage(_Message):
    type: Literal["start"]
    voice: str | None = None
    emotion: str | None = None
    speed: float = Field(1.0, ge=SPEED_MIN, le=SPEED_MAX)
    pitch: float = Field(0.0, ge=PITCH_MIN, le=PITCH_MAX)
    volume: float = Field(0.0, ge=VOLUME_DB_MIN, le=VOLUME_DB_MAX)
    #: A stochastic voice's seed, the same for every clause of the session; deterministic voices ignore it.
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    #: ``pcm`` (s16le frames as they are made) or ``opus`` (each clause one Ogg Opus stream, sent page by page).
    format: str = "pcm"
    sample_rate: int | None = Field(None, ge=8000, le=48000)
    api_key: str | None = None
    #: Send a ``timestamps`` event before each sentence's audio (times from the clause's start, offsets into its
    #: text).
    timestamps: bool = False


class TextMessage(_Message):
    type: Literal["text"]
    text: str


class ControlMessage(_Message):
    type: Literal["flush", "cancel", "close"]


ClientMessage = StartMessage | TextMessage | ControlMessage
_MODELS: Final[dict[str, type[_Message]]] = {"start": StartMessage, "text": TextMessage, "flush": ControlMessage,
                                             "cancel": ControlMessage, "close": ControlMessage}


def parse_message(message: dict[str, Any]) -> ClientMessage:
    """A client's ``websocket.receive`` message as one of the protocol's messages, or a 422 ``ApiError``."""
    raw = message.get("text")
    if raw is None:
        raise ApiError(errors.INVALID_REQUEST, "binary messages are not accepted; send JSON text messages")
    try:
        data = json.loads(raw)
    except ValueError:
        raise ApiError(errors.INVALID_REQUEST, "message is not valid JSON") from None
    kind = data.get("type") if isinstance(data, dict) else None
    model = _MODELS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ApiError(errors.INVALID_REQUEST, f"type must be one of {', '.join(_MODELS)}", param="type")
    try:
        parsed = model.model_validate(data)
    except ValidationError as exc:
        raise validation_error(RequestValidationError(exc.errors())) from None
    assert isinstance(parsed, StartMessage | TextMessage | ControlMessage)
    return parsed


def close_code(error: ApiError) -> int:
    return ERROR_CLOSE_BASE + error.status


def session_outcome(error: ApiError) -> str:
    """``tts_ws_sessions_total{outcome}`` of a session that ended with ``error``."""
    if error.kind is errors.UNAUTHORIZED:
        return "unauthorized"
    if error.kind is errors.IDLE_TIMEOUT:
        return "idle_timeout"
    if error.kind.outcome == "cancelled":
        return "disconnected"
    return error.kind.outcome


# --- one session ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Clause:
    index: int
    text: str
    #: The cancel generation it belongs to: a cancel bumps the session's, and older clauses are dropped.
    generation: int
    #: When it became ready, if nothing was queued or playing before it: its first audio is a time to first audio.
    ready_at: float | None


class Session:
    def __init__(self, websocket: WebSocket) -> None:
        self.ws = websocket
        self.state: AppState = websocket.app.state.tts
        settings = self.state.settings
        self.config = settings.websocket
        self.session_id = uuid.uuid4().hex
        self.segmenter = ClauseSegmenter(
            min_comma_chars=self.config.min_comma_clause_chars,
            max_chars=min(self.config.max_clause_chars, settings.limits.max_text_chars))
        self.principal = ""
        self.start: StartMessage | None = None
        self.voice = ""
        self.emotion = ""
        self.seed: int | None = None
        self.rate = 0
        self._queue: asyncio.Queue[_Clause | None] = asyncio.Queue()
        self._queued_chars = 0
        self._next_index = 0
        self._generation = 0
        self._current: JobHandle | None = None
        #: The clause waiting for its rate-limit token (dequeued, not yet submitted).
        self._waiting: _Clause | None = None
        #: Set (and replaced) by each cancel: wakes a clause waiting for its token.
        self._cancelled = asyncio.Event()
        self._closing = False
        self._send_lock = asyncio.Lock()
        self._last_activity = time.monotonic()
        self.clauses_done = 0
        self.audio_seconds = 0.0

    # -- lifecycle --

    async def run(self) -> None:
        metrics = self.state.metrics
        metrics.ws_open.inc()
        outcome = "disconnected"
        started = time.monotonic()
        try:
            await self.ws.accept()
            try:
                await self._serve()
            except PoolError as exc:
                raise api_error(exc) from None
            outcome = "ok"
            await self._send_event("end", clauses=self.clauses_done, audio_seconds=round(self.audio_seconds, 3))
            await self.ws.close(NORMAL_CLOSE)
        except ApiError as error:
            outcome = session_outcome(error)
            metrics.count_rejection(error.kind.reject_reason)
            log.info("websocket %s: %s (%s)", self.session_id, error.kind.code, error.message)
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                await self._send_event("error", code=error.kind.code, message=error.message, param=error.param)
                await self.ws.close(close_code(error), error.kind.code)
        except (WebSocketDisconnect, OSError):
            outcome = "disconnected"
        finally:
            metrics.ws_open.dec()
            metrics.ws_sessions.labels(outcome).inc()
            log.info("websocket %s: %s after %.1fs, %d clauses, %.2fs audio", self.session_id, outcome,
                     time.monotonic() - started, self.clauses_done, self.audio_seconds)

    async def _serve(self) -> None:
        self._check_origin()
        header = next((v.decode("latin-1") for k, v in self.ws.scope.get("headers", ()) if k == b"authorization"),
                      None)
        if header is not None:  # authenticate before reading anything from the client
            self.principal = self._admit(header)
        first = parse_message(await self._receive())
        if not isinstance(first, StartMessage):
            raise ApiError(errors.INVALID_REQUEST, "the first message must be {\"type\": \"start\", ...}",
                           param="type")
        if header is None:
            self.principal = self._admit(f"Bearer {first.api_key}" if first.api_key else None)
        self._resolve(first)
        assert self.start is not None
        await self._send_event("ready", session_id=self.session_id, voice=self.voice, emotion=self.emotion,
                               format=self.start.format, encoding=STREAM_FORMATS[self.start.format], channels=1,
                               sample_rate=self.rate)
        reader = asyncio.create_task(self._read())
        speaker = asyncio.create_task(self._speak_all())
        try:
            done, _ = await asyncio.wait({reader, speaker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, speaker):
                task.cancel()
            await asyncio.gather(reader, speaker, return_exceptions=True)
        for task in (speaker, reader):
            if task in done and (exc := task.exception()) is not None:
                raise exc

    def _check_origin(self) -> None:
        """Browsers send ``Origin`` on WebSocket upgrades but apply no same-origin policy to them: accept the
        server's own origin and, when CORS is on, its allowed origins. Clients that send no ``Origin`` (not
        browsers) are judged by their key alone."""
        headers = self.ws.headers
        origin = headers.get("origin")
        if origin is None:
            return
        if urlsplit(origin).netloc == headers.get("host", ""):
            return
        cors = self.state.settings.cors
        if cors.enabled and (origin in cors.origins or "*" in cors.origins):
            return
        raise ApiError(errors.ORIGIN_NOT_ALLOWED, f"origin {origin!r} is not allowed (cors.origins)")

    def _admit(self, authorization: str | None) -> str:
        client = self.ws.client
        address = client.host if client else "unknown"
        return admit(self.state.keys, self.state.limiter, address, authorization)

    def _resolve(self, start: StartMessage) -> None:
        info = voice_info(self.state, start.voice)
        self.emotion = check_emotion(info, start.emotion)
        self.voice = info.name
        self.seed = start.seed if info.stochastic else None
        if start.format not in STREAM_FORMATS:
            known = "" if start.format in FORMATS else f" (unknown format {start.format!r})"
            raise ApiError(errors.UNSUPPORTED_STREAM_FORMAT,
                           f"the WebSocket sends {' or '.join(STREAM_FORMATS)}{known}", param="format")
        self.rate = start.sample_rate or info.sample_rate
        check_rate(start.format, self.rate)
        self.start = start

    # -- the client's side --

    async def _receive(self) -> dict[str, Any]:
        """The next client message; an idle client (nothing said for ``idle_timeout_s`` while no audio is being
        made) gets a 408."""
        idle = self.config.idle_timeout_s
        while True:
            busy = self._busy()
            remaining = idle if busy or self._closing else self._last_activity + idle - time.monotonic()
            if remaining <= 0:
                raise ApiError(errors.IDLE_TIMEOUT, f"no message for {idle:g}s (websocket.idle_timeout_s)")
            try:
                async with asyncio.timeout(remaining):
                    message = await self.ws.receive()
            except TimeoutError:
                continue
            self._last_activity = time.monotonic()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1006))
            return dict(message)

    async def _read(self) -> None:
        while True:
            message = parse_message(await self._receive())
            if self._closing:
                continue  # after close only a disconnect matters; audio still goes out
            if isinstance(message, StartMessage):
                raise ApiError(errors.INVALID_REQUEST, "the session has already started", param="type")
            if isinstance(message, TextMessage):
                buffered = len(self.segmenter.pending) + self._queued_chars + len(message.text)
                if buffered > self.config.max_buffered_chars:
                    raise ApiError(errors.TEXT_BUFFER_FULL, f"{buffered} characters of text are waiting; the "
                                   f"limit is {self.config.max_buffered_chars} (websocket.max_buffered_chars)")
                self._enqueue(self.segmenter.feed(message.text))
            elif message.type == "flush":
                self._enqueue(self.segmenter.flush())
            elif message.type == "close":
                self._enqueue(self.segmenter.flush())
                self._closing = True
                self._queue.put_nowait(None)
            else:
                await self._cancel()

    def _enqueue(self, texts: list[str]) -> None:
        for text in texts:
            idle = not self._busy()
            self._queue.put_nowait(_Clause(self._next_index, text, self._generation,
                                           time.monotonic() if idle else None))
            self._next_index += 1
            self._queued_chars += len(text)

    def _busy(self) -> bool:
        """Whether a clause is waiting or being spoken (the client is then not idle, however quiet)."""
        return self._current is not None or self._waiting is not None or not self._queue.empty()

    async def _cancel(self) -> None:
        async with self._send_lock:
            # Under the lock: no frame of an older clause can follow the ``cancelled`` event.
            self._generation += 1
            self._cancelled.set()
            self._cancelled = asyncio.Event()
            self.segmenter.reset()
            dropped = 1 if self._waiting is not None else 0  # it never started and never will
            while not self._queue.empty():
                clause = self._queue.get_nowait()
                if clause is not None:
                    dropped += 1
            self._queued_chars = 0
            if self._current is not None:
                self.state.pool.cancel(self._current)
            await self._send_json({"type": "cancelled", "dropped_clauses": dropped})

    # -- the server's side --

    async def _speak_all(self) -> None:
        while True:
            clause = await self._queue.get()
            if clause is None:
                return
            self._queued_chars -= len(clause.text)
            if clause.generation == self._generation:
                await self._speak(clause)
            self._last_activity = time.monotonic()

    async def _speak(self, clause: _Clause) -> None:
        state, start = self.state, self.start
        assert start is not None
        metrics = state.metrics
        if state.limiter is not None and not await self._wait_for_token(clause):
            return  # cancelled while it waited: never submitted, never announced
        try:
            handle = state.pool.submit(
                text=clause.text, voice=self.voice, emotion=self.emotion, speed=start.speed,
                request_id=f"{self.session_id}-{clause.index}", stream=True,
                lexicon_version=state.lexicon.current.version, pitch=start.pitch, volume_db=start.volume,
                seed=self.seed, timestamps=start.timestamps)
        except PoolError as exc:
            metrics.requests.labels(self.voice, self.emotion, api_error(exc).kind.outcome).inc()
            raise
        self._current = handle
        try:
            await self._send_event("clause_started", index=clause.index, text=clause.text)
            first = True
            # One continuous signal per clause: the resampler carries its state across chunks, and with opus the
            # clause is one Ogg stream.
            resampler: StreamResampler | None = None
            encoder = OggOpusStream(self.rate) if start.format == "opus" else None
            async for chunk in handle.chunks():
                if chunk.timestamps:
                    await self._send_timestamps(clause, chunk.timestamps)
                if resampler is None:
                    resampler = StreamResampler(chunk.sample_rate, self.rate)
                sent = await self._send_audio(clause, to_int16(resampler.push(chunk.audio)), encoder)
                if sent and first and clause.ready_at is not None:
                    metrics.ttfa.labels(ROUTE).observe(time.monotonic() - clause.ready_at)
                    first = False
            outcome = await handle.result()
            if resampler is not None:
                await self._send_audio(clause, to_int16(resampler.flush()), encoder)
            if encoder is not None:
                await self._send_bytes(clause, encoder.close())
        except JobCancelled:
            if clause.generation != self._generation:
                metrics.requests.labels(self.voice, self.emotion, "cancelled").inc()
                return
            raise
        except PoolError as exc:
            metrics.requests.labels(self.voice, self.emotion, api_error(exc).kind.outcome).inc()
            raise
        finally:
            self._current = None
            if not handle.done:
                # The client left or the session failed mid-clause: free the worker, and count the clause as
                # cancelled, like an HTTP stream whose client leaves.
                state.pool.cancel(handle)
                metrics.requests.labels(self.voice, self.emotion, "cancelled").inc()
        metrics.observe_synthesis(outcome, len(clause.text))
        metrics.requests.labels(self.voice, self.emotion, "ok").inc()
        self.clauses_done += 1
        async with self._send_lock:
            if clause.generation == self._generation:
                await self._send_json({"type": "clause_done", "index": clause.index,
                                       "audio_seconds": round(outcome.audio_seconds, 3)})

    async def _wait_for_token(self, clause: _Clause) -> bool:
        """Each clause is one synthesis, like one HTTP request: over the rate it waits for its token. False when a
        cancel dropped the clause meanwhile (the cancel ends the wait at once)."""
        limiter = self.state.limiter
        assert limiter is not None
        self._waiting = clause
        try:
            while (wait := limiter.acquire(self.principal)) > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._cancelled.wait()
                if clause.generation != self._generation:
                    return False
            return True
        finally:
            self._waiting = None

    async def _send_audio(self, clause: _Clause, pcm: npt.NDArray[np.int16], encoder: OggOpusStream | None) -> bool:
        """Send ``clause``'s next audio as one binary frame (raw, or the Ogg pages the encoder completed) unless
        there is none or the clause was cancelled. The audio counts as sent when it is handed to the encoder."""
        if not len(pcm) or clause.generation != self._generation:
            return False  # cancelled: the pool drops what the worker still sends
        if not await self._send_bytes(clause, pcm.astype("<i2").tobytes() if encoder is None else encoder.push(pcm)):
            return False
        seconds = len(pcm) / self.rate
        self.state.metrics.ws_audio_sent.inc(seconds)
        self.audio_seconds += seconds
        self._last_activity = time.monotonic()
        return True

    async def _send_bytes(self, clause: _Clause, data: bytes) -> bool:
        async with self._send_lock:
            if clause.generation != self._generation:
                return False
            if data:
                await self.ws.send_bytes(data)
            return True

    async def _send_timestamps(self, clause: _Clause, events: str) -> None:
        """The timings of the sentences that start in a chunk, before the chunk's audio (none once cancelled)."""
        async with self._send_lock:
            if clause.generation != self._generation:
                return
            for event in json.loads(events):
                await self._send_json({"type": "timestamps", "index": clause.index, **event})

    async def _send_event(self, kind: str, **fields: Any) -> None:
        async with self._send_lock:
            await self._send_json({"type": kind, **fields})

    async def _send_json(self, event: dict[str, Any]) -> None:
        await self.ws.send_text(json.dumps(event, ensure_ascii=False))


@router.websocket(ROUTE)
async def tts_websocket(websocket: WebSocket) -> None:
    await Session(websocket).run()
