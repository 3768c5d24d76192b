"""What the HTTP layer needs from the runtime, and nothing more: the pool, an engine, a request's stream.

serve.runtime.pool.ModelPool, serve.runtime.engine.Engine and serve.runtime.engine.RequestStream satisfy
these protocols; the routes and the generation core are written against them, so a test can serve the
real app over a Fake* pool, and the runtime can change whatever the API does not read.
"""
from __future__ import annotations

from typing import Any, AsyncIterator, Protocol

from serve.runtime.pool import ModelInfo
from serve.sequence import Request, StepOutput


class OutputStream(Protocol):
    """One submitted request's outputs, ending after the one that carries a finish_reason."""

    @property
    def num_prompt_tokens(self) -> int: ...

    @property
    def num_cached_tokens(self) -> int:
        """Prompt tokens reused from the prefix cache; known once the request was admitted."""

    def __aiter__(self) -> AsyncIterator[StepOutput]: ...

    def abort(self) -> None:
        """Stop generating for a client that went away (idempotent)."""


class ContextLimit(Protocol):
    """Of an engine's capabilities (backends.base.Capabilities), the API reads only this."""

    @property
    def context_length(self) -> int:
        """Tokens per request, prompt plus output."""

    @property
    def can_start_grammar_on_trigger(self) -> bool:
        """Whether the backend runs lazy grammars (tool_choice auto holds calls to their schemas with one)."""

    @property
    def can_start_tagged_grammar(self) -> bool:
        """Whether the backend runs lazy grammars written as xgrammar structural tags (vLLM)."""


class PoolingSide(Protocol):
    """Of a model's pooler (backends.base.Pooler), what the API reads: tokens and sizes."""

    @property
    def pooling(self) -> str:
        """mean, cls, last (embeddings) or rank (rerank scores)."""

    @property
    def context_length(self) -> int:
        """Tokens per input."""

    @property
    def num_dimensions(self) -> int: ...

    @property
    def vocab_size(self) -> int:
        """Token ids a token-array input may hold are below this."""

    def tokenize(self, text: str) -> list[int]: ...

    def pair_tokens(self, query: str, document: str) -> list[int]: ...


class EngineClient(Protocol):
    """One loaded model, as a route uses it: template, tokenize, submit; and pool, when it embeds or reranks."""

    @property
    def model_name(self) -> str: ...

    @property
    def supported_tasks(self) -> frozenset[str]:
        """What the model can be asked: chat, embeddings, rerank (and tools, reasoning, vision)."""

    @property
    def pooler(self) -> PoolingSide | None:
        """The pooling side of a model that embeds or reranks; None for a chat-only model."""

    @property
    def matryoshka(self) -> bool:
        """Embeddings: a leading part of the vector is an embedding too (requests may ask for `dimensions`)."""

    async def pool(self, request_id: str, inputs: list[list[int]]) -> list[list[float]]:
        """One output per input: the embedding (not normalized) or, for rank pooling, [relevance score]."""

    @property
    def capabilities(self) -> ContextLimit: ...

    @property
    def tool_format(self) -> str | None:
        """How the model writes tool calls, as the catalog states it; None: recognised from chat_template."""

    @property
    def reasoning_format(self) -> str | None:
        """How the model writes its thinking, as the catalog states it (think_tags, harmony); None: it does
        not reason, unless its chat template opens a `<think>` block in the prompt (serve/api/reasoning.py)."""

    @property
    def chat_template(self) -> str:
        """The Jinja source of the model's chat template."""

    def render_chat(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None,
                    **template_kwargs: Any) -> str:
        """The model's chat template applied (with `tools` in OpenAI's shape, when given, and the request's
        own template variables, like enable_thinking); a template refusal is an InvalidRequestError."""

    def tokenize(self, text: str) -> list[int]: ...

    def submit(self, request: Request) -> OutputStream:
        """Queue the request; raises at once (ServeError) when it cannot be served."""


class PoolClient(Protocol):
    """The loaded models, as the routes use them."""

    async def get(self, name: str | None, *, keep_alive: float | None = None) -> EngineClient:
        """The engine serving `name`, loading it first when needed."""

    async def unload(self, name: str) -> None: ...

    def loaded_name(self, name: str) -> str | None:
        """The served name of a loaded model `name` refers to; None when not loaded (never loads)."""

    def model_infos(self) -> list[ModelInfo]: ...

    def stats(self) -> dict[str, Any]: ...

    @property
    def is_stopping(self) -> bool:
        """The server is draining before it exits: it admits no new request."""
