"""schemathesis against the real server's own OpenAPI document, every operation (issue 15's reliability
campaign): no 5xx, every status and content type documented, every JSON answer valid under its documented
schema. Bounded: a fixed number of generated cases per operation (schema-valid ones, then invalid ones),
derandomized, no shrinking, short outputs; all traffic to 127.0.0.1. Prints the figures the README's
"Reliability" section quotes.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import httpx
import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402  (hypothesis comes with schemathesis)
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import (content_type_conformance, not_a_server_error,  # noqa: E402
                                 response_schema_conformance, status_code_conformance)

from tests.integration.conftest import start_llamacpp_server  # noqa: E402

jsonschema_rs = pytest.importorskip("jsonschema_rs")  # schemathesis' validator

NUM_VALID_CASES = 50  # per operation: bodies and parameters valid under the document
NUM_INVALID_CASES = 20  # per operation with a body: bodies that break its schema
MAX_OUTPUT_TOKENS = 4  # generation stays short: the campaign is about the HTTP surface, not the model
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
# Output limits of each dialect, clamped so that no generated case runs a model for long.
OUTPUT_LIMITS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def bounded(body: Any, model: str, case_number: int) -> Any:
    """A generated body with short outputs, naming the served model in three cases of four (random names
    are a 404 before any generation; the fourth keeps exercising that)."""
    if not isinstance(body, dict):
        return body
    for name in OUTPUT_LIMITS:  # an integer in JSON may come as 6151.0
        if isinstance(body.get(name), (int, float)) and not isinstance(body[name], bool):
            body[name] = max(1, min(int(body[name]), MAX_OUTPUT_TOKENS))
    options = body.get("options")
    if isinstance(options, dict):
        options["num_predict"] = MAX_OUTPUT_TOKENS  # also caps Ollama's "until the context is full"
    if case_number % 4 and "model" in body:
        body["model"] = model
    return body


def with_default_limit(body: Any, path: str) -> Any:
    """Bodies that set no output limit get a short one (else the model may write 4096 tokens)."""
    if not isinstance(body, dict):
        return body
    if path in ("/v1/chat/completions", "/v1/completions") and body.get("max_tokens") is None \
            and body.get("max_completion_tokens") is None:
        body["max_tokens"] = MAX_OUTPUT_TOKENS
    elif path == "/v1/responses" and body.get("max_output_tokens") is None:
        body["max_output_tokens"] = MAX_OUTPUT_TOKENS
    elif path in ("/api/chat", "/api/generate") and not isinstance(body.get("options"), dict):
        body["options"] = {"num_predict": MAX_OUTPUT_TOKENS}
    return body


class NDJSONLines:
    """schemathesis validates JSON bodies and server-sent events, not NDJSON: each line of an Ollama stream
    is checked here against the document's schema of one line."""

    def __init__(self, document: dict[str, Any]):
        self.document = document

    def check(self, operation, response) -> None:
        media_type = (response.headers.get("content-type") or [""])[0]
        if not media_type.startswith("application/x-ndjson"):
            return
        responses = self.document["paths"][operation.path][operation.method.lower()]["responses"]
        schema = responses[str(response.status_code)]["content"]["application/x-ndjson"]["schema"]
        validator = jsonschema_rs.Draft202012Validator({**schema, "components": self.document["components"]})
        for number, line in enumerate(response.content.decode().splitlines(), 1):
            errors = [str(error) for error in validator.iter_errors(json.loads(line))]
            assert not errors, f"NDJSON line {number} violates its schema: {errors[:3]}\n{line[:500]}"


def run_operation(operation, mode, num_cases: int, base_url: str, model: str, lines: NDJSONLines,
                  failures: list[str], statuses: Counter) -> int:
    """`num_cases` generated cases of one operation; failures are collected (not raised: no shrinking,
    every operation gets its cases), the answers' statuses counted. Returns the number of cases sent."""
    sent = Counter()

    @settings(max_examples=num_cases, derandomize=True, deadline=None, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def send(case) -> None:
        sent["cases"] += 1
        if mode == GenerationMode.POSITIVE:
            case.body = with_default_limit(bounded(case.body, model, sent["cases"]), operation.path)
            if "model_id" in (case.path_parameters or {}) and sent["cases"] % 4:
                case.path_parameters["model_id"] = model  # GET /v1/models/{model_id} of the served model
        try:
            response = case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=120)
            statuses[response.status_code] += 1
            lines.check(operation, response)
        except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - a check failed: record it
            failures.append(f"{operation.label} [{mode.value}] {type(exc).__name__}: {str(exc)[:1500]}\n"
                            f"{case.as_curl_command(base_url=base_url)[:3000]}")

    try:
        send()
    except Unsatisfiable:  # nothing to get wrong (a free-form path parameter): the cases made are all
        pass
    return sent["cases"]


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory):
    args = ["--parallel", "4", "--max-queue", "64", "--threads", "1"]
    with start_llamacpp_server(tmp_path_factory, "schemathesis", args) as server:
        yield server


def test_every_operation_answers_as_documented(fuzzed_server):
    schema = schemathesis.openapi.from_url(f"{fuzzed_server.base_url}/openapi.json")
    lines = NDJSONLines(httpx.get(f"{fuzzed_server.base_url}/openapi.json").json())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20, [operation.label for operation in operations]
    failures: list[str] = []
    figures: dict[str, tuple[int, int, Counter]] = {}
    started = time.monotonic()
    for operation in operations:
        statuses: Counter = Counter()
        num_valid = run_operation(operation, GenerationMode.POSITIVE, NUM_VALID_CASES, fuzzed_server.base_url,
                                  fuzzed_server.model, lines, failures, statuses)
        num_invalid = 0
        if operation.body:  # something a case can get wrong
            num_invalid = run_operation(operation, GenerationMode.NEGATIVE, NUM_INVALID_CASES,
                                        fuzzed_server.base_url, fuzzed_server.model, lines, failures, statuses)
        figures[operation.label] = (num_valid, num_invalid, statuses)
    seconds = time.monotonic() - started
    for label, (num_valid, num_invalid, statuses) in figures.items():
        answered = ", ".join(f"{count} x {status}" for status, count in sorted(statuses.items()))
        print(f"schemathesis: {label}: {num_valid} valid + {num_invalid} invalid cases; answers {answered}")
    total = sum(valid + invalid for valid, invalid, _ in figures.values())
    print(f"schemathesis: {total} cases over {len(figures)} operations in {seconds:.0f} s, "
          f"{len(failures)} failures")
    with fuzzed_server.http() as http:
        assert http.get("/health").status_code == 200, "the server is not healthy after the campaign"
    assert not failures, "\n\n".join(failures[:20])
