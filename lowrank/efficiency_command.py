"""``lowrank efficiency``: the paper-style Table 3 on this machine, saved with a figure."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import torch

from lowrank.efficiency import (
    StackShape,
    crossover,
    hardware,
    records_json,
    run_grid,
    speedup_table,
)
from lowrank.errors import LowrankError
from lowrank.runs import check_out_dir, write_csv, write_run

EFFICIENCY_FORMAT = "lowrank-efficiency"
# The two cells of the paper's Table 3 quoted in our issue (V100 16 GB, layerwise sharing,
# largest batch that fits): n -> (k, speed-up, memory saving).
PAPER_TABLE3 = {4096: (128, 3.4, 14.0), 65536: (128, 20.0, 60.0)}


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
    tables = {base: speedup_table(records, base) for base in ("exact", "sdpa")}
    rows = records_json(records)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "efficiency.csv", rows)
    summary = {
        base: [{"n": n, "k": k, **cell} for (n, k), cell in sorted(t.items())]
        for base, t in tables.items()
    }
    crossovers = {base: {k: crossover(t, k) for k in ks} for base, t in tables.items()}
    (out / "efficiency.json").write_text(
        json.dumps({"records": rows, "tables": summary, "crossover_n": crossovers}, indent=2)
        + "\n",
        encoding="utf-8",
    )
    meta: dict[str, Any] = {
        "format": EFFICIENCY_FORMAT,
        "format_version": 1,
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
        "warmup": warmup,
        "repeats": repeats,
        "sharing": "layerwise",
        "memory": "CUDA allocator peak"
        if device.type == "cuda"
        else "process resident memory, sampled every millisecond, above the start",
        "versions": versions,
    }
    import numpy as np

    arrays = {"n": np.array(ns), "k": np.array(ks)}
    for base, table in tables.items():
        for key in ("speedup", "memory_saving"):
            grid = np.full((len(ns), len(ks)), np.nan)
            for (n, k), cell in table.items():
                grid[ns.index(n), ks.index(k)] = cell[key]
            arrays[f"{key}_vs_{base}"] = grid
    write_run(out, meta, arrays, npz="efficiency.npz")
    _print(tables, ns, ks, crossovers, device)
    click.echo(f"run folder: {out}  (efficiency.csv, efficiency.json, run.json)")
    if plot:
        from lowrank.figures_efficiency import plot_efficiency_folder

        for path in plot_efficiency_folder(out):
            click.echo(f"figure: {path}")
    return out


def _print(
    tables: dict[str, dict[tuple[int, int], dict[str, float]]],
    ns: list[int],
    ks: list[int],
    crossovers: dict[str, dict[int, int | None]],
    device: torch.device,
) -> None:
    for base, label in (
        ("exact", "standard attention (explicit softmax)"),
        ("sdpa", "PyTorch scaled_dot_product_attention"),
    ):
        table = tables[base]
        click.echo(f"\nLinformer vs {label}: speed-up / memory saving (paper Table 3 layout)")
        click.echo(f"{'n':>8} " + "".join(f"{'k=' + str(k):>18}" for k in ks))
        for n in ns:
            cells = []
            for k in ks:
                cell = table.get((n, k))
                cells.append(
                    f"{cell['speedup']:.2f}x / {cell['memory_saving']:.1f}x" if cell else "-"
                )
            click.echo(f"{n:>8} " + "".join(f"{c:>18}" for c in cells))
        wins = ", ".join(
            f"k={k}: n >= {v}" if v else f"k={k}: never" for k, v in crossovers[base].items()
        )
        click.echo(f"Linformer is faster from: {wins}")
    if device.type == "cuda":
        click.echo(
            "\npaper (V100, largest batch): "
            + "; ".join(
                f"n={n}, k={k}: {s}x faster, {m}x less memory"
                for n, (k, s, m) in PAPER_TABLE3.items()
            )
        )
    else:
        click.echo("\n(the paper measured a V100 GPU: run with --device cuda to compare)", err=True)
    sys.stdout.flush()
