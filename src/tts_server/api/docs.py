"""Interactive API docs (Swagger UI) served entirely from this package.

FastAPI's built-in ``/docs`` loads Swagger UI from a CDN, which leaves a blank page on networks without internet
access. Here the page points at copies of the Swagger UI release files shipped in ``static/docs/`` (see its
README for the version and provenance). ReDoc is not offered: Swagger UI covers the same need, and one vendored
viewer is enough to keep current.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

DOCS_URL: Final = "/docs"
ASSETS_URL: Final = "/docs/assets"
ASSETS_DIR: Final = Path(__file__).parent / "static" / "docs"

#: The only files served, by name: request paths are looked up here, never joined onto the file system path.
_ASSETS: Final = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}

_HEADERS: Final = {
    "X-Content-Type-Options": "nosniff",
    # Revalidate (a cheap 304 via ETag) so an upgrade never pairs a new page with a stale cached script.
    "Cache-Control": "no-cache",
}

#: Swagger UI's default ``validatorUrl`` sends the schema URL to validator.swagger.io; never call out.
_UI_PARAMETERS: Final = {"validatorUrl": None}

docs_router = APIRouter(include_in_schema=False)


@docs_router.get(DOCS_URL)
async def swagger_ui(request: Request) -> HTMLResponse:
    # Behind a proxy prefix (``--root-path /tts``) the browser must ask for /tts/openapi.json and /tts/docs/...
    root = str(request.scope.get("root_path", "")).rstrip("/")
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS_URL}/favicon-32x32.png",
        swagger_ui_parameters=dict(_UI_PARAMETERS),
    )


@docs_router.get(ASSETS_URL + "/{name}")
async def docs_asset(name: str) -> FileResponse:
    media_type = _ASSETS.get(name)
    path = ASSETS_DIR / name
    if media_type is None or not path.is_file():
        raise StarletteHTTPException(404, "not found")
    return FileResponse(path, media_type=media_type, headers=_HEADERS)
