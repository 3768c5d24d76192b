"""Newline-delimited JSON streams, as Ollama's API sends them: one JSON object per line.

Objects are plain dicts encoded here (one per generated token on the hot path; pydantic would slow it).
"""
from __future__ import annotations

import json
from typing import Any, AsyncIterator, Callable

from serve.api.streaming import ClosingStreamingResponse


def ndjson_line(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


async def _encode(objects: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    async for payload in objects:
        yield ndjson_line(payload)


class NDJSONResponse(ClosingStreamingResponse):
    """An application/x-ndjson response of `objects`, one JSON object per line."""

    media_type = "application/x-ndjson"

    def __init__(self, objects: AsyncIterator[dict[str, Any]], on_close: Callable[[], None] | None = None):
        super().__init__(_encode(objects), on_close)
