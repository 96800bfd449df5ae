"""The arrays of a run folder checked against its run.json: shape, dtype, finiteness, range.

:class:`ArraySpec` says what one array must be; :func:`check_arrays` checks a whole npz
before any of it is used, and names the file, the array and what is wrong. Each family
declares the spec of its own npz in its ``format.py`` (built from run.json, saying which arrays
may legitimately hold NaN); :func:`length`, :func:`scalar` and :func:`names` help it read the
shapes an npz claims before they are checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lowrank.errors import LowrankError

Kind = Literal["float", "int", "bool", "str", "mask"]
_KINDS: dict[str, tuple[str, str]] = {
    "float": ("f", "floating-point numbers"),
    "int": ("iu", "integers"),
    "bool": ("b", "booleans"),
    "str": ("U", "strings"),
    "mask": ("iub", "integers or booleans"),
}


@dataclass(frozen=True)
class ArraySpec:
    """What one npz array must be.

    Attributes:
        kind: dtype kind: ``float`` (any float width), ``int`` (signed or unsigned), ``bool``,
            ``str`` (unicode) or ``mask`` (int or bool).
        shape: the expected shape; a ``None`` entry accepts any length on that axis.
        finite: floats only: refuse NaN and infinities. False where NaN is a legitimate
            value (an undefined statistic); then nothing is checked.
        minimum, maximum: bounds on the (finite) values.
        equals: the values run.json says the array holds (e.g. ``ns``), compared exactly.
        required: False for arrays an older format did not write, or optional ones.
    """

    kind: Kind
    shape: tuple[int | None, ...]
    finite: bool = True
    minimum: float | None = None
    maximum: float | None = None
    equals: Any = None
    required: bool = True


def check_arrays(
    path: Path, arrays: Mapping[str, np.ndarray], spec: Mapping[str, ArraySpec]
) -> None:
    """Check the arrays of npz file ``path`` against ``spec`` (arrays not in it are free).

    Raises:
        LowrankError: naming the file, the first array at fault and what is wrong; missing
            required arrays are all named at once.
    """
    missing = [name for name, s in spec.items() if s.required and name not in arrays]
    if missing:
        raise LowrankError(f"'{path}' lacks arrays {', '.join(missing)}")
    for name, s in spec.items():
        if name in arrays:
            problem = _problem(np.asarray(arrays[name]), s)
            if problem:
                raise LowrankError(f"'{path}': {name} {problem}")


def layout_problem(dtype: np.dtype, shape: tuple[int, ...], s: ArraySpec) -> str | None:
    """What is wrong with an array of ``dtype`` and ``shape`` for ``s`` (None: nothing);
    needs no values, so an npz member is checked from its header alone."""
    kinds, words = _KINDS[s.kind]
    if dtype.kind not in kinds:
        return f"must hold {words}, not {dtype}"
    if len(shape) != len(s.shape) or any(
        want is not None and got != want for got, want in zip(shape, s.shape, strict=True)
    ):
        expected = ", ".join("any" if d is None else str(d) for d in s.shape)
        return f"has shape {shape}, run.json says ({expected}{',' if len(s.shape) == 1 else ''})"
    return None


def _problem(a: np.ndarray, s: ArraySpec) -> str | None:
    layout = layout_problem(a.dtype, a.shape, s)
    if layout:
        return layout
    if s.kind == "float" and s.finite and not np.isfinite(a).all():
        return "holds NaN or infinite values"
    if s.minimum is not None or s.maximum is not None:
        values = a[np.isfinite(a)] if s.kind == "float" else a
        if values.size and s.minimum is not None and values.min() < s.minimum:
            return f"holds {values.min()}, below its minimum {s.minimum:g}"
        if values.size and s.maximum is not None and values.max() > s.maximum:
            return f"holds {values.max()}, above its maximum {s.maximum:g}"
    if s.equals is not None and a.tolist() != s.equals:
        return f"holds {_short(a.tolist())}, run.json says {_short(s.equals)}"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def length(arrays: Mapping[str, np.ndarray], name: str) -> int | None:
    """Length of a 1-D array (None when absent or not 1-D: its own spec reports that)."""
    a = arrays.get(name)
    return int(a.shape[0]) if a is not None and a.ndim == 1 else None


def scalar(arrays: Mapping[str, np.ndarray], name: str) -> int | None:
    """Value of a 0-d integer array (None when absent or not that)."""
    a = arrays.get(name)
    ok = a is not None and a.shape == () and a.dtype.kind in "iu"
    return int(a) if ok and a is not None else None


def names(arrays: Mapping[str, np.ndarray], key: str, default: tuple[str, ...]) -> list[str]:
    """The names a string array lists, after ``default`` (``default`` alone when the array is
    absent or not a 1-D string array: its own spec reports that)."""
    a = arrays.get(key)
    if a is None or a.ndim != 1 or a.dtype.kind != "U":
        return list(default)
    return list(dict.fromkeys([*default, *(str(x) for x in a)]))
