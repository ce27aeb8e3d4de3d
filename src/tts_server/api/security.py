"""API keys and per-client rate limits for ``/v1/*``, as one pure ASGI middleware.

It sits outside the body-limit middleware, so a client without a valid key or over its rate is answered before
a single body byte is read. Everything outside ``/v1/`` (probes, ``/metrics``, OpenAPI docs, the WebUI's static
page) is exempt from both: orchestrators must always reach the probes, and ``/metrics`` belongs on an internal
network instead.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from fastapi import FastAPI, Request
from starlette.types import ASGIApp, Receive, Scope, Send

from tts_server.api.errors import RATE_LIMITED, UNAUTHORIZED, ApiError, send_error
from tts_server.api.middleware import HttpMiddleware, OnError
from tts_server.config import ConfigError, Settings

log = logging.getLogger("tts_server.api")

#: Paths under this prefix need a key (when auth is on) and count against the rate limit.
PROTECTED_PREFIX: Final = "/v1/"
REALM: Final = "tts-server"
#: ``scope["state"]`` key naming who made the request: ``key:<id>`` or ``addr:<ip>``.
PRINCIPAL: Final = "principal"


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


def read_keys_file(path: Path) -> list[str]:
    """One key per line; blank lines and ``#`` comments are skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read auth.keys_file {path}: {exc.strerror}") from exc
    keys = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if any(c.isspace() for c in line):
            raise ConfigError(f"auth.keys_file {path}, line {number}: a key must not contain whitespace")
        keys.append(line)
    return keys


class KeyStore:
    """The accepted API keys, held only as SHA-256 digests."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [_digest(k) for k in keys]

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyStore:
        keys = [k.get_secret_value() for k in settings.auth.keys]
        if settings.auth.keys_file is not None:
            keys += read_keys_file(settings.auth.keys_file)
        if settings.auth.enabled and not keys:
            raise ConfigError("auth.enabled is true but no API key is configured (auth.keys / auth.keys_file)")
        return cls(keys)

    def __len__(self) -> int:
        return len(self._digests)

    def identify(self, presented: str) -> str | None:
        """The key's public id (a digest prefix, safe to log and to use as a label) or None.

        Comparing fixed-length digests with ``compare_digest`` against *every* key keeps the time independent of
        the presented value and of which key (if any) matched.
        """
        candidate = _digest(presented)
        match: bytes | None = None
        for digest in self._digests:
            if hmac.compare_digest(candidate, digest):
                match = digest
        return match.hex()[:12] if match is not None else None


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets per client: ``burst`` requests at once, refilled at ``rate`` per second."""

    def __init__(self, rate: float, burst: int, max_clients: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.max_clients = max_clients
        self._clock = clock
        self._buckets: collections.OrderedDict[str, _Bucket] = collections.OrderedDict()

    def acquire(self, client: str) -> float:
        """Take one token; returns 0 when allowed, else the seconds until a token is available."""
        now = self._clock()
        bucket = self._buckets.get(client)
        if bucket is None:
            bucket = self._buckets[client] = _Bucket(float(self.burst), now)
            while len(self._buckets) > self.max_clients:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(client)
            bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate


class SecurityMiddleware(HttpMiddleware):
    """Authenticate (when enabled) and rate-limit (when enabled) requests to ``/v1/*``.

    Always records the principal in ``scope["state"]``, which the ``authenticated`` dependency checks, so a
    route that is somehow reached without this middleware fails closed.
    """

    def __init__(self, app: ASGIApp, *, keys: KeyStore | None, limiter: RateLimiter | None,
                 on_error: OnError | None = None) -> None:
        super().__init__(app)
        self.keys = keys
        self.limiter = limiter
        self.on_error = on_error

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _route_path(scope).startswith(PROTECTED_PREFIX):
            await self.app(scope, receive, send)
            return
        try:
            principal = admit(self.keys, self.limiter, client_address(scope), authorization_header(scope))
        except ApiError as error:
            await self._reply(send, error)
            return
        scope.setdefault("state", {})[PRINCIPAL] = principal
        await self.app(scope, receive, send)

    async def _reply(self, send: Send, error: ApiError) -> None:
        if self.on_error is not None:
            self.on_error(error)
        await send_error(send, error)


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def authorization_header(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            return str(value.decode("latin-1"))
    return None


def bearer_token(authorization: str) -> str | None:
    """The key in an ``Authorization: Bearer <key>`` value; None for another scheme or an empty key."""
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def admit(keys: KeyStore | None, limiter: RateLimiter | None, address: str, authorization: str | None) -> str:
    """Who is calling (``key:<id>`` or ``addr:<ip>``), or the 401/429 ``ApiError`` to answer: the one decision
    for every protected route, HTTP or WebSocket. ``authorization`` is the ``Authorization`` value presented
    (None: none)."""
    principal = f"addr:{address}"
    if keys is not None:
        token = bearer_token(authorization) if authorization is not None else None
        key_id = keys.identify(token) if token is not None else None
        if key_id is None:
            # Failed attempts spend the address's tokens, so guessing keys runs into 429 quickly.
            wait = limiter.acquire(principal) if limiter is not None else 0.0
            if wait > 0:
                raise _too_many(wait)
            raise _unauthorized(authorization is not None)
        principal = f"key:{key_id}"
    if limiter is not None:
        wait = limiter.acquire(principal)
        if wait > 0:
            raise _too_many(wait)
    return principal


def _unauthorized(presented: bool) -> ApiError:
    challenge = f'Bearer realm="{REALM}"'
    if presented:
        challenge += ', error="invalid_token"'
        message = "invalid API key"
    else:
        message = "missing API key: send 'Authorization: Bearer <key>'"
    return ApiError(UNAUTHORIZED, message, headers={"WWW-Authenticate": challenge})


def _too_many(wait: float) -> ApiError:
    retry = max(1, math.ceil(wait))
    return ApiError(RATE_LIMITED, f"rate limit exceeded, retry in {retry} s", retry_after=retry)


def _route_path(scope: Scope) -> str:
    """The path the router matches: behind ``--root-path /tts`` the scope's path is ``/tts/v1/...``."""
    path = str(scope.get("path", ""))
    root = str(scope.get("root_path", ""))
    if root and path.startswith(root):
        path = path[len(root):]
    return path


def authenticated(request: Request) -> str:
    """Route dependency: the principal the security middleware admitted (fail closed without it)."""
    principal = request.scope.get("state", {}).get(PRINCIPAL)
    if not isinstance(principal, str):
        raise ApiError(UNAUTHORIZED, "request was not authenticated",
                       headers={"WWW-Authenticate": f'Bearer realm="{REALM}"'})
    return principal


def document_security(app: FastAPI, enabled: bool) -> None:
    """Declare bearer auth on the ``/v1/*`` operations in the OpenAPI schema, only when it is enforced, so the
    schema never claims a requirement the server does not have (or hides one it has)."""
    if not enabled:
        return
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        schema.setdefault("components", {}).setdefault("securitySchemes", {})["ApiKey"] = {
            "type": "http", "scheme": "bearer", "description": "An API key from auth.keys or auth.keys_file.",
        }
        for path, operations in schema.get("paths", {}).items():
            if path.startswith(PROTECTED_PREFIX):
                for operation in operations.values():
                    operation["security"] = [{"ApiKey": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
