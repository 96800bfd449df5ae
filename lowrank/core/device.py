"""Where a run computes, and how much memory it may still use there."""

from __future__ import annotations

import torch

from lowrank.core.options import flag
from lowrank.errors import LowrankError


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is a user error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise LowrankError(
            f"{flag('device')} cuda: no CUDA GPU is visible; use {flag('device')} cpu or auto"
        )
    return torch.device(device)


def free_bytes(device: torch.device) -> int:
    """Memory this process may still use on ``device``: CUDA's free memory, or the
    machine's available RAM (psutil)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)
