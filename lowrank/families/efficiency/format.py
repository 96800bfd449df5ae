"""The run format of the efficiency family: run.json, efficiency.npz and the
efficiency.csv/efficiency.json tables of ``lowrank efficiency``.

One :class:`~lowrank.runs.formats.RunFormat` record, :data:`FORMAT`, says it all: the format
name and version, the files, the run.json schema and the array spec, read and written by the
shared code of :mod:`lowrank.runs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
from pydantic import Field, model_validator

from lowrank.families.efficiency import FAMILY
from lowrank.runs.arrays import ArraySpec
from lowrank.runs.formats import RunFormat
from lowrank.runs.schema import Open, Positive, RunMeta


class Hardware(Open):
    gpu: str | None = None
    processor: str | None = None
    torch_threads: Positive | None = None

    @model_validator(mode="after")
    def _named(self) -> Hardware:
        if self.gpu is None and (self.processor is None or self.torch_threads is None):
            raise ValueError("hardware names neither a gpu nor a processor and torch_threads")
        return self


class Stack(Open):
    layers: Positive
    hidden: Positive


class EfficiencyMeta(RunMeta):
    """``lowrank efficiency`` (no model or corpus: a stack of random layers)."""

    hardware: Hardware
    stack: Stack
    n: Annotated[list[Positive], Field(min_length=1)]
    k: Annotated[list[Positive], Field(min_length=1)]
    dtype: str
    batch: Positive | None = None
    memory_budget_gib: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    repeats: Positive | None = None
    # format 3: how peak memory was measured (memory.MemoryMethod); absent: sampled RSS
    memory_method: str | None = None
    memory_resolution_bytes: Positive | None = None


def efficiency_array_spec(
    meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
) -> dict[str, ArraySpec]:
    """efficiency.npz: ``n`` ``[N]`` and ``k`` ``[K]`` (= run.json ``n`` and ``k``); per
    baseline (exact, sdpa) ``speedup*_vs_*`` and ``memory_saving*_vs_*`` ``[N, K]``; per stack
    ``batch_*`` (``[N]``, Linformer's ``[N, K]``; >= 0, 0 when left out) and
    ``peak_bytes_per_sequence_*`` alike; ``equal_batch`` ``[N]``. Every float may hold NaN
    (a cell not measured: out of memory, or over the budget). Arrays format 1 did not
    write are optional."""
    ns, ks = list(meta["n"]), list(meta["k"])
    grid, line = (len(ns), len(ks)), (len(ns),)
    spec = {
        "n": ArraySpec("int", line, equals=ns),
        "k": ArraySpec("int", (len(ks),), equals=ks),
        "equal_batch": ArraySpec("int", line, minimum=0, required=False),
    }
    for base in ("exact", "sdpa"):
        for key in ("speedup", "speedup_min", "speedup_max", "memory_saving"):
            spec[f"{key}_vs_{base}"] = ArraySpec("float", grid, finite=False, required=False)
        spec[f"memory_saving_equal_batch_vs_{base}"] = ArraySpec(
            "float", grid, finite=False, required=False
        )
    spec["speedup_vs_exact"] = ArraySpec("float", grid, finite=False)
    for method, shape in (("exact", line), ("sdpa", line), ("linformer", grid)):
        spec[f"batch_{method}"] = ArraySpec("int", shape, minimum=0, required=False)
        spec[f"peak_bytes_per_sequence_{method}"] = ArraySpec(
            "float", shape, finite=False, required=False
        )
    return spec


FORMAT = RunFormat(
    name=FAMILY.format,
    version=3,
    npz="efficiency.npz",
    schema=EfficiencyMeta,
    arrays=efficiency_array_spec,
    files=("efficiency.csv", "efficiency.json"),
    npz_since=2,
)
