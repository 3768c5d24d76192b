"""POST /v1/rerank, /rerank and /v2/rerank (Cohere's v2 path): the shape llama-server, vLLM, Jina and Cohere
share, over the pooling core (serve/api/pooling.py). Errors have OpenAI's shape, as llama-server's do."""
from __future__ import annotations

import time
import uuid

from fastapi import APIRouter, Request as HTTPRequest
from fastapi.responses import JSONResponse

from serve.api import pooling
from serve.api.engine_client import PoolClient
from serve.api.errors import parse_json_object, validate
from serve.api.generation import Timings, resolve_engine
from serve.api.openapi import GENERATES, documented
from serve.api.rerank.protocol import RerankDocument, RerankRequest, RerankResponse, RerankResult, RerankUsage
from serve.api.tasks import RERANK
from serve.errors import InvalidRequestError

RERANK_PATHS = ("/v1/rerank", "/rerank", "/v2/rerank")


def build_router(pool: PoolClient) -> APIRouter:
    router = APIRouter()

    @documented(RerankRequest, RerankResponse, errors=GENERATES)
    async def rerank(http_request: HTTPRequest) -> JSONResponse:
        body = validate(RerankRequest, parse_json_object(await http_request.body()))
        unknown = sorted(body.model_extra or {})
        if unknown:
            raise InvalidRequestError(f"unrecognized request field(s): {', '.join(unknown)}; not part of this API "
                                      "or not implemented by this server, so remove them", param=unknown[0])
        engine = await resolve_engine(pool, body.model, Timings(started=time.perf_counter()), task=RERANK)
        inputs = pooling.rerank_inputs(engine, body.query, body.documents)
        request_id = f"rerank-{uuid.uuid4().hex}"
        scores = await pooling.rerank(engine, request_id, inputs)
        results = [RerankResult(index=index, relevance_score=score,
                                document=RerankDocument(text=body.documents[index]) if body.return_documents else None)
                   for index, score in pooling.ranked(scores, body.top_n)]
        usage = RerankUsage(prompt_tokens=inputs.num_tokens, total_tokens=inputs.num_tokens)
        answer = RerankResponse(id=request_id, model=engine.model_name, results=results, usage=usage)
        return JSONResponse(answer.model_dump(exclude_none=True))

    for path in RERANK_PATHS:
        router.add_api_route(path, rerank, methods=["POST"], response_model=None,
                             summary="Documents ranked by their relevance to a query (a reranker model)")
    return router
