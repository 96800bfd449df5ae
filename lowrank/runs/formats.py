"""A family's run folder described once: its format name and version, files, schema, arrays.

Each analysis family declares one :class:`RunFormat` in its ``format.py``; the shared code
below reads, validates and writes any folder from that record alone, so ``runs/`` knows no
family by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lowrank.runs.arrays import ArraySpec
from lowrank.runs.folders import read_meta
from lowrank.runs.manifest import check_manifest, without_manifest
from lowrank.runs.npz import read_npz
from lowrank.runs.schema import RunMeta

ArraySpecs = Callable[[Mapping[str, Any], Mapping[str, np.ndarray]], dict[str, ArraySpec]]


@dataclass(frozen=True)
class RunFormat:
    """What one family's run folder is.

    Attributes:
        name: run.json's ``format`` (``lowrank-<family>``).
        version: the newest ``format_version`` this lowrank writes and reads; older ones are
            read too, newer ones refused naming the lowrank that wrote them.
        npz: the arrays file (``<family>.npz``).
        schema: run.json's pydantic model.
        arrays: ``(meta, arrays) -> {name: ArraySpec}``, what the npz must hold.
        files: other files the run writes beside the npz (tables), in writing order.
        npz_since: the first format version that wrote the npz; older folders have none and
            are read with no arrays (their tables still draw).
    """

    name: str
    version: int
    npz: str
    schema: type[RunMeta]
    arrays: ArraySpecs
    files: tuple[str, ...] = ()
    npz_since: int = 1

    def header(self) -> dict[str, Any]:
        """The first two fields of every run.json this family writes."""
        return {"format": self.name, "format_version": self.version}

    def read(self, folder: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """run.json and the npz of a run folder, both validated before any number is used:
        the files against run.json's manifest (:mod:`lowrank.runs.manifest`; the manifest
        is left out of the returned run.json), the npz's declared arrays before they are
        read and their values after (:mod:`lowrank.runs.npz`).

        Raises:
            LowrankError: a missing, damaged, newer or foreign folder, in one line naming the
                file and what is wrong.
        """
        path = Path(folder)
        meta = read_meta(path, self.name, self.schema, self.version)
        check_manifest(path, meta)  # a folder mixing two runs is refused before any array
        meta = without_manifest(meta)
        npz = path / self.npz
        if int(meta.get("format_version", 1)) < self.npz_since and not npz.exists():
            return meta, {}
        arrays = read_npz(npz, lambda found: self.arrays(meta, found))
        return meta, arrays
