"""How much memory a ``lowrank verify`` run needs, checked before the first forward pass.

Verify streams: the capture hands over one layer at a time, each sequence of it is checked
alone (its H matrices P in float64, their SVD, and per k one R per matrix), the synthetic
matrices of one inverse temperature at a time, and the JL trials in chunks of
:data:`~lowrank.families.verify.theorems.JL_CHUNK_ENTRIES`; the C heap's free pages are handed
back after each (:func:`release_free_memory`). The peak beyond the loaded model is the
largest of

* a batch's forward pass and one sequence's checks: :data:`FIXED` (the first forward pass,
  the linear-algebra libraries), ``20 B x H n^2`` per sequence of the batch (float32 scores,
  P and the capture's copy; measured 18) and ``8 B x H n^2 (6 + 3 k_max / n)`` for the
  checks (P, U and V^T of its SVD and LAPACK's work; Theorem 2's scores; per k R, P R^T and
  the projected scores; measured 67 B per element at k_max = n),
* one inverse temperature's synthetic matrices: ``8 B x c n^2 (3 + 2 k_max / n)``,
* the JL trials: two chunks of R and the vectors, ``8 B x (2 JL_CHUNK_ENTRIES + 2 T n)``,

times :data:`MARGIN`. Measured on all-MiniLM-L6-v2 at the defaults (n = 512, 2 sequences in
one batch, k up to 512, 24 synthetic matrices, 2,000 JL trials; CPU): the real-attention
stage peaked 544 MiB above the loaded model (the estimate: 580 MiB), the whole run at
1.00 GiB resident (0.42 GiB of it the model, torch and the corpus), where the unstreamed
verify of format 2 peaked at 8.8 GiB (9.2 GB: the JL rows drew 2,000 x 512 x 512 float64 at
once).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from dataclasses import dataclass
from functools import cache

import torch

from lowrank.core.device import free_bytes
from lowrank.core.options import flag, named
from lowrank.errors import LowrankError
from lowrank.families.verify.theorems import JL_CHUNK_ENTRIES

log = logging.getLogger(__name__)

GIB = 1024**3
MIB = 1024**2
MARGIN = 1.25
FIXED = 128 * MIB
"""Bytes of the first forward pass and the linear-algebra libraries, whatever n."""


@dataclass(frozen=True)
class Need:
    """Estimated peak bytes of each stage of a verify run (:func:`estimate`)."""

    forward: int  # per sequence of a batch: float32 scores, P and the capture's copy
    checks: int  # one sequence's float64 checks
    synthetic: int
    jl: int

    def peak(self, batch: int) -> int:
        """The run's estimated peak beyond the loaded model at ``batch`` sequences per
        forward pass."""
        real = FIXED + batch * self.forward + self.checks
        return int(MARGIN * max(real, self.synthetic, self.jl))


def estimate(heads: int, n: int, k_max: int, synthetic_count: int, jl_trials: int) -> Need:
    """The bytes of each stage (see the module docstring for the terms)."""
    square = heads * n * n
    return Need(
        forward=20 * square,
        checks=int(8 * square * (6 + 3 * k_max / n)),
        synthetic=int(8 * synthetic_count * n * n * (3 + 2 * k_max / n)),
        jl=8 * (2 * JL_CHUNK_ENTRIES + 2 * jl_trials * n),
    )


def check_memory(
    batch: int,
    heads: int,
    n: int,
    k_max: int,
    synthetic_count: int,
    jl_trials: int,
    device: torch.device,
) -> int:
    """Refuse, in one line, a run whose estimated peak exceeds the free memory; else return
    the estimate in bytes (logged at INFO).

    The checks run on the CPU whatever the device (float64, numpy); on CUDA only the
    forward pass is on the GPU, so the CPU's free memory is what counts.

    Raises:
        LowrankError: the estimate exceeds the free memory, naming the batch size that
            fits, or the options to lower when even one sequence does not.
    """
    need = estimate(heads, n, k_max, synthetic_count, jl_trials)
    cpu = torch.device("cpu")
    on_cpu = device.type == "cpu"
    free = free_bytes(cpu)
    peak = need.peak(batch if on_cpu else 0)
    if peak <= free:
        log.info(
            f"verify: about {peak / GIB:.2f} GiB at peak beyond the model, {free / GIB:.1f} GiB "
            "free"
        )
        return peak
    fits = 0
    while on_cpu and fits < batch and need.peak(fits + 1) <= free:
        fits += 1
    if fits >= 1:
        raise LowrankError(
            f"{named('batch_size', batch)} needs about {peak / GIB:.1f} GiB ({batch} sequences "
            f"x {heads} heads x {n}^2 float32 in the forward pass, plus one sequence's float64 "
            f"checks), the machine has {free / GIB:.1f} GiB free: use "
            f"{named('batch_size', fits)} or less"
        )
    raise LowrankError(
        f"verify needs about {peak / GIB:.1f} GiB at n = {n} ({heads} heads x n^2 float64 "
        f"per sequence, k up to {k_max}, {synthetic_count} synthetic matrices), the machine "
        f"has {free / GIB:.1f} GiB free: use a smaller {flag('seq_len')}, {flag('k')} or "
        f"{flag('synthetic_count')}"
    )


@cache
def _malloc_trim() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """glibc's ``malloc_trim``, or None (another C library: nothing to release)."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    return trim


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc ``malloc_trim(0)``).

    Each sequence's checks allocate float64 blocks of ``H n^2`` entries and free them; glibc
    keeps such blocks on its heap once it has freed one of that size (its mmap threshold
    rises to it), and the small count arrays a run keeps land between them, so the
    resident size grew with every sequence checked (MiniLM, n = 256: +254 MiB after one
    sequence, +472 MiB after three). Trimming after each sequence keeps it flat (+178 and
    +194 MiB). A no-op where the C library has no ``malloc_trim``."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
