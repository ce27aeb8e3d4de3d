"""The error vocabulary: one row per error the HTTP API can answer, and one function that builds its body.

Every 4xx/5xx, whether raised by a route, by request validation or by a pure ASGI middleware, is an
``ErrorResponse`` built here from an ``ErrorKind`` row. A row also says how the error is counted: its outcome label
in ``tts_requests_total``, its reason in ``tts_requests_rejected_total`` and whether it carries ``Retry-After``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Send

from tts_server.api.schemas import ErrorDetail, ErrorResponse
from tts_server.inference.pool import (
    DeadlineExceeded,
    JobCancelled,
    JobFailed,
    NotReady,
    Overloaded,
    PoolError,
    WorkerCrashed,
)

log = logging.getLogger("tts_server.api")


@dataclass(frozen=True)
class ErrorKind:
    status: int
    type: str
    code: str | None
    #: ``tts_requests_total{outcome}`` of a synthesis request that ends with this error.
    outcome: str
    #: ``tts_requests_rejected_total{reason}``, for errors that refuse a request before any synthesis.
    reject_reason: str | None = None
    #: The message clients see. Set for every 5xx, so internal text can never leak; None = the raiser's message.
    message: str | None = None
    retry_after: bool = False


def _client(code: str, status: int = 422, type_: str = "invalid_request_error", *,
            reject_reason: str | None = "invalid") -> ErrorKind:
    return ErrorKind(status, type_, code, "client_error", reject_reason)


# --- the table ----------------------------------------------------------------------------------------------

INVALID_REQUEST: Final = _client("invalid_request")
UNKNOWN_VOICE: Final = _client("unknown_voice")
UNKNOWN_EMOTION: Final = _client("unknown_emotion")
UNKNOWN_MODEL: Final = _client("model_not_found")
TEXT_TOO_LONG: Final = _client("text_too_long")
UNSUPPORTED_FORMAT: Final = _client("unsupported_format")
UNSUPPORTED_SAMPLE_RATE: Final = _client("unsupported_sample_rate")
UNSUPPORTED_STREAM_FORMAT: Final = _client("unsupported_stream_format")
#: The engine refused the text (bad SSML, unreadable symbols ...); the message is the engine's public one. The
#: job was admitted and ran, so this is no rejection.
INVALID_INPUT: Final = _client("invalid_input", reject_reason=None)
#: A user lexicon entry that is not a word of Chinese characters with one toned pinyin syllable per character.
LEXICON_INVALID: Final = _client("lexicon_invalid", reject_reason=None)
#: The change would take the lexicon past ``lexicon.max_entries``.
LEXICON_FULL: Final = _client("lexicon_full", reject_reason=None)
#: ``lexicon.path`` is unset: there is nowhere to keep a change.
LEXICON_DISABLED: Final = _client("lexicon_disabled", 409, reject_reason=None)
MODEL_NOT_FOUND: Final = _client("model_not_found", 404, reject_reason=None)
NOT_FOUND: Final = _client("not_found", 404, reject_reason=None)
METHOD_NOT_ALLOWED: Final = _client("method_not_allowed", 405, reject_reason=None)
BAD_REQUEST: Final = _client("bad_request", 400)
BODY_TOO_LARGE: Final = _client("body_too_large", 413, reject_reason="too_large")
HEADER_TIMEOUT: Final = _client("header_timeout", 408, reject_reason=None)
BODY_TIMEOUT: Final = _client("body_timeout", 408, reject_reason=None)
#: Refused below HTTP (``server.max_connections``): no request was read, so no request metric moves.
TOO_MANY_CONNECTIONS: Final = ErrorKind(503, "unavailable_error", "too_many_connections", "rejected", None,
                                        "too many open connections, retry later", retry_after=True)
#: WebSocket: no client message for ``websocket.idle_timeout_s`` while nothing was being synthesised.
IDLE_TIMEOUT: Final = _client("idle_timeout", 408, reject_reason=None)
#: WebSocket: more text waiting to be synthesised than ``websocket.max_buffered_chars``.
TEXT_BUFFER_FULL: Final = _client("text_buffer_full", 413, reject_reason="too_large")
#: WebSocket: a browser page on an origin that is neither the server's own nor in ``cors.origins``.
ORIGIN_NOT_ALLOWED: Final = _client("origin_not_allowed", 403, "permission_error", reject_reason=None)
UNAUTHORIZED: Final = _client("invalid_api_key", 401, "authentication_error", reject_reason=None)
RATE_LIMITED: Final = ErrorKind(429, "rate_limit_error", "rate_limit_exceeded", "rejected", "rate_limited",
                                retry_after=True)
QUEUE_FULL: Final = ErrorKind(503, "overloaded_error", "queue_full", "rejected", "queue_full",
                              "server is overloaded, retry later", retry_after=True)
NOT_READY: Final = ErrorKind(503, "unavailable_error", "not_ready", "rejected", "not_ready",
                             "server is not ready, retry later", retry_after=True)
#: Readiness while shutting down: load balancers should send the request to another instance.
DRAINING: Final = ErrorKind(503, "unavailable_error", "draining", "rejected", "not_ready",
                            "server is draining, use another instance", retry_after=True)
#: Liveness: no worker has been ready for ``pool.liveness_timeout_s``; probes only, never a request outcome.
NOT_LIVE: Final = ErrorKind(503, "unavailable_error", "not_live", "server_error", None,
                            "no worker has been ready for too long", retry_after=True)
WORKER_CRASHED: Final = ErrorKind(503, "unavailable_error", "worker_crashed", "server_error", None,
                                  "the synthesis worker died, retry later", retry_after=True)
DEADLINE_EXCEEDED: Final = ErrorKind(504, "timeout_error", "deadline_exceeded", "timeout", None,
                                     "synthesis did not finish in time")
CANCELLED: Final = ErrorKind(499, "cancelled_error", "client_closed_request", "cancelled", None, "request cancelled")
SYNTHESIS_FAILED: Final = ErrorKind(500, "server_error", "synthesis_failed", "server_error", None,
                                    "internal error during synthesis")
INTERNAL: Final = ErrorKind(500, "server_error", "internal_error", "server_error", None, "internal server error")

#: Pool/engine errors -> rows. ``JobFailed`` is split by who was at fault.
_POOL_KINDS: Final[dict[type[PoolError], ErrorKind]] = {
    Overloaded: QUEUE_FULL,
    NotReady: NOT_READY,
    DeadlineExceeded: DEADLINE_EXCEEDED,
    WorkerCrashed: WORKER_CRASHED,
    JobCancelled: CANCELLED,
}

_STARLETTE_KINDS: Final[dict[int, ErrorKind]] = {
    400: BAD_REQUEST, 404: NOT_FOUND, 405: METHOD_NOT_ALLOWED, 413: BODY_TOO_LARGE,
}


class ApiError(Exception):
    """An error with its row, its public message and, where it applies, the field at fault."""

    def __init__(self, kind: ErrorKind, message: str | None = None, *, param: str | None = None,
                 retry_after: int | None = None, headers: dict[str, str] | None = None) -> None:
        text = kind.message if kind.message is not None else (message or kind.code or "error")
        super().__init__(text)
        self.kind = kind
        self.message = text
        self.param = param
        self.headers = dict(headers or {})
        if kind.retry_after:
            self.headers["Retry-After"] = str(max(1, retry_after or 1))

    @property
    def status(self) -> int:
        return self.kind.status

    def body(self) -> bytes:
        return error_body(self.kind, self.message, self.param)

    def response(self) -> JSONResponse:
        return JSONResponse(json.loads(self.body()), status_code=self.status, headers=self.headers)


def api_error(exc: PoolError | ApiError) -> ApiError:
    """The API's view of any error a synthesis can end with."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, JobFailed):
        if exc.client_error:
            return ApiError(INVALID_INPUT, exc.public_message, param=exc.param)
        return ApiError(SYNTHESIS_FAILED)
    kind = _POOL_KINDS.get(type(exc), INTERNAL)
    retry_after = exc.retry_after if isinstance(exc, Overloaded | NotReady) else None
    return ApiError(kind, retry_after=retry_after)


def invalid(kind: ErrorKind, message: str, param: str) -> ApiError:
    return ApiError(kind, message, param=param)


def error_body(kind: ErrorKind, message: str, param: str | None = None) -> bytes:
    """The one ``ErrorResponse`` body, as JSON bytes (what pure ASGI middlewares send)."""
    body = ErrorResponse(error=ErrorDetail(message=message, type=kind.type, code=kind.code, param=param))
    return body.model_dump_json().encode()


async def send_error(send: Send, error: ApiError, *, close: bool = False) -> None:
    """Answer with ``error`` from a pure ASGI middleware (nothing may have been sent yet)."""
    body = error.body()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in error.headers.items()]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def openapi_errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for these statuses, all documented as ``ErrorResponse``."""
    return {status: {"model": ErrorResponse, "description": _DESCRIPTIONS[status]} for status in statuses}


_DESCRIPTIONS: Final = {
    400: "The body could not be decoded at all (e.g. not UTF-8).",
    401: "Missing or invalid API key (only with auth enabled); see WWW-Authenticate.",
    404: "Not found.",
    409: "The lexicon is off (no lexicon.path configured).",
    408: "The request head or body was not received in time.",
    413: "Request body too large.",
    422: "Invalid request; the message names the field and allowed values.",
    429: "Rate limit of this key or client exceeded; see Retry-After.",
    500: "Internal error (details are logged, never returned).",
    503: "Overloaded, not ready, or the worker died; see the Retry-After header.",
    504: "Synthesis did not finish before the deadline.",
}

#: What a synthesis route can answer.
SYNTHESIS_ERRORS: Final = openapi_errors(400, 401, 413, 422, 429, 500, 503, 504)
#: What any other ``/v1/`` route can answer (auth and rate limit).
GUARDED_ERRORS: Final = openapi_errors(401, 429)


def _validation_message(err: dict[str, Any]) -> tuple[str, str | None]:
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    msg = str(err.get("msg", "invalid value"))
    if err.get("type") == "literal_error":
        expected = (err.get("ctx") or {}).get("expected")
        if expected:
            msg = f"must be one of {expected}"
    elif err.get("type") == "extra_forbidden":
        msg = "unknown field"
    elif err.get("type") == "json_invalid":
        return "request body is not valid JSON", None
    msg = msg.removeprefix("Value error, ")
    return (f"{param}: {msg}" if param else msg), param


def validation_error(exc: RequestValidationError) -> ApiError:
    errors = list(exc.errors())
    messages, params = zip(*(_validation_message(e) for e in errors), strict=True) if errors else ((), ())
    param = next((p for p in params if p), None)
    return ApiError(INVALID_REQUEST, "; ".join(messages) or "invalid request", param=param)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(PoolError)
    async def _pool_error(request: Request, exc: PoolError) -> JSONResponse:
        return api_error(exc).response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        state = getattr(request.app.state, "tts", None)
        if state is not None:
            state.metrics.count_rejection(INVALID_REQUEST.reject_reason)
        return validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = _STARLETTE_KINDS.get(exc.status_code)
        if kind is None:
            kind = INTERNAL if exc.status_code >= 500 else ErrorKind(exc.status_code, "invalid_request_error", None,
                                                                     "client_error")
        return ApiError(kind, str(exc.detail), headers=dict(exc.headers or {})).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error (request %s)", getattr(request.state, "request_id", "-"))
        return ApiError(INTERNAL).response()
