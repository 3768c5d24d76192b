"""The backend plan and the CUDA fit check, on recorded machines and on this one."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from machines import load_machine

from backends.base import BackendSettings
from serve.config import PlanChoices
from serve.models.catalog import GGUFSource, ModelSpec, VLLMSource, load_catalog, resolve_model
from serve.errors import ConfigError
from serve.placement.footprint import gguf_footprint, vllm_footprint
from serve.placement.hardware import GiB, probe
from serve.placement.plan import VLLM_INSTALL_HINT, make_plan

MISTRAL_7B_AWQ = ModelSpec(
    name="mistral-7b-q4",
    gguf=GGUFSource(repo="TheBloke/Mistral-7B-Instruct-v0.2-GGUF", file="mistral-7b-instruct-v0.2.Q4_K_M.gguf"),
    vllm=VLLMSource(repo="TheBloke/Mistral-7B-Instruct-v0.2-AWQ", quantization="awq"),
    context_length=32768, num_params=7_241_732_096, download_bytes=4_368_439_584)
LLAMA_70B = ModelSpec(  # a 16-bit vLLM source: FP8 on the fly where the GPU has it
    name="llama3.1-70b",
    gguf=GGUFSource(repo="bartowski/Meta-Llama-3.1-70B-Instruct-GGUF", quant="Q4_K_M"),
    vllm=VLLMSource(repo="meta-llama/Llama-3.1-70B-Instruct"),
    context_length=131072, num_params=70_553_706_496, download_bytes=42_520_399_584)
LLAMA_70B_AWQ = replace(LLAMA_70B, name="llama3.1-70b-awq",
                        vllm=VLLMSource(repo="hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4", quantization="awq"))
GGUF_ONLY = replace(MISTRAL_7B_AWQ, name="gguf-only", vllm=None)
VLLM_ONLY = replace(MISTRAL_7B_AWQ, name="vllm-only", gguf=None)


@pytest.fixture(scope="module")
def smollm2() -> ModelSpec:
    return resolve_model(None, load_catalog())  # the catalog's embedded SmolLM2-135M, a real GGUF file


def _cuda_box(name: str = "rtx4090-desktop", **kw):
    return load_machine(name, **{"has_vllm": True, "llama_gpu_offload": True, **kw})


def _mentions(chosen, *words: str) -> bool:
    text = " | ".join(chosen.reasons)
    return all(word in text for word in words)


# ---- 1 x 24 GB CUDA box --------------------------------------------------------------------------


def test_4090_serves_an_awq_checkpoint_with_vllm():
    chosen = make_plan(_cuda_box(), MISTRAL_7B_AWQ)
    assert (chosen.backend, chosen.device, chosen.settings.tensor_parallel_size) == ("vllm", "cuda", 1)
    assert chosen.settings.quantization is None  # vLLM reads AWQ from the checkpoint and picks Marlin itself
    assert chosen.settings.context_length == 32768  # the full context fits in 21.6 GiB
    assert chosen.settings.gpu_memory_utilization == 0.9
    assert (chosen.settings.num_parallel, chosen.settings.max_batch_tokens) == (256, 2048)
    assert _mentions(chosen, "NVIDIA GeForce RTX 4090", "AWQ", "full context")


def test_4090_quantizes_a_16_bit_checkpoint_to_fp8(smollm2):
    chosen = make_plan(_cuda_box(), smollm2)
    assert (chosen.backend, chosen.settings.quantization) == ("vllm", "fp8")
    assert _mentions(chosen, "FP8", "8.9")


def test_a10g_has_no_fp8_and_keeps_16_bits(smollm2):
    chosen = make_plan(_cuda_box("a10g-g5"), smollm2)
    assert (chosen.backend, chosen.settings.quantization) == ("vllm", None)
    assert _mentions(chosen, "FP8 needs compute capability 8.9", "8.6")


def test_4090_serves_gpt_oss_20b_in_its_own_mxfp4_with_vllm():
    gpt_oss = load_catalog().get("gpt-oss-20b")
    chosen = make_plan(_cuda_box(), gpt_oss)
    assert (chosen.backend, chosen.settings.quantization) == ("vllm", None)  # vLLM reads MXFP4 from config.json
    assert 10 * GiB < chosen.weights_bytes < 14 * GiB  # 21B parameters at ~4.25 bits, not 16


def test_4090_falls_back_to_llamacpp_when_vllm_does_not_fit():
    chosen = make_plan(_cuda_box(), LLAMA_70B_AWQ)  # ~41 GiB of AWQ weights on a 24 GB card
    assert (chosen.backend, chosen.device, chosen.settings.n_gpu_layers) == ("llamacpp", "cpu", 0)
    assert _mentions(chosen, "vLLM does not fit", "needs", "GPU 0", "not on the GPU")
    assert chosen.settings.num_threads == 16


def test_4090_without_vllm_offloads_every_layer_with_llamacpp():
    chosen = make_plan(_cuda_box(has_vllm=False), MISTRAL_7B_AWQ)
    assert (chosen.backend, chosen.device, chosen.settings.n_gpu_layers) == ("llamacpp", "cuda", -1)
    assert _mentions(chosen, "vllm is not installed", "RTX 4090")
    assert chosen.settings.num_parallel == 4  # a 7B model: 4 sequences by default
    assert chosen.settings.context_length == 4096


def test_cpu_only_llamacpp_build_on_a_gpu_box():
    chosen = make_plan(_cuda_box(has_vllm=False, llama_gpu_offload=False), MISTRAL_7B_AWQ)
    assert (chosen.device, chosen.settings.n_gpu_layers) == ("cpu", 0)
    assert _mentions(chosen, "built without CUDA", "GGML_CUDA")


def test_forced_vllm_that_does_not_fit_refuses_with_numbers():
    with pytest.raises(ConfigError) as caught:
        make_plan(_cuda_box(), LLAMA_70B_AWQ, PlanChoices(backend="vllm"))
    message = caught.value.message
    assert "needs" in message and "GiB" in message and "free on GPU 0" in message
    assert "\n" not in message


def test_a_busy_gpu_gets_a_shorter_context_or_a_refusal():
    hw = _cuda_box()
    busy = replace(hw, gpus=(replace(hw.gpus[0], vram_free_bytes=int(7.1 * GiB)),))
    chosen = make_plan(busy, MISTRAL_7B_AWQ)
    assert chosen.backend == "vllm"
    assert 2048 <= chosen.settings.context_length < 32768
    assert chosen.settings.gpu_memory_utilization < 0.3  # vLLM must not ask for more than is free
    assert _mentions(chosen, "the most that fits")
    with pytest.raises(ConfigError, match=r"needs \d+\.\d GiB .*, \d+\.\d GiB free on GPU 0"):
        make_plan(busy, MISTRAL_7B_AWQ, PlanChoices(backend="vllm", context_length=32768))
    fallback = make_plan(busy, MISTRAL_7B_AWQ, PlanChoices(context_length=32768))
    assert fallback.backend == "llamacpp" and _mentions(fallback, "vLLM does not fit")


def test_gpu_memory_utilization_beyond_the_free_memory_is_refused():
    hw = _cuda_box()
    busy = replace(hw, gpus=(replace(hw.gpus[0], vram_free_bytes=10 * GiB),))
    with pytest.raises(ConfigError, match="gpu_memory_utilization 0.9 asks for 21.6 GiB on GPU 0"):
        make_plan(busy, MISTRAL_7B_AWQ, PlanChoices(backend="vllm", gpu_memory_utilization=0.9))


# ---- 2 x 80 GB H100 box --------------------------------------------------------------------------


def test_h100_pair_splits_a_16_bit_70b_with_tensor_parallel():
    chosen = make_plan(_cuda_box("h100x2-a3"), LLAMA_70B)
    assert (chosen.backend, chosen.settings.quantization, chosen.settings.tensor_parallel_size) == ("vllm", "fp8", 2)
    assert 2048 <= chosen.settings.context_length <= 131072
    assert (chosen.settings.num_parallel, chosen.settings.max_batch_tokens) == (1024, 8192)  # vLLM's H100 defaults
    assert chosen.settings.distributed_executor_backend is None
    assert _mentions(chosen, "tensor parallel 2: it does not fit on fewer GPUs", "NVIDIA H100 80GB HBM3")


def test_h100_pair_holds_a_70b_awq_on_one_gpu():
    assert make_plan(_cuda_box("h100x2-a3"), LLAMA_70B_AWQ).settings.tensor_parallel_size == 1


def test_h100_overrides_tensor_pipeline_and_ray():
    hw = _cuda_box("h100x2-a3")
    asked = make_plan(hw, LLAMA_70B_AWQ, PlanChoices(tensor_parallel_size=2))
    assert asked.settings.tensor_parallel_size == 2 and _mentions(asked, "tensor parallel 2 as asked")
    piped = make_plan(hw, LLAMA_70B_AWQ, PlanChoices(tensor_parallel_size=1, pipeline_parallel_size=2))
    assert (piped.settings.tensor_parallel_size, piped.settings.pipeline_parallel_size) == (1, 2)
    with pytest.raises(ConfigError, match="needs 4 GPUs, 2 visible"):
        make_plan(hw, LLAMA_70B_AWQ, PlanChoices(tensor_parallel_size=4))
    ray = make_plan(hw, LLAMA_70B_AWQ, PlanChoices(tensor_parallel_size=4, ray_address="10.0.0.5:6379"))
    assert (ray.backend, ray.settings.distributed_executor_backend, ray.settings.tensor_parallel_size) == \
        ("vllm", "ray", 4)
    assert ray.settings.ray_address == "10.0.0.5:6379"  # reaches vLLM
    assert _mentions(ray, "Ray cluster at 10.0.0.5:6379", "assumed to match GPU 0")


def test_h100_pair_refuses_a_model_larger_than_both_gpus():
    huge = replace(LLAMA_70B, name="llama3.1-405b", num_params=405_000_000_000, download_bytes=0)
    with pytest.raises(ConfigError, match=r"needs \d+\.\d GiB .* free on GPUs 0, 1"):
        make_plan(_cuda_box("h100x2-a3"), huge, PlanChoices(backend="vllm"))


def test_old_gpus_are_not_for_vllm():
    hw = _cuda_box()
    pascal = replace(hw, gpus=(replace(hw.gpus[0], name="Tesla P100-PCIE-16GB", compute_capability="6.0"),))
    chosen = make_plan(pascal, MISTRAL_7B_AWQ)
    assert chosen.backend == "llamacpp" and _mentions(chosen, "compute capability 6.0", "7.0")


# ---- Apple Silicon -------------------------------------------------------------------------------


def test_m2_mac_runs_llamacpp_on_metal(smollm2):
    chosen = make_plan(load_machine("m2-mac-16gb", llama_gpu_offload=True), smollm2)
    assert (chosen.backend, chosen.device, chosen.settings.n_gpu_layers) == ("llamacpp", "metal", -1)
    assert chosen.settings.num_threads == 4 and _mentions(chosen, "4 performance cores")
    assert _mentions(chosen, "no NVIDIA GPU found, so llama.cpp with all layers on the Apple M2 GPU through Metal")
    assert chosen.settings.max_batch_tokens == 2048


def test_m2_mac_fits_a_7b_in_its_metal_working_set():
    chosen = make_plan(load_machine("m2-mac-16gb", llama_gpu_offload=True), MISTRAL_7B_AWQ)
    assert (chosen.device, chosen.settings.n_gpu_layers, chosen.settings.num_parallel) == ("metal", -1, 4)


def test_m2_mac_refuses_a_70b_with_numbers():
    with pytest.raises(ConfigError, match=r"needs \d+\.\d GiB .* the machine has 16\.0 GiB of RAM"):
        make_plan(load_machine("m2-mac-16gb", llama_gpu_offload=True), LLAMA_70B)


def test_m2_mac_without_vllm_refuses_the_vllm_backend(smollm2):
    with pytest.raises(ConfigError) as caught:
        make_plan(load_machine("m2-mac-16gb", llama_gpu_offload=True), smollm2, PlanChoices(backend="vllm"))
    assert caught.value.message == VLLM_INSTALL_HINT


# ---- CPU servers ---------------------------------------------------------------------------------


def test_avx512_server_plans_llamacpp_on_the_cpu(smollm2):
    chosen = make_plan(load_machine("avx512-amx-m7i", has_vllm=True), smollm2)
    assert (chosen.backend, chosen.device, chosen.settings.n_gpu_layers) == ("llamacpp", "cpu", 0)
    settings = chosen.settings
    assert (settings.num_threads, settings.num_parallel, settings.max_batch_tokens) == (4, 8, 2048)
    assert chosen.settings.context_length == 4096  # the catalog allows 8192; the CPU default is 4096
    assert _mentions(chosen, "no NVIDIA GPU found, so llama.cpp on the CPU", "4 physical cores: 4 threads")


def test_speculative_decoding_is_on_by_default_for_llamacpp_and_can_be_switched_off(smollm2):
    machine = load_machine("avx512-amx-m7i", has_vllm=True)
    default = make_plan(machine, smollm2)
    assert default.settings.speculative == "ngram" and _mentions(default, "speculative decoding: drafts from",
                                                                  "only where they pay at the load")
    off = make_plan(machine, smollm2, PlanChoices(speculative="off"))
    assert off.settings.speculative == "off" and _mentions(off, "speculative decoding off")


def test_cpu_vllm_when_asked_takes_a_small_share_of_ram(smollm2):
    chosen = make_plan(load_machine("avx512-amx-m7i", has_vllm=True), smollm2, PlanChoices(backend="vllm"))
    assert (chosen.backend, chosen.device, chosen.settings.quantization) == ("vllm", "cpu", None)
    assert chosen.settings.gpu_memory_utilization == 0.2
    settings = chosen.settings
    assert (settings.num_parallel, settings.max_batch_tokens, settings.context_length) == (8, 2048, 4096)
    assert _mentions(chosen, "share of RAM")


def test_graviton_plans_eight_threads(smollm2):
    chosen = make_plan(load_machine("graviton3-c7g"), smollm2)
    assert (chosen.backend, chosen.device, chosen.settings.num_threads) == ("llamacpp", "cpu", 8)


def test_parallel_sequences_are_bounded_by_ram():
    graviton = load_machine("graviton3-c7g")
    small_ram = replace(graviton, memory=replace(graviton.memory, available_bytes=10 * GiB))
    chosen = make_plan(small_ram, MISTRAL_7B_AWQ, PlanChoices(context_length=8192))
    per_sequence = gguf_footprint(MISTRAL_7B_AWQ).kv_bytes_per_token * 8192
    assert chosen.settings.context_length == 8192  # per sequence, never split between sequences
    assert chosen.settings.num_parallel == 2  # of the default 4: half the RAM beyond the weights holds two
    assert chosen.settings.num_parallel * per_sequence <= (10 * GiB - chosen.weights_bytes) * 0.5
    assert chosen.kv_cache_bytes == chosen.settings.num_parallel * per_sequence
    assert _mentions(chosen, "2 parallel sequences of 8192 tokens", "as many as fit")


# ---- overrides and refusals ----------------------------------------------------------------------


def test_unknown_backend_lists_the_valid_ones(smollm2):
    with pytest.raises(ConfigError, match="unknown backend 'tensorrt'; choose one of llamacpp, vllm"):
        make_plan(probe(), smollm2, PlanChoices(backend="tensorrt"))


def test_impossible_backend_overrides_name_the_model():
    with pytest.raises(ConfigError, match="vllm-only has no GGUF file"):
        make_plan(_cuda_box(), VLLM_ONLY, PlanChoices(backend="llamacpp"))
    with pytest.raises(ConfigError, match="gguf-only has no vLLM checkpoint"):
        make_plan(_cuda_box(), GGUF_ONLY, PlanChoices(backend="vllm"))
    with pytest.raises(ConfigError, match="need --backend vllm"):
        make_plan(_cuda_box(), MISTRAL_7B_AWQ, PlanChoices(backend="llamacpp", tensor_parallel_size=2))


def test_forced_llamacpp_on_a_cuda_box_offloads():
    chosen = make_plan(_cuda_box(), MISTRAL_7B_AWQ, PlanChoices(backend="llamacpp"))
    assert (chosen.backend, chosen.device, chosen.settings.n_gpu_layers) == ("llamacpp", "cuda", -1)
    assert _mentions(chosen, "llama.cpp as asked")


def test_explicit_settings_win(smollm2):
    hw = load_machine("avx512-amx-m7i")
    chosen = make_plan(hw, smollm2, PlanChoices(context_length=2048, num_threads=3, num_parallel=2,
                                                max_batch_tokens=256))
    settings = chosen.settings
    assert (settings.context_length, settings.num_threads, settings.num_parallel, settings.max_batch_tokens) == \
        (2048, 3, 2, 256)
    assert _mentions(chosen, "3 threads as asked", "2 parallel sequences as asked",
                     "context 2048 tokens per sequence as asked")


def test_bad_explicit_settings_are_refused(smollm2):
    hw = load_machine("avx512-amx-m7i")
    with pytest.raises(ConfigError, match="--ctx 9000 is more than smollm2-135m's context of 8192 tokens"):
        make_plan(hw, smollm2, PlanChoices(context_length=9000))
    with pytest.raises(ConfigError, match="--max-batch-tokens 4 must be at least the 8 parallel sequences"):
        make_plan(hw, smollm2, PlanChoices(max_batch_tokens=4, num_parallel=8))
    with pytest.raises(ConfigError, match="gpu-memory-utilization must be in"):
        make_plan(hw, smollm2, PlanChoices(gpu_memory_utilization=1.5))
    with pytest.raises(ConfigError, match="KV cache"):
        make_plan(hw, MISTRAL_7B_AWQ, PlanChoices(context_length=32768, num_parallel=64))


def test_a_model_with_only_a_vllm_directory_uses_vllm_on_the_cpu(tmp_path: Path):
    # A Hugging Face directory as `serve up --model DIR` sees it: SmolLM2-135M's config.json, float32 weights.
    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": 576, "num_attention_heads": 9,
              "num_key_value_heads": 3, "num_hidden_layers": 30, "torch_dtype": "float32"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with (tmp_path / "model.safetensors").open("wb") as weights:
        weights.truncate(538_090_408)
    spec = resolve_model(str(tmp_path), load_catalog())
    footprint = vllm_footprint(spec, None)
    assert footprint.kv_bytes_per_token == 2 * 30 * 3 * 64 * 2
    assert footprint.weights_bytes == 538_090_408 // 2  # vLLM loads float32 checkpoints in 16 bits
    chosen = make_plan(load_machine("avx512-amx-m7i", has_vllm=True), spec)
    assert (chosen.backend, chosen.device) == ("vllm", "cpu")
    assert _mentions(chosen, "has only a vLLM checkpoint")
    with pytest.raises(ConfigError, match="has only a vLLM checkpoint, and vllm is not installed"):
        make_plan(load_machine("avx512-amx-m7i"), spec)
    with pytest.raises(ConfigError, match="no GGUF file for llama.cpp, and vLLM cannot serve it here"):
        make_plan(_cuda_box(has_vllm=False), spec)


def test_the_plan_carries_the_backend_settings(smollm2):
    chosen = make_plan(_cuda_box("h100x2-a3"), LLAMA_70B, PlanChoices(ray_address="10.0.0.5:6379"))
    settings = chosen.settings
    assert isinstance(settings, BackendSettings)
    assert settings.model_path is None  # the loader fills it in once the file is fetched
    assert (settings.distributed_executor_backend, settings.ray_address) == ("ray", "10.0.0.5:6379")


def test_the_embedded_gguf_footprint_is_read_from_its_header(smollm2):
    footprint = gguf_footprint(smollm2)
    assert footprint.kv_bytes_per_token == 2 * 30 * 3 * 64 * 2  # SmolLM2-135M: 30 layers, 3 KV heads of 64
    assert footprint.weights_bytes == smollm2.download_bytes


# ---- this machine --------------------------------------------------------------------------------


def test_plan_on_this_machine(smollm2):
    hw = probe()
    chosen = make_plan(hw, smollm2)
    assert chosen.backend in ("llamacpp", "vllm")
    assert chosen.settings.num_threads >= 1 and chosen.settings.num_parallel >= 1
    assert chosen.settings.context_length <= smollm2.context_length
    if not hw.gpus:
        assert (chosen.backend, chosen.device, chosen.settings.n_gpu_layers) == ("llamacpp", "cpu", 0)
        assert chosen.settings.num_threads == hw.cpu.num_physical_cores


def test_vllm_on_this_cpu_when_installed(smollm2):
    hw = probe()
    if hw.gpus:
        pytest.skip("this machine has a GPU; the CPU vLLM plan is covered with recorded machines")
    if not hw.has_vllm:
        with pytest.raises(ConfigError, match="vllm is not installed"):
            make_plan(hw, smollm2, PlanChoices(backend="vllm"))
        return
    chosen = make_plan(hw, smollm2, PlanChoices(backend="vllm"))
    assert (chosen.backend, chosen.device) == ("vllm", "cpu")
    assert 0.2 <= chosen.settings.gpu_memory_utilization < 1
    assert chosen.settings.gpu_memory_utilization * hw.memory.total_bytes <= hw.memory.available_bytes
