"""Embeddings through the real server and the official clients: OpenAI's `client.embeddings.create`, Ollama's
`Client.embed` and `.embeddings`, raw httpx for the error shapes.

One llama.cpp server for the module: the embedded SmolLM2 GGUF started with `--pooling mean` (a chat model that
then embeds too, as llama-server's `--pooling`). A 135M chat model's mean-pooled vectors are no good for search:
the tests assert the mechanics (determinism, a batch equal to its inputs one by one, unit norm, sizes, base64,
usage, truncation, every 400), never similarity facts.
"""
from __future__ import annotations

import base64

import httpx
import numpy as np
import ollama
import openai
import pytest

from serve.models.catalog import embedded_model_path
from tests.integration.conftest import start_llamacpp_server

CONTEXT = 512
MODEL = "SmolLM2-135M-Instruct.Q4_1"  # a model given by path is served under its file's stem
NUM_DIMENSIONS = 576  # SmolLM2-135M's hidden size
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Embeddings map text to vectors.", "hello",
         "Paris is the capital of France, and Berlin is the capital of Germany."]
TOLERANCE = 1e-4  # a batch runs in other positions of one llama_batch: float sums in another order


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    args = ["--model", str(embedded_model_path()), "--pooling", "mean", "--ctx", str(CONTEXT), "--parallel", "2"]
    with start_llamacpp_server(tmp_path_factory, "embeddings", args) as running:
        yield running


@pytest.fixture
def client(server):
    with server.openai() as openai_client:
        yield openai_client


def _vectors(response) -> np.ndarray:
    assert [item.index for item in response.data] == list(range(len(response.data)))
    return np.array([item.embedding for item in response.data], dtype=np.float64)


def test_embeddings_are_unit_vectors_of_the_models_size_and_deterministic(client):
    first = client.embeddings.create(model=MODEL, input=TEXTS[0], encoding_format="float")
    again = client.embeddings.create(model=MODEL, input=TEXTS[0], encoding_format="float")
    vector = _vectors(first)[0]
    assert first.model == MODEL and first.object == "list" and first.data[0].object == "embedding"
    assert vector.shape == (NUM_DIMENSIONS,)
    assert abs(np.linalg.norm(vector) - 1.0) < 1e-5
    assert np.array_equal(vector, _vectors(again)[0])


def test_a_batch_equals_its_inputs_one_by_one(client):
    batch = _vectors(client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float"))
    singles = np.array([_vectors(client.embeddings.create(model=MODEL, input=text, encoding_format="float"))[0]
                        for text in TEXTS])
    assert batch.shape == (len(TEXTS), NUM_DIMENSIONS)
    assert np.abs(batch - singles).max() < TOLERANCE
    assert len({tuple(np.round(row, 4)) for row in batch}) == len(TEXTS)  # different texts, different vectors


def test_base64_round_trips_to_the_float_vectors(server, client):
    floats = _vectors(client.embeddings.create(model=MODEL, input=TEXTS[:2], encoding_format="float"))
    # The client asks for base64 by default and decodes it itself.
    decoded = _vectors(client.embeddings.create(model=MODEL, input=TEXTS[:2]))
    assert np.abs(decoded - floats).max() < 1e-6
    with server.http() as http:
        body = http.post("/v1/embeddings", json={"model": MODEL, "input": TEXTS[0],
                                                 "encoding_format": "base64"}).raise_for_status().json()
    raw = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    assert np.abs(raw - floats[0]).max() < 1e-6


def test_usage_counts_the_tokens_of_every_input(client):
    response = client.embeddings.create(model=MODEL, input=[[1, 2, 3], [4, 5]], encoding_format="float")
    assert response.usage.prompt_tokens == 5 and response.usage.total_tokens == 5
    texts = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    one_by_one = sum(client.embeddings.create(model=MODEL, input=text).usage.prompt_tokens for text in TEXTS)
    assert texts.usage.prompt_tokens == texts.usage.total_tokens == one_by_one > len(TEXTS)


def test_token_arrays_embed_like_their_text(server, client):
    text = _vectors(client.embeddings.create(model=MODEL, input="hello world", encoding_format="float"))[0]
    with server.http() as http:  # the tokens the server gives this text: BOS handling is the model's
        tokens = http.post("/v1/embeddings", json={"model": MODEL, "input": "hello world"}).json()["usage"]
    assert tokens["prompt_tokens"] >= 2
    single = _vectors(client.embeddings.create(model=MODEL, input=[28120, 905], encoding_format="float"))
    assert single.shape == (1, NUM_DIMENSIONS)
    if tokens["prompt_tokens"] == 2:  # SmolLM2 adds no BOS: "hello world" is these two tokens
        assert np.abs(single[0] - text).max() < TOLERANCE


def test_dimensions_equal_to_the_models_size_is_accepted_and_smaller_is_a_400_naming_it(client):
    full = client.embeddings.create(model=MODEL, input="hello", dimensions=NUM_DIMENSIONS, encoding_format="float")
    assert len(full.data[0].embedding) == NUM_DIMENSIONS
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model=MODEL, input="hello", dimensions=64)
    error = refused.value.body
    assert error["param"] == "dimensions" and "Matryoshka" in error["message"] and "576" in error["message"]
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model=MODEL, input="hello", dimensions=NUM_DIMENSIONS + 1)


@pytest.mark.parametrize("body, param, words", [
    ({"input": []}, "input", "not empty"),
    ({"input": ""}, None, None),  # SmolLM2 adds no BOS: an empty string has no token (a model with BOS embeds it)
    ({"input": ["a", 3]}, "input", "a list of strings"),
    ({"input": [[1, 2], []]}, "input", "no empty arrays"),
    ({"input": [10**9]}, "input", "vocabulary"),
    ({"input": "hi", "encoding_format": "int8"}, "encoding_format", None),
    ({"input": "hi", "truncate": True}, "truncate", "unrecognized request field"),
    ({"input": "word " * 600}, "input", "at most 512 tokens"),
])
def test_bad_embedding_requests_are_400s_in_openais_shape(server, body, param, words):
    with server.http() as http:
        response = http.post("/v1/embeddings", json={"model": MODEL, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param, error
    if words is not None:
        assert words in error["message"], error


def test_the_chat_model_still_chats(client):
    answer = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                            max_tokens=4, temperature=0)
    assert answer.choices[0].message.content is not None and answer.usage.completion_tokens >= 1


def test_rerank_on_an_embedding_model_is_a_400_saying_what_to_use(server):
    with server.http() as http:
        response = http.post("/v1/rerank", json={"model": MODEL, "query": "q", "documents": ["a", "b"]})
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "rank pooling" in message and "reranker" in message and "/v1/embeddings" in message


# --- Ollama ---------------------------------------------------------------------------------------------

@pytest.fixture
def ollama_client(server):
    return ollama.Client(host=server.base_url, timeout=120)


def test_ollama_embed_matches_openais_vectors(client, ollama_client):
    answer = ollama_client.embed(model=MODEL, input=TEXTS[:3])
    openai_vectors = _vectors(client.embeddings.create(model=MODEL, input=TEXTS[:3], encoding_format="float"))
    vectors = np.array(answer.embeddings)
    assert answer.model == MODEL and vectors.shape == (3, NUM_DIMENSIONS)
    assert np.abs(vectors - openai_vectors).max() < 1e-6
    assert answer.prompt_eval_count == client.embeddings.create(model=MODEL, input=TEXTS[:3]).usage.prompt_tokens
    assert answer.total_duration > 0
    single = ollama_client.embed(model=f"{MODEL}:latest", input=TEXTS[0])
    assert np.abs(np.array(single.embeddings[0]) - openai_vectors[0]).max() < TOLERANCE


def test_ollama_embed_truncates_by_default_and_refuses_when_asked_not_to(server, ollama_client):
    long_text = "word " * 600
    truncated = ollama_client.embed(model=MODEL, input=long_text)
    assert len(truncated.embeddings[0]) == NUM_DIMENSIONS and truncated.prompt_eval_count == CONTEXT
    with pytest.raises(ollama.ResponseError) as refused:
        ollama_client.embed(model=MODEL, input=long_text, truncate=False)
    assert refused.value.status_code == 400 and "at most 512 tokens" in refused.value.error
    smaller = ollama_client.embed(model=MODEL, input=long_text, options={"num_ctx": 64})
    assert smaller.prompt_eval_count == 64


def test_ollama_embed_without_input_loads_the_model(server):
    with server.http() as http:
        body = http.post("/api/embed", json={"model": MODEL, "keep_alive": "10m"}).raise_for_status().json()
    assert body == {"model": MODEL, "embeddings": []}


def test_ollama_embeddings_answers_the_models_own_vector(client, ollama_client):
    old = np.array(ollama_client.embeddings(model=MODEL, prompt=TEXTS[1]).embedding)
    unit = _vectors(client.embeddings.create(model=MODEL, input=TEXTS[1], encoding_format="float"))[0]
    assert old.shape == (NUM_DIMENSIONS,) and np.linalg.norm(old) > 1.5  # not normalised, as Ollama's
    assert np.abs(old / np.linalg.norm(old) - unit).max() < 1e-5


@pytest.mark.parametrize("path, body, words", [
    ("/api/embed", {"input": ["a", 1]}, "input"),
    ("/api/embed", {"input": "a", "dimensions": 16}, "Matryoshka"),
    ("/api/embed", {"input": "a", "frobnicate": 1}, "unrecognized request field(s): frobnicate"),
    ("/api/embed", {"input": "a", "options": {"some_future_option": 1}}, "some_future_option"),
    ("/api/embed", {"input": "a", "keep_alive": "soon"}, "keep_alive"),
    ("/api/embeddings", {"prompt": ["a"]}, "prompt"),
    ("/api/embeddings", {"prompt": "word " * 600}, "at most 512 tokens"),
])
def test_bad_ollama_embedding_requests_are_400s_in_ollamas_shape(server, path, body, words):
    with server.http() as http:
        response = http.post(path, json={"model": MODEL, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert isinstance(error, str) and words in error, error


def test_an_unknown_model_is_a_404(server):
    with server.http() as http:
        assert http.post("/v1/embeddings", json={"model": "nope", "input": "a"}).status_code == 404
        response = http.post("/api/embed", json={"model": "nope", "input": "a"})
    assert response.status_code == 404 and isinstance(response.json()["error"], str)


def test_concurrent_requests_each_get_their_own_vectors(server, client):
    import concurrent.futures

    expected = _vectors(client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float"))

    def one(index: int) -> np.ndarray:
        with httpx.Client(base_url=server.base_url, timeout=120) as http:
            body = http.post("/v1/embeddings", json={"model": MODEL, "input": TEXTS[index]}).raise_for_status().json()
        return np.array(body["data"][0]["embedding"])

    with concurrent.futures.ThreadPoolExecutor(len(TEXTS)) as pool:
        results = list(pool.map(one, range(len(TEXTS))))
    assert np.abs(np.array(results) - expected).max() < TOLERANCE


def _metric(server, name: str, labels: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=30).raise_for_status().text
    line = next((line for line in text.splitlines() if line.startswith(f"{name}{{{labels}}}")), None)
    return float(line.split()[-1]) if line else 0.0


def test_metrics_count_embedding_requests_inputs_and_tokens(server, client):
    labels = f'model="{MODEL}",task="embeddings"'
    before = {name: _metric(server, name, labels) for name in
              ("quantserve_pooling_requests_total", "quantserve_pooling_inputs_total", "quantserve_pooling_tokens_total")}
    response = client.embeddings.create(model=MODEL, input=TEXTS[:3], encoding_format="float")
    assert _metric(server, "quantserve_pooling_requests_total", labels) == before["quantserve_pooling_requests_total"] + 1
    assert _metric(server, "quantserve_pooling_inputs_total", labels) == before["quantserve_pooling_inputs_total"] + 3
    assert (_metric(server, "quantserve_pooling_tokens_total", labels)
            == before["quantserve_pooling_tokens_total"] + response.usage.prompt_tokens)
    assert _metric(server, "quantserve_pooling_request_latency_seconds_count", f'model="{MODEL}"') >= 1


@pytest.fixture(scope="module")
def bert_server(tmp_path_factory):
    """The tests' tiny BERT (a reranker GGUF) made to embed with --pooling mean: its inputs end in [SEP]."""
    from tests.fixtures_reranker import reranker_gguf

    args = ["--model", str(reranker_gguf()), "--pooling", "mean", "--ctx", str(CONTEXT), "--parallel", "1"]
    with start_llamacpp_server(tmp_path_factory, "embeddings-bert", args) as running:
        yield running


def test_ollama_truncate_keeps_berts_closing_sep(bert_server):
    from backends.base import BackendSettings
    from backends.llamacpp_embed import LlamaCppPooler
    from tests.fixtures_reranker import reranker_gguf

    pooler = LlamaCppPooler(BackendSettings(model_path=reranker_gguf(), context_length=CONTEXT, num_parallel=1,
                                            num_threads=1), "mean")
    try:
        long_text = "paris is the capital of france. " * 40
        tokens = pooler.tokenize(long_text)
        sep = pooler.tokenize("")[-1]
    finally:
        pooler.close()
    assert tokens[-1] == sep and len(tokens) > 32
    model = reranker_gguf().stem
    truncated = ollama.Client(host=bert_server.base_url).embed(model=model, input=long_text, options={"num_ctx": 32})
    assert truncated.prompt_eval_count == 32
    with bert_server.openai() as client:
        kept, cut = (np.array(client.embeddings.create(model=model, input=[ids], encoding_format="float")
                              .data[0].embedding) for ids in (tokens[:31] + [sep], tokens[:32]))
    assert np.abs(np.array(truncated.embeddings[0]) - kept).max() < TOLERANCE
    assert np.abs(np.array(truncated.embeddings[0]) - cut).max() > TOLERANCE
