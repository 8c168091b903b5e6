"""argparse ``type=`` helpers that validate numeric flags up front.

Each helper returns a converter for ``parser.add_argument(..., type=...)``. A bad value raises
``argparse.ArgumentTypeError``, which argparse prints as one usage line, ``error: argument --flag:
...``, with exit code 2 and no traceback, before any work starts::

    parser.add_argument("--lr", type=finite_float(min=0, min_inclusive=False, max=10))
    parser.add_argument("--length", type=bounded_int(1, 10_000_000))
    parser.add_argument("--seed", type=seed)
"""

from __future__ import annotations

import argparse
import math
import re
from typing import Callable

# The choices of --precision (train, evaluate): checked by the run config and by devices.autocast.
PRECISIONS = ("auto", "bf16", "fp32")

SEED_MAX = 2**63 - 1
_INT_RE = re.compile(r"[+-]?[0-9]+")


def _fmt(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _range_text(min: float | None, max: float | None, min_inclusive: bool, max_inclusive: bool) -> str:
    """The allowed range in words, e.g. 'in [0, 1]', '> 0'."""
    if min is not None and max is not None:
        return f"in {'[' if min_inclusive else '('}{_fmt(min)}, {_fmt(max)}{']' if max_inclusive else ')'}"
    if min is not None:
        return f"{'>=' if min_inclusive else '>'} {_fmt(min)}"
    if max is not None:
        return f"{'<=' if max_inclusive else '<'} {_fmt(max)}"
    return "finite"


def finite_float(
    min: float | None = None,
    max: float | None = None,
    *,
    min_inclusive: bool = True,
    max_inclusive: bool = True,
) -> Callable[[str], float]:
    """A float converter that refuses nan, inf and values outside [min, max] (bounds optional)."""
    wanted = _range_text(min, max, min_inclusive, max_inclusive)

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        too_low = min is not None and (value < min if min_inclusive else value <= min)
        too_high = max is not None and (value > max if max_inclusive else value >= max)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text}")
        return value

    convert.__name__ = "number"  # argparse names the type in some messages
    return convert


def bounded_int(min: int | None = None, max: int | None = None) -> Callable[[str], int]:
    """An integer converter: whole decimal digits only (``1e12`` and ``2.0`` refused), in [min, max]."""
    wanted = _range_text(min, max, True, True)

    def convert(text: str) -> int:
        stripped = text.strip().replace("_", "")
        if not _INT_RE.fullmatch(stripped):
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
        value = int(stripped)
        if (min is not None and value < min) or (max is not None and value > max):
            raise argparse.ArgumentTypeError(f"must be a whole number {wanted}, got {text}")
        return value

    convert.__name__ = "integer"
    return convert


seed: Callable[[str], int] = bounded_int(0, SEED_MAX)
"""A random seed: a whole number in 0..2**63-1."""
