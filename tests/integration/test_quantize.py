"""Quantizing a real F16 GGUF (SmolLM2-135M dequantized with the `gguf` package) with llama.cpp's quantizer,
then loading and generating with each result."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from serve.models.catalog import embedded_model_path
from serve.errors import ConfigError
from serve.models.gguf import read_gguf_info
from serve.models.quantize import quantize_file
from tests.fixtures_gguf import f16_gguf

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")

ROOT = Path(__file__).resolve().parents[2]
# a bare ChatML prompt (no system block): the model answers this one sensibly
PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def _generate(path: Path) -> dict:
    # one thread: on a shared 2-core machine OpenMP's spinning threads slow each other down badly
    model = llama_cpp.Llama(str(path), n_ctx=256, n_threads=1, verbose=False)
    try:
        return model.create_completion(PROMPT, max_tokens=6, temperature=0)
    finally:
        model.close()


@pytest.fixture(scope="module")
def f16() -> Path:
    path = f16_gguf()
    assert read_gguf_info(path).quantized_types() == []  # a real unquantized source
    return path


@pytest.mark.parametrize("quant_type, expected_type, max_mb", [("q4_k_m", "Q4_K", 115), ("Q8_0", "Q8_0", 150)])
def test_f16_quantizes_and_the_result_generates(f16, tmp_path, quant_type, expected_type, max_mb):
    out = quantize_file(f16, quant_type, tmp_path / f"smol-{quant_type}.gguf", progress=False)
    info = read_gguf_info(out)
    assert expected_type in info.quantized_types()
    assert len(info.tensor_types) == len(read_gguf_info(f16).tensor_types)
    size = out.stat().st_size
    assert size < f16.stat().st_size / 1.8 and size < max_mb * 1_000_000
    assert not list(tmp_path.glob("*.tmp"))
    result = _generate(out)
    assert result["usage"]["completion_tokens"] >= 1 and result["choices"][0]["text"].strip()


def test_already_quantized_input_is_refused_unless_allowed(tmp_path):
    q4_1 = embedded_model_path()
    with pytest.raises(ConfigError) as info:
        quantize_file(q4_1, "q8_0", tmp_path / "re.gguf", progress=False)
    assert "already quantized (Q4_1, Q8_0)" in info.value.message and "--allow-requantize" in info.value.message
    assert not (tmp_path / "re.gguf").exists()
    out = quantize_file(q4_1, "q8_0", tmp_path / "re.gguf", allow_requantize=True, progress=False)
    assert "Q8_0" in read_gguf_info(out).quantized_types() and "Q4_1" not in read_gguf_info(out).quantized_types()


def test_non_gguf_and_bad_arguments_fail_with_one_line(tmp_path, f16):
    text = tmp_path / "weights.gguf"
    text.write_text("these are not weights\n")
    with pytest.raises(ConfigError, match="is not a GGUF file"):
        quantize_file(text, "q4_k_m", progress=False)
    with pytest.raises(ConfigError, match="model file not found"):
        quantize_file(tmp_path / "missing.gguf", "q4_k_m", progress=False)
    with pytest.raises(ConfigError, match="unknown quantization type 'q3_k'"):
        quantize_file(f16, "q3_k", progress=False)
    with pytest.raises(ConfigError, match="would overwrite the input"):
        quantize_file(f16, "q4_k_m", f16, progress=False)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "serve.cli", "quantize", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_quantize_command_shows_progress_and_errors_in_one_line(tmp_path, f16):
    source = tmp_path / "SmolLM2-135M-Instruct-F16.gguf"
    source.symlink_to(f16)
    done = _cli(str(source), "--type", "q4_k_m")
    assert done.returncode == 0, done.stderr
    out = tmp_path / "SmolLM2-135M-Instruct-Q4_K_M.gguf"
    assert done.stdout.startswith(f"{out} (") and out.exists()
    assert "SmolLM2-135M-Instruct-F16.gguf -> Q4_K_M" in done.stdout + done.stderr  # the progress bar
    assert "falling back" not in done.stderr  # llama.cpp's per-tensor log stays hidden
    refused = _cli(str(embedded_model_path()), "--type", "q8_0", "-o", str(tmp_path / "x.gguf"))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().startswith("error: ") and len(refused.stderr.strip().splitlines()) == 1
    assert "--allow-requantize" in refused.stderr
