"""Newline-delimited JSON streams, as Ollama's API sends them: one JSON object per line.

Objects are plain dicts encoded here (one per generated token on the hot path; pydantic would slow it).
"""
from __future__ import annotations

import json
from typing import Any, AsyncIterator, Callable

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

NDJSON_MEDIA_TYPE = "application/x-ndjson"
NDJSON_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def ndjson_line(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


async def _encode(objects: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    async for payload in objects:
        yield ndjson_line(payload)


class NDJSONResponse(StreamingResponse):
    """An application/x-ndjson response of `objects`. `on_close` runs once the response ends, also when the
    client left before the first byte (Starlette then never starts the iterator, so its `finally` would not
    run): that is where a generation whose reader went away gets aborted."""

    media_type = NDJSON_MEDIA_TYPE

    def __init__(self, objects: AsyncIterator[dict[str, Any]], on_close: Callable[[], None] | None = None,
                 status_code: int = 200):
        super().__init__(_encode(objects), status_code=status_code, headers=NDJSON_HEADERS)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self.on_close is not None:
                self.on_close()
