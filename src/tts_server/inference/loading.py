"""Engine registry: settings -> a loaded engine.

Kept apart from the protocol module (``engine``) so that the protocol does not depend on any concrete engine
(the Sambert engine imports the protocol; the protocol importing it back made a cycle).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from tts_server.inference.engine import Engine, EngineLoadError

if TYPE_CHECKING:
    from tts_server.config import Settings


def load_engine(settings: Settings) -> Engine:
    """Build the engine named by ``settings.engine.name``.

    ``sambert`` is the product engine. Any other value must be ``package.module:factory`` where ``factory``
    takes the settings and returns an engine; the tests use this to plug in small deterministic engines.
    """
    name = settings.engine.name
    if name == "sambert":
        # Imported on demand: torch is loaded only in processes that run the Sambert engine.
        from tts_server.inference.sambert.engine import load_sambert_engine

        return load_sambert_engine(settings)
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        raise EngineLoadError(f"engine.name must be 'sambert' or 'module:factory', got {name!r}")
    try:
        module = importlib.import_module(module_name)
        factory = getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise EngineLoadError(f"cannot import engine factory {name!r}: {exc}") from exc
    engine = factory(settings)
    if not isinstance(engine, Engine):
        raise EngineLoadError(f"engine factory {name!r} returned {type(engine).__name__}, not an Engine")
    return engine
