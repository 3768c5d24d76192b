"""Anthropic's error shape, {"type": "error", "error": {"type", "message"}}, with Anthropic's error types.

Every failure on the Anthropic routes is answered in it (before the first byte as the body, after it as
the stream's `error` event), with the HTTP status of the ServeError behind it.
"""
from __future__ import annotations

from fastapi.responses import JSONResponse

from serve.api.errors import error_headers, errors_answered_by
from serve.errors import ServeError

# Anthropic's error type for each status (https://docs.anthropic.com/en/api/errors).
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error"}


def error_type(status_code: int) -> str:
    return ERROR_TYPES.get(status_code, "api_error" if status_code >= 500 else "invalid_request_error")


def error_object(error: ServeError) -> dict:
    return {"type": "error", "error": {"type": error_type(error.status_code), "message": error.message}}


def anthropic_error(error: ServeError) -> JSONResponse:
    return JSONResponse(error_object(error), status_code=error.status_code, headers=error_headers(error))


anthropic_errors = errors_answered_by(anthropic_error)
