"""The servers under test: build llama-server once, start any of them on a free port.

The GGUF servers (quantserve, llama-server, llama_cpp.server) serve the same GGUF with the same number of
threads and the same context per sequence (llama-server splits `-c` between its `-np` slots, so it gets
`ctx * parallel`). The vLLM pair (`quantserve-vllm`: `serve up --backend vllm`, and `vllm`: vLLM's own
OpenAI server) serve the same Hugging Face directory, both with `--enforce-eager`.

A name may carry flags after a `+`: `llama-server+ngram-simple` is llama-server with `--spec-type
ngram-simple`; `quantserve+speculative=off` is quantserve with `--speculative off` (flag=value pairs,
comma-separated, for any server).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
CACHE_DIR = Path(__file__).resolve().parent / ".cache"
REPO_ROOT = Path(__file__).resolve().parent.parent
SERVER_NAMES = ("quantserve", "llama-server", "llama_cpp.server")
VLLM_SERVER_NAMES = ("quantserve-vllm", "vllm")
# vLLM on a CPU takes this share of RAM for weights, activations and its KV cache; both vLLM servers get
# the same (quantserve's plan's floor, which a 135M model uses).
VLLM_MEMORY_SHARE = 0.2


@dataclasses.dataclass(frozen=True)
class ServerSettings:
    """What every server gets: same model, threads, per-sequence context and parallel slots."""

    model_path: str
    num_threads: int = 2
    num_parallel: int = 8
    ctx_per_sequence: int = 4096
    quantserve_args: tuple[str, ...] = ()  # extra `serve up` flags (e.g. a memory budget)
    hf_model_dir: str = ""  # the vLLM servers' model (a Hugging Face directory)


@dataclasses.dataclass
class RunningServer:
    name: str
    base_url: str
    process: subprocess.Popen
    log_path: Path
    command: list[str]

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period; only this process we started."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _log(message: str) -> None:
    print(f"[peers] {message}", file=sys.stderr, flush=True)


def _download_sdist(cache: Path) -> Path:
    sdist = cache / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
    if sdist.exists():
        return sdist
    _log(f"downloading the llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps",
         f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", str(cache)],
        check=True,
    )
    return sdist


def _unpack_vendored_llama_cpp(sdist: Path, cache: Path) -> Path:
    top = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}"
    source = cache / top / "vendor" / "llama.cpp"
    if (source / "CMakeLists.txt").exists():
        return source
    _log(f"unpacking {sdist.name}")
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(f"{top}/vendor/llama.cpp/")]
        archive.extractall(cache, members=members)
    return source


def build_llama_server(cache: Path = CACHE_DIR) -> Path:
    """Build `llama-server` from the llama.cpp vendored in the pinned sdist, once; return the binary."""
    binary = cache / "build" / "bin" / "llama-server"
    if binary.exists():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    source = _unpack_vendored_llama_cpp(_download_sdist(cache), cache)
    build = cache / "build"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    _log(f"configuring llama.cpp in {build} (one-time build, several minutes on 2 cores)")
    subprocess.run(
        ["cmake", "-S", str(source), "-B", str(build), *generator, "-DCMAKE_BUILD_TYPE=Release",
         "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF",
         "-DLLAMA_BUILD_EXAMPLES=OFF", "-DGGML_NATIVE=ON", "-DBUILD_SHARED_LIBS=OFF"],
        check=True,
    )
    jobs = str(os.cpu_count() or 2)
    subprocess.run(["cmake", "--build", str(build), "--target", "llama-server", "-j", jobs], check=True)
    if not binary.exists():
        raise RuntimeError(f"build finished but {binary} is missing")
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_name(name: str) -> str:
    """`llama-server+ngram-simple` -> `llama-server`."""
    return name.partition("+")[0]


def variant_flags(name: str) -> list[str]:
    """The extra flags a server name carries after `+` (see the module docstring)."""
    base, _, variant = name.partition("+")
    if not variant:
        return []
    if "=" not in variant:
        if base != "llama-server":
            raise ValueError(f"{name!r}: only llama-server takes a bare speculative type; use flag=value")
        return ["--spec-type", variant]
    flags = []
    for pair in variant.split(","):
        flag, _, value = pair.partition("=")
        flags += [f"--{flag.strip()}", value.strip()]
    return flags


def server_command(name: str, settings: ServerSettings, port: int) -> list[str]:
    """The command line that starts server `name` (with its variant flags) with `settings` on `port`."""
    return _base_command(base_name(name), settings, port) + variant_flags(name)


def _base_command(name: str, settings: ServerSettings, port: int) -> list[str]:
    threads = str(settings.num_threads)
    if name == "quantserve-vllm":
        return [sys.executable, "-m", "serve.cli", "up", "--backend", "vllm", "--port", str(port),
                "--model", settings.hf_model_dir, "--parallel", str(settings.num_parallel),
                "--ctx", str(settings.ctx_per_sequence), "--gpu-memory-utilization", str(VLLM_MEMORY_SHARE),
                *settings.quantserve_args]
    if name == "vllm":
        # --enforce-eager as quantserve's vLLM backend on a CPU; vLLM 0.32 has no --disable-log-requests.
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", "127.0.0.1",
                "--port", str(port), "--model", settings.hf_model_dir, "--enforce-eager",
                "--max-num-seqs", str(settings.num_parallel), "--max-model-len", str(settings.ctx_per_sequence),
                "--gpu-memory-utilization", str(VLLM_MEMORY_SHARE), "--enable-prefix-caching",
                "--disable-log-stats"]
    if name == "quantserve":
        return [sys.executable, "-m", "serve.cli", "up", "--port", str(port),
                "--model", settings.model_path, "--threads", threads,
                "--parallel", str(settings.num_parallel), "--ctx", str(settings.ctx_per_sequence),
                *settings.quantserve_args]
    if name == "llama-server":
        total_ctx = settings.ctx_per_sequence * settings.num_parallel
        return [str(build_llama_server()), "-m", settings.model_path, "--host", "127.0.0.1",
                "--port", str(port), "-t", threads, "-tb", threads,
                "-np", str(settings.num_parallel), "-c", str(total_ctx), "--kv-unified",
                "--kv-unified-per-slot", str(settings.ctx_per_sequence),
                "--no-webui"]
    if name == "llama_cpp.server":
        # It serves one sequence at a time: n_ctx is the context of that one sequence. By default a new
        # request cuts the running stream short (interrupt_requests); off, requests queue and complete.
        return [sys.executable, "-m", "llama_cpp.server", "--model", settings.model_path,
                "--host", "127.0.0.1", "--port", str(port), "--n_threads", threads,
                "--n_threads_batch", threads, "--n_ctx", str(settings.ctx_per_sequence),
                "--interrupt_requests", "False"]
    raise ValueError(f"unknown server {name!r}; known: {', '.join(SERVER_NAMES + VLLM_SERVER_NAMES)}")


def _wait_ready(server: RunningServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            tail = server.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}:\n{tail}")
        try:
            response = httpx.get(f"{server.base_url}/v1/models", timeout=2.0)
            if response.status_code == 200:
                health = httpx.get(f"{server.base_url}/health", timeout=2.0)
                if health.status_code in (200, 404):  # llama_cpp.server has no /health
                    return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    server.stop()
    raise TimeoutError(f"{server.name} not ready after {timeout_s:.0f}s; log: {server.log_path}")


def start_server(name: str, settings: ServerSettings, log_dir: Path,
                 timeout_s: float = 600.0) -> RunningServer:
    """Start server `name` and wait until it answers /v1/models (and /health where it has one)."""
    port = free_port()
    command = server_command(name, settings, port)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name.replace('.', '_').replace('+', '_').replace('=', '-')}.log"
    _log(f"starting {name}: {' '.join(command)}")
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT,
                                   cwd=REPO_ROOT, stdin=subprocess.DEVNULL)
    server = RunningServer(name, f"http://127.0.0.1:{port}", process, log_path, command)
    _wait_ready(server, timeout_s)
    return server


if __name__ == "__main__":
    print(build_llama_server())
