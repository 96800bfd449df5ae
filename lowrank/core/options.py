"""Options declared once, checked in one place, named as the caller wrote them.

Each command declares its options as a table of :class:`Option` records (in its family's
``options.py``): name, kind, default, bounds, help. The click command is built from that table
(:mod:`lowrank.cli.commands`), and the API function checks its arguments against it
(:meth:`Options.check`); a test compares every API signature with its table. There is one check
per kind of value and one message per mistake, and a message names the option as the caller
wrote it: ``--seq-len 3`` from the command line, ``seq_len=3`` from Python (the CLI switches
the naming with :func:`naming`). The checks raise :class:`lowrank.LowrankError`; none of them
prints.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from lowrank.errors import LowrankError

log = logging.getLogger(__name__)

N = TypeVar("N", int, float)

# -- naming: flags on the command line, keywords in Python -----------------------------------

Naming = Literal["api", "cli"]
_NAMING: ContextVar[Naming] = ContextVar("lowrank_option_naming", default="api")


@contextmanager
def naming(style: Naming) -> Iterator[None]:
    """Within the block, messages name options as ``style`` does: ``cli`` (``--seq-len``) or
    ``api`` (``seq_len``, the default)."""
    token = _NAMING.set(style)
    try:
        yield
    finally:
        _NAMING.reset(token)


_ALIASES: ContextVar[Mapping[str, str] | None] = ContextVar("lowrank_option_aliases", default=None)


@contextmanager
def renamed(aliases: Mapping[str, str]) -> Iterator[None]:
    """Within the block, messages about ``data`` (say) name the option the caller gave
    instead (``calibration_data``): shared readers serve options of other names."""
    token = _ALIASES.set({**(_ALIASES.get() or {}), **aliases})
    try:
        yield
    finally:
        _ALIASES.reset(token)


def flag(name: str) -> str:
    """An option as the caller writes it: ``--seq-len`` on the command line, ``seq_len`` in
    Python. ``name`` may be either form (``"seq_len"`` or ``"--seq-len"``)."""
    bare = name.removeprefix("--").replace("-", "_")
    bare = (_ALIASES.get() or {}).get(bare, bare)
    return "--" + bare.replace("_", "-") if _NAMING.get() == "cli" else bare


def switch(name: str) -> str:
    """A flag to turn on, as the caller does it: ``--overwrite`` on the command line,
    ``overwrite=True`` in Python."""
    return flag(name) if _NAMING.get() == "cli" else f"{flag(name)}=True"


def named(option: str, value: object) -> str:
    """``--seed -1`` on the command line, ``seed=-1`` in Python."""
    if _NAMING.get() == "cli":
        return f"{flag(option)} {value}"
    return f"{flag(option)}={value!r}"


# -- one check per kind of value ----------------------------------------------------------------


def _is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(
    option: str, value: object, *, low: int | None = None, high: int | None = None
) -> int:
    """An integer (numpy's too) in [low, high] (either end open when None)."""
    if not _is_integer(value):
        raise LowrankError(f"{named(option, value)} must be a whole number")
    number = int(value)  # type: ignore[call-overload]
    if low is not None and number < low:
        raise LowrankError(f"{named(option, number)} must be at least {low}")
    if high is not None and number > high:
        raise LowrankError(f"{named(option, number)} must be at most {high}")
    return number


def check_float(
    option: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    open_low: bool = False,
    open_high: bool = False,
) -> float:
    """A finite number (int, float or numpy number) in the interval [low, high]
    (``open_*`` excludes that end). Every failure has one message stating the whole
    requirement: ``--delta nan must be a finite number > 0``."""
    if not _is_number(value):
        raise LowrankError(f"{named(option, value)} must be a number")
    x = float(value)  # type: ignore[arg-type]
    inside = (low is None or x > low or (x == low and not open_low)) and (
        high is None or x < high or (x == high and not open_high)
    )
    if not (math.isfinite(x) and inside):
        need = _requirement(low, high, open_low, open_high)
        raise LowrankError(f"{named(option, value)} must be a finite number{need}")
    return x


def _requirement(low: float | None, high: float | None, open_low: bool, open_high: bool) -> str:
    """`` > 0``, `` in (0, 1)``, `` <= 1048576`` or nothing: the bounds as a message says
    them."""
    if low is not None and high is not None:
        return f" in {'(' if open_low else '['}{_num(low)}, {_num(high)}{')' if open_high else ']'}"
    if low is not None:
        return f" {'>' if open_low else '>='} {_num(low)}"
    if high is not None:
        return f" {'<' if open_high else '<='} {_num(high)}"
    return ""


def _num(x: float) -> str:
    """A bound as a person writes it: 0, 0.5, 1048576 (not 1.04858e+06)."""
    return str(int(x)) if x == int(x) and abs(x) < 1e15 else f"{x:g}"


def check_positive(option: str, value: object) -> float:
    """A finite number > 0 (NaN, infinities, zero and negatives are refused)."""
    return check_float(option, value, low=0.0, open_low=True)


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
            f"{named(option, n)} is too short: use at least {MIN_SEQ_LEN} tokens (special "
            "tokens included), so that there is text between the special tokens"
        )
    return n


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
    items: Sequence[Any] = tuple(values)
    if not items:
        raise LowrankError(f"{flag(option)}: give at least one value")
    checked: list[Any]
    if integer:
        checked = [check_int(option, v, low=low, high=high) for v in items]  # type: ignore[arg-type]
    else:
        checked = [check_float(option, v, low=low, high=high) for v in items]
    seen: set[Any] = set()
    repeats = [v for v in checked if v in seen or seen.add(v)]  # type: ignore[func-returns-value]
    if repeats:
        raise LowrankError(f"{flag(option)} lists {repeats[0]} twice: give each value once")
    ordered = tuple(sorted(checked))
    if ordered != tuple(checked):
        log.info(f"{flag(option)}: taking the values in increasing order: {_join(ordered)}")
    return ordered


def check_choices(option: str, values: Iterable[str], choices: Sequence[str]) -> tuple[str, ...]:
    """A non-empty list of names from ``choices``, without repeats, in the order given."""
    items = tuple(values)
    if not items:
        raise LowrankError(f"{flag(option)}: give at least one value")
    for v in items:
        if v not in choices:
            raise LowrankError(f"{flag(option)}: {v!r} is not one of {', '.join(choices)}")
    if len(set(items)) != len(items):
        twice = next(v for i, v in enumerate(items) if v in items[:i])
        raise LowrankError(f"{flag(option)} lists {twice!r} twice: give each value once")
    return items


def _join(values: Iterable[object]) -> str:
    return ",".join(str(v) for v in values)


def as_list(value: object) -> list[Any]:
    """A list option as given: one value, a sequence, or ``"a,b"`` as typed on the command
    line (numbers in such a string are parsed)."""
    if isinstance(value, str):
        return [_parse(v.strip()) for v in value.split(",") if v.strip()]
    if isinstance(value, Iterable) and not isinstance(value, bytes | Mapping):
        return list(value)
    return [value]


def _parse(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


# -- the declaration ----------------------------------------------------------------------------

Kind = Literal["int", "float", "str", "bool", "choice", "ints", "floats", "choices", "path", "any"]
"""What an option holds: one whole number, number, string, flag (bool), name from ``choices``
or path; a list of whole numbers, numbers or names (``ints``, ``floats``, ``choices``); or
``any`` object the function itself checks (a model object, texts)."""

SAME: Any = object()  # the CLI's default is the API's


@dataclass(frozen=True)
class Option:
    """One option of a command, declared once for the CLI and the API.

    Attributes:
        name: the API keyword (``seq_len``); the CLI flag is ``--seq-len`` unless ``flag``.
        default: the API's default (and the CLI's, unless ``cli_default`` differs).
        help: what the option does, for ``--help`` and the docs.
        kind: see :data:`Kind`.
        low, high: bounds of numbers (inclusive; ``open_low`` / ``open_high`` exclude them).
        choices: the names a ``choice``/``choices`` option takes.
        optional: None is a value (meaning: the run decides; the help says how).
        check: a further check of the kind-checked value, ``(option, value) -> value``
            (named by :func:`flag`; e.g. a seed's range, a shard's form).
        cli: offered on the command line (False: API only, e.g. a tokenizer object).
        cli_default: the CLI's default when it differs (an ``--out`` folder where the API
            writes nothing by default).
        negatable: a bool shown as ``--x/--no-x`` (default True) instead of a flag.
        hidden: left out of ``--help`` (deprecated names).
        metavar: how ``--help`` shows the value.
    """

    name: str
    default: Any
    help: str = ""
    kind: Kind = "int"
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple[str, ...] = ()
    optional: bool = False
    check: Callable[[str, Any], Any] | None = None
    cli: bool = True
    cli_default: Any = SAME
    negatable: bool = False
    hidden: bool = False
    metavar: str | None = None

    @property
    def flag(self) -> str:
        """The CLI flag, ``--seq-len``."""
        return "--" + self.name.replace("_", "-")

    @property
    def command_default(self) -> Any:
        """The default the command line shows and uses."""
        return self.default if self.cli_default is SAME else self.cli_default

    def validate(self, value: Any) -> Any:
        """``value`` checked by this option's kind, bounds and check; returns it normalised
        (lists as sorted tuples of numbers, or tuples of names in the order given; paths as
        :class:`~pathlib.Path`)."""
        if value is None and (self.optional or self.kind == "any"):
            return None
        value = _BY_KIND[self.kind](self, value)
        return self.check(self.name, value) if self.check is not None else value


def _int(o: Option, v: Any) -> int:
    return check_int(o.name, v, low=_bound(o.low), high=_bound(o.high))


def _bound(x: float | None) -> int | None:
    return None if x is None else int(x)


def _float(o: Option, v: Any) -> float:
    return check_float(
        o.name, v, low=o.low, high=o.high, open_low=o.open_low, open_high=o.open_high
    )


def _str(o: Option, v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise LowrankError(f"{named(o.name, v)}: give a non-empty string")
    return v


def _bool(o: Option, v: Any) -> bool:
    if not isinstance(v, bool):
        raise LowrankError(f"{named(o.name, v)} must be True or False")
    return v


def _choice(o: Option, v: Any) -> str:
    if not isinstance(v, str) or v not in o.choices:
        raise LowrankError(f"{flag(o.name)}: {v!r} is not one of {', '.join(o.choices)}")
    return v


def _ints(o: Option, v: Any) -> tuple[int, ...]:
    return check_list(o.name, as_list(v), low=_bound(o.low), high=_bound(o.high))


def _floats(o: Option, v: Any) -> tuple[float, ...]:
    values = as_list(v)
    for x in values:
        _float(o, x)
    return check_list(o.name, values, integer=False)


def _choices(o: Option, v: Any) -> tuple[str, ...]:
    return check_choices(o.name, [str(x) for x in as_list(v)], o.choices)


def _path(o: Option, v: Any) -> Path:
    if not isinstance(v, str | os.PathLike) or not os.fspath(v):
        raise LowrankError(f"{named(o.name, v)}: give a path (a string or pathlib.Path)")
    return Path(v)


_BY_KIND: dict[str, Callable[[Option, Any], Any]] = {
    "int": _int,
    "float": _float,
    "str": _str,
    "bool": _bool,
    "choice": _choice,
    "ints": _ints,
    "floats": _floats,
    "choices": _choices,
    "path": _path,
    "any": lambda o, v: v,
}


@dataclass(frozen=True)
class Options:
    """A command's options in the order ``--help`` lists them, with its long help.

    Attributes:
        command: the command (``spectrum``).
        help: the long ``--help`` text (the first line is the summary).
        options: the records.
    """

    command: str
    help: str
    options: tuple[Option, ...] = field(default=())

    def __iter__(self) -> Iterator[Option]:
        return iter(self.options)

    def __getitem__(self, name: str) -> Option:
        for o in self.options:
            if o.name == name:
                return o
        raise KeyError(name)

    def defaults(self) -> dict[str, Any]:
        """The API's defaults, by name."""
        return {o.name: o.default for o in self.options}

    def check(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Every declared option of ``values`` checked by its declaration, in declaration
        order (the first mistake is the one reported); returns the normalised values.
        Names not declared are passed through unchanged."""
        out = dict(values)
        for o in self.options:
            if o.name in values:
                out[o.name] = o.validate(values[o.name])
        return out


def merge(*groups: Iterable[Option], replace: Iterable[Option] = ()) -> tuple[Option, ...]:
    """Option groups joined in order; ``replace`` swaps in records of the same name (a
    command's own default or help for a shared option)."""
    swaps = {o.name: o for o in replace}
    joined = [swaps.pop(o.name, o) for group in groups for o in group]
    if swaps:
        raise ValueError(f"replace names options no group has: {', '.join(swaps)}")
    names = [o.name for o in joined]
    if len(set(names)) != len(names):
        raise ValueError(f"an option is declared twice: {names}")
    return tuple(joined)
