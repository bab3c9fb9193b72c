"""argparse value types that reject bad numbers with one clear line (argparse exits 2)."""

import argparse
import math


def _number(text, kind):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _ranged(kind, accepts, expected, doc):
    """An argparse type: `kind(text)` that `accepts`, else "expected `expected`, got text"."""
    def parse(text):
        value = _number(text, kind)
        if not accepts(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value

    parse.__doc__ = doc
    return parse


positive_int = _ranged(int, lambda v: v > 0, "a positive integer", "An integer > 0.")
non_negative_int = _ranged(int, lambda v: v >= 0, "an integer >= 0", "An integer >= 0.")
positive_float = _ranged(float, lambda v: v > 0, "a number > 0", "A finite number > 0.")
non_negative_float = _ranged(float, lambda v: v >= 0, "a number >= 0", "A finite number >= 0.")
fraction = _ranged(float, lambda v: 0.0 <= v < 1.0, "a number in [0, 1)",
                   "A rate in [0, 1): dropout, stochastic depth, label smoothing.")
