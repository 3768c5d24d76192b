"""Ollama's API on the real server, driven by the official `ollama` Python client (and raw httpx for the
error shapes): chat and generate (streaming and not), list, ps, show, pull, version, keep_alive.

One server for the module (the embedded SmolLM2, llama.cpp), started with a local Hugging Face Hub
(tests/hubserver.py) and a user catalog, so /api/pull really downloads a model with progress, and the
pulled model is then loaded on demand, unloaded with keep_alive 0 and loaded again. A 135M model: the
tests assert structure, determinism and lengths, never facts.
"""
from __future__ import annotations

import json
import textwrap
from datetime import datetime, timedelta, timezone

import httpx
import ollama
import pytest

from serve.models.catalog import embedded_model_path
from serve.models.cache import file_digest
from tests.hubserver import HubFile, HubRepo, HubServer
from tests.integration.conftest import start_llamacpp_server

CONTEXT = 2048
MODEL = "smollm2-135m"
PULLED = "test-smol"
REPO = "test-org/SmolLM2-135M-Instruct-GGUF"
Q4_NAME = "SmolLM2-135M-Instruct-Q4_1.gguf"
GREEDY = {"temperature": 0, "num_predict": 12}
QUESTION = [{"role": "user", "content": "Name three colors."}]
CHATML_TEMPLATE = ("{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}<|im_start|>user\n"
                   "{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n{{ .Response }}<|im_end|>\n")
MB = 1_000_000


@pytest.fixture(scope="module")
def hub():
    with HubServer([HubRepo(REPO, {Q4_NAME: HubFile(Q4_NAME, embedded_model_path())})]) as server:
        yield server


@pytest.fixture(scope="module")
def server(tmp_path_factory, hub):
    home = tmp_path_factory.mktemp("ollama-home")
    catalog = home / "models.toml"
    catalog.write_text(textwrap.dedent(f"""
        [models.{PULLED}]
        gguf = {{ repo = "{REPO}", file = "{Q4_NAME}" }}
        context_length = 8192
        num_params = 134_515_008
        license = "apache-2.0"
        download_bytes = {embedded_model_path().stat().st_size}
    """))
    env = {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(home / "hf"), "HF_HUB_OFFLINE": "0"}
    # --allow-pull: /api/pull and Hub specs in requests download (tests/integration/test_model_access.py
    # tests the server without it)
    args = ["--ctx", str(CONTEXT), "--parallel", "2", "--catalog", str(catalog), "--allow-pull"]
    with start_llamacpp_server(tmp_path_factory, "ollama", args, env=env) as running:
        yield running


@pytest.fixture(scope="module")
def client(server) -> ollama.Client:
    return ollama.Client(host=server.base_url, timeout=120)


@pytest.fixture
def http(server):
    with server.http() as client:
        yield client


def assert_final_metrics(final, max_tokens: int) -> None:
    assert final.done is True and final.done_reason in ("stop", "length")
    assert 0 < final.eval_count <= max_tokens and final.prompt_eval_count > 0
    assert final.total_duration >= final.eval_duration >= 0 and final.prompt_eval_duration > 0
    assert 0 <= final.load_duration < final.total_duration


# --- the basics -----------------------------------------------------------------------------------------

def test_root_head_and_version(http):
    root = http.get("/")
    assert root.status_code == 200 and root.text == "Ollama is running"
    assert http.head("/").status_code == 200
    assert http.get("/api/version").json()["version"].count(".") == 2


def test_chat_answers_in_one_object(client):
    response = client.chat(model=MODEL, messages=QUESTION, options=GREEDY)
    assert response.model == MODEL and response.message.role == "assistant"
    assert response.message.content.strip()
    assert_final_metrics(response, GREEDY["num_predict"])
    again = client.chat(model=f"{MODEL}:latest", messages=QUESTION, options=GREEDY)
    assert again.message.content == response.message.content and again.model == f"{MODEL}:latest"


def test_chat_streams_the_same_answer(client):
    whole = client.chat(model=MODEL, messages=QUESTION, options=GREEDY).message.content
    parts = list(client.chat(model=MODEL, messages=QUESTION, options=GREEDY, stream=True))
    assert len(parts) >= 3 and all(not p.done for p in parts[:-1]) and parts[-1].done
    assert all(p.message.role == "assistant" and p.message.content for p in parts[:-1])
    assert parts[-1].message.content == ""
    assert "".join(p.message.content for p in parts) == whole
    assert_final_metrics(parts[-1], GREEDY["num_predict"])
    assert parts[-1].eval_count >= len(parts) - 1  # a token can end inside a multi-byte character


def test_generate_stream_and_not(client):
    whole = client.generate(model=MODEL, prompt="Write one sentence about the sea.", options=GREEDY)
    assert whole.response.strip() and whole.model == MODEL
    assert_final_metrics(whole, GREEDY["num_predict"])
    parts = list(client.generate(model=MODEL, prompt="Write one sentence about the sea.", options=GREEDY,
                                 stream=True))
    assert parts[-1].done and parts[-1].response == "" and all(not p.done for p in parts[:-1])
    assert "".join(p.response for p in parts) == whole.response
    assert parts[-1].eval_count == whole.eval_count and parts[-1].prompt_eval_count == whole.prompt_eval_count


def test_generate_raw_system_and_template(client):
    prompt = "Say hello."
    templated = client.generate(model=MODEL, prompt=prompt, options=GREEDY)
    chatml = f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    raw = client.generate(model=MODEL, prompt=chatml, raw=True, options=GREEDY)
    # the model's own template adds its default system prompt; raw sends exactly what we wrote
    assert raw.prompt_eval_count < templated.prompt_eval_count
    own = client.generate(model=MODEL, prompt=prompt, template=CHATML_TEMPLATE, options=GREEDY)
    assert (own.prompt_eval_count, own.response) == (raw.prompt_eval_count, raw.response)
    system = "You are terse."
    with_system = client.generate(model=MODEL, prompt=prompt, system=system, options=GREEDY)
    raw_system = client.generate(model=MODEL, raw=True, options=GREEDY,
                                 prompt=f"<|im_start|>system\n{system}<|im_end|>\n{chatml}")
    assert (with_system.prompt_eval_count, with_system.response) == (raw_system.prompt_eval_count,
                                                                    raw_system.response)


def test_options_reach_the_sampler(client):
    story = "Tell me a long story about a dragon."
    short = client.generate(model=MODEL, prompt=story, options={"temperature": 0, "num_predict": 3})
    assert (short.eval_count, short.done_reason) == (3, "length")
    sampled = {"temperature": 1.0, "top_k": 50, "top_p": 0.95, "min_p": 0.02, "seed": 1234, "num_predict": 16,
               "repeat_penalty": 1.2, "presence_penalty": 0.3, "frequency_penalty": 0.3}
    first = client.generate(model=MODEL, prompt=story, options=sampled)
    assert client.generate(model=MODEL, prompt=story, options=sampled).response == first.response
    stopped = client.generate(model=MODEL, prompt="Count from 1 to 20, one number per line.",
                              options={"temperature": 0, "num_predict": 60, "stop": ["\n"]})
    assert "\n" not in stopped.response and stopped.done_reason == "stop"


# --- models ---------------------------------------------------------------------------------------------

def test_list_ps_show(client, server):
    listed = {m.model: m for m in client.list().models}
    model = listed[f"{MODEL}:latest"]
    assert model.size == embedded_model_path().stat().st_size and len(model.digest) == 64
    assert (model.details.format, model.details.family, model.details.quantization_level) == ("gguf", "llama", "Q4_1")
    assert model.details.parameter_size == "134.52M" and model.modified_at is not None
    running = {m.model: m for m in client.ps().models}[f"{MODEL}:latest"]
    assert running.size > 0 and running.context_length == CONTEXT and running.details.format == "gguf"
    assert running.expires_at > datetime.now(timezone.utc) + timedelta(days=365)  # preloaded: kept
    shown = client.show(MODEL)
    assert shown.details.quantization_level == "Q4_1" and shown.license == "apache-2.0"
    assert "<|im_start|>" in shown.template and f"num_ctx {CONTEXT}" in " ".join(shown.parameters.split())
    assert shown.modelinfo["llama.context_length"] == 8192
    assert shown.modelinfo["general.parameter_count"] == 134_515_008


def test_pull_of_the_embedded_model_succeeds_at_once(client):
    statuses = [p.status for p in client.pull(MODEL, stream=True)]
    assert statuses == ["pulling manifest", "success"]
    assert client.pull(f"{MODEL}:latest").status == "success"


def test_pull_from_the_hub_then_load_unload_and_reload(client, server, hub):
    sha = file_digest(embedded_model_path(), "sha256")
    size = embedded_model_path().stat().st_size
    hub.faults.stall_after[sha] = 30 * MB  # hold the download mid-way until a partial progress is seen
    parts = []
    for part in client.pull(PULLED, stream=True):
        parts.append(part)
        if part.completed and part.completed < size:
            hub.faults.stall_after.clear()  # the held connection drops; the pull resumes where it was
            hub.faults.release.set()
    partial = [p for p in parts if p.digest == f"sha256:{sha}" and 0 < p.completed < size]
    assert partial and all(p.total == size for p in partial)
    assert any(p.digest == f"sha256:{sha}" and p.completed == p.total == size for p in parts)
    assert parts[0].status == "pulling manifest" and parts[-1].status == "success"
    assert f"{PULLED}:latest" in {m.model for m in client.list().models}

    answer = client.chat(model=PULLED, messages=QUESTION, options=GREEDY)  # loaded on demand
    assert answer.message.content.strip() and answer.load_duration > 0
    assert {f"{MODEL}:latest", f"{PULLED}:latest"} <= {m.model for m in client.ps().models}

    unloaded = client.generate(model=PULLED, prompt="", keep_alive=0)
    assert (unloaded.done, unloaded.done_reason, unloaded.response) == (True, "unload", "")
    assert {m.model for m in client.ps().models} == {f"{MODEL}:latest"}

    loaded = client.generate(model=f"{PULLED}:latest", prompt="", keep_alive="5m")
    assert loaded.done_reason == "load"
    expires = {m.model: m.expires_at for m in client.ps().models}[f"{PULLED}:latest"]
    assert timedelta(minutes=4) < expires - datetime.now(timezone.utc) <= timedelta(minutes=5)
    client.chat(model=PULLED, messages=[], keep_alive=-1)
    expires = {m.model: m.expires_at for m in client.ps().models}[f"{PULLED}:latest"]
    assert expires > datetime.now(timezone.utc) + timedelta(days=365)


def test_show_details_of_a_model_loaded_by_hub_spec(client, hub):
    """A model named by its Hub spec (no catalog entry) is described from the GGUF it was loaded from."""
    name = f"hf.co/{REPO}:Q4_1"
    client.generate(model=name, prompt="", keep_alive="1m")  # loads it (downloading when not cached)
    details = client.show(name).details
    assert (details.format, details.family, details.quantization_level) == ("gguf", "llama", "Q4_1")
    assert details.parameter_size == "134.52M"
    client.generate(model=name, prompt="", keep_alive=0)


# --- errors ---------------------------------------------------------------------------------------------

def ollama_error(response: httpx.Response, status: int, fragment: str = "") -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str)
    assert fragment.lower() in body["error"].lower(), body["error"]
    return body["error"]


def test_errors_have_ollamas_shape_and_the_server_keeps_serving(http, client):
    chat = {"model": MODEL, "messages": QUESTION, "stream": False}
    assert MODEL in ollama_error(http.post("/api/chat", json={**chat, "model": "llama9:70b"}), 404, "llama9")
    ollama_error(http.post("/api/chat", json={**chat, "format": "xml"}), 400, "must be \"json\" or a JSON schema")
    ollama_error(http.post("/api/generate", json={"model": MODEL, "prompt": "hi", "suffixes": ["x"]}),
                 400, "unrecognized request field(s): suffixes")
    ollama_error(http.post("/api/chat", json={**chat, "options": {"temperature": "warm"}}), 400, "options.temperature")
    ollama_error(http.post("/api/chat", json={**chat, "options": {"num_predict": [1]}}), 400, "options.num_predict")
    ollama_error(http.post("/api/chat", json={**chat, "options": {"num_ctx": 100_000}}), 400, f"({CONTEXT} tokens)")
    ollama_error(http.post("/api/generate", json={"model": MODEL, "prompt": "word " * (CONTEXT + 100)}), 400,
                 f"context is {CONTEXT} tokens")
    ollama_error(http.post("/api/generate", json={"model": MODEL, "prompt": "x", "stream": True,
                                                  "options": {"mirostat": 2}}), 400, "mirostat")
    ollama_error(http.post("/api/chat", content=b"{not json"), 400, "malformed JSON")
    with pytest.raises(ollama.ResponseError) as caught:
        client.chat(model="llama9:70b", messages=QUESTION)
    assert caught.value.status_code == 404 and "llama9" in caught.value.error
    openai_shape = http.post("/v1/chat/completions", json={"model": "llama9", "messages": QUESTION})
    assert openai_shape.status_code == 404 and set(openai_shape.json()["error"]) >= {"message", "type", "code"}
    assert client.chat(model=MODEL, messages=QUESTION, options=GREEDY).message.content.strip()


def test_streamed_lines_are_ndjson(http):
    with http.stream("POST", "/api/generate", json={"model": MODEL, "prompt": "Hi", "options": GREEDY}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert lines[-1]["done"] is True and all(line["done"] is False for line in lines[:-1])
    assert set(lines[-1]) >= {"model", "created_at", "response", "done", "done_reason", "total_duration",
                              "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
                              "eval_duration"}
