"""Reranking, and which requests each kind of model takes, through the real server (httpx for rerank, the
openai and ollama clients for the refusals).

One llama.cpp server for the module with three models: a reranker-shaped GGUF (tests/fixtures_reranker.py:
random weights, rank pooling declared in the file), `smol-embed`, an embedding-only catalog entry on the
embedded SmolLM2 (mean pooling, marked Matryoshka so `dimensions` can be tested), and the chat-only
`smollm2-135m` alias, loaded on demand. Random weights: the tests assert the mechanics (order, top_n,
documents, usage, determinism), never that a relevant document wins.
"""
from __future__ import annotations

import textwrap

import numpy as np
import ollama
import openai
import pytest

from serve.models.catalog import embedded_model_path
from tests.fixtures_reranker import reranker_gguf
from tests.integration.conftest import start_llamacpp_server

RERANKER = reranker_gguf().stem
EMBEDDER, CHAT = "smol-embed", "smollm2-135m"
QUERY = "what is the capital of france?"
DOCUMENTS = ["paris is the capital of france.", "the cat is on the mountain.", "berlin is in germany.",
             "water", "what river is in rome?"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    catalog = tmp_path_factory.mktemp("rerank-catalog") / "models.toml"
    catalog.write_text(textwrap.dedent(f"""
        [models.{EMBEDDER}]
        gguf = {{ embedded = true }}
        context_length = 8192
        num_params = 134_515_008
        license = "apache-2.0"
        download_bytes = {embedded_model_path().stat().st_size}
        capabilities = ["embeddings"]
        pooling = "mean"
        matryoshka = true
    """))
    args = ["--catalog", str(catalog), "--model", str(reranker_gguf()), "--model", EMBEDDER, "--ctx", "512",
            "--parallel", "1"]
    with start_llamacpp_server(tmp_path_factory, "rerank", args) as running:
        yield running


def _rerank(server, **body):
    with server.http() as http:
        return http.post("/v1/rerank", json={"model": RERANKER, "query": QUERY, "documents": DOCUMENTS, **body})


def test_results_are_sorted_by_score_with_documents_and_usage(server):
    answer = _rerank(server).raise_for_status().json()
    results = answer["results"]
    scores = [result["relevance_score"] for result in results]
    assert answer["model"] == RERANKER and answer["object"] == "list" and answer["id"].startswith("rerank-")
    assert sorted(result["index"] for result in results) == list(range(len(DOCUMENTS)))
    assert scores == sorted(scores, reverse=True) and all(0.0 < score < 1.0 for score in scores)
    assert all(result["document"] == {"text": DOCUMENTS[result["index"]]} for result in results)
    assert answer["usage"]["prompt_tokens"] == answer["usage"]["total_tokens"] > len(DOCUMENTS) * 3


def test_scores_are_deterministic_and_each_pair_scores_alone_as_in_the_batch(server):
    batch = {r["index"]: r["relevance_score"] for r in _rerank(server).json()["results"]}
    again = {r["index"]: r["relevance_score"] for r in _rerank(server).json()["results"]}
    alone = {index: _rerank(server, documents=[document]).json()["results"][0]["relevance_score"]
             for index, document in enumerate(DOCUMENTS)}
    assert batch == again
    # Alone, a pair runs through other kernel paths (llama.cpp's CPU attention works in float16): close, not equal.
    assert max(abs(batch[index] - alone[index]) for index in batch) < 1e-3


def test_top_n_and_return_documents(server):
    everything = _rerank(server).json()["results"]
    best_two = _rerank(server, top_n=2, return_documents=False).json()["results"]
    assert [r["index"] for r in best_two] == [r["index"] for r in everything[:2]]
    assert all("document" not in result for result in best_two)
    assert len(_rerank(server, top_n=0).json()["results"]) == len(DOCUMENTS)  # 0: all, as vLLM
    assert len(_rerank(server, top_n=50).json()["results"]) == len(DOCUMENTS)


@pytest.mark.parametrize("path", ["/rerank", "/v2/rerank"])
def test_the_other_paths_answer_the_same(server, path):
    with server.http() as http:
        other = http.post(path, json={"model": RERANKER, "query": QUERY, "documents": DOCUMENTS}).json()
    assert [r["index"] for r in other["results"]] == [r["index"] for r in _rerank(server).json()["results"]]


@pytest.mark.parametrize("body, param", [
    ({"documents": []}, "documents"),
    ({"documents": ["a", 3]}, "documents[1]"),
    ({"query": 5}, "query"),
    ({"top_n": -1}, "top_n"),
    ({"rank_fields": ["text"]}, "rank_fields"),
    ({"documents": ["word " * 600]}, "documents[0]"),
])
def test_bad_rerank_requests_are_400s_naming_the_field(server, body, param):
    response = _rerank(server, **body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param, response.text


def test_rerank_on_a_chat_or_embedding_model_is_a_400_saying_what_to_use(server):
    for model in (CHAT, EMBEDDER):
        with server.http() as http:
            response = http.post("/v1/rerank", json={"model": model, "query": QUERY, "documents": DOCUMENTS})
        assert response.status_code == 400, response.text
        assert "rank pooling" in response.json()["error"]["message"] and "reranker" in response.json()["error"]["message"]


# --- what each model takes ------------------------------------------------------------------------------

def test_chat_on_an_embedding_model_is_a_400_pointing_to_embeddings(server):
    with server.openai() as client:
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model=EMBEDDER, messages=[{"role": "user", "content": "hi"}])
        assert "embedding model" in refused.value.body["message"] and "/v1/embeddings" in refused.value.body["message"]
        with pytest.raises(openai.BadRequestError) as completion:
            client.completions.create(model=EMBEDDER, prompt="hi")
        assert "/v1/embeddings" in completion.value.body["message"]
    with pytest.raises(ollama.ResponseError) as ollama_refused:
        ollama.Client(host=server.base_url).chat(model=EMBEDDER, messages=[{"role": "user", "content": "hi"}])
    assert ollama_refused.value.status_code == 400 and "/api/embed" in ollama_refused.value.error


def test_chat_on_a_reranker_is_a_400_pointing_to_rerank(server):
    with server.openai() as client:
        with pytest.raises(openai.BadRequestError) as refused:
            client.chat.completions.create(model=RERANKER, messages=[{"role": "user", "content": "hi"}])
    assert "reranker" in refused.value.body["message"] and "/v1/rerank" in refused.value.body["message"]


def test_embeddings_from_a_chat_only_model_or_a_reranker_are_400s_saying_what_to_use(server):
    with server.openai() as client:
        with pytest.raises(openai.BadRequestError) as chat_model:
            client.embeddings.create(model=CHAT, input="hi")
        with pytest.raises(openai.BadRequestError) as reranker:
            client.embeddings.create(model=RERANKER, input="hi")
    assert "--pooling mean" in chat_model.value.body["message"] and "embedding model" in chat_model.value.body["message"]
    assert "/v1/rerank" in reranker.value.body["message"]
    with pytest.raises(ollama.ResponseError) as ollama_refused:
        ollama.Client(host=server.base_url).embed(model=CHAT, input="hi")
    assert ollama_refused.value.status_code == 400 and "cannot make embeddings" in ollama_refused.value.error


def test_an_embedding_only_model_serves_embeddings_and_matryoshka_dimensions(server):
    with server.openai() as client:
        full = np.array(client.embeddings.create(model=EMBEDDER, input=DOCUMENTS[0], encoding_format="float")
                        .data[0].embedding)
        short = np.array(client.embeddings.create(model=EMBEDDER, input=DOCUMENTS[0], dimensions=64,
                                                  encoding_format="float").data[0].embedding)
    assert full.shape == (576,) and short.shape == (64,)
    assert abs(np.linalg.norm(short) - 1.0) < 1e-5
    assert np.abs(short - full[:64] / np.linalg.norm(full[:64])).max() < 1e-5  # the leading part, normalised
    ollama_short = ollama.Client(host=server.base_url).embed(model=EMBEDDER, input=DOCUMENTS[0], dimensions=64)
    assert np.abs(np.array(ollama_short.embeddings[0]) - short).max() < 1e-5


def test_ollama_show_lists_embedding_models_by_their_capability(server):
    with server.http() as http:
        shown = {name: http.post("/api/show", json={"model": name}).json()["capabilities"]
                 for name in (EMBEDDER, CHAT, RERANKER)}
    assert shown == {EMBEDDER: ["embedding"], CHAT: ["completion"], RERANKER: []}


def test_metrics_count_rerank_requests_documents_and_tokens(server):
    def metric(name: str) -> float:
        with server.http() as http:
            text = http.get("/metrics").raise_for_status().text
        prefix = f'{name}{{model="{RERANKER}",task="rerank"}}'
        return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix)), 0.0)

    names = ("quantserve_pooling_requests_total", "quantserve_pooling_inputs_total", "quantserve_pooling_tokens_total")
    before = [metric(name) for name in names]
    usage = _rerank(server).raise_for_status().json()["usage"]
    assert [metric(name) for name in names] == [before[0] + 1, before[1] + len(DOCUMENTS),
                                                 before[2] + usage["prompt_tokens"]]
