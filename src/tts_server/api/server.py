"""HTTP protocol guards below the ASGI app: request-head and body deadlines and a connection limit.

uvicorn's own keep-alive timer is cancelled by any byte received, so a client that trickles a partial request
head, or a body the app never reads, holds its connection (and a file descriptor) forever, and nothing bounds the
number of such connections. These guards live in a subclass of uvicorn's h11 protocol, pinned explicitly
(``uvicorn.Config(http=...)``) so that installing httptools never silently drops them; they rely on uvicorn's
``H11Protocol`` internals (``conn``, ``cycle``, ``connections``, ``on_response_complete``) as of uvicorn 0.54.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, ClassVar

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from tts_server.api.errors import HEADER_TIMEOUT, TOO_MANY_CONNECTIONS, ApiError
from tts_server.config import ServerSettings

log = logging.getLogger("tts_server.api.server")


def bind_listener(host: str, port: int) -> socket.socket:
    """Bind the listening socket before anything else starts, so that a port in use fails fast (OSError) instead
    of after the worker pool has been spawned."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, type_, proto, _, address = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        # Like uvicorn: a restart may rebind while old connections of the previous process sit in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def raw_error_response(error: ApiError) -> bytes:
    """A complete ``Connection: close`` response with the one error body, for the cases where no request (and so
    no ASGI app) exists yet."""
    payload = error.body()
    headers = [("content-type", "application/json"), ("content-length", str(len(payload))),
               ("connection", "close"), *error.headers.items()]
    reason = HTTPStatus(error.status).phrase
    head = f"HTTP/1.1 {error.status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    return head.encode("latin-1") + payload


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a head deadline, a body deadline and a connection limit.

    One timer per connection, chosen from the h11 states after every event: waiting for a request head -> the
    head deadline; receiving a body -> the body deadline; otherwise (the app is working, or the connection is
    closing) none. The body deadline here is a backstop a little after ``BodyTimeoutMiddleware``'s, which answers
    408 while the app reads the body; this one closes connections whose body nobody reads (e.g. after a 401).
    """

    header_timeout_s: ClassVar[float] = 10.0
    body_timeout_s: ClassVar[float] = 30.0
    max_connections: ClassVar[int] = 512
    #: Slack after the ASGI body deadline so that the middleware's 408 goes out before this closes the socket.
    body_backstop_grace_s: ClassVar[float] = 1.0
    #: How long a refused connection may linger for the client to read its 503.
    refuse_linger_s: ClassVar[float] = 1.0
    _refused_logged_at: ClassVar[float] = float("-inf")
    _refused_since_log: ClassVar[int] = 0

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_kind: str | None = None
        self._timer_cycle: object = None
        self._refused = False
        self._upgraded = False

    # --- connection limit -----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            self._refuse(transport)
            return
        super().connection_made(transport)
        self._sync_timer()

    def _refuse(self, transport: asyncio.Transport) -> None:
        # Answer and half-close at once: the descriptor is released as soon as the client closes its side, or
        # after refuse_linger_s, and the refused connection never counts against the limit.
        self._refused = True
        self.transport = transport
        cls = GuardedH11Protocol
        cls._refused_since_log += 1
        now = self.loop.time()
        if now - cls._refused_logged_at >= 5.0:
            # Throttled: a flood of connections must not turn into a flood of log lines.
            log.warning("refused %d connection(s): %d open (server.max_connections)", cls._refused_since_log,
                        len(self.connections))
            cls._refused_logged_at = now
            cls._refused_since_log = 0
        transport.write(raw_error_response(ApiError(TOO_MANY_CONNECTIONS, retry_after=1)))
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = self.loop.call_later(self.refuse_linger_s, transport.abort)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        if self._refused:
            return
        super().connection_lost(exc)

    # --- deadlines ------------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the request of a refused client is read and dropped, so that closing sends FIN, not RST
        super().data_received(data)
        self._sync_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._sync_timer()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        # The transport now belongs to the WebSocket protocol (which has its own pings and the session's idle
        # timeout): h11 still sees a request body pending, and the body backstop would cut the socket.
        self._upgraded = True
        self._cancel_timer()
        super().handle_websocket_upgrade(event)

    def _sync_timer(self) -> None:
        if self._upgraded or self.transport.is_closing():
            self._cancel_timer()
            return
        their, ours = self.conn.their_state, self.conn.our_state
        if their is h11.IDLE and ours is h11.IDLE:
            if self._timer_kind != "head":
                self._arm("head", self.header_timeout_s, self._on_head_timeout)
        elif their is h11.SEND_BODY:
            if self._timer_kind != "body" or self._timer_cycle is not self.cycle:
                self._arm("body", self.body_timeout_s + self.body_backstop_grace_s, self._on_body_timeout)
                self._timer_cycle = self.cycle
        else:
            self._cancel_timer()

    def _arm(self, kind: str, delay: float, callback: Callable[[], None]) -> None:
        self._cancel_timer()
        self._timer_kind = kind
        self._timer = self.loop.call_later(delay, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_kind = None
        self._timer_cycle = None

    def _on_head_timeout(self) -> None:
        self._timer = None
        self._timer_kind = None
        if self.transport.is_closing():
            return
        partial, _ = self.conn.trailing_data
        if partial:
            # A started but unfinished request head: say why before closing, as nginx and others do.
            log.debug("%s: request head incomplete after %.1fs; 408", self.client, self.header_timeout_s)
            self.transport.write(raw_error_response(
                ApiError(HEADER_TIMEOUT, f"request head not received within {self.header_timeout_s:g}s")))
        self.transport.close()

    def _on_body_timeout(self) -> None:
        self._timer = None
        self._timer_kind = None
        if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
            return
        log.debug("%s: request body incomplete after %.1fs; closing", self.client, self.body_timeout_s)
        self.transport.close()


def guarded_protocol(server: ServerSettings) -> type[GuardedH11Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with the limits from settings."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {
        "header_timeout_s": server.header_timeout_s,
        "body_timeout_s": server.body_timeout_s,
        "max_connections": server.max_connections,
    })
