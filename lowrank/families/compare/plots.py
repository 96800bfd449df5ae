"""Figures of a ``lowrank compare`` run: error against budget, winner maps, the low-rank
versus sparse ratio against entropy, and per-family heatmaps at one budget."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lowrank.families.compare.names import ORACLES
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

METRIC_AXIS = {
    "output_error": "head output error ||P~V - PV|| / ||PV||",
    "probs_error": "attention error ||P~ - P|| / ||P||",
    "output_scaled_error": "scale-free output error",
    "output_cosine": "output cosine",
}
FLOOR = 1e-4  # errors below are drawn at this value
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


def plot_error_vs_budget(
    run: CompareResult,
    metric: str | None = None,
    ax: Axes | None = None,
    legend: bool = True,
    families: list[str] | None = None,
) -> Axes:
    """Median over heads of each head's mean error against the budget, log-log.

    The band spans the interquartile range over heads; oracles (which read P itself) are
    dashed, the zero and uniform baselines dotted grey. ``families`` picks the lines (default
    all); families that do not apply (causal models) are left out.
    """
    ax = axes_or_new(ax, (SINGLE_COLUMN, 3.6))
    metric = _metric(run, metric)
    table = run.table(metric)  # (F, K, L, H)
    budgets = np.asarray(run.budgets)
    for fi, family in enumerate(run.families):
        if families is not None and family not in families:
            continue
        flat = table[fi].reshape(len(budgets), -1)
        if np.isnan(flat).all():
            continue
        # exact answers (error 0 at b = n) sit on the floor of the log axis
        lo, mid, hi = np.nanpercentile(np.maximum(flat, FLOOR), [25, 50, 75], axis=1)
        style = family_style(family)
        label = f"{family} (baseline)" if family in ("zero", "uniform") else family
        ax.plot(budgets, mid, lw=1.1, ms=3, mfc="none", label=label, **style)
        if family not in ("zero", "uniform"):
            ax.fill_between(budgets, lo, hi, color=style["color"], alpha=0.12, lw=0)
    ax.set(xscale="log", yscale="log", xlabel="budget b (about n b numbers)")
    ax.set_ylabel(METRIC_AXIS.get(metric, metric) + "\n(median over heads, IQR band)")
    ax.set_xticks(budgets, [str(b) for b in budgets])
    ax.minorticks_off()
    readable_log_ticks(ax)
    if legend:
        oracles = any(line.get_label() in ORACLES for line in ax.get_lines())
        below_legend(ax, title="dashed: oracles (read P)" if oracles else None)
    return ax


def plot_winner_map(
    run: CompareResult,
    budget: int,
    ax: Axes | None = None,
    from_q_k: bool = False,
    legend: bool = True,
) -> Axes:
    """Layer (rows, layer 1 at the bottom) x head map of the family with the least error,
    among all families or (``from_q_k``) among those that need only Q and K. ``legend``
    (beside the axes) names the colour of each family that wins a head here."""
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
    ax.set_xticks(range(heads), [str(h) for h in range(1, heads + 1)], fontsize="x-small")
    ax.set_yticks(range(layers), [str(layer) for layer in range(1, layers + 1)])
    ax.set(xlabel="head", ylabel="layer")
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if legend:  # a panel on its own says what it shows
        among = "from Q and K only" if from_q_k else "all families"
        ax.set_title(f"least error at b = {budget}, {among}", fontsize="small")
    else:
        ax.set_title(f"b = {budget}", fontsize="medium")
    if legend:
        used = sorted({int(w) for w in np.unique(winner) if w >= 0})
        handles = [
            Patch(color=family_style(run.families[i])["color"], label=run.families[i]) for i in used
        ]
        if (winner < 0).any():
            handles.append(Patch(facecolor="white", edgecolor="0.5", label="none applies"))
        side_legend(ax, handles=handles, title="winner", title_fontsize="x-small")
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


def plot_ratio_vs_entropy(
    run: CompareResult, budget: int, metric: str | None = None, ax: Axes | None = None
) -> Axes:
    """ln(error of the low-rank oracle / error of the sparse oracle) against each head's
    normalised row entropy, one point per head coloured by layer (below 0: low-rank wins).

    The annotation is Spearman's rho of the plotted points with its bootstrap interval.
    """
    import matplotlib as mpl

    from lowrank.maths.stats import rank_correlation

    ax = axes_or_new(ax, (SINGLE_COLUMN, 2.6))
    metric = _metric(run, metric)
    low = run.values("lowrank-oracle", budget, metric)
    sparse = run.values("sparse-oracle", budget, metric)
    entropy = run.arrays["entropy_mean"]  # (L, H)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.log(low / sparse)
    layers = entropy.shape[0]
    viridis = mpl.colormaps["viridis"]
    colours = [viridis(i / max(layers - 1, 1)) for i in range(layers)]
    for layer in range(layers):
        ax.scatter(entropy[layer], ratio[layer], s=9, color=colours[layer], lw=0)
    cmap = mpl.colors.ListedColormap(colours)
    norm = mpl.colors.BoundaryNorm(np.arange(0.5, layers + 1.5), layers)
    bar = ax.figure.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.02)
    bar.set_label("layer")
    bar.set_ticks(range(1, layers + 1))
    bar.minorticks_off()
    bar.ax.tick_params(length=0)
    ax.axhline(0, color="0.5", lw=0.6, ls="--")
    c = rank_correlation(entropy.ravel(), ratio.ravel(), seed=int(run.config["compare"]["seed"]))
    if np.isfinite(c["rho"]):
        ax.text(
            0.98,
            0.97,
            f"Spearman rho = {c['rho']:.2f}\n95% CI [{c['low']:.2f}, {c['high']:.2f}]\n"
            f"(the printed finding's\nadvantage of low-rank,\nln(err sparse / err low-rank):\n"
            f"rho = {-c['rho']:.2f} [{-c['high']:.2f}, {-c['low']:.2f}])",
            transform=ax.transAxes,
            fontsize="xx-small",
            va="top",
            ha="right",
        )
    ax.set(
        xlabel="mean row entropy of P / ln n",
        ylabel="ln(err low-rank / err sparse)\n(< 0: low-rank better)",
    )
    ax.set_title(f"oracles at b = {budget}, {METRIC_AXIS.get(metric, metric)}", fontsize="small")
    return ax


def plot_family_heatmap(
    run: CompareResult,
    family: str,
    budget: int,
    metric: str | None = None,
    ax: Axes | None = None,
    norm: Any = None,
    colorbar: bool = True,
) -> Axes:
    """Layer (layer 1 at the bottom) x head heatmap of one family's mean error, with its
    ticks, axis labels and (``colorbar``) a labelled colour bar. A figure of several panels
    passes the same ``norm`` to each and ``colorbar=False``, and draws one bar from
    ``ax.images[0]``."""
    ax = axes_or_new(ax, (SINGLE_COLUMN, 2.4))
    metric = _metric(run, metric)
    values = run.values(family, budget, metric)  # (L, H)
    layers, heads = values.shape
    image = ax.imshow(
        values, cmap="magma_r", norm=norm, origin="lower", aspect="auto", interpolation="nearest"
    )
    step = max(1, -(-heads // 12))
    ax.set_xticks(range(0, heads, step), [str(h) for h in range(1, heads + 1, step)])
    ax.set_yticks(range(layers), [str(layer) for layer in range(1, layers + 1)])
    ax.set(xlabel="head", ylabel="layer (1 = bottom)")
    ax.tick_params(length=0, labelsize="x-small")
    for spine in ax.spines.values():
        spine.set_visible(False)
    if colorbar:
        ax.set_title(f"{family}, b = {budget}", fontsize="small")
        bar = ax.figure.colorbar(image, ax=ax, pad=0.02)
        bar.set_label(f"mean {METRIC_AXIS.get(metric, metric)}", fontsize="x-small")
        bar.ax.tick_params(labelsize="x-small")
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


def _write_run(run: CompareResult, out: Path) -> list[Path]:
    """The comparison figures of a run into ``out`` (PDF and PNG): error against budget,
    winner maps, the oracles' ratio against entropy, and heatmaps at the focus budget."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    budget = int(run.config["focus_budget"])
    metric = _metric(run, None)
    title = (
        f"{run_label(run.config)}, n = {run.config['seq_len']}, N = {run.config['num_sequences']}"
    )
    written: list[Path] = []
    with paper_style():
        fig, axes = plt.subplots(
            1, 2, figsize=(DOUBLE_COLUMN, 3.0), layout="constrained", sharey=True
        )
        known = run.config.get("oracles", ORACLES)
        oracles = [f for f in run.families if f in known]
        others = [f for f in run.families if f not in known]
        plot_error_vs_budget(
            run, metric, axes[0], legend=False, families=[*oracles, "zero", "uniform"]
        )
        plot_error_vs_budget(run, metric, axes[1], legend=False, families=others)
        for ax in axes:
            below_legend(ax, ncol=3)
        axes[0].set_title("oracles (read P or every score)", fontsize="small")
        axes[1].set_title("from Q and K only", fontsize="small")
        axes[1].set_ylabel("")
        fig.suptitle(title, fontsize="small")
        written += save(fig, out / "error_vs_budget")

        budgets = run.budgets
        fig, axes = plt.subplots(
            2, len(budgets), figsize=(DOUBLE_COLUMN, 3.9), layout="constrained", squeeze=False
        )
        for b, top, bottom in zip(budgets, axes[0], axes[1], strict=True):
            plot_winner_map(run, b, top, legend=False)
            plot_winner_map(run, b, bottom, from_q_k=True, legend=False)
            top.set_xlabel("")
        for panel in axes[:, 1:].flat:
            panel.set_ylabel("")
        axes[0, 0].set_ylabel("all families\nlayer")
        axes[1, 0].set_ylabel("from Q and K only\nlayer")
        _winner_legend(run, fig)
        fig.suptitle(f"{title}: least {METRIC_AXIS.get(metric, metric)}", fontsize="small")
        written += save(fig, out / "winners")

        if {"lowrank-oracle", "sparse-oracle"} <= set(run.families):
            fig, ax = plt.subplots(figsize=(SINGLE_COLUMN, 2.6), layout="constrained")
            plot_ratio_vs_entropy(run, budget, metric, ax)
            written += save(fig, out / f"ratio_vs_entropy_b{budget}")

        shown = [
            f
            for f in run.families
            if f != "zero" and np.isfinite(run.values(f, budget, metric)).any()
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
            rows,
            cols,
            figsize=(DOUBLE_COLUMN, 1.45 * rows + 0.5),
            layout="constrained",
            squeeze=False,
        )
        image = None
        layers, heads = run.arrays["entropy_mean"].shape
        for i, (family, panel) in enumerate(zip(shown, axes.flat, strict=False)):
            drawn = plot_family_heatmap(run, family, budget, metric, panel, norm, colorbar=False)
            image = drawn.images[0]
            panel.tick_params(length=2, pad=1)
            panel.set(xticks=[], yticks=[], xlabel="", ylabel="")
            if i % cols == 0:
                panel.set_yticks([0, layers - 1], ["1", str(layers)], fontsize="x-small")
                panel.set_ylabel("layer", fontsize="x-small")
            if i >= len(shown) - cols:
                panel.set_xticks([0, heads - 1], ["1", str(heads)], fontsize="x-small")
                panel.set_xlabel("head", fontsize="x-small")
        for panel in list(axes.flat)[len(shown) :]:
            panel.set_visible(False)
        if image is not None:
            bar = fig.colorbar(image, ax=axes, shrink=0.9, pad=0.01)
            bar.set_label(f"mean {metric.replace('_', ' ')} (log scale)")
        fig.suptitle(f"{title}, b = {budget}", fontsize="small")
        written += save(fig, out / f"heatmaps_b{budget}")
    return written
