"""The base of every result object the Python API returns: a run folder held in memory.

``config`` is ``run.json`` (a dict) and ``arrays`` the named arrays of the run's npz. Every
array is also an attribute, under its run-folder name
(``res.cumulative_mean is res.arrays["cumulative_mean"]``). ``save`` writes a normal run
folder that the CLI (``lowrank figures``, ``lowrank summary``, ``lowrank merge``) reads, and
``read`` opens one, validated against the family's
:class:`~lowrank.runs.formats.RunFormat`. Each family subclasses :class:`RunResult` in its
folder and sets :attr:`RunResult.FORMAT`; ``lowrank.load`` finds the type through the
family registry (:mod:`lowrank.registry`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np

from lowrank.runs.writing import check_out_dir, write_run

if TYPE_CHECKING:
    import pandas as pd

    from lowrank.runs.formats import RunFormat


@dataclass
class RunResult:
    """A run held in memory: ``config`` (run.json) and ``arrays`` (run-folder names)."""

    config: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(repr=False)
    path: Path | None = None
    figures: list[Path] = field(default_factory=list, repr=False, kw_only=True)

    FORMAT: ClassVar[RunFormat]

    def __getattr__(self, name: str) -> np.ndarray:
        arrays = self.__dict__.get("arrays")
        if arrays is not None and name in arrays:
            return arrays[name]
        raise AttributeError(f"{type(self).__name__} has no attribute or array {name!r}")

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self.__dict__.get("arrays", {})))

    def summary(self, at: int | None = None) -> pd.DataFrame:
        """A paper table as a DataFrame; ``at`` picks the family's natural index (None: the
        run's default). Each result type documents its rows and its index."""
        raise NotImplementedError

    def report(self) -> str:
        """The text the CLI prints for this run."""
        return self.summary().to_string()

    def extra_files(self) -> dict[str, bytes]:
        """Files the run folder holds beside its npz (name -> bytes), in
        ``FORMAT.files`` order; none by default."""
        return {}

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the run folder all-or-nothing (the npz, the tables, then run.json, each
        atomically); returns its path.

        A folder holding this same configuration is replaced; another run needs
        ``overwrite``; files that are not a lowrank run are never touched.

        Raises:
            LowrankError: the folder holds another run or foreign files, or cannot be
                written (one line naming the path and the reason).
        """
        out = Path(path)
        check_out_dir(out, dict(self.config.get("identity") or {}), overwrite)
        write_run(out, self.config, self.arrays, npz=self.FORMAT.npz, files=self.extra_files())
        self.path = out
        return out

    @classmethod
    def read(cls, path: str | Path) -> Self:
        """Open a run folder of this type, validated (LowrankError names what is damaged)."""
        meta, arrays = cls.FORMAT.read(path)
        return cls.from_folder(Path(path), meta, arrays)

    @classmethod
    def from_folder(cls, path: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Self:
        """The result of a folder whose run.json and npz are valid; types that keep more
        (tables) or check more (fields that must agree) override this."""
        return cls(meta, arrays, path)
