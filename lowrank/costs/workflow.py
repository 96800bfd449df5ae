"""``lowrank efficiency``: the paper-style Table 3 on this machine, saved with a figure."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from lowrank.costs.timing import (
    BATCH_LIMIT,
    Measurement,
    StackShape,
    crossover,
    hardware,
    records_json,
    run_grid,
    speedup_table,
)
from lowrank.errors import LowrankError
from lowrank.runs.folders import check_out_dir, write_csv, write_run

EFFICIENCY_FORMAT = "lowrank-efficiency"
# Version 2: interleaved rounds with min/median/max, equal-batch peaks, and under a budget
# memory_saving_* is the ratio of the largest batches that fit (version 1: ratio of peaks).
EFFICIENCY_FORMAT_VERSION = 2
# Two cells of the paper's Table 3 (V100 16 GB, layerwise sharing, largest batch that fits):
# n -> (k, speed-up, memory saving). A reference, never a row of our tables.
PAPER_TABLE3 = {4096: (128, 3.4, 14.0), 65536: (128, 20.0, 60.0)}
BASELINES = {
    "exact": "standard attention (explicit softmax)",
    "sdpa": "PyTorch scaled_dot_product_attention",
}
Table = dict[tuple[int, int], dict[str, float]]


def memory_measure(budget_gib: float | None, batch: int | None) -> str:
    """What ``memory_saving`` means in a run, in words."""
    if budget_gib is not None:
        return (
            f"largest power-of-two batch whose peak fits {budget_gib:g} GiB, Linformer's over "
            "the baseline's"
        )
    return f"baseline's over Linformer's peak memory per sequence, both at batch {batch or 1}"


def run_efficiency(
    ns: list[int],
    ks: list[int],
    shape: StackShape,
    device: torch.device,
    dtype: str,
    batch: int | None,
    budget_gib: float | None,
    warmup: int,
    repeats: int,
    out: Path,
    overwrite: bool,
    plot: bool,
    command: str,
    versions: dict[str, str],
    created: str,
) -> Path:
    if any(n < 2 for n in ns):
        raise LowrankError("--n values must be at least 2")
    if any(k < 1 for k in ks):
        raise LowrankError("--k values must be positive")
    if min(ks) >= max(ns):
        raise LowrankError(
            f"every --k ({', '.join(map(str, ks))}) is at least every --n: Linformer projects n "
            "keys to k < n, so choose k below some n"
        )
    if budget_gib is not None and not (math.isfinite(budget_gib) and budget_gib > 0):
        raise LowrankError(
            f"--memory-budget must be a finite number of GiB above 0, not {budget_gib}"
        )
    if shape.hidden % shape.heads:
        raise LowrankError(f"--hidden {shape.hidden} is not a multiple of --heads {shape.heads}")
    if dtype != "float32" and device.type == "cpu":
        raise LowrankError(f"--dtype {dtype} needs --device cuda; use float32 on the CPU")
    identity = {
        "n": ns,
        "k": ks,
        "shape": shape.__dict__,
        "device": str(device),
        "dtype": dtype,
        "batch": batch,
        "budget_gib": budget_gib,
    }
    check_out_dir(out, identity, overwrite)
    budget = None if budget_gib is None else int(budget_gib * 2**30)
    records = run_grid(
        ns,
        ks,
        shape,
        device,
        getattr(torch, dtype),
        batch,
        budget,
        warmup,
        repeats,
        progress=lambda s: click.echo(s, err=True),
    )
    if not records:
        raise LowrankError(
            "no stack could be measured: each ran out of memory or, at batch 1, over "
            "--memory-budget"
        )
    measure = memory_measure(budget_gib, batch)
    tables = {base: speedup_table(records, base, budget is not None) for base in BASELINES}
    crossovers = {
        f"crossover_n{suffix}": {
            base: {k: crossover(t, k, key) for k in ks} for base, t in tables.items()
        }
        for suffix, key in (("", "speedup"), ("_every_round", "speedup_min"))
    }
    rows = records_json(records)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "efficiency.csv", [_csv_row(r) for r in rows])
    summary = {
        base: [{"n": n, "k": k, **cell} for (n, k), cell in sorted(t.items())]
        for base, t in tables.items()
    }
    (out / "efficiency.json").write_text(
        json.dumps(
            {"records": rows, "tables": summary, "memory_saving_measure": measure, **crossovers},
            indent=2,
        )
        + "\n",
        encoding="utf-8",
    )
    meta: dict[str, Any] = {
        "format": EFFICIENCY_FORMAT,
        "format_version": EFFICIENCY_FORMAT_VERSION,
        "command": command,
        "created": created,
        "identity": identity,
        "hardware": hardware(device),
        "stack": shape.__dict__,
        "n": ns,
        "k": ks,
        "dtype": dtype,
        "batch": batch,
        "memory_budget_gib": budget_gib,
        "batch_limit": BATCH_LIMIT,
        "warmup": warmup,
        "repeats": repeats,
        "sharing": "layerwise",
        "timing": "one forward pass per stack per round, order reversed every round; "
        "median, min and max over the rounds",
        "memory": "CUDA allocator peak"
        if device.type == "cuda"
        else "process resident memory, sampled every millisecond, above the start",
        "memory_saving_measure": measure,
        "versions": versions,
    }
    write_run(out, meta, npz_arrays(records, tables, ns, ks), npz="efficiency.npz")
    _print(records, tables, ns, ks, crossovers, meta)
    click.echo(f"run folder: {out}  (efficiency.csv, efficiency.json, efficiency.npz, run.json)")
    if plot:
        from lowrank.plots.costs import plot_efficiency_folder

        for path in plot_efficiency_folder(out):
            click.echo(f"figure: {path}")
    return out


def _csv_row(row: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in row.items() if key != "round_seconds_per_token"}


def npz_arrays(
    records: list[Measurement], tables: dict[str, Table], ns: list[int], ks: list[int]
) -> dict[str, np.ndarray]:
    """The arrays of efficiency.npz: per baseline, ``speedup_vs_*`` (median) with
    ``speedup_min_vs_*`` and ``speedup_max_vs_*``, ``memory_saving_vs_*`` (the run's measure)
    and ``memory_saving_equal_batch_vs_*``, each [n, k]; per stack, the batch timed
    (``batch_*``, 0 when left out) and the peak memory per sequence at ``equal_batch`` [n]
    (``peak_bytes_per_sequence_*``); Linformer's are [n, k]. Missing cells are NaN."""
    arrays: dict[str, np.ndarray] = {"n": np.array(ns), "k": np.array(ks)}
    for base, table in tables.items():
        for key in (
            "speedup",
            "speedup_min",
            "speedup_max",
            "memory_saving",
            "memory_saving_equal_batch",
        ):
            grid = np.full((len(ns), len(ks)), np.nan)
            for (n, k), cell in table.items():
                grid[ns.index(n), ks.index(k)] = cell[key]
            arrays[f"{key}_vs_{base}"] = grid
    arrays["equal_batch"] = np.zeros(len(ns), dtype=np.int64)
    for method in ("exact", "sdpa", "linformer"):
        shape = (len(ns), len(ks)) if method == "linformer" else (len(ns),)
        batches, per_seq = np.zeros(shape, dtype=np.int64), np.full(shape, np.nan)
        for r in records:
            if r.method != method:
                continue
            at = (ns.index(r.n), ks.index(r.k)) if r.k is not None else ns.index(r.n)
            batches[at], per_seq[at] = r.batch, r.peak_bytes_per_sequence
            arrays["equal_batch"][ns.index(r.n)] = r.equal_batch or r.batch
        arrays[f"batch_{method}"], arrays[f"peak_bytes_per_sequence_{method}"] = batches, per_seq
    return arrays


def _cell(table: Table, n: int, k: int, fmt: str) -> str:
    cell = table.get((n, k))
    return fmt.format(**cell) if cell else "-"


def _grid(
    title: str, ns: list[int], ks: list[int], table: Table, fmt: str, width: int = 20
) -> None:
    """One printed table: a title line naming the measure, rows n, columns k, cells ``fmt``
    filled from the table's cells."""
    click.echo(title)
    click.echo(f"{'n':>8}" + "".join(f"{'k=' + str(k):>{width}}" for k in ks))
    for n in ns:
        click.echo(f"{n:>8}" + "".join(f"{_cell(table, n, k, fmt):>{width}}" for k in ks))


def _print(
    records: list[Measurement],
    tables: dict[str, Table],
    ns: list[int],
    ks: list[int],
    crossovers: dict[str, dict[str, dict[int, int | None]]],
    meta: dict[str, Any],
) -> None:
    hw = meta["hardware"]
    where = hw.get("gpu") or f"{hw['processor']} CPU, {hw['torch_threads']} threads"
    budget = meta["memory_budget_gib"]
    rounds = meta["repeats"]
    click.echo(
        f"measured on {where}, {meta['dtype']}, {meta['stack']['layers']}-layer stack of width "
        f"{meta['stack']['hidden']}; "
        + (
            f"each stack at its largest batch within {budget:g} GiB"
            if budget
            else f"batch {meta['batch'] or 1}"
        )
    )
    for base, label in BASELINES.items():
        table = tables[base]
        click.echo(f"\nLinformer vs {label}")
        _grid(
            f"speed-up in time per token ({base} / Linformer), median [min, max] over {rounds} "
            "interleaved rounds",
            ns,
            ks,
            table,
            "{speedup:.2f}x [{speedup_min:.2f}, {speedup_max:.2f}]",
        )
        for suffix, what in (
            ("", f"Linformer's median time per token is below {base}'s"),
            ("_every_round", f"Linformer is faster than {base} in every round"),
        ):
            wins = ", ".join(
                f"k={k}: n >= {v}" if v else f"k={k}: never"
                for k, v in crossovers[f"crossover_n{suffix}"][base].items()
            )
            click.echo(f"{what} from: {wins}")
        if budget:
            _grid(
                f"memory saving: largest batch that fits {budget:g} GiB, Linformer / {base} "
                "(powers of two)",
                ns,
                ks,
                table,
                "{memory_saving:g}x ({batch:g}/{baseline_batch:g})",
            )
            if any(r.batch >= BATCH_LIMIT for r in records):
                click.echo(
                    f"(a batch of {BATCH_LIMIT} is the search limit: a saving with it is a bound)"
                )
        _grid(
            f"memory saving: peak memory per sequence at equal batch, {base} / Linformer",
            ns,
            ks,
            table,
            "{memory_saving_equal_batch:.1f}x",
        )
    _print_per_sequence(records, ns, ks)
    if hw.get("gpu") and budget:
        click.echo(
            "\nreference only, not comparable (the paper's V100 16 GB and model, not this "
            "run): paper Table 3 "
            + "; ".join(
                f"n={n}, k={k}: {s}x faster, {m}x less memory"
                for n, (k, s, m) in PAPER_TABLE3.items()
            )
        )
    sys.stdout.flush()


def _print_per_sequence(records: list[Measurement], ns: list[int], ks: list[int]) -> None:
    """Peak memory per sequence of every stack at the equal batch, MiB."""
    by = {(r.method, r.n, r.k): r for r in records}
    columns = [("exact", None), ("sdpa", None), *(("linformer", k) for k in ks)]
    names = ["batch", "exact", "sdpa", *(f"k={k}" for k in ks)]
    click.echo("\npeak memory per sequence at equal batch (MiB)")
    click.echo(f"{'n':>8}" + "".join(f"{name:>10}" for name in names))
    for n in ns:
        equal = next((r.equal_batch for r in records if r.n == n), None)
        cells = [str(equal or "-")]
        for method, k in columns:
            r = by.get((method, n, k))
            cells.append(f"{r.peak_bytes_per_sequence / 2**20:.2f}" if r else "-")
        click.echo(f"{n:>8}" + "".join(f"{c:>10}" for c in cells))
