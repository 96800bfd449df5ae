"""Throughput of ``lowrank spectrum`` on 1 process and under torchrun, and the merge's cost.

Run on demand, not in the tests::

    python benchmarks/bench_distributed.py [--num-sequences 16] [--procs 1,2] [--repeats 2]

Each configuration runs as a real subprocess (``python -m lowrank`` for 1 process,
``torchrun --standalone --nproc-per-node P -m lowrank`` otherwise) on the same sequences of
the embedded MiniLM, n = 512, CPU. Throughput is sequences / ``analysis_seconds`` from
run.json (the analysis loop: without interpreter start and model loading, which every
process pays once), best of ``--repeats`` runs taken in alternating order; the wall time
with start-up is shown beside it. From run.json: each rank's compute time (its batches,
without waiting for the others) and ``merge_seconds`` (gathering every rank's statistics on
rank 0 and Chan-merging them). The merge of two MiniLM accumulators is also timed alone,
with the bytes one rank sends. Every run is checked against the 1-process run to 1e-12.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def run(procs: int, out: Path, args: argparse.Namespace) -> dict:
    """One ``lowrank spectrum`` run on ``procs`` processes: its run.json and wall time."""
    entry = [sys.executable, "-m", "lowrank"]
    if procs > 1:
        torchrun = Path(sys.executable).with_name("torchrun")
        entry = [str(torchrun), "--standalone", "--nproc-per-node", str(procs), "-m", "lowrank"]
    cmd = [
        *entry,
        "spectrum",
        "--model",
        args.model,
        "--seq-len",
        str(args.seq_len),
        "--num-sequences",
        str(args.num_sequences),
        "--batch-size",
        str(args.batch_size),
        "--out",
        str(out),
        "--overwrite",
    ]
    env = os.environ | {"PYTHONPATH": str(REPO)}
    began = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    meta = json.loads((out / "run.json").read_text())
    return meta | {"wall_seconds": wall}


def max_difference(a: Path, b: Path) -> float:
    from lowrank.families.spectrum.result import SpectrumResult

    ra, rb = SpectrumResult.read(a), SpectrumResult.read(b)
    worst = 0.0
    for name in ("cumulative", "singular_values", "summaries"):
        ma, mb = getattr(ra.stats, name), getattr(rb.stats, name)
        worst = max(worst, np.abs(ma.mean - mb.mean).max(), np.abs(ma.m2 - mb.m2).max())
    return float(worst)


def merge_alone(path: Path, repeats: int = 20) -> tuple[float, int]:
    """Seconds to Chan-merge two accumulators of this run's shape, and one rank's bytes."""
    from lowrank.families.spectrum.result import SpectrumResult
    from lowrank.runs.distributed import merge_in_order

    stats = SpectrumResult.read(path).stats
    payload = len(pickle.dumps(stats, protocol=pickle.HIGHEST_PROTOCOL))
    began = time.perf_counter()
    for _ in range(repeats):
        merge_in_order([stats, stats])
    return (time.perf_counter() - began) / repeats, payload


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--num-sequences", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--procs", default="1,2", help="comma-separated process counts")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    procs = [int(p) for p in args.procs.split(",")]
    if procs[0] != 1:
        sys.exit("--procs must start with 1: the other counts are compared with it")

    best: dict[int, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeats):
            for p in procs if rep % 2 == 0 else procs[::-1]:
                out = Path(tmp) / f"p{p}"
                meta = run(p, out, args)
                if p != 1:  # the 1-process run of the first repeat is there already
                    meta["max_abs_difference"] = max_difference(Path(tmp) / "p1", out)
                if p not in best or meta["analysis_seconds"] < best[p]["analysis_seconds"]:
                    best[p] = meta
        merge_seconds, payload = merge_alone(Path(tmp) / "p1")

    base = best[1]["num_sequences"] / best[1]["analysis_seconds"]
    print(
        f"{args.model}, n = {args.seq_len}, {args.num_sequences} sequences in batches of "
        f"{args.batch_size}, CPU ({os.cpu_count()} cores), best of {args.repeats}:\n"
    )
    print("| processes | seq/s | vs 1 process | wall s (with start-up) | per-rank compute s |")
    print("|---|---|---|---|---|")
    rows = []
    for p in procs:
        meta = best[p]
        rate = meta["num_sequences"] / meta["analysis_seconds"]
        compute = ", ".join(f"{r['compute_seconds']:.1f}" for r in meta["ranks"])
        print(f"| {p} | {rate:.2f} | {rate / base:.2f}x | {meta['wall_seconds']:.1f} | {compute} |")
        rows.append(
            {
                "processes": p,
                "seq_per_s": rate,
                "speedup": rate / base,
                "analysis_seconds": meta["analysis_seconds"],
                "wall_seconds": meta["wall_seconds"],
                "ranks": meta["ranks"],
                "merge_seconds": meta.get("merge_seconds"),
                "max_abs_difference": meta.get("max_abs_difference", 0.0),
            }
        )
    print()
    for row in rows[1:]:
        print(
            f"{row['processes']} processes: gather + merge on rank 0 "
            f"{1e3 * row['merge_seconds']:.1f} ms; max |difference| from 1 process "
            f"{row['max_abs_difference']:.1e}"
        )
    print(f"Chan merge of two accumulators alone: {1e3 * merge_seconds:.2f} ms; ", end="")
    print(f"one rank sends {payload / 1e6:.2f} MB")
    if args.json:
        args.json.write_text(
            json.dumps({"rows": rows, "merge_alone_seconds": merge_seconds, "bytes": payload})
        )
    slow = [row["processes"] for row in rows[1:] if row["speedup"] < 0.9]
    if slow:
        sys.exit(f"slower than 0.9x one process with {slow} processes")


if __name__ == "__main__":
    main()
