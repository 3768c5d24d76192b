"""Durations as Ollama and Go write them: "5m", "1h30m", "10s", "250ms", or a number of seconds.

Negative means forever (Ollama's keep_alive -1).
"""
from __future__ import annotations

import math
import re

_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(value: str | int | float) -> float:
    """Seconds; raises ValueError with a message a person can act on."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, (int, float)):
        if math.isnan(value):
            raise ValueError("invalid duration NaN")
        return float(value)
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    parts = _PART.findall(body)
    if not body or "".join(number + unit for number, unit in parts) != body:
        raise ValueError(f"invalid duration {value!r}: use e.g. 30s, 5m, 1h30m, 0 or -1")
    return sign * sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)
