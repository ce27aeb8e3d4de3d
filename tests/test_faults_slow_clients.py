"""Slow and abusive clients against a real ``tts-server serve`` process, over raw sockets on 127.0.0.1.

Slowloris-style clients (a request head, or a body, trickled a byte at a time), connection floods, and the access
log that must show every request, the rejected ones included. Timeouts are set short in these tests; the
descriptor count of the server process is the measure of whether slow clients are let go.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from starlette.types import Message, Receive, Scope, Send

from tests.test_server_process import HOST, Server, _report, _wait_for, serve
from tts_server.api.middleware import AccessLogMiddleware

pytestmark = pytest.mark.slow

HEADER_TIMEOUT_S = 1.5
BODY_TIMEOUT_S = 2.0
TRICKLE_EVERY_S = 0.25


def _port(srv: Server) -> int:
    return int(srv.url.rsplit(":", 1)[1])


def _fds(srv: Server) -> int:
    return psutil.Process(srv.pid).num_fds()


def _client_sockets(srv: Server) -> int:
    """Established TCP connections the server process holds on its listening port."""
    port = _port(srv)
    return sum(1 for c in psutil.Process(srv.pid).net_connections(kind="tcp")
               if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED)


async def _one_request(srv: Server, **kwargs: Any) -> httpx.Response:
    # A fresh connection per request, so that no keep-alive connection of the test counts against a limit.
    async with httpx.AsyncClient(base_url=srv.url, timeout=30.0,
                                 limits=httpx.Limits(max_keepalive_connections=0)) as client:
        return await client.post("/v1/synthesize", **kwargs)


@dataclass(frozen=True)
class SlowResult:
    closed_after_s: float | None  # None: still open when the test gave up
    response: bytes


async def _slow_client(port: int, head: bytes, trickle: bytes, give_up_s: float) -> SlowResult:
    """Send ``head`` at once, then ``trickle`` one byte every TRICKLE_EVERY_S until the server closes."""
    t0 = time.monotonic()  # before connecting: the server's clock starts when it accepts
    reader, writer = await asyncio.open_connection(HOST, port)
    received = bytearray()

    async def read_all() -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                received.extend(chunk)

    reading = asyncio.create_task(read_all())
    try:
        writer.write(head)
        for i in range(10**6):
            if reading.done() or time.monotonic() - t0 > give_up_s:
                break
            with contextlib.suppress(ConnectionError):
                writer.write(trickle[i % len(trickle):i % len(trickle) + 1])
                await writer.drain()
            await asyncio.wait([reading], timeout=TRICKLE_EVERY_S)
        closed = time.monotonic() - t0 if reading.done() else None
    finally:
        reading.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return SlowResult(closed, bytes(received))


def _status_and_body(raw: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


async def test_slow_headers_and_bodies_are_cut_off_and_descriptors_released(tmp_path: Path) -> None:
    n_head, n_body = 150, 150
    settings = {"header_timeout_s": HEADER_TIMEOUT_S, "body_timeout_s": BODY_TIMEOUT_S, "max_connections": 1000}
    async with serve(tmp_path, server=settings, pool={"workers": 1}) as srv:
        assert (await _one_request(srv, json={"text": "热身。", "format": "pcm"})).status_code == 200
        baseline = _fds(srv)
        port = _port(srv)
        give_up_s = 15.0
        partial_head = b"POST /v1/synthesize HTTP/1.1\r\nHost: tts\r\nContent-Type: application/json\r\n"
        body_head = (b"POST /v1/synthesize HTTP/1.1\r\nHost: tts\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 4000\r\n\r\n")
        t_start = time.monotonic()
        slow = [asyncio.create_task(_slow_client(port, partial_head, b"X-Slow-Header: aaaa", give_up_s))
                for _ in range(n_head)]
        slow += [asyncio.create_task(_slow_client(port, body_head, b'{"text": "' + b"a" * 3000, give_up_s))
                 for _ in range(n_body)]
        # Waited for, not slept on: opening 300 connections on a loaded machine may take longer than a fixed 0.8 s.
        peaks = [baseline]

        def connected() -> bool:
            peaks.append(_fds(srv))
            return max(peaks) >= baseline + (n_head + n_body) // 2

        await _wait_for(connected, HEADER_TIMEOUT_S + 5.0, "the slow clients connected")
        peak = max(peaks)
        # Meanwhile the server serves normal requests.
        t_normal = time.monotonic()
        normal = await _one_request(srv, json={"text": "正常。", "format": "pcm"})
        normal_s = time.monotonic() - t_normal
        results = await asyncio.gather(*slow)
        all_closed_s = time.monotonic() - t_start
        released_s = await _wait_for(lambda: _fds(srv) <= baseline + 5, 10.0, "descriptors back to baseline")
        after = _fds(srv)
        head_results, body_results = results[:n_head], results[n_head:]
        _report("slow_clients", baseline_fds=baseline, peak_fds=peak, after_fds=after,
                released_s=f"{released_s:.2f}", all_closed_s=f"{all_closed_s:.2f}", normal_s=f"{normal_s:.3f}",
                head_closed_max_s=f"{max(r.closed_after_s or give_up_s for r in head_results):.2f}",
                body_closed_max_s=f"{max(r.closed_after_s or give_up_s for r in body_results):.2f}")
        assert normal.status_code == 200
        assert peak >= baseline + (n_head + n_body) // 2, "the slow clients were never connected"
        head_closed = [r.closed_after_s for r in head_results if r.closed_after_s is not None]
        body_closed = [r.closed_after_s for r in body_results if r.closed_after_s is not None]
        assert len(head_closed) + len(body_closed) == len(results), "a slow client was never disconnected"
        # Cut off at the configured deadlines (with slack for a loaded machine), not by the test giving up.
        assert min(head_closed) >= HEADER_TIMEOUT_S - 0.05
        assert max(head_closed) <= HEADER_TIMEOUT_S + 3.0
        assert min(body_closed) >= BODY_TIMEOUT_S - 0.05
        assert max(body_closed) <= BODY_TIMEOUT_S + 4.0
        # Each was told why, with the one error body.
        for r, code in [(head_results[0], "header_timeout"), (body_results[0], "body_timeout")]:
            status, body = _status_and_body(r.response)
            assert status == 408
            error = body["error"]
            assert isinstance(error, dict)
            assert set(error) == {"message", "type", "code", "param"}
            assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, None)
        assert all(r.response.startswith(b"HTTP/1.1 408 ") for r in results)
        assert after <= baseline + 5
        assert (await _one_request(srv, json={"text": "之后。", "format": "pcm"})).status_code == 200


async def test_body_nobody_reads_cannot_be_trickled_forever(tmp_path: Path) -> None:
    # A 404 is answered without reading the body and keeps the connection alive; the client keeps trickling it.
    settings = {"header_timeout_s": HEADER_TIMEOUT_S, "body_timeout_s": BODY_TIMEOUT_S}
    async with serve(tmp_path, server=settings, pool={"workers": 1}) as srv:
        head = b"POST /no/such/page HTTP/1.1\r\nHost: tts\r\nContent-Length: 1000\r\n\r\n"
        results = await asyncio.gather(*(_slow_client(_port(srv), head, b"x", 12.0) for _ in range(20)))
        _report("unread_body", closed_max_s=f"{max(r.closed_after_s or 12.0 for r in results):.2f}")
        assert all(r.response.startswith(b"HTTP/1.1 404 ") for r in results)
        assert all(r.closed_after_s is not None and r.closed_after_s <= BODY_TIMEOUT_S + 4.0 for r in results)


async def test_connection_limit_refuses_extra_connections_with_503(tmp_path: Path) -> None:
    limit = 20
    settings = {"header_timeout_s": 30.0, "max_connections": limit}
    async with serve(tmp_path, server=settings, pool={"workers": 1}) as srv:
        await _wait_for(lambda: _client_sockets(srv) == 0, 5.0, "readiness probes' connections closed")
        baseline = _fds(srv)
        held = [await asyncio.open_connection(HOST, _port(srv)) for _ in range(limit)]
        await _wait_for(lambda: _client_sockets(srv) == limit, 5.0, "the idle connections accepted")
        # A flood beyond the limit: every one is answered 503 and let go, none is held.
        refused = await asyncio.gather(*(_one_request(srv, json={"text": "多余。"}) for _ in range(100)))
        statuses = {r.status_code for r in refused}
        # Refused connections are let go within refuse_linger_s, leaving only the held ones.
        settle_s = await _wait_for(lambda: _fds(srv) <= baseline + limit + 5, 3.0, "refused connections released")
        fds_full = _fds(srv)
        for _, writer in held:
            writer.close()
        await _wait_for(lambda: _client_sockets(srv) == 0, 5.0, "the idle connections closed")
        after = await _one_request(srv, json={"text": "之后。", "format": "pcm"})
        _report("connection_limit", baseline_fds=baseline, fds_at_limit=fds_full, settle_s=f"{settle_s:.2f}",
                statuses=statuses,
                after=after.status_code)
        assert statuses == {503}
        body = refused[0].json()
        assert body["error"]["code"] == "too_many_connections"
        assert set(body["error"]) == {"message", "type", "code", "param"}
        assert refused[0].headers["retry-after"] == "1"
        assert fds_full <= baseline + limit + 5
        assert after.status_code == 200


async def test_access_log_has_every_request_including_rejected_ones(tmp_path: Path) -> None:
    settings = {"max_body_bytes": 1024, "access_log": True}
    async with serve(tmp_path, server=settings, pool={"workers": 1}) as srv:
        cases: list[tuple[str, dict[str, Any], int]] = [
            ("acc-413", {"json": {"text": "大" * 2000}}, 413),
            ("acc-422", {"json": {"text": 42}}, 422),
            ("acc-200", {"json": {"text": "好。", "format": "pcm"}}, 200),
        ]
        for request_id, kwargs, expected in cases:
            r = await _one_request(srv, headers={"x-request-id": request_id}, **kwargs)
            assert r.status_code == expected
        async with httpx.AsyncClient(base_url=srv.url) as client:
            assert (await client.get("/no/such/page", headers={"x-request-id": "acc-404"})).status_code == 404

        def logged() -> dict[str, str]:
            lines = srv.output.read_text(encoding="utf-8", errors="replace").splitlines()
            return {rid: line for line in lines if "tts_server.access" in line
                    for rid in ("acc-413", "acc-422", "acc-200", "acc-404") if f"request_id={rid}" in line}

        await _wait_for(lambda: len(logged()) == 4, 5.0, "four access log lines")
        lines = logged()
        _report("access_log", **lines)
        assert " POST /v1/synthesize 413 " in lines["acc-413"]
        assert " POST /v1/synthesize 422 " in lines["acc-422"]
        assert " POST /v1/synthesize 200 " in lines["acc-200"]
        assert " GET /no/such/page 404 " in lines["acc-404"]
        assert all(line.split(" request_id=")[0].endswith("ms") for line in lines.values())


async def test_access_log_line_cannot_be_forged_through_the_path(caplog: pytest.LogCaptureFixture) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 404, "headers": [(b"x-request-id", b"forge-1")]})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        pass

    # uvicorn URL-decodes the path: GET /x%0A...%20200%20... arrives with a real newline in it.
    scope: Scope = {"type": "http", "method": "GET", "path": "/x\n2026-01-01 INFO tts_server.access: GET / 200",
                    "client": ("10.0.0.1", 5000), "headers": []}
    with caplog.at_level(logging.INFO, logger="tts_server.access"):
        await AccessLogMiddleware(app)(scope, receive, send)
    [record] = [r for r in caplog.records if r.name == "tts_server.access"]
    line = record.getMessage()
    assert "\n" not in line
    assert line.startswith("10.0.0.1 GET /x\\n2026-01-01")
    assert line.endswith("request_id=forge-1")
    assert " 404 " in line
