"""OpenAI's Responses API: POST /v1/responses, GET and DELETE /v1/responses/{id}.

Generation goes through the core every dialect shares (serve/api/generation.py); only the edges are the
Responses API's: the request (serve/api/responses/request.py), the answer (serve/api/responses/events.py)
and the store of earlier responses (serve/api/responses/store.py). Errors keep OpenAI's shape (the app's
handlers answer them).
"""
from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import APIRouter, Request as HTTPRequest
from fastapi.responses import JSONResponse, Response

from serve.api.engine_client import PoolClient
from serve.api.errors import parse_json_object, validate
from serve.api.generation import Generation, Timings, answer, chat_prompt, resolve_engine, submit
from serve.api.openapi import GENERATES, SSE, documented
from serve.api.responses.answers import Deleted, Response as ResponseObject
from serve.api.responses.events import ResponseDraft, ResponseFraming
from serve.api.responses.protocol import FunctionCallItem, ResponsesRequest
from serve.api.responses.request import (conversation, sampling_params, template_messages, template_messages_of,
                                         tool_request)
from serve.api.responses.store import ResponseStore, StoredResponse


def _framing(generation: Generation, body: ResponsesRequest, messages: list[dict[str, Any]],
             store: ResponseStore) -> ResponseFraming:
    """The framing of this response; a finished response is stored unless the request said store: false."""
    draft = ResponseDraft(response_id=generation.request_id, model=generation.request.model, body=body,
                          generation=generation)

    def keep(response: dict[str, Any], text: str) -> None:
        if body.store:
            answer = template_messages_of([FunctionCallItem.model_validate(item) for item in response["output"]
                                           if item["type"] == "function_call"])
            said = {**(answer[0] if answer else {"role": "assistant"}), "content": text}
            store.put(response["id"], StoredResponse(response, [*messages, said]))

    return ResponseFraming(draft, keep)


def build_router(pool: PoolClient, store: ResponseStore) -> APIRouter:
    """The Responses routes over the model pool, with `store` keeping finished responses; a reasoning
    model's thinking is answered as reasoning items."""
    router = APIRouter()

    @router.post("/v1/responses", summary="A response, collected or streamed (OpenAI's Responses API)")
    @documented(ResponsesRequest, ResponseObject, stream=SSE, errors=GENERATES)
    async def create_response(http_request: HTTPRequest) -> Response:
        timings = Timings(started=time.perf_counter())
        body = validate(ResponsesRequest, parse_json_object(await http_request.body()))
        messages = conversation(body, store)
        engine = await resolve_engine(pool, body.model, timings)
        prompt = chat_prompt(engine, template_messages(body, messages), tool_request(body))
        generation = submit(engine, f"resp_{uuid.uuid4().hex}", prompt, sampling_params(engine, prompt, body),
                            timings)
        framing = _framing(generation, body, messages, store)
        return await answer(http_request, generation, can_stream=body.stream, framing=framing,
                            collected=framing.collected)

    @router.get("/v1/responses/{response_id}", summary="A stored response")
    @documented(answer=ResponseObject, errors=(404,))
    async def get_response(response_id: str) -> JSONResponse:
        return JSONResponse(store.get(response_id).body)

    @router.delete("/v1/responses/{response_id}", summary="Delete a stored response")
    @documented(answer=Deleted, errors=(404,))
    async def delete_response(response_id: str) -> JSONResponse:
        store.delete(response_id)
        return JSONResponse({"id": response_id, "object": "response", "deleted": True})

    return router
