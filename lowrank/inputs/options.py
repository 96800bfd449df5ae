"""Option checks shared by the CLI and the Python API: one place, one message per mistake.

Each check takes the option's CLI name (``"--seed"``), so the API raises the very line the
CLI prints. They raise :class:`lowrank.LowrankError`; none of them prints.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import TypeVar

from lowrank.errors import LowrankError

log = logging.getLogger(__name__)

N = TypeVar("N", int, float)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_int(
    option: str, value: object, *, low: int | None = None, high: int | None = None
) -> int:
    """An integer in [low, high] (either end open when None)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise LowrankError(f"{option} {value!r} must be a whole number")
    if low is not None and value < low:
        raise LowrankError(f"{option} {value} must be at least {low}")
    if high is not None and value > high:
        raise LowrankError(f"{option} {value} must be at most {high}")
    return value


def check_float(
    option: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    open_low: bool = False,
    open_high: bool = False,
) -> float:
    """A finite number in the interval [low, high] (``open_*`` excludes that end)."""
    if not _is_number(value):
        raise LowrankError(f"{option} {value!r} must be a number")
    x = float(value)  # type: ignore[arg-type]
    if not math.isfinite(x):
        raise LowrankError(f"{option} {value} must be a finite number")
    if low is not None and (x < low or (open_low and x == low)):
        raise LowrankError(f"{option} {value} must be {'>' if open_low else '>='} {low}")
    if high is not None and (x > high or (open_high and x == high)):
        raise LowrankError(f"{option} {value} must be {'<' if open_high else '<='} {high}")
    return x


MAX_GIB = 2.0**20
"""The largest memory budget taken, in GiB (1 PiB): beyond it a budget is a typo."""

MAX_REPEATS = 10_000
"""The most warm-up or timed rounds of a benchmark (more would run for days)."""

MIN_SEQ_LEN = 8
"""The shortest n lowrank analyses: with the two special tokens of BERT or RoBERTa it leaves
six tokens of text, and the heatmap index n/4 is 2 (a 3 x 3 P says nothing about rank)."""


def check_seq_len(option: str, value: object) -> int:
    """A sequence length n >= :data:`MIN_SEQ_LEN` (its upper limit is the model's, checked
    once the model is known)."""
    n = check_int(option, value)
    if n < MIN_SEQ_LEN:
        raise LowrankError(
            f"{option} {n} is too short: use at least {MIN_SEQ_LEN} tokens (special tokens "
            "included), so that there is text between the special tokens"
        )
    return n


def check_positive(option: str, value: object) -> float:
    """A finite number > 0."""
    return check_float(option, value, low=0.0, open_low=True)


def check_seed(option: str, value: object) -> int:
    """A seed torch and numpy both accept: 0 <= seed < 2**32."""
    return check_int(option, value, low=0, high=2**32 - 1)


def check_fraction(option: str, value: object) -> float:
    """A number strictly between 0 and 1 (eps, a failure level)."""
    return check_float(option, value, low=0.0, high=1.0, open_low=True, open_high=True)


def check_list(
    option: str,
    values: Iterable[N],
    *,
    low: N | None = None,
    high: N | None = None,
    integer: bool = True,
) -> tuple[N, ...]:
    """A non-empty list of numbers without repeats, each in [low, high], returned sorted.

    An unsorted list is sorted and a log line says so; repeats and an empty list are refused.
    """
    items: Sequence[N] = tuple(values)
    if not items:
        raise LowrankError(f"{option}: give at least one value")
    for v in items:
        if integer:
            check_int(option, v, low=low, high=high)  # type: ignore[arg-type]
        else:
            check_float(option, v, low=low, high=high)
    seen: set[N] = set()
    repeats = [v for v in items if v in seen or seen.add(v)]  # type: ignore[func-returns-value]
    if repeats:
        raise LowrankError(f"{option} lists {repeats[0]} twice: give each value once")
    ordered = tuple(sorted(items))
    if ordered != items:
        log.info(f"{option}: taking the values in increasing order: {_join(ordered)}")
    return ordered


def check_choices(option: str, values: Iterable[str], choices: Sequence[str]) -> tuple[str, ...]:
    """A non-empty list of names from ``choices``, without repeats, in the order given."""
    items = tuple(values)
    if not items:
        raise LowrankError(f"{option}: give at least one value")
    for v in items:
        if v not in choices:
            raise LowrankError(f"{option}: {v!r} is not one of {', '.join(choices)}")
    if len(set(items)) != len(items):
        twice = next(v for i, v in enumerate(items) if v in items[:i])
        raise LowrankError(f"{option} lists {twice!r} twice: give each value once")
    return items


def _join(values: Iterable[object]) -> str:
    return ",".join(str(v) for v in values)
