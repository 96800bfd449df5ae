"""Figure of a ``lowrank efficiency`` run: speed-up and memory saving against n, a line per k.

Reads format 2 folders (spread of the speed-up, both memory measures) and format 1 ones
(medians only, one memory measure).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lowrank.plots.style import (
    SINGLE_COLUMN,
    axes_or_new,
    below_legend,
    paper_style,
    per_run,
    readable_log_ticks,
    save,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from lowrank.families.efficiency.result import EfficiencyResult

Metric = Literal["speedup", "memory_saving", "memory_saving_equal_batch"]
_YLABEL = {
    "speedup": "speed-up (time per token)",
    "memory_saving": "memory saving",
    "memory_saving_equal_batch": "memory saving (per sequence)",
}


def plot_speedup(
    data: dict[str, Any],
    ax: Axes | None = None,
    metric: Metric = "speedup",
    legend: bool = True,
) -> Axes:
    """Linformer's speed-up or memory saving over exact attention against n, a line per k;
    solid against explicit softmax attention, dashed against PyTorch's SDPA. The speed-up is
    the median over the rounds, with a bar from the smallest to the largest round (when the
    run has them); the n from which the median speed-up stays above 1 is starred. The y axis
    is labelled in plain factors (0.5x, 1x, 2x); ``legend`` (below the axes) lists only
    the marks drawn."""
    ax = axes_or_new(ax, (SINGLE_COLUMN, 3.1))
    ks = sorted({row["k"] for row in data["tables"]["exact"]})
    colours, markers = _colours(ks), _markers(ks)
    lines = [(base, style, k) for base, style in (("exact", "-"), ("sdpa", "--")) for k in ks]
    for i, (base, style, k) in enumerate(lines):
        rows = _rows(data, base, k, metric)
        if not rows:
            continue
        ns = [r["n"] for r in rows]
        ys = [r[metric] for r in rows]
        colour = colours[k]
        # lines nudged apart along the log n axis, so equal values (and bars) stay visible
        xs = [n * 2 ** (0.05 * (i - (len(lines) - 1) / 2)) for n in ns]
        if _has_bars(rows, metric):
            # bars from the slowest to the fastest round
            bars = [
                [y - r["speedup_min"] for y, r in zip(ys, rows, strict=True)],
                [r["speedup_max"] - y for y, r in zip(ys, rows, strict=True)],
            ]
            ax.errorbar(
                xs,
                ys,
                yerr=bars,
                ls=style,
                marker=markers[k],
                ms=3,
                lw=1,
                elinewidth=0.8,
                capsize=1.5,
                color=colour,
            )
        else:
            ax.plot(xs, ys, ls=style, marker=markers[k], ms=3, lw=1, color=colour)
        win = _crossover(data, base, k, metric, ns)
        if win is not None:
            at = ns.index(win)
            ax.plot([xs[at]], [ys[at]], marker="*", ms=8, color=colour, ls="none")
    ax.axhline(1, color="0.5", lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="sequence length n", ylabel=_YLABEL[metric])
    ns_all = sorted({r["n"] for r in data["tables"]["exact"]})
    ax.set_xticks(ns_all, [str(n) for n in ns_all])
    ax.set_xlim(ns_all[0] / 2**0.35, ns_all[-1] * 2**0.35)
    ax.minorticks_off()
    readable_log_ticks(ax, "x", base=2)
    if legend:
        with_bars, with_stars = drawn_marks(data, metric)
        entries = legend_rows(ks, bars=with_bars, star=with_stars)
        handles = [h for row in entries for h in row]
        below_legend(ax, handles)
    return ax


def _rows(data: dict[str, Any], base: str, k: int, metric: str) -> list[dict[str, Any]]:
    """The cells of one line (baseline, k) that hold ``metric``, by increasing n."""
    cells = (r for r in data["tables"][base] if r["k"] == k and metric in r)
    return sorted(cells, key=lambda r: r["n"])


def _has_bars(rows: list[dict[str, Any]], metric: str) -> bool:
    return metric == "speedup" and bool(rows) and all("speedup_min" in r for r in rows)


def _crossover(data: dict[str, Any], base: str, k: int, metric: str, ns: list[int]) -> int | None:
    """The starred n of a speed-up line: from it on the median is faster (None: none)."""
    if metric != "speedup":
        return None
    table = data.get("crossover_n", {}).get(base, {})
    win = table.get(str(k), table.get(k))
    return int(win) if win and win in ns else None


def drawn_marks(data: dict[str, Any], metric: Metric = "speedup") -> tuple[bool, bool]:
    """Whether :func:`plot_speedup` draws (min-max bars, crossover stars) for ``metric``."""
    ks = sorted({row["k"] for row in data["tables"]["exact"]})
    bars = stars = False
    for base in ("exact", "sdpa"):
        for k in ks:
            rows = _rows(data, base, k, metric)
            bars = bars or _has_bars(rows, metric)
            stars = stars or _crossover(data, base, k, metric, [r["n"] for r in rows]) is not None
    return bars, stars


def _colours(ks: list[int]) -> dict[int, Any]:
    import seaborn as sns

    return dict(zip(ks, sns.color_palette("colorblind", len(ks)), strict=True))


def _markers(ks: list[int]) -> dict[int, str]:
    return {k: "os^vDP"[i % 6] for i, k in enumerate(ks)}


def legend_rows(
    ks: list[int], *, bars: bool = False, star: bool = False
) -> tuple[list[Any], list[Any]]:
    """Legend entries in two rows: a colour and marker per k; the line style per baseline
    and, where drawn, the min-max bar and the crossover star."""
    from matplotlib.lines import Line2D

    by_k = [
        Line2D([], [], color=c, marker=_markers(ks)[k], ms=3, lw=1, label=f"k = {k}")
        for k, c in _colours(ks).items()
    ]
    handles = [
        Line2D([], [], color="0.3", lw=1, label="vs explicit softmax"),
        Line2D([], [], color="0.3", lw=1, ls="--", label="vs SDPA"),
    ]
    if bars:
        handles.append(
            Line2D([], [], color="0.3", marker="|", ms=8, ls="none", label="min to max over rounds")
        )
    if star:
        handles.append(
            Line2D(
                [], [], color="0.3", marker="*", ms=8, ls="none", label="median faster from here on"
            )
        )
    return by_k, handles


def _two_row_legend(fig: Figure, rows: tuple[list[Any], list[Any]]) -> None:
    """One legend below the panels, a row per group (matplotlib fills it column by column)."""
    from matplotlib.lines import Line2D

    width = max(len(row) for row in rows)
    padded = [row + [Line2D([], [], alpha=0, label=" ")] * (width - len(row)) for row in rows]
    handles = [padded[r][c] for c in range(width) for r in range(2)]
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=width,
        frameon=False,
        fontsize="small",
    )


def _cpu(hw: dict[str, Any]) -> str:
    """``x86_64 CPU, 2 threads`` (``1 thread``)."""
    threads = int(hw["torch_threads"])
    return f"{hw['processor']} CPU, {threads} thread{'s' if threads != 1 else ''}"


def memory_titles(meta: dict[str, Any]) -> dict[Metric, str]:
    """Panel title per memory metric of a run: which memory measure it shows."""
    budget = meta.get("memory_budget_gib")
    batch = meta.get("batch") or 1
    if meta.get("format_version", 1) < 2:  # peaks at each stack's own batch
        own = f"at batch {batch}" if budget is None else "at unequal batches"
        return {"memory_saving": f"peak memory {own}\nbaseline / Linformer"}
    titles: dict[Metric, str] = {}
    if budget is not None:
        titles["memory_saving"] = f"largest batch within {budget:g} GiB\nLinformer / baseline"
    equal = "equal batch" if budget is not None else f"batch {batch}"
    titles["memory_saving_equal_batch"] = f"peak memory per sequence, {equal}\nbaseline / Linformer"
    return titles


def write_figures(results: Sequence[EfficiencyResult], out: Path) -> list[Path]:
    """``speedup_vs_n.{pdf,png}`` of each run: the speed-up, then one panel per memory
    measure the run holds; into ``out`` (one run) or ``out/<run>`` (several)."""
    written: list[Path] = []
    with paper_style():
        for run, folder in per_run(results, out):
            written += save(efficiency_figure(run.config, run.data), folder / "speedup_vs_n")
    return written


def efficiency_figure(meta: dict[str, Any], data: dict[str, Any]) -> Figure:
    """The speed-up panel and one panel per memory measure the run holds, one legend below
    listing the marks drawn (call inside :func:`~lowrank.plots.style.paper_style`)."""
    import matplotlib.pyplot as plt

    hw = meta["hardware"]
    where = hw.get("gpu") or _cpu(hw)
    memory = memory_titles(meta)
    panels = 1 + len(memory)
    rounds = meta.get("repeats")
    fig, axes = plt.subplots(1, panels, figsize=(panels * SINGLE_COLUMN, 2.8), layout="constrained")
    plot_speedup(data, axes[0], "speedup", legend=False)
    spread = "" if meta.get("format_version", 1) < 2 else f" of {rounds} interleaved rounds"
    axes[0].set_title(f"time per token, baseline / Linformer\nmedian{spread}", fontsize="medium")
    for ax, (metric, title) in zip(axes[1:], memory.items(), strict=True):
        plot_speedup(data, ax, metric, legend=False)
        ax.set_title(title, fontsize="medium")
    stack = meta["stack"]
    batch = (
        f"largest batch within {meta['memory_budget_gib']:g} GiB"
        if meta.get("memory_budget_gib") is not None
        else f"batch {meta.get('batch') or 1}"
    )
    layers = f"{stack['layers']} layer{'s' if stack['layers'] != 1 else ''}"
    fig.suptitle(
        f"Linformer (layerwise) vs exact attention, {layers}, "
        f"width {stack['hidden']}, {batch}, on {where}",
        fontsize="medium",
    )
    ks = sorted({row["k"] for row in data["tables"]["exact"]})
    bars, stars = drawn_marks(data, "speedup")
    _two_row_legend(fig, legend_rows(ks, bars=bars, star=stars))
    return fig
