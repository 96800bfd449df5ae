"""Benchmark of ``lowrank compare``: the default run's time, and memory against depth.

Run on demand (not in CI):

    python benchmarks/bench_compare.py                   # both sections
    python benchmarks/bench_compare.py --only default    # the default run only
    python benchmarks/bench_compare.py --workers 1 --workers 2   # each worker count
    python benchmarks/bench_compare.py --only default --keep runs/compare  # keep the run

Sections:

* default -- the issue's default run, end to end in a fresh process: ``lowrank compare`` on
  the real MiniLM (6 layers x 12 heads), n = 512, 16 sequences of sample-wiki, budgets
  16,32,64,128, every family. Reports wall time, CPU time and the machine's load average
  before and after (the time limit is 5 minutes on 2 cores; other processes on a shared
  machine slow it down, so the load is recorded beside the time).
* memory  -- peak resident memory above the loaded model for randomly initialised
  BERT-shaped models (width 128, 4 heads, n = 512, 2 sequences, budgets 16,32) of 2, 8 and
  24 layers, each in a fresh process: the sink reduces each layer to moments, so the peak must
  not grow with depth.
* findings -- the time of compare's verdicts (lowrank.families.compare.workflow.findings and
  equal_cost: AUC, cuts and Spearman's rho with 2,000-draw bootstraps over sequences and
  layers, per-layer intervals at the focus budget) on synthetic per-sequence errors of the
  default run's shape (16 sequences, 11 rows, 4 budgets, 6 layers x 12 heads) and of a
  24 x 16-head model; no model is run.

Results are printed as Markdown and written to benchmarks/results_compare.json.
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
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

HERE = Path(__file__).parent
DEFAULT = [
    "compare",
    "--model",
    "minilm",
    "--seq-len",
    "512",
    "--num-sequences",
    "16",
    "--budget",
    "16,32,64,128",
]


def default_run(workers: int | None, keep: Path | None = None) -> dict:
    """The default command in a fresh process, timed from the outside (figures not drawn);
    the run folder is kept in ``keep`` when given."""
    with tempfile.TemporaryDirectory() as tmp:
        out = keep or Path(tmp) / "compare"
        extra = [] if workers is None else ["--workers", str(workers)]
        extra += ["--overwrite"] if keep else []
        load_before = os.getloadavg()
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "lowrank", *DEFAULT, *extra, "--out", str(out)],
            capture_output=True,
            text=True,
            check=True,
        )
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        meta = json.loads((out / "run.json").read_text())
    return {
        "command": "lowrank " + " ".join(DEFAULT),
        "workers": workers,
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(
            (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1
        ),
        "run_elapsed_seconds": meta["elapsed_seconds"],
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "finding": meta["finding"],
        "stdout_tail": done.stdout.strip().splitlines()[-3:],
    }


def _memory_child(layers: int) -> None:
    """Run the compare sink on a random BERT-shaped model; print peak RSS above baseline."""
    from transformers import BertConfig, BertModel

    from lowrank.families.compare.collect import measure
    from lowrank.families.compare.spec import CompareSpec
    from lowrank.inputs.corpora import Sequences
    from lowrank.inputs.models import LoadedModel, ModelSource

    class _Tokenizer:
        all_special_ids = (101, 102)

    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=256,
        vocab_size=1000,
        max_position_embeddings=512,
        attn_implementation="eager",
    )
    model = BertModel(config).eval()
    ids = np.random.default_rng(0).integers(5, 1000, size=(2, 512))
    source = ModelSource("random", "local", "-", None)
    loaded = LoadedModel(model, _Tokenizer(), source, layers, 4, 512)  # type: ignore[arg-type]
    proc = psutil.Process()
    base = proc.memory_info().rss
    peak = [base]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    spec = CompareSpec(budgets=(16, 32))
    measure(loaded, Sequences(ids, np.full(2, 512)), spec, 2, torch.device("cpu"))
    stop.set()
    thread.join()
    print(
        json.dumps(
            {
                "layers": layers,
                "peak_above_model_bytes": peak[0] - base,
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    )


def memory() -> list[dict]:
    rows = []
    for layers in (2, 8, 24):
        out = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(layers)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def findings_time() -> list[dict]:
    """Seconds of compare's verdicts on synthetic arrays of two shapes (see the docstring)."""
    from lowrank.families.compare.spec import CompareSpec
    from lowrank.families.compare.verdicts import equal_cost
    from lowrank.families.compare.workflow import findings

    rows = []
    spec = CompareSpec()
    f, k = len(spec.rows), len(spec.budgets)
    for layers, heads in ((6, 12), (24, 16)):
        rng = np.random.default_rng(0)
        per = rng.uniform(0.05, 1.0, (16, f, k, layers, heads, 2))
        arrays = {
            "per_sequence_error": per,
            "entropy_per_sequence": rng.uniform(0, 1, (16, layers, heads)),
            "probs_error_mean": per[..., 0].mean(0),
            "output_error_mean": per[..., 1].mean(0),
        }
        start = time.perf_counter()
        findings(arrays, spec)
        equal_cost(arrays, list(spec.rows), 512, list(spec.budgets))
        rows.append(
            {"layers": layers, "heads": heads, "seconds": round(time.perf_counter() - start, 1)}
        )
    return rows


def _markdown(results: dict) -> str:
    lines = []
    for row in results.get("default", []):
        lines += [
            f"`{row['command']}` (workers: {row['workers'] or 'default'}): "
            f"{row['wall_seconds']:.0f} s wall, {row['cpu_seconds']:.0f} s CPU, load average "
            f"{row['load_average_before'][0]:.1f} before / {row['load_average_after'][0]:.1f} "
            "after",
            "",
        ]
    if "memory" in results:
        lines += ["| layers | peak above the model MB | seconds |", "|---|---|---|"]
        lines += [
            f"| {r['layers']} | {r['peak_above_model_bytes'] / 2**20:.0f} | {r['seconds']} |"
            for r in results["memory"]
        ]
    if "findings" in results:
        lines += ["", "| layers x heads | verdicts (s) |", "|---|---|"]
        lines += [f"| {r['layers']} x {r['heads']} | {r['seconds']} |" for r in results["findings"]]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["default", "memory", "findings"], action="append")
    parser.add_argument("--workers", type=int, action="append", help="worker threads (repeat)")
    parser.add_argument("--out", type=Path, default=HERE / "results_compare.json")
    parser.add_argument("--memory-child", type=int, metavar="LAYERS")
    parser.add_argument("--keep", type=Path, help="keep the (last) default run in this folder")
    args = parser.parse_args()
    if args.memory_child:
        _memory_child(args.memory_child)
        return
    sections = args.only or ["default", "memory", "findings"]
    # sections not run now keep their earlier results
    results: dict = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results |= {
        "machine": {
            "cpus": psutil.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
    if "default" in sections:
        results["default"] = [default_run(w, args.keep) for w in (args.workers or [None])]
    if "memory" in sections:
        results["memory"] = memory()
    if "findings" in sections:
        results["findings"] = findings_time()
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(_markdown(results))


if __name__ == "__main__":
    main()
