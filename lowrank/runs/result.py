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

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np

from lowrank.errors import LowrankError
from lowrank.runs.locks import hold
from lowrank.runs.manifest import FINGERPRINT, fingerprint_of, model_digest
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

    def __repr__(self) -> str:
        """What a notebook shows: the type, the run's label, n and N where the run has them,
        and its folder, e.g. ``SpectrumResult('all-MiniLM-L6-v2 / WikiText-103 (valid)',
        n=512, N=64, path='runs/wiki')``; the whole run.json is ``.config``."""
        from lowrank.runs.labels import run_label

        config = self.__dict__.get("config") or {}
        try:
            parts = [repr(run_label(config))]
        except (KeyError, TypeError):  # a run over no model or corpus (efficiency)
            parts = [repr(str(config.get("command", "")))]
        for key, short in (("seq_len", "n"), ("num_sequences", "N")):
            if isinstance(config.get(key), int):
                parts.append(f"{short}={config[key]}")
        if self.path is not None:
            parts.append(f"path={str(self.path)!r}")
        return f"{type(self).__name__}({', '.join(parts)})"

    def figure_folder(self, folder: str | Path | None) -> Path:
        """Where ``draw(folder)`` writes: ``folder``, or ``<run folder>/figures``."""
        if folder is None and self.path is None:
            raise LowrankError("draw(): give a folder or save the run first")
        return Path(folder) if folder else Path(self.path or ".") / "figures"

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
        """Write the run folder whole: the npz, the tables, then run.json (with the manifest
        of the files and, for a run over sequences, the fingerprint of its inputs), swapped
        into place in one step; returns its path.

        A folder holding this same configuration made from the same inputs is replaced;
        another run needs ``overwrite``; files that are not a lowrank run are never
        touched, and files of yours inside a run folder are kept.

        Raises:
            LowrankError: the folder holds another run or foreign files, another process is
                writing it, or it cannot be written (one line naming the path and the
                reason).
        """
        if not isinstance(path, str | os.PathLike) or not os.fspath(path):
            raise LowrankError(f"save({path!r}): give the run folder as a path or a string")
        out = Path(path)
        self._fingerprint()
        with hold(out):
            check_out_dir(
                out,
                dict(self.config.get("identity") or {}),
                overwrite,
                fingerprint=self.config.get(FINGERPRINT),
            )
            write_run(
                out,
                self.config,
                self.arrays,
                npz=self.FORMAT.npz,
                files=self.extra_files(),
                overwrite=overwrite,
            )
        self.path = out
        return out

    def _fingerprint(self) -> None:
        """Record in ``config`` what a run over sequences was made from (once)."""
        ids = self.arrays.get("input_ids")
        if FINGERPRINT in self.config or ids is None:
            return
        model = self.config.get("model")
        digest = model_digest(model) if isinstance(model, dict) else None
        self.config[FINGERPRINT] = fingerprint_of(ids, self.arrays.get("attention_mask"), digest)

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
