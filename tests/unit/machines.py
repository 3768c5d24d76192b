"""Recorded machines for the probe and plan tests: fixtures/machines/<name>/ holds what the probe reads
there (cpuinfo, lscpu, meminfo, nvidia-smi CSV; sysctl and vm_stat on a Mac), composed with the same pure
parsers probe() uses. The engines installed are not in those outputs, so callers say them."""
from __future__ import annotations

from pathlib import Path

from serve.placement.hardware import (Hardware, apple_from_sysctl, cpu_from_sysctl, parse_cpuinfo, parse_meminfo,
                            parse_nvidia_smi_csv, parse_sysctl, parse_vm_stat)

MACHINES = Path(__file__).parent / "fixtures" / "machines"


def recorded(machine: str, name: str) -> str:
    return (MACHINES / machine / name).read_text()


def load_machine(machine: str, *, has_vllm: bool = False, llama_gpu_offload: bool = False) -> Hardware:
    folder = MACHINES / machine
    gpus = parse_nvidia_smi_csv(recorded(machine, "nvidia-smi.csv")) if (folder / "nvidia-smi.csv").exists() else ()
    if (folder / "sysctl").exists():
        fields = parse_sysctl(recorded(machine, "sysctl"))
        memory = parse_vm_stat(recorded(machine, "vm_stat"), int(fields["hw.memsize"]))
        return Hardware(cpu_from_sysctl(fields), memory, gpus, apple_from_sysctl(fields), llama_gpu_offload,
                        has_vllm)
    return Hardware(parse_cpuinfo(recorded(machine, "cpuinfo")), parse_meminfo(recorded(machine, "meminfo")), gpus,
                    None, llama_gpu_offload, has_vllm)
