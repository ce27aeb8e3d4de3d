"""Test engines for pool fault tests (loaded in worker processes via ``engine.name``)."""

from __future__ import annotations

import os

from tests.engines import ToneEngine
from tts_server.config import Settings


def breakable_engine(settings: Settings) -> ToneEngine:
    """The tone engine, except that it fails to load while the file named by ``TTS_TEST_BREAK_FILE`` exists
    (a model directory that went bad after the server started)."""
    marker = os.environ.get("TTS_TEST_BREAK_FILE")
    if marker and os.path.exists(marker):
        raise RuntimeError("model files are unreadable")
    return ToneEngine(settings)
