"""The `serve probe` report: a Hardware (and the plan for a model) as JSON-able data and as text.

It reads its inputs through `dataclasses.asdict` only, so it imports nothing from the probe or the plan at
run time (they are imported for type checking only).
"""
from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from serve.placement.hardware import Hardware
    from serve.placement.plan import Plan

GiB = 1024**3


def hardware_report(hw: Hardware, plan: Plan | None = None, *, error: str | None = None) -> dict:
    """A JSON-able report: cpu, memory, gpus, apple, llamacpp, vllm, plan (None with `error` when the
    model cannot be served here)."""
    cpu = asdict(hw.cpu)
    cpu["isa"] = list(hw.cpu.isa)
    return {
        "cpu": cpu,
        "memory": asdict(hw.memory),
        "gpus": [asdict(gpu) for gpu in hw.gpus],
        "apple": asdict(hw.apple) if hw.apple else None,
        "llamacpp": {"installed": hw.llamacpp_version is not None, "version": hw.llamacpp_version,
                     "gpu_offload": hw.llama_gpu_offload},
        "vllm": {"installed": hw.has_vllm, "version": hw.vllm_version},
        "plan": _plan_report(plan) if plan is not None else None,
        "error": error,
    }


# The settings the plan does not choose: the weights file comes later, the rest are fixed defaults.
_UNPLANNED_SETTINGS = ("model_path", "draft_model_path", "seed", "enable_prefix_caching")


def _plan_report(plan: Plan) -> dict:
    """One flat object: the backend, the reasons, the settings it loads with, the estimates."""
    settings = asdict(plan.settings)
    for name in _UNPLANNED_SETTINGS:
        del settings[name]
    return {"backend": plan.backend, "reasons": list(plan.reasons), "device": plan.device, **settings,
            "model": plan.model, "weights_bytes": plan.weights_bytes, "kv_cache_bytes": plan.kv_cache_bytes,
            "draft_model": plan.draft_model, "draft_weights_bytes": plan.draft_weights_bytes,
            "draft_kv_cache_bytes": plan.draft_kv_cache_bytes}


def _gib(num_bytes: int) -> str:
    return f"{num_bytes / GiB:.1f} GiB"


def _size(num_bytes: int) -> str:
    return _gib(num_bytes) if num_bytes >= GiB else f"{num_bytes / 1024**2:.0f} MiB"


def _hardware_lines(report: dict) -> list[str]:
    cpu, memory = report["cpu"], report["memory"]
    perf = f", {cpu['num_performance_cores']} performance" if cpu.get("num_performance_cores") else ""
    lines = [f"CPU        {cpu['model']} ({cpu['arch']}), {cpu['num_physical_cores']} physical / "
             f"{cpu['num_logical_cores']} logical cores{perf}",
             f"ISA        {', '.join(cpu['isa']) or 'baseline only'}",
             f"Memory     {_gib(memory['total_bytes'])} total, {_gib(memory['available_bytes'])} available"]
    gpus = report["gpus"] or [None]
    for number, gpu in enumerate(gpus):
        label = "GPUs      " if number == 0 else "          "
        lines.append(f"{label} " + ("no NVIDIA GPU" if gpu is None else
                                    f"GPU {gpu['index']}: {gpu['name']}, {_gib(gpu['vram_free_bytes'])} free of "
                                    f"{_gib(gpu['vram_total_bytes'])}, compute capability "
                                    f"{gpu['compute_capability'] or '?'}, driver {gpu['driver']}"))
    apple = report["apple"]
    if apple:
        metal = "Metal" if apple["has_metal"] else "no Metal"
        lines.append(f"Apple      {apple['chip']}, {_gib(apple['unified_memory_bytes'])} unified memory, {metal}")
    llama, vllm = report["llamacpp"], report["vllm"]
    lines.append("llama.cpp  " + (f"llama-cpp-python {llama['version']}, GPU offload "
                                  f"{'yes' if llama['gpu_offload'] else 'no'}" if llama["installed"]
                                  else "llama-cpp-python is not installed"))
    lines.append("vLLM       " + (f"installed ({vllm['version'] or 'version unknown'})" if vllm["installed"]
                                  else "not installed"))
    return lines


def _plan_lines(plan: dict) -> list[str]:
    where = {"cpu": "on the CPU", "cuda": "on CUDA", "metal": "on Metal"}.get(plan["device"], plan["device"])
    name = f" for {plan['model']}" if plan.get("model") else ""
    lines = ["", f"Plan{name}: {'vLLM' if plan['backend'] == 'vllm' else 'llama.cpp'} {where}"]
    lines += [f"  - {reason}" for reason in plan["reasons"]]
    settings = [f"threads {plan['num_threads']}", f"context {plan['context_length']} per sequence",
                f"parallel sequences {plan['num_parallel']}", f"batch {plan['max_batch_tokens']} tokens"]
    settings.append(f"KV cache {plan['kv_cache_dtype']}")
    if plan["backend"] == "llamacpp":
        settings.append(f"GPU layers {'all' if plan['n_gpu_layers'] == -1 else plan['n_gpu_layers']}")
        drafter = f" (draft model {plan['draft_model']})" if plan.get("draft_model") else ""
        settings.append(f"speculative {plan['speculative']}{drafter}")
    else:
        settings += [f"gpu_memory_utilization {plan['gpu_memory_utilization']}",
                     f"tensor parallel {plan['tensor_parallel_size']}",
                     f"pipeline parallel {plan['pipeline_parallel_size']}",
                     f"quantization {plan['quantization'] or 'from the checkpoint'}"]
        if plan["distributed_executor_backend"]:
            settings.append(f"executor {plan['distributed_executor_backend']}")
    lines.append("  settings: " + ", ".join(settings))
    if plan["weights_bytes"]:
        drafts = plan.get("draft_weights_bytes") or plan.get("draft_kv_cache_bytes")
        of_draft = (f" (of which the draft model: weights {_size(plan['draft_weights_bytes'])}, KV cache "
                    f"{_size(plan['draft_kv_cache_bytes'])})" if drafts else "")
        lines.append(f"  memory: weights {_size(plan['weights_bytes'])} + KV cache {_size(plan['kv_cache_bytes'])}"
                     f"{of_draft}")
    return lines


def format_report(report: dict) -> str:
    """The human-readable `serve probe` output."""
    lines = _hardware_lines(report)
    if report.get("plan"):
        lines += _plan_lines(report["plan"])
    if report.get("error"):
        lines += ["", f"Plan: none ({report['error']})"]
    return "\n".join(lines)
