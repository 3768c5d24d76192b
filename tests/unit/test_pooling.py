"""The pooling core and what a model may be asked, without a model: which tasks a catalog entry, a GGUF header
or --pooling give a model (serve/models/tasks.py), the catalog's matryoshka key, the 400s of
serve/api/tasks.py, and the arithmetic of serve/api/pooling.py (normalise, dimensions, truncate, rank) over
a Fake engine whose pooler returns fixed vectors."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np
import pytest

from serve.api import pooling
from serve.api.tasks import require_task
from serve.errors import ConfigError, ContextLengthError, InvalidRequestError
from serve.models.catalog import ModelSpec, embedded_model_path, parse_catalog
from serve.models.tasks import model_tasks
from tests.fixtures_reranker import reranker_gguf


def test_tasks_come_from_the_catalog_the_gguf_or_the_pooling_flag():
    chat = ModelSpec(name="chat")
    assert model_tasks(chat, embedded_model_path()).tasks == {"chat"}
    assert model_tasks(chat, reranker_gguf()).tasks == {"rerank"}  # the file declares rank pooling
    forced = model_tasks(chat, embedded_model_path(), "mean")
    assert forced.tasks == {"chat", "embeddings"} and forced.pooling == "mean"
    embedder = ModelSpec(name="e", capabilities=frozenset({"embeddings"}), pooling="cls")
    assert model_tasks(embedder, reranker_gguf()) == model_tasks(embedder, None)  # the entry wins over the file
    assert model_tasks(embedder, None, "rank").tasks == {"rerank"}


@pytest.mark.parametrize("entry, message", [
    ('capabilities = ["chat"]\nmatryoshka = true', "matryoshka is set but capabilities do not include embeddings"),
    ('capabilities = ["embeddings"]\nmatryoshka = "yes"', "matryoshka must be true or false"),
])
def test_matryoshka_needs_embeddings(entry, message):
    text = ('[models.m]\ngguf = { repo = "org/m-GGUF", quant = "Q8_0" }\ncontext_length = 512\n'
            f'num_params = 1\nlicense = "mit"\ndownload_bytes = 1\n{entry}\n')
    with pytest.raises(ConfigError, match=message):
        parse_catalog(text)


@dataclass
class FakePooler:
    pooling: str = "mean"
    context_length: int = 8
    num_dimensions: int = 4
    vocab_size: int = 100

    def tokenize(self, text: str) -> list[int]:
        return [ord(c) % 100 for c in text]

    def pair_tokens(self, query: str, document: str) -> list[int]:
        return self.tokenize(query) + [0] + self.tokenize(document)


@dataclass
class FakePoolingEngine:
    model_name: str = "fake"
    supported_tasks: frozenset = frozenset({"embeddings"})
    matryoshka: bool = False
    pooler: FakePooler = field(default_factory=FakePooler)
    outputs: list = field(default_factory=list)

    async def pool(self, request_id: str, inputs: list[list[int]]) -> list[list[float]]:
        return self.outputs[:len(inputs)]


def test_require_task_says_where_to_send_the_request():
    with pytest.raises(InvalidRequestError, match="/v1/embeddings"):
        require_task(FakePoolingEngine(), "chat")
    with pytest.raises(InvalidRequestError, match="/v1/rerank"):
        require_task(FakePoolingEngine(supported_tasks=frozenset({"rerank"})), "embeddings")
    with pytest.raises(InvalidRequestError, match="--pooling mean"):
        require_task(FakePoolingEngine(supported_tasks=frozenset({"chat"})), "embeddings")
    require_task(FakePoolingEngine(), "embeddings")


def test_vectors_are_normalised_then_cut_and_normalised_again():
    engine = FakePoolingEngine(matryoshka=True, outputs=[[3.0, 4.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    inputs = pooling.embedding_inputs(engine, ["ab", "cd"])
    full = asyncio.run(pooling.embed(engine, "r", inputs))
    assert np.allclose(full[0], [0.6, 0.8, 0, 0]) and np.allclose(full[1], [0.5] * 4)
    cut = asyncio.run(pooling.embed(engine, "r", inputs, dimensions=1))
    assert np.allclose(cut[0], [1.0]) and np.allclose(cut[1], [1.0])
    raw = asyncio.run(pooling.embed(engine, "r", inputs, normalize=False))
    assert np.allclose(raw[0], [3, 4, 0, 0])
    assert np.frombuffer(__import__("base64").b64decode(pooling.base64_floats(full[0])), "<f4").tolist() == \
        pytest.approx([0.6, 0.8, 0, 0])


def test_dimensions_only_for_matryoshka_models_or_at_full_size():
    pooling.check_dimensions(FakePoolingEngine(), 4)
    with pytest.raises(InvalidRequestError, match="Matryoshka"):
        pooling.check_dimensions(FakePoolingEngine(), 2)
    with pytest.raises(InvalidRequestError, match="between 1 and 4"):
        pooling.check_dimensions(FakePoolingEngine(matryoshka=True), 5)


def test_long_inputs_are_refused_or_truncated_and_token_ids_checked():
    engine = FakePoolingEngine()
    with pytest.raises(ContextLengthError, match="at most 8 tokens"):
        pooling.embedding_inputs(engine, ["x" * 9])
    assert pooling.embedding_inputs(engine, ["x" * 9], truncate=True).token_ids == [[20] * 8]
    assert pooling.embedding_inputs(engine, ["x" * 9], truncate=True, num_ctx=3).num_tokens == 3
    with pytest.raises(InvalidRequestError, match="vocabulary"):
        pooling.embedding_inputs(engine, [[1, 100]])
    with pytest.raises(ContextLengthError, match="documents\\[1\\]"):
        pooling.rerank_inputs(engine, "q", ["d", "d" * 9])


def test_ranked_sorts_by_score_keeping_ties_in_order_and_cuts_to_top_n():
    scores = [0.2, 0.9, 0.2, 0.5]
    assert pooling.ranked(scores, None) == [(1, 0.9), (3, 0.5), (0, 0.2), (2, 0.2)]
    assert pooling.ranked(scores, 2) == [(1, 0.9), (3, 0.5)]
    assert pooling.ranked(scores, 0) == pooling.ranked(scores, None)
