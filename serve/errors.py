"""One exception hierarchy for everything a user can get wrong or a server can refuse.

Each error knows its HTTP status and its OpenAI error `type`/`code`; serve/api maps it to a response in
one handler, and the CLI prints its message as one line.
"""
from __future__ import annotations


class ServeError(Exception):
    status_code = 500
    error_type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def to_openai(self) -> dict:
        return {"error": {"message": self.message, "type": self.error_type,
                          "param": self.param, "code": self.code}}


class InvalidRequestError(ServeError):
    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthError(InvalidRequestError):
    code = "context_length_exceeded"


class AuthenticationError(ServeError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class ModelNotFoundError(ServeError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class ModelNotAvailableError(ServeError):
    """A request named a model it may not load (serve/models/access.py). One message whatever the name
    points at, so a refusal tells nothing about the server's files."""

    status_code = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class PullNotAllowedError(ServeError):
    """A download was asked over HTTP and the server was not started with --allow-pull."""

    status_code = 403
    error_type = "permission_error"
    code = "pull_not_allowed"


class PayloadTooLargeError(ServeError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "payload_too_large"


class OverloadedError(ServeError):
    """The waiting queue is full; the client should retry after `retry_after` seconds."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "queue_full"

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class ServerStoppingError(ServeError):
    """The server is draining before it exits (SIGTERM/SIGINT): it admits nothing new. Another instance,
    or this one restarted, may take the request `retry_after` seconds later."""

    status_code = 503
    error_type = "server_error"
    code = "shutting_down"

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class ConfigError(ServeError):
    """A bad command line, catalog entry or impossible backend choice; raised before serving."""

    status_code = 400
    error_type = "invalid_request_error"


class ModelLoadError(ServeError):
    status_code = 503
    error_type = "server_error"
    code = "model_load_failed"


class HubError(ServeError):
    """A pull from the Hugging Face Hub failed: not found, gated, offline, bad checksum."""

    status_code = 502
    error_type = "server_error"
    code = "hub_error"
