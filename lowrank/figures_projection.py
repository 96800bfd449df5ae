"""Figures of a ``lowrank project`` run: error against k, and a layer x head heatmap."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lowrank.figures import (
    DOUBLE_COLUMN,
    SINGLE_COLUMN,
    axes_or_new,
    bottom_legend,
    paper_style,
    readable_log_ticks,
    save,
)
from lowrank.runs import ProjectionRun, read_projection_run

if TYPE_CHECKING:
    from matplotlib.axes import Axes

KIND_LABEL = {
    "theorem1": "Theorem 1: ||P~w - Pw|| / ||Pw||",
    "theorem2": "Theorem 2: head output error",
}


def plot_error_vs_k(
    run: ProjectionRun, kind: str, ax: Axes | None = None, legend: bool = True
) -> Axes:
    """Mean error (over sequences, draws, layers, heads) against k on log-log axes.

    One line per method; the best rank-k approximation (``svd``) is the dashed black line
    no rank-k method can beat. Error bars span the median to the 95th percentile.
    """
    ax = axes_or_new(ax)
    ks = run.ks
    markers = iter("osD^vP*X")
    for method in run.methods:
        mean = run.stat(kind, method, "mean")
        if np.isnan(mean).all():
            continue
        y = np.nanmean(mean, axis=(1, 2))
        p95 = np.nanmean(run.stat(kind, method, "p95"), axis=(1, 2))
        style = (
            {"color": "k", "ls": "--", "marker": None}
            if method == "svd"
            else {"marker": next(markers), "mfc": "none"}  # open markers show overlaps
        )
        label = "best rank-k (SVD)" if method == "svd" else method
        ax.plot(ks, y, ms=3, lw=1.1, label=label, **style)
        if method != "svd":
            ax.fill_between(ks, y, p95, alpha=0.12, lw=0)
    ax.set(xscale="log", yscale="log", xlabel="projected dimension k", ylabel="relative error")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_title(KIND_LABEL[kind], fontsize="medium")
    if legend:
        ax.legend(frameon=False, fontsize="x-small")
    return ax


def plot_effect(run: ProjectionRun, ax: Axes | None = None) -> Axes | None:
    """Model-level relative error of the final hidden states against k, per method/sharing."""
    effect = run.meta.get("model_effect") or {}
    results = effect.get("results") or []
    if not results:
        return None
    import seaborn as sns
    from matplotlib.lines import Line2D

    ax = axes_or_new(ax)
    groups: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for r in results:
        groups.setdefault((r["method"], r["sharing"]), []).append((r["k"], r["relative_error"]))
    methods = list(dict.fromkeys(m for m, _ in groups))
    colours = dict(zip(methods, sns.color_palette("colorblind", len(methods)), strict=True))
    dashes = {"none": "-", "headwise": "--", "key-value": "-.", "layerwise": ":", "n/a": "-"}
    for (method, sharing), points in groups.items():
        ks, err = zip(*sorted(points), strict=True)
        ax.plot(ks, err, color=colours[method], ls=dashes[sharing], marker="o", ms=2.5, lw=1)
    handles = [Line2D([], [], color=colours[m], lw=1.2, label=m) for m in methods]
    shared = [s for s in dashes if s != "n/a" and any(g[1] == s for g in groups)]
    handles += [Line2D([], [], color="0.4", ls=dashes[s], lw=1, label=s) for s in shared]
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="projected dimension k",
        ylabel="relative error of final states",
    )
    ax.set_xticks(run.ks, [str(k) for k in run.ks])
    readable_log_ticks(ax)
    ax.set_title("Model: every layer's K, V projected", fontsize="medium")
    ax.legend(handles=handles, frameon=False, fontsize="xx-small", ncol=2, loc="lower left")
    return ax


def plot_error_heatmap(
    run: ProjectionRun, method: str, k: int, kind: str = "theorem2", ax: Axes | None = None
) -> Axes:
    """Layer (rows, layer 1 at the bottom) x head heatmap of the mean error at one k."""
    import seaborn as sns

    ax = axes_or_new(ax, (SINGLE_COLUMN, 2.6))
    ki = int(np.flatnonzero(run.ks == k)[0])
    values = run.stat(kind, method, "mean")[ki]  # (L, H)
    layers, heads = values.shape
    sns.heatmap(
        values[::-1],
        ax=ax,
        cmap="magma_r",
        annot=layers * heads <= 96,
        fmt=".2f",
        annot_kws={"fontsize": 4.5},
        cbar_kws={"label": "mean relative error"},
        xticklabels=list(range(1, heads + 1)),
        yticklabels=list(range(layers, 0, -1)),
    )
    ax.set(xlabel="head", ylabel="layer (1 = bottom)")
    ax.tick_params(axis="both", length=0, labelsize="small")
    ax.tick_params(axis="y", rotation=0)
    ax.set_title(
        f"{run.meta['model']['name']} / {run.meta['corpus']['dataset']}, "
        f"N = {run.meta['num_sequences']}\n{KIND_LABEL[kind].split(':')[0]}, {method}, k = {k}",
        fontsize="medium",
    )
    return ax


def plot_projection_folder(folder: Path, out: Path | None = None) -> list[Path]:
    """Error-vs-k panels and the heatmap of one projection run, into ``folder/figures``."""
    import matplotlib.pyplot as plt

    run = read_projection_run(folder)
    out = out or folder / "figures"
    written: list[Path] = []
    title = (
        f"{run.meta['model']['name']} / {run.meta['corpus']['dataset']}, "
        f"n = {run.meta['seq_len']}, N = {run.meta['num_sequences']}"
    )
    with paper_style():
        has_effect = bool((run.meta.get("model_effect") or {}).get("results"))
        panels = 3 if has_effect else 2
        fig, axes = plt.subplots(1, panels, figsize=(DOUBLE_COLUMN, 2.6), layout="constrained")
        plot_error_vs_k(run, "theorem1", axes[0], legend=False)
        plot_error_vs_k(run, "theorem2", axes[1], legend=False)
        bottom_legend(fig, axes[0])
        if has_effect:
            plot_effect(run, axes[2])
        fig.suptitle(title, fontsize="medium")
        written += save(fig, out / "error_vs_k")
        method = next((m for m in run.methods if m != "svd"), run.methods[0])
        fig, ax = plt.subplots(figsize=(SINGLE_COLUMN, 2.6), layout="constrained")
        plot_error_heatmap(run, method, int(run.meta["heatmap_k"]), ax=ax)
        written += save(fig, out / f"heatmap_{method}_k{run.meta['heatmap_k']}")
    return written
