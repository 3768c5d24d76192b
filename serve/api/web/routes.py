"""`GET /`: the chat page for browsers, "Ollama is running" for everyone else, and the page's two assets.

The root answers by the Accept header, in this one place: a browser asks for `text/html` and gets the page;
Ollama's clients and liveness probes (which expect the exact text "Ollama is running") and curl send no such
Accept and keep getting the text. The page talks to the server only through the public OpenAI API
(/v1/models, /v1/chat/completions), so it needs nothing from the rest of the app.

The assets are read from the package once, at start-up: the page works offline and from any install.
"""
from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Request as HTTPRequest
from fastapi.responses import PlainTextResponse, Response
from starlette.exceptions import HTTPException

from serve.api.openapi import documented

# Ollama's clients and probes check this exact body at `/`.
OLLAMA_ROOT_TEXT = "Ollama is running"
# asset name -> media type; the page loads them from /ui/<name>
ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
PAGE_PATHS = frozenset({"/", *(f"/ui/{name}" for name in ASSETS)})  # open without the API key: no data in them
# The page may load only its own scripts and styles, and talk only to this server.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
                               "base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def _read_asset(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def wants_html(http_request: HTTPRequest) -> bool:
    """A browser navigating here: its Accept header names text/html."""
    return "text/html" in http_request.headers.get("accept", "").lower()


def build_router() -> APIRouter:
    page = _read_asset("index.html")
    assets = {name: _read_asset(name) for name in ASSETS}
    router = APIRouter()

    @router.head("/", include_in_schema=False)
    @router.get("/", summary="The chat page, or \"Ollama is running\"")
    @documented(media={"text/html": "the chat page (for Accept: text/html)",
                       "text/plain": f"{OLLAMA_ROOT_TEXT!r} (for everyone else: Ollama's probes)"})
    async def root(http_request: HTTPRequest) -> Response:
        if wants_html(http_request):
            return Response(page, media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)
        return PlainTextResponse(OLLAMA_ROOT_TEXT)

    @router.get("/ui/{name}", summary="The chat page's script and style")
    @documented(media=dict(ASSETS), errors=(404,))
    async def asset(name: str) -> Response:
        if name not in assets:
            raise HTTPException(404)  # the app's handler: "no route GET /ui/<name>" in OpenAI's shape
        return Response(assets[name], media_type=ASSETS[name], headers=SECURITY_HEADERS)

    return router
