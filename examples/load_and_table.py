"""Run, save, load, and print the paper's table as Markdown.

``lowrank.spectrum`` on the embedded MiniLM and sample corpus (offline), saved as a normal
run folder, opened again with ``lowrank.load`` (which any run folder of any command opens)
and printed with ``summary().to_markdown()``: one row per (layer, head), then the mean over
heads per layer. ``lowrank summary RUN --format markdown`` prints the same first table.
Under a minute on a 2-core CPU.

    python examples/load_and_table.py [RUN_PARENT_FOLDER]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import lowrank


def main(folder: Path) -> None:
    res = lowrank.spectrum("minilm", seq_len=128, num_sequences=4, progress=False)
    run = res.save(folder / "minilm-sample-wiki", overwrite=True)
    print(f"saved: {run}")

    again = lowrank.load(run)  # a SpectrumResult, arrays named as in spectrum.npz
    print(f"loaded: {type(again).__name__}, cumulative_mean {again.cumulative_mean.shape}")
    table = again.summary()  # c at index n/4 = 32 for n = 128
    print(table.round(4).to_markdown(index=False))
    print()
    per_layer = table.groupby("layer")[["c", "c_std", "rank90", "rank99"]].mean()
    print(per_layer.round(4).to_markdown())


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()))
