"""How much memory a ``lowrank spectrum`` batch needs, checked before the first forward pass.

The capture takes one layer at a time, so the batch's peak is one layer's attention: the
scores and probabilities (float32) of every sequence and head, ``[B, H, n, n]``, plus the
float64 work of the singular values (P P^T and its eigen-decomposition). Measured on
all-MiniLM-L6-v2 at n = 512 on the CPU: 47 MiB more peak RSS per sequence of a batch
(642 MiB at batch 1, 974 MiB at batch 8), i.e. 15.7 bytes per element of ``[H, n, n]``;
:data:`BYTES_PER_ELEMENT` = 20 leaves a margin. A batch that does not fit the free memory
is refused before it starts (or, with ``auto_batch``, cut to the largest that fits), naming
the largest batch size that fits.
"""

from __future__ import annotations

import logging

import torch

from lowrank.core.device import free_bytes
from lowrank.core.options import flag, named, switch
from lowrank.errors import LowrankError

log = logging.getLogger(__name__)

BYTES_PER_ELEMENT = 20
GIB = 1024**3


def batch_bytes(batch: int, heads: int, n: int) -> int:
    """Estimated peak bytes of one layer of a batch: ``batch x heads x n^2 x 20``."""
    return batch * heads * n * n * BYTES_PER_ELEMENT


def fit_batch(batch: int, heads: int, n: int, device: torch.device, auto_batch: bool) -> int:
    """``batch`` when its estimate fits the free memory; otherwise the largest batch that
    fits (``auto_batch``) or a one-line refusal naming it.

    Raises:
        LowrankError: the batch does not fit and ``auto_batch`` is off, or not even one
            sequence fits.
    """
    free = free_bytes(device)
    need = batch_bytes(batch, heads, n)
    if need <= free:
        return batch
    fits = free // batch_bytes(1, heads, n)
    where = "GPU" if device.type == "cuda" else "machine"
    if fits < 1:
        raise LowrankError(
            f"one sequence of n = {n} needs about {batch_bytes(1, heads, n) / GIB:.1f} GiB for "
            f"its attention matrices ({heads} heads x n^2 x {BYTES_PER_ELEMENT} B), the {where} "
            f"has {free / GIB:.1f} GiB free: use a smaller {flag('seq_len')} or another "
            f"{flag('device')}"
        )
    if not auto_batch:
        raise LowrankError(
            f"{named('batch_size', batch)} needs about {need / GIB:.1f} GiB for one layer's "
            f"attention "
            f"matrices ({batch} x {heads} heads x {n}^2 x {BYTES_PER_ELEMENT} B), the {where} "
            f"has {free / GIB:.1f} GiB free: use {named('batch_size', fits)} or less, or pass "
            f"{switch('auto_batch')}"
        )
    log.warning(
        f"{named('batch_size', batch)} would need about {need / GIB:.1f} GiB, {free / GIB:.1f} "
        f"GiB are "
        f"free: {flag('auto_batch')} runs batches of {fits} (only float32 rounding changes)"
    )
    return int(fits)
