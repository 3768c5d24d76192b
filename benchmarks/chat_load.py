"""Streaming chat clients for the chat workloads: a closed loop of conversations, turn after turn.

Each client takes the next conversation and sends its turns one after another, every turn with the whole
conversation so far (system prompt, earlier questions and the server's own earlier answers), as a chat
app does. Requests are streaming `/v1/chat/completions`, greedy, with the model's end-of-generation
tokens banned (so every turn produces exactly its max_tokens on every server), usage in the stream.
Metrics are loadgen's (vLLM's definitions), pooled over every turn of every conversation.
"""
from __future__ import annotations

import asyncio
import collections
import re
import time
from typing import Any, Optional

import httpx

from benchmarks.conversations import Conversation
from benchmarks.loadgen import RequestResult, make_client, stream_post, summarize


def chat_payload(model: str, messages: list[dict[str, str]], max_tokens: int,
                 logit_bias: dict[str, float]) -> dict[str, Any]:
    return {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0.0,
            "logit_bias": logit_bias, "stream": True, "stream_options": {"include_usage": True}}


async def run_conversation(client: httpx.AsyncClient, base_url: str, model: str, conversation: Conversation,
                           logit_bias: dict[str, float]) -> list[RequestResult]:
    """Send every turn of `conversation`, each with the conversation so far; stop at a failed turn."""
    messages = [{"role": "system", "content": conversation.system}] if conversation.system else []
    results = []
    for turn, max_tokens in zip(conversation.turns, conversation.max_tokens):
        messages.append({"role": "user", "content": turn})
        result = RequestResult(conversation.label, max_tokens, 0)
        await stream_post(client, f"{base_url}/v1/chat/completions",
                          chat_payload(model, messages, max_tokens, logit_bias), result)
        result.num_prompt_tokens = int(result.usage.get("prompt_tokens") or 0)
        results.append(result)
        if not result.success:
            break
        messages.append({"role": "assistant", "content": result.text})
    return results


async def run_conversations(base_url: str, model: str, conversations: list[Conversation], concurrency: int,
                            logit_bias: dict[str, float]) -> tuple[list[RequestResult], float]:
    """`concurrency` clients, each running the next conversation as soon as its previous one is done.
    The results are in the conversations' order (turn after turn), whatever order they finished in."""
    pending = collections.deque(enumerate(conversations))
    by_conversation: list[list[RequestResult]] = [[] for _ in conversations]
    async with make_client(concurrency) as client:
        async def client_loop() -> None:
            while pending:
                index, conversation = pending.popleft()
                by_conversation[index] = await run_conversation(client, base_url, model, conversation, logit_bias)

        start = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        duration = time.perf_counter() - start
    return [result for results in by_conversation for result in results], duration


def cached_tokens(results: list[RequestResult]) -> dict[str, Any]:
    """Prompt tokens the servers say came from their cache (usage.prompt_tokens_details.cached_tokens)."""
    reported = [r for r in results if r.success and "prompt_tokens_details" in r.usage]
    if not reported:
        return {}
    cached = sum(int((r.usage["prompt_tokens_details"] or {}).get("cached_tokens") or 0) for r in reported)
    return {"cached_prompt_tokens": cached, "reported_prompt_tokens": sum(r.num_prompt_tokens for r in reported)}


def summarize_chat(results: list[RequestResult], duration_s: float) -> dict[str, Any]:
    """loadgen.summarize plus the prefix cache's share and the outputs (to compare servers' greedy text)."""
    return {**summarize(results, duration_s), **cached_tokens(results),
            "outputs": [r.text for r in results]}


_COUNTER = re.compile(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+([0-9.eE+-]+|NaN)\s*$")


def parse_draft_counters(metrics_text: str) -> Optional[dict[str, float]]:
    """Speculative-decoding counters in a Prometheus text page: the sum of the `*_total` counters whose
    name says "accept" (accepted draft tokens) and of those whose name says "draft" but neither "accept"
    nor "reject" (drafted tokens), among the counters about drafts or speculation (quantserve's and vLLM's
    `spec_decode_num_accepted_tokens_total` says neither "draft" nor "specul"). None when there are
    none (the server does not speculate, or does not report it)."""
    drafted = accepted = 0.0
    found = False
    for line in metrics_text.splitlines():
        match = _COUNTER.match(line)
        name = match.group(1) if match else ""
        if not name.endswith("_total") or not any(word in name for word in ("draft", "specul", "spec_decode")):
            continue
        found = True
        if "accept" in name:
            accepted += float(match.group(3))
        elif "draft" in name and "reject" not in name:
            drafted += float(match.group(3))
    return {"drafted": drafted, "accepted": accepted} if found else None


async def draft_counters(base_url: str) -> Optional[dict[str, float]]:
    """The server's speculative counters from /metrics (quantserve), or None."""
    try:
        async with httpx.AsyncClient(timeout=10.0) as client:
            response = await client.get(f"{base_url}/metrics")
    except httpx.HTTPError:
        return None
    return parse_draft_counters(response.text) if response.status_code == 200 else None
