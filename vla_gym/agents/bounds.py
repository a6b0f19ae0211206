"""Checks shared by the training and network configs: every number a user or a file gives
is a real int or a finite float within its bounds, or a ``ValueError`` names the field,
the value and what is allowed."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: Largest seed a config takes (numpy's legacy seeding, which SB3 uses, stops here).
MAX_SEED = 2**32 - 1
_NUMBERS = (int, float, np.integer, np.floating)


def bounded_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` as an int in [low, high] (no upper bound when ``high`` is None).

    Bools, strings, NaN, inf and non-integral floats are refused.
    """
    allowed = f"an int >= {low}" if high is None else f"an int in [{low}, {high}]"
    number = isinstance(value, _NUMBERS) and not isinstance(value, (bool, np.bool_))
    if not number or not math.isfinite(value) or int(value) != value:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    if int(value) < low or (high is not None and int(value) > high):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return int(value)


def finite_float(name: str, value: Any, low: float | None = None, high: float | None = None,
                 low_open: bool = False) -> float:
    """``value`` as a finite float in [low, high] (``low_open``: strictly above ``low``).

    Bools, strings, NaN and inf are refused; a missing bound is no bound.
    """
    if low is not None and high is not None:
        allowed = f"a finite number in {'(' if low_open else '['}{low}, {high}]"
    elif low is not None:
        allowed = f"a finite number {'>' if low_open else '>='} {low}"
    else:
        allowed = "a finite number" if high is None else f"a finite number <= {high}"
    number = isinstance(value, _NUMBERS) and not isinstance(value, (bool, np.bool_))
    if not number or not math.isfinite(value):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    below = low is not None and (value <= low if low_open else value < low)
    if below or (high is not None and value > high):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return float(value)
