"""The OpenAPI document (`/openapi.json`, `/docs`): every route's request body, answers and error shapes.

Routes read their JSON body themselves (`parse_json_object` + `validate` in serve/api/errors.py), so that
each dialect answers bad input in its own error shape and refuses unknown fields with a 400 naming them;
FastAPI therefore sees no body parameter and would document none (and its own validation would answer
422 in its own shape). Instead a route says what it takes and answers with one decorator,

    @router.post("/v1/chat/completions")
    @documented(body=ChatCompletionRequest, answer=ChatCompletionResponse, stream=SSE, errors=GENERATES)

which only labels the handler; `install_openapi(app)` writes the labels into the document: the request
body and the JSON answers from the pydantic models (one `components.schemas` entry per model, named by
pydantic, which tells same-named models of different dialects apart), a stream as its media type, and
each error status with the dialect's error body (`error_shape`). Every route may also answer 401 (with
--api-key; not the open paths) and 500; a route with a body 400 (bad JSON or fields) and 413 (too large).
tests/unit/test_openapi.py fails for a route that is not labelled.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, TypeVar

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
# What the status of an error answer means on this server (serve/errors.py and the guards).
STATUS_MEANINGS = {
    400: "Bad request: malformed JSON, a bad or unknown field (named in the message)",
    401: "Missing or wrong API key (only when the server runs with --api-key or --metrics-key)",
    403: "Not allowed: downloads need --allow-pull",
    404: "Not found: the model is not available here (the message lists the available ones), or no such id",
    413: "Request body larger than --max-body-bytes",
    429: "The model's waiting queue is full; retry after Retry-After seconds",
    500: "Internal error (details in the server log)",
    502: "A download from the Hugging Face Hub failed",
    503: "The server is shutting down (retry after Retry-After seconds), or a model failed to load",
}
# Error statuses by what a route does, on top of the 400/401/413/500 every route with a body may answer.
LOADS_MODEL = (404, 502, 503)  # it names a model, which may be loaded (or downloaded, with --allow-pull)
GENERATES = (*LOADS_MODEL, 429)  # ... and generates: the queue may be full
LABEL = "__openapi_route__"
# OpenAPI 3.1 (FastAPI's) has the schema of a sequential media type describe one item (3.2 names it
# itemSchema): one server-sent event, whose `data` is a JSON object of the dialect (or OpenAI's "[DONE]").
SSE_EVENT = {"type": "object", "required": ["data"], "description": "one server-sent event",
             "properties": {"event": {"type": "string"}, "data": {"type": "string"}}}

RETRY_AFTER = {"description": "seconds to wait before retrying (a full queue; a server shutting down)",
               "schema": {"type": "integer", "minimum": 1}}

Handler = TypeVar("Handler", bound=Callable[..., Any])


@dataclass(frozen=True)
class RouteDoc:
    """What one route takes and answers, for the document."""

    body: type[BaseModel] | None = None  # the JSON request body
    answer: type[BaseModel] | None = None  # the 200 JSON answer
    stream: str | None = None  # the media type of the streamed 200 answer (SSE, NDJSON)
    media: dict[str, str] = field(default_factory=dict)  # other 200 answers: media type -> what it is
    errors: tuple[int, ...] = ()  # error statuses beyond the ones every route may answer
    error_shape: type[BaseModel] | None = None  # the dialect's error body (None: OpenAI's)
    other: dict[int, tuple[type[BaseModel], str]] = field(default_factory=dict)  # non-error statuses
    refuses_unknown_fields: bool = True  # an unknown top-level key of the body is a 400


def documented(body: type[BaseModel] | None = None, answer: type[BaseModel] | None = None, *,
               stream: str | None = None, media: dict[str, str] | None = None, errors: Iterable[int] = (),
               error_shape: type[BaseModel] | None = None,
               other: dict[int, tuple[type[BaseModel], str]] | None = None,
               refuses_unknown_fields: bool = True) -> Callable[[Handler], Handler]:
    """A route decorator: label the handler with what the route takes and answers (see RouteDoc).
    It changes nothing at run time; put it under `@router.post(...)` (decorators that wrap with
    functools.wraps, as `errors_answered_by`, keep the label)."""
    doc = RouteDoc(body, answer, stream, dict(media or {}), tuple(errors), error_shape, dict(other or {}),
                   refuses_unknown_fields)

    def label(handler: Handler) -> Handler:
        setattr(handler, LABEL, doc)
        return handler
    return label


def only_unused_values(table: Mapping[str, tuple[Any, str]]) -> Callable[[dict[str, Any]], None]:
    """A request model's `json_schema_extra` for the fields it declares but does not implement, accepted
    only at a value that changes nothing (`table`: name -> (that value, or a tuple of them; why)): the
    document offers only those values, and says why, so /docs shows what a route accepts."""
    def document(schema: dict[str, Any]) -> None:
        properties = schema.get("properties", {})
        for name, (unused, why) in table.items():
            if name in properties:
                values = [value for value in (unused if isinstance(unused, tuple) else (unused,)) if value is not None]
                accepted = [{"enum": values}, {"type": "null"}] if values else [{"type": "null"}]
                properties[name] = {"title": properties[name].get("title", name), "description": why,
                                    "anyOf": accepted}
    return document


def route_doc(route: APIRoute) -> RouteDoc | None:
    return getattr(route.endpoint, LABEL, None)


def install_openapi(app: FastAPI, error_shape: type[BaseModel], open_paths: Iterable[str]) -> None:
    """Make `app.openapi()` document every labelled route; `error_shape` is the error body of routes that
    name none, `open_paths` those without an API key (no 401)."""
    open_paths = frozenset(open_paths)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            _document_routes(document, _labelled_routes(app), error_shape, open_paths)
            _drop_unused_components(document)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _labelled_routes(app: FastAPI) -> list[tuple[APIRoute, RouteDoc]]:
    return [(route, doc) for route in app.routes
            if isinstance(route, APIRoute) and route.include_in_schema and (doc := route_doc(route)) is not None]


def _document_routes(document: dict[str, Any], routes: list[tuple[APIRoute, RouteDoc]],
                     error_shape: type[BaseModel], open_paths: frozenset[str]) -> None:
    refs = _component_schemas(document, routes, error_shape)
    for route, doc in routes:
        for method in route.methods:
            operation = document["paths"][route.path_format][method.lower()]
            if doc.body is not None:
                ref = refs[(doc.body, "validation")]
                if doc.refuses_unknown_fields:  # what the route accepts (OpenAI's models keep unknown keys
                    _component(document, ref)["additionalProperties"] = False  # only to refuse them by name)
                operation["requestBody"] = {"required": True, "content": _json(ref)}
            operation["responses"] = _responses(route, doc, refs, error_shape, open_paths)


def _component_schemas(document: dict[str, Any], routes: list[tuple[APIRoute, RouteDoc]],
                       error_shape: type[BaseModel]) -> dict[tuple[type[BaseModel], str], dict[str, Any]]:
    """Every model's schema in components.schemas; returns the $ref of each (model, mode)."""
    wanted = {(error_shape, "serialization")}
    for _, doc in routes:
        if doc.body is not None:
            wanted.add((doc.body, "validation"))
        for model in (doc.answer, doc.error_shape, *(model for model, _ in doc.other.values())):
            if model is not None:
                wanted.add((model, "serialization"))
    ordered = sorted(wanted, key=lambda pair: (pair[0].__module__, pair[0].__qualname__, pair[1]))
    refs, schemas = models_json_schema(ordered, ref_template="#/components/schemas/{model}")
    components = document.setdefault("components", {}).setdefault("schemas", {})
    components.update(schemas.get("$defs", {}))
    return dict(refs)


def _drop_unused_components(document: dict[str, Any]) -> None:
    """FastAPI's 422 models, left behind when the routes' answers replaced its 422 (never answered here:
    no route lets FastAPI validate anything)."""
    schemas = document.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        if f'"#/components/schemas/{name}"' not in json.dumps(document["paths"]):
            schemas.pop(name, None)


def _component(document: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    return document["components"]["schemas"][ref["$ref"].rsplit("/", 1)[-1]]


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _responses(route: APIRoute, doc: RouteDoc, refs: dict, error_shape: type[BaseModel],
               open_paths: frozenset[str]) -> dict[str, Any]:
    error_ref = refs[(doc.error_shape or error_shape, "serialization")]
    content: dict[str, Any] = {}
    if doc.answer is not None:
        content.update(_json(refs[(doc.answer, "serialization")]))
    if doc.stream == SSE:
        content[SSE] = {"schema": SSE_EVENT}
    elif doc.stream is not None:  # one line: the answer's object (the last one `done`), or an error
        lines = [refs[(doc.answer, "serialization")], error_ref] if doc.answer is not None else [error_ref]
        content[doc.stream] = {"schema": {"anyOf": lines, "description": "one line of the stream"}}
    for media_type, what in doc.media.items():
        content[media_type] = {"schema": {"type": "string", "description": what}}
    responses: dict[str, Any] = {"200": {"description": route.summary or "Success", "content": content}}
    for status, (model, description) in doc.other.items():
        responses[str(status)] = {"description": description, "content": _json(refs[(model, "serialization")])}
    statuses = {500, *doc.errors}
    if doc.body is not None:
        statuses |= {400, 413}
    if route.path_format not in open_paths:
        statuses.add(401)
    for status in sorted(statuses):
        responses.setdefault(str(status), {"description": STATUS_MEANINGS[status], "content": _json(error_ref)})
        if status in (429, 503):
            responses[str(status)]["headers"] = {"Retry-After": RETRY_AFTER}
    return responses
