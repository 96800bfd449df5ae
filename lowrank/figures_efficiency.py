"""Figure of a ``lowrank efficiency`` run: speed-up against n, one line per k."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from lowrank.figures import SINGLE_COLUMN, axes_or_new, paper_style, readable_log_ticks, save
from lowrank.runs import read_json, read_meta

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def plot_speedup(data: dict[str, Any], ax: Axes | None = None, metric: str = "speedup") -> Axes:
    """Linformer's speed-up (or memory saving) over exact attention against n, a line per k;
    solid against explicit softmax attention, dashed against PyTorch's SDPA; the n from which
    Linformer wins is marked."""
    import seaborn as sns

    ax = axes_or_new(ax)
    ks = sorted({row["k"] for row in data["tables"]["exact"]})
    colours = dict(zip(ks, sns.color_palette("colorblind", len(ks)), strict=True))
    for base, style in (("exact", "-"), ("sdpa", "--")):
        for k in ks:
            rows = sorted((r["n"], r[metric]) for r in data["tables"][base] if r["k"] == k)
            if not rows:
                continue
            ns, ys = zip(*rows, strict=True)
            ax.plot(
                ns,
                ys,
                ls=style,
                marker="o",
                ms=3,
                lw=1,
                color=colours[k],
                label=f"k = {k}" if base == "exact" else None,
            )
            win = data["crossover_n"][base].get(str(k), data["crossover_n"][base].get(k))
            if metric == "speedup" and win:
                ax.plot([win], [dict(rows)[win]], marker="*", ms=8, color=colours[k], ls="none")
    ax.axhline(1, color="0.5", lw=0.8)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="sequence length n",
        ylabel="speed-up" if metric == "speedup" else "memory saving",
    )
    ns_all = sorted({r["n"] for r in data["tables"]["exact"]})
    ax.set_xticks(ns_all, [str(n) for n in ns_all])
    readable_log_ticks(ax, "x")
    title = "solid: vs softmax\ndashed: vs SDPA"
    if metric == "speedup":
        title += "\nstar: faster from here on"
    ax.legend(frameon=False, fontsize="small", title=title, title_fontsize="x-small")
    return ax


def plot_efficiency_folder(folder: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    meta = read_meta(folder, "lowrank-efficiency")
    data = read_json(folder / "efficiency.json")
    hw = meta["hardware"]
    where = hw.get("gpu") or f"{hw['processor']}, {hw['torch_threads']} threads"
    with paper_style():
        fig, axes = plt.subplots(1, 2, figsize=(2 * SINGLE_COLUMN, 2.6), layout="constrained")
        plot_speedup(data, axes[0], "speedup")
        plot_speedup(data, axes[1], "memory_saving")
        axes[0].set_title("time per token", fontsize="medium")
        axes[1].set_title("peak memory", fontsize="medium")
        stack = meta["stack"]
        fig.suptitle(
            f"Linformer (layerwise) vs exact attention, {stack['layers']} layers, "
            f"width {stack['hidden']}, on {where}",
            fontsize="medium",
        )
        return save(fig, folder / "figures" / "speedup_vs_n")
