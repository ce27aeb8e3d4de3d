"""The frontend's error type."""

from __future__ import annotations

from tts_server.inference.engine import EngineError


class FrontendError(EngineError):
    """The input text or SSML cannot be turned into symbols; ``public_message`` is shown to the client (422)."""

    def __init__(self, public_message: str, *, param: str | None = "text") -> None:
        super().__init__(public_message, param=param, client_error=True)
