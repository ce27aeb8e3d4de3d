"""Application factory: wires settings, the worker pool, metrics and the routes together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI
from prometheus_fastapi_instrumentator import Instrumentator

from tts_server import __version__
from tts_server.api.errors import install_error_handlers
from tts_server.api.middleware import BodyLimitMiddleware, RequestIdMiddleware
from tts_server.api.routes import router
from tts_server.config import Settings
from tts_server.inference.pool import WorkerPool
from tts_server.metrics import ServerMetrics

log = logging.getLogger("tts_server.api")

STATIC_DIR = Path(__file__).parent / "static"

DESCRIPTION = """
Text-to-speech for the ModelScope Sambert-HifiGan Chinese multi-emotion voices.

Every error is a JSON `ErrorResponse` (`{"error": {"message", "type", "code", "param"}}`). Overload is a fast 503
with `Retry-After`; a request that cannot finish in time is a 504.
"""

#: Health and metrics endpoints stay out of the HTTP latency statistics.
UNMEASURED = ["/metrics", "/livez", "/readyz", "/health"]


@dataclass
class AppState:
    settings: Settings
    pool: WorkerPool
    metrics: ServerMetrics


def create_app(settings: Settings) -> FastAPI:
    metrics = ServerMetrics(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = WorkerPool(settings)
        app.state.tts = AppState(settings, pool, metrics)
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
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(router)
    Instrumentator(
        excluded_handlers=UNMEASURED, registry=metrics.registry, should_group_status_codes=True,
    ).instrument(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.server.max_body_bytes,
                       on_reject=lambda: metrics.rejected.labels("too_large").inc())
    app.add_middleware(RequestIdMiddleware)
    return app


async def _announce_ready(pool: WorkerPool, metrics: ServerMetrics) -> None:
    await pool.wait_ready()
    metrics.precreate_voice_series({name: v.emotions for name, v in pool.voices.items()})
