"""How ``lowrank efficiency`` measures peak memory, in words run.json records (torch-free).

Two methods, one per device kind (measured by :mod:`lowrank.families.efficiency.tracker`):

- CPU, :data:`TENSORS`: every tensor a forward pass allocates is counted as it is created and
  uncounted as it is freed; the peak is the largest total of tensor bytes alive at once. An
  exact count, the same in a notebook that ran other work before and in a fresh process. It
  leaves out what is not a tensor (the allocator's own overhead, Python objects, scratch
  space a kernel takes outside the dispatcher).
- CUDA, :data:`CUDA_ALLOCATOR`: ``torch.cuda.max_memory_allocated`` above the memory
  allocated at the start, whose blocks the caching allocator rounds up to 512 bytes.

Folders of formats 1 and 2 measured CPU peaks as :data:`RESIDENT_SAMPLED`: the process's
resident memory sampled during the passes. That depended on what the process had freed
before (issue 27: a Linformer peak of 0.00 MiB, savings of 2074x, 131x and 514x in a
notebook), so their reports say so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class MemoryMethod:
    """How a peak was measured: ``name`` (run.json's ``memory_method``), a one-sentence
    ``description`` (run.json's ``memory``) and ``resolution_bytes``: the smallest peak the
    method tells apart from nothing; a peak below it is unresolved and a ratio with it is
    not reported."""

    name: str
    description: str
    resolution_bytes: int

    @property
    def reproducible(self) -> bool:
        """Whether the same call gives the same peaks whatever ran before it."""
        return self.name != RESIDENT_SAMPLED.name


TENSORS = MemoryMethod(
    "tensor-bytes",
    "largest total size of the tensors alive at once during one forward pass (after a "
    "warm-up pass), counted exactly at every ATen operator; independent of what ran before "
    "in the process; memory outside tensors (allocator overhead, kernel scratch) not counted",
    1,
)
CUDA_ALLOCATOR = MemoryMethod(
    "cuda-allocator",
    "torch.cuda.max_memory_allocated during one forward pass (after a warm-up pass) above the "
    "memory allocated before it; blocks rounded up to 512 bytes",
    512,
)
RESIDENT_SAMPLED = MemoryMethod(
    "resident-sampled",
    "process resident memory sampled during the passes, above the start (formats 1-2): it "
    "depends on what ran before in the same process, so these peaks are not reproducible",
    2**20,  # the sampled peaks of tiny stacks read 0.00-0.02 MiB: noise below a MiB
)
METHODS = {m.name: m for m in (TENSORS, CUDA_ALLOCATOR, RESIDENT_SAMPLED)}


def memory_method(device_type: str) -> MemoryMethod:
    """The method used on a device of this type (``"cpu"``, ``"cuda"``)."""
    return CUDA_ALLOCATOR if device_type == "cuda" else TENSORS


def recorded_method(meta: Mapping[str, Any]) -> MemoryMethod:
    """The method a run's run.json names; format 1-2 folders name none: the CUDA allocator
    on a GPU, else sampled resident memory."""
    name = meta.get("memory_method")
    if name is not None:
        known = METHODS.get(str(name))
        resolution = int(meta.get("memory_resolution_bytes") or 1)
        description = str(meta.get("memory") or (known.description if known else name))
        return MemoryMethod(str(name), description, resolution)
    if meta.get("hardware", {}).get("gpu"):  # three passes, no warm-up: as it recorded
        return MemoryMethod(
            CUDA_ALLOCATOR.name, str(meta.get("memory") or "CUDA allocator peak"), 512
        )
    return RESIDENT_SAMPLED


def measured_peak(record: dict[str, Any]) -> float:
    """The peak behind a record's peak per sequence: at the equal batch, else its own."""
    peak = record.get("equal_batch_peak_bytes")
    return float(record["peak_bytes"] if peak is None else peak)


def unresolved_cells(records: list[dict[str, Any]], resolution: int) -> set[tuple[str, int, int]]:
    """(baseline, n, k) of every memory saving that rests on a peak below ``resolution``
    bytes: the baseline's or Linformer's."""
    low = {(r["method"], r["n"], r["k"]) for r in records if measured_peak(r) < resolution}
    cells = {(r["n"], r["k"]) for r in records if r["method"] == "linformer"}
    return {
        (base, n, k)
        for base in ("exact", "sdpa")
        for n, k in cells
        if (base, n, None) in low or ("linformer", n, k) in low
    }
