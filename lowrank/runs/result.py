"""The result objects the Python API returns, and :func:`load` that opens any run folder.

A result is a run folder held in memory: ``config`` is ``run.json`` (a dict) and ``arrays``
the named arrays of the run's npz (or, for runs that write CSV tables, the table as
arrays). Every array is also an attribute, under its run-folder name:
``res.cumulative_mean is res.arrays["cumulative_mean"]``. ``save`` writes a normal run
folder that the CLI (``lowrank figures``, ``lowrank summary``, ``lowrank merge``) reads.

Each analysis family subclasses :class:`RunResult` next to its workflow and registers the
``format`` string it writes, so :func:`load` can return the matching type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from lowrank.errors import LowrankError
from lowrank.runs.folders import RUN_JSON, read_json

if TYPE_CHECKING:
    import pandas as pd

R = TypeVar("R", bound="type[RunResult]")

_REGISTRY: dict[str, type[RunResult]] = {}


def register(fmt: str) -> Callable[[R], R]:
    """Class decorator: ``load`` returns this type for run folders of format ``fmt``."""

    def wrap(cls: R) -> R:
        cls.FORMAT = fmt
        _REGISTRY[fmt] = cls
        return cls

    return wrap


@dataclass
class RunResult:
    """A run held in memory: ``config`` (run.json) and ``arrays`` (run-folder names)."""

    config: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(repr=False)
    path: Path | None = None

    FORMAT: ClassVar[str] = ""

    def __getattr__(self, name: str) -> np.ndarray:
        arrays = self.__dict__.get("arrays")
        if arrays is not None and name in arrays:
            return arrays[name]
        raise AttributeError(f"{type(self).__name__} has no attribute or array {name!r}")

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self.__dict__.get("arrays", {})))

    def summary(self, at: int | None = None) -> pd.DataFrame:
        """A paper table as a DataFrame; ``at`` picks the kind's natural index (the singular
        value index of a spectrum, k of project/verify, the budget of compare, n of
        efficiency/scaling; None: the run's default). Each result type documents its rows."""
        raise NotImplementedError

    def report(self) -> str:
        """The text the CLI prints for this run."""
        return self.summary().to_string()

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write a run folder that every command reads; returns its path."""
        raise NotImplementedError

    @classmethod
    def read(cls, path: str | Path) -> RunResult:
        """Open a run folder of this type (validated; LowrankError when damaged)."""
        raise NotImplementedError


def load(path: str | Path) -> RunResult:
    """Open any run folder and return the result type of the command that wrote it.

    Raises:
        LowrankError: the folder is missing, is not a lowrank run, or is damaged.
    """
    import os

    if not isinstance(path, str | os.PathLike):
        raise LowrankError(f"load({path!r}): give the run folder as a path or a string")
    _import_families()
    folder = Path(path)
    if not folder.is_dir():
        raise LowrankError(f"run folder '{folder}' does not exist")
    if not (folder / RUN_JSON).is_file():
        raise LowrankError(f"'{folder}' is not a run folder: it has no {RUN_JSON}")
    meta = read_json(folder / RUN_JSON)
    fmt = meta.get("format") if isinstance(meta, dict) else None
    if fmt not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY))
        raise LowrankError(f"'{folder / RUN_JSON}' has format {fmt!r}; lowrank reads {known}")
    return _REGISTRY[fmt].read(folder)


def _import_families() -> None:
    """Import every family's result module, so each registers its format.

    A family whose result module is absent is skipped (its runs then name the formats that
    are known); any other import error, including a missing module *inside* a result
    module, is raised.
    """
    import importlib

    for module in _RESULT_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


_RESULT_MODULES = (
    "lowrank.spectra.result",
    "lowrank.projections.result",
    "lowrank.costs.result",
    "lowrank.comparisons.result",
    "lowrank.lengths.result",
)
