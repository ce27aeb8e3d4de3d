"""API keys, rate limits, body/text limits and CORS."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import running_app
from tts_server.api.app import create_app
from tts_server.api.security import KeyStore, RateLimiter
from tts_server.config import ConfigError, Settings, load_settings

KEY_A = "key-alpha-0123456789"
KEY_B = "key-beta-9876543210"
EXEMPT = ("/livez", "/readyz", "/health", "/metrics", "/openapi.json", "/docs")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_api_keys(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(f"# ops keys\n\n{KEY_B}\n", encoding="utf-8")
    settings = make_settings(pool={"workers": 1}, auth={"enabled": True, "keys": [KEY_A], "keys_file": keys_file})
    async with running_app(settings) as (_, client):
        body = {"text": "你好"}
        missing = await client.post("/v1/synthesize", json=body)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == 'Bearer realm="tts-server"'
        assert missing.json()["error"]["type"] == "authentication_error"
        wrong = await client.post("/v1/synthesize", json=body, headers=bearer(KEY_A + "x"))
        assert wrong.status_code == 401
        assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
        basic = await client.post("/v1/synthesize", json=body, headers={"Authorization": f"Basic {KEY_A}"})
        assert basic.status_code == 401
        for key in (KEY_A, KEY_B):  # one from settings, one from the file
            ok = await client.post("/v1/synthesize", json=body, headers=bearer(key))
            assert ok.status_code == 200, ok.text
        assert (await client.get("/v1/voices")).status_code == 401
        assert (await client.get("/v1/models", headers=bearer(KEY_B))).status_code == 200
        for path in EXEMPT:
            r = await client.get(path)
            assert r.status_code == 200, path


async def test_unauthenticated_body_is_never_read(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(pool={"workers": 1}, auth={"enabled": True, "keys": [KEY_A]},
                             server={"max_body_bytes": 2048})
    async with running_app(settings) as (_, client):
        big = {"text": "好" * 2000}
        assert (await client.post("/v1/synthesize", json=big)).status_code == 401
        assert (await client.post("/v1/synthesize", json=big, headers=bearer(KEY_A))).status_code == 413

        async def chunked() -> Any:  # no Content-Length: only counting the received bytes catches it
            for _ in range(10):
                yield b" " * 1000

        r = await client.post("/v1/audio/speech", content=chunked(),
                              headers={"content-type": "application/json", **bearer(KEY_A)})
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "body_too_large"


def test_missing_keys_file_stops_startup(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    settings = make_settings(auth={"enabled": True, "keys_file": tmp_path / "absent.txt"})
    with pytest.raises(ConfigError, match=r"absent\.txt"):
        create_app(settings)
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="no API key"):
        create_app(make_settings(auth={"enabled": True, "keys_file": empty}))
    with pytest.raises(ConfigError, match=r"auth\.keys"):
        load_settings(None, auth={"enabled": True})
    with pytest.raises(ConfigError, match="whitespace"):
        load_settings(None, auth={"keys": ["two words"]})


def test_key_store_identifies_only_exact_keys() -> None:
    store = KeyStore([KEY_A, KEY_B])
    a = store.identify(KEY_A)
    assert a is not None
    assert a == store.identify(KEY_A)
    assert a != store.identify(KEY_B)
    assert KEY_A not in a
    for probe in ("", KEY_A[:-1], KEY_A + " ", KEY_A.upper()):
        assert store.identify(probe) is None


def test_token_bucket_refills() -> None:
    now = [100.0]
    limiter = RateLimiter(rate=2.0, burst=3, max_clients=2, clock=lambda: now[0])
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(0.5)
    now[0] += 0.5
    assert limiter.acquire("a") == 0.0
    assert limiter.acquire("b") == 0.0  # clients are independent
    now[0] += 100
    assert [limiter.acquire("a") for _ in range(4)][-1] > 0  # refills only up to the burst
    limiter.acquire("c")  # third client: the least recently seen one ("b") is forgotten
    assert len(limiter._buckets) == 2


async def test_rate_limit_per_key(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(pool={"workers": 1}, auth={"enabled": True, "keys": [KEY_A, KEY_B]},
                             rate_limit={"enabled": True, "requests_per_second": 0.2, "burst": 2})
    async with running_app(settings) as (_, client):
        codes = [(await client.get("/v1/info", headers=bearer(KEY_A))).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        limited = await client.post("/v1/synthesize", json={"text": "好"}, headers=bearer(KEY_A))
        assert limited.status_code == 429
        assert 1 <= int(limited.headers["retry-after"]) <= 5
        err = limited.json()["error"]
        # Distinct from overload (503, overloaded_error): this client, not the server, is at its limit.
        assert (err["type"], err["code"]) == ("rate_limit_error", "rate_limit_exceeded")
        assert (await client.post("/v1/synthesize", json={"text": "好"}, headers=bearer(KEY_B))).status_code == 200
        for path in EXEMPT:
            for _ in range(3):
                assert (await client.get(path)).status_code == 200, path
        metrics = (await client.get("/metrics")).text
        assert 'tts_requests_rejected_total{reason="rate_limited"} 2.0' in metrics


async def test_rate_limit_per_address_and_failed_keys(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(pool={"workers": 1}, rate_limit={"enabled": True, "requests_per_second": 0.2,
                                                              "burst": 2})
    async with running_app(settings) as (_, client):
        codes = [(await client.get("/v1/voices")).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
    settings = make_settings(pool={"workers": 1}, auth={"enabled": True, "keys": [KEY_A]},
                             rate_limit={"enabled": True, "requests_per_second": 0.2, "burst": 2})
    async with running_app(settings) as (_, client):
        # Guessing keys spends the address's tokens.
        codes = [(await client.get("/v1/info", headers=bearer(f"guess-{i}"))).status_code for i in range(3)]
        assert codes == [401, 401, 429]


@pytest.mark.parametrize("path", ["/v1/synthesize", "/v1/audio/speech"])
async def test_text_limit_is_422(make_settings: Callable[..., Settings], path: str) -> None:
    async with running_app(make_settings(pool={"workers": 1}, limits={"max_text_chars": 10})) as (_, client):
        body = {"text": "好" * 11} if path == "/v1/synthesize" else {"model": "tts-1", "input": "好" * 11,
                                                                    "voice": "alpha"}
        r = await client.post(path, json=body)
        assert r.status_code == 422
        assert r.json()["error"]["code"] == "text_too_long"


async def test_cors_off_by_default(make_settings: Callable[..., Settings]) -> None:
    async with running_app(make_settings(pool={"workers": 1})) as (_, client):
        r = await client.get("/v1/voices", headers={"Origin": "https://evil.example"})
        assert r.status_code == 200
        assert "access-control-allow-origin" not in r.headers
        pre = await client.options("/v1/synthesize", headers={"Origin": "https://evil.example",
                                                               "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in pre.headers


async def test_cors_explicit_origins(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(pool={"workers": 1}, auth={"enabled": True, "keys": [KEY_A]},
                             cors={"enabled": True, "origins": ["https://app.example"]})
    async with running_app(settings) as (_, client):
        pre = await client.options("/v1/synthesize", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert pre.status_code == 200  # preflights carry no key and must not need one
        assert pre.headers["access-control-allow-origin"] == "https://app.example"
        assert "authorization" in pre.headers["access-control-allow-headers"].lower()
        r = await client.post("/v1/synthesize", json={"text": "好"},
                              headers={"Origin": "https://app.example", **bearer(KEY_A)})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-sample-rate" in r.headers["access-control-expose-headers"].lower()
        # A 401 is readable by the allowed page, so it can tell the user what is wrong.
        denied = await client.post("/v1/synthesize", json={"text": "好"}, headers={"Origin": "https://app.example"})
        assert denied.status_code == 401
        assert denied.headers["access-control-allow-origin"] == "https://app.example"
        other = await client.post("/v1/synthesize", json={"text": "好"},
                                  headers={"Origin": "https://evil.example", **bearer(KEY_A)})
        assert "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize(("cors", "needle"), [
    ({"enabled": True, "origins": ["*"], "allow_credentials": True}, "'*'"),
    ({"enabled": True}, "at least one"),
    ({"enabled": True, "origins": ["https://app.example/path"]}, "nothing after"),
    ({"enabled": True, "origins": ["app.example"]}, "scheme://host"),
])
def test_cors_config_validation(cors: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_settings(None, cors=cors)
