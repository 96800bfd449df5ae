"""``lowrank.efficiency``: Linformer against exact attention in time and memory, from Python."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import get_args

from lowrank.costs.result import EfficiencyResult
from lowrank.errors import LowrankError
from lowrank.inputs.config import Device, DType
from lowrank.inputs.options import (
    MAX_GIB,
    MAX_REPEATS,
    check_choices,
    check_float,
    check_int,
    check_list,
)
from lowrank.runs.provenance import Provenance

__all__ = ["EfficiencyResult", "efficiency"]


def efficiency(
    *,
    n: int | Sequence[int] = (512, 1024, 2048, 4096),
    k: int | Sequence[int] = (64, 128, 256),
    device: Device = "auto",
    dtype: DType = "float32",
    batch_size: int | None = None,
    memory_budget: float | None = None,
    layers: int = 2,
    hidden: int = 256,
    heads: int = 4,
    ffn: int = 1024,
    warmup: int = 2,
    repeats: int = 5,
    out: str | Path | None = None,
    overwrite: bool = False,
    plot: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> EfficiencyResult:
    """Linformer's speed and memory against standard attention (the paper's Table 3).

    For each n and k: forward time per token and peak memory of a small encoder stack
    (``layers`` x ``hidden`` wide, ``heads`` heads, MLP ``ffn``) with Linformer attention
    (layerwise sharing) against the same stack with explicit-softmax attention and with
    PyTorch's SDPA; ``repeats`` interleaved rounds after ``warmup`` ones; at ``batch_size``
    (default 1) or, with ``memory_budget`` (GiB), at the largest power-of-two batch whose
    peak fits (see ``lowrank efficiency --help``).

    Args:
        n: ``--n``, the sequence lengths (each >= 2); sorted, with a log line, when given
            out of order.
        k: ``--k``, Linformer's projected lengths (each >= 1, some below some n).
        out: the run folder to write (efficiency.csv/json/npz, run.json); None writes
            nothing.
        overwrite: replace another run in ``out``.
        plot: also draw ``<out>/figures/speedup_vs_n`` (needs ``out``).
        progress: each stack's batch as a log line at INFO (False: DEBUG).
        command: the command line ``run.json`` records (the CLI passes its own); None
            records this call.

    Returns:
        an :class:`EfficiencyResult`: arrays named as in ``efficiency.npz`` (e.g.
        ``speedup_vs_exact`` [N, K], ``batch_exact`` [N]), ``data`` (efficiency.json),
        ``summary(at=n)``, ``report()``, ``plot()``, ``save()``.

    Raises:
        LowrankError: any bad option with the CLI's one-line message; also a largest n whose
            exact attention would not fit the free memory (naming the largest n that does).
    """
    options = dict(locals())
    from lowrank.costs.memory import available_bytes, check_fits
    from lowrank.costs.timing import StackShape
    from lowrank.costs.workflow import EfficiencySpec, run_efficiency
    from lowrank.runs.writing import check_out_dir
    from lowrank.spectra.pipeline import resolve_device

    ns = check_list("--n", [n] if isinstance(n, int) else n, low=2)
    ks = check_list("--k", [k] if isinstance(k, int) else k, low=1)
    if min(ks) >= max(ns):
        raise LowrankError(
            f"every --k ({', '.join(map(str, ks))}) is at least every --n: Linformer projects n "
            "keys to k < n, so choose k below some n"
        )
    check_choices("--device", [device], get_args(Device))
    check_choices("--dtype", [dtype], get_args(DType))
    if batch_size is not None:
        check_int("--batch-size", batch_size, low=1)
    if memory_budget is not None:
        check_float("--memory-budget", memory_budget, low=0.0, open_low=True, high=MAX_GIB)
        if batch_size is not None:
            raise LowrankError("give either --batch-size or --memory-budget, not both")
    for option, value in (("--layers", layers), ("--hidden", hidden), ("--heads", heads)):
        check_int(option, value, low=1)
    check_int("--ffn", ffn, low=1)
    if hidden % heads:
        raise LowrankError(f"--hidden {hidden} is not a multiple of --heads {heads}")
    check_int("--warmup", warmup, low=0, high=MAX_REPEATS)
    check_int("--repeats", repeats, low=1, high=MAX_REPEATS)
    if plot and out is None:
        raise LowrankError("plot draws into the run folder: give out= as well")
    where = resolve_device(device)
    if dtype != "float32" and where.type == "cpu":
        raise LowrankError(f"--dtype {dtype} needs --device cuda; use float32 on the CPU")
    spec = EfficiencySpec(
        ns=ns,
        ks=ks,
        shape=StackShape(layers, hidden, heads, ffn),
        dtype=dtype,
        batch=batch_size,
        budget_gib=None if memory_budget is None else float(memory_budget),
        warmup=warmup,
        repeats=repeats,
    )
    machine = "the GPU" if where.type == "cuda" else "this machine"
    check_fits(
        list(ns), list(ks), spec.shape, dtype, batch_size or 1, available_bytes(where), machine
    )
    if out is not None:
        check_out_dir(Path(out), spec.identity(where), overwrite)
    provenance = Provenance.of(efficiency, options, command)
    res = run_efficiency(spec, where, provenance, progress)
    if out is not None:
        res.save(out, overwrite=overwrite)
        if plot:
            res.figures = res.write_figures()
    return res
