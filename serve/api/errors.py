"""Every failure becomes OpenAI's error shape: {"error": {"message", "type", "param", "code"}}.

One place maps exceptions to responses: ServeError (ours), pydantic validation errors (bad fields),
Starlette HTTP errors (unknown route, wrong method) and anything unexpected (a generic 500 that is
logged with its traceback here and never shows it to the client).
"""
from __future__ import annotations

import functools
import json
import logging
from typing import Any, Awaitable, Callable, Iterable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve.api.metrics import count_error
from serve.errors import InvalidRequestError, OverloadedError, ServeError, ServerStoppingError

logger = logging.getLogger("serve.api")

_TYPES_BY_STATUS = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                    404: "invalid_request_error", 405: "invalid_request_error", 413: "invalid_request_error",
                    429: "rate_limit_error"}


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    """OpenAI's error body, as the OpenAPI document describes it (serve/api/openapi.py)."""

    error: OpenAIErrorDetail


def error_body(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def internal_error() -> ServeError:
    """What a client learns of an unexpected failure (the log has the rest)."""
    return ServeError("internal server error; see the server log", code="internal_error")


def error_headers(error: ServeError) -> dict[str, str]:
    """Retry-After on a 429 (when a full queue may have room again) and on a 503 while draining."""
    if isinstance(error, (OverloadedError, ServerStoppingError)):
        return {"Retry-After": str(max(1, int(error.retry_after)))}
    return {}


def counted(error: ServeError) -> ServeError:
    """`error`, counted in the metrics as it becomes an answer (each error is mapped once)."""
    count_error(error.status_code, error.error_type, error.code)
    return error


def error_response(error: ServeError) -> JSONResponse:
    counted(error)
    return JSONResponse(error.to_openai(), status_code=error.status_code, headers=error_headers(error))


Handler = Callable[..., Awaitable[Response]]


def errors_answered_by(render: Callable[[ServeError], Response]) -> Callable[[Handler], Handler]:
    """A route decorator: the route's failures are answered by `render` (a dialect's own error shape)
    instead of the app-wide handlers below (OpenAI's shape)."""
    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapper(*args: Any, **kwargs: Any) -> Response:
            try:
                return await handler(*args, **kwargs)
            except ServeError as exc:
                if exc.status_code >= 500:
                    logger.error("%s failed: %s", handler.__name__, exc.message)
                return render(counted(exc))
            except Exception:  # noqa: BLE001 - the client gets a generic error, the log the traceback
                logger.exception("internal error in %s", handler.__name__)
                return render(counted(internal_error()))
        return wrapper
    return decorate


def field_path(loc: Iterable[Any]) -> str:
    """('messages', 0, 'content') -> 'messages[0].content' (the `param` of OpenAI's errors)."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def validation_error(errors: list[dict[str, Any]]) -> InvalidRequestError:
    """Pydantic errors -> one 400 whose message names each bad field and whose param is the first."""
    messages, params = [], []
    for err in errors:
        loc = tuple(err.get("loc", ()))
        if loc and loc[0] == "body":  # FastAPI prefixes body fields with "body"
            loc = loc[1:]
        if err.get("type") == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "JSON decode error")
            return InvalidRequestError(f"malformed JSON body: {detail}")
        path = field_path(loc)
        params.append(path or None)
        messages.append(f"{path}: {err.get('msg')}" if path else str(err.get("msg")))
    return InvalidRequestError("; ".join(messages) or "invalid request", param=params[0] if params else None)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object, whatever Content-Type the client sent (curl -d sends a form
    type), or a 400 that says what is wrong with it."""
    if not body.strip():
        raise InvalidRequestError("the request body is empty; expected a JSON object")
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise InvalidRequestError(f"malformed JSON body: {exc.msg} (line {exc.lineno} column {exc.colno})") from None
    except ValueError as exc:  # bad UTF-8, NaN/Infinity
        raise InvalidRequestError(f"malformed JSON body: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequestError(f"the request body must be a JSON object, got {type(data).__name__}")
    return data


def validate(model_cls, data: dict[str, Any]):
    """model_cls.model_validate(data), with pydantic's errors turned into our 400."""
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc.errors(include_url=False)) from None


async def _on_serve_error(request: Request, exc: ServeError) -> JSONResponse:
    if exc.status_code >= 500:
        logger.error("%s %s failed: %s", request.method, request.url.path, exc.message)
    return error_response(exc)


async def _on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_response(validation_error(list(exc.errors())))


async def _on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path}"
    error_type = _TYPES_BY_STATUS.get(exc.status_code, "server_error" if exc.status_code >= 500 else
                                      "invalid_request_error")
    count_error(exc.status_code, error_type, None)
    return JSONResponse(error_body(message, error_type), status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    # The traceback goes to the log (Starlette re-raises the exception to uvicorn, which prints it),
    # never to the client.
    logger.error("internal error on %s %s: %r", request.method, request.url.path, exc)
    return JSONResponse(counted(internal_error()).to_openai(), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every exception into OpenAI's error shape."""
    app.add_exception_handler(ServeError, _on_serve_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
