"""Internal request types shared by the scheduler, the engine and the backends.

Plain dataclasses: pydantic lives only at the HTTP edge (serve/api/).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class OutputConstraint:
    """What the generated text must match; built at the API edge (serve/grammar) and enforced per sequence
    by the backend. Unconstrained requests carry none, so they pay nothing.

    gbnf: the grammar in llama.cpp's GBNF (root rule `root`), always set: llama.cpp's grammar sampler
        enforces it, and a JSON schema is converted (and its features checked) before the request is
        submitted, so both backends refuse the same unenforceable features.
    json_schema: the JSON schema as canonical JSON text when the grammar came from one (both backends
        enforce the GBNF: vLLM's xgrammar reads it too, and is looser given the schema itself).
    is_json_object: any JSON object (OpenAI's `json_object`, Ollama's "json").
    trigger_patterns: a lazy grammar when not empty (llama.cpp's `llama_sampler_init_grammar_lazy_patterns`,
        what llama-server uses for `tool_choice: auto`): the output is free until one of these regular
        expressions (std::regex, ECMAScript) is found in the text generated so far; from the start of its
        first non-empty capture group (or of the whole match) on, the text must match the grammar. So the
        grammar itself begins with the trigger's text, e.g. pattern `<tool_call>` and grammar
        `root ::= "<tool_call>" ...`. A plain word is a pattern once its regex characters are escaped.
    structural_tag: the same lazy grammar in xgrammar's structural-tag form (JSON text), which vLLM's structured
        outputs run: free text until a trigger string, then one of the tags (`begin`, a GBNF grammar, `end`).
        None where the format's calls cannot be written so; vLLM then runs such a request without a grammar.
    """

    gbnf: str
    json_schema: str | None = None
    is_json_object: bool = False
    trigger_patterns: tuple[str, ...] = ()
    structural_tag: str | None = None

    @property
    def is_lazy(self) -> bool:
        return bool(self.trigger_patterns)


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens; defaults follow the OpenAI API."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 disables top-k
    min_p: float = 0.0
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repeat_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    constraint: OutputConstraint | None = None  # structured output: a grammar the text must match
    # Logprobs cost a log-softmax over the vocabulary per token: computed only when asked. None: not asked;
    # 0: the chosen token's logprob only; N: also the N most likely tokens at that position.
    num_logprobs: int | None = None
    # The same for every prompt token (OpenAI completions' echo); the first prompt token has none.
    num_prompt_logprobs: int | None = None
    # Speculative decoding where the server runs it (the output is the same either way); False opts out.
    speculative: bool = True
    # Special tokens whose text must appear in the output when the model writes them (a tool-call marker
    # like Mistral's `[TOOL_CALLS]` is a control token, which backends otherwise leave out of the text).
    # Text that is not one special token of the model's vocabulary appears anyway: nothing to keep.
    kept_special_tokens: tuple[str, ...] = ()

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class TokenLogprob:
    """A token, its log-probability, and the most likely alternatives at its position (most likely first)."""

    token_id: int
    piece: bytes  # the token's text as bytes (a multi-byte character may be split between tokens)
    logprob: float
    top: tuple[tuple[int, bytes, float], ...] = ()  # (token id, piece, logprob)


class FinishReason(str, enum.Enum):
    STOP = "stop"  # end-of-generation token or a stop string
    LENGTH = "length"  # max_tokens reached, or the per-sequence context is full
    ABORT = "abort"  # the client went away or the server shuts down


@dataclass
class Request:
    """One generation request, already templated and tokenized."""

    request_id: str
    model: str
    prompt: str
    prompt_token_ids: list[int]
    params: SamplingParams
    # Chat messages, for backends that template themselves (vLLM); None for plain completions.
    messages: list[dict[str, Any]] | None = None


@dataclass
class StepOutput:
    """What one backend step produced for one sequence."""

    request_id: str
    text: str = ""  # the new text; stop strings never appear in it
    num_new_tokens: int = 0
    finish_reason: FinishReason | None = None
    error: str | None = None  # why the server ended the request (with finish_reason ABORT)
    is_server_stopping: bool = False  # ABORT because the server is shutting down: the client may retry
    stop_string: str | None = None  # the stop string that ended it (finish_reason STOP), not an end token
    # Prompt tokens the backend reused from its own prefix cache, for backends that learn it only once
    # the request runs (vLLM); backends that choose the reuse at admission return it from admit().
    num_cached_tokens: int | None = None
    # One per new token, when the request asked for logprobs (SamplingParams.num_logprobs).
    logprobs: list[TokenLogprob] | None = None
    # Every prompt token's (None for the first), on the request's first output, when asked.
    prompt_logprobs: list[TokenLogprob | None] | None = None
    # Speculative decoding: tokens drafted for this step, and how many of them the model confirmed (they
    # are among num_new_tokens, which is then more than one).
    num_drafted_tokens: int = 0
    num_accepted_tokens: int = 0


@dataclass
class Sequence:
    """A request's life inside one engine; mutated only on the engine thread."""

    request: Request
    # Called on the engine thread with every StepOutput; the engine points it at an asyncio queue.
    deliver: Callable[[StepOutput], None]
    num_computed_tokens: int = 0  # prompt tokens already in the KV cache
    num_cached_tokens: int = 0  # of those, reused from an earlier request (prefix reuse)
    num_output_tokens: int = 0
    admitted_at: float | None = None  # perf_counter() when it got a sequence slot (queue time ends)
    is_aborted: bool = False
    finish_reason: FinishReason | None = None

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.request.prompt_token_ids)

    @property
    def num_prompt_tokens_left(self) -> int:
        return self.num_prompt_tokens - self.num_computed_tokens

    @property
    def is_prefilling(self) -> bool:
        return self.num_computed_tokens < self.num_prompt_tokens


@dataclass(frozen=True)
class PrefillChunk:
    """Prompt tokens [start, end) of a sequence to put into the KV cache this step."""

    sequence: Sequence
    start: int
    end: int

    @property
    def num_tokens(self) -> int:
        return self.end - self.start

    @property
    def is_last(self) -> bool:
        return self.end == self.sequence.num_prompt_tokens


@dataclass
class Batch:
    """One engine step's work for the backend."""

    prefill: list[PrefillChunk] = field(default_factory=list)
    decode: list[Sequence] = field(default_factory=list)  # one new token each
    released: list[Sequence] = field(default_factory=list)  # aborted: free their KV and sampler
    # Tokens the backend may add to verify drafts of the decoding sequences (speculative decoding): the
    # step budget the decode tokens and prompt chunks left over, within the backend's own cap.
    num_draft_tokens: int = 0

    @property
    def is_empty(self) -> bool:
        return not (self.prefill or self.decode or self.released)
