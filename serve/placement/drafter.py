"""Which drafter llama.cpp's speculative decoding uses for a model, and why: a draft model when one is
named (`--draft-model`, or the catalog entry's `draft = "alias"`), unless speculation was set otherwise;
and what the draft model adds to the memory estimate.

    draft_choice(asked, spec, resolve) -> DraftChoice | None   (None: no draft model in play)
    llamacpp_only_speculation(asked) -> str | None             (why vLLM cannot honour what was asked)

The draft runs in its own llama context shaped like the model's (backends/draft_model.py: the same
context per sequence, parallel sequences and KV type), so it adds its weights and its own KV cache, per
token of context as its architecture says. `resolve` turns the draft's name into a ModelSpec under the
caller's rules (the server's: serve/models/access.py, as for the model itself); it raises to refuse.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from backends.base import DRAFT_MAX_TOKENS
from serve.config import PlanChoices
from serve.errors import ConfigError
from serve.models.catalog import ModelSpec
from serve.placement.footprint import Footprint, gguf_footprint, gib, with_kv_type

DraftResolver = Callable[[str], ModelSpec]


@dataclass(frozen=True)
class DraftChoice:
    mode: str  # the speculative mode: "draft"
    draft_model: str  # the draft's model spec (alias, hf://, path), resolved by the loader
    max_tokens: int  # tokens a request drafts in one step at most
    reason: str
    footprint: Footprint | None = None  # the draft's weights and f16 KV bytes per token; None: not known
    always: bool = False  # --speculative draft asked: draft whatever a draft decode costs


def draft_choice(asked: PlanChoices, spec: ModelSpec, resolve: DraftResolver | None = None) -> DraftChoice | None:
    """The draft model for `spec` and the reason; ConfigError for a contradictory choice. With `resolve`,
    the draft's footprint too (what `resolve` raises, a refusal, goes to the caller)."""
    named, source = (asked.draft_model, "--draft-model") if asked.draft_model else (spec.draft, "its catalog entry")
    if asked.speculative == "draft" and not named:
        raise ConfigError("--speculative draft needs a draft model: give --draft-model MODEL (a smaller or more "
                          "quantized sibling of the model), or name one in its catalog entry (draft = \"alias\")")
    if not named:
        return None
    if asked.speculative in ("ngram", "off"):
        if asked.draft_model:
            raise ConfigError(f"--draft-model is used only with --speculative draft, not with --speculative "
                              f"{asked.speculative}: drop one of them")
        return None  # the catalog's draft stays unused, as asked
    always = asked.speculative == "draft"
    why = ("as asked, whatever a draft decode costs" if always else f"chosen because {source} names a draft "
           "model; only where a draft decode's cost, measured as it runs, pays")
    max_tokens = asked.draft_max_tokens or DRAFT_MAX_TOKENS
    footprint = gguf_footprint(resolve(named)) if resolve is not None else None
    return DraftChoice("draft", named, max_tokens,
                       f"speculative decoding: the draft model {named} (from {source}) drafts up to {max_tokens} "
                       f"tokens a step for each request in its own context, verified in the model's batched decode "
                       f"({why})", footprint if footprint is not None and footprint.weights_bytes else None, always)


def draft_footprint(draft: DraftChoice | None, kv_type: str) -> Footprint | None:
    """The draft's weights and its KV bytes per token in `kv_type` (None: no draft, or its size unknown)."""
    return with_kv_type(draft.footprint, kv_type) if draft is not None and draft.footprint is not None else None


def plus_draft(fp: Footprint, draft_fp: Footprint | None) -> Footprint:
    """The model's footprint with the draft's weights and KV bytes per token added: the draft's context
    holds KV for every token the model's does."""
    if draft_fp is None:
        return fp
    return Footprint(fp.weights_bytes + draft_fp.weights_bytes, fp.kv_bytes_per_token + draft_fp.kv_bytes_per_token,
                     fp.num_params, fp.source)


def draft_memory_reason(draft: DraftChoice | None, draft_fp: Footprint | None, kv_cache_bytes: int) -> str | None:
    """The plan's words for what the draft adds to the estimate (`kv_cache_bytes`: its whole KV cache)."""
    if draft is None:
        return None
    if draft_fp is None:
        return "the draft model's size is not known before it is downloaded: the memory estimate leaves it out"
    return (f"the draft model adds its weights ({draft_fp.source}) and its own KV cache ({gib(kv_cache_bytes)}, "
            f"{draft_fp.kv_bytes_per_token / 1024:.1f} KiB a token) to the memory estimate")


def llamacpp_only_speculation(asked: PlanChoices) -> str | None:
    """Why vLLM cannot honour the speculation asked for: quantserve's drafters live in the llama.cpp backend."""
    if asked.draft_model or asked.draft_max_tokens:
        return "--draft-model and --draft-max are llama.cpp's (quantserve runs no draft model on vLLM)"
    if asked.speculative in ("ngram", "draft"):
        return f"--speculative {asked.speculative} is llama.cpp's (quantserve's vLLM backend does not speculate)"
    return None
