"""Property-based run of the whole OpenAPI schema against the app in-process (schemathesis + hypothesis).

Every operation gets schema-valid and schema-violating requests; no response may be a 5xx, and every response
must match what the schema documents (status code, content type, headers, body). The app runs inside its
lifespan on the test's event loop with the real worker pool and the cheap test engine; hypothesis runs in a
thread and hands each request to that loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import running_app
from tts_server.config import Settings

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
#: Examples per operation and mode: small, the point is breadth over every operation; whole run well under 60 s.
MAX_EXAMPLES = {"POST": 40, "GET": 8, "PUT": 20, "DELETE": 8}
KEY = "schemathesis-key-0123456789"
BUDGET_S = 60.0


def _send(client: httpx.AsyncClient, kwargs: dict[str, Any]) -> Any:
    request: dict[str, Any] = {"headers": kwargs.get("headers") or {}, "params": kwargs.get("params") or {}}
    if "json" in kwargs:
        request["json"] = kwargs["json"]
    elif kwargs.get("data") is not None:
        request["content"] = kwargs["data"]
    return client.request(kwargs["method"], kwargs["url"], **request)


@pytest.mark.slow
@pytest.mark.parametrize("auth", [False, True], ids=["open", "api-keys"])
async def test_openapi_schema_holds(make_settings: Callable[..., Settings], auth: bool) -> None:
    app_settings = make_settings(pool={"workers": 2, "queue_size": 16}, cache={"enabled": True},
                                 auth={"enabled": auth, "keys": [KEY] if auth else []})
    # With keys on, valid requests carry the key; schema-violating ones may drop it and must then get a 401.
    fixed_headers = {"Authorization": f"Bearer {KEY}"} if auth else None
    async with running_app(app_settings) as (_, client):
        loop = asyncio.get_running_loop()
        spec = (await client.get("/openapi.json")).json()
        schema = schemathesis.openapi.from_dict(spec)
        operations = [result.ok() for result in schema.get_all_operations()]
        secured = {op.label for op in operations if op.definition.raw.get("security")}
        assert ("POST /v1/synthesize" in secured) is auth
        assert "GET /livez" not in secured
        assert {op.label for op in operations} >= {"POST /v1/synthesize", "POST /v1/audio/speech",
                                                   "GET /v1/models", "GET /v1/voices", "GET /livez", "GET /metrics"}
        started = time.monotonic()
        seen: dict[str, set[int]] = {}

        def run_operation(operation: Any, mode: GenerationMode) -> None:
            checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])

            headers = fixed_headers if mode is GenerationMode.POSITIVE else None

            @given(case=operation.as_strategy(generation_mode=mode, headers=headers))
            @settings(max_examples=MAX_EXAMPLES[operation.method.upper()], deadline=None, database=None,
                      derandomize=True, suppress_health_check=list(HealthCheck))
            def check(case: Any) -> None:
                kwargs = case.as_transport_kwargs(base_url="http://tts.test")
                future = asyncio.run_coroutine_threadsafe(_send(client, kwargs), loop)
                response = future.result(timeout=60)
                seen.setdefault(operation.label, set()).add(response.status_code)
                case.validate_response(response, checks=checks)

            check()

        def run_all() -> None:
            for operation in operations:
                modes = [GenerationMode.POSITIVE]
                # Only bodies can be made schema-violating here (GETs take no body, path ids are any string).
                if operation.method.upper() in ("POST", "PUT"):
                    modes.append(GenerationMode.NEGATIVE)
                for mode in modes:
                    run_operation(operation, mode)

        await asyncio.to_thread(run_all)
        elapsed = time.monotonic() - started
        assert elapsed < BUDGET_S, f"schemathesis run took {elapsed:.1f}s"
        # Valid requests really were synthesised, not only rejected.
        assert 200 in seen["POST /v1/synthesize"]
        assert 200 in seen["POST /v1/audio/speech"]
        assert 422 in seen["POST /v1/audio/speech"]
