"""The stored responses: a bounded in-memory LRU for `previous_response_id` and GET/DELETE
/v1/responses/{id}.

A stored response keeps its JSON body and the conversation it ended (its input without the
instructions, which OpenAI does not carry over, then its output), so a follow-up request only adds its
own input. The oldest-used entry goes first when the store is full (--max-stored-responses); nothing
survives a restart. Used only from the event loop, so it needs no lock.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from serve.errors import ServeError


class ResponseNotFoundError(ServeError):
    status_code = 404
    error_type = "invalid_request_error"


@dataclass(frozen=True)
class StoredResponse:
    body: dict[str, Any]  # the response object as it was answered
    conversation: list[dict[str, Any]]  # chat-template messages: its input and its output


class ResponseStore:
    def __init__(self, max_size: int):
        self.max_size = max_size
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, response_id: str, stored: StoredResponse) -> None:
        if self.max_size <= 0:
            return
        self._entries[response_id] = stored
        self._entries.move_to_end(response_id)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)

    def get(self, response_id: str, *, param: str | None = None) -> StoredResponse:
        stored = self._entries.get(response_id)
        if stored is None:
            raise ResponseNotFoundError(self._not_found(response_id), param=param)
        self._entries.move_to_end(response_id)
        return stored

    def delete(self, response_id: str) -> None:
        if self._entries.pop(response_id, None) is None:
            raise ResponseNotFoundError(self._not_found(response_id))

    def _not_found(self, response_id: str) -> str:
        return (f"no stored response with id {response_id!r}: it was not stored (store: false), was deleted, or "
                f"is older than the last {self.max_size} this server keeps (--max-stored-responses)")
