"""``lowrank.efficiency``: Linformer against exact attention in time and memory, from Python."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lowrank.core.options import flag, named
from lowrank.errors import LowrankError
from lowrank.families.efficiency.options import OPTIONS
from lowrank.families.efficiency.result import EfficiencyResult
from lowrank.inputs.config import Device, DType
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
    label: str | None = None,
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
    call = dict(locals())
    values = OPTIONS.check(call)
    from lowrank.core.device import resolve_device
    from lowrank.families.efficiency.peak import available_bytes, check_fits
    from lowrank.families.efficiency.timing import StackShape
    from lowrank.families.efficiency.workflow import EfficiencySpec, run_efficiency
    from lowrank.inputs.options import require_out
    from lowrank.runs.writing import check_out_dir

    ns, ks = values["n"], values["k"]
    if min(ks) >= max(ns):
        raise LowrankError(
            f"every {flag('k')} ({', '.join(map(str, ks))}) is at least every {flag('n')}: "
            "Linformer projects n keys to k < n, so choose k below some n"
        )
    if memory_budget is not None and batch_size is not None:
        raise LowrankError(f"give either {flag('batch_size')} or {flag('memory_budget')}, not both")
    if hidden % heads:
        raise LowrankError(
            f"{named('hidden', hidden)} is not a multiple of {flag('heads')} {heads}"
        )
    folder = require_out(values)
    where = resolve_device(device)
    if dtype != "float32" and where.type == "cpu":
        raise LowrankError(
            f"{named('dtype', dtype)} needs {flag('device')} cuda; use float32 on the CPU"
        )
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
    if folder is not None:
        check_out_dir(folder, spec.identity(where), overwrite)
    provenance = Provenance.of(efficiency, call, command)
    res = run_efficiency(spec, where, provenance, progress)
    if label is not None:
        res.config["label"] = label
    if folder is not None:
        res.save(folder, overwrite=overwrite)
        if plot:
            res.draw()
    return res
