"""How much memory ``lowrank efficiency`` will need, estimated before anything is allocated.

The stacks of one n live together (their own weights, Linformer's E and F, and an input
batch each) while each in turn runs a forward pass. The exact (explicit softmax) stack
dominates: its attention holds n x n scores per head and sequence, three such matrices at
its peak (the scores, their scaled copy, the probabilities). A run whose largest n does not
fit the free memory would die of an out-of-memory kill on the CPU (nothing to catch), so
:func:`check_fits` refuses it up front and names the largest n that fits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lowrank.core.options import flag
from lowrank.errors import LowrankError

if TYPE_CHECKING:
    import torch

    from lowrank.families.efficiency.timing import StackShape

GIB = 1024**3
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}


def weight_bytes(n: int, ks: list[int], shape: StackShape, itemsize: int) -> int:
    """The weights of every stack of one n: exact, sdpa and one Linformer per k <= n, each
    with its own Q, K, V, output, MLP and norms, plus each Linformer's E and F (k x n,
    shared by its layers)."""
    d, f = shape.hidden, shape.ffn
    per_stack = shape.layers * (4 * d * d + 2 * d * f + 9 * d + f)
    linformers = [k for k in ks if k <= n]
    return (per_stack * (2 + len(linformers)) + sum(2 * k * n for k in linformers)) * itemsize


def activation_bytes(
    method: str, batch: int, n: int, k: int | None, shape: StackShape, itemsize: int
) -> int:
    """Working memory of one forward pass of one stack at ``batch``, one layer at a time.

    Exact attention (explicit softmax; the SDPA stack is counted the same, since its CPU
    path may build the same matrices): 3 B H n^2 scores; Linformer: 3 B H n k scores and
    the projected keys and values, 2 B H k d. Both: the hidden states, Q, K, V and the
    MLP's activations, about B n (8 D + 2 F).
    """
    h, d = shape.heads, shape.hidden
    if method == "linformer":
        width = k or 1
        attention = 3 * batch * h * n * width + 2 * batch * width * d
    else:
        attention = 3 * batch * h * n * n
    return (attention + batch * n * (8 * d + 2 * shape.ffn)) * itemsize


def estimate_bytes(
    n: int,
    ks: list[int],
    shape: StackShape,
    itemsize: int,
    batch: int,
    method: str = "exact",
    k: int | None = None,
) -> int:
    """Peak bytes while the stacks of one n are measured at ``batch``: every stack's
    weights and input batch, and the working memory of the stack that runs (``method``;
    Linformer with projected length ``k``)."""
    stacks = 2 + sum(kk <= n for kk in ks)
    inputs = stacks * batch * n * shape.hidden * itemsize
    work = activation_bytes(method, batch, n, k, shape, itemsize)
    return weight_bytes(n, ks, shape, itemsize) + inputs + work


def available_bytes(device: torch.device) -> int:
    """Free memory: the GPU's (``torch.cuda.mem_get_info``) or the host's available RAM."""
    if device.type == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def largest_n(ks: list[int], shape: StackShape, itemsize: int, batch: int, limit: int) -> int:
    """The largest n (at least 1) whose :func:`estimate_bytes` at ``batch`` is within
    ``limit`` bytes (1 when even n = 2 is not)."""
    low, high = 1, 2
    while estimate_bytes(high, ks, shape, itemsize, batch) <= limit:
        low, high = high, high * 2
    while high - low > 1:  # estimate(low) fits (or low = 1), estimate(high) does not
        mid = (low + high) // 2
        if estimate_bytes(mid, ks, shape, itemsize, batch) <= limit:
            low = mid
        else:
            high = mid
    return low


def check_fits(
    ns: list[int], ks: list[int], shape: StackShape, dtype: str, batch: int, free: int, where: str
) -> None:
    """Refuse, in one line naming the largest n that fits, a run whose largest n needs more
    than ``free`` bytes at ``batch``.

    Raises:
        LowrankError: the largest n does not fit (or not even n = 2 does).
    """
    itemsize = ITEMSIZE[dtype]
    n = max(ns)
    need = estimate_bytes(n, ks, shape, itemsize, batch)
    if need <= free:
        return
    fits = largest_n(ks, shape, itemsize, batch, free)
    head = (
        f"--n {n} needs about {need / GIB:.3g} GiB at batch {batch} (exact attention holds "
        f"{shape.heads} x n x n scores per sequence), more than the {free / GIB:.3g} GiB "
        f"available on {where}"
    )
    if fits < 2:
        raise LowrankError(
            f"{head}: not even n = 2 fits; free memory or lower {flag('batch_size')}"
        )
    raise LowrankError(f"{head}: the largest n that fits is {fits}")


def affordable(
    n: int, ks: list[int], shape: StackShape, dtype: str, free: int
) -> dict[tuple[str, int | None], int]:
    """Per stack ``(method, k)`` of one n, the largest power-of-two batch (0: none) whose
    estimate fits ``free`` bytes; the batch search under ``--memory-budget`` stops there."""
    itemsize = ITEMSIZE[dtype]
    stacks: list[tuple[str, int | None]] = [("exact", None), ("sdpa", None)]
    stacks += [("linformer", k) for k in ks if k <= n]
    caps: dict[tuple[str, int | None], int] = {}
    for method, k in stacks:
        batch, trial = 0, 1
        while trial <= 2**20 and estimate_bytes(n, ks, shape, itemsize, trial, method, k) <= free:
            batch, trial = trial, 2 * trial
        caps[(method, k)] = batch
    return caps
