"""What every route needs from the running app: settings, the pool, metrics and the audio cache."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from tts_server.api.security import KeyStore, RateLimiter
from tts_server.config import Settings
from tts_server.inference.cache import AudioCache
from tts_server.inference.lexicon import LexiconStore
from tts_server.inference.pool import WorkerPool
from tts_server.metrics import ServerMetrics


@dataclass
class AppState:
    settings: Settings
    pool: WorkerPool
    metrics: ServerMetrics
    #: None when ``cache.enabled`` is false.
    cache: AudioCache | None = None
    #: The user lexicon (empty and read-only while ``lexicon.path`` is unset).
    lexicon: LexiconStore = field(default_factory=lambda: LexiconStore(None, max_entries=1, max_word_chars=1))
    #: Auth and rate limit, for the routes no HTTP middleware sees (the WebSocket); None when off.
    keys: KeyStore | None = None
    limiter: RateLimiter | None = None


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.tts
    return state


def request_id(request: Request) -> str:
    rid: str = request.scope.get("state", {}).get("request_id", "-")
    return rid
