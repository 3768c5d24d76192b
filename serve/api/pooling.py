"""The pooling core the embedding and rerank dialects share: from validated inputs to vectors and scores.

    resolve_engine(task=embeddings | rerank) -> embedding_inputs | rerank_inputs -> embed | rerank

Inputs are tokenized by the model's pooler, with its own special tokens (BOS, or BERT's [CLS] ... [SEP]);
token arrays are taken as they are. An input longer than the model's pooling context is a 400, unless the
client asked to truncate (Ollama's `truncate`, true by default there): then its tokens are cut to fit, keeping
the special tokens that close it (BERT's [SEP], a final EOS), as Hugging Face tokenizers do.
Embeddings are L2-normalised, as OpenAI's are; `dimensions` keeps the leading part of a Matryoshka model's
vector and normalises it again (as Ollama and vLLM do), and is a 400 for any other model unless it asks for
the full size. Rerank scores are the model's relevance (0..1) of each query-document pair.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

from serve.api.engine_client import EngineClient, PoolingSide
from serve.errors import ContextLengthError, InvalidRequestError, ServeError

MAX_INPUTS = 2048  # inputs per request: OpenAI's limit for embeddings (documents, for rerank)


@dataclass(frozen=True)
class PoolingInputs:
    """Token inputs ready for the pooler, and how many tokens they hold (the usage a client is told)."""

    token_ids: list[list[int]]

    @property
    def num_tokens(self) -> int:
        return sum(map(len, self.token_ids))


def _pooler(engine: EngineClient) -> PoolingSide:
    pooler = engine.pooler
    if pooler is None:  # resolve_engine(task=...) refused the model already
        raise InvalidRequestError(f"model {engine.model_name!r} does not pool", param="model")
    return pooler


def embedding_inputs(engine: EngineClient, inputs: list[str] | list[list[int]], *, truncate: bool = False,
                     param: str = "input", num_ctx: int | None = None) -> PoolingInputs:
    """Texts (tokenized with the model's special tokens) or token arrays (as given), each checked against
    the context (`num_ctx` when smaller): too long is a 400, or cut to fit with `truncate`."""
    pooler = _pooler(engine)
    if not inputs:
        raise InvalidRequestError(f"{param} must not be empty", param=param)
    if len(inputs) > MAX_INPUTS:
        raise InvalidRequestError(f"{param} has {len(inputs)} items; at most {MAX_INPUTS} per request", param=param)
    limit = min(pooler.context_length, num_ctx or pooler.context_length)
    token_ids = []
    for index, item in enumerate(inputs):
        where = f"{param}[{index}]" if len(inputs) > 1 else param
        ids = pooler.tokenize(item) if isinstance(item, str) else _checked_ids(engine, item, where)
        if not ids:
            raise InvalidRequestError(f"{where} is empty: there is nothing to embed", param=where)
        if len(ids) > limit:
            if not truncate:
                raise ContextLengthError(
                    f"{where} has {len(ids)} tokens, but {engine.model_name} embeds at most {limit} tokens per input; "
                    "shorten it, split it, or ask to truncate (Ollama: \"truncate\": true)", param=where)
            ids = _truncated(pooler, ids, limit) if isinstance(item, str) else ids[:limit]
        token_ids.append(ids)
    return PoolingInputs(token_ids)


def _truncated(pooler: PoolingSide, ids: list[int], limit: int) -> list[int]:
    """The first `limit` tokens of a tokenized text, keeping the special tokens the tokenizer closes every
    input with (BERT's [SEP], an EOS that last pooling reads) at the end, as a Hugging Face tokenizer's
    truncation does (sentence-transformers); the vendored llama-server refuses a long input instead."""
    suffix = _closing_tokens(pooler)
    if suffix and ids[-len(suffix):] == suffix and len(suffix) < limit:
        return ids[:limit - len(suffix)] + suffix
    return ids[:limit]


def _closing_tokens(pooler: PoolingSide) -> list[int]:
    """The special tokens after a text: what the empty text and a one-word text both end with ([SEP] of
    [CLS] [SEP] and [CLS] a [SEP]; nothing of a lone BOS, which "a" does not end with)."""
    empty, word = pooler.tokenize(""), pooler.tokenize("a")
    size = 0
    while size < min(len(empty), len(word) - 1) and empty[-1 - size] == word[-1 - size]:
        size += 1
    return empty[len(empty) - size:]


def _checked_ids(engine: EngineClient, ids: list[int], where: str) -> list[int]:
    vocab_size = getattr(_pooler(engine), "vocab_size", 0)
    bad = [token for token in ids if token < 0 or (vocab_size and token >= vocab_size)]
    if bad:
        raise InvalidRequestError(f"{where}: token ids must be between 0 and {vocab_size - 1} (the model's "
                                  f"vocabulary); got {bad[:3]}", param=where)
    return list(ids)


def check_dimensions(engine: EngineClient, dimensions: int | None, param: str = "dimensions") -> None:
    """`dimensions` is for Matryoshka models; any model may ask for its full size (that changes nothing)."""
    if dimensions is None:
        return
    size = _pooler(engine).num_dimensions
    if not 1 <= dimensions <= size:
        raise InvalidRequestError(f"{param} must be between 1 and {size} (the size of {engine.model_name}'s "
                                  f"embeddings), got {dimensions}", param=param)
    if dimensions < size and not engine.matryoshka:
        raise InvalidRequestError(
            f"{param}={dimensions}: {engine.model_name} does not support shorter embeddings; its {size} dimensions "
            "were not trained so that a leading part is an embedding too (Matryoshka), so a cut vector would "
            f"compare badly; omit {param} or send {size}, or use a Matryoshka model (nomic-embed-text-v1.5-q8, "
            "qwen3-embedding-0.6b-q8)", param=param)


async def embed(engine: EngineClient, request_id: str, inputs: PoolingInputs, *, dimensions: int | None = None,
                normalize: bool = True) -> list[np.ndarray]:
    """One float32 vector per input: L2-normalised (unless `normalize` is false: Ollama's old
    /api/embeddings answers the model's own vector), cut to `dimensions` and normalised again."""
    check_dimensions(engine, dimensions)
    vectors = []
    for output in await engine.pool(request_id, inputs.token_ids):
        vector = np.asarray(output, dtype=np.float32)
        if not np.all(np.isfinite(vector)):
            raise ServeError(f"{engine.model_name} produced an embedding with NaN or infinite values",
                             code="invalid_embedding")
        if normalize:
            vector = _unit(vector)
        if dimensions is not None and dimensions < len(vector):
            vector = _unit(vector[:dimensions]) if normalize else vector[:dimensions]
        vectors.append(vector)
    return vectors


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def float_list(vector: np.ndarray) -> list[float]:
    return vector.tolist()


def base64_floats(vector: np.ndarray) -> str:
    """OpenAI's encoding_format "base64": the little-endian float32 bytes, base64-encoded."""
    return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")


def rerank_inputs(engine: EngineClient, query: str, documents: list[str]) -> PoolingInputs:
    """Each document paired with the query as the reranker reads them; a pair longer than the context is a
    400 naming the document."""
    pooler = _pooler(engine)
    if not documents:
        raise InvalidRequestError("documents must not be empty", param="documents")
    if len(documents) > MAX_INPUTS:
        raise InvalidRequestError(f"documents has {len(documents)} items; at most {MAX_INPUTS} per request",
                                  param="documents")
    token_ids = []
    for index, document in enumerate(documents):
        ids = pooler.pair_tokens(query, document)
        if len(ids) > pooler.context_length:
            raise ContextLengthError(
                f"the query with documents[{index}] is {len(ids)} tokens, but {engine.model_name} reads at most "
                f"{pooler.context_length}; shorten the query or split the document", param=f"documents[{index}]")
        token_ids.append(ids)
    return PoolingInputs(token_ids)


async def rerank(engine: EngineClient, request_id: str, inputs: PoolingInputs) -> list[float]:
    """The relevance score (0..1) of each query-document pair, in the documents' order."""
    return [float(output[0]) for output in await engine.pool(request_id, inputs.token_ids)]


def ranked(scores: list[float], top_n: int | None) -> list[tuple[int, float]]:
    """(document index, score) pairs by descending score (ties keep the documents' order); the first
    `top_n` (None or 0: all)."""
    order = sorted(range(len(scores)), key=lambda index: -scores[index])
    return [(index, scores[index]) for index in order[:top_n or None]]
