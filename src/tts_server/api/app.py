"""Application factory: wires settings, the worker pool, metrics and the routes together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_fastapi_instrumentator import Instrumentator

from tts_server import __version__
from tts_server.api.docs import docs_router
from tts_server.api.errors import ApiError, install_error_handlers
from tts_server.api.lexicon import router as lexicon_router
from tts_server.api.middleware import (
    AccessLogMiddleware,
    BodyLimitMiddleware,
    BodyTimeoutMiddleware,
    RequestIdMiddleware,
)
from tts_server.api.openai_compat import router as openai_router
from tts_server.api.routes import router
from tts_server.api.security import KeyStore, RateLimiter, SecurityMiddleware, document_security
from tts_server.api.state import AppState
from tts_server.api.webui import webui_router
from tts_server.api.ws import PROTOCOL as WS_PROTOCOL
from tts_server.api.ws import router as ws_router
from tts_server.config import ConfigError, Settings
from tts_server.inference.cache import AudioCache
from tts_server.inference.lexicon import LexiconError, LexiconStore
from tts_server.inference.pool import WorkerPool
from tts_server.metrics import ServerMetrics

log = logging.getLogger("tts_server.api")

DESCRIPTION = """
Text-to-speech for the ModelScope Sambert-HifiGan Chinese multi-emotion voices.

Every error is a JSON `ErrorResponse` (`{"error": {"message", "type", "code", "param"}}`). Overload is a fast 503
with `Retry-After`; a request that cannot finish in time is a 504.
"""

#: Health and metrics endpoints stay out of the HTTP latency statistics.
UNMEASURED = ["/metrics", "/livez", "/readyz", "/health"]


#: Headers browser clients on other origins may read (CORS hides all but a few by default).
EXPOSED_HEADERS = ["X-Request-Id", "X-Sample-Rate", "X-Audio-Duration", "X-Cache", "Retry-After",
                   "X-Voice-Mapped", "X-Instructions-Ignored", "X-Emotion", "X-Speed-Applied",
                   "Content-Disposition"]


def create_app(settings: Settings) -> FastAPI:
    metrics = ServerMetrics(settings)
    # Read keys now: a missing key file must stop the server at startup, not fail every request later.
    keys = KeyStore.from_settings(settings) if settings.auth.enabled else None
    rl = settings.rate_limit
    limiter = RateLimiter(rl.requests_per_second, rl.burst, rl.max_clients) if rl.enabled else None
    try:
        # Read now: a corrupt lexicon stops the server with one line, instead of serving without its entries.
        lexicon = LexiconStore(settings.lexicon.path, max_entries=settings.lexicon.max_entries,
                               max_word_chars=settings.lexicon.max_word_chars)
    except LexiconError as exc:
        raise ConfigError(f"{exc.message} (fix or remove it; lexicon.path)") from None
    cache = AudioCache(settings, lambda hit: metrics.cache_lookups.labels("hit" if hit else "miss").inc()) \
        if settings.cache.enabled else None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = WorkerPool(settings)
        app.state.tts = AppState(settings, pool, metrics, cache, lexicon, keys, limiter)
        if cache is not None:
            await cache.start()
        metrics.bind_pool(pool.stats, lambda: pool.voices)
        await pool.start()
        ready_watch = asyncio.create_task(_announce_ready(pool, metrics))
        try:
            yield
        finally:
            ready_watch.cancel()
            drained = await pool.drain(settings.server.drain_timeout_s)
            log.info("drain %s; stopping workers", "complete" if drained else "timed out")
            await pool.close()

    app = FastAPI(
        title="tts-server",
        version=__version__,
        description=DESCRIPTION + WS_PROTOCOL,
        lifespan=lifespan,
        # FastAPI's own pages load Swagger UI/ReDoc from a CDN; docs_router serves a packaged copy instead.
        docs_url=None,
        redoc_url=None,
    )
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(openai_router)
    app.include_router(lexicon_router)
    app.include_router(ws_router)
    app.include_router(webui_router)
    app.include_router(docs_router)
    document_security(app, settings.auth.enabled)
    Instrumentator(
        excluded_handlers=UNMEASURED, registry=metrics.registry, should_group_status_codes=True,
    ).instrument(app)
    def count_rejection(error: ApiError) -> None:
        metrics.count_rejection(error.kind.reject_reason)

    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.server.max_body_bytes, on_error=count_rejection)
    app.add_middleware(BodyTimeoutMiddleware, timeout_s=settings.server.body_timeout_s)
    # The last added runs first. On the way in: request id, CORS (so 401/429 carry CORS headers and preflights
    # need no key), keys and rate limit (before any body byte is read), body deadline, body limit.
    app.add_middleware(SecurityMiddleware, keys=keys, limiter=limiter, on_error=count_rejection)
    if settings.cors.enabled:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors.origins),
                           allow_credentials=settings.cors.allow_credentials,
                           # PUT/DELETE: the lexicon can be managed from a browser app on an allowed origin.
                           allow_methods=["GET", "POST", "PUT", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-Id"],
                           expose_headers=EXPOSED_HEADERS, max_age=600)
    app.add_middleware(RequestIdMiddleware)
    if settings.server.access_log:
        # Outermost, so that requests rejected by any middleware are logged with the status they got.
        app.add_middleware(AccessLogMiddleware)
    return app


async def _announce_ready(pool: WorkerPool, metrics: ServerMetrics) -> None:
    await pool.wait_ready()
    metrics.precreate_voice_series({name: v.emotions for name, v in pool.voices.items()})
