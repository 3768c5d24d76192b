"""GGUFs in the exact shape of Qwen2.5-0.5B-Instruct and Llama-3.2-1B-Instruct, with random weights.

Speed does not depend on the weights' values, only on the architecture, the tensor shapes and the
quantization types, so these stand in for the real models (the Hugging Face Hub is unreachable here).
Each file has the real architecture metadata (from the models' config.json), the real tokenizer (the
vocab GGUFs llama.cpp ships for its tokenizer tests, `models/ggml-vocab-qwen2.gguf` and
`ggml-vocab-llama-bpe.gguf`, in the vendored llama.cpp of the llama-cpp-python sdist), the tensor names
and sizes llama.cpp's converter writes, and random weights: written as F16 with the `gguf` package (it
cannot write Q4_K), then quantized to Q4_K_M by llama.cpp (serve/models/quantize.py), as a user would.

    python -m benchmarks.shapes            # makes both (once) under benchmarks/.cache/shapes/, prints paths
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

from benchmarks.peers import CACHE_DIR, LLAMA_CPP_PYTHON_VERSION

SHAPES_DIR = CACHE_DIR / "shapes"
VOCAB_DIR = CACHE_DIR / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}" / "vendor" / "llama.cpp" / "models"

LLAMA3_TEMPLATE = (  # Llama 3.x Instruct's turn format (without its tool and date preamble)
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")


@dataclasses.dataclass(frozen=True)
class Shape:
    """A model's architecture as its config.json gives it."""

    name: str
    arch: str  # llama.cpp's architecture name
    vocab_file: str  # ggml-vocab-<x>.gguf: the model family's tokenizer
    num_params_b: float  # as the model card names it, for the plot
    hidden: int
    intermediate: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    context_length: int
    rope_theta: float
    rms_eps: float
    qkv_bias: bool
    eos_token_id: int  # the Instruct model's end of turn
    chat_template: str | None = None  # None: keep the vocab GGUF's
    rope_scaling: dict | None = None  # Llama 3's long-context rope: llama.cpp stores it as rope_freqs

    @property
    def head_dim(self) -> int:
        return self.hidden // self.num_heads


QWEN25_05B = Shape("qwen2.5-0.5b-instruct-shape", "qwen2", "qwen2", 0.49, hidden=896, intermediate=4864,
                   num_layers=24, num_heads=14, num_kv_heads=2, context_length=32768, rope_theta=1e6,
                   rms_eps=1e-6, qkv_bias=True, eos_token_id=151645)
LLAMA32_1B = Shape("llama-3.2-1b-instruct-shape", "llama", "llama-bpe", 1.24, hidden=2048, intermediate=8192,
                   num_layers=16, num_heads=32, num_kv_heads=8, context_length=131072, rope_theta=500000.0,
                   rms_eps=1e-5, qkv_bias=False, eos_token_id=128009, chat_template=LLAMA3_TEMPLATE,
                   rope_scaling={"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 8192})
SHAPES = {"qwen2.5-0.5b": QWEN25_05B, "llama-3.2-1b": LLAMA32_1B}


def tensor_shapes(shape: Shape, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """llama.cpp's tensor names and their shapes in numpy order (rows, columns) as the converter writes
    them. Both models tie the output projection to the embeddings, so there is no output.weight."""
    h, kv = shape.hidden, shape.num_kv_heads * shape.head_dim
    tensors: dict[str, tuple[int, ...]] = {"token_embd.weight": (vocab_size, h), "output_norm.weight": (h,)}
    if shape.rope_scaling:
        tensors["rope_freqs.weight"] = (shape.head_dim // 2,)
    for i in range(shape.num_layers):
        block = {"attn_norm.weight": (h,), "attn_q.weight": (h, h), "attn_k.weight": (kv, h),
                 "attn_v.weight": (kv, h), "attn_output.weight": (h, h), "ffn_norm.weight": (h,),
                 "ffn_gate.weight": (shape.intermediate, h), "ffn_up.weight": (shape.intermediate, h),
                 "ffn_down.weight": (h, shape.intermediate)}
        if shape.qkv_bias:
            block.update({"attn_q.bias": (h,), "attn_k.bias": (kv,), "attn_v.bias": (kv,)})
        tensors.update({f"blk.{i}.{name}": dims for name, dims in block.items()})
    return tensors


def llama3_rope_freqs(shape: Shape) -> np.ndarray:
    """The per-dimension rope frequency factors llama.cpp's converter computes for Llama 3.1+ rope scaling."""
    scaling = shape.rope_scaling
    base_freqs = 1.0 / (shape.rope_theta ** (np.arange(0, shape.head_dim, 2, dtype=np.float64) / shape.head_dim))
    old_len = scaling["original_max_position_embeddings"]
    low_wavelen = old_len / scaling["low_freq_factor"]
    high_wavelen = old_len / scaling["high_freq_factor"]
    factors = []
    for freq in base_freqs:
        wavelen = 2 * np.pi / freq
        if wavelen < high_wavelen:
            factors.append(1.0)
        elif wavelen > low_wavelen:
            factors.append(scaling["factor"])
        else:
            smooth = (old_len / wavelen - scaling["low_freq_factor"]) / (
                scaling["high_freq_factor"] - scaling["low_freq_factor"])
            factors.append(1.0 / ((1 - smooth) / scaling["factor"] + smooth))
    return np.asarray(factors, dtype=np.float32)


def _copy_tokenizer(writer, vocab_path: Path, shape: Shape) -> int:
    """Every tokenizer.* field of the vocab GGUF; returns the vocabulary size."""
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(str(vocab_path))
    vocab_size = 0
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        if key in ("tokenizer.ggml.eos_token_id",) or (key == "tokenizer.chat_template" and shape.chat_template):
            continue
        value = field.contents()
        if key == "tokenizer.ggml.tokens":
            vocab_size = len(value)
        kind = field.types[0]
        sub_type = field.types[-1] if kind == GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, kind, sub_type=sub_type)
    writer.add_eos_token_id(shape.eos_token_id)
    if shape.chat_template:
        writer.add_chat_template(shape.chat_template)
    return vocab_size


def write_f16(shape: Shape, path: Path, seed: int = 0) -> Path:
    """The F16 GGUF with random weights (norms 1.0, so activations stay finite)."""
    import gguf

    writer = gguf.GGUFWriter(str(path), shape.arch)
    writer.add_name(shape.name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    writer.add_context_length(shape.context_length)
    writer.add_embedding_length(shape.hidden)
    writer.add_feed_forward_length(shape.intermediate)
    writer.add_block_count(shape.num_layers)
    writer.add_head_count(shape.num_heads)
    writer.add_head_count_kv(shape.num_kv_heads)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_layer_norm_rms_eps(shape.rms_eps)
    writer.add_rope_dimension_count(shape.head_dim)
    vocab_size = _copy_tokenizer(writer, VOCAB_DIR / f"ggml-vocab-{shape.vocab_file}.gguf", shape)
    writer.add_vocab_size(vocab_size)
    rng = np.random.default_rng(seed)
    for name, dims in tensor_shapes(shape, vocab_size).items():
        if name == "rope_freqs.weight":
            writer.add_tensor(name, llama3_rope_freqs(shape))
        elif name.endswith("norm.weight"):
            writer.add_tensor(name, np.ones(dims, dtype=np.float32))  # 1-D tensors stay F32, as converted
        elif len(dims) == 1:
            writer.add_tensor(name, (rng.standard_normal(dims, dtype=np.float32) * 0.02))
        else:
            writer.add_tensor(name, (rng.standard_normal(dims, dtype=np.float32) * 0.02).astype(np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def shape_model(key: str, quant_type: str = "q4_k_m") -> Path:
    """The cached quantized GGUF of shape `key` (see SHAPES); made on first use (a minute or two)."""
    from serve.models.quantize import quantize_file

    shape = SHAPES[key]
    out = SHAPES_DIR / f"{shape.name}-{quant_type.upper()}.gguf"
    if out.exists():
        return out
    SHAPES_DIR.mkdir(parents=True, exist_ok=True)
    f16 = SHAPES_DIR / f"{shape.name}-F16.gguf"
    print(f"[shapes] writing {f16.name} (random weights)", file=sys.stderr, flush=True)
    partial = f16.with_name(f16.name + ".partial")
    write_f16(shape, partial)
    partial.rename(f16)
    try:
        quantize_file(f16, quant_type, out, progress=False)
    finally:
        f16.unlink(missing_ok=True)  # the F16 is only a step: 1-2.5 GB
    return out


if __name__ == "__main__":
    for shape_key in (sys.argv[1:] or SHAPES):
        print(shape_model(shape_key))
