"""uvicorn's server with a two-step shutdown (readiness off first, then uvicorn's graceful stop)."""

from __future__ import annotations

import logging
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

log = logging.getLogger("tts_server.cli")


class DrainingServer(uvicorn.Server):
    """Shutdown in two steps. On the first SIGTERM/SIGINT readiness turns 503 at once while the listener stays open
    and requests are still admitted and served; ``delay_s`` later uvicorn's graceful shutdown starts (stop
    accepting, finish in-flight requests), then the app's lifespan drains the pool and stops the workers.

    A second signal skips the rest of the delay, a third forces the exit. Unlike plain uvicorn the signal is not
    re-raised after shutdown: a server that drained cleanly exits with status 0, which is what supervisors expect.
    """

    def __init__(self, config: uvicorn.Config, app: FastAPI, delay_s: float) -> None:
        super().__init__(config)
        self._app = app
        self._delay_s = delay_s
        self._exit_at: float | None = None
        #: Why the server gave up on its own (set when no worker could load the engine at all).
        self.fatal: str | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            self.force_exit = True
            return
        state = getattr(self._app.state, "tts", None)
        if self._exit_at is not None or self._delay_s <= 0 or not self.started or state is None:
            self.should_exit = True
            return
        state.pool.begin_drain()  # only sets a flag, so it is safe inside a signal handler
        self._exit_at = time.monotonic() + self._delay_s
        log.info("signal %d: readiness off, closing the listener in %.1fs", sig, self._delay_s)

    async def on_tick(self, counter: int) -> bool:
        if self._exit_at is not None and time.monotonic() >= self._exit_at:
            self.should_exit = True
        state = getattr(self._app.state, "tts", None)
        if self.fatal is None and state is not None and state.pool.startup_error is not None:
            # A model that cannot load on the first try will not load on the fifth: stop instead of serving 503s.
            self.fatal = state.pool.startup_error
            self.should_exit = True
        stop: bool = await super().on_tick(counter)
        return stop
