"""One table from internal errors to HTTP statuses, and one ``ErrorResponse`` body for every 4xx/5xx."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

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


class ApiError(Exception):
    """An error raised by a route that already knows its status."""

    def __init__(self, status: int, message: str, *, type_: str, code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = headers or {}


@dataclass(frozen=True)
class _Mapping:
    status: int
    type: str
    code: str
    #: The message clients see; None = use the exception's own (safe) message.
    message: str | None


#: The one table: pool/engine errors -> HTTP. 5xx messages are fixed text, never the exception's.
ERROR_TABLE: dict[type[PoolError], _Mapping] = {
    Overloaded: _Mapping(503, "overloaded_error", "queue_full", "server is overloaded, retry later"),
    NotReady: _Mapping(503, "unavailable_error", "not_ready", "server is not ready, retry later"),
    DeadlineExceeded: _Mapping(504, "timeout_error", "deadline_exceeded", "synthesis did not finish in time"),
    WorkerCrashed: _Mapping(503, "unavailable_error", "worker_crashed",
                            "synthesis worker failed twice, retry later"),
    JobCancelled: _Mapping(499, "cancelled_error", "client_closed_request", "request cancelled"),
}


def api_error_from_pool(exc: PoolError) -> ApiError:
    if isinstance(exc, JobFailed):
        if exc.client_error:
            return ApiError(422, exc.public_message, type_="invalid_request_error", code="invalid_input",
                            param=exc.param)
        return ApiError(500, "internal error during synthesis", type_="server_error", code="synthesis_failed")
    mapping = ERROR_TABLE.get(type(exc))
    if mapping is None:
        return ApiError(500, "internal server error", type_="server_error", code="internal_error")
    headers: dict[str, str] = {}
    if isinstance(exc, Overloaded | NotReady):
        headers["Retry-After"] = str(exc.retry_after)
    message = mapping.message if mapping.message is not None else str(exc)
    return ApiError(mapping.status, message, type_=mapping.type, code=mapping.code, headers=headers)


def error_response(status: int, message: str, *, type_: str, code: str | None = None, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(message=message, type=type_, code=code, param=param))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


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


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, type_=exc.type, code=exc.code, param=exc.param,
                              headers=exc.headers)

    @app.exception_handler(PoolError)
    async def _pool_error(request: Request, exc: PoolError) -> JSONResponse:
        api = api_error_from_pool(exc)
        return error_response(api.status, api.message, type_=api.type, code=api.code, param=api.param,
                              headers=api.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        messages, params = zip(*(_validation_message(e) for e in errors), strict=True) if errors else ((), ())
        param = next((p for p in params if p), None)
        state = getattr(request.app.state, "tts", None)
        if state is not None:
            state.metrics.rejected.labels("invalid").inc()
        return error_response(422, "; ".join(messages) or "invalid request", type_="invalid_request_error",
                              code="invalid_request", param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        message = str(exc.detail) if exc.status_code < 500 else "internal server error"
        return error_response(exc.status_code, message, type_=type_, code=None,
                              headers=dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error (request %s)", getattr(request.state, "request_id", "-"))
        return error_response(500, "internal server error", type_="server_error", code="internal_error")
