"""The API docs work without internet access: every asset comes from the server itself.

The browser test renders /docs in headless Debian chromium with every non-loopback request aborted, the way a
machine on an offline network sees it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.test_webui import CHROMIUM, CHROMIUM_ARGS, LiveServer, _require_browser
from tts_server.api.app import create_app
from tts_server.config import Settings

#: The targets of src/href attributes in a page.
_REFERENCES = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")


def _client(settings: Settings, root_path: str = "") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(settings), root_path=root_path)
    return httpx.AsyncClient(transport=transport, base_url="http://tts.test")


@pytest.mark.parametrize("auth", [False, True])
async def test_docs_page_references_only_own_assets(make_settings: Callable[..., Settings], auth: bool) -> None:
    # With auth on, the docs and their assets must still load without a key (only /v1/* is protected).
    sections: dict[str, Any] = {"auth": {"enabled": True, "keys": ["secret-key"]}} if auth else {}
    async with _client(make_settings(**sections)) as client:
        page = await client.get("/docs")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        html = page.text
        # No absolute or protocol-relative URL to any host: everything is served by us, relative to our origin.
        assert not re.search(r"https?://", html), html
        assert not re.search(r"""(?:src|href)\s*=\s*["']//""", html), html
        assert "url: '/openapi.json'" in html

        refs = _REFERENCES.findall(html)
        expected = {"/docs/assets/swagger-ui-bundle.js": "text/javascript",
                    "/docs/assets/swagger-ui.css": "text/css",
                    "/docs/assets/favicon-32x32.png": "image/png"}
        assert sorted(refs) == sorted(expected)
        for url, media_type in expected.items():
            res = await client.get(url)
            assert res.status_code == 200, url
            assert res.headers["content-type"].startswith(media_type), (url, res.headers["content-type"])
            assert res.headers["x-content-type-options"] == "nosniff"
            assert len(res.content) > 500, url
        assert "SwaggerUIBundle" in (await client.get("/docs/assets/swagger-ui-bundle.js")).text

        # ReDoc is off rather than loaded from a CDN.
        assert (await client.get("/redoc")).status_code == 404
        schema = (await client.get("/openapi.json")).json()
        assert not any(p.startswith("/docs") for p in schema["paths"])


@pytest.mark.parametrize("name", ["LICENSE", "README.md", "..%2Fdocs.py", "../docs.py", "missing.js",
                                  "swagger-ui-bundle.js.LICENSE.txt"])
async def test_docs_assets_serve_only_the_allow_list(make_settings: Callable[..., Settings], name: str) -> None:
    async with _client(make_settings()) as client:
        res = await client.get(f"/docs/assets/{name}")
    assert res.status_code == 404
    assert "from __future__" not in res.text


async def test_docs_behind_root_path(make_settings: Callable[..., Settings]) -> None:
    # Behind a reverse proxy that strips /tts the browser must request /tts/... for the schema and the assets.
    async with _client(make_settings(), root_path="/tts") as client:
        html = (await client.get("/tts/docs")).text
        assert "url: '/tts/openapi.json'" in html
        refs = _REFERENCES.findall(html)
        assert len(refs) == 3, refs
        assert all(r.startswith("/tts/docs/assets/") for r in refs), refs
        for ref in refs:
            assert (await client.get(ref)).status_code == 200, ref


def test_docs_render_in_chromium_offline(make_settings: Callable[..., Settings]) -> None:
    _require_browser()
    from playwright.sync_api import Route, sync_playwright

    server = LiveServer(create_app(make_settings(pool={"workers": 1})))
    server.start()
    aborted: list[str] = []
    errors: list[str] = []

    def offline(route: Route) -> None:
        url = route.request.url
        parts = urlsplit(url)
        if parts.scheme in ("data", "blob") or parts.hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            aborted.append(url)
            route.abort("internetdisconnected")

    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.set_default_timeout(20_000)
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.route("**/*", offline)
                page.goto(server.url + "/docs", wait_until="networkidle")
                assert not aborted, f"/docs tried to load from outside the server: {aborted}"
                title = page.locator(".information-container .title")
                title.wait_for()
                assert "tts-server" in title.inner_text()
                operation = page.locator(".opblock-summary-path[data-path='/v1/synthesize']")
                operation.first.wait_for()
                assert operation.first.is_visible()
                assert page.title() == "tts-server - Swagger UI"
            finally:
                browser.close()
    finally:
        server.stop()
    assert not aborted, aborted
    assert not errors, errors
