"""The GGUF header reader on damaged files: truncated anywhere or with bytes flipped, it answers a one-line
ConfigError (or reads the header), never another exception, a huge allocation or a hang. Bounded: a fixed
seed and a fixed number of cases."""
from __future__ import annotations

import random

import pytest

from serve.errors import ConfigError
from serve.models.catalog import embedded_model_path
from serve.models.gguf import read_gguf_info

HEADER_BYTES = 64 * 1024  # the start of the real file: magic, counts, the first metadata entries
NUM_CASES = 40


@pytest.fixture(scope="module")
def head() -> bytes:
    with open(embedded_model_path(), "rb") as f:
        return f.read(HEADER_BYTES)


def _read(path, data: bytes) -> None:
    path.write_bytes(data)
    try:
        read_gguf_info(path)
    except ConfigError as exc:
        assert str(path) in exc.message and "\n" not in exc.message


def test_truncated_anywhere_is_a_config_error(tmp_path, head):
    rng = random.Random(15)
    for length in [0, 3, 4, 7, 8, 23, 24, 31] + rng.sample(range(32, HEADER_BYTES), NUM_CASES):
        _read(tmp_path / f"cut-{length}.gguf", head[:length])


def test_flipped_bytes_are_a_config_error(tmp_path, head):
    rng = random.Random(15)
    for case in range(NUM_CASES):
        data = bytearray(head)
        for _ in range(4):
            data[rng.randrange(4, 256)] = rng.randrange(256)  # counts, lengths and types live up front
        _read(tmp_path / f"flip-{case}.gguf", bytes(data))
