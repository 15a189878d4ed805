"""Numeric option checks shared by every command and the Python API (torch-free).

``check_number("--lr", value, low=0, low_open=True)`` returns the value as a float (or an int
with ``integer=True``) or raises ``ValueError`` naming the option: "--lr must be a finite number
> 0, got inf". Numbers given as text (a YAML ``1e-4`` is a string) are converted first.
"""

from __future__ import annotations

import math
from typing import Any


def check_number(name: str, value: Any, *, integer: bool = False, low: float | None = None,
                 high: float | None = None, low_open: bool = False, high_open: bool = False) -> int | float:
    """``value`` as a finite int/float within the bounds, else ``ValueError`` naming ``name``."""
    number = _as_number(value, integer)
    finite = number is not None and (isinstance(number, int) or math.isfinite(number))
    if not finite or not _within(number, low, high, low_open, high_open):
        raise ValueError(f"{name} must be {describe(integer, low, high, low_open, high_open)}, got {value!r}")
    return number


def describe(integer: bool, low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    """'an integer >= 1', 'a finite number in [0, 1)', ..."""
    text = "an integer" if integer else "a finite number"
    if low is not None and high is not None:
        return f"{text} in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"{text} {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"{text} {'<' if high_open else '<='} {high:g}"
    return text


def _as_number(value: Any, integer: bool) -> int | float | None:
    if isinstance(value, bool):  # True is an int to Python, never a number to a user
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, int | float):
        return None
    if integer:
        if isinstance(value, float) and not value.is_integer():
            return None
        return int(value)
    return float(value)


def _within(number: float, low: float | None, high: float | None, low_open: bool, high_open: bool) -> bool:
    if low is not None and (number < low or (low_open and number == low)):
        return False
    return high is None or not (number > high or (high_open and number == high))
