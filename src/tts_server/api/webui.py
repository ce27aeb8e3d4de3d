"""The browser UI: one static page plus its script and stylesheet, shipped inside the package (no build step)."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

STATIC_DIR: Final = Path(__file__).parent / "static"

_MEDIA_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
}

# The page loads nothing from other origins and plays audio from blob: URLs it creates itself; anything else
# (an injected script, a framing site) is refused by the browser.
_CSP: Final = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
               "media-src 'self' blob:; connect-src 'self'; form-action 'none'; base-uri 'none'; "
               "frame-ancestors 'none'")

_HEADERS: Final = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Small files that change with every release: revalidate (cheap 304 via ETag) rather than serve stale code.
    "Cache-Control": "no-cache",
}


def _static_files() -> dict[str, Path]:
    # An allow-list fixed at import: request paths are looked up, never joined onto the file system path, so
    # "../" tricks cannot reach anything outside the folder.
    if not STATIC_DIR.is_dir():
        return {}
    return {p.name: p for p in STATIC_DIR.iterdir() if p.is_file() and p.suffix in _MEDIA_TYPES}


_FILES: Final = _static_files()

webui_router = APIRouter(include_in_schema=False)


def _serve(name: str) -> FileResponse:
    path = _FILES.get(name)
    if path is None:
        raise StarletteHTTPException(404, "not found")
    return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix], headers=_HEADERS)


@webui_router.get("/")
async def index() -> FileResponse:
    return _serve("index.html")


@webui_router.get("/static/{name}")
async def static_file(name: str) -> FileResponse:
    return _serve(name)
