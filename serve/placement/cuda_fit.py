"""The CUDA fit check for vLLM: weights plus KV cache against the GPUs' free memory.

vLLM takes `total VRAM x gpu_memory_utilization` on every GPU it uses and refuses to start when that is
more than is free, or when the KV cache left after the weights and its own overhead cannot hold one
sequence of `max_model_len` tokens. We check the same before starting it: choose the quantization, the
number of GPUs (tensor parallel, the smallest power of two that fits) and the context, or refuse with
the numbers ("needs 9.8 GiB (...), 7.1 GiB free on GPU 0").
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from serve.models.catalog import ModelSpec
from serve.placement.footprint import Footprint, checkpoint_quantization, fitting_context, gib
from serve.placement.hardware import GiB, Gpu

CUDA_OVERHEAD_BYTES = int(1.5 * GiB)  # per GPU: CUDA context, CUDA graphs, activation peak (7B-70B models)
VLLM_GPU_UTILIZATION = 0.9
MIN_CONTEXT = 2048  # below this a reduced context stops being useful: refuse instead
VLLM_MIN_COMPUTE, FP8_MIN_COMPUTE = (7, 0), (8, 9)
# Pre-quantized checkpoints whose method vLLM reads from config.json; naming it explicitly would force
# the slow reference kernel instead of Marlin.
AUTO_DETECTED_QUANTIZATION = ("awq", "gptq", "mxfp4")


class NoFit(Exception):
    """vLLM cannot hold the model on these GPUs; the message says so with numbers."""


@dataclass(frozen=True)
class CudaFit:
    tensor_parallel_size: int
    pipeline_parallel_size: int
    context_length: int  # per sequence
    gpu_memory_utilization: float
    kv_room_bytes: int  # KV cache vLLM will have, over all GPUs
    reasons: tuple[str, ...]


def compute_capability(gpu: Gpu) -> tuple[int, int] | None:
    major, _, minor = gpu.compute_capability.partition(".")
    return (int(major), int(minor)) if major.isdigit() and minor.isdigit() else None


def told_quantization(checkpoint: str | None) -> str | None:
    """What vLLM is told for a checkpoint's own quantization (None: let vLLM read config.json)."""
    return None if checkpoint in AUTO_DETECTED_QUANTIZATION else checkpoint


def choose_quantization(spec: ModelSpec, gpus: tuple[Gpu, ...]) -> tuple[str | None, str | None, str]:
    """(what vLLM is told, what the weights become, why): the checkpoint's own quantization; FP8 on the
    fly for a 16-bit checkpoint on compute capability >= 8.9; else 16 bits."""
    checkpoint = checkpoint_quantization(spec)
    if checkpoint:
        if checkpoint in AUTO_DETECTED_QUANTIZATION:
            return None, checkpoint, f"{checkpoint.upper()} checkpoint: vLLM reads it and picks its fastest kernel"
        return checkpoint, checkpoint, f"{checkpoint} checkpoint"
    caps = [compute_capability(gpu) for gpu in gpus]
    lowest = min((c for c in caps if c), default=None)
    if lowest and None not in caps and lowest >= FP8_MIN_COMPUTE:
        return "fp8", "fp8", (f"16-bit checkpoint: FP8 weights on the fly (compute capability "
                              f"{lowest[0]}.{lowest[1]} has FP8), half the memory")
    shown = f"{lowest[0]}.{lowest[1]}" if lowest else "unknown"
    return None, None, f"16-bit checkpoint kept in 16 bits: FP8 needs compute capability 8.9, the GPU has {shown}"


def _gpu_list(gpus: list[Gpu]) -> str:
    indices = sorted({gpu.index for gpu in gpus})
    return f"GPU {indices[0]}" if len(indices) == 1 else f"GPUs {', '.join(map(str, indices))}"


def _default_utilization(gpus: list[Gpu]) -> float:
    # vLLM refuses to start when total x utilization exceeds the free memory: stay just under it.
    ratio = min(gpu.vram_free_bytes / gpu.vram_total_bytes for gpu in gpus if gpu.vram_total_bytes)
    util = min(VLLM_GPU_UTILIZATION, math.floor(ratio * 100) / 100 - 0.01)
    if util < 0.05:
        busiest = min(gpus, key=lambda gpu: gpu.vram_free_bytes)
        raise NoFit(f"GPU {busiest.index} has only {gib(busiest.vram_free_bytes)} free")
    return round(util, 2)


def _context(spec: ModelSpec, asked_context: int | None, kv_room: int, fp: Footprint) -> tuple[int, str]:
    if asked_context:
        return asked_context, f"context {asked_context} tokens per sequence as asked"
    context = fitting_context(kv_room, fp.kv_bytes_per_token, spec.context_length)
    if context == spec.context_length:
        return context, f"context {context} tokens per sequence (the model's full context)"
    return context, (f"context {context} tokens per sequence: the most that fits "
                     f"(the model allows {spec.context_length})")


def fit_on(gpus: tuple[Gpu, ...], tp: int, pp: int, spec: ModelSpec, fp: Footprint, *,
           context_length: int | None = None, gpu_memory_utilization: float | None = None,
           ray_address: str | None = None) -> CudaFit:
    """vLLM on tp x pp GPUs: the context that fits, or NoFit with the numbers."""
    num_gpus = tp * pp
    if num_gpus > len(gpus) and not ray_address:
        raise NoFit(f"{spec.name}: tensor parallel {tp} x pipeline parallel {pp} needs {num_gpus} GPUs, "
                    f"{len(gpus)} visible")
    local = list(gpus[:num_gpus])
    used = local + [gpus[0]] * (num_gpus - len(local))  # a Ray cluster's other GPUs: assumed like GPU 0
    util = gpu_memory_utilization or _default_utilization(local)
    for gpu in local:
        if gpu.vram_total_bytes * util > gpu.vram_free_bytes:
            raise NoFit(f"gpu_memory_utilization {util} asks for {gib(gpu.vram_total_bytes * util)} on "
                        f"GPU {gpu.index}, {gib(gpu.vram_free_bytes)} free")
    usable = min(int(gpu.vram_total_bytes * util) for gpu in used) * num_gpus
    overhead = CUDA_OVERHEAD_BYTES * num_gpus
    kv_room = usable - fp.weights_bytes - overhead
    floor = context_length or min(spec.context_length, MIN_CONTEXT)
    if kv_room < fp.kv_bytes_per_token * floor:
        need = fp.weights_bytes + fp.kv_bytes_per_token * floor + overhead
        raise NoFit(f"{spec.name} needs {gib(need)} (weights {gib(fp.weights_bytes)} + KV cache "
                    f"{gib(fp.kv_bytes_per_token * floor)} for {floor} tokens + {gib(overhead)} overhead), "
                    f"{gib(usable)} free on {_gpu_list(used)} at gpu_memory_utilization {util}")
    context, context_reason = _context(spec, context_length, kv_room, fp)
    reasons = [f"tensor parallel {tp}", f"gpu_memory_utilization {util}: {gib(usable / num_gpus)} per GPU",
               context_reason]
    if pp > 1:
        reasons.insert(1, f"pipeline parallel {pp}")
    if num_gpus > len(gpus):
        reasons.append(f"{num_gpus - len(gpus)} GPUs of the Ray cluster assumed to match GPU {gpus[0].index}")
    return CudaFit(tp, pp, context, util, kv_room, tuple(reasons))


def fit_cuda(gpus: tuple[Gpu, ...], spec: ModelSpec, fp: Footprint, *, context_length: int | None = None,
             tensor_parallel_size: int | None = None, pipeline_parallel_size: int | None = None,
             gpu_memory_utilization: float | None = None, ray_address: str | None = None) -> CudaFit:
    """The CUDA fit check. Tensor parallel defaults to the smallest power of two of GPUs that fits."""
    if not gpus:
        raise NoFit("no NVIDIA GPU")
    old = [gpu for gpu in gpus if (compute_capability(gpu) or VLLM_MIN_COMPUTE) < VLLM_MIN_COMPUTE]
    if old:
        raise NoFit(f"GPU {old[0].index} ({old[0].name}) has compute capability {old[0].compute_capability}; "
                    "vLLM needs 7.0 or newer")
    pp = pipeline_parallel_size or 1
    powers = [n for n in (1, 2, 4, 8) if n * pp <= len(gpus)] or [1]
    sizes = [tensor_parallel_size] if tensor_parallel_size else powers
    failure = NoFit(f"{spec.name}: no GPU configuration fits")
    for tp in sizes:
        try:
            fit = fit_on(gpus, tp, pp, spec, fp, context_length=context_length,
                         gpu_memory_utilization=gpu_memory_utilization, ray_address=ray_address)
        except NoFit as exc:
            failure = exc
            continue
        why_tp = " as asked" if tensor_parallel_size else ": it does not fit on fewer GPUs" if tp > 1 else ""
        return replace(fit, reasons=(f"tensor parallel {tp}{why_tp}", *fit.reasons[1:]))
    raise failure
