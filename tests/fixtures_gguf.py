"""Real GGUF test files made from the embedded SmolLM2-135M-Instruct Q4_1 model with the `gguf` package.

- an F16 GGUF: every quantized tensor dequantized to float16 (what a Hub repo's `*-f16.gguf` looks like);
- a widened F16 GGUF: the same function at the cost of a bigger model, each layer's MLP padded with zero units
  (benchmarks/padded_target.py: a ~1B-parameter target for draft-model speculation);
- a split GGUF: the same Q4_1 tensors written as `<stem>-0000i-of-0000N.gguf` shards, as `gguf-split` does;
- a "Mistral-marked" GGUF: the same model whose vocabulary has `[TOOL_CALLS]` as a special (control) token, as
  Mistral's has (an unused special token of SmolLM2's is renamed), and a Mistral-style chat template with tools.

Files are built once and cached under QUANTSERVE_TEST_CACHE (default ~/.cache/quantserve-tests), keyed by the
source file's size and a builder version, because dequantizing 135M parameters takes a while on 2 cores.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

import gguf
from serve.models.catalog import embedded_model_path

BUILDER_VERSION = 1
_UNQUANTIZED = {gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16}


def cache_dir() -> Path:
    source = embedded_model_path()
    root = Path(os.environ.get("QUANTSERVE_TEST_CACHE", Path.home() / ".cache" / "quantserve-tests"))
    path = root / f"v{BUILDER_VERSION}-{source.stat().st_size}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _copy_metadata(reader: gguf.GGUFReader, writer: gguf.GGUFWriter, overrides: dict) -> None:
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        val_type = field.types[0]
        sub_type = field.types[-1] if val_type == gguf.GGUFValueType.ARRAY else None
        value = overrides.get(field.name, field.contents())
        writer.add_key_value(field.name, value, val_type, sub_type=sub_type)


def _arch(reader: gguf.GGUFReader) -> str:
    return reader.fields[gguf.Keys.General.ARCHITECTURE].contents()


def _build_f16(src: Path, dst: Path, ffn_length: int | None = None) -> None:
    """`src` with every quantized tensor dequantized to float16; with `ffn_length`, each layer's MLP widened
    to that many units by zero ones (see _widened)."""
    reader = gguf.GGUFReader(src)
    tmp = dst.with_suffix(".tmp")
    writer = gguf.GGUFWriter(tmp, _arch(reader))
    overrides = {gguf.Keys.General.FILE_TYPE: int(gguf.LlamaFileType.MOSTLY_F16)}
    if ffn_length:
        overrides[gguf.Keys.LLM.FEED_FORWARD_LENGTH.format(arch=_arch(reader))] = ffn_length
    _copy_metadata(reader, writer, overrides)
    for tensor in reader.tensors:
        if tensor.tensor_type in _UNQUANTIZED:
            writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes,
                                   tensor.tensor_type)
        else:
            shape = _widened_shape(tensor.name, tuple(int(d) for d in reversed(tensor.shape)), ffn_length)
            writer.add_tensor_info(tensor.name, shape, np.dtype(np.float16), int(np.prod(shape)) * 2)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        if tensor.tensor_type in _UNQUANTIZED:
            writer.write_tensor_data(tensor.data)
        else:
            values = gguf.dequantize(tensor.data, tensor.tensor_type).astype(np.float16)
            writer.write_tensor_data(_widened(tensor.name, values, ffn_length))
    writer.close()
    tmp.replace(dst)


def _widened_shape(name: str, shape: tuple[int, ...], ffn_length: int | None) -> tuple[int, ...]:
    """A tensor's shape (numpy order) once its MLP has `ffn_length` units: gate and up get rows, down columns."""
    if not ffn_length:
        return shape
    if name.endswith(("ffn_gate.weight", "ffn_up.weight")):
        return (ffn_length, shape[1])
    if name.endswith("ffn_down.weight"):
        return (shape[0], ffn_length)
    return shape


def _widened(name: str, values: np.ndarray, ffn_length: int | None) -> np.ndarray:
    """`values` padded with zeros to _widened_shape. The function is unchanged: an added unit's gate and up
    rows are zero, so its activation is silu(0) * 0 = 0, and its zero column of down adds nothing (only the
    order of the float sums may differ)."""
    shape = _widened_shape(name, values.shape, ffn_length)
    if shape == values.shape:
        return values
    if any(new < old for new, old in zip(shape, values.shape)):
        raise ValueError(f"cannot narrow {name} {values.shape} to {ffn_length} MLP units")
    padded = np.zeros(shape, dtype=values.dtype)
    padded[:values.shape[0], :values.shape[1]] = values
    return padded


def _build_split(src: Path, stem: Path, num_shards: int) -> list[Path]:
    reader = gguf.GGUFReader(src)
    per_shard = -(-len(reader.tensors) // num_shards)
    tmp_dir = stem.parent / (stem.name + ".tmp")
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir()
    writer = gguf.GGUFWriter(tmp_dir / (stem.name + ".gguf"), _arch(reader), split_max_tensors=per_shard)
    _copy_metadata(reader, writer, {})
    _write_tensors(reader, writer)
    shards = sorted(tmp_dir.glob("*.gguf"))
    final = [stem.parent / shard.name for shard in shards]
    for shard, target in zip(shards, final):
        shard.replace(target)
    tmp_dir.rmdir()
    return final


def f16_gguf() -> Path:
    """SmolLM2-135M-Instruct as an F16 GGUF (~270 MB), built once."""
    dst = cache_dir() / "SmolLM2-135M-Instruct-F16.gguf"
    if not dst.exists():
        _build_f16(embedded_model_path(), dst)
    return dst


def widened_f16_gguf(ffn_length: int, directory: Path | None = None) -> Path:
    """SmolLM2-135M-Instruct as an F16 GGUF whose MLPs have `ffn_length` units (1,536 are real, the rest
    zero): the same outputs at a bigger model's cost. Built once, in `directory` (default: cache_dir())."""
    dst = (directory or cache_dir()) / f"SmolLM2-135M-Instruct-ffn{ffn_length}-F16.gguf"
    if not dst.exists():
        dst.parent.mkdir(parents=True, exist_ok=True)
        _build_f16(embedded_model_path(), dst, ffn_length)
    return dst


def split_gguf(num_shards: int = 2) -> list[Path]:
    """SmolLM2-135M-Instruct Q4_1 split into `num_shards` shards, built once; first shard first."""
    stem = cache_dir() / "SmolLM2-135M-Instruct-Q4_1"
    expected = [stem.parent / f"{stem.name}-{i:05d}-of-{num_shards:05d}.gguf" for i in range(1, num_shards + 1)]
    if not all(p.exists() for p in expected):
        built = _build_split(embedded_model_path(), stem, num_shards)
        assert built == expected, built
    return expected


MISTRAL_MARKER = "[TOOL_CALLS]"
MISTRAL_MARKER_ID = 7  # SmolLM2's <gh_stars>, a control token the instruct model never writes
# Mistral v0.3's tool markup, cut down: tools in [AVAILABLE_TOOLS], calls after [TOOL_CALLS] as a JSON list.
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}"
    "{% for message in messages %}"
    "{% if message.role == 'user' or message.role == 'system' %}[INST]{{ message.content }}[/INST]"
    "{% elif message.role == 'assistant' and message.tool_calls %}[TOOL_CALLS][{% for call in message.tool_calls %}"
    '{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}'
    "{% if not loop.last %}, {% endif %}{% endfor %}]{{ eos_token }}"
    "{% elif message.role == 'assistant' %}{{ message.content }}{{ eos_token }}"
    "{% elif message.role == 'tool' %}[TOOL_RESULTS]{{ message.content }}[/TOOL_RESULTS]{% endif %}"
    "{% endfor %}")


def _build_mistral_marked(src: Path, dst: Path) -> None:
    reader = gguf.GGUFReader(src)
    tokens = list(reader.fields["tokenizer.ggml.tokens"].contents())
    assert reader.fields["tokenizer.ggml.token_type"].contents()[MISTRAL_MARKER_ID] == gguf.TokenType.CONTROL
    tokens[MISTRAL_MARKER_ID] = MISTRAL_MARKER
    tmp = dst.with_suffix(".tmp")
    writer = gguf.GGUFWriter(tmp, _arch(reader))
    _copy_metadata(reader, writer, {"tokenizer.ggml.tokens": tokens, gguf.Keys.Tokenizer.CHAT_TEMPLATE: MISTRAL_TEMPLATE})
    _write_tensors(reader, writer)
    tmp.replace(dst)


def mistral_marked_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1 with `[TOOL_CALLS]` as a special token and a Mistral-style template, built once."""
    dst = cache_dir() / "SmolLM2-135M-Instruct-mistral-marked.gguf"
    if not dst.exists():
        _build_mistral_marked(embedded_model_path(), dst)
    return dst


def _write_tensors(reader, writer) -> None:
    """Every tensor of `reader`, unchanged, after the metadata already given to `writer`; closes it."""
    for tensor in reader.tensors:
        writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes,
                               tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in reader.tensors:
        writer.write_tensor_data(tensor.data)
    writer.close()
