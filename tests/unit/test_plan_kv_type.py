"""The KV cache type in the plan (`--kv-type`): its memory, the default parallel count, refusals, the report."""
from __future__ import annotations

from dataclasses import replace

import pytest
from machines import load_machine

from serve.config import PlanChoices, resolve_config
from serve.errors import ConfigError
from serve.models.catalog import load_catalog, resolve_model
from serve.placement.footprint import gguf_footprint
from serve.placement.hardware import GiB
from serve.placement.plan import make_plan
from serve.placement.report import format_report, hardware_report
from test_plan import GGUF_ONLY, MISTRAL_7B_AWQ, _cuda_box, _mentions


@pytest.fixture(scope="module")
def smollm2():
    return resolve_model(None, load_catalog())


def test_f16_is_the_llamacpp_default(smollm2):
    chosen = make_plan(load_machine("avx512-amx-m7i"), smollm2)
    assert chosen.settings.kv_cache_dtype == "f16"
    assert chosen.settings.num_parallel == 8
    assert chosen.kv_cache_bytes == gguf_footprint(smollm2).kv_bytes_per_token * 4096 * 8


@pytest.mark.parametrize("kv_type, bits, num_parallel", [("q8_0", 8.5, 16), ("q4_0", 4.5, 32)])
def test_a_quantized_kv_cache_takes_less_memory_and_runs_more_sequences(smollm2, kv_type, bits, num_parallel):
    chosen = make_plan(load_machine("avx512-amx-m7i"), smollm2, PlanChoices(kv_type=kv_type))
    f16_per_token = gguf_footprint(smollm2).kv_bytes_per_token
    assert chosen.settings.kv_cache_dtype == kv_type
    assert chosen.settings.num_parallel == num_parallel
    assert chosen.kv_cache_bytes == int(f16_per_token * bits / 16) * 4096 * num_parallel
    assert _mentions(chosen, f"KV cache {kv_type} as asked", f"{bits:g} bits a value")


def test_q8_0_holds_twice_the_sequences_when_ram_is_what_limits():
    graviton = load_machine("graviton3-c7g")
    small_ram = replace(graviton, memory=replace(graviton.memory, available_bytes=10 * GiB))
    f16 = make_plan(small_ram, MISTRAL_7B_AWQ, PlanChoices(context_length=8192))
    q8 = make_plan(small_ram, MISTRAL_7B_AWQ, PlanChoices(context_length=8192, kv_type="q8_0"))
    assert (f16.settings.num_parallel, q8.settings.num_parallel) == (2, 3)  # 8.5 bits: just short of 4
    q4 = make_plan(small_ram, MISTRAL_7B_AWQ, PlanChoices(context_length=8192, kv_type="q4_0"))
    assert q4.settings.num_parallel == 7
    for chosen in (f16, q8, q4):  # each within the same budget: half the RAM beyond the weights
        assert chosen.kv_cache_bytes <= (10 * GiB - chosen.weights_bytes) * 0.5


def test_an_explicit_parallel_count_is_checked_against_the_smaller_cache():
    hw = load_machine("avx512-amx-m7i")
    with pytest.raises(ConfigError, match="KV cache"):
        make_plan(hw, MISTRAL_7B_AWQ, PlanChoices(context_length=32768, num_parallel=12))
    chosen = make_plan(hw, MISTRAL_7B_AWQ, PlanChoices(context_length=32768, num_parallel=12, kv_type="q4_0"))
    assert chosen.settings.num_parallel == 12  # 18 GiB at q4_0, 66 GiB at f16


def test_a_kv_type_the_backend_lacks_is_refused_with_its_alternative(smollm2):
    cpu = load_machine("avx512-amx-m7i", has_vllm=True)
    with pytest.raises(ConfigError, match="llama.cpp has no fp8 KV cache; its 8-bit one is q8_0"):
        make_plan(cpu, smollm2, PlanChoices(kv_type="fp8"))
    with pytest.raises(ConfigError, match=r"vLLM has no q8_0 KV cache; its 8-bit one is fp8 \(--kv-type fp8\)"):
        make_plan(cpu, smollm2, PlanChoices(backend="vllm", kv_type="q8_0"))
    with pytest.raises(ConfigError, match="unknown KV cache type 'q5_1'"):
        PlanChoices(kv_type="q5_1")


def test_vllm_takes_fp8_and_the_auto_plan_leaves_llamacpp_types_to_llamacpp(smollm2):
    chosen = make_plan(_cuda_box(), MISTRAL_7B_AWQ, PlanChoices(kv_type="fp8"))
    assert (chosen.backend, chosen.settings.kv_cache_dtype) == ("vllm", "fp8")
    assert _mentions(chosen, "KV cache fp8 as asked")
    f16 = make_plan(_cuda_box(), MISTRAL_7B_AWQ)
    assert f16.settings.kv_cache_dtype == "auto"
    assert chosen.kv_cache_bytes == f16.kv_cache_bytes  # the same room ...
    assert _mentions(chosen, "KV cache room for about") and "fp8" in " ".join(chosen.reasons)
    q8 = make_plan(_cuda_box(), MISTRAL_7B_AWQ, PlanChoices(kv_type="q8_0"))  # ... llama.cpp's type: llama.cpp
    assert (q8.backend, q8.settings.kv_cache_dtype) == ("llamacpp", "q8_0")
    assert _mentions(q8, "--kv-type q8_0 is llama.cpp's")
    cpu_vllm = make_plan(load_machine("avx512-amx-m7i", has_vllm=True), smollm2,
                         PlanChoices(backend="vllm", kv_type="fp8"))
    assert (cpu_vllm.settings.kv_cache_dtype, cpu_vllm.settings.num_parallel) == ("fp8", 16)


def test_fp8_doubles_the_tokens_vllm_can_hold_on_a_gpu():
    def capacity(chosen) -> int:
        reason = next(r for r in chosen.reasons if r.startswith("KV cache room for about"))
        return int(reason.split()[5].replace(",", ""))
    assert capacity(make_plan(_cuda_box(), MISTRAL_7B_AWQ, PlanChoices(kv_type="fp8"))) == pytest.approx(
        2 * capacity(make_plan(_cuda_box(), MISTRAL_7B_AWQ)), rel=0.01)


def test_probe_shows_the_kv_type(smollm2):
    report = hardware_report(load_machine("avx512-amx-m7i"), make_plan(load_machine("avx512-amx-m7i"), smollm2,
                                                                         PlanChoices(kv_type="q8_0")))
    assert report["plan"]["kv_cache_dtype"] == "q8_0"
    assert "KV cache q8_0" in format_report(report)
    assert "parallel sequences 16" in format_report(report)


def test_kv_type_from_flags_env_and_file_is_lowercased(tmp_path):
    assert resolve_config({"kv_type": "Q8_0"}, environ={}, config_file=tmp_path / "none").plan_choices.kv_type == "q8_0"
    assert resolve_config({}, environ={"SERVE_KV_TYPE": "q4_0"},
                          config_file=tmp_path / "none").plan_choices.kv_type == "q4_0"
    with pytest.raises(ConfigError, match="unknown KV cache type"):
        resolve_config({"kv_type": "int3"}, environ={}, config_file=tmp_path / "none")


def test_gguf_only_models_take_llamacpp_kv_types_on_a_gpu_box():
    chosen = make_plan(_cuda_box(), GGUF_ONLY, PlanChoices(kv_type="q4_0"))
    assert (chosen.backend, chosen.device, chosen.settings.kv_cache_dtype) == ("llamacpp", "cuda", "q4_0")
