"""When a draft pays: how many tokens a sequence may draft in a step, from what verifying costs at the
step's load and how often the sequence's drafts are accepted.

The cost. Verifying a draft token means computing it, with logits, in the step's llama_decode, and
sampling it. An accepted token saves producing it later, which costs the step's time per decoded
token, T(n, 0) / n with n sequences decoding. So a draft token is worth its cost when the probability
that it is accepted exceeds

    cost(n) = (T(n, 1 more token) - T(n, 0)) / (T(n, 0) / n)        (in decode tokens)

At one stream a decode step is bound by reading the weights, and an extra token costs a fraction of one;
with many streams the step is compute bound and an extra token costs nearly a whole decoded one (on a
2-core CPU; on a GPU the step stays memory bound far longer). `MEASURED_TOKEN_COST` is that cost from
benchmarks/draft_step_cost.py on this repository's 2-core machine (SmolLM2-135M Q4_1). From 8 streams
on it is above one decoded token: no draft pays there, whatever its acceptance rate.

The gain. Drafted tokens are accepted in a run: the k-th is accepted only if the k-1 before it were. With
`rate` the chance that a drafted token is accepted after its predecessor was, the k-th is accepted with
probability rate**k, so the draft pays up to the largest k with rate**k > cost(n) (vLLM's and llama.cpp's
n-gram drafters use a fixed length instead; llama-server drafts per slot whenever the room left allows
at least n_min tokens, whatever the load). `Acceptance` estimates a sequence's rate from its own
drafts, the latest weighing most, starting from a prior.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

# (sequences decoding in the step, cost of one verified draft token in decode tokens of that step):
# the wall time of an 8-token draft over 8, with the server's two threads on the idle machine
# (`python -m benchmarks.draft_step_cost --threads 2 --rounds 3 --steps 8 --drafts 0,1,2,4,8 --placement
# one --prompt-tokens 128`, benchmarks/results/draft_step_cost_2threads_quiet.json). A single draft token
# costs more (0.76 at one stream: a step of one token runs matrix-vector products, of two matrix-matrix
# ones). Between two rows the cost is interpolated, beyond the last it stays.
MEASURED_TOKEN_COST = ((1, 0.49), (2, 0.60), (4, 0.86), (8, 1.06), (16, 1.14))
# A new sequence's acceptance rate until its own drafts say more: drafting is tried where it is cheap
# (few streams) and not where a failing draft would cost most of a decoded token.
PRIOR_RATE, PRIOR_WEIGHT = 0.7, 2.0
# How fast a sequence's estimate forgets: every step, its counts move this much of the way back to the
# prior's (about the last ten steps count). A sequence whose drafts failed is thus tried again after a
# while (its first drafts may fail on a preamble before it starts to copy), and one that stops copying
# stops drafting.
STEP_DECAY = 0.9


def token_cost(num_decoding: int, table: tuple[tuple[int, float], ...] = MEASURED_TOKEN_COST) -> float:
    """What verifying one more draft token costs a step with `num_decoding` sequences, in decode tokens."""
    if num_decoding <= table[0][0]:
        return table[0][1]
    for (n_low, cost_low), (n_high, cost_high) in zip(table, table[1:]):
        if num_decoding <= n_high:
            return cost_low + (cost_high - cost_low) * (num_decoding - n_low) / (n_high - n_low)
    return table[-1][1]


def paying_length(rate: float, cost: float, limit: int) -> int:
    """The longest draft, up to `limit`, whose last token is still accepted with a probability above
    `cost`: the largest k with rate**k > cost."""
    if limit <= 0 or rate <= cost or rate <= 0.0:
        return 0
    if rate >= 1.0 or cost <= 0.0:
        return limit
    return min(limit, max(math.ceil(math.log(cost) / math.log(rate)) - 1, 1))


@dataclass
class Acceptance:
    """A sequence's chance that a drafted token is accepted once the one before it was: accepted tokens
    over accepted tokens plus rejections (drafts cut short), the latest steps weighing most, with a prior."""

    accepted: float = PRIOR_RATE * PRIOR_WEIGHT
    rejected: float = (1.0 - PRIOR_RATE) * PRIOR_WEIGHT

    @property
    def rate(self) -> float:
        return self.accepted / (self.accepted + self.rejected)

    def next_step(self) -> None:
        """A step passed: older evidence weighs less, and the prior more."""
        self.accepted = self.accepted * STEP_DECAY + PRIOR_RATE * PRIOR_WEIGHT * (1 - STEP_DECAY)
        self.rejected = self.rejected * STEP_DECAY + (1 - PRIOR_RATE) * PRIOR_WEIGHT * (1 - STEP_DECAY)

    def record(self, num_drafted: int, num_accepted: int) -> None:
        if num_drafted > 0:
            self.accepted += num_accepted
            self.rejected += 1 if num_accepted < num_drafted else 0


# Draft-model speculation (backends/draft_model.py): a drafted token costs a draft-model decode besides
# its verification, and both are measured as the server runs, as moving averages of the latest steps:
# - a draft decode's wall time against a plain target decode step's (one token per sequence in both, no
#   draft verified). A 135M Q4_1 draft costs about what a 135M F16 target does (the steps' fixed costs
#   dominate: ratio ~1), so no draft pays there; drafting for a 1B target costs a fraction of a decode;
# - what verifying costs this model: MEASURED_TOKEN_COST (SmolLM2-135M Q4_1) scaled by what the drafted
#   steps show, (T(n, d) / T(n, 0) - 1) * n / d. A 1B F16 target verifies 8 drafts for 0.38 decode tokens
#   (benchmarks/draft_step_cost.py --model padded-1b), far below the table's 0.49 for each one.
COST_WEIGHT = 0.2  # weight of the latest measurement in each moving average
PROBE_EVERY_STEPS = 64  # while no draft pays, one step in this many drafts anyway, to measure again
PLAIN_EVERY_STEPS = 64  # while every step drafts, one in this many drafts nothing, to time a plain step


@dataclass
class DraftModelCost:
    """What one drafted token costs, in decode tokens of the step: verifying it plus producing it (a
    draft decode against a plain target decode step), from the steps' measured wall times."""

    counts_draft: bool = True  # False (--speculative draft): no cost counts, every step drafts (llama-server's way)
    draft_seconds: float | None = None  # a draft decode of one token per drafting sequence
    target_seconds: float | None = None  # a target decode step of one token per sequence, no draft
    verify_scale: float = 1.0  # this model's verification cost over MEASURED_TOKEN_COST's
    steps_since_draft: int = 0
    # The first decode step is plain: the target's own time, measured before any verification is judged.
    steps_since_plain: int = PLAIN_EVERY_STEPS

    def observe_draft(self, seconds: float) -> None:
        self.draft_seconds = _average(self.draft_seconds, seconds)

    def observe_target(self, seconds: float, num_decoding: int, num_drafted: int) -> None:
        """A decode step's wall time, with `num_drafted` draft tokens verified in it: a plain step times
        the target's decode; a drafted one, against it, what verifying cost."""
        if num_decoding <= 0:
            return
        if num_drafted == 0:
            self.target_seconds = _average(self.target_seconds, seconds)
            self.steps_since_draft, self.steps_since_plain = self.steps_since_draft + 1, 0
            return
        self.steps_since_draft, self.steps_since_plain = 0, self.steps_since_plain + 1
        table = token_cost(num_decoding)
        if self.target_seconds is None:  # (a plain step comes first; backing it out of this one with the
            return                       # 135M table undercounted a 1B target's decode 3-fold and stopped drafting)
        measured = max(seconds / self.target_seconds - 1, 0.0) * num_decoding / num_drafted
        self.verify_scale = _average(self.verify_scale, measured / table)

    def ratio(self) -> float:
        """A draft decode's cost in target decodes (0 until both are measured: try drafting first)."""
        if not self.counts_draft or not self.draft_seconds or not self.target_seconds:
            return 0.0
        return self.draft_seconds / self.target_seconds

    def verify_cost(self, num_decoding: int) -> float:
        return token_cost(num_decoding) * self.verify_scale

    def token_cost(self, num_decoding: int) -> float:
        """What one more drafted token costs the step: verifying it and drafting it. After
        PROBE_EVERY_STEPS steps without a draft, only verifying it: a probe, so that the draft's cost is
        measured again (the load, and so both costs, may have changed)."""
        if not self.counts_draft:
            return 0.0
        probing = self.steps_since_draft >= PROBE_EVERY_STEPS
        return self.verify_cost(num_decoding) + (0.0 if probing else self.ratio())

    def drafting_pays(self, num_decoding: int) -> bool:
        """Whether this step should draft: not while even a token accepted for sure would cost more than
        it saves (a draft model about as slow as its target), nor on the plain step that, once in
        PLAIN_EVERY_STEPS, times the target's own decode."""
        if not self.counts_draft:
            return True
        if self.steps_since_plain >= PLAIN_EVERY_STEPS:
            return False
        return self.token_cost(num_decoding) < 1.0


def _average(old: float | None, new: float) -> float:
    return new if old is None else old + COST_WEIGHT * (new - old)
