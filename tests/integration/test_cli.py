"""The `serve` command line: one actionable line per mistake, never a traceback; probe and ps output."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from serve.models.catalog import embedded_model_path

from tests.integration.conftest import start_llamacpp_server
from tests.integration.server import REPO_ROOT, free_port


def serve(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "serve.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO_ROOT, env=env)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0]
    return errors[0]


def test_unknown_alias_suggests_close_matches():
    assert_one_line_error(serve("up", "--model", "mistral-7b-q5", "--port", str(free_port())), "mistral-7b-q5",
                          "did you mean", "mistral-7b-q4")


def test_missing_model_file():
    assert_one_line_error(serve("up", "--model", "/nowhere/model.gguf", "--port", str(free_port())), "not found", "/nowhere/model.gguf")


def test_port_in_use():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert_one_line_error(serve("up", "--port", str(port)), f"port {port}", "already in use", "--port")


@pytest.mark.parametrize("args, fragment", [(["--ctx", "-5"], "context_length"),
                                            (["--max-memory", "lots"], "memory size"),
                                            (["--keep-alive", "forever"], "keep_alive"),
                                            (["--backend", "tensorrt"], "tensorrt")])
def test_bad_flag_values(args, fragment):
    assert_one_line_error(serve("up", *args), fragment)


def test_models_dir_must_be_a_directory(tmp_path):
    missing = tmp_path / "nowhere"
    assert_one_line_error(serve("up", "--models-dir", str(missing), "--port", str(free_port())),
                          f"--models-dir {missing} is not a directory")


def test_impossible_backend_override_names_what_is_missing(tmp_path):
    """A GGUF file cannot go to vLLM; a Hugging Face directory cannot go to llama.cpp."""
    gguf = str(embedded_model_path())
    line = assert_one_line_error(serve("up", "--backend", "vllm", "--model", gguf, "--port", str(free_port())))
    assert "--backend llamacpp" in line or "vllm is not installed: pip install" in line
    hf_dir = tmp_path / "some-hf-model"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text("{}")
    assert_one_line_error(serve("up", "--backend", "llamacpp", "--model", str(hf_dir), "--port", str(free_port())),
                          "no GGUF file")


def test_probe_json_has_hardware_and_plan():
    result = serve("probe", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {"cpu", "memory", "gpus", "plan"} <= set(report)
    assert report["plan"]["backend"] == "llamacpp"  # no NVIDIA GPU on the test machines
    assert report["cpu"]["num_logical_cores"] >= 1 and report["plan"]["reasons"]


def test_ps_lists_what_a_running_server_has_loaded(tmp_path_factory):
    with start_llamacpp_server(tmp_path_factory, "ps", ["--parallel", "2", "--ctx", "512"]) as server:
        result = serve("ps", "--port", str(server.port))
        assert result.returncode == 0, result.stderr
        header, row = result.stdout.splitlines()[:2]
        assert header.split()[:3] == ["NAME", "BACKEND", "SIZE"]
        assert row.split()[:2] == ["smollm2-135m:latest", "llamacpp"] and row.split()[-1] == "never"


def test_ps_without_a_server():
    assert_one_line_error(serve("ps", "--port", str(free_port())), "no quantserve server")


def test_models_json_states_what_each_model_can_do(tmp_path):
    user = tmp_path / "models.toml"
    user.write_text('[models.my-embedder]\ngguf = { repo = "org/embed-GGUF", quant = "Q8_0" }\ncontext_length = 512\n'
                    'num_params = 33_000_000\nlicense = "mit"\ndownload_bytes = 36_000_000\n'
                    'capabilities = ["embeddings"]\npooling = "cls"\n')
    result = serve("models", "--json", "--catalog", str(user))
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["my-embedder"]["capabilities"] == ["embeddings"] and rows["my-embedder"]["pooling"] == "cls"
    assert rows["qwen3-8b-q4"]["capabilities"] == ["chat", "tools", "reasoning"]
    assert rows["gpt-oss-20b"]["tool_format"] == "gpt_oss" and rows["gpt-oss-20b"]["reasoning_format"] == "harmony"
    assert all(row["capabilities"] for row in rows.values())


def test_unknown_capability_in_a_user_catalog_is_one_line(tmp_path):
    user = tmp_path / "models.toml"
    user.write_text('[models.mine]\ngguf = { repo = "org/m-GGUF", quant = "Q4_K_M" }\ncontext_length = 4096\n'
                    'num_params = 1_000_000_000\nlicense = "mit"\ndownload_bytes = 600_000_000\n'
                    'capabilities = ["chat", "telepathy"]\n')
    assert_one_line_error(serve("models", "--catalog", str(user)), "models.mine", "capabilities", "'telepathy'")
