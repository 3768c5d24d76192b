"""GET /metrics without a model: what an engine records per request (a real Engine over a FakeBackend),
errors counted once where they are mapped, 503 with Retry-After while draining, the metrics key, and the
README naming every metric."""
from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from serve.api.app import create_app
from serve.api.metrics import build_router
from serve.config import ServerConfig
from serve.errors import OverloadedError, ServerStoppingError
from serve.models.catalog import load_catalog
from serve.runtime.engine import Engine
from serve.runtime.metrics import REGISTRY, PoolGauges
from serve.sequence import FinishReason
from tests.unit.fake_backend import FakeBackend, collect, make_request
from tests.unit.test_generation import MODEL, FakeEngine, FakePool

README = Path(__file__).resolve().parents[2] / "README.md"
HELLO = {"model": "fake-model", "messages": [{"role": "user", "content": "hello"}]}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def scrape(client: TestClient, **headers: str) -> dict[str, dict]:
    """{sample name: {labels as a sorted tuple: value}} of one GET /metrics."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, dict] = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return samples


def app_client(engine: FakeEngine, config: ServerConfig | None = None) -> TestClient:
    return TestClient(create_app(FakePool(engine), config or ServerConfig(), load_catalog()),
                      raise_server_exceptions=False)


def test_an_engine_records_each_request_once_it_ends():
    model = "metrics-engine"
    before = {name: sample(name, model=model) for name in (
        "quantserve_prompt_tokens_total", "quantserve_generation_tokens_total",
        "quantserve_time_to_first_token_seconds_count", "quantserve_request_queue_time_seconds_count",
        "quantserve_e2e_request_latency_seconds_count")}
    backend = FakeBackend()
    engine = Engine(model, backend, max_queue=4)

    async def scenario():
        stream = engine.submit(make_request("r1", model))  # a 3-token prompt
        backend.finish("r1")
        outputs = await collect(stream)
        assert outputs[-1].finish_reason is FinishReason.STOP

    try:
        asyncio.run(scenario())
    finally:
        engine.shutdown()
    delta = {name: sample(name, model=model) - value for name, value in before.items()}
    assert delta == {"quantserve_prompt_tokens_total": 3, "quantserve_generation_tokens_total": 1,
                     "quantserve_time_to_first_token_seconds_count": 1,
                     "quantserve_request_queue_time_seconds_count": 1,
                     "quantserve_e2e_request_latency_seconds_count": 1}
    assert sample("quantserve_request_success_total", model=model, finished_reason="stop") >= 1


def test_metrics_are_served_with_the_pool_gauges():
    client = app_client(FakeEngine())
    assert client.post("/v1/chat/completions", json=HELLO).status_code == 200
    scrape(client)
    text = client.get("/metrics").text
    assert "# TYPE quantserve_time_to_first_token_seconds histogram" in text
    gauges = PoolGauges(lambda: {"m": {"running": 2, "waiting": 1, "kv_cache_usage": 0.25}})
    values = {(m.name, s.labels["model"]): s.value for m in gauges.collect() for s in m.samples}
    assert values == {("quantserve_num_requests_running", "m"): 2, ("quantserve_num_requests_waiting", "m"): 1,
                      ("quantserve_kv_cache_usage_perc", "m"): 0.25}


@pytest.mark.parametrize("path, body", [("/v1/chat/completions", HELLO),
                                        ("/api/chat", {**HELLO, "stream": False})])
def test_a_full_queue_is_a_counted_429_with_retry_after(path, body):
    labels = {"model": MODEL, "status": "429", "type": "rate_limit_error", "code": "queue_full"}
    before = sample("quantserve_errors_total", **labels)
    client = app_client(FakeEngine(refuse=OverloadedError("server busy", retry_after=3)))
    response = client.post(path, json=body)
    assert response.status_code == 429 and response.headers["retry-after"] == "3"
    assert sample("quantserve_errors_total", **labels) == before + 1


@pytest.mark.parametrize("path, body, error_of", [
    ("/v1/chat/completions", HELLO, lambda body: body["error"]["message"]),
    ("/api/chat", {**HELLO, "stream": False}, lambda body: body["error"]),
])
def test_a_draining_server_answers_503_with_retry_after_in_the_dialects_shape(path, body, error_of):
    client = app_client(FakeEngine(refuse=ServerStoppingError("the server is shutting down")))
    response = client.post(path, json=body)
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert "shutting down" in error_of(response.json())


def test_health_is_503_while_draining():
    pool = FakePool(FakeEngine())
    pool.is_stopping = True
    client = TestClient(create_app(pool, ServerConfig(), load_catalog()))
    response = client.get("/health")
    assert response.status_code == 503 and response.json()["status"] == "stopping"


def test_an_unknown_route_is_counted_once():
    labels = {"model": "none", "status": "404", "type": "invalid_request_error", "code": ""}
    before = sample("quantserve_errors_total", **labels)
    assert app_client(FakeEngine()).get("/no/such/route").status_code == 404
    assert sample("quantserve_errors_total", **labels) == before + 1


def test_errors_before_a_model_is_resolved_are_counted_under_none_and_after_under_the_model():
    """A bad body never names a label (a client could grow the label set without bound); an error of the
    generation is the resolved model's, also when it arrives as a stream's error event."""
    client = app_client(FakeEngine([], fail=RuntimeError("the device fell over")))
    bad = {"model": "none", "status": "400", "type": "invalid_request_error", "code": ""}
    before = sample("quantserve_errors_total", **bad)
    assert client.post("/v1/chat/completions", json={**HELLO, "temperature": "hot"}).status_code == 400
    assert sample("quantserve_errors_total", **bad) == before + 1
    failed = {"model": MODEL, "status": "500", "type": "server_error", "code": "internal_error"}
    before = sample("quantserve_errors_total", **failed)
    assert client.post("/v1/chat/completions", json=HELLO).status_code == 500
    streamed = client.post("/v1/chat/completions", json={**HELLO, "stream": True})
    assert "internal server error" in streamed.text
    assert sample("quantserve_errors_total", **failed) == before + 2


def test_the_metrics_key_opens_metrics_only_and_the_api_key_does_not_open_it():
    client = app_client(FakeEngine(), ServerConfig(api_key="api", metrics_key="scrape"))
    assert client.get("/metrics", headers={"Authorization": "Bearer scrape"}).status_code == 200
    assert client.get("/metrics", headers={"Authorization": "Bearer api"}).status_code == 401
    assert client.get("/metrics").status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer scrape"}).status_code == 401
    assert client.get("/v1/models", headers={"Authorization": "Bearer api"}).status_code == 200


def test_without_a_metrics_key_the_api_key_opens_metrics():
    client = app_client(FakeEngine(), ServerConfig(api_key="api"))
    assert client.get("/metrics").status_code == 401
    scrape(client, Authorization="Bearer api")
    open_client = app_client(FakeEngine(), ServerConfig(metrics_key="scrape"))
    assert open_client.get("/metrics").status_code == 401
    assert open_client.get("/v1/models").status_code == 200  # the API itself stays open


def test_the_readme_names_every_metric():
    build_router(FakePool(FakeEngine()))  # the API's own collectors are registered
    names = {family.name for family in REGISTRY.collect()}
    names |= {family.name for family in PoolGauges(lambda: {}).collect()}
    readme = README.read_text()
    section = readme[readme.index("## Metrics"):]
    section = section[:section.index("\n## ", 1)]
    documented = set(re.findall(r"`(quantserve_[a-z0-9_]+)`", section))
    suffixed = {name + "_total" if f"`{name}_total`" in section else name for name in names}
    assert suffixed == documented, f"undocumented: {suffixed - documented}; gone: {documented - suffixed}"
