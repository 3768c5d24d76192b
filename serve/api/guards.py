"""What a request must pass before any route sees it: the API key (401) and the body size limit (413).

Plain ASGI middleware rather than FastAPI dependencies, so that an oversized body is refused while it is
being received (by Content-Length when the client sends one, else by counting the streamed chunks)
instead of after the whole body sits in memory, and so that one rule covers every route.
"""
from __future__ import annotations

import hmac
import json
from typing import Awaitable, Callable

from serve.api.anthropic.errors import error_object as anthropic_error_object
from serve.api.metrics import METRICS_PATH, count_error
from serve.api.ollama.ndjson import error_object as ollama_error_object
from serve.errors import AuthenticationError, PayloadTooLargeError, ServeError

Scope = dict
Message = dict
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# liveness probes (Docker HEALTHCHECK) carry no key; the chat page and its assets hold no data (the page asks
# for the key and sends it with its API calls), and Ollama's probes of `/` carry none either
OPEN_PATHS = frozenset({"/health", "/", "/ui/app.js", "/ui/style.css"})
# Anthropic's and Ollama's clients read only their own error shape (an OpenAI-shaped 401 is an unreadable
# error to them)
ANTHROPIC_PATH_PREFIX = "/v1/messages"
OLLAMA_PATH_PREFIX = "/api/"


def is_anthropic_path(path: str) -> bool:
    return path == ANTHROPIC_PATH_PREFIX or path.startswith(ANTHROPIC_PATH_PREFIX + "/")


async def send_error(send: Send, error: ServeError, extra_headers: list[tuple[bytes, bytes]] = (),
                     path: str = "") -> None:
    count_error(error.status_code, error.error_type, error.code)
    if is_anthropic_path(path):
        payload = anthropic_error_object(error)
    elif path.startswith(OLLAMA_PATH_PREFIX):
        payload = ollama_error_object(error)
    else:
        payload = error.to_openai()
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *extra_headers]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def presented_key(scope: Scope) -> str | None:
    """The key from `Authorization: Bearer <key>` (OpenAI clients) or `x-api-key`."""
    authorization = _header(scope, b"authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        return token.strip() if scheme.lower() == "bearer" else None
    return _header(scope, b"x-api-key")


class APIKeyGuard:
    """401 for every path but the open ones when the server was started with --api-key. GET /metrics wants
    the --metrics-key when one is set (a scraper's credential that cannot generate; the API key then does
    not open it), else the API key."""

    def __init__(self, app: ASGIApp, api_key: str | None, metrics_key: str | None = None):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.metrics_key = metrics_key.encode() if metrics_key else None

    def _required_key(self, path: str) -> bytes | None:
        if path == METRICS_PATH and self.metrics_key is not None:
            return self.metrics_key
        return self.api_key

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["method"] == "OPTIONS":
            return await self.app(scope, receive, send)
        required = self._required_key(scope["path"])
        if required is None:
            return await self.app(scope, receive, send)
        key = presented_key(scope)
        if key is None:
            header = "'x-api-key: <key>'" if is_anthropic_path(scope["path"]) else "'Authorization: Bearer <key>'"
            error = AuthenticationError(f"missing API key: send the header {header}")
        elif not hmac.compare_digest(key.encode(), required):
            error = AuthenticationError("invalid API key")
        else:
            return await self.app(scope, receive, send)
        await send_error(send, error, [(b"www-authenticate", b"Bearer")], scope["path"])


class BodySizeLimit:
    """413 when a request body is over `max_body_bytes`; the body is read here and replayed to the app."""

    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    def _too_large(self, num_bytes: int | None) -> PayloadTooLargeError:
        size = f"{num_bytes} bytes" if num_bytes is not None else "more than that"
        return PayloadTooLargeError(f"request body too large: {size}; the limit is {self.max_body_bytes} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return await send_error(send, self._too_large(int(declared)), [(b"connection", b"close")], scope["path"])
        chunks, num_bytes = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before sending everything
                return
            chunks.append(message.get("body", b""))
            num_bytes += len(chunks[-1])
            if num_bytes > self.max_body_bytes:
                return await send_error(send, self._too_large(None), [(b"connection", b"close")], scope["path"])
            if not message.get("more_body", False):
                break
        await self.app(scope, _replay(b"".join(chunks), receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive() that yields the buffered body once, then the real one (for disconnect detection)."""
    delivered = False

    async def replay() -> Message:
        nonlocal delivered
        if delivered:
            return await receive()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
