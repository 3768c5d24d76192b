"""The hardware probe: pure parsers over recorded outputs of machines we do not have, and probe() here."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from machines import load_machine, recorded

from serve.placement import hardware
from serve.placement.hardware import (GiB, MiB, Cpu, Gpu, Memory, apple_from_sysctl, apply_limits, cpu_from_sysctl,
                                      parse_cgroup_cpu_limit, parse_cgroup_memory_limit, parse_cpuinfo, parse_lscpu,
                                      parse_meminfo, parse_nvidia_smi_csv, parse_sysctl, parse_vm_stat, probe,
                                      select_visible)
from serve.placement.plan import make_plan
from serve.placement.report import format_report, hardware_report

# ---- CPUs ----------------------------------------------------------------------------------------


def test_cpuinfo_avx512_amx_server():
    cpu = parse_cpuinfo(recorded("avx512-amx-m7i", "cpuinfo"))
    assert cpu.model == "Intel(R) Xeon(R) Platinum 8488C"
    assert cpu.arch == "x86_64"
    assert (cpu.num_physical_cores, cpu.num_logical_cores) == (4, 8)
    for flag in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx", "amx_int8", "amx_bf16"):
        assert flag in cpu.isa
    assert "neon" not in cpu.isa


def test_cpuinfo_desktop_has_avx512_but_no_amx():
    cpu = parse_cpuinfo(recorded("rtx4090-desktop", "cpuinfo"))
    assert cpu.model == "AMD Ryzen 9 7950X 16-Core Processor"
    assert (cpu.num_physical_cores, cpu.num_logical_cores) == (16, 32)
    assert "avx512f" in cpu.isa and "amx" not in cpu.isa


def test_cpuinfo_older_epyc_has_avx2_only():
    cpu = parse_cpuinfo(recorded("a10g-g5", "cpuinfo"))
    assert (cpu.num_physical_cores, cpu.num_logical_cores) == (4, 8)
    assert cpu.isa == ("avx", "avx2", "fma", "f16c")


def test_cpuinfo_two_h100_box():
    cpu = parse_cpuinfo(recorded("h100x2-a3", "cpuinfo"))
    assert cpu.model.startswith("Intel(R) Xeon(R) Platinum 8481C")
    assert (cpu.num_physical_cores, cpu.num_logical_cores) == (26, 52)
    assert "amx" in cpu.isa


def test_cpuinfo_graviton_arm():
    cpu = parse_cpuinfo(recorded("graviton3-c7g", "cpuinfo"))
    assert cpu.arch == "aarch64"
    assert cpu.model == "Neoverse-V1"  # from the CPU part number: ARM kernels print no model name
    assert (cpu.num_physical_cores, cpu.num_logical_cores) == (8, 8)
    for flag in ("neon", "fp16", "dotprod", "i8mm", "bf16", "sve"):
        assert flag in cpu.isa
    assert "sve2" not in cpu.isa and "avx2" not in cpu.isa


def test_lscpu_names_the_arm_core():
    fields = parse_lscpu(recorded("graviton3-c7g", "lscpu"))
    assert fields["Model name"] == "Neoverse-V1"
    assert fields["CPU(s)"] == "8"


def test_cpuinfo_of_this_machine_parses():
    cpu = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    assert cpu.num_logical_cores >= cpu.num_physical_cores >= 1
    assert cpu.arch in ("x86_64", "aarch64")


def test_cpuinfo_empty_text_is_one_unknown_core():
    cpu = parse_cpuinfo("")
    assert (cpu.num_physical_cores, cpu.num_logical_cores) == (1, 1)
    assert cpu.model.startswith("unknown")


# ---- memory --------------------------------------------------------------------------------------


def test_meminfo():
    memory = parse_meminfo(recorded("rtx4090-desktop", "meminfo"))
    assert memory == Memory(65613484 * 1024, 61234560 * 1024)


def test_meminfo_without_memavailable_uses_memfree():
    assert parse_meminfo("MemTotal: 1000 kB\nMemFree: 400 kB\n") == Memory(1000 * 1024, 400 * 1024)


def test_cgroup_limits():
    assert parse_cgroup_cpu_limit("200000 100000\n") == 2.0
    assert parse_cgroup_cpu_limit("max 100000\n") is None
    assert parse_cgroup_memory_limit("8589934592\n") == 8 * GiB
    assert parse_cgroup_memory_limit("max\n") is None
    assert parse_cgroup_memory_limit("9223372036854771712") is None  # cgroup v1 "no limit"


def test_container_limits_shrink_the_host():
    cpu = parse_cpuinfo(recorded("rtx4090-desktop", "cpuinfo"))
    memory = parse_meminfo(recorded("rtx4090-desktop", "meminfo"))
    limited_cpu, limited_memory = apply_limits(cpu, memory, num_allowed_cpus=32, cpu_quota=3.5,
                                               memory_limit=8 * GiB, memory_used=2 * GiB)
    assert (limited_cpu.num_physical_cores, limited_cpu.num_logical_cores) == (4, 4)
    assert limited_memory == Memory(8 * GiB, 6 * GiB)
    assert apply_limits(cpu, memory, num_allowed_cpus=None, cpu_quota=None, memory_limit=None,
                        memory_used=None) == (cpu, memory)


# ---- GPUs ----------------------------------------------------------------------------------------


def test_nvidia_smi_rtx4090():
    (gpu,) = parse_nvidia_smi_csv(recorded("rtx4090-desktop", "nvidia-smi.csv"))
    assert gpu == Gpu(0, "NVIDIA GeForce RTX 4090", 24564 * MiB, 24080 * MiB, "8.9", "550.54.14")


def test_nvidia_smi_two_h100():
    gpus = parse_nvidia_smi_csv(recorded("h100x2-a3", "nvidia-smi.csv"))
    assert [gpu.index for gpu in gpus] == [0, 1]
    assert all(gpu.name == "NVIDIA H100 80GB HBM3" and gpu.compute_capability == "9.0" for gpu in gpus)
    assert all(79 * GiB < gpu.vram_total_bytes < 80 * GiB for gpu in gpus)


def test_nvidia_smi_old_driver_and_odd_rows():
    text = ("0, Tesla T4, 15360, 14913, 470.57.02\n"  # a driver without compute_cap
            "1, NVIDIA A100-SXM4-40GB, 40960, 40337, [N/A], 535.104.05\n"
            "No devices were found\n")
    old, a100 = parse_nvidia_smi_csv(text)
    assert (old.name, old.compute_capability, old.driver) == ("Tesla T4", "", "470.57.02")
    assert (a100.compute_capability, a100.driver) == ("", "535.104.05")
    assert parse_nvidia_smi_csv("") == ()
    assert parse_nvidia_smi_csv("NVIDIA-SMI has failed because it couldn't communicate with the driver\n") == ()


def test_cuda_visible_devices():
    gpus = parse_nvidia_smi_csv(recorded("h100x2-a3", "nvidia-smi.csv"))
    assert select_visible(gpus, None) == gpus
    assert [gpu.index for gpu in select_visible(gpus, "1")] == [1]
    assert select_visible(gpus, "") == ()
    assert [gpu.index for gpu in select_visible(gpus, "0,7,1")] == [0]  # CUDA stops at the first bad ordinal
    assert select_visible(gpus, "GPU-8f6c0a3e-1b2c") == gpus  # UUIDs: not resolved, all kept


# ---- Apple Silicon -------------------------------------------------------------------------------


def test_sysctl_m2_mac():
    fields = parse_sysctl(recorded("m2-mac-16gb", "sysctl"))
    cpu = cpu_from_sysctl(fields)
    assert cpu == Cpu("Apple M2", "arm64", 8, 8, ("neon", "fp16", "dotprod", "i8mm", "bf16"),
                      num_performance_cores=4)
    apple = apple_from_sysctl(fields)
    assert apple is not None
    assert (apple.chip, apple.unified_memory_bytes, apple.has_metal) == ("Apple M2", 16 * GiB, True)


def test_sysctl_intel_mac_is_not_apple_silicon():
    fields = parse_sysctl("hw.memsize: 17179869184\nhw.physicalcpu: 4\nhw.logicalcpu: 8\n"
                          "hw.optional.avx2_0: 1\nhw.optional.avx512f: 0\n"
                          "machdep.cpu.brand_string: Intel(R) Core(TM) i7-8569U CPU @ 2.80GHz\n"
                          "kern.version: Darwin Kernel Version 21.6.0: Mon Aug 22 20:17:10 PDT 2022\n")
    assert apple_from_sysctl(fields) is None
    cpu = cpu_from_sysctl(fields)
    assert (cpu.arch, cpu.num_physical_cores, cpu.num_logical_cores, cpu.isa) == ("x86_64", 4, 8, ("avx2",))
    assert fields["kern.version"].endswith("PDT 2022")  # values keep their own colons


def test_vm_stat():
    memory = parse_vm_stat(recorded("m2-mac-16gb", "vm_stat"), 16 * GiB)
    assert memory == Memory(16 * GiB, (21432 + 287962) * 16384)


# ---- composed machines and the report ------------------------------------------------------------


def test_report_of_the_h100_box_is_json():
    hw = load_machine("h100x2-a3", has_vllm=True, llama_gpu_offload=True)
    report = hardware_report(hw, None)
    assert json.loads(json.dumps(report)) == report
    assert {"cpu", "memory", "gpus", "apple", "llamacpp", "vllm", "plan"} <= set(report)
    assert [gpu["name"] for gpu in report["gpus"]] == ["NVIDIA H100 80GB HBM3"] * 2
    assert report["plan"] is None and report["vllm"]["installed"] is True
    text = format_report(report)
    assert "GPU 1: NVIDIA H100 80GB HBM3" in text and "amx" in text


def test_report_with_a_plan_and_with_an_error():
    hw = load_machine("m2-mac-16gb", llama_gpu_offload=True)
    chosen = make_plan(hw, _catalog_default())
    report = hardware_report(hw, chosen)
    assert report["plan"]["backend"] == "llamacpp"
    assert report["plan"]["reasons"] == list(chosen.reasons)
    # One flat object, the settings beside the backend; the weights file is not known yet.
    assert (report["plan"]["n_gpu_layers"], report["plan"]["device"]) == (-1, "metal")
    assert "model_path" not in report["plan"] and "settings" not in report["plan"]
    assert report["apple"]["chip"] == "Apple M2"
    text = format_report(report)
    assert "Apple M2, 16.0 GiB unified memory, Metal" in text
    assert "GPU layers all" in text and "no NVIDIA GPU" in text
    failed = hardware_report(hw, None, error="llama.cpp cannot serve the model: it needs 40.1 GiB")
    assert "needs 40.1 GiB" in format_report(failed)


# ---- the probe on this machine -------------------------------------------------------------------


def test_probe_here_is_sane_and_cached():
    hw = probe()
    assert hw is probe()
    assert hw.cpu.num_logical_cores >= hw.cpu.num_physical_cores >= 1
    assert 0 < hw.memory.available_bytes <= hw.memory.total_bytes
    assert all(gpu.vram_total_bytes > 0 for gpu in hw.gpus)
    assert hw.has_vllm == (importlib.util.find_spec("vllm") is not None)
    report = hardware_report(hw, make_plan(hw, _catalog_default()))
    assert json.loads(json.dumps(report))["plan"]["backend"] in ("llamacpp", "vllm")
    assert "CPU" in format_report(report)


def test_a_missing_command_reads_as_nothing():
    assert hardware._run("quantserve-no-such-command-xyz") == ""


def _catalog_default():
    from serve.models.catalog import load_catalog, resolve_model

    return resolve_model(None, load_catalog())
