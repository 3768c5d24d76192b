"""Draft-model speculative decoding without a model: which drafter the plan chooses and why
(serve/placement/drafter.py), the catalog's `draft` key, the per-sequence record (backends/draft_model.py),
and the `serve probe` text that names the draft."""
from __future__ import annotations

from dataclasses import replace

import pytest
from machines import load_machine

from backends.base import DRAFT_MAX_TOKENS
from backends.draft_model import DraftedSequence
from serve.config import PlanChoices
from serve.errors import ConfigError
from serve.models.catalog import load_catalog, parse_catalog, resolve_model
from serve.placement.plan import make_plan
from serve.placement.report import format_report, hardware_report

ENTRY = """
[models.big]
gguf = { repo = "org/big-GGUF", quant = "F16" }
context_length = 8192
num_params = 1000
license = "apache-2.0"
download_bytes = 1000
"""


@pytest.fixture(scope="module")
def smollm2():
    return resolve_model(None, load_catalog())


@pytest.fixture(scope="module")
def machine():
    return load_machine("avx512-amx-m7i", has_vllm=True)


def test_a_draft_model_chooses_draft_speculation_and_says_why(machine, smollm2):
    plan = make_plan(machine, smollm2, PlanChoices(draft_model="small.gguf"))
    assert plan.settings.speculative == "draft" and plan.draft_model == "small.gguf"
    assert any("the draft model small.gguf (from --draft-model)" in r and "chosen because --draft-model" in r
               for r in plan.reasons)
    text = format_report(hardware_report(machine, plan))
    assert "speculative draft (draft model small.gguf)" in text
    assert hardware_report(machine, plan)["plan"]["draft_model"] == "small.gguf"
    assert plan.settings.draft_max_tokens == DRAFT_MAX_TOKENS and "drafts up to 8 tokens a step" in text
    longer = make_plan(machine, smollm2, PlanChoices(draft_model="small.gguf", draft_max_tokens=16))
    assert longer.settings.draft_max_tokens == 16
    with pytest.raises(ConfigError, match="draft_max_tokens must be positive"):
        PlanChoices(draft_max_tokens=0)


def test_a_catalog_entry_may_name_its_draft(machine, smollm2):
    plan = make_plan(machine, replace(smollm2, draft="tiny-q4"))
    assert plan.settings.speculative == "draft" and plan.draft_model == "tiny-q4"
    assert any("(from its catalog entry)" in reason for reason in plan.reasons)
    # --speculative ngram or off wins over the catalog's draft; --draft-model wins over the catalog's
    assert make_plan(machine, replace(smollm2, draft="tiny-q4"), PlanChoices(speculative="off")).draft_model is None
    asked = make_plan(machine, replace(smollm2, draft="tiny-q4"), PlanChoices(draft_model="other.gguf"))
    assert asked.draft_model == "other.gguf"


def test_contradictory_choices_are_refused_in_one_line(machine, smollm2):
    with pytest.raises(ConfigError, match="--speculative draft needs a draft model: give --draft-model MODEL"):
        make_plan(machine, smollm2, PlanChoices(speculative="draft"))
    with pytest.raises(ConfigError, match="--draft-model is used only with --speculative draft"):
        make_plan(machine, smollm2, PlanChoices(speculative="ngram", draft_model="small.gguf"))


@pytest.mark.parametrize("asked, flag", [
    (PlanChoices(backend="vllm", speculative="ngram"), "--speculative ngram is llama.cpp's"),
    (PlanChoices(backend="vllm", draft_model="small.gguf"), "--draft-model and --draft-max are llama.cpp's"),
    (PlanChoices(backend="vllm", draft_max_tokens=4), "--draft-model and --draft-max are llama.cpp's")])
def test_speculation_asked_of_vllm_is_refused_not_ignored(machine, smollm2, asked, flag):
    with pytest.raises(ConfigError, match=f"{flag}.*use --backend llamacpp"):
        make_plan(machine, smollm2, asked)
    assert make_plan(machine, smollm2, PlanChoices(backend="vllm", speculative="off")).backend == "vllm"


def test_speculation_asked_for_leaves_the_auto_plan_on_llamacpp(smollm2):
    from test_plan import MISTRAL_7B_AWQ, _cuda_box, _mentions

    chosen = make_plan(_cuda_box(), MISTRAL_7B_AWQ, PlanChoices(speculative="ngram"))
    assert chosen.backend == "llamacpp" and _mentions(chosen, "--speculative ngram is llama.cpp's")
    assert make_plan(_cuda_box(), MISTRAL_7B_AWQ).backend == "vllm"


def test_the_catalog_draft_key_is_checked():
    assert parse_catalog(ENTRY + 'draft = "small"\n').get("big").draft == "small"
    assert parse_catalog(ENTRY).get("big").draft is None
    for bad, message in (('draft = 3\n', "draft must be a string"), ('draft = "big"\n', "not itself")):
        with pytest.raises(ConfigError, match=message):
            parse_catalog(ENTRY + bad, "user.toml")


def test_a_drafted_sequence_counts_and_backs_off_after_failing_drafts():
    sequence = DraftedSequence(DRAFT_MAX_TOKENS)
    assert sequence.wanted(room=100) == DRAFT_MAX_TOKENS and sequence.wanted(room=3) == 3
    assert sequence.wanted(room=-1) == 0
    assert sequence.record([5, 6, 7], [5, 6, 9]) == 2
    assert (sequence.num_drafted, sequence.num_accepted) == (3, 2)
    assert sequence.wanted(room=100) == 3  # one more than was accepted
    for _ in range(2):
        sequence.record([1], [2])  # nothing accepted, twice: drafting pauses
    assert sequence.wanted(room=100) == 0


def test_the_draft_model_s_weights_and_kv_cache_count_in_the_memory_estimate(machine, smollm2):
    """The draft's context is shaped like the model's: its KV cache holds every sequence's context too, in
    the model's KV type. SmolLM2-135M: 30 layers x 3 KV heads x (64 + 64) x 2 bytes = 22.5 KiB a token."""
    catalog = load_catalog()
    draft_file = smollm2.gguf.local_path
    resolve = lambda name: resolve_model(name, catalog)  # noqa: E731 - what `serve probe` passes
    without = make_plan(machine, smollm2, PlanChoices(num_parallel=4, context_length=2048))
    plan = make_plan(machine, smollm2, PlanChoices(num_parallel=4, context_length=2048, draft_model=str(draft_file)),
                     resolve)
    draft_kv = 30 * 3 * (64 + 64) * 2 * 2048 * 4
    assert plan.draft_weights_bytes == draft_file.stat().st_size and plan.draft_kv_cache_bytes == draft_kv
    assert plan.weights_bytes == without.weights_bytes + plan.draft_weights_bytes
    assert plan.kv_cache_bytes == without.kv_cache_bytes + draft_kv
    assert any("the draft model adds its weights" in r and "22.5 KiB a token" in r for r in plan.reasons)
    report = hardware_report(machine, plan)
    assert report["plan"]["draft_kv_cache_bytes"] == draft_kv
    assert "(of which the draft model: weights 94 MiB, KV cache 180 MiB)" in format_report(report)
    quantized = make_plan(machine, smollm2, PlanChoices(num_parallel=4, context_length=2048, kv_type="q8_0",
                                                       draft_model=str(draft_file)), resolve)
    assert quantized.draft_kv_cache_bytes == int(30 * 3 * 128 * 2 * 8.5 / 16) * 2048 * 4  # the model's KV type
    # without a resolver (or before a Hub draft is downloaded) the size is unknown, and the plan says so
    unknown = make_plan(machine, smollm2, PlanChoices(draft_model="small.gguf"))
    assert unknown.draft_weights_bytes == 0 and any("leaves it out" in r for r in unknown.reasons)


def test_the_default_parallel_count_makes_room_for_the_draft_s_kv_cache(smollm2):
    """On a machine with little free RAM, the draft's KV cache takes room the model's sequences had."""
    small = load_machine("avx512-amx-m7i")
    small = replace(small, memory=replace(small.memory, available_bytes=int(2.5 * 2**30)))
    catalog = load_catalog()
    alone = make_plan(small, smollm2)
    drafted = make_plan(small, smollm2, PlanChoices(draft_model=str(smollm2.gguf.local_path)),
                        lambda name: resolve_model(name, catalog))
    assert alone.settings.num_parallel == 8 and drafted.settings.num_parallel == 5
