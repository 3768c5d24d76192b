"""Which drafter llama.cpp's speculative decoding uses for a model, and why: a draft model when one is
named (`--draft-model`, or the catalog entry's `draft = "alias"`), unless speculation was set otherwise.

    draft_choice(asked, spec) -> DraftChoice | None   (None: no draft model in play; the plan's default rules)
"""
from __future__ import annotations

from dataclasses import dataclass

from backends.base import DRAFT_MAX_TOKENS
from serve.config import PlanChoices
from serve.errors import ConfigError
from serve.models.catalog import ModelSpec


@dataclass(frozen=True)
class DraftChoice:
    mode: str  # the speculative mode: "draft"
    draft_model: str  # the draft's model spec (alias, hf://, path), resolved by the loader
    max_tokens: int  # tokens a request drafts in one step at most
    reason: str


def draft_choice(asked: PlanChoices, spec: ModelSpec) -> DraftChoice | None:
    """The draft model for `spec` and the reason; ConfigError for a contradictory choice."""
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
    why = "as asked" if asked.speculative == "draft" else f"chosen because {source} names a draft model"
    max_tokens = asked.draft_max_tokens or DRAFT_MAX_TOKENS
    return DraftChoice("draft", named, max_tokens,
                       f"speculative decoding: the draft model {named} (from {source}) drafts up to {max_tokens} "
                       f"tokens a step for each request in its own context, verified in the model's batched decode "
                       f"({why})")
