"""``lowrank efficiency``: the paper-style Table 3 on this machine (measured by
:mod:`lowrank.families.efficiency.timing`), as an
:class:`~lowrank.families.efficiency.result.EfficiencyResult`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lowrank.core.options import flag
from lowrank.errors import LowrankError
from lowrank.families.efficiency.format import FORMAT
from lowrank.families.efficiency.memory import memory_method
from lowrank.families.efficiency.result import BASELINES, EfficiencyResult, Table, as_json
from lowrank.families.efficiency.timing import (
    BATCH_LIMIT,
    Measurement,
    StackShape,
    crossover,
    hardware,
    records_json,
    run_grid,
    speedup_table,
)
from lowrank.inputs.config import DType

if TYPE_CHECKING:
    from lowrank.runs.provenance import Provenance

log = logging.getLogger(__name__)

# Version 2: interleaved rounds with min/median/max, equal-batch peaks, and under a budget
# memory_saving_* is the ratio of the largest batches that fit (version 1: ratio of peaks).
# Version 3: CPU peaks are exact counts of tensor bytes (memory.TENSORS), not sampled resident
# memory; run.json names the method (memory_method) and its resolution; a memory saving whose
# peaks are below that resolution is NaN.


def memory_measure(budget_gib: float | None, batch: int | None) -> str:
    """What ``memory_saving`` means in a run, in words."""
    if budget_gib is not None:
        return (
            f"largest power-of-two batch whose peak fits {budget_gib:g} GiB, Linformer's over "
            "the baseline's"
        )
    return f"baseline's over Linformer's peak memory per sequence, both at batch {batch or 1}"


@dataclass(frozen=True)
class EfficiencySpec:
    """What ``lowrank efficiency`` measures (checked by
    :func:`lowrank.families.efficiency.api.efficiency`)."""

    ns: tuple[int, ...] = (512, 1024, 2048, 4096)  # sequence lengths, increasing
    ks: tuple[int, ...] = (64, 128, 256)  # Linformer's projected lengths, increasing
    shape: StackShape = field(default_factory=StackShape)
    dtype: DType = "float32"
    batch: int | None = None  # a fixed batch; None: 1, or the largest within the budget
    budget_gib: float | None = None  # --memory-budget
    warmup: int = 2
    repeats: int = 5

    def identity(self, device: torch.device) -> dict[str, Any]:
        """The fields that define a run, as run.json's ``identity`` records them."""
        return {
            "n": list(self.ns),
            "k": list(self.ks),
            "shape": self.shape.__dict__,
            "device": str(device),
            "dtype": self.dtype,
            "batch": self.batch,
            "budget_gib": self.budget_gib,
        }


def run_efficiency(
    spec: EfficiencySpec, device: torch.device, provenance: Provenance, progress: bool = True
) -> EfficiencyResult:
    """``lowrank efficiency`` in memory: refuse a grid the free memory cannot hold, measure
    every stack, and build the tables; nothing is written or printed (each stack's batch is
    a log line, at INFO with ``progress``, else DEBUG)."""
    from lowrank.families.efficiency.peak import affordable, available_bytes, check_fits

    ns, ks, shape = list(spec.ns), list(spec.ks), spec.shape
    free = available_bytes(device)
    where = "the GPU" if device.type == "cuda" else "this machine"
    check_fits(ns, ks, shape, spec.dtype, spec.batch or 1, free, where)
    budget = None if spec.budget_gib is None else int(spec.budget_gib * 2**30)
    say = log.info if progress else log.debug
    records = run_grid(
        ns,
        ks,
        shape,
        device,
        getattr(torch, spec.dtype),
        spec.batch,
        budget,
        spec.warmup,
        spec.repeats,
        progress=say,
        caps=lambda n: affordable(n, ks, shape, spec.dtype, free),
    )
    if not records:
        raise LowrankError(
            "no stack could be measured: each ran out of memory or, at batch 1, over "
            f"{flag('memory_budget')}"
        )
    measure = memory_measure(spec.budget_gib, spec.batch)
    method = memory_method(device.type)
    tables = {
        base: speedup_table(records, base, budget is not None, method.resolution_bytes)
        for base in BASELINES
    }
    crossovers = {
        f"crossover_n{suffix}": {
            base: {k: crossover(t, k, key) for k in ks} for base, t in tables.items()
        }
        for suffix, key in (("", "speedup"), ("_every_round", "speedup_min"))
    }
    summary = {
        base: [{"n": n, "k": k, **cell} for (n, k), cell in sorted(t.items())]
        for base, t in tables.items()
    }
    data = {
        "records": records_json(records),
        "tables": summary,
        "memory_saving_measure": measure,
        **crossovers,
    }
    meta: dict[str, Any] = {
        **FORMAT.header(),
        "command": provenance.command,
        "created": provenance.created,
        "identity": spec.identity(device),
        "hardware": hardware(device),
        "stack": shape.__dict__,
        "n": ns,
        "k": ks,
        "dtype": spec.dtype,
        "batch": spec.batch,
        "memory_budget_gib": spec.budget_gib,
        "batch_limit": BATCH_LIMIT,
        "warmup": spec.warmup,
        "repeats": spec.repeats,
        "sharing": "layerwise",
        "timing": "one forward pass per stack per round, order reversed every round; "
        "median, min and max over the rounds",
        "memory": method.description,
        "memory_method": method.name,
        "memory_resolution_bytes": method.resolution_bytes,
        "memory_saving_measure": measure,
        "versions": provenance.versions,
    }
    arrays = npz_arrays(records, tables, ns, ks)
    return EfficiencyResult(meta, arrays, data=as_json(data))


def npz_arrays(
    records: list[Measurement], tables: dict[str, Table], ns: list[int], ks: list[int]
) -> dict[str, np.ndarray]:
    """The arrays of efficiency.npz: per baseline, ``speedup_vs_*`` (median) with
    ``speedup_min_vs_*`` and ``speedup_max_vs_*``, ``memory_saving_vs_*`` (the run's measure)
    and ``memory_saving_equal_batch_vs_*``, each [n, k]; per stack, the batch timed
    (``batch_*``, 0 when left out) and the peak memory per sequence at ``equal_batch`` [n]
    (``peak_bytes_per_sequence_*``); Linformer's are [n, k]. Missing cells are NaN."""
    arrays: dict[str, np.ndarray] = {"n": np.array(ns), "k": np.array(ks)}
    for base, table in tables.items():
        for key in (
            "speedup",
            "speedup_min",
            "speedup_max",
            "memory_saving",
            "memory_saving_equal_batch",
        ):
            grid = np.full((len(ns), len(ks)), np.nan)
            for (n, k), cell in table.items():
                grid[ns.index(n), ks.index(k)] = cell[key]
            arrays[f"{key}_vs_{base}"] = grid
    arrays["equal_batch"] = np.zeros(len(ns), dtype=np.int64)
    for method in ("exact", "sdpa", "linformer"):
        shape = (len(ns), len(ks)) if method == "linformer" else (len(ns),)
        batches, per_seq = np.zeros(shape, dtype=np.int64), np.full(shape, np.nan)
        for r in records:
            if r.method != method:
                continue
            at = (ns.index(r.n), ks.index(r.k)) if r.k is not None else ns.index(r.n)
            batches[at], per_seq[at] = r.batch, r.peak_bytes_per_sequence
            arrays["equal_batch"][ns.index(r.n)] = r.equal_batch or r.batch
        arrays[f"batch_{method}"], arrays[f"peak_bytes_per_sequence_{method}"] = batches, per_seq
    return arrays
