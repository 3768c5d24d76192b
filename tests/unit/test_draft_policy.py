"""When a draft pays (backends/draft_policy.py): the cost of a verified token at a load, the longest draft
that pays at an acceptance rate, a sequence's acceptance estimate; and Speculation drafting only what pays;
for a draft model, a drafted token's cost with its draft decode (DraftModelCost, fed fake timings).
The cost tables here are fakes (FAKE_COSTS), not measurements."""
import pytest

from backends.draft_model import DraftedSequence
from backends.draft_policy import (MEASURED_TOKEN_COST, PLAIN_EVERY_STEPS, PRIOR_RATE, PROBE_EVERY_STEPS, Acceptance,
                                   DraftModelCost, paying_length, token_cost)
from backends.speculative import Speculation

FAKE_COSTS = ((1, 0.2), (4, 0.5), (8, 0.9))


def test_token_cost_is_interpolated_between_measured_loads_and_held_beyond():
    assert token_cost(1, FAKE_COSTS) == 0.2
    assert token_cost(0, FAKE_COSTS) == 0.2
    assert token_cost(2, FAKE_COSTS) == pytest.approx(0.3)
    assert token_cost(6, FAKE_COSTS) == pytest.approx(0.7)
    assert token_cost(8, FAKE_COSTS) == 0.9 and token_cost(64, FAKE_COSTS) == 0.9


def test_the_measured_cost_grows_with_the_load():
    costs = [token_cost(n) for n in range(1, 33)]
    assert costs == sorted(costs) and 0 < costs[0] < costs[-1]


def test_a_draft_pays_up_to_the_last_token_accepted_more_often_than_it_costs():
    # 0.9**11 = 0.31 > 0.3 > 0.9**12 = 0.28: eleven tokens pay at a cost of 0.3 decode tokens each.
    assert paying_length(0.9, 0.3, limit=16) == 11
    assert paying_length(0.9, 0.3, limit=4) == 4
    assert paying_length(0.9, 0.85, limit=16) == 1  # only the first token is accepted often enough
    assert paying_length(0.8, 0.85, limit=16) == 0  # not even that: a busy step drafts nothing
    assert paying_length(0.5, 0.5, limit=16) == 0
    assert paying_length(1.0, 0.9, limit=7) == 7 and paying_length(0.3, 0.0, limit=7) == 7
    assert paying_length(0.99, 0.1, limit=0) == 0


def test_acceptance_starts_at_the_prior_and_follows_the_drafts():
    acceptance = Acceptance()
    assert acceptance.rate == pytest.approx(PRIOR_RATE)
    acceptance.record(8, 8)  # a whole draft accepted: no rejection
    assert acceptance.rate > 0.9
    failing = Acceptance()
    for _ in range(3):
        failing.record(4, 0)  # each draft rejected at its first token
    assert failing.rate < 0.4
    unchanged = Acceptance()
    unchanged.record(0, 0)
    assert unchanged.rate == pytest.approx(PRIOR_RATE)


def test_acceptance_forgets_old_drafts_and_returns_to_the_prior():
    acceptance = Acceptance()
    for _ in range(10):
        acceptance.next_step()
        acceptance.record(8, 8)
    copying = acceptance.rate
    assert copying > 0.95
    for _ in range(3):
        acceptance.next_step()
        acceptance.record(2, 0)
    assert acceptance.rate < copying - 0.03
    for _ in range(80):  # steps without drafts
        acceptance.next_step()
    assert acceptance.rate == pytest.approx(PRIOR_RATE, abs=0.02)


def test_a_sequence_whose_first_drafts_failed_drafts_again_later():
    acceptance = Acceptance()
    for _ in range(2):
        acceptance.next_step()
        acceptance.record(3, 0)
    cost = 0.5  # a step of a few streams
    assert paying_length(acceptance.rate, cost, limit=4) == 0
    for _ in range(20):
        acceptance.next_step()
    assert paying_length(acceptance.rate, cost, limit=4) > 0


def test_speculation_drafts_only_what_pays_at_the_load():
    prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9] * 2 + [1, 2, 3]  # the output copies the cycle: drafts keep matching
    cheap, dear = token_cost(1, FAKE_COSTS), token_cost(8, FAKE_COSTS)
    assert Speculation(prompt).propose(limit=16, token_cost=cheap) == [4, 5, 6, 7]  # DRAFT_START tokens
    assert Speculation(prompt).propose(limit=16, token_cost=dear) == []  # the prior rate 0.7 < 0.9
    copying = Speculation(prompt)
    for _ in range(4):  # drafts accepted whole make the sequence's rate high enough for a busy step
        draft = copying.propose(limit=16, token_cost=cheap)
        copying.record(draft, draft)
    assert copying.propose(limit=16, token_cost=dear) != []


# --- draft-model speculation: a drafted token also costs a draft decode, measured as the server runs ------

def test_a_draft_model_s_token_costs_its_verification_plus_a_draft_decode_against_a_target_step():
    cost = DraftModelCost()
    assert cost.ratio() == 0.0 and cost.token_cost(1) == token_cost(1)  # unmeasured: try drafting
    cost.observe_target(0.100, num_decoding=1, num_drafted=0)
    cost.observe_draft(0.010)
    assert cost.ratio() == pytest.approx(0.1)
    assert cost.token_cost(1) == pytest.approx(token_cost(1) + 0.1) and cost.drafting_pays(1)
    # a step that verified 4 drafts took longer: as long as the table says, or (a 1B F16 target) less
    steady = DraftModelCost(draft_seconds=0.010, target_seconds=0.100)
    steady.observe_target(0.100 * (1 + token_cost(1) * 4), num_decoding=1, num_drafted=4)
    assert steady.target_seconds == pytest.approx(0.100) and steady.verify_scale == pytest.approx(1.0)
    for _ in range(30):
        steady.observe_target(0.100 * (1 + 0.05 * 4), num_decoding=1, num_drafted=4)
    assert steady.verify_cost(1) == pytest.approx(0.05, abs=0.01)
    assert steady.token_cost(1) == pytest.approx(0.05 + 0.1, abs=0.01)
    # the first decode step is plain: the target's time is measured, never guessed from a drafted step
    first = DraftModelCost()
    assert not first.drafting_pays(1)
    first.observe_target(0.100 * (1 + token_cost(1) * 4), num_decoding=1, num_drafted=4)
    assert first.target_seconds is None
    first.observe_target(0.300, num_decoding=1, num_drafted=0)
    assert first.target_seconds == pytest.approx(0.300) and first.drafting_pays(1)


def test_one_step_in_many_drafts_nothing_to_time_the_target_s_own_decode():
    cost = DraftModelCost(draft_seconds=0.010, target_seconds=0.100, steps_since_plain=0)  # just timed
    for _ in range(PLAIN_EVERY_STEPS - 1):
        cost.observe_target(0.120, num_decoding=1, num_drafted=4)
    assert cost.drafting_pays(1)
    cost.observe_target(0.120, num_decoding=1, num_drafted=4)
    assert not cost.drafting_pays(1)  # this step is plain
    cost.observe_target(0.090, num_decoding=1, num_drafted=0)
    assert cost.drafting_pays(1) and cost.target_seconds == pytest.approx(0.098)
    always = DraftModelCost(counts_draft=False, steps_since_plain=PLAIN_EVERY_STEPS, verify_scale=5.0)
    assert always.drafting_pays(1) and always.token_cost(1) == 0.0  # --speculative draft: whatever it costs


def test_a_draft_as_slow_as_its_target_drafts_nothing_but_is_measured_again_now_and_then():
    cost = DraftModelCost(draft_seconds=0.010, target_seconds=0.011)  # 135M Q4_1 drafting for 135M F16
    assert not cost.drafting_pays(1)
    assert DraftedSequence(8).wanted(room=100, token_cost=cost.token_cost(1)) == 0
    for _ in range(PROBE_EVERY_STEPS):
        cost.observe_target(0.011, num_decoding=1, num_drafted=0)
    assert cost.drafting_pays(1) and cost.token_cost(1) == pytest.approx(token_cost(1))  # one probe step
    cost.observe_target(0.015, num_decoding=1, num_drafted=2)
    assert not cost.drafting_pays(1)


def test_a_drafted_sequence_drafts_what_pays_at_its_acceptance():
    cheap, dear = 0.2, 0.8
    sure = DraftedSequence(8)
    for _ in range(20):
        sure.wanted(room=100, token_cost=cheap)
        sure.record([1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 5, 6, 7, 8, 9])
    assert sure.wanted(room=100, token_cost=cheap) == 8 and sure.wanted(room=3, token_cost=cheap) == 3
    half = DraftedSequence(8)  # half of every draft accepted: a rate of about 4 / 5
    for _ in range(20):
        half.wanted(room=100, token_cost=cheap)
        half.record([1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3, 4, 0])
    assert half.wanted(room=100, token_cost=cheap) == 5  # one more than it got accepted (DraftLength)
    assert 0 < half.wanted(room=100, token_cost=0.5) < 5  # 0.8**k > 0.5 for fewer at a dearer token
    assert half.wanted(room=100, token_cost=dear) == 0
    failing = DraftedSequence(8)
    for _ in range(3):
        failing.wanted(room=100, token_cost=cheap)
        failing.record([1, 2], [3])
    assert failing.wanted(room=100, token_cost=cheap) == 0
