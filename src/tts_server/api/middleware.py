"""Pure ASGI middleware: request ids, a body-size limit that does not trust Content-Length, a body deadline and
an access log."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tts_server.api.errors import BODY_TIMEOUT, BODY_TOO_LARGE, ApiError, send_error

#: Called with every error a middleware answers itself (the app counts the rejections).
OnError = Callable[[ApiError], None]

REQUEST_ID_HEADER: Final = "x-request-id"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class HttpMiddleware:
    """A pure ASGI middleware that acts on HTTP requests only; everything else (lifespan) passes through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.handle(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError


class RequestIdMiddleware(HttpMiddleware):
    """Give every request an id (the client's ``X-Request-Id`` if it is sane), echo it in the response."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
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


class _Refused(Exception):
    def __init__(self, error: ApiError) -> None:
        super().__init__(error.message)
        self.error = error


BodyReader = Callable[[], Awaitable[Message]]


class _BodyGuard(HttpMiddleware):
    """Cuts a request body short with an error of its own. The app then sees a client that left (frameworks turn
    errors raised from ``receive()`` into their own 400) and whatever it answers is replaced by the guard's error."""

    def __init__(self, app: ASGIApp, on_error: OnError | None = None) -> None:
        super().__init__(app)
        self.on_error = on_error

    def refuse_early(self, scope: Scope) -> ApiError | None:
        """An error to answer before reading anything, from the request head alone."""
        return None

    def body_reader(self, receive: Receive) -> BodyReader:
        """This request's ``receive``, raising ``_Refused`` to cut the body short."""
        raise NotImplementedError

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        early = self.refuse_early(scope)
        if early is not None:
            await self._reject(send, early)
            return
        read = self.body_reader(receive)
        refused: ApiError | None = None
        answered = False
        replied = False

        async def guarded_receive() -> Message:
            nonlocal refused
            if refused is not None:
                return {"type": "http.disconnect"}
            if answered:
                return await receive()  # the app has its body: only the disconnect is left to wait for
            try:
                return await read()
            except _Refused as exc:
                refused = exc.error
                return {"type": "http.disconnect"}

        async def guarded_send(message: Message) -> None:
            nonlocal answered, replied
            if refused is None:
                answered = True
                await send(message)
            elif not replied:
                replied = True
                await self._reject(send, refused)

        await self.app(scope, guarded_receive, guarded_send)
        if refused is not None and not replied:
            await self._reject(send, refused)

    async def _reject(self, send: Send, error: ApiError) -> None:
        if self.on_error is not None:
            self.on_error(error)
        await send_error(send, error, close=True)


class BodyLimitMiddleware(_BodyGuard):
    """Refuse bodies over ``max_bytes`` with 413, counting the bytes actually received (chunked bodies and
    lying Content-Length headers included)."""

    def __init__(self, app: ASGIApp, max_bytes: int, on_error: OnError | None = None) -> None:
        super().__init__(app, on_error)
        self.max_bytes = max_bytes

    def _too_large(self) -> ApiError:
        return ApiError(BODY_TOO_LARGE, f"request body exceeds {self.max_bytes} bytes")

    def refuse_early(self, scope: Scope) -> ApiError | None:
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    return self._too_large()
        return None

    def body_reader(self, receive: Receive) -> BodyReader:
        received = 0

        async def read() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _Refused(self._too_large())
            return message

        return read


class BodyTimeoutMiddleware(_BodyGuard):
    """Answer 408 when the request body is not complete ``timeout_s`` after the request started: one deadline for
    the whole body, so a client trickling a byte now and then cannot hold a request (and a connection) open.

    Below the app, ``GuardedH11Protocol`` closes connections whose body nobody reads by the same deadline.
    """

    def __init__(self, app: ASGIApp, timeout_s: float, on_error: OnError | None = None) -> None:
        super().__init__(app, on_error)
        self.timeout_s = timeout_s

    def body_reader(self, receive: Receive) -> BodyReader:
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        complete = False

        async def read() -> Message:
            nonlocal complete
            if complete:
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise _Refused(ApiError(BODY_TIMEOUT,
                                        f"request body not received within {self.timeout_s:g}s")) from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                complete = True
            return message

        return read


access_log = logging.getLogger("tts_server.access")


def _printable(text: str) -> str:
    # Paths are URL-decoded: escape control characters so that a request cannot forge log lines.
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


class AccessLogMiddleware(HttpMiddleware):
    """One line per HTTP request on ``tts_server.access``, whatever answered it (a route, or a middleware that
    rejected it first: 401, 408, 413, 429, 503...). Wraps the whole app, so it sees every status actually sent."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
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
