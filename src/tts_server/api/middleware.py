"""Pure ASGI middleware: request ids, a body-size limit that does not trust Content-Length, a body deadline and
an access log."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tts_server.api.errors import BODY_TIMEOUT, BODY_TOO_LARGE, ApiError, send_error

#: Called with every error a middleware answers itself (the app counts the rejections).
OnError = Callable[[ApiError], None]

REQUEST_ID_HEADER: Final = "x-request-id"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestIdMiddleware:
    """Give every request an id (the client's ``X-Request-Id`` if it is sane), echo it in the response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _SAFE_ID.match(candidate):
                    request_id = candidate
                break
        if request_id is None:
            request_id = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        raw_id = request_id.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                headers.append((b"x-request-id", raw_id))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodyLimitMiddleware:
    """Refuse bodies over ``max_bytes`` with 413, counting the bytes actually received (chunked bodies and
    lying Content-Length headers included)."""

    def __init__(self, app: ASGIApp, max_bytes: int, on_error: OnError | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await self._reject(send)
                    return
        received = 0
        exceeded = False
        replied = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Frameworks turn errors raised from receive() into their own 400; pretend the client left
                    # instead and answer 413 in place of whatever the app then says.
                    exceeded = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal replied
            if not exceeded:
                await send(message)
            elif not replied:
                replied = True
                await self._reject(send)

        await self.app(scope, counting_receive, guarded_send)
        if exceeded and not replied:
            await self._reject(send)

    async def _reject(self, send: Send) -> None:
        error = ApiError(BODY_TOO_LARGE, f"request body exceeds {self.max_bytes} bytes")
        if self.on_error is not None:
            self.on_error(error)
        await send_error(send, error, close=True)


class BodyTimeoutMiddleware:
    """Answer 408 when the request body is not complete ``timeout_s`` after the request started: one deadline for
    the whole body, so a client trickling a byte now and then cannot hold a request (and a connection) open.

    Below the app, ``GuardedH11Protocol`` closes connections whose body nobody reads by the same deadline.
    """

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        body_done = False
        timed_out = False
        started = False
        replied = False

        async def timed_receive() -> Message:
            nonlocal body_done, timed_out
            if timed_out:
                return {"type": "http.disconnect"}
            if body_done or started:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                # As in BodyLimitMiddleware: the app sees a client that left, and its answer is replaced by 408.
                timed_out = True
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started, replied
            if not timed_out:
                started = True
                await send(message)
            elif not replied:
                replied = True
                await self._reject(scope, send)

        await self.app(scope, timed_receive, guarded_send)
        if timed_out and not replied:
            await self._reject(scope, send)

    async def _reject(self, scope: Scope, send: Send) -> None:
        error = ApiError(BODY_TIMEOUT, f"request body not received within {self.timeout_s:g}s")
        request_id = scope.get("state", {}).get("request_id")
        if request_id:
            error.headers[REQUEST_ID_HEADER] = str(request_id)
        await send_error(send, error, close=True)


access_log = logging.getLogger("tts_server.access")


def _printable(text: str) -> str:
    # Paths are URL-decoded: escape control characters so that a request cannot forge log lines.
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


class AccessLogMiddleware:
    """One line per HTTP request on ``tts_server.access``, whatever answered it (a route, or a middleware that
    rejected it first: 401, 408, 413, 429, 503...). Wraps the whole app, so it sees every status actually sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status: int | None = None
        request_id: str | None = None

        async def logging_send(message: Message) -> None:
            nonlocal status, request_id
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    if name.lower() == REQUEST_ID_HEADER.encode():
                        request_id = value.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, logging_send)
        except Exception:
            # The server answers 500 for an app that raised before responding.
            status = status or 500
            raise
        finally:
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                access_log.info("%s %s %s %s %.1fms request_id=%s", client[0] if client else "-", scope["method"],
                                _printable(scope["path"]), status if status is not None else "-",
                                (time.perf_counter() - t0) * 1000,
                                request_id or scope.get("state", {}).get("request_id", "-"))
