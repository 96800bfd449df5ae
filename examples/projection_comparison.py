"""Compare two projections of real attention at two k: a Gaussian JL sketch and mean pooling.

Runs ``lowrank.project`` on the embedded pretrained MiniLM (offline) with 3 sequences of
128 tokens, prints the Theorem 2 table (the Linformer head output against the exact PV) and
the model-level effect, and saves the error-vs-k figure. Under a minute on a 2-core CPU.

    python examples/projection_comparison.py [FIGURE_FOLDER]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import matplotlib

import lowrank


def main(folder: Path) -> None:
    matplotlib.use("Agg")  # files only, no window
    res = lowrank.project(
        "minilm",
        num_sequences=3,
        seq_len=128,
        k=[16, 32],
        method=["gaussian", "mean-pool"],
        draws=2,
        sharing=["headwise"],
        progress=False,
    )
    table = res.summary(kind="theorem2", metric="error")
    table = table[table["row"].isin(["gaussian", "mean-pool", "uniform"])]
    table = table.fillna({"verdict": "n/a"})  # a baseline is not tested against itself
    print(
        "Theorem 2: relative error of the head output "
        "(mean over sequences, layers, heads; 95% interval over sequences, inside [0, inf))"
    )
    columns = ["row", "k", "mean", "ci_low", "ci_high", "verdict"]
    print(table[columns].to_markdown(index=False, floatfmt=".6f"))
    effects = res.effects().fillna({"k": 0})  # k = 0: a baseline, the same at every k
    print("\nModel effect: cosine of the final hidden states with the exact model's")
    columns = ["method", "sharing", "k", "cosine", "verdict"]
    print(effects[columns].to_markdown(index=False, floatfmt=".6f"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nrun folder: {res.save(folder / 'run')}")
    ax = res.plot(kind="theorem2")
    figure = folder / "projection_comparison.png"
    ax.figure.savefig(figure, dpi=150, bbox_inches="tight")
    print(f"figure: {figure}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()))
