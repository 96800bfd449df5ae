"""Figures of a ``lowrank project`` run: error against k, and a layer x head heatmap."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lowrank.errors import LowrankError
from lowrank.plots.spectrum import (
    DOUBLE_COLUMN,
    SINGLE_COLUMN,
    axes_or_new,
    paper_style,
    readable_log_ticks,
    save,
)
from lowrank.runs.folders import ProjectionRun, read_projection_run

if TYPE_CHECKING:
    from matplotlib.axes import Axes

KIND_LABEL = {
    "theorem1": "Theorem 1: ||P~w - Pw||_2 / ||Pw||_2",
    "theorem2": "Theorem 2: ||O~ - O||_F / ||O||_F",
}
METRIC_LABEL = {
    "error": "relative error",
    "scale-free": "scale-free error (best rescale)",
    "cosine": "cosine with exact output",
}
REFERENCE_STYLE: dict[str, dict[str, Any]] = {
    "svd": {"color": "k", "ls": "--", "label": "best rank-k of P (SVD)"},
    "output-floor": {
        "color": "k",
        "ls": ":",
        "marker": "x",
        "ms": 3,
        "label": "output floor ||PV - (PV)_k||",
    },
    "zero": {"color": "0.55", "ls": "-.", "label": "zero attention"},
    "uniform": {"color": "0.55", "ls": "-", "label": "uniform attention"},
}
ESTIMATOR_DASH = {"paper": "-", "projector": "--"}


def _family(row: str) -> tuple[str, str | None]:
    """``gaussian[paper]`` -> ("gaussian", "paper"); ``mean-pool`` -> ("mean-pool", None)."""
    if row.endswith("]") and "[" in row:
        method, estimator = row[:-1].split("[", 1)
        return method, estimator
    return row, None


def plot_error_vs_k(
    run: ProjectionRun,
    kind: str,
    ax: Axes | None = None,
    legend: bool = True,
    metric: str = "error",
) -> Axes:
    """Mean ``metric`` (over sequences, draws, layers, heads) against k on log axes.

    One colour per projection family; under Theorem 1 the ``paper`` estimator (P R^T R) is
    solid and the ``projector`` one (P E^+ E) dashed. Black: the best rank-k approximation of
    P (dashed; a floor for ||P~ - P|| only) and the output floor (dotted; the true floor
    for any rank-k output). Grey: the trivial baselines, zero and uniform attention.
    """
    import seaborn as sns

    ax = axes_or_new(ax)
    ks = run.ks
    rows = run.rows(kind)
    families = list(dict.fromkeys(_family(r)[0] for r in rows if r not in REFERENCE_STYLE))
    colours = dict(zip(families, sns.color_palette("colorblind", len(families)), strict=True))
    markers = dict(zip(families, "osD^vP*X", strict=False))
    for row in rows:
        try:
            mean = run.stat(kind, row, "mean", metric)
        except LowrankError:
            continue  # format_version 1 runs have no scale-free error or cosine
        if np.isnan(mean).all():
            continue
        y = np.nanmean(mean, axis=(1, 2))
        if row in REFERENCE_STYLE:
            if metric != "cosine" and (y <= 0).any():
                # the output floor is exactly 0 once k >= d: off a log axis, so say so
                first = int(ks[np.flatnonzero(y <= 0)[0]])
                ax.text(
                    0.03,
                    0.03,
                    f"output floor = 0 for k >= {first} (rank PV <= d)",
                    transform=ax.transAxes,
                    fontsize="xx-small",
                )
                y = np.where(y > 0, y, np.nan)
            ax.plot(ks, y, lw=1.0, **REFERENCE_STYLE[row])
            continue
        family, estimator = _family(row)
        ax.plot(
            ks,
            y,
            color=colours[family],
            ls=ESTIMATOR_DASH.get(estimator or "paper", "-"),
            marker=markers[family],
            mfc="none",  # open markers show overlaps
            ms=3,
            lw=1.1,
            label=row if kind == "theorem1" else f"{row} (Linformer head)",
        )
    log_y = metric != "cosine"
    ax.set(xscale="log", xlabel="projected dimension k", ylabel=METRIC_LABEL[metric])
    if log_y:
        ax.set_yscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_title(f"{KIND_LABEL[kind]}\n{METRIC_LABEL[metric]}", fontsize="small")
    if legend:
        ax.legend(frameon=False, fontsize="x-small")
    return ax


SHARING_DASH: dict[str, Any] = {
    "none": "-",
    "none-same-R": (0, (1, 1)),
    "headwise": "--",
    "key-value": "-.",
    "layerwise-separate": (0, (5, 1, 1, 1, 1, 1)),
    "layerwise": ":",
}


def _sharing_label(sharing: str) -> str:
    """``none (per head, separate E, F)``: the strategy and its place in the sharing grid."""
    from lowrank.projections.sketches import SHARING_DESIGN

    if sharing not in SHARING_DESIGN:
        return sharing
    level, same_r = SHARING_DESIGN[sharing]
    return f"{sharing} (per {level}, {'one R for E, F' if same_r else 'separate E, F'})"


def plot_effect(
    run: ProjectionRun,
    family: str,
    ax: Axes | None = None,
    metric: str = "cosine",
    legend: bool = True,
) -> Axes | None:
    """Model-level ``cosine`` (or ``relative_error``) of the final hidden states against k
    for one random projection ``family``, a line per sharing strategy; every deterministic
    method (pooling) in black and the trivial baselines (every layer's attention replaced by
    zero or uniform attention) as grey horizontal lines, for reference."""
    effect = run.meta.get("model_effect") or {}
    results = effect.get("results") or []
    if not results:
        return None
    import seaborn as sns

    ax = axes_or_new(ax)
    groups: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for r in results:
        if r["k"] is None:
            style = REFERENCE_STYLE[r["method"]]
            ax.axhline(
                r[metric], color=style["color"], ls=style["ls"], lw=0.9, label=style["label"]
            )
        elif r["method"] == family or r["sharing"] == "n/a":
            groups.setdefault((r["method"], r["sharing"]), []).append((r["k"], r[metric]))
    sharings = [sh for (m, sh) in groups if m == family]
    colours = dict(zip(sharings, sns.color_palette("colorblind", len(sharings)), strict=True))
    for (method, sharing), points in groups.items():
        ks, values = zip(*sorted(points), strict=True)
        if method == family:
            ax.plot(
                ks,
                values,
                color=colours[sharing],
                ls=SHARING_DASH.get(sharing, "-"),
                marker="o",
                ms=2.5,
                lw=1,
                label=_sharing_label(sharing),
            )
        else:
            ax.plot(ks, values, color="k", marker="^", mfc="none", ms=3, lw=1, label=method)
    ylabel = (
        "cosine with exact final states"
        if metric == "cosine"
        else ("relative error of final states")
    )
    ax.set(xscale="log", xlabel="projected dimension k", ylabel=ylabel)
    ax.set_xticks(run.ks, [str(k) for k in run.ks])
    ax.minorticks_off()
    ax.set_title(f"{family}: E = delta R, F = exp(-delta) R", fontsize="small")
    if legend:
        ax.legend(frameon=False, fontsize="xx-small", loc="upper left")
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
        cbar_kws={"label": "mean " + KIND_LABEL[kind].split(": ", 1)[1]},
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


def _merged_legend(fig: Any, axes: list[Axes]) -> None:
    """One legend below the panels with every distinct entry of ``axes``."""
    entries: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            entries.setdefault(label, handle)
    fig.legend(
        list(entries.values()),
        list(entries),
        loc="outside lower center",
        ncol=min(len(entries), 5),
        frameon=False,
        fontsize="x-small",
    )


def plot_projection_folder(folder: Path, out: Path | None = None) -> list[Path]:
    """Error-vs-k panels and the heatmap of one projection run, into ``folder/figures``."""
    return plot_projection_run(read_projection_run(folder), out or folder / "figures")


def plot_projection_run(run: ProjectionRun, out: Path) -> list[Path]:
    """Error-vs-k panels, the model effect and the heatmap of a run, into ``out`` (PDF and
    PNG each); returns the files written."""
    import matplotlib.pyplot as plt

    written: list[Path] = []
    title = (
        f"{run.meta['model']['name']} / {run.meta['corpus']['dataset']}, "
        f"n = {run.meta['seq_len']}, N = {run.meta['num_sequences']}"
    )
    with paper_style():
        fig, axes = plt.subplots(2, 2, figsize=(DOUBLE_COLUMN, 5.2), layout="constrained")
        for col, metric in enumerate(("error", "scale-free")):
            plot_error_vs_k(run, "theorem1", axes[0, col], legend=False, metric=metric)
            plot_error_vs_k(run, "theorem2", axes[1, col], legend=False, metric=metric)
        for ax in axes.flat:
            lo, hi = ax.get_ylim()
            if hi / lo < 10:
                readable_log_ticks(ax)
        _merged_legend(fig, [axes[0, 0], axes[1, 0]])
        fig.suptitle(
            title + "\nTheorem 1 rows: solid = paper estimator P R^T R (n E^T E / tr for "
            "pooling), dashed = projector P E^+ E",
            fontsize="small",
        )
        written += save(fig, out / "error_vs_k")
        results = (run.meta.get("model_effect") or {}).get("results") or []
        families = list(
            dict.fromkeys(
                r["method"] for r in results if r["k"] is not None and r["sharing"] != "n/a"
            )
        )
        if results and families:
            fig, axes = plt.subplots(
                1,
                len(families),
                figsize=(DOUBLE_COLUMN, 2.8),
                layout="constrained",
                sharey=True,
                squeeze=False,
            )
            for ax, family in zip(axes[0], families, strict=True):
                plot_effect(run, family, ax, legend=False)
            _merged_legend(fig, list(axes[0]))
            fig.suptitle(
                f"{title}: every layer's K, V projected (one draw of E, F per configuration); "
                "grey: every layer's attention replaced by a baseline",
                fontsize="small",
            )
            written += save(fig, out / "model_effect")
        method = next((m for m in run.methods if m != "svd"), run.methods[0])
        fig, ax = plt.subplots(figsize=(SINGLE_COLUMN, 2.6), layout="constrained")
        plot_error_heatmap(run, method, int(run.meta["heatmap_k"]), ax=ax)
        written += save(fig, out / f"heatmap_{method}_k{run.meta['heatmap_k']}")
    return written
