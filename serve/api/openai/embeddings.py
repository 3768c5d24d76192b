"""POST /v1/embeddings in OpenAI's shape, over the pooling core (serve/api/pooling.py)."""
from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Request as HTTPRequest
from fastapi.responses import JSONResponse

from serve.api import pooling
from serve.api.engine_client import PoolClient
from serve.api.errors import parse_json_object, validate
from serve.api.generation import Timings, resolve_engine
from serve.api.openai.embedding_protocol import EmbeddingRequest, EmbeddingResponse
from serve.api.openapi import GENERATES, documented
from serve.api.tasks import EMBEDDINGS
from serve.errors import InvalidRequestError


def refuse_unknown_fields(extra: dict | None) -> None:
    unknown = sorted(extra or {})
    if unknown:
        raise InvalidRequestError(f"unrecognized request field(s): {', '.join(unknown)}; not part of this API "
                                  "or not implemented by this server, so remove them", param=unknown[0])


def build_router(pool: PoolClient) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/embeddings", summary="Embeddings of one or more inputs (L2-normalised; float or base64)")
    @documented(EmbeddingRequest, EmbeddingResponse, errors=GENERATES)
    async def embeddings(http_request: HTTPRequest) -> JSONResponse:
        body = validate(EmbeddingRequest, parse_json_object(await http_request.body()))
        refuse_unknown_fields(body.model_extra)
        engine = await resolve_engine(pool, body.model, Timings(started=time.perf_counter()), task=EMBEDDINGS)
        pooling.check_dimensions(engine, body.dimensions)
        inputs = pooling.embedding_inputs(engine, body.inputs)
        vectors = await pooling.embed(engine, f"embd-{uuid.uuid4().hex}", inputs, dimensions=body.dimensions)
        encode = pooling.base64_floats if body.encoding_format == "base64" else pooling.float_list
        # Plain dicts (EmbeddingResponse's shape): validating tens of thousands of floats costs more than it checks.
        data = [{"object": "embedding", "index": index, "embedding": encode(vector)}
                for index, vector in enumerate(vectors)]
        usage = {"prompt_tokens": inputs.num_tokens, "total_tokens": inputs.num_tokens}
        return JSONResponse({"object": "list", "data": data, "model": engine.model_name, "usage": usage})

    return router
