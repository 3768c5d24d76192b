"""Token log-probabilities from a row of logits, for the requests that ask for them.

A backend hands over the raw logits of one position (before its sampler chain applies temperature,
penalties or a grammar: the model's own distribution, as vLLM reports by default) and gets the chosen
token's log-probability and the most likely alternatives. One log-softmax over the vocabulary per token:
only sequences that asked pay for it.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from serve.sequence import TokenLogprob


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log(softmax(logits)), stable for large logits; float64 so that sums over long prompts stay exact."""
    shifted = logits.astype(np.float64) - float(np.max(logits))
    return shifted - np.log(np.sum(np.exp(shifted)))


def most_likely(logprobs: np.ndarray, count: int) -> list[int]:
    """The ids of the `count` most likely tokens, most likely first (ties: the lower id first)."""
    if count <= 0:
        return []
    count = min(count, logprobs.shape[0])
    candidates = np.argpartition(-logprobs, count - 1)[:count]
    return sorted((int(token) for token in candidates), key=lambda token: (-logprobs[token], token))


def token_logprob(logprobs: np.ndarray, token: int, num_top: int,
                  piece: Callable[[int], bytes]) -> TokenLogprob:
    """`token`'s entry: its logprob at this position and the `num_top` most likely tokens there."""
    top = tuple((other, piece(other), float(logprobs[other])) for other in most_likely(logprobs, num_top))
    return TokenLogprob(token_id=token, piece=piece(token), logprob=float(logprobs[token]), top=top)
