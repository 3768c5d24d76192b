"""A description of the machine and software a benchmark ran on, stored next to its numbers."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent


def _cpu_identity() -> str:
    """Vendor, family and model numbers: the model name alone can be as vague as "AMD EPYC" in a VM."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return ""
    return (f"{fields.get('vendor_id', '?')} family {fields.get('cpu family', '?')} "
            f"model {fields.get('model', '?')}" + (" (virtual machine)" if "hypervisor" in fields.get("flags", "") else ""))


def _version(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "serve", "backends"],
                               capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def llama_server_version(binary: Optional[Path]) -> Optional[str]:
    if binary is None or not binary.exists():
        return None
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30)
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("version")]
    version = lines[0].removeprefix("version: ") if lines else "unknown"
    return f"{version}, built from the llama.cpp vendored in the llama-cpp-python {_version('llama_cpp_python')} sdist"


def describe_machine(llama_server_binary: Optional[Path] = None) -> dict[str, Any]:
    """CPU, cores, RAM, OS and the versions of everything measured."""
    from serve.placement.hardware import probe  # the same probe `serve up` plans with

    hw = probe()
    return {
        "cpu_model": hw.cpu.model,
        "cpu_identity": _cpu_identity(),
        "cpu_flags": list(hw.cpu.isa),  # the SIMD extensions llama.cpp's CPU kernels care about
        "num_physical_cores": hw.cpu.num_physical_cores,
        "num_logical_cores": hw.cpu.num_logical_cores,
        "ram_gib": round(hw.memory.total_bytes / 2**30, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "quantserve_commit": _git_commit(),
        "llama_cpp_python": _version("llama_cpp_python"),
        "llama_server": llama_server_version(llama_server_binary),
        "httpx": _version("httpx"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _busy_seconds() -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def process_tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` and its live descendants (vLLM's engine core is a
    child process). A descendant that exits between two samples takes its time with it; the servers'
    processes live as long as the server."""
    try:
        root = psutil.Process(pid)
        members = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for member in members:
        try:
            times = member.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def _own_seconds(server_pid: int) -> float:
    """CPU seconds of the server (with its child processes) and of this client process."""
    client = psutil.Process().cpu_times()
    return process_tree_cpu_seconds(server_pid) + client.user + client.system


class ForeignLoad:
    """CPU used by processes other than the server under test and this client, during one workload;
    and the server's own CPU time (`server_cpu_s`, its whole process tree: the cost of the tokens).

    The load average cannot tell: it also counts the server's own threads. Reported as the share of all
    cores (0.25 = other processes kept half of one core of two busy), taken as a context manager.
    """

    def __init__(self, server_pid: int) -> None:
        self._server_pid = server_pid
        self.share = 0.0

    def __enter__(self) -> "ForeignLoad":
        self._start = (time.monotonic(), _busy_seconds(), _own_seconds(self._server_pid))
        self._server_start = process_tree_cpu_seconds(self._server_pid)
        self.server_cpu_s = 0.0
        return self

    def __exit__(self, *exc_info: object) -> None:
        wall, busy, own = self._start
        elapsed = (time.monotonic() - wall) * (psutil.cpu_count() or 1)
        foreign = (_busy_seconds() - busy) - (_own_seconds(self._server_pid) - own)
        self.share = max(0.0, foreign / elapsed) if elapsed > 0 else 0.0
        self.server_cpu_s = process_tree_cpu_seconds(self._server_pid) - self._server_start


def wait_for_quiet(max_wait_s: float, max_busy_share: float = 0.08, window_s: float = 5.0) -> float:
    """Wait until the whole machine is nearly idle for one window (or `max_wait_s` passed); return
    the last busy share. Called between workloads, when nothing of ours is running."""
    deadline = time.monotonic() + max_wait_s
    busy = psutil.cpu_percent(interval=window_s) / 100
    while busy > max_busy_share and time.monotonic() < deadline:
        busy = psutil.cpu_percent(interval=window_s) / 100
    return busy
