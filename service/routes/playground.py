"""The web playground: ``GET /`` serves one static page (HTML, JS and CSS shipped in the package,
``service/static/``; nothing to build) that uses the same API as any client, with the API key
the person types (kept in their browser's localStorage)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from service.errors import ApiError

router = APIRouter(include_in_schema=False)  # a page, not an API operation
STATIC = Path(__file__).resolve().parents[1] / "static"
_ASSETS = {"playground.js": "text/javascript", "playground.css": "text/css"}
# The page loads only its own files and talks only to this origin; previews are data: URLs, edit
# uploads are drawn from blob: URLs.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


@router.get("/")
def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=_HEADERS)


@router.get("/static/{name}")
def asset(name: str) -> FileResponse:
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise ApiError(404, "not_found", f"no file {name!r}", "name")
    return FileResponse(STATIC / name, media_type=media_type, headers=_HEADERS)
