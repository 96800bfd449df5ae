"""How the CPU peak of ``lowrank efficiency`` compares with two other measures of the same pass.

For each n and each stack of the command's default shape (exact softmax, SDPA, Linformer per
k), at batch 1 and float32:

- ``counted``: what the command reports, the exact count of tensor bytes alive at once
  (:func:`lowrank.families.efficiency.tracker.peak_memory`);
- ``allocator``: the CPU allocator's own running total of live bytes, max over the pass (the
  profiler's allocation events): it also sees scratch a kernel allocates inside itself;
- ``resident``: a fresh process per stack, the growth of its resident memory over one first
  pass, sampled every 0.2 ms: what the operating system saw, one-time set-up and the
  allocator's own behaviour included (a short peak can fall between two samples).

Usage: ``python benchmarks/bench_efficiency.py [--n 512,1024,2048] [--out file.json]``
(about a minute for the default n on 2 CPU cores). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from lowrank.families.efficiency.timing import StackShape, _inputs, _stacks
from lowrank.families.efficiency.tracker import peak_memory

KS = (64, 128, 256)
MIB = 2**20

# one stack's first pass in a fresh process: peak resident growth over the pass, sampled
# every 0.2 ms by a thread, bytes
_RESIDENT = """
import sys, threading, time, psutil, torch
from lowrank.families.efficiency.timing import StackShape, _inputs, _stacks
n, index = int(sys.argv[1]), int(sys.argv[2])
model = _stacks(n, [64, 128, 256], StackShape())[index][2].eval()
x = _inputs(1, n, 256, torch.device("cpu"), torch.float32)
proc, done = psutil.Process(), threading.Event()
before = peak = proc.memory_info().rss
def sample():
    global peak
    while not done.is_set():
        peak = max(peak, proc.memory_info().rss)
        time.sleep(0.0002)
watcher = threading.Thread(target=sample)
watcher.start()
with torch.no_grad():
    model(x)
done.set()
watcher.join()
print(peak - before)
"""


def allocator_peak(model: Any, x: torch.Tensor) -> int:
    """Max of the CPU allocator's running total over one pass after a warm-up one."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        model(x)
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            model(x)
    peak, stack = 0, list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        total = getattr(event.extra_fields, "total_allocated", None)
        if isinstance(total, int):
            peak = max(peak, total)
    return peak


def resident_growth(n: int, index: int) -> int:
    """Peak resident growth of stack ``index`` over its first pass, in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", _RESIDENT, str(n), str(index)],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="512,1024,2048")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rows = []
    start = time.perf_counter()
    for n in (int(v) for v in args.n.split(",")):
        for index, (method, k, model) in enumerate(_stacks(n, list(KS), StackShape())):
            model.eval()
            x = _inputs(1, n, 256, torch.device("cpu"), torch.float32)
            counted, allocator = peak_memory(model, x), allocator_peak(model, x)
            resident = resident_growth(n, index)
            rows.append(
                {
                    "n": n,
                    "stack": method if k is None else f"linformer k={k}",
                    "counted_mib": round(counted / MIB, 3),
                    "allocator_mib": round(allocator / MIB, 3),
                    "resident_fresh_mib": round(resident / MIB, 3),
                }
            )
    result = {
        "what": "peak memory of one forward pass, batch 1, float32, default stack",
        "torch_threads": torch.get_num_threads(),
        "load_average": os.getloadavg(),
        "seconds": round(time.perf_counter() - start, 1),
        "rows": rows,
    }
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
