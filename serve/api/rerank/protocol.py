"""Pydantic models of the rerank API that llama-server, vLLM, Jina and Cohere share (POST /v1/rerank):
a query, documents (strings), top_n and return_documents in; results sorted by relevance score out.

An unknown key (Cohere's rank_fields, max_chunks_per_doc; vLLM's truncation options) is a 400 naming it.
"""
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field


class RerankRequest(BaseModel):
    # Unknown keys are kept (model_extra) so that the route can refuse them by name.
    model_config = ConfigDict(extra="allow", strict=True)

    model: Optional[str] = None  # absent: the first loaded model
    query: str
    documents: list[str] = Field(min_length=1)
    top_n: Optional[int] = Field(default=None, ge=0)  # the best n results; None or 0 (vLLM's default): all
    return_documents: Optional[bool] = True  # each result carries its document's text (as Jina and vLLM do)


class RerankDocument(BaseModel):
    text: str


class RerankResult(BaseModel):
    index: int  # the document's position in the request
    relevance_score: float  # 0..1: the sigmoid of the reranker's score (llama-server answers the raw logit)
    document: Optional[RerankDocument] = None


class RerankUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(BaseModel):
    id: str
    object: str = "list"
    model: str
    results: list[RerankResult]  # by descending relevance_score
    usage: RerankUsage
