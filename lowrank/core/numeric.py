"""Numerical failures every analysis checks for: non-finite attention, running out of memory.

Nothing here imports torch at module level: the CLI recognises an out-of-memory error
without loading it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lowrank.core.options import flag
from lowrank.errors import LowrankError

if TYPE_CHECKING:
    import torch


def check_finite(probs: torch.Tensor, layer: int) -> None:
    """Raise naming the first (layer, head) whose P holds NaN or inf (e.g. fp16 overflow).

    Args:
        probs: (b, H, ...) one layer's attention of a batch.
        layer: its 0-based index (the message is 1-based).
    """
    import torch

    bad = ~torch.isfinite(probs).flatten(2).all(dim=-1)  # (b, H)
    if bool(bad.any()):
        head = int(bad.any(dim=0).nonzero()[0])
        raise LowrankError(
            f"attention of layer {layer + 1}, head {head + 1} holds NaN or inf (overflow in "
            f"this dtype?): run with {flag('dtype')} float32"
        )


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CPU and CUDA allocator failures (worth retrying with a smaller batch),
    recognised by type name so that torch need not be imported."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
