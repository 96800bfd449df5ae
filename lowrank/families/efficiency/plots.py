"""Figure of a ``lowrank efficiency`` run: speed-up and memory saving against n, a line per k.

Small multiples, one message per panel: a row per baseline (explicit softmax, PyTorch's SDPA),
a column per measure (speed-up; memory saving per sequence; under a budget, the ratio of the
largest batches). The 1x reference is a dotted grey line without markers, so no data line or
legend entry looks like it; the legend lists the k shown (at most four) and the marks drawn.

Reads format 1 folders (medians only, one memory measure) to format 3 ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lowrank.families.efficiency.memory import recorded_method, unresolved_cells
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
    from collections.abc import Mapping, Sequence

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from lowrank.families.efficiency.result import EfficiencyResult

Metric = Literal["speedup", "memory_saving", "memory_saving_equal_batch"]
Baseline = Literal["exact", "sdpa"]
BASELINE_NAMES = {"exact": "explicit softmax", "sdpa": "SDPA"}
_SUB = {"exact": r"\mathrm{softmax}", "sdpa": r"\mathrm{SDPA}"}
_LIN = r"\mathrm{Lin}"
MAX_KS = 4  # lines per panel: with the bar and the star, at most six legend entries


def _ylabel(metric: Metric, base: Baseline, version: int = 3) -> str:
    """The measure as a formula: t time per token, M peak memory (per sequence), B batch
    (format 1's ``memory_saving`` is a ratio of peaks)."""
    if metric == "speedup":
        return rf"speed-up $t_{{{_SUB[base]}}}\,/\,t_{{{_LIN}}}$"
    if metric == "memory_saving_equal_batch" or version < 2:
        return rf"memory $M_{{{_SUB[base]}}}\,/\,M_{{{_LIN}}}$"
    return rf"batch $B_{{{_LIN}}}\,/\,B_{{{_SUB[base]}}}$"


def shown_ks(ks: Sequence[int], limit: int = MAX_KS) -> list[int]:
    """The k drawn: all when at most ``limit``, else ``limit`` of them spread evenly from the
    smallest to the largest (both always shown)."""
    ordered = sorted(ks)
    if len(ordered) <= limit:
        return ordered
    picks = {round(i * (len(ordered) - 1) / (limit - 1)) for i in range(limit)}
    return [ordered[i] for i in sorted(picks)]


def plot_speedup(
    data: dict[str, Any],
    ax: Axes | None = None,
    metric: Metric = "speedup",
    legend: bool = True,
    baseline: Baseline = "exact",
    meta: Mapping[str, Any] | None = None,
) -> Axes:
    """Linformer's speed-up or memory saving over one ``baseline`` against n, a line per k
    (:func:`shown_ks`). The speed-up is the median over the rounds, with a bar from the
    smallest to the largest round (when the run has them); the n from which the median
    speed-up stays above 1 is starred. A memory saving that rests on a peak below the
    resolution of the run's memory method (``meta``, the run's config) is left out, with a
    note when none is left. The y axis is labelled in plain factors (0.5x, 1x,
    2x), the 1x line dotted; ``legend`` (below the axes) lists only the marks drawn."""
    ax = axes_or_new(ax, (SINGLE_COLUMN, 3.1))
    meta = meta or {}
    resolution = recorded_method(meta).resolution_bytes if meta else 1
    drawn = False
    ks = shown_ks(sorted({row["k"] for row in data["tables"]["exact"]}))
    colours, markers = _colours(ks), _markers(ks)
    for i, k in enumerate(ks):
        rows = _rows(data, baseline, k, metric, resolution)
        if not rows:
            continue
        ns = [r["n"] for r in rows]
        ys = [r[metric] for r in rows]
        drawn = drawn or any(y == y for y in ys)  # not all NaN
        # lines nudged apart along the log n axis, so equal values (and bars) stay visible
        xs = [n * 2 ** (0.1 * (i - (len(ks) - 1) / 2)) for n in ns]
        style = {"marker": markers[k], "ms": 3.5, "lw": 1.1, "color": colours[k]}
        if _has_bars(rows, metric):
            bars = [
                [y - r["speedup_min"] for y, r in zip(ys, rows, strict=True)],
                [r["speedup_max"] - y for y, r in zip(ys, rows, strict=True)],
            ]
            ax.errorbar(xs, ys, yerr=bars, elinewidth=0.8, capsize=1.5, **style)
        else:
            ax.plot(xs, ys, **style)
        win = _crossover(data, baseline, k, metric, ns)
        if win is not None:
            at = ns.index(win)
            ax.plot([xs[at]], [ys[at]], marker="*", ms=8, color=colours[k], ls="none")
    ax.axhline(1, color="0.45", lw=0.9, ls=":", zorder=0)
    version = int(meta.get("format_version", 3))
    ylabel = _ylabel(metric, baseline, version)
    ax.set(xscale="log", yscale="log", xlabel="sequence length n", ylabel=ylabel)
    if not drawn and metric == "memory_saving_equal_batch":
        _note_unresolved(ax, resolution)
    ns_all = sorted({r["n"] for r in data["tables"]["exact"]})
    ax.set_xticks(ns_all, [str(n) for n in ns_all])
    ax.set_xlim(ns_all[0] / 2**0.35, ns_all[-1] * 2**0.35)
    ax.minorticks_off()
    _include_one(ax)
    readable_log_ticks(ax, "x", base=2)
    if legend:
        with_bars, with_stars = drawn_marks(data, metric)
        below_legend(ax, legend_entries(ks, bars=with_bars, star=with_stars), fontsize="medium")
    return ax


def _note_unresolved(ax: Axes, resolution: int) -> None:
    """Say in the empty panel why it is empty, at the body font size."""
    size = f"{resolution / 2**20:g} MiB" if resolution >= 2**20 else f"{resolution:,} bytes"
    ax.text(
        0.5,
        0.5,
        f"no saving shown:\nevery peak is below\nwhat the method resolves\n({size})",
        transform=ax.transAxes,
        ha="center",
        va="center",
        fontsize="medium",
        bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.0},
    )


def _include_one(ax: Axes) -> None:
    """Widen the y range to hold 1x, so the reference line is always in view."""
    low, high = ax.get_ylim()
    ax.set_ylim(min(low, 0.8), max(high, 1.25))


def _rows(
    data: dict[str, Any], base: str, k: int, metric: str, resolution: int = 1
) -> list[dict[str, Any]]:
    """The cells of one line (baseline, k) that hold ``metric``, by increasing n; a cell
    whose equal-batch memory saving rests on a peak below ``resolution`` bytes holds NaN."""
    cells = [dict(r) for r in data["tables"][base] if r["k"] == k and metric in r]
    if metric == "memory_saving_equal_batch":
        hidden = unresolved_cells(data.get("records", []), resolution)
        for cell in cells:
            if (base, cell["n"], k) in hidden:
                cell[metric] = float("nan")
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
    """Whether :func:`plot_speedup` draws (min-max bars, crossover stars) for ``metric``,
    against either baseline."""
    ks = shown_ks(sorted({row["k"] for row in data["tables"]["exact"]}))
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
    return {k: "os^D"[i % 4] for i, k in enumerate(ks)}


def legend_entries(ks: list[int], *, bars: bool = False, star: bool = False) -> list[Any]:
    """A colour and marker per k shown, then the min-max bar and the crossover star where
    drawn: at most six entries."""
    from matplotlib.lines import Line2D

    handles: list[Any] = [
        Line2D([], [], color=c, marker=_markers(ks)[k], ms=3.5, lw=1.1, label=f"$k$ = {k}")
        for k, c in _colours(ks).items()
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
    return handles


def _rows_legend(fig: Figure, handles: list[Any], title: str | None, ncol: int = 3) -> None:
    """One legend below the panels, read row by row, ``ncol`` entries a row (matplotlib
    fills a legend column by column, so the entries are reordered, the last row padded)."""
    from matplotlib.lines import Line2D

    rows = -(-len(handles) // ncol)
    blank = Line2D([], [], alpha=0, label=" ")
    padded = handles + [blank] * (rows * ncol - len(handles))
    fig.legend(
        handles=[padded[r * ncol + c] for c in range(ncol) for r in range(rows)],
        loc="outside lower center",
        ncol=ncol,
        frameon=False,
        fontsize="medium",
        title=title,
        title_fontsize="medium",
    )


def _cpu(hw: dict[str, Any]) -> str:
    """``x86_64 CPU, 2 threads`` (``1 thread``)."""
    threads = int(hw["torch_threads"])
    return f"{hw['processor']} CPU, {threads} thread{'s' if threads != 1 else ''}"


def memory_titles(meta: dict[str, Any]) -> dict[Metric, str]:
    """Per memory metric of a run, the measure its column shows (format 1: peaks at each
    stack's own batch; later: per sequence at the equal batch, and under a budget the ratio
    of the largest batches)."""
    budget = meta.get("memory_budget_gib")
    if meta.get("format_version", 1) < 2:
        own = f"batch {meta.get('batch') or 1}" if budget is None else "unequal batches"
        return {"memory_saving": f"peak ratio, {own}"}
    titles: dict[Metric, str] = {}
    if budget is not None:
        titles["memory_saving"] = f"largest batch within {budget:g} GiB"
    titles["memory_saving_equal_batch"] = "memory saving per sequence"
    return titles


def write_figures(results: Sequence[EfficiencyResult], out: Path) -> list[Path]:
    """``speedup_vs_n.{pdf,png}`` of each run: the speed-up, then one column per memory
    measure the run holds, a row per baseline; into ``out`` (one run) or ``out/<run>``
    (several)."""
    written: list[Path] = []
    with paper_style():
        for run, folder in per_run(results, out):
            written += save(efficiency_figure(run.config, run.data), folder / "speedup_vs_n")
    return written


def efficiency_figure(meta: dict[str, Any], data: dict[str, Any]) -> Figure:
    """A row per baseline, a column per measure (speed-up, then each memory measure the run
    holds), one legend below naming the k shown and the marks drawn (call inside
    :func:`~lowrank.plots.style.paper_style`)."""
    import matplotlib.pyplot as plt

    columns: dict[Metric, str] = {"speedup": "speed-up, time per token", **memory_titles(meta)}
    fig, axes = plt.subplots(
        2,
        len(columns),
        figsize=(2.45 * len(columns) + 0.4, 4.9),
        layout="constrained",
        squeeze=False,
    )
    method = recorded_method(meta)  # named in the title
    for row, base in enumerate(("exact", "sdpa")):
        for col, (metric, title) in enumerate(columns.items()):
            ax = axes[row][col]
            plot_speedup(data, ax, metric, False, base, meta)  # type: ignore[arg-type]
            ax.set_title(f"{title}\nover {BASELINE_NAMES[base]}", fontsize="medium")
            if row == 0:
                ax.set_xlabel("")
    fig.suptitle(_suptitle(meta, method.name), fontsize="medium")
    ks = sorted({row["k"] for row in data["tables"]["exact"]})
    bars, stars = drawn_marks(data, "speedup")
    heading = None if len(ks) <= MAX_KS else f"{MAX_KS} of {len(ks)} k shown"
    _rows_legend(fig, legend_entries(shown_ks(ks), bars=bars, star=stars), heading)
    return fig


_MEMORY_SHORT = {
    "tensor-bytes": "peak memory: tensor bytes, exact count",
    "cuda-allocator": "peak memory: CUDA allocator",
    "resident-sampled": "peak memory: sampled resident memory, not reproducible",
}


def _suptitle(meta: dict[str, Any], memory: str) -> str:
    """Three short lines: what is compared; the stack, batch and machine; the measures."""
    hw, stack = meta["hardware"], meta["stack"]
    where = hw.get("gpu") or _cpu(hw)
    batch = (
        f"largest batch within {meta['memory_budget_gib']:g} GiB"
        if meta.get("memory_budget_gib") is not None
        else f"batch {meta.get('batch') or 1}"
    )
    layers = f"{stack['layers']} layer{'s' if stack['layers'] != 1 else ''}"
    label = meta.get("label")
    rounds = meta.get("repeats")
    timing = f"median of {rounds} rounds" if rounds and meta.get("format_version", 1) >= 2 else ""
    return "\n".join(
        [
            f"{label + ': ' if label else ''}Linformer (layerwise sharing) against exact attention",
            f"{layers}, width {stack['hidden']}, {batch}; {where}",
            "; ".join(s for s in (timing, _MEMORY_SHORT.get(memory, memory)) if s),
        ]
    )
