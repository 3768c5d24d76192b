"""Integer bounds as a grammar: the decimal numerals of every integer in [minimum, maximum], either end
open. llama-cpp-python's schema converter ignores `minimum`/`maximum`; this is what enforces them.

A range splits into numerals of one length, and one length splits by its first digit: [123, 456] is
"1" then [23, 99] of two digits, "2"-"3" then any two digits, "4" then [00, 56]. Negative numbers are a
"-" before the range of their magnitudes.
"""
from __future__ import annotations

from dataclasses import dataclass

# An integer without an upper bound has at most this many digits: the converter's own `integer` rule has
# the same limit, and a small model sampling digits would otherwise never stop.
MAX_UNBOUNDED_DIGITS = 16
# One alternative: a sequence of digit classes; each is (lowest digit, highest digit, min count, max count
# or None for unbounded). A literal "-" is the class ("-", "-", 1, 1).
DigitClass = tuple[str, str, int, "int | None"]
Alternative = tuple[DigitClass, ...]


@dataclass(frozen=True)
class IntegerRange:
    minimum: int | None = None
    maximum: int | None = None

    def __post_init__(self):
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"no integer lies between minimum {self.minimum} and maximum {self.maximum}")


def _same_length(low: str, high: str) -> list[Alternative]:
    """Numerals of len(low) == len(high) digits between low and high (leading zeros as given)."""
    if not low:
        return [()]
    if low[0] == high[0]:
        return [((low[0], low[0], 1, 1), *rest) for rest in _same_length(low[1:], high[1:])]
    rest = len(low) - 1
    if low[1:] == "0" * rest and high[1:] == "9" * rest:
        return [((low[0], high[0], 1, 1), *(((("0", "9", rest, rest),) if rest else ())))]
    alternatives = [((low[0], low[0], 1, 1), *tail) for tail in _same_length(low[1:], "9" * rest)]
    if int(low[0]) + 1 <= int(high[0]) - 1:
        middle = ((str(int(low[0]) + 1), str(int(high[0]) - 1), 1, 1),)
        alternatives.append(middle + ((("0", "9", rest, rest),) if rest else ()))
    alternatives += [((high[0], high[0], 1, 1), *tail) for tail in _same_length("0" * rest, high[1:])]
    return alternatives


def _magnitudes(low: int, high: int | None) -> list[Alternative]:
    """Numerals (no leading zeros) of the non-negative integers in [low, high]; high None: unbounded."""
    alternatives: list[Alternative] = []
    top = high if high is not None else 10 ** len(str(low)) - 1
    for length in range(len(str(low)), len(str(top)) + 1):
        first = max(low, 10 ** (length - 1) if length > 1 else 0)
        last = min(top, 10 ** length - 1)
        if first <= last:
            alternatives += _same_length(str(first), str(last))
    if high is None:  # every longer numeral, up to MAX_UNBOUNDED_DIGITS as llama.cpp's integers
        num_more = max(len(str(low)), MAX_UNBOUNDED_DIGITS - 1)
        alternatives.append((("1", "9", 1, 1), ("0", "9", len(str(low)), num_more)))
    return alternatives


def integer_alternatives(bounds: IntegerRange) -> list[Alternative]:
    """Every numeral of the range, as alternatives of digit classes."""
    low, high = bounds.minimum, bounds.maximum
    alternatives: list[Alternative] = []
    if low is None or low < 0:  # the negative part: "-" and a magnitude in [max(1, -high), -low]
        smallest = max(1, -high) if high is not None else 1
        largest = -low if low is not None else None
        if largest is None or smallest <= largest:
            alternatives += [(("-", "-", 1, 1), *alt) for alt in _magnitudes(smallest, largest)]
    if high is None or high >= 0:
        alternatives += _magnitudes(max(low, 0) if low is not None else 0, high)
    return alternatives


def _gbnf_class(digit_class: DigitClass) -> str:
    low, high, num_min, num_max = digit_class
    term = f'"{low}"' if low == high else f"[{low}-{high}]"
    if (num_min, num_max) == (1, 1):
        return term
    if num_max is None:
        return f"{term}{{{num_min},}}"
    return f"{term}{{{num_min}}}" if num_min == num_max else f"{term}{{{num_min},{num_max}}}"


def integer_gbnf(bounds: IntegerRange) -> str:
    """The GBNF body (without a rule name) of the range's numerals."""
    return " | ".join(" ".join(_gbnf_class(c) for c in alt) for alt in integer_alternatives(bounds))
