"""Many models in one server: per-request switching, eviction under a memory budget, drain, keep-alive.

The second and third models are real GGUFs made from the embedded SmolLM2: its Q8_0 requantization and a
byte copy, served under their file stems. Sizes for the budget come from the same plan the server uses.
"""
from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import httpx
import pytest

from serve.config import PlanChoices
from serve.models.catalog import embedded_model_path, load_catalog, resolve_model
from serve.placement.hardware import probe
from serve.placement.plan import make_plan
from tests.integration.conftest import start_llamacpp_server

SMALL = ["--ctx", "512", "--parallel", "2"]
NO_EOS = {"2": -100, "0": -100}


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, Path]:
    from serve.models.quantize import quantize_file

    folder = tmp_path_factory.mktemp("models")
    q8 = quantize_file(embedded_model_path(), "q8_0", folder / "smol-q8.gguf", allow_requantize=True,
                       progress=False)
    copy = folder / "smol-copy.gguf"
    shutil.copyfile(embedded_model_path(), copy)
    return {"smol-q8": q8, "smol-copy": copy}


def small(model_files: dict[str, Path]) -> list[str]:
    """SMALL, and requests may load the test's model files by their paths."""
    return SMALL + ["--models-dir", str(model_files["smol-q8"].parent)]


def planned_bytes(path: Path) -> int:
    """What the server's pool will count for this model with SMALL settings."""
    chosen = make_plan(probe(), resolve_model(str(path), load_catalog()),
                       PlanChoices(context_length=512, num_parallel=2))
    return chosen.weights_bytes + chosen.kv_cache_bytes


def chat(server, http: httpx.Client, model: str, max_tokens: int = 6) -> dict:
    response = http.post("/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": max_tokens,
        "temperature": 0})
    assert response.status_code == 200, response.text
    return response.json()


def loaded(http: httpx.Client) -> set[str]:
    return set(http.get("/health").json()["models"])


def wait_until(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def open_stream(http: httpx.Client, model: str, max_tokens: int):
    request = http.build_request("POST", "/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": max_tokens,
        "stream": True, "logit_bias": NO_EOS, "stream_options": {"include_usage": True}})
    response = http.send(request, stream=True)
    lines = response.iter_lines()
    next(lines)
    return response, lines


def finish_stream(response, lines) -> dict:
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    response.close()
    return events[-1]["usage"]


def test_alternating_requests_are_served_by_the_model_they_name(tmp_path_factory, model_files):
    with start_llamacpp_server(tmp_path_factory, "two-models", small(model_files)) as server, server.http() as http:
        q8 = str(model_files["smol-q8"])
        first = chat(server, http, q8)  # a path loads on first use; its file stem is the served name
        assert first["model"] == "smol-q8"
        for model in ["smollm2-135m", "smol-q8", "smollm2-135m", "smol-q8"]:
            assert chat(server, http, model)["model"] == model
        assert loaded(http) == {"smollm2-135m", "smol-q8"}
        assert server.log_path.read_text().count("loaded smol-q8") == 1


def test_busy_model_is_not_evicted_when_a_third_needs_room(tmp_path_factory, model_files):
    """Budget for two: the least recently used model is streaming, so the idle one goes instead."""
    budget = int(planned_bytes(model_files["smol-copy"]) * 2.5)
    args = small(model_files) + ["--max-memory", str(budget), "--model", str(model_files["smol-copy"])]
    with start_llamacpp_server(tmp_path_factory, "tight", args) as server, server.http() as http:
        response, lines = open_stream(http, "smol-copy", 120)  # smol-copy: busy and least recently used
        chat(server, http, str(model_files["smol-q8"]))  # loaded beside it, now the most recent
        assert chat(server, http, "smollm2-135m")["model"] == "smollm2-135m"  # needs room
        assert loaded(http) == {"smol-copy", "smollm2-135m"}  # the idle smol-q8 went, not the busy one
        assert finish_stream(response, lines)["completion_tokens"] == 120


def test_a_busy_model_drains_before_it_is_swapped_out(tmp_path_factory, model_files):
    """Budget for one: the new model's request waits until the running stream has finished."""
    budget = int(planned_bytes(model_files["smol-copy"]) * 1.5)
    args = small(model_files) + ["--max-memory", str(budget), "--model", str(model_files["smol-copy"]),
                                 "--switch-window", "0"]
    with start_llamacpp_server(tmp_path_factory, "drain", args) as server, server.http() as http:
        response, lines = open_stream(http, "smol-copy", 60)
        assert chat(server, http, "smollm2-135m")["model"] == "smollm2-135m"
        assert finish_stream(response, lines)["completion_tokens"] == 60  # never cut short
        assert loaded(http) == {"smollm2-135m"}
        # A model loaded from a path comes back by its served name once evicted.
        assert chat(server, http, "smol-copy")["model"] == "smol-copy"


def test_keep_alive_zero_unloads_after_the_request(tmp_path_factory, model_files):
    args = small(model_files) + ["--keep-alive", "0"]
    with start_llamacpp_server(tmp_path_factory, "keepalive", args) as server, server.http() as http:
        chat(server, http, str(model_files["smol-q8"]))
        wait_until(lambda: loaded(http) == {"smollm2-135m"})  # the preloaded model stays


def test_concurrent_first_requests_trigger_one_load(tmp_path_factory, model_files):
    with start_llamacpp_server(tmp_path_factory, "one-load", small(model_files)) as server:
        path = str(model_files["smol-q8"])

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=120) as client:
                return await asyncio.gather(*(client.post("/v1/chat/completions", json={
                    "model": path, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
                    for _ in range(4)))

        responses = asyncio.run(burst())
        assert [r.status_code for r in responses] == [200] * 4
        assert server.log_path.read_text().count("loaded smol-q8") == 1


def test_a_model_larger_than_the_budget_gets_a_clear_error(tmp_path_factory, model_files):
    """The Q8_0 file is bigger than the Q4_1 one; the budget fits only the latter."""
    assert planned_bytes(model_files["smol-q8"]) > planned_bytes(embedded_model_path()) + 1
    args = small(model_files) + ["--max-memory", str(planned_bytes(embedded_model_path()) + 1)]
    with start_llamacpp_server(tmp_path_factory, "too-big", args) as server, server.http() as http:
        response = http.post("/v1/chat/completions", json={
            "model": str(model_files["smol-q8"]), "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
        assert response.status_code == 507
        message = response.json()["error"]["message"]
        assert "GiB" in message and "--max-memory" in message
        assert chat(server, http, "smollm2-135m")["model"] == "smollm2-135m"
