"""Speculative decoding's model-free half: prompt-lookup drafts, the adaptive draft length, the accepted run.

A sequence proposes the tokens that followed the latest earlier occurrence of its own recent tokens in its
prompt and output (prompt lookup, llama-server's `ngram-simple` with a variable n-gram size). The backend
decodes the proposal after the sequence's next token in the same llama_decode as everything else, with
logits at every position, and samples each position in turn with the sequence's own sampler chain; a
position's token is emitted, and the next position is looked at only while the sampled token equals the
drafted one (`accepted_run`).

Why "sample each position, accept while equal" (llama.cpp's common_sampler_sample_and_accept_n): every
emitted token is drawn by the same sampler, grammar and penalty state from the same logits as without
speculation, because the positions before it hold exactly the tokens that were emitted. So greedy output
is unchanged, sampled output keeps its distribution (for a deterministic draft this IS standard
speculative sampling: the drafted token t is accepted with probability p(t), and on rejection the sampled
token comes from p without t, renormalised), a seeded request draws the same random numbers, and
grammars, penalties and logprobs see only emitted tokens. Nothing is advanced by a rejected draft.

How long a draft may be comes from two limits. The load (backends/draft_policy.py): a draft token must
be accepted with a higher probability than what verifying it costs the step, and that cost grows with
the number of sequences decoding. And the sequence's record (`DraftLength`): the length doubles while
drafts are accepted whole, falls to one more than what was accepted, and after drafts keep failing,
drafting pauses for a number of steps that doubles with every further failure.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from backends.draft_policy import Acceptance, paying_length

NGRAM_MAX = 8  # the longest suffix compared; a longer match predicts no better
NGRAM_MIN = 2  # a single-token match is mostly chance
MAX_CANDIDATES = 256  # earlier occurrences of the last token examined (latest first): bounds a step's lookup
DRAFT_MAX = 16  # tokens one sequence drafts in one step at most
DRAFT_START = 4  # a new sequence's first draft length
FAILURES_BEFORE_PAUSE = 2  # consecutive drafts of which nothing was accepted before drafting pauses
PAUSE_STEPS_FIRST, PAUSE_STEPS_MAX = 8, 256


class PromptLookup:
    """A sequence's tokens (prompt, then every emitted token) indexed by token id, to find the latest
    earlier occurrence of their longest recent suffix."""

    def __init__(self, tokens: list[int]):
        self._tokens: list[int] = []
        self._positions: dict[int, list[int]] = defaultdict(list)
        self.extend(tokens)

    def extend(self, tokens: list[int]) -> None:
        for token in tokens:
            self._positions[token].append(len(self._tokens))
            self._tokens.append(token)

    def draft(self, max_tokens: int) -> list[int]:
        """Up to `max_tokens` tokens that followed the latest, longest earlier match of the suffix."""
        tokens, end = self._tokens, len(self._tokens) - 1
        if max_tokens <= 0 or end < NGRAM_MIN:
            return []
        best_length, best_at = 0, -1
        earlier = self._positions[tokens[end]]
        for at in reversed(earlier[max(len(earlier) - 1 - MAX_CANDIDATES, 0):-1]):
            length = 1
            while length < NGRAM_MAX and at >= length and tokens[at - length] == tokens[end - length]:
                length += 1
            if length > best_length:
                best_length, best_at = length, at
                if length == NGRAM_MAX:
                    break
        if best_length < NGRAM_MIN:
            return []
        return tokens[best_at + 1:best_at + 1 + max_tokens]


@dataclass
class DraftLength:
    """How many tokens a sequence drafts next, from how its drafts fared."""

    current: int = DRAFT_START
    num_failures: int = 0  # consecutive drafts with nothing accepted
    num_paused_steps: int = 0  # steps left without drafting

    def next_length(self) -> int:
        """The length to draft this step (0 while paused); call once per step."""
        if self.num_paused_steps > 0:
            self.num_paused_steps -= 1
            return 0
        return self.current

    def record(self, num_drafted: int, num_accepted: int) -> None:
        if num_drafted <= 0:
            return
        if num_accepted >= num_drafted:
            self.current, self.num_failures = min(self.current * 2, DRAFT_MAX), 0
        elif num_accepted > 0:
            self.current, self.num_failures = max(num_accepted + 1, 1), 0
        else:
            self.current = max(self.current // 2, 1)
            self.num_failures += 1
            if self.num_failures >= FAILURES_BEFORE_PAUSE:
                doublings = self.num_failures - FAILURES_BEFORE_PAUSE
                self.num_paused_steps = min(PAUSE_STEPS_FIRST << min(doublings, 16), PAUSE_STEPS_MAX)


def accepted_run(drafted: list[int], sampled: list[int]) -> int:
    """How many drafted tokens the sampled ones confirm: the length of their common prefix."""
    count = 0
    for draft, token in zip(drafted, sampled):
        if draft != token:
            break
        count += 1
    return count


def share_budget(wanted: dict[int, int], budget: int) -> dict[int, int]:
    """Split a step's draft budget between sequences (key -> tokens wanted): evenly, what one does not
    need going to the others (water-filling, as the scheduler shares prompt budget)."""
    grants = dict.fromkeys(wanted, 0)
    pending = sorted((count, key) for key, count in wanted.items() if count > 0)
    while pending and budget > 0:
        share = max(budget // len(pending), 1)
        count, key = pending.pop(0)
        grants[key] = min(count, share, budget)
        budget -= grants[key]
    return grants


class Speculation:
    """One sequence's speculation: what it drafts from (its prompt and output), how long, how it fared."""

    def __init__(self, prompt: list[int]):
        self._lookup = PromptLookup(prompt)
        self._length = DraftLength()
        self._acceptance = Acceptance()
        self.num_drafted = 0
        self.num_accepted = 0

    def propose(self, limit: int, token_cost: float = 0.0) -> list[int]:
        """This step's draft: at most `limit` tokens (the room left in the request and its context), and
        only as many as pay for themselves when a verified token costs `token_cost` decode tokens
        (backends/draft_policy.py)."""
        self._acceptance.next_step()
        length = min(self._length.next_length(), limit)
        length = paying_length(self._acceptance.rate, token_cost, length)
        return self._lookup.draft(length) if length > 0 else []

    def record(self, drafted: list[int], emitted: list[int]) -> int:
        """The step's outcome: the tokens emitted (all of them go into the lookup); returns how many
        drafted tokens were accepted."""
        num_accepted = accepted_run(drafted, emitted)
        self._lookup.extend(emitted)
        self._length.record(len(drafted), num_accepted)
        self._acceptance.record(len(drafted), num_accepted)
        self.num_drafted += len(drafted)
        self.num_accepted += num_accepted
        return num_accepted
