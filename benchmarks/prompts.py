"""Deterministic prompts shared by every server, and the logit bias that suppresses end-of-generation.

Prompts are plain text (no chat-template special tokens), so all three servers tokenize them the same
way through /v1/completions. Every request of a run gets a different prompt that differs from its
first token on, so no server gains from prefix caching between requests of the throughput workloads.
"""
from __future__ import annotations

import dataclasses
import functools
import random

# SmolLM2's end-of-generation tokens: <|endoftext|> (0) and <|im_end|> (2, the EOS in the GGUF metadata).
# Banning both makes every request generate exactly max_tokens on every server.
EOS_TOKEN_IDS = (0, 2)
EOS_LOGIT_BIAS = {str(token): -100.0 for token in EOS_TOKEN_IDS}

_OPENERS = (
    "Explain", "Describe", "Summarize", "Discuss", "Outline", "Compare", "Analyze", "Review",
    "Illustrate", "Consider", "Examine", "Sketch",
)
_WORDS = (
    "river mountain city garden library engine market winter harbor forest village bridge school "
    "planet ocean desert island castle museum factory kitchen window train station letter music "
    "painting history science language number question answer reason future memory friend teacher "
    "doctor farmer sailor writer builder traveler quiet bright ancient modern simple careful sudden "
    "gentle heavy narrow distant golden silver hidden open early late small large warm cold green "
    "blue red yellow walks builds finds carries watches remembers opens closes follows explains "
    "crosses paints studies counts listens answers waits returns grows changes moves holds and the "
    "of with under over between after before through across near beyond within because while"
).split()


@dataclasses.dataclass(frozen=True)
class PromptSpec:
    """One request's input: the text, its token count (SmolLM2 tokenizer) and its output length."""

    text: str
    num_prompt_tokens: int
    num_max_tokens: int
    label: str = "short"
    logit_bias: dict[str, float] | None = None  # None: EOS_LOGIT_BIAS (SmolLM2's)


@functools.lru_cache(maxsize=1)
def _tokenizer(model_path: str):
    import llama_cpp  # the pinned llama-cpp-python; vocab-only load takes well under a second

    return llama_cpp.Llama(model_path=model_path, vocab_only=True, verbose=False)


@functools.lru_cache(maxsize=8)
def eos_logit_bias(model_path: str) -> dict[str, float]:
    """A logit bias that bans every end-of-generation token of the model (llama.cpp's is_eog list), so
    that every request generates exactly max_tokens on every server, whatever the model."""
    import llama_cpp

    tokenizer = _tokenizer(model_path)
    vocab = llama_cpp.llama_model_get_vocab(tokenizer._model.model)
    return {str(token): -100.0 for token in range(tokenizer.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, token)}


def count_tokens(model_path: str, text: str) -> int:
    """Tokens of `text` as the servers see it (no BOS: SmolLM2's GGUF sets add_bos_token=false)."""
    return len(_tokenizer(model_path).tokenize(text.encode("utf-8"), add_bos=False, special=False))


def _sentence(rng: random.Random, num_words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(num_words))


def prompt_text(index: int, num_words: int = 70) -> str:
    """The `index`-th short prompt: a unique numbered instruction over seeded random words."""
    rng = random.Random(1000 + index)
    opener = _OPENERS[index % len(_OPENERS)]
    body = _sentence(rng, num_words)
    return f"Task {index}. {opener} the following notes in plain words: {body}.\nAnswer:"


def short_prompts(model_path: str, first_index: int, num_prompts: int,
                  num_max_tokens: int) -> list[PromptSpec]:
    """`num_prompts` consecutive short prompts starting at `first_index` (about 100 tokens each)."""
    specs = []
    for index in range(first_index, first_index + num_prompts):
        text = prompt_text(index)
        specs.append(PromptSpec(text, count_tokens(model_path, text), num_max_tokens, "short",
                                eos_logit_bias(model_path)))
    return specs


def long_prompt(model_path: str, num_target_tokens: int = 1500, num_max_tokens: int = 64,
                variant: int = 1) -> PromptSpec:
    """A deterministic prompt of about `num_target_tokens` tokens (within ~25); each `variant` differs
    from its first tokens on, so a rerun cannot reuse a cached prefix."""
    rng = random.Random(424242 + variant)
    paragraphs: list[str] = [f"Document {variant}. Read it and write a summary."]
    while count_tokens(model_path, "\n".join(paragraphs)) < num_target_tokens - 25:
        paragraphs.append(_sentence(rng, 20) + ".")
    text = "\n".join(paragraphs) + "\nSummary:"
    return PromptSpec(text, count_tokens(model_path, text), num_max_tokens, "long", eos_logit_bias(model_path))
