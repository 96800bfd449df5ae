"""What the low rank buys: Linformer against exact attention in time and memory (Table 3).

For each sequence length n, a small encoder stack with exact attention (explicit softmax and
PyTorch's SDPA) and with Linformer attention (each k) runs forward passes at a fixed batch, or
at the largest batch that fits a memory budget (the paper's setting). Both sides use the same
dtype, threads and weights (the exact twin shares every weight except E, F).

Time: the stacks of one n take turns, one forward pass each per round, in an order that
reverses every round (A B C, C B A, ...), so a drift in the machine's load falls on all of them
alike. Each stack reports the median and the min and max of its time per token over the rounds;
a speed-up is the ratio within each round, summarised the same way.

Memory: the peak above the starting point of one forward pass, from the CUDA allocator or, on
the CPU, an exact count of the bytes of tensors alive at once
(:func:`lowrank.families.efficiency.tracker.peak_memory`), so that it does not depend on what
ran before; measured at each stack's own batch and at one batch shared by every stack of that n
(the equal-batch peak per sequence). Under a budget
the memory saving is the paper's: the ratio of the largest batches that fit, not a ratio of
peaks measured at unequal batches.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from lowrank.families.efficiency.linformer import Encoder, exact_twin, linformer_encoder
from lowrank.families.efficiency.tracker import peak_memory

BATCH_LIMIT = 4096  # the batch search stops here; a stack that reaches it fits more


@dataclass(frozen=True)
class StackShape:
    layers: int = 2
    hidden: int = 256
    heads: int = 4
    ffn: int = 1024


@dataclass
class Measurement:
    """One (method, n, k) point: times at ``batch``, peaks at ``batch`` and ``equal_batch``."""

    method: str  # "linformer", "exact" (eager softmax), "sdpa"
    n: int
    k: int | None
    batch: int  # the batch timed: the fixed one, or the largest that fits the budget
    seconds_per_token: float  # median over the timed rounds
    peak_bytes: int  # at ``batch``
    runs: int  # timed rounds
    seconds_per_token_min: float = math.nan
    seconds_per_token_max: float = math.nan
    equal_batch: int | None = None  # one batch for every stack of this n
    equal_batch_peak_bytes: int | None = None  # peak at ``equal_batch``
    round_seconds_per_token: tuple[float, ...] = ()  # per round, in order

    @property
    def tokens_per_second(self) -> float:
        return 1.0 / self.seconds_per_token

    @property
    def peak_bytes_per_sequence(self) -> float:
        """Peak memory per sequence at the equal batch (at ``batch`` when not measured)."""
        if self.equal_batch is None or self.equal_batch_peak_bytes is None:
            return self.peak_bytes / self.batch
        return self.equal_batch_peak_bytes / self.equal_batch


def interleaved_order(count: int, rounds: int) -> list[list[int]]:
    """The order in which ``count`` stacks run in each of ``rounds`` rounds: 0, 1, ...,
    count - 1, then the reverse, alternately (A B C, C B A, A B C, ...). Over each pair of
    rounds every stack has the same mean position, so a linear drift in the machine's speed
    favours none of them."""
    forward = list(range(count))
    return [forward if r % 2 == 0 else forward[::-1] for r in range(rounds)]


def time_interleaved(
    passes: Sequence[Callable[[], object]],
    warmup: int,
    rounds: int,
    sync: Callable[[], None] = lambda: None,
) -> np.ndarray:
    """Wall seconds of each pass in each timed round, (rounds, len(passes)), after ``warmup``
    untimed rounds; the passes run in :func:`interleaved_order`."""
    times = np.zeros((rounds, len(passes)))
    for r, order in enumerate(interleaved_order(len(passes), warmup + rounds)):
        for i in order:
            sync()
            start = time.perf_counter()
            passes[i]()
            sync()
            if r >= warmup:
                times[r - warmup, i] = time.perf_counter() - start
    return times


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(min, median, max) of ``values``; NaNs when there are none."""
    if not values:
        return math.nan, math.nan, math.nan
    return min(values), statistics.median(values), max(values)


def largest_batch(fits: Callable[[int], bool], limit: int = BATCH_LIMIT) -> int:
    """Largest power-of-two batch for which ``fits`` is true (at least 1)."""
    batch = 1
    while batch * 2 <= limit and fits(batch * 2):
        batch *= 2
    return batch


def budget_memory_saving(batch_linformer: int, batch_baseline: int) -> float:
    """The paper's memory saving under a budget (Table 3): the largest batch that fits with
    Linformer over the largest that fits with the baseline (8 / 2 = 4). NaN when the baseline
    fits no batch."""
    return batch_linformer / batch_baseline if batch_baseline > 0 else math.nan


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def speed_ratios(base: Measurement, lin: Measurement) -> list[float]:
    """Baseline over Linformer time per token, one ratio per round when both were timed in
    the same interleaved rounds, else the one ratio of their medians."""
    b, x = base.round_seconds_per_token, lin.round_seconds_per_token
    if b and len(b) == len(x):
        return [tb / tx for tb, tx in zip(b, x, strict=True)]
    return [base.seconds_per_token / lin.seconds_per_token]


def resolved(record: Measurement, resolution: int) -> bool:
    """Whether the peak behind ``record.peak_bytes_per_sequence`` (the equal-batch peak, else
    the peak at its batch) is at least ``resolution`` bytes, the smallest the memory method
    tells apart from zero."""
    peak = record.equal_batch_peak_bytes
    return (record.peak_bytes if peak is None else peak) >= resolution


def memory_ratio(base: Measurement, lin: Measurement, resolution: int = 1) -> float:
    """Baseline over Linformer peak memory per sequence at the equal batch; NaN when either
    peak is below ``resolution`` bytes (a ratio of unresolved peaks is no measurement)."""
    if not (resolved(base, resolution) and resolved(lin, resolution)):
        return math.nan
    return base.peak_bytes_per_sequence / lin.peak_bytes_per_sequence


def speedup_table(
    records: list[Measurement], baseline: str = "exact", budget: bool = False, resolution: int = 1
) -> dict[tuple[int, int], dict[str, float]]:
    """Per (n, k), the cells of the paper's Table 3 against ``baseline``:

    - ``speedup``, ``speedup_min``, ``speedup_max``: median, min and max over the rounds of
      baseline / Linformer time per token (min = max = median with a single ratio);
    - ``memory_saving_equal_batch``: baseline / Linformer peak memory per sequence at the
      equal batch (:func:`memory_ratio`: NaN when a peak is below ``resolution`` bytes);
    - ``memory_saving``: with ``budget``, the ratio of the largest batches that fit
      (:func:`budget_memory_saving`), else the equal-batch one;
    - ``batch``, ``baseline_batch``: the batches timed.
    """
    base = {r.n: r for r in records if r.method == baseline}
    table = {}
    for r in records:
        if r.method != "linformer" or r.n not in base or r.k is None:
            continue
        b = base[r.n]
        low, mid, high = spread(speed_ratios(b, r))
        equal = memory_ratio(b, r, resolution)
        table[(r.n, r.k)] = {
            "speedup": mid,
            "speedup_min": low,
            "speedup_max": high,
            "memory_saving": budget_memory_saving(r.batch, b.batch) if budget else equal,
            "memory_saving_equal_batch": equal,
            "batch": r.batch,
            "baseline_batch": b.batch,
        }
    return table


def crossover(
    table: dict[tuple[int, int], dict[str, float]], k: int, key: str = "speedup"
) -> int | None:
    """Smallest n from which Linformer with this k is faster (``key`` > 1: the median
    speed-up, or ``speedup_min`` for every round) at every larger n."""
    ns = sorted(n for n, kk in table if kk == k)
    for i, n in enumerate(ns):
        if all(table[(m, k)][key] > 1 for m in ns[i:]):
            return n
    return None


def hardware(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    import os
    import platform

    info: dict[str, Any] = {
        "device": str(device),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {"gpu": props.name, "gpu_memory_bytes": props.total_memory}
    return info


def _stacks(n: int, ks: list[int], shape: StackShape) -> list[tuple[str, int | None, Encoder]]:
    """exact, sdpa and one Linformer stack per k <= n, sharing every weight but E, F."""
    lin = {
        k: linformer_encoder(shape.layers, shape.hidden, shape.heads, shape.ffn, n, k)
        for k in ks
        if k <= n
    }
    first = next(iter(lin.values()), None) or linformer_encoder(
        shape.layers, shape.hidden, shape.heads, shape.ffn, n, min(n, 8)
    )
    return [
        ("exact", None, exact_twin(first, "eager")),
        ("sdpa", None, exact_twin(first, "sdpa")),
        *(("linformer", k, m) for k, m in lin.items()),
    ]


def _inputs(
    batch: int, n: int, hidden: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(n)
    return torch.randn(batch, n, hidden, generator=gen).to(device=device, dtype=dtype)  # (B, n, D)


def _peak_or_none(model: Encoder, x: torch.Tensor) -> int | None:
    """Peak bytes of ``model`` on ``x``, or None when it runs out of memory."""
    try:
        return peak_memory(model, x)
    except Exception as exc:
        if is_oom(exc):
            return None
        raise


def _largest_in_budget(
    model: Encoder, make: Callable[[int], torch.Tensor], budget: int, cap: int = BATCH_LIMIT
) -> int:
    """Largest power-of-two batch up to ``cap`` whose peak fits ``budget`` bytes; 0 when
    batch 1 does not (or ``cap`` is 0)."""

    def fits(b: int) -> bool:
        if b > cap:  # the memory estimate says this batch would not fit the machine
            return False
        peak = _peak_or_none(model, make(b))
        return peak is not None and peak <= budget

    return largest_batch(fits) if fits(1) else 0


def run_grid(
    ns: list[int],
    ks: list[int],
    shape: StackShape,
    device: torch.device,
    dtype: torch.dtype,
    batch: int | None,
    budget: int | None,
    warmup: int,
    repeats: int,
    progress: Callable[[str], None] = lambda s: None,
    caps: Callable[[int], dict[tuple[str, int | None], int]] | None = None,
) -> list[Measurement]:
    """Measure exact, sdpa and Linformer (each k) for every n: ``repeats`` interleaved rounds
    after ``warmup`` ones, at ``batch`` (default 1) or at the largest power-of-two batch whose
    peak fits ``budget`` bytes; a stack over the budget at batch 1 is left out. ``caps(n)``
    bounds each stack's batch search by ``(method, k)`` (the machine's memory)."""
    records: list[Measurement] = []
    for n in ns:
        stacks = [
            (m, k, e.to(device=device, dtype=dtype).eval()) for m, k, e in _stacks(n, ks, shape)
        ]
        limits = caps(n) if caps is not None else {}
        records += _measure_n(
            n, stacks, shape.hidden, device, dtype, batch, budget, warmup, repeats, progress,
            limits,
        )  # fmt: skip
        del stacks  # no reference cycles: freed here, without a slow gc.collect()
    return records


def _measure_n(
    n: int,
    stacks: list[tuple[str, int | None, Encoder]],
    hidden: int,
    device: torch.device,
    dtype: torch.dtype,
    batch: int | None,
    budget: int | None,
    warmup: int,
    repeats: int,
    progress: Callable[[str], None],
    caps: dict[tuple[str, int | None], int] | None = None,
) -> list[Measurement]:
    """The records of one n: choose each stack's batch, measure its peaks at that batch and
    at the smallest chosen one (the equal batch), then time all stacks in interleaved rounds.
    ``caps`` bounds the batch search of a stack ``(method, k)``."""

    def make(b: int) -> torch.Tensor:
        return _inputs(b, n, hidden, device, dtype)

    chosen = []
    for method, k, model in stacks:
        cap = (caps or {}).get((method, k), BATCH_LIMIT)
        size = (batch or 1) if budget is None else _largest_in_budget(model, make, budget, cap)
        label = f"n={n} {method}{'' if k is None else f' k={k}'}"
        progress(
            f"{label} batch={size}" if size else f"{label}: over the budget at batch 1, left out"
        )
        if size:
            chosen.append((method, k, model, size))
    equal = min((size for *_, size in chosen), default=1)
    measured = []
    for method, k, model, size in chosen:
        x = make(size)
        peak = _peak_or_none(model, x)
        same = peak if size == equal else _peak_or_none(model, make(equal))
        if peak is None or same is None:
            progress(f"n={n} {method}: out of memory at batch {size}, left out")
            continue
        measured.append((method, k, model, x, peak, same))
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    passes = [functools.partial(model, x) for _, _, model, x, _, _ in measured]
    with torch.inference_mode():
        times = time_interleaved(passes, warmup, repeats, sync)  # (repeats, stacks)
    records = []
    for j, (method, k, _, x, peak, same) in enumerate(measured):
        per_token = [float(t) / (x.shape[0] * n) for t in times[:, j]]
        low, mid, high = spread(per_token)
        records.append(
            Measurement(
                method=method,
                n=n,
                k=k,
                batch=x.shape[0],
                seconds_per_token=mid,
                peak_bytes=peak,
                runs=repeats,
                seconds_per_token_min=low,
                seconds_per_token_max=high,
                equal_batch=equal,
                equal_batch_peak_bytes=same,
                round_seconds_per_token=tuple(per_token),
            )
        )
    return records


def records_json(records: list[Measurement]) -> list[dict[str, Any]]:
    """One dict per record: its fields, tokens per second and the equal-batch peak per
    sequence."""
    return [
        asdict(r)
        | {
            "round_seconds_per_token": list(r.round_seconds_per_token),
            "tokens_per_second": r.tokens_per_second,
            "peak_bytes_per_sequence": r.peak_bytes_per_sequence,
        }
        for r in records
    ]
