"""The streamed responses' common part: SSE (OpenAI) and NDJSON (Ollama) differ only in their bytes."""
from __future__ import annotations

from typing import AsyncIterator, Callable

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

# No caching, and no buffering in a reverse proxy (nginx honours X-Accel-Buffering): every token goes out.
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ClosingStreamingResponse(StreamingResponse):
    """A streamed response that runs `on_close` once it ends, also when the client left before the first
    byte (Starlette then never starts the body iterator, so its `finally` would not run): that is where a
    generation whose reader went away gets aborted."""

    def __init__(self, content: AsyncIterator[bytes], *, media_type: str,
                 on_close: Callable[[], None] | None = None):
        super().__init__(content, headers=STREAM_HEADERS, media_type=media_type)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self.on_close is not None:
                self.on_close()
