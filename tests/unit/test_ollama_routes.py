"""Ollama's routes without a loaded model: the app runs over a real, empty ModelPool (no memory budget to
load anything), so everything here is answered before an engine is needed: listings from the catalog and
the embedded model's file, errors in Ollama's shape, and the OpenAI routes keeping theirs."""
from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from serve.api.app import create_app
from serve.models.catalog import embedded_model_path, load_catalog
from serve.config import ServerConfig
from serve.placement.hardware import probe
from serve.runtime.loader import ModelLoader
from serve.runtime.pool import ModelPool, PoolLimits

EMBEDDED = "smollm2-135m:latest"
HELLO = [{"role": "user", "content": "hello"}]


def app_client(config: ServerConfig):
    catalog = load_catalog()
    pool = ModelPool(ModelLoader(config, catalog, probe()), PoolLimits(max_memory_bytes=0))
    return TestClient(create_app(pool, config, catalog), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client():
    with app_client(ServerConfig()) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def pulling_client():
    """A server started with --allow-pull."""
    with app_client(ServerConfig(allow_pull=True)) as test_client:
        yield test_client


def assert_ollama_error(response, status: int, fragment: str = "") -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in body["error"]
    assert fragment.lower() in body["error"].lower(), body["error"]
    return body["error"]


def test_root_answers_like_ollama(client):
    response = client.get("/")
    assert response.status_code == 200 and response.text == "Ollama is running"
    assert response.headers["content-type"].startswith("text/plain")
    assert client.head("/").status_code == 200
    version = client.get("/api/version").json()
    assert set(version) == {"version"} and version["version"].count(".") == 2


def test_tags_lists_the_embedded_model_without_loading_it(client):
    models = {m["name"]: m for m in client.get("/api/tags").json()["models"]}
    model = models[EMBEDDED]
    assert model["model"] == EMBEDDED and model["size"] == embedded_model_path().stat().st_size
    assert len(model["digest"]) == 64 and int(model["digest"], 16) >= 0
    assert model["details"] == {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"],
                                "parameter_size": "134.52M", "quantization_level": "Q4_1"}
    assert model["modified_at"].endswith("Z")
    assert client.get("/api/ps").json() == {"models": []}


def test_show_describes_a_model_on_disk(client):
    for name in (EMBEDDED, "smollm2-135m"):
        shown = client.post("/api/show", json={"model": name}).json()
        assert shown["details"]["quantization_level"] == "Q4_1" and shown["license"] == "apache-2.0"
        assert "<|im_start|>" in shown["template"] and "num_ctx" in shown["parameters"]
        assert shown["model_info"]["llama.context_length"] == 8192
        assert shown["model_info"]["general.parameter_count"] == 134_515_008
        assert "tokenizer.chat_template" not in shown["model_info"]
        assert shown["capabilities"] == ["completion"]
    assert client.post("/api/show", json={"name": EMBEDDED}).status_code == 200  # the deprecated field


def test_show_of_an_unknown_model_is_a_404_naming_the_local_ones(client):
    assert_ollama_error(client.post("/api/show", json={"model": "llama9:70b"}), 404, EMBEDDED)
    assert_ollama_error(client.post("/api/show", json={}), 400, "model is required")


def test_pull_is_refused_without_allow_pull_saying_how_to_get_the_model(client):
    for name, spec in ((EMBEDDED, "smollm2-135m"), ("hf.co/some/repo", "hf://some/repo"), ("/x", "/x")):
        error = assert_ollama_error(client.post("/api/pull", json={"model": name}), 403, "--allow-pull")
        assert f"`serve pull {spec}` on the server machine" in error


def test_pull_of_the_embedded_model_succeeds_at_once(pulling_client):
    response = pulling_client.post("/api/pull", json={"model": EMBEDDED})
    assert response.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert lines == [{"status": "pulling manifest"}, {"status": "success"}]
    answer = pulling_client.post("/api/pull", json={"model": "smollm2-135m", "stream": False})
    assert answer.json() == {"status": "success"}


def test_pull_of_an_unknown_model_or_a_path_is_a_404(pulling_client):
    for name in ("no-such-model", "/etc/passwd"):
        error = assert_ollama_error(pulling_client.post("/api/pull", json={"model": name}), 404)
        assert error.startswith(f"model {name} is not available; available: ") and "smollm2-135m" in error
    assert_ollama_error(pulling_client.post("/api/pull", json={"model": "hf.co/not a repo"}), 400, "invalid Hub spec")


@pytest.mark.parametrize("path, body", [("/api/chat", {"model": "llama9:70b", "messages": HELLO}),
                                        ("/api/generate", {"model": "llama9", "prompt": "hi"}),
                                        ("/api/generate", {"model": "llama9", "prompt": "", "keep_alive": 0})])
def test_unknown_models_are_404_in_ollamas_shape(client, path, body):
    assert_ollama_error(client.post(path, json=body), 404, "llama9")


@pytest.mark.parametrize("path, body, fragment", [
    ("/api/chat", {"model": EMBEDDED, "messages": HELLO, "format": "yaml"}, "format must be"),
    ("/api/generate", {"model": EMBEDDED, "prompt": "hi", "format": ["json"]}, "format must be"),
    ("/api/generate", {"model": EMBEDDED, "prompt": "hi", "options": {"temperature": "hot"}}, "options.temperature"),
    ("/api/chat", {"model": EMBEDDED, "messages": HELLO, "options": {"num_predict": "many"}}, "options.num_predict"),
    ("/api/chat", {"model": EMBEDDED, "messages": HELLO, "keep_alive": "a while"}, "keep_alive"),
    ("/api/generate", {"model": EMBEDDED, "prompt": "hi", "images": ["aGk="]}, "images are not supported"),
    ("/api/chat", {"messages": HELLO}, "model: Field required"),
    ("/api/chat", [1, 2], "must be a JSON object")])
def test_bad_input_is_a_400_in_ollamas_shape(client, path, body, fragment):
    assert_ollama_error(client.post(path, json=body), 400, fragment)


def test_malformed_json_is_a_400_in_ollamas_shape(client):
    response = client.post("/api/generate", content=b'{"model": "x", "prompt": ',
                           headers={"content-type": "application/json"})
    assert_ollama_error(response, 400, "malformed JSON")


def test_a_model_that_cannot_fit_is_refused_with_the_numbers(client):
    # the pool has no memory budget here: loading is refused (507) before any weights are read
    error = assert_ollama_error(client.post("/api/chat", json={"model": EMBEDDED, "messages": HELLO}), 507)
    assert "GiB" in error


def test_other_ollama_endpoints_say_so_and_unknown_ones_are_404(client):
    assert_ollama_error(client.post("/api/create", json={"model": EMBEDDED}), 501, "not supported")
    assert_ollama_error(client.delete("/api/delete"), 501, "not supported")
    assert_ollama_error(client.get("/api/nothing-here"), 404, "no route GET /api/nothing-here")


def test_the_openai_routes_keep_openais_error_shape(client):
    response = client.post("/v1/chat/completions", json={"model": "llama9", "messages": HELLO})
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert set(client.get("/v1/nothing").json()["error"]) == {"message", "type", "param", "code"}
