"""The chat workloads' inputs: deterministic conversations for each workload of `benchmarks.workloads`.

Every workload is a list of Conversations: a system prompt (or none) and user turns, each turn sent
with the conversation so far (the earlier turns' answers included). Single-turn workloads are
conversations of one turn. Each run gets its own `run_seed`, so no run finds another run's prompts in a
server's prefix cache; within a run, the reuse the workload is about (a resent prompt, a shared system
prompt, a growing conversation) is there for every server alike.

- repeated:  a handful of short prompts (classification-like jobs, evals, retries), resent round-robin
- system:    one ~300-token system prompt shared by every request, each with its own short question
- multiturn: conversations of several turns; each turn resends everything before it
- grounded:  passages of 500-1,500 tokens to copy, quote or rewrite, 128-320 output tokens (the
             passages are the Python standard library's own docstrings: real technical prose)
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import random

from benchmarks.prompts import _WORDS, count_tokens

WORKLOAD_NAMES = ("repeated", "system", "multiturn", "grounded")

_REVIEWS = (
    "The battery lasts two days and the screen is bright even in the sun.",
    "It stopped charging after a week and support never answered my emails.",
    "Shipping was fast, but the box was crushed and one cable was missing.",
    "Honestly the best headphones I have owned; the noise cancelling is superb.",
    "Works as described. Setup took five minutes and nothing has broken so far.",
    "The app crashes every time I open the settings page on my phone.",
)
_QUESTIONS = (
    "How do I reset my password?", "Can I change the delivery address of an order?",
    "What does the premium plan include?", "Why was my card declined?", "How long does a refund take?",
    "Can I pause my subscription for a month?", "Where do I find my invoices?",
    "Is there a discount for students?", "How do I delete my account?", "Do you ship to Canada?",
    "What happens when my trial ends?", "Can two people share one account?",
)
# The task comes after the passage: asked first, SmolLM2-135M answers with code of its own instead of
# copying (measured: 0 of 60 tokens copied, against 60 of 60 with the task after the passage).
_TASKS = (
    ("copy", "Repeat the passage above exactly, word for word."),
    ("quote", "Quote the first three sentences of the passage above exactly as written."),
    ("rewrite", "Rewrite the passage above in plain words, keeping every technical term unchanged."),
)
_PASSAGE_MODULES = ("argparse", "difflib", "textwrap", "json", "logging", "unittest", "csv", "pathlib",
                    "functools", "itertools", "collections", "heapq", "string", "shutil", "tarfile",
                    "zipfile", "pickle", "threading", "subprocess", "datetime", "decimal", "statistics")


@dataclasses.dataclass(frozen=True)
class Conversation:
    """A chat: an optional system prompt and user turns, each answered with up to `max_tokens` tokens."""

    label: str
    turns: tuple[str, ...]
    max_tokens: tuple[int, ...]  # per turn
    system: str | None = None

    def __post_init__(self) -> None:
        if len(self.turns) != len(self.max_tokens):
            raise ValueError("one max_tokens per turn")


def repeated_prompts(run_seed: int, num_requests: int, num_distinct: int = 4,
                     max_tokens: int = 64) -> list[Conversation]:
    """`num_requests` requests cycling over `num_distinct` short prompts (a ticket number new per run)."""
    rng = random.Random(run_seed)
    reviews = rng.sample(_REVIEWS, num_distinct)
    prompts = [f"Ticket {run_seed}-{i}. Is this review positive or negative? Explain briefly.\n{review}"
               for i, review in enumerate(reviews)]
    return [Conversation("repeated", (prompts[i % num_distinct],), (max_tokens,)) for i in range(num_requests)]


def system_prompt(run_seed: int, num_words: int = 220) -> str:
    """About 300 tokens (SmolLM2, Qwen and Llama tokenizers alike within ~15%) of support instructions."""
    rng = random.Random(run_seed)
    rules = []
    while sum(len(rule.split()) for rule in rules) < num_words:
        rules.append(f"Rule {len(rules) + 1}: " + " ".join(rng.choice(_WORDS) for _ in range(14)) + ".")
    return (f"You are the support assistant of shop {run_seed}. Answer politely and briefly. "
            "Follow these rules:\n" + "\n".join(rules))


def shared_system_prompt(run_seed: int, num_requests: int, max_tokens: int = 64) -> list[Conversation]:
    """Every request: the run's system prompt and a question of its own (numbered, so never repeated)."""
    system = system_prompt(run_seed)
    return [Conversation("system", (f"Question {i + 1}: {_QUESTIONS[i % len(_QUESTIONS)]}",), (max_tokens,),
                         system) for i in range(num_requests)]


def multi_turn(run_seed: int, num_conversations: int, num_turns: int = 4,
               max_tokens: int = 64) -> list[Conversation]:
    """Conversations of `num_turns` turns with a short system prompt; every turn is a new question."""
    rng = random.Random(run_seed)
    conversations = []
    for c in range(num_conversations):
        turns = tuple(f"{rng.choice(_QUESTIONS)} (chat {run_seed}-{c}, turn {t + 1})" for t in range(num_turns))
        conversations.append(Conversation("multiturn", turns, (max_tokens,) * num_turns,
                                          f"You are a helpful assistant. Conversation {run_seed}-{c}."))
    return conversations


@functools.lru_cache(maxsize=1)
def _library_text() -> tuple[str, ...]:
    """Paragraphs of the docstrings of some standard-library modules and their public names."""
    paragraphs: list[str] = []
    for name in _PASSAGE_MODULES:
        module = importlib.import_module(name)
        docs = [inspect.getdoc(module) or ""]
        for attr, value in sorted(vars(module).items()):
            if (not attr.startswith("_") and (inspect.isfunction(value) or inspect.isclass(value))
                    and getattr(value, "__module__", "") == module.__name__):
                docs.append(inspect.getdoc(value) or "")
        for doc in docs:
            paragraphs += [" ".join(p.split()) for p in doc.split("\n\n") if len(p.split()) >= 8]
    return tuple(paragraphs)


def passage(model_path: str, start: int, num_tokens: int) -> str:
    """Consecutive docstring paragraphs from paragraph `start` on, about `num_tokens` tokens long."""
    paragraphs = _library_text()
    chosen: list[str] = []
    index = start % len(paragraphs)
    while count_tokens(model_path, "\n\n".join(chosen)) < num_tokens:
        chosen.append(paragraphs[index])
        index = (index + 1) % len(paragraphs)
    return "\n\n".join(chosen)


def grounded(model_path: str, run_seed: int, num_requests: int,
             lengths: tuple[int, ...] = (500, 800, 1100, 1500),
             max_tokens: tuple[int, ...] = (128, 192, 256, 320)) -> list[Conversation]:
    """Input-grounded requests: a passage of one of `lengths` tokens and a copy/quote/rewrite task,
    answered with one of `max_tokens` tokens (greedy; the output can follow the passage, which is what
    prompt-lookup speculative decoding drafts from)."""
    rng = random.Random(run_seed)
    conversations = []
    for i in range(num_requests):
        task_name, task = _TASKS[i % len(_TASKS)]
        text = passage(model_path, rng.randrange(10_000), lengths[i % len(lengths)])
        conversations.append(Conversation(f"grounded-{task_name}", (f"Here is a passage.\n\n{text}\n\n{task}",),
                                          (max_tokens[i % len(max_tokens)],)))
    return conversations


def build(workload: str, model_path: str, run_seed: int, num_requests: int,
          max_tokens: int | None = None) -> list[Conversation]:
    """The conversations of one run of `workload` (multiturn: `num_requests` counts conversations);
    `max_tokens` replaces the workload's output lengths (short validation runs)."""
    fixed = {} if max_tokens is None else {"max_tokens": max_tokens}
    if workload == "repeated":
        return repeated_prompts(run_seed, num_requests, **fixed)
    if workload == "system":
        return shared_system_prompt(run_seed, num_requests, **fixed)
    if workload == "multiturn":
        return multi_turn(run_seed, num_requests, **fixed)
    if workload == "grounded":
        return grounded(model_path, run_seed, num_requests, **({} if max_tokens is None else {"max_tokens": (max_tokens,)}))
    raise ValueError(f"unknown workload {workload!r}; known: {', '.join(WORKLOAD_NAMES)}")
