"""What the low rank buys: Linformer against exact attention in time and memory (Table 3).

For each sequence length n (and each k for Linformer), a small encoder stack runs forward
passes at a fixed batch or at the largest batch that fits a memory budget; the time per token
is the median over repeated runs after warm-up, and the peak memory comes from the CUDA
allocator or, on the CPU, from the process's resident memory sampled during the run. Both
sides use the same dtype, threads and weights (the exact twin shares every weight except E, F).
"""

from __future__ import annotations

import gc
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from lowrank.linformer import Encoder, exact_twin, linformer_encoder


@dataclass(frozen=True)
class StackShape:
    layers: int = 2
    hidden: int = 256
    heads: int = 4
    ffn: int = 1024


@dataclass
class Measurement:
    """One (method, n, k, batch) point."""

    method: str  # "linformer", "exact" (eager softmax), "sdpa"
    n: int
    k: int | None
    batch: int
    seconds_per_token: float
    peak_bytes: int
    runs: int

    @property
    def tokens_per_second(self) -> float:
        return 1.0 / self.seconds_per_token


def _pin_malloc() -> None:
    """Make glibc return freed tensor memory to the system at once (fixed mmap threshold of
    64 KiB instead of its adaptive one), so resident memory tracks live tensors on the CPU.
    Without it, the allocator keeps freed blocks and later peaks read as zero."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 128 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc: keep the default allocator
        return


class PeakMemory:
    """Peak memory above the starting point: CUDA allocator, or sampled process RSS."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            import psutil

            _pin_malloc()
            proc = psutil.Process()
            self._base = proc.memory_info().rss
            self._max = self._base

            def sample() -> None:
                while not self._stop.is_set():
                    self._max = max(self._max, proc.memory_info().rss)
                    time.sleep(0.0005)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
            self.peak = self._max - self._base


def time_forward(model: Encoder, x: torch.Tensor, warmup: int, repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` forward passes after ``warmup`` ones."""
    sync = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            sync()
            start = time.perf_counter()
            model(x)
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return times


def measure(
    model: Encoder,
    method: str,
    n: int,
    k: int | None,
    batch: int,
    hidden: int,
    device: torch.device,
    dtype: torch.dtype,
    warmup: int,
    repeats: int,
) -> Measurement:
    """Median time per token and peak memory of one configuration."""
    gen = torch.Generator(device="cpu").manual_seed(n)
    x = torch.randn(batch, n, hidden, generator=gen).to(device=device, dtype=dtype)
    times = time_forward(model, x, warmup, repeats)
    with PeakMemory(device) as mem, torch.inference_mode():
        for _ in range(3):  # several passes, so the CPU sampler cannot miss a short peak
            model(x)
    return Measurement(
        method, n, k, batch, statistics.median(times) / (batch * n), mem.peak, repeats
    )


def largest_batch(fits: Callable[[int], bool], limit: int = 4096) -> int:
    """Largest power-of-two batch for which ``fits`` is true (at least 1)."""
    batch = 1
    while batch * 2 <= limit and fits(batch * 2):
        batch *= 2
    return batch


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def speedup_table(
    records: list[Measurement], baseline: str = "exact"
) -> dict[tuple[int, int], dict[str, float]]:
    """Per (n, k): Linformer's speed-up (baseline time per token / Linformer's) and memory
    saving (baseline peak / Linformer's peak), the cells of the paper's Table 3."""
    base = {r.n: r for r in records if r.method == baseline}
    table = {}
    for r in records:
        if r.method != "linformer" or r.n not in base or r.k is None:
            continue
        b = base[r.n]
        table[(r.n, r.k)] = {
            "speedup": b.seconds_per_token / r.seconds_per_token,
            "memory_saving": b.peak_bytes / max(r.peak_bytes, 1),
        }
    return table


def crossover(table: dict[tuple[int, int], dict[str, float]], k: int) -> int | None:
    """Smallest n from which Linformer with this k is faster (speed-up > 1) at every larger n."""
    ns = sorted(n for n, kk in table if kk == k)
    for i, n in enumerate(ns):
        if all(table[(m, k)]["speedup"] > 1 for m in ns[i:]):
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
) -> list[Measurement]:
    """Measure exact, sdpa and Linformer (each k) for every n."""
    if device.type == "cpu":
        _pin_malloc()  # before the first tensor, so no freed heap block is reused unseen
    records: list[Measurement] = []
    for n in ns:
        lin = {
            k: linformer_encoder(shape.layers, shape.hidden, shape.heads, shape.ffn, n, k)
            for k in ks
            if k <= n
        }
        first = next(iter(lin.values()), None) or linformer_encoder(
            shape.layers, shape.hidden, shape.heads, shape.ffn, n, min(n, 8)
        )
        models: list[tuple[str, int | None, Encoder]] = [
            ("exact", None, exact_twin(first, "eager")),
            ("sdpa", None, exact_twin(first, "sdpa")),
            *(("linformer", k, m) for k, m in lin.items()),
        ]
        for method, k, model in models:
            model = model.to(device=device, dtype=dtype).eval()
            size = batch or 1
            if budget is not None:

                def fits(
                    b: int,
                    m: Encoder = model,
                    mt: str = method,
                    kk: int | None = k,
                    nn: int = n,
                    limit: int = budget,
                ) -> bool:
                    return _fits(m, mt, nn, kk, b, shape.hidden, device, dtype, limit)

                size = largest_batch(fits)
            progress(f"n={n} {method}{'' if k is None else f' k={k}'} batch={size}")
            try:
                records.append(
                    measure(model, method, n, k, size, shape.hidden, device, dtype, warmup, repeats)
                )
            except Exception as exc:
                if not is_oom(exc):
                    raise
                progress(f"n={n} {method}: out of memory at batch {size}, skipped")
            model.to("cpu")
            del model
            gc.collect()
    return records


def _fits(
    model: Encoder,
    method: str,
    n: int,
    k: int | None,
    batch: int,
    hidden: int,
    device: torch.device,
    dtype: torch.dtype,
    budget: int,
) -> bool:
    try:
        m = measure(model, method, n, k, batch, hidden, device, dtype, warmup=0, repeats=1)
    except Exception as exc:
        if is_oom(exc):
            return False
        raise
    return m.peak_bytes <= budget


def records_json(records: list[Measurement]) -> list[dict[str, Any]]:
    return [asdict(r) | {"tokens_per_second": r.tokens_per_second} for r in records]
