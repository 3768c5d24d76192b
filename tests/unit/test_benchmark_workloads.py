"""The benchmark code that has logic: the chat workloads' inputs, the draft and cache counts, the server
variants, the model shapes, the comparisons. No server runs here (the benchmarks themselves do that)."""
import math

import pytest

from benchmarks import conversations
from benchmarks.chat_load import cached_tokens, parse_draft_counters
from benchmarks.loadgen import RequestResult, _record_chunk, median_of_runs, summarize
from benchmarks.peers import ServerSettings, server_command, variant_flags
from benchmarks.run import cpu_cost
from benchmarks.shapes import LLAMA32_1B, QWEN25_05B, llama3_rope_freqs, tensor_shapes
from benchmarks.workloads_report import output_reference, same_output_share, with_comparisons


def test_repeated_prompts_cycle_over_a_handful_and_change_with_the_run():
    first = conversations.repeated_prompts(run_seed=1, num_requests=8)
    assert len({c.turns for c in first}) == 4
    assert [c.turns for c in first[:4]] == [c.turns for c in first[4:]]
    again = conversations.repeated_prompts(run_seed=2, num_requests=8)
    assert not {c.turns for c in first} & {c.turns for c in again}


def test_shared_system_prompt_is_shared_within_a_run_and_questions_are_not():
    chats = conversations.shared_system_prompt(run_seed=3, num_requests=16)
    assert len({c.system for c in chats}) == 1
    assert len({c.turns for c in chats}) == 16
    assert 180 < len(chats[0].system.split()) < 300  # ~300 tokens
    assert chats[0].system != conversations.shared_system_prompt(run_seed=4, num_requests=1)[0].system


def test_multi_turn_conversations_have_their_turns_and_output_lengths():
    chats = conversations.multi_turn(run_seed=5, num_conversations=3, num_turns=4, max_tokens=32)
    assert [len(c.turns) for c in chats] == [4, 4, 4]
    assert all(c.max_tokens == (32,) * 4 for c in chats)
    assert len({turn for c in chats for turn in c.turns}) == 12


def test_a_conversation_needs_one_output_length_per_turn():
    with pytest.raises(ValueError):
        conversations.Conversation("x", ("a", "b"), (64,))


def test_grounded_passages_have_the_asked_lengths_tasks_and_outputs(smollm2_gguf):
    chats = conversations.grounded(smollm2_gguf, run_seed=6, num_requests=4)
    lengths = [conversations.count_tokens(smollm2_gguf, c.turns[0]) for c in chats]
    assert [500 <= n < 650 for n in lengths[:1]] == [True]
    assert 1500 <= lengths[3] < 1700
    assert [c.max_tokens[0] for c in chats] == [128, 192, 256, 320]
    assert [c.label for c in chats[:3]] == ["grounded-copy", "grounded-quote", "grounded-rewrite"]
    assert chats == conversations.grounded(smollm2_gguf, run_seed=6, num_requests=4)  # deterministic


def test_build_overrides_output_lengths_for_validation_runs(smollm2_gguf):
    for workload in conversations.WORKLOAD_NAMES:
        chats = conversations.build(workload, smollm2_gguf, 9, 2, max_tokens=8)
        assert {n for c in chats for n in c.max_tokens} == {8}
    with pytest.raises(ValueError, match="unknown workload"):
        conversations.build("nope", smollm2_gguf, 1, 1)


@pytest.fixture(scope="module")
def smollm2_gguf() -> str:
    from serve.models.catalog import embedded_model_path
    return str(embedded_model_path())


def test_chat_stream_role_chunk_is_not_a_token_and_timings_and_usage_are_kept():
    result = RequestResult("chat", 2, 0)
    _record_chunk(result, {"choices": [{"delta": {"role": "assistant", "content": None}, "finish_reason": None}]}, 1.0)
    _record_chunk(result, {"choices": [{"delta": {"content": "Hi"}, "finish_reason": None}]}, 1.1)
    _record_chunk(result, {"choices": [{"delta": {"content": " there"}, "finish_reason": None}]}, 1.2)
    _record_chunk(result, {"choices": [{"delta": {}, "finish_reason": "length"}],
                           "timings": {"draft_n": 10, "draft_n_accepted": 7}}, 1.3)
    tokens = _record_chunk(result, {"choices": [], "usage": {"completion_tokens": 2, "prompt_tokens": 9}}, 1.3)
    assert result.token_times == [1.1, 1.2]
    assert result.text == "Hi there"
    assert result.timings["draft_n"] == 10 and tokens == 2 and result.usage["prompt_tokens"] == 9


def _done(timings=None, usage=None) -> RequestResult:
    result = RequestResult("x", 2, 5, success=True, ttft=0.1, latency=0.3, token_times=[0.1, 0.2],
                           num_output_tokens=2, output_token_source="usage")
    result.timings, result.usage = timings or {}, usage or {}
    return result


def test_draft_counts_come_from_llama_server_timings_or_openai_prediction_details():
    summary = summarize([_done({"draft_n": 10, "draft_n_accepted": 6}), _done({"draft_n": 4, "draft_n_accepted": 4})], 1.0)
    assert (summary["draft_tokens"], summary["draft_tokens_accepted"]) == (14, 10)
    details = {"completion_tokens_details": {"accepted_prediction_tokens": 3, "rejected_prediction_tokens": 2}}
    summary = summarize([_done(usage=details)], 1.0)
    assert (summary["draft_tokens"], summary["draft_tokens_accepted"]) == (5, 3)
    assert "draft_tokens" not in summarize([_done()], 1.0)


def test_draft_counts_add_up_over_runs_even_when_a_run_lacks_them():
    runs = [{"output_throughput": 1.0, "draft_tokens": 10, "draft_tokens_accepted": 5},
            {"output_throughput": 2.0, "draft_tokens": 6, "draft_tokens_accepted": 1},
            {"output_throughput": 3.0}]
    combined = median_of_runs(runs)
    assert (combined["draft_tokens"], combined["draft_tokens_accepted"]) == (16, 6)


def test_metrics_page_draft_counters_are_summed_by_name():
    page = """# HELP quantserve_spec_draft_tokens_total Drafted tokens
# TYPE quantserve_spec_draft_tokens_total counter
quantserve_spec_draft_tokens_total{model="a"} 120
quantserve_spec_draft_tokens_total{model="b"} 30
quantserve_speculative_accepted_tokens_total{model="a"} 90
quantserve_spec_draft_tokens_created{model="a"} 1.7e9
quantserve_requests_total 5
"""
    assert parse_draft_counters(page) == {"drafted": 150.0, "accepted": 90.0}
    assert parse_draft_counters("quantserve_requests_total 5\n") is None


def test_quantserve_and_vllm_speculation_counters_are_read():
    """The real names (serve/runtime/metrics.py, vLLM's): the accepted counter says neither draft nor specul."""
    from serve.runtime.metrics import SPEC_ACCEPTED_TOKENS, SPEC_DRAFT_TOKENS

    page = "".join(f"{counter._name}_total{{model=\"m\"}} {value}\n"
                   for counter, value in ((SPEC_DRAFT_TOKENS, 40), (SPEC_ACCEPTED_TOKENS, 30)))
    page += "vllm:spec_decode_num_draft_tokens_total 10\nvllm:spec_decode_num_accepted_tokens_total 5\n"
    assert parse_draft_counters(page) == {"drafted": 50.0, "accepted": 35.0}


def test_cached_prompt_tokens_only_from_responses_that_report_them():
    reported = _done(usage={"prompt_tokens": 9, "prompt_tokens_details": {"cached_tokens": 6}})
    reported.num_prompt_tokens = 9
    assert cached_tokens([reported, _done()]) == {"cached_prompt_tokens": 6, "reported_prompt_tokens": 9}
    assert cached_tokens([_done()]) == {}


def test_server_variants_add_flags_after_a_plus():
    assert variant_flags("llama-server") == []
    assert variant_flags("llama-server+ngram-simple") == ["--spec-type", "ngram-simple"]
    assert variant_flags("quantserve+speculative=off,kv-type=q8_0") == ["--speculative", "off", "--kv-type", "q8_0"]
    with pytest.raises(ValueError):
        variant_flags("quantserve+ngram")
    settings = ServerSettings("m.gguf", hf_model_dir="/hf")
    command = server_command("llama-server+ngram-map-k", settings, 1234)
    assert command[-2:] == ["--spec-type", "ngram-map-k"] and "m.gguf" in command
    vllm = server_command("vllm", settings, 1234)
    assert "--enforce-eager" in vllm and "/hf" in vllm and "--disable-log-requests" not in vllm
    assert "vllm" in server_command("quantserve-vllm", settings, 1234)


def test_cpu_cost_is_per_thousand_output_tokens():
    assert cpu_cost(3.0, {"total_output_tokens": 1500}) == {"server_cpu_s": 3.0, "cpu_s_per_1k_tokens": 2.0}
    assert math.isnan(cpu_cost(3.0, {"total_output_tokens": 0})["cpu_s_per_1k_tokens"])


@pytest.mark.parametrize("shape, params", [(QWEN25_05B, 494_032_768), (LLAMA32_1B, 1_235_814_400)])
def test_shapes_have_the_real_models_parameter_counts(shape, params):
    vocab = 151936 if shape is QWEN25_05B else 128256
    tensors = tensor_shapes(shape, vocab)
    total = sum(math.prod(dims) for name, dims in tensors.items() if name != "rope_freqs.weight")
    assert total == params  # both tie the output projection to the embeddings
    assert tensors["blk.0.attn_k.weight"] == (shape.num_kv_heads * shape.head_dim, shape.hidden)


def test_llama3_rope_factors_span_one_to_the_scaling_factor():
    factors = llama3_rope_freqs(LLAMA32_1B)
    assert len(factors) == LLAMA32_1B.head_dim // 2
    assert factors[0] == 1.0 and factors[-1] == 32.0
    assert all(a <= b for a, b in zip(factors, factors[1:]))


def test_same_output_share_and_comparisons_against_llama_server():
    assert same_output_share(["a", "b", "c", "d"], ["a", "b", "x", "d"]) == 0.75
    assert same_output_share(["a"], ["a", "b"]) is None

    def level(tok_s, ttft, outputs):
        return {"concurrency": 1, "output_throughput": tok_s, "p50_ttft_ms": ttft, "cpu_s_per_1k_tokens": 2.0,
                "outputs": outputs}

    section = {"servers": {"quantserve": {"levels": [level(120.0, 50.0, ["a", "b"])]},
                           "llama-server": {"levels": [level(100.0, 100.0, ["a", "c"])]},
                           "llama-server+ngram-simple": {"levels": [level(150.0, 100.0, ["a", "c"])]}}}
    with_comparisons(section)
    ratios = {c["against"]: c["tok_s_ratio"] for c in section["comparisons"]}
    assert ratios == {"llama-server": 1.2, "llama-server+ngram-simple": 0.8}
    assert section["servers"]["quantserve"]["levels"][0]["same_output_share"] == 0.5
    assert section["servers"]["llama-server+ngram-simple"]["levels"][0]["same_output_share"] == 1.0
    assert "same_output_share" not in section["servers"]["llama-server"]["levels"][0]


def test_a_variant_is_compared_with_its_base_server_and_a_base_server_with_llama_server():
    assert output_reference("quantserve+speculative=off") == "quantserve"
    assert output_reference("llama-server+ngram-mod") == "llama-server"
    assert output_reference("quantserve") == "llama-server"
    assert output_reference("llama-server") is None
