"""Figures of a ``lowrank project`` run: error against k, and a layer x head heatmap."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lowrank.errors import LowrankError
from lowrank.plots.style import (
    DOUBLE_COLUMN,
    SINGLE_COLUMN,
    axes_or_new,
    below_legend,
    merged_legend,
    paper_style,
    per_run,
    readable_log_ticks,
    save,
)
from lowrank.runs.labels import run_label

if TYPE_CHECKING:
    from collections.abc import Sequence

    from matplotlib.axes import Axes

    from lowrank.families.project.result import ProjectionResult

KIND_LABEL = {
    "theorem1": "Theorem 1: ||P~w - Pw||_2 / ||Pw||_2",
    "theorem2": "Theorem 2: ||O~ - O||_F / ||O||_F",
}
METRIC_LABEL = {
    "error": "relative error",
    "scale-free": "scale-free error (best rescale)",
    "cosine": "cosine with exact output",
}
# references (black) bound what a rank-k answer can reach; baselines (grey, drawn under the
# methods) are the trivial answers a method must beat. Zero attention's error is exactly 1
# and uniform's is close to it, as are weak methods': the baselines differ in dash and
# width so that all three stay apart where they meet.
REFERENCE_STYLE: dict[str, dict[str, Any]] = {
    "svd": {"color": "k", "ls": "--", "lw": 1.0, "label": "reference: best rank-k of P (SVD)"},
    "output-floor": {
        "color": "k",
        "ls": ":",
        "lw": 1.0,
        "marker": "x",
        "ms": 3,
        "label": "reference: output floor ||PV - (PV)_k||",
    },
    "zero": {
        "color": "0.3",
        "ls": (0, (5, 2, 1, 2)),
        "lw": 1.0,
        "zorder": 1.6,
        "label": "baseline: zero attention",
    },
    "uniform": {
        "color": "0.75",
        "ls": "-",
        "lw": 3.0,
        "zorder": 1.5,
        "label": "baseline: uniform attention",
    },
}
ESTIMATOR_DASH = {"paper": "-", "projector": "--"}


def _family(row: str) -> tuple[str, str | None]:
    """``gaussian[paper]`` -> ("gaussian", "paper"); ``mean-pool`` -> ("mean-pool", None)."""
    if row.endswith("]") and "[" in row:
        method, estimator = row[:-1].split("[", 1)
        return method, estimator
    return row, None


def plot_error_vs_k(
    run: ProjectionResult,
    kind: str,
    ax: Axes | None = None,
    legend: bool = True,
    metric: str = "error",
) -> Axes:
    """Mean ``metric`` (over sequences, draws, layers, heads) against k on log axes (the
    cosine on a linear y axis).

    One colour per projection family; under Theorem 1 the ``paper`` estimator (P R^T R) is
    solid and the ``projector`` one (P E^+ E) dashed. Black: the references, the best
    rank-k approximation of P (dashed; a floor for ||P~ - P|| only) and the output floor
    (dotted; the true floor for any rank-k output; where it is exactly 0, off a log axis,
    its legend entry says from which k). Grey, under the methods: the trivial baselines,
    zero attention (dash-dot) and uniform attention (wide pale line). ``legend`` puts the
    legend below the axes.
    """
    import seaborn as sns

    ax = axes_or_new(ax, (SINGLE_COLUMN, 3.4))
    ks = run.ks
    rows = run.rows(kind)
    families = list(dict.fromkeys(_family(r)[0] for r in rows if r not in REFERENCE_STYLE))
    colours = dict(zip(families, sns.color_palette("colorblind", len(families)), strict=True))
    markers = dict(zip(families, "osD^vP*X", strict=False))
    log_y = metric != "cosine"
    for row in rows:
        try:
            mean = run.stat(kind, row, "mean", metric)
        except LowrankError:
            continue  # format_version 1 runs have no scale-free error or cosine
        if np.isnan(mean).all():
            continue
        y = np.nanmean(mean, axis=(1, 2))
        if row in REFERENCE_STYLE:
            style = dict(REFERENCE_STYLE[row])
            if log_y and (y <= 0).any():
                # the output floor is exactly 0 once k >= rank PV (<= d): off a log axis
                zero = np.flatnonzero(y <= 0)
                where = "at every k" if zero.size == len(ks) else f"for k >= {int(ks[zero[0]])}"
                style["label"] += f"\n= 0 {where} (off the log axis)"
                y = np.where(y > 0, y, np.nan)
            ax.plot(ks, y, **style)
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
    ax.set(xscale="log", xlabel="projected dimension k", ylabel=METRIC_LABEL[metric])
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    if log_y:
        ax.set_yscale("log")
        readable_log_ticks(ax)
    ax.set_title(
        f"{KIND_LABEL[kind]}\nmean over sequences, draws, layers and heads", fontsize="small"
    )
    if legend:
        below_legend(ax)
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
    from lowrank.maths.sketches import SHARING_DESIGN

    if sharing not in SHARING_DESIGN:
        return sharing
    level, same_r = SHARING_DESIGN[sharing]
    return f"{sharing} (per {level}, {'one R for E, F' if same_r else 'separate E, F'})"


EFFECT_LABEL = {
    "cosine": "cosine with the exact final states",
    "relative_error": "relative error of the final states",
    "scale_free": "scale-free error of the final states",
}


def plot_effect(
    run: ProjectionResult,
    family: str,
    ax: Axes | None = None,
    metric: str = "cosine",
    legend: bool = True,
) -> Axes | None:
    """Model-level ``cosine`` (``relative_error``, ``scale_free``) of the final hidden states
    against k for one random projection ``family`` (E = delta R, F = exp(-delta) R), a
    coloured line per sharing strategy; every deterministic method (pooling) in black and
    the trivial baselines (every layer's attention replaced by zero or uniform attention) as
    grey horizontal lines, for reference. ``legend`` puts the legend below the axes. None
    when the run has no model effect."""
    effect = run.config.get("model_effect") or {}
    results = effect.get("results") or []
    if not results:
        return None
    import seaborn as sns

    ax = axes_or_new(ax, (SINGLE_COLUMN, 3.2))
    groups: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for r in results:
        if r["k"] is None:
            style = REFERENCE_STYLE[r["method"]]
            ax.axhline(r[metric], **{k: v for k, v in style.items() if k not in ("marker", "ms")})
        elif r["method"] == family or r["sharing"] == "n/a":
            groups.setdefault((r["method"], r["sharing"]), []).append((r["k"], r[metric]))
    sharings = [sh for (m, sh) in groups if m == family]
    colours = dict(zip(sharings, sns.color_palette("colorblind", len(sharings)), strict=True))
    pooled = [m for (m, sh) in groups if m != family]
    markers = dict(zip(pooled, "^vDs", strict=False))
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
                label=f"{family}, {_sharing_label(sharing)}",
            )
        else:
            ax.plot(
                ks,
                values,
                color="k",
                marker=markers[method],
                mfc="none",
                ms=3,
                lw=1,
                label=f"{method} (deterministic)",
            )
    ax.set(xscale="log", xlabel="projected dimension k", ylabel=EFFECT_LABEL[metric])
    ax.set_xticks(run.ks, [str(k) for k in run.ks])
    ax.minorticks_off()
    others = f"\nblack: {', '.join(pooled)} (deterministic)" if pooled else ""
    ax.set_title(
        f"every layer's K, V projected: final hidden states\n{family} "
        r"($E = \delta R$, $F = e^{-\delta} R$), "
        f"a line per sharing{others}",
        fontsize="small",
    )
    if legend:
        handles = ax.get_legend_handles_labels()[0]
        baselines = [h for h in handles if str(h.get_label()).startswith("baseline")]
        below_legend(ax, [h for h in handles if h not in baselines] + baselines, ncol=1)
    return ax


def plot_error_heatmap(
    run: ProjectionResult, method: str, k: int, kind: str = "theorem2", ax: Axes | None = None
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
        f"{run_label(run.config)}, N = {run.config['num_sequences']}\n"
        f"{KIND_LABEL[kind].split(':')[0]}, {method}, k = {k}",
        fontsize="medium",
    )
    return ax


def heatmap_method(run: ProjectionResult, kind: str) -> str:
    """The row a heatmap shows by default: the first method of ``kind`` that is neither a
    reference nor a baseline (``gaussian``; under Theorem 1 ``gaussian[paper]``)."""
    rows = run.rows(kind)
    return next((r for r in rows if r not in REFERENCE_STYLE), rows[0])


def write_figures(results: Sequence[ProjectionResult], out: Path) -> list[Path]:
    """Each run's error-vs-k panels, model effect and heatmap, into ``out`` (one run) or
    ``out/<run>`` (several), PDF and PNG each; returns the files written."""
    written: list[Path] = []
    for run, folder in per_run(results, out):
        written += _write_run(run, folder)
    return written


def _write_run(run: ProjectionResult, out: Path) -> list[Path]:
    """Error-vs-k panels, the model effect and the heatmap of a run, into ``out`` (PDF and
    PNG each); returns the files written."""
    import matplotlib.pyplot as plt

    written: list[Path] = []
    title = (
        f"{run_label(run.config)}, n = {run.config['seq_len']}, N = {run.config['num_sequences']}"
    )
    with paper_style():
        fig, axes = plt.subplots(2, 2, figsize=(DOUBLE_COLUMN, 5.2), layout="constrained")
        for col, metric in enumerate(("error", "scale-free")):
            plot_error_vs_k(run, "theorem1", axes[0, col], legend=False, metric=metric)
            plot_error_vs_k(run, "theorem2", axes[1, col], legend=False, metric=metric)
        merged_legend(fig, [axes[0, 0], axes[1, 0]], ncol=4)
        fig.suptitle(
            title + "\nTheorem 1 rows: solid = paper estimator P R^T R (n E^T E / tr for "
            "pooling), dashed = projector P E^+ E",
            fontsize="small",
        )
        written += save(fig, out / "error_vs_k")
        results = (run.config.get("model_effect") or {}).get("results") or []
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
                ax.set_title(ax.get_title().split("\n", 1)[1], fontsize="small")  # as suptitle
            merged_legend(fig, list(axes[0]), ncol=3)
            fig.suptitle(
                f"{title}: every layer's K, V projected (one draw of E, F per configuration); "
                "grey: every layer's attention replaced by a baseline",
                fontsize="small",
            )
            written += save(fig, out / "model_effect")
        method = heatmap_method(run, "theorem2")
        fig, ax = plt.subplots(figsize=(SINGLE_COLUMN, 2.6), layout="constrained")
        plot_error_heatmap(run, method, int(run.config["heatmap_k"]), ax=ax)
        written += save(fig, out / f"heatmap_{method}_k{run.config['heatmap_k']}")
    return written
