"""Benchmark of ``lowrank keys``: the issue's two time limits, end to end in fresh processes.

Run on demand (not in CI):

    python benchmarks/bench_keys.py                       # both cases
    python benchmarks/bench_keys.py --only minilm         # one case
    python benchmarks/bench_keys.py --json out.json       # also write the results

Cases (issue 26, "Speed and memory"; limits on 2 cores):

* minilm  -- ``lowrank keys`` on the real MiniLM (6 layers x 12 heads, d = 32), 16 sequences
  of n = 512, every default (P's rank included, 200 bootstrap replicates, top-k at r = 4, 8,
  16, 32 and k = n/8, n/4, n/2 with 64 queries per sequence): under 2 minutes.
* smollm2 -- the same on SmolLM2-135M (30 layers, 9 query heads, 3 KV heads, d = 64), 4
  sequences of n = 512: under 5 minutes.

Both read ``--data`` (default: the embedded wiki sample, so the benchmark runs offline;
calibration is then the embedded IMDB sample). Reported: wall and CPU time of the child,
its peak resident memory, the time of each pass (run.json ``timings``), the load average
before and after (other processes on a shared machine slow a run down) and the threads.
The model is loaded in the timed process (SmolLM2's de-quantised cache: ~4 s once built).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    "minilm": (["--model", "minilm", "--num-sequences", "16"], 120.0),
    "smollm2": (["--model", "smollm2", "--num-sequences", "4"], 300.0),
}


def run_case(name: str, data: str | None, keep: Path | None) -> dict:
    """One case in a fresh ``python -m lowrank keys`` process, timed from the outside."""
    args, limit = CASES[name]
    with tempfile.TemporaryDirectory() as tmp:
        out = (keep / name) if keep else Path(tmp) / name
        extra = ["--data", data] if data else []
        command = ["keys", *args, "--seq-len", "512", *extra, "--out", str(out), "--overwrite"]
        load_before = os.getloadavg()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "lowrank", *command], capture_output=True, text=True, check=True
        )
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        meta = json.loads((out / "run.json").read_text())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "case": name,
        "command": "lowrank " + " ".join(command[:-3]),
        "limit_seconds": limit,
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "peak_rss_mib": round(after.ru_maxrss / 1024),  # the largest child so far (Linux: KiB)
        "timings": meta["timings"],
        "sequences": meta["num_sequences"],
        "calibration": meta["calibration"]["dataset"],
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "within_limit": wall <= limit,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=list(CASES), action="append")
    parser.add_argument("--data", help="corpus path (default: the embedded wiki sample)")
    parser.add_argument("--keep", type=Path, help="keep the run folders here")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    args = parser.parse_args()
    import torch

    machine = {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    results = [run_case(name, args.data, args.keep) for name in args.only or list(CASES)]
    print("| case | sequences | wall s | limit s | CPU s | peak RSS MiB | passes s | load |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        t = r["timings"]
        passes = " / ".join(
            str(round(t[k])) for k in ("calibration_seconds", "evaluation_seconds", "topk_seconds")
        )
        print(
            f"| {r['case']} | {r['sequences']} x 512 | {r['wall_seconds']} | "
            f"{r['limit_seconds']:.0f} | {r['cpu_seconds']} | {r['peak_rss_mib']} | {passes} | "
            f"{r['load_before'][0]} -> {r['load_after'][0]} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
