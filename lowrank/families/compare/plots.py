"""Figures of a ``lowrank compare`` run: error against budget, winner maps, the low-rank
versus sparse ratio against entropy, and per-family heatmaps at one budget.

Every text is at least 6 pt (``small`` in the paper style), annotations at the body size;
formulas are mathtext; titles name the model and corpus as :func:`run_label` does.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lowrank.families.compare.names import ORACLES
from lowrank.families.compare.ratio import plot_ratio_vs_entropy, resampled_words
from lowrank.maths.names import BASELINES
from lowrank.plots.style import (
    DOUBLE_COLUMN,
    SINGLE_COLUMN,
    axes_or_new,
    below_legend,
    paper_style,
    per_run,
    readable_log_ticks,
    save,
    side_legend,
)
from lowrank.runs.labels import run_label

if TYPE_CHECKING:
    from collections.abc import Sequence

    from matplotlib.axes import Axes

    from lowrank.families.compare.result import CompareResult

__all__ = [
    "FAMILY_COLOURS",
    "METRIC_AXIS",
    "default_families",
    "family_style",
    "plot_error_vs_budget",
    "plot_family_heatmap",
    "plot_ratio_vs_entropy",
    "plot_winner_map",
    "write_figures",
]

METRIC_AXIS = {
    "output_error": r"head output error $\|\tilde{P}V - PV\|\,/\,\|PV\|$",
    "probs_error": r"attention error $\|\tilde{P} - P\|_F\,/\,\|P\|_F$",
    "output_scaled_error": r"scale-free output error $\min_a\|a\tilde{P}V - PV\|\,/\,\|PV\|$",
    "output_cosine": r"output cosine $\cos(\tilde{P}V, PV)$",
}
FLOOR = 1e-4  # errors below are drawn at this value
MAX_SERIES = 6  # families and baseline per panel; the output floor may add one entry
# one colour per family, all nine distinct in one panel: matplotlib's tab10 with its grey
# (the baselines' colour) and its pink (too close to its purple) replaced by ochre, so that
# no two are closer than CIELAB Delta E 38; markers and dashes (oracles) tell them apart
# again in greyscale
FAMILY_COLOURS = {
    "lowrank-oracle": "#1f77b4",  # blue
    "linformer": "#bcbd22",  # olive
    "sparse-oracle": "#ff7f0e",  # orange
    "sparse-oracle-renorm": "#8c564b",  # brown
    "lsh": "#d62728",  # red
    "local-global": "#2ca02c",  # green
    "performer": "#9467bd",  # purple
    "nystrom": "#17becf",  # cyan
    "scatterbrain": "#a6761d",  # ochre
}
_ORDER = tuple(FAMILY_COLOURS)


def family_style(family: str) -> dict[str, Any]:
    """One colour and marker per family, the same in every figure; oracles dashed."""
    if family == "zero":
        return {"color": "0.55", "ls": ":", "marker": None}
    if family == "uniform":
        return {"color": "0.2", "ls": ":", "marker": None}
    i = _ORDER.index(family) if family in _ORDER else len(_ORDER) - 1
    oracle = family in ORACLES
    colour = FAMILY_COLOURS.get(family, "#7f7f7f")
    return {"color": colour, "ls": "--" if oracle else "-", "marker": "osD^vPX*hp"[i]}


def _metric(run: CompareResult, metric: str | None) -> str:
    return metric or str(run.config.get("winner_metric", "output_error"))


def default_families(run: CompareResult, metric: str) -> list[str]:
    """The series ``plot()`` shows unless told: the two oracles (best rank b, top b), then
    the families that need only Q and K with the least median error at the focus budget,
    at most :data:`MAX_SERIES` - 1 families in all, and the uniform baseline (zero attention
    is 1 on every error and left out)."""
    table, ki = run.table(metric), run.budgets.index(run.focus_budget)
    applies = [
        f for i, f in enumerate(run.families) if f not in BASELINES and np.isfinite(table[i]).any()
    ]
    shown: list[str] = [f for f in ("lowrank-oracle", "sparse-oracle") if f in applies]
    known = run.config.get("oracles", ORACLES)
    others = [f for f in applies if f not in known]
    others.sort(key=lambda f: float(np.nanmedian(table[run.families.index(f), ki])))
    shown += others[: MAX_SERIES - 1 - len(shown)]
    return shown + (["uniform"] if "uniform" in run.families else [])


def _dodge(i: int, count: int) -> float:
    """Factor that spreads ``count`` series around each budget on the log x axis."""
    return float(np.exp(0.06 * (i - (count - 1) / 2)))


def plot_error_vs_budget(
    run: CompareResult,
    metric: str | None = None,
    ax: Axes | None = None,
    legend: bool = True,
    families: list[str] | None = None,
    floor: bool = True,
) -> Axes:
    """Median over heads of each head's mean error against the budget, log-log, with the
    interquartile range over heads as a bar (series side by side around each budget).

    ``families`` picks the series (default :func:`default_families`); oracles (which read P)
    are dashed, the baselines dotted grey; families that do not apply (causal models) are
    left out. On the output error, ``floor`` adds the median output floor of any rank-b P~
    (``output_floor``), where the oracles are not optimal; a floor of 0 (b >= d) is marked
    by a triangle below the lowest series. The legend lists the series in the order drawn.
    """
    ax = axes_or_new(ax, (SINGLE_COLUMN, 3.6))
    metric = _metric(run, metric)
    table = run.table(metric)  # (F, K, L, H)
    budgets = np.asarray(run.budgets, dtype=float)
    chosen = families if families is not None else default_families(run, metric)
    drawn = [
        f for f in run.families if f in chosen and np.isfinite(table[run.families.index(f)]).any()
    ]
    handles: list[Any] = []
    lowest = np.inf
    for i, family in enumerate(drawn):
        flat = table[run.families.index(family)].reshape(len(budgets), -1)
        # exact answers (error 0 at b = n) sit on the floor of the log axis
        lo, mid, hi = np.nanpercentile(np.maximum(flat, FLOOR), [25, 50, 75], axis=1)
        lowest = min(lowest, float(np.min(lo)))
        style = family_style(family)
        if family in BASELINES:
            (line,) = ax.plot(budgets, mid, lw=1.1, label=f"{family} (baseline)", **style)
            handles.append(line)
            continue
        x = budgets * _dodge(i, len(drawn))
        (line,) = ax.plot(x, mid, lw=1.1, ms=3, mfc="none", label=family, **style)
        handles.append(line)
        ax.errorbar(
            x, mid, yerr=[mid - lo, hi - mid], fmt="none", ecolor=style["color"], elinewidth=0.7,
            label="_nolegend_",
        )  # fmt: skip
    if floor and metric == "output_error" and "output_floor" in run.arrays:
        handles.append(_draw_floor(ax, run.arrays["output_floor"], budgets, lowest))
    ax.set(xscale="log", yscale="log", xlabel="budget b (about n b numbers)")
    ax.set_ylabel(METRIC_AXIS.get(metric, metric) + "\n(median over heads, bar: IQR)")
    ax.set_xticks(budgets, [str(int(b)) for b in budgets])
    ax.minorticks_off()
    readable_log_ticks(ax)
    if legend:
        oracles = any(str(h.get_label()) in ORACLES for h in handles)
        title = "dashed: oracles (read P)" if oracles else None
        below_legend(
            ax, handles=handles, title=title, ncol=2, fontsize="small", title_fontsize="small"
        )
    return ax


def _draw_floor(ax: Axes, floor: np.ndarray, budgets: np.ndarray, lowest: float) -> Any:
    """The median output floor over heads (a line); a median of 0 (or below a tenth of the
    lowest series' quartile) is drawn as a triangle at half that quartile."""
    median = np.nanmedian(floor.reshape(len(budgets), -1), axis=1)
    base = lowest / 2 if np.isfinite(lowest) else FLOOR
    below = median < base / 5  # a tenth of the lowest quartile
    shown = np.where(below, base, median)
    label = "floor: any rank-b $\\tilde{P}$" + (" (v: 0)" if below.any() else "")
    (line,) = ax.plot(budgets, shown, color="0.35", ls="-.", lw=0.9, label=label)
    if below.any():
        ax.plot(budgets[below], shown[below], "v", color="0.35", ms=4)
    return line


def plot_winner_map(
    run: CompareResult,
    budget: int,
    ax: Axes | None = None,
    from_q_k: bool = False,
    legend: bool = True,
    max_ticks: int = 12,
) -> Axes:
    """Layer (rows, layer 1 at the bottom) x head map of the family with the least error,
    among all families or (``from_q_k``) among those that need only Q and K. ``legend``
    (beside the axes) names the colour of each family that wins a head here; at most
    ``max_ticks`` head numbers are labelled."""
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    ax = axes_or_new(ax, (SINGLE_COLUMN + 1.3, 2.4))
    key = "winner_from_q_k" if from_q_k else "winner"
    winner = run.arrays[key][run.budgets.index(budget)]  # (L, H)
    layers, heads = winner.shape
    palette = [family_style(f)["color"] for f in run.families] + [(1.0, 1.0, 1.0)]
    shown = np.where(winner >= 0, winner, len(run.families))
    ax.imshow(
        shown,
        cmap=ListedColormap(palette),
        vmin=-0.5,
        vmax=len(palette) - 0.5,
        origin="lower",
        aspect="auto",
        interpolation="nearest",
    )
    step = max(1, -(-heads // max_ticks))
    ax.set_xticks(range(0, heads, step), [str(h) for h in range(1, heads + 1, step)])
    lstep = max(1, -(-layers // 10))
    ax.set_yticks(range(0, layers, lstep), [str(i) for i in range(1, layers + 1, lstep)])
    ax.set(xlabel="head", ylabel="layer")
    ax.tick_params(length=0, labelsize="small")
    for spine in ax.spines.values():
        spine.set_visible(False)
    if legend:  # a panel on its own says what it shows
        among = "from Q and K only" if from_q_k else "all families"
        metric = str(run.config.get("winner_metric", "output_error"))
        what = {"output_error": "output error", "probs_error": "attention error"}
        ax.set_title(
            f"least {what.get(metric, metric.replace('_', ' '))} at b = {budget}, {among}",
            fontsize="medium",
        )
        used = sorted({int(w) for w in np.unique(winner) if w >= 0})
        handles = [
            Patch(color=family_style(run.families[i])["color"], label=run.families[i]) for i in used
        ]
        if (winner < 0).any():
            handles.append(Patch(facecolor="white", edgecolor="0.5", label="none applies"))
        side_legend(ax, handles=handles, title="winner", fontsize="small", title_fontsize="small")
    else:
        ax.set_title(f"b = {budget}", fontsize="medium")
    return ax


def _winner_legend(run: CompareResult, fig: Any) -> None:
    from matplotlib.patches import Patch

    both = np.concatenate([run.arrays["winner"].ravel(), run.arrays["winner_from_q_k"].ravel()])
    used = sorted({int(w) for w in np.unique(both) if w >= 0})
    handles = [
        Patch(color=family_style(run.families[i])["color"], label=run.families[i]) for i in used
    ]
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=min(len(handles), 5),
        frameon=False,
        fontsize="small",
    )


def plot_family_heatmap(
    run: CompareResult,
    family: str,
    budget: int,
    metric: str | None = None,
    ax: Axes | None = None,
    norm: Any = None,
    colorbar: bool = True,
) -> Axes:
    """Layer (layer 1 at the bottom) x head heatmap of one family's mean error (no numbers
    in the cells), with its ticks, axis labels and (``colorbar``) a labelled colour bar. A
    figure of several panels passes the same ``norm`` to each and ``colorbar=False``, and
    draws one bar from ``ax.images[0]``."""
    ax = axes_or_new(ax, (SINGLE_COLUMN, 2.4))
    metric = _metric(run, metric)
    values = run.values(family, budget, metric)  # (L, H)
    layers, heads = values.shape
    image = ax.imshow(
        values, cmap="magma_r", norm=norm, origin="lower", aspect="auto", interpolation="nearest"
    )
    step = max(1, -(-heads // 12))
    ax.set_xticks(range(0, heads, step), [str(h) for h in range(1, heads + 1, step)])
    lstep = max(1, -(-layers // 10))
    ax.set_yticks(range(0, layers, lstep), [str(i) for i in range(1, layers + 1, lstep)])
    ax.set(xlabel="head", ylabel="layer (1 = bottom)")
    ax.tick_params(length=0, labelsize="small")
    for spine in ax.spines.values():
        spine.set_visible(False)
    if colorbar:
        ax.set_title(f"{family}, b = {budget}", fontsize="medium")
        bar = ax.figure.colorbar(image, ax=ax, pad=0.02)
        bar.set_label(f"mean {METRIC_AXIS.get(metric, metric)}", fontsize="small")
        bar.ax.tick_params(labelsize="small")
    else:
        ax.set_title(family, fontsize="small")
    return ax


def write_figures(results: Sequence[CompareResult], out: Path) -> list[Path]:
    """Every comparison figure of each run (PDF and PNG) into ``out`` (one run) or
    ``out/<run>`` (several); returns the files written."""
    written: list[Path] = []
    for run, folder in per_run(results, out):
        written += _write_run(run, folder)
    return written


def _title(run: CompareResult) -> str:
    n, count = run.config["seq_len"], run.config["num_sequences"]
    return f"{run_label(run.config)}, n = {n}, N = {count} sequences"


def _write_run(run: CompareResult, out: Path) -> list[Path]:
    """The comparison figures of a run into ``out`` (PDF and PNG): error against budget,
    winner maps, the oracles' ratio against entropy on both metrics, and heatmaps at the
    focus budget."""
    budget = run.focus_budget
    metric = _metric(run, None)
    written: list[Path] = []
    with paper_style():
        written += save(_error_figure(run, metric), out / "error_vs_budget")
        written += save(_winners_figure(run, metric), out / "winners")
        if {"lowrank-oracle", "sparse-oracle"} <= set(run.families):
            fig = _ratio_figure(run, budget)
            if fig is not None:
                written += save(fig, out / f"ratio_vs_entropy_b{budget}")
        written += save(_heatmaps_figure(run, budget, metric), out / f"heatmaps_b{budget}")
    return written


def _error_figure(run: CompareResult, metric: str) -> Any:
    """Two panels: the oracles (and the output floor), the families from Q and K; the
    uniform baseline in both; at most :data:`MAX_SERIES` series each. A run with only one
    kind of family gets one panel."""
    import matplotlib.pyplot as plt

    known = run.config.get("oracles", ORACLES)
    oracles = [f for f in run.families if f in known][: MAX_SERIES - 1]
    others = [f for f in run.families if f not in known and f not in BASELINES]
    panels = [
        (title, [*chosen, "uniform"], floor)
        for title, chosen, floor in (
            ("oracles (read P or every score)", oracles, True),
            ("from Q and K only", others[: MAX_SERIES - 1], not oracles),
        )
        if chosen
    ]
    width = DOUBLE_COLUMN if len(panels) == 2 else SINGLE_COLUMN + 0.4
    fig, axes = plt.subplots(
        1, len(panels), figsize=(width, 3.8), layout="constrained", sharey=True, squeeze=False
    )
    for i, (ax, (title, chosen, floor)) in enumerate(zip(axes[0], panels, strict=True)):
        plot_error_vs_budget(run, metric, ax, families=chosen, floor=floor)
        ax.set_title(title, fontsize="medium")
        if i:
            ax.set_ylabel("")
    join = "; " if len(panels) == 2 else "\n"
    fig.suptitle(f"{_title(run)}{join}zero attention has error 1", fontsize="medium")
    return fig


def _winners_figure(run: CompareResult, metric: str) -> Any:
    import matplotlib.pyplot as plt

    budgets = run.budgets
    fig, axes = plt.subplots(
        2, len(budgets), figsize=(DOUBLE_COLUMN, 3.9), layout="constrained", squeeze=False
    )
    ticks = max(2, 24 // len(budgets))  # head numbers per panel, readable at 6.7 pt
    for b, top, bottom in zip(budgets, axes[0], axes[1], strict=True):
        plot_winner_map(run, b, top, legend=False, max_ticks=ticks)
        plot_winner_map(run, b, bottom, from_q_k=True, legend=False, max_ticks=ticks)
        top.set_xlabel("")
    for panel in axes[:, 1:].flat:
        panel.set_ylabel("")
    axes[0, 0].set_ylabel("all families\nlayer")
    axes[1, 0].set_ylabel("from Q and K only\nlayer")
    _winner_legend(run, fig)
    fig.suptitle(
        f"{_title(run)}\nleast {METRIC_AXIS.get(metric, metric)}, at equal b", fontsize="medium"
    )
    return fig


def _ratio_figure(run: CompareResult, budget: int) -> Any:
    """The sparse-against-low-rank verdict on both metrics, side by side; None where the
    low-rank oracle does not apply (causal models)."""
    import matplotlib.pyplot as plt

    metrics = [
        m
        for m in ("probs_error", "output_error")
        if f"{m}_mean" in run.arrays and np.isfinite(run.values("lowrank-oracle", budget, m)).any()
    ]
    if not metrics:
        return None
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(DOUBLE_COLUMN, 3.8), layout="constrained", squeeze=False
    )
    for i, (metric, ax) in enumerate(zip(metrics, axes[0], strict=True)):
        last = i == len(metrics) - 1
        plot_ratio_vs_entropy(run, budget, metric, ax, colorbar=last, resampling=False)
    record = run.sparse_vs_lowrank(at=budget, metric=metrics[0])
    units = resampled_words(record["entropy_spearman"]) if record else ""
    note = f"; 95% bootstrap intervals over {units}" if units else ""
    fig.suptitle(f"{_title(run)}{note}", fontsize="medium")
    return fig


def _heatmaps_figure(run: CompareResult, budget: int, metric: str) -> Any:
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    shown = [
        f for f in run.families if f != "zero" and np.isfinite(run.values(f, budget, metric)).any()
    ]
    values = np.concatenate([run.values(f, budget, metric).ravel() for f in shown])
    positive = values[np.isfinite(values) & (values > 0)]
    # a few near-exact heads would wash out the rest: the scale starts at the 2nd
    # percentile and lower values take its lightest colour
    norm = None
    if positive.size:
        low, high = np.percentile(positive, [2, 100])
        norm = LogNorm(vmin=low, vmax=high, clip=True)
    cols = min(5, len(shown))
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(DOUBLE_COLUMN, 1.45 * rows + 0.6), layout="constrained", squeeze=False
    )
    image = None
    layers, heads = run.arrays["entropy_mean"].shape
    for i, (family, panel) in enumerate(zip(shown, axes.flat, strict=False)):
        drawn = plot_family_heatmap(run, family, budget, metric, panel, norm, colorbar=False)
        image = drawn.images[0]
        panel.tick_params(length=2, pad=1)
        panel.set(xticks=[], yticks=[], xlabel="", ylabel="")
        if i % cols == 0:
            panel.set_yticks([0, layers - 1], ["1", str(layers)], fontsize="small")
            panel.set_ylabel("layer", fontsize="small")
        if i >= len(shown) - cols:
            panel.set_xticks([0, heads - 1], ["1", str(heads)], fontsize="small")
            panel.set_xlabel("head", fontsize="small")
    for panel in list(axes.flat)[len(shown) :]:
        panel.set_visible(False)
    if image is not None:
        bar = fig.colorbar(image, ax=axes, shrink=0.9, pad=0.01)
        bar.set_label(f"mean {METRIC_AXIS.get(metric, metric)}\n(log scale)", fontsize="small")
        bar.ax.tick_params(labelsize="small")
    fig.suptitle(f"{_title(run)}, b = {budget}", fontsize="medium")
    return fig
