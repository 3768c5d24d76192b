"""How much memory a model takes: its weights, and its KV cache per token.

The catalog gives a download size and a parameter count; a local Hugging Face directory gives its
config.json and file sizes. Where nothing exact is known we estimate, and say so in the plan's reasons.

KV-cache heuristic (used when no config.json is at hand): K and V in 16 bits over all layers take
    64 KiB * sqrt(num_params / 1e9)   bytes per token.
Grouped-query-attention models of the last two years sit close to it: SmolLM2-135M 22.5 KiB (heuristic
23.5), Llama-3.2-3B 112 (111), Mistral-7B and Llama-3-8B 128 (169 / 181), Llama-3-70B 320 (535). Older
multi-head models (Llama-2-7B: 512 KiB, Phi-3-mini: 384 KiB) need more than it says.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from serve.models.catalog import ModelSpec
from serve.errors import ConfigError
from serve.models.gguf import read_gguf_info

GiB = 1024**3
CONTEXT_STEP = 256
KV_BYTES_PER_SQRT_BILLION = 64 * 1024
UNKNOWN_KV_BYTES_PER_TOKEN = 128 * 1024  # a 7B-class model: the common case when we know nothing
# Effective bits per weight, scales and unquantized embeddings included (measured on Q4_K_M/AWQ files).
GGUF_BITS = {"IQ2_XXS": 2.1, "IQ3_XXS": 3.1, "Q2_K": 3.0, "Q3_K_S": 3.5, "Q3_K_M": 3.9, "Q3_K_L": 4.3,
             "IQ4_XS": 4.3, "Q4_0": 4.55, "Q4_1": 5.0, "Q4_K_S": 4.6, "Q4_K_M": 4.85, "Q5_0": 5.5, "Q5_1": 6.0,
             "Q5_K_S": 5.5, "Q5_K_M": 5.7, "Q6_K": 6.6, "Q8_0": 8.5, "BF16": 16.0, "F16": 16.0, "F32": 32.0}
DEFAULT_GGUF_BITS = GGUF_BITS["Q4_K_M"]
VLLM_BITS = {"awq": 5.0, "awq_marlin": 5.0, "gptq": 5.0, "gptq_marlin": 5.0, "bitsandbytes": 5.0,
             "compressed-tensors": 5.0, "fp8": 9.0,
             "mxfp4": 4.25}  # gpt-oss: 4-bit experts with a shared 8-bit scale per 32 weights
SIXTEEN_BITS = 16.0
# Bits per K or V element by KV cache type (`--kv-type`): llama.cpp's q8_0 and q4_0 store a 16-bit scale
# per block of 32 values. "auto" is 16-bit on both backends.
KV_TYPE_BITS = {"auto": 16.0, "f16": 16.0, "q8_0": 8.5, "q4_0": 4.5, "fp8": 8.0, "fp8_e4m3": 8.0, "fp8_e5m2": 8.0}


@dataclass(frozen=True)
class Footprint:
    weights_bytes: int  # 0: unknown
    kv_bytes_per_token: int  # K and V of one token over all layers
    num_params: int  # 0: unknown
    source: str  # where the weights figure comes from, in plain words


def with_kv_type(fp: Footprint, kv_type: str) -> Footprint:
    """The footprint with its KV bytes per token (always computed for 16 bits) in `kv_type`."""
    scale = KV_TYPE_BITS.get(kv_type, SIXTEEN_BITS) / SIXTEEN_BITS
    return dataclasses.replace(fp, kv_bytes_per_token=max(int(fp.kv_bytes_per_token * scale), 1))


def gib(num_bytes: float) -> str:
    """A memory size for people: GiB with one decimal, MiB below 1 GiB."""
    if abs(num_bytes) < GiB:
        return f"{num_bytes / 1024**2:.0f} MiB"
    return f"{num_bytes / GiB:.1f} GiB"


def _params_words(num_params: int) -> str:
    return f"{num_params / 1e9:.1f}B" if num_params >= 1e9 else f"{num_params / 1e6:.0f}M"


def fitting_context(room: int, kv_bytes_per_token: int, wanted: int) -> int:
    """The largest context (a multiple of CONTEXT_STEP, at most `wanted`) whose KV cache fits `room`."""
    fitting = (max(room, 0) // max(kv_bytes_per_token, 1)) // CONTEXT_STEP * CONTEXT_STEP
    return max(min(wanted, fitting), CONTEXT_STEP)


def heuristic_kv_bytes_per_token(num_params: int) -> int:
    if num_params <= 0:
        return UNKNOWN_KV_BYTES_PER_TOKEN
    return int(KV_BYTES_PER_SQRT_BILLION * math.sqrt(num_params / 1e9))


def gguf_bits(spec: ModelSpec) -> float:
    """Bits per weight from the quant tag (catalog `quant`, or the file name)."""
    source = spec.gguf
    names = [source.quant or "", source.file or "", source.local_path.name if source.local_path else ""]
    text = " ".join(names).upper().replace("-", "_")
    for tag in sorted(GGUF_BITS, key=len, reverse=True):
        if tag in text:
            return GGUF_BITS[tag]
    return DEFAULT_GGUF_BITS


def gguf_footprint(spec: ModelSpec) -> Footprint:
    """Weights of the GGUF file llama.cpp loads: its size when known, else parameters x bits."""
    bits = gguf_bits(spec)
    path = spec.gguf.local_path
    if spec.download_bytes > 0:
        weights, source = spec.download_bytes, f"{gib(spec.download_bytes)} GGUF file (catalog)"
    elif path is not None and path.is_file():
        weights = path.stat().st_size
        source = f"{gib(weights)} GGUF file"
    elif spec.num_params > 0:
        weights = int(spec.num_params * bits / 8)
        source = f"about {gib(weights)} ({_params_words(spec.num_params)} parameters at {bits} bits)"
    else:
        return Footprint(0, UNKNOWN_KV_BYTES_PER_TOKEN, 0, "size unknown")
    num_params = spec.num_params or int(weights * 8 / bits)
    kv = gguf_kv_bytes_per_token(path) if path is not None and path.is_file() else 0
    return Footprint(weights, kv or heuristic_kv_bytes_per_token(num_params), num_params, source)


def gguf_kv_bytes_per_token(path: Path) -> int:
    """Exact f16 KV bytes per token from a local GGUF header; 0 when it does not say."""
    try:
        metadata = read_gguf_info(path).metadata
        arch = metadata["general.architecture"]
        num_heads = int(metadata[f"{arch}.attention.head_count"])
        num_kv_heads = int(metadata.get(f"{arch}.attention.head_count_kv", num_heads))
        key_length = int(metadata.get(f"{arch}.attention.key_length")
                         or int(metadata[f"{arch}.embedding_length"]) // num_heads)
        value_length = int(metadata.get(f"{arch}.attention.value_length") or key_length)
        return int(metadata[f"{arch}.block_count"]) * num_kv_heads * (key_length + value_length) * 2
    except (ConfigError, KeyError, TypeError, ValueError, ZeroDivisionError):
        return 0


def hf_config(spec: ModelSpec) -> dict:
    """config.json of a local Hugging Face directory ({} when there is none)."""
    path = spec.vllm.local_path if spec.vllm else None
    if path is None or not (path / "config.json").is_file():
        return {}
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def checkpoint_quantization(spec: ModelSpec) -> str | None:
    """The vLLM checkpoint's own quantization (catalog entry, else config.json), None when 16-bit."""
    if spec.vllm and spec.vllm.quantization:
        return spec.vllm.quantization
    method = hf_config(spec).get("quantization_config", {}).get("quant_method")
    return str(method) if method else None


def config_kv_bytes_per_token(config: dict) -> int:
    """2 (K and V) x layers x KV heads x head size x 2 bytes; 0 when config.json lacks the fields."""
    text = config.get("text_config", config)
    try:
        num_heads = int(text["num_attention_heads"])
        num_kv_heads = int(text.get("num_key_value_heads") or num_heads)
        head_dim = int(text.get("head_dim") or int(text["hidden_size"]) // num_heads)
        return 2 * int(text["num_hidden_layers"]) * num_kv_heads * head_dim * 2
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return 0


def _checkpoint_bytes(path: Path) -> int:
    files = list(path.glob("*.safetensors")) or list(path.glob("*.bin"))
    return sum(f.stat().st_size for f in files)


def vllm_footprint(spec: ModelSpec, quantization: str | None) -> Footprint:
    """Weights vLLM holds for this checkpoint once loaded with `quantization` (None: 16-bit)."""
    config = hf_config(spec)
    bits = VLLM_BITS.get(quantization or "", SIXTEEN_BITS)
    kv = config_kv_bytes_per_token(config)
    path = spec.vllm.local_path if spec.vllm else None
    on_disk = _checkpoint_bytes(path) if path is not None and path.is_dir() else 0
    if on_disk:
        # vLLM loads float32 checkpoints in 16 bits, and FP8 on the fly halves a 16-bit one.
        scale = 0.5 if config.get("torch_dtype") == "float32" else 1.0
        if quantization == "fp8" and checkpoint_quantization(spec) is None:
            scale *= bits / SIXTEEN_BITS
        weights = int(on_disk * scale)
        source = f"{gib(weights)} checkpoint"
    elif spec.num_params > 0:
        weights = int(spec.num_params * bits / 8)
        source = f"about {gib(weights)} ({_params_words(spec.num_params)} parameters at {bits:g} bits)"
    elif spec.download_bytes > 0:
        weights, source = spec.download_bytes, f"about {gib(spec.download_bytes)} (catalog download size)"
    else:
        return Footprint(0, kv or UNKNOWN_KV_BYTES_PER_TOKEN, 0, "size unknown")
    num_params = spec.num_params or int(weights * 8 / bits)
    return Footprint(weights, kv or heuristic_kv_bytes_per_token(num_params), num_params, source)
