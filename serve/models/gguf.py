"""A small reader for GGUF headers: metadata scalars and tensor types, without loading any weights.

quantserve needs to know whether a file is a GGUF at all, whether it is already quantized (quantizing twice
loses quality), and whether it is one shard of a split model. The `gguf` package can do this but is not a
runtime dependency, and llama.cpp would load the whole model; the header is all we need.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from serve.errors import ConfigError

GGUF_MAGIC = b"GGUF"

# ggml_type ids (ggml.h) that hold plain floats; everything else is a quantized block format.
UNQUANTIZED_TYPES = {0: "F32", 1: "F16", 30: "BF16", 28: "F64"}
GGML_TYPE_NAMES = {
    **UNQUANTIZED_TYPES, 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1", 10: "Q2_K",
    11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS",
    19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32",
    27: "I64", 29: "IQ1_M", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
            12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class GGUFInfo:
    path: Path
    version: int
    metadata: dict  # scalar and string values; arrays are skipped (tokenizer vocabularies are large)
    tensor_types: dict[str, int]  # tensor name -> ggml_type id
    tensor_shapes: dict[str, tuple[int, ...]]

    @property
    def split_count(self) -> int:
        return int(self.metadata.get("split.count", 1))

    def quantized_types(self) -> list[str]:
        """Names of the quantized tensor types present (empty for an F32/F16/BF16 file)."""
        ids = {t for t in self.tensor_types.values() if t not in UNQUANTIZED_TYPES}
        return sorted(GGML_TYPE_NAMES.get(t, f"type{t}") for t in ids)

    def num_elements(self, *, two_dim: bool) -> int:
        """Elements in 2-D+ weight tensors (two_dim=True) or in 1-D tensors (norms, biases)."""
        total = 0
        for shape in self.tensor_shapes.values():
            if (len(shape) >= 2) == two_dim:
                count = 1
                for dim in shape:
                    count *= dim
                total += count
        return total


def _read(f: BinaryIO, fmt: str):
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise EOFError("truncated GGUF header")
    return struct.unpack(fmt, data)[0]


def _read_string(f: BinaryIO) -> str:
    length = _read(f, "<Q")
    if length > os.fstat(f.fileno()).st_size - f.tell():  # garbage lengths must not allocate exabytes
        raise EOFError("truncated GGUF string")
    data = f.read(length)
    if len(data) != length:
        raise EOFError("truncated GGUF string")
    return data.decode("utf-8", errors="replace")


def _read_value(f: BinaryIO, value_type: int):
    if value_type in _SCALARS:
        return _read(f, _SCALARS[value_type])
    if value_type == _STRING:
        return _read_string(f)
    if value_type == _ARRAY:
        item_type, count = _read(f, "<I"), _read(f, "<Q")
        if item_type in _SCALARS:
            f.seek(struct.calcsize(_SCALARS[item_type]) * count, 1)
        else:
            for _ in range(count):
                _read_value(f, item_type)
        return None
    raise ValueError(f"unknown GGUF value type {value_type}")


def read_gguf_info(path: Path) -> GGUFInfo:
    """Parse the header of a GGUF file; ConfigError (one line) if it is not a readable GGUF file."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            if f.read(4) != GGUF_MAGIC:
                raise ConfigError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")
            version = _read(f, "<I")
            if version not in (1, 2, 3):
                raise ValueError(f"unsupported GGUF version {version}")
            num_tensors, num_kv = _read(f, "<Q"), _read(f, "<Q")
            metadata = {}
            for _ in range(num_kv):
                key = _read_string(f)
                value = _read_value(f, _read(f, "<I"))
                if value is not None:
                    metadata[key] = value
            types, shapes = {}, {}
            for _ in range(num_tensors):
                name = _read_string(f)
                num_dims = _read(f, "<I")
                shapes[name] = tuple(_read(f, "<Q") for _ in range(num_dims))
                types[name] = _read(f, "<I")
                _read(f, "<Q")  # data offset
    except FileNotFoundError:
        raise ConfigError(f"model file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"{path} is a directory, not a GGUF file") from None
    except (EOFError, ValueError, OverflowError, struct.error) as exc:
        raise ConfigError(f"{path} is not a valid GGUF file ({exc})") from None
    return GGUFInfo(path=path, version=version, metadata=metadata, tensor_types=types, tensor_shapes=shapes)
