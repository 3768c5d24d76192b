"""Which requests a model may get: a chat or completion request needs a model that generates, an embedding
request one that pools into embeddings, a rerank request one with rank pooling (a classifier head). A request
the model cannot serve is a 400 that says where to send it instead, in every dialect."""
from __future__ import annotations

from serve.api.engine_client import EngineClient
from serve.errors import InvalidRequestError

CHAT, EMBEDDINGS, RERANK = "chat", "embeddings", "rerank"


def require_task(engine: EngineClient, task: str) -> None:
    """InvalidRequestError (400) unless `engine`'s model can do `task`."""
    tasks = getattr(engine, "supported_tasks", frozenset({CHAT}))
    if task in tasks:
        return
    name = engine.model_name
    if task == CHAT:
        raise InvalidRequestError(f"model {name!r} {_what_it_is(tasks)} and does not generate text; "
                                  f"{_where_to_send(tasks)}", param="model")
    if task == EMBEDDINGS:
        elsewhere = (f"{_where_to_send(tasks)}" if RERANK in tasks else
                     "use an embedding model (such as nomic-embed-text-v1.5-q8 or bge-small-en-v1.5-q8), or "
                     f"start the server with --pooling mean to embed with {name}")
        raise InvalidRequestError(f"model {name!r} {_what_it_is(tasks)} and cannot make embeddings; {elsewhere}",
                                  param="model")
    raise InvalidRequestError(
        f"model {name!r} {_what_it_is(tasks)} and cannot rerank: reranking needs rank pooling (a classifier head "
        "that scores a query and a document together); use a reranker such as bge-reranker-v2-m3-q8"
        + (", or compare embeddings from POST /v1/embeddings" if EMBEDDINGS in tasks else ""), param="model")


def _what_it_is(tasks: frozenset[str]) -> str:
    if CHAT in tasks:
        return "is a chat model"
    if EMBEDDINGS in tasks:
        return "is an embedding model"
    return "is a reranker"


def _where_to_send(tasks: frozenset[str]) -> str:
    if EMBEDDINGS in tasks:
        return "send its inputs to POST /v1/embeddings (Ollama: POST /api/embed)"
    return "send a query and documents to POST /v1/rerank"
