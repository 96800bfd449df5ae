"""Figures of a ``lowrank project`` run: error against k, the model effect, a heatmap.

Each panel carries one message and at most about six legend entries: the random projection
families whose means agree (Gaussian, Rademacher and sparse JL do, within a few percent)
are drawn once, the legend saying which others it stands for and how close they are; the
run's figure puts each estimator in a column of its own (:func:`error_figure`). Formulas are
mathtext, the run is named by :func:`lowrank.runs.labels.run_label`. The model effect is in
:mod:`lowrank.families.project.effect_plots`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lowrank.errors import LowrankError
from lowrank.families.project.effect_plots import effect_figure
from lowrank.families.project.styles import REFERENCE_STYLE
from lowrank.maths.names import JL_METHODS
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
    from matplotlib.figure import Figure

    from lowrank.families.project.result import ProjectionResult

KIND_LABEL = {
    "theorem1": r"Theorem 1: $\|\tilde{P}w - Pw\|_2\,/\,\|Pw\|_2$",
    "theorem2": r"Theorem 2: $\|\tilde{O} - O\|_F\,/\,\|O\|_F$",
}
ESTIMATOR_LABEL = {
    "paper": r"$\tilde{P} = PR^{\mathsf{T}}R$ (paper)",
    "projector": r"$\tilde{P} = PE^{+}E$ (projector)",
}
METRIC_LABEL = {
    "error": "relative error",
    "scale-free": "scale-free error (best rescale)",
    "cosine": "cosine with exact output",
}
ESTIMATOR_DASH = {"paper": "-", "projector": "--"}
AGREE = 0.10
"""Relative difference of the mean errors (every k, kind, estimator, raw and scale-free)
within which JL families are drawn as one line (:func:`jl_stand_ins`)."""
FLOOR = 0.01
"""Errors below it count as exact when JL families are compared: at k = n the projector is
exact for every family (1e-6 against 2e-6 is not a 100% difference a reader could see)."""


def _family(row: str) -> tuple[str, str | None]:
    """``gaussian[paper]`` -> ("gaussian", "paper"); ``mean-pool`` -> ("mean-pool", None)."""
    if row.endswith("]") and "[" in row:
        method, estimator = row[:-1].split("[", 1)
        return method, estimator
    return row, None


def _curve(run: ProjectionResult, kind: str, row: str, metric: str) -> np.ndarray | None:
    """[K] mean over layers and heads of one row's ``metric`` (None: not in the run)."""
    try:
        mean = run.stat(kind, row, "mean", metric)
    except LowrankError:
        return None  # format_version 1 runs have no scale-free error or cosine
    if np.isnan(mean).all():
        return None
    return np.nanmean(mean, axis=(1, 2))


def jl_stand_ins(run: ProjectionResult) -> dict[str, tuple[list[str], float]]:
    """JL families drawn as one: the first JL method of the run stands for the others whose
    mean raw and scale-free errors (every kind, estimator and k) are within :data:`AGREE`
    of its own, relatively. Returns ``{stand-in: (the families it stands for, the largest
    relative difference)}``; a family that differs more is drawn on its own."""
    jl = [m for m in run.methods if m in JL_METHODS]
    if len(jl) < 2:
        return {}
    first, others = jl[0], []
    worst = 0.0
    for other in jl[1:]:
        gaps = []
        for kind in ("theorem1", "theorem2"):
            for row in run.rows(kind):
                family, estimator = _family(row)
                if family != first:
                    continue
                twin = other if estimator is None else f"{other}[{estimator}]"
                for metric in ("error", "scale-free"):
                    a, b = _curve(run, kind, row, metric), _curve(run, kind, twin, metric)
                    if a is not None and b is not None:
                        scale = np.maximum(np.abs(a), FLOOR)
                        gaps.append(float(np.max(np.abs(b - a) / scale)))
        if gaps and max(gaps) <= AGREE:
            others.append(other)
            worst = max(worst, *gaps)
    return {first: (others, worst)} if others else {}


def _stand_in_note(family: str, stand_ins: dict[str, tuple[list[str], float]]) -> str:
    if family not in stand_ins:
        return ""
    others, worst = stand_ins[family]
    return f" (= {', '.join(others)} within {max(1, math.ceil(100 * worst))}%)"


def plot_error_vs_k(
    run: ProjectionResult,
    kind: str,
    ax: Axes | None = None,
    legend: bool = True,
    metric: str = "error",
    estimator: str | None = None,
    labels: str = "row",
) -> Axes:
    """Mean ``metric`` (over sequences, draws, layers, heads) against k on log axes (the
    cosine on a linear y axis).

    One colour per projection family; JL families whose means agree are drawn once
    (:func:`jl_stand_ins`, the legend names them). Under Theorem 1 only ``estimator``'s
    rows (None: every estimator, ``paper`` P R^T R solid, ``projector`` P E^+ E dashed).
    Black: the references, the best rank-k approximation of P (dashed; a floor for
    ||P~ - P|| only) and the output floor (dotted; the true floor for any rank-k output;
    where it is exactly 0, off a log axis, its legend entry says from which k). Grey, under
    the methods: the trivial baselines, zero attention (dash-dot) and uniform attention (wide
    pale line). ``labels``: ``row`` names lines by row (``gaussian[paper]``), ``family`` by
    family alone (for figures whose panels share one legend). ``legend`` puts the legend
    below the axes.
    """
    import seaborn as sns

    ax = axes_or_new(ax, (SINGLE_COLUMN, 3.4))
    ks = run.ks
    stand_ins = jl_stand_ins(run)
    hidden = {o for others, _ in stand_ins.values() for o in others}
    rows = [r for r in run.rows(kind) if _family(r)[0] not in hidden]
    if estimator is not None:
        rows = [r for r in rows if _family(r)[1] in (None, estimator)]
    families = list(dict.fromkeys(_family(r)[0] for r in rows if r not in REFERENCE_STYLE))
    colours = dict(zip(families, sns.color_palette("colorblind", len(families)), strict=True))
    markers = dict(zip(families, "osD^vP*X", strict=False))
    log_y = metric != "cosine"
    for row in rows:
        y = _curve(run, kind, row, metric)
        if y is None:
            continue
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
        if log_y:
            y = np.where(y > 0, y, np.nan)  # exact (0) at k = n: off a log axis
        family, est = _family(row)
        name = family if labels == "family" else row
        if kind == "theorem2" and labels != "family":
            name = f"{row} (Linformer head)"
        ax.plot(
            ks,
            y,
            color=colours[family],
            ls=ESTIMATOR_DASH.get(est or "paper", "-") if estimator is None else "-",
            marker=markers[family],
            mfc="none",  # open markers show overlaps
            ms=3.5,
            lw=1.2,
            zorder=3 - 0.1 * families.index(family),  # the first family on top
            label=name + _stand_in_note(family, stand_ins),
        )
    ax.set(xscale="log", xlabel="projected dimension k", ylabel=METRIC_LABEL[metric])
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    if log_y:
        ax.set_yscale("log")
        readable_log_ticks(ax)
    title = KIND_LABEL[kind]
    if kind == "theorem1" and estimator is not None:
        title = f"Theorem 1, {ESTIMATOR_LABEL.get(estimator, estimator)}"
    ax.set_title(title)
    if legend:
        below_legend(ax, fontsize="small")
    return ax


def _columns(run: ProjectionResult) -> list[tuple[str, str | None]]:
    """The run figure's columns: Theorem 1 under each estimator measured, then Theorem 2."""
    rows = run.rows("theorem1")
    estimators: list[str | None] = list(
        dict.fromkeys(e for r in rows if (e := _family(r)[1]) is not None)
    )
    return [("theorem1", e) for e in estimators or [None]] + [("theorem2", None)]


def error_figure(run: ProjectionResult) -> Figure:
    """Error against k, small multiples: a row per metric (relative, scale-free error), a
    column per estimator of Theorem 1 and one for Theorem 2's Linformer head, the y axis
    shared along a row; one legend of families, references and baselines below."""
    import matplotlib.pyplot as plt

    columns = _columns(run)
    fig, axes = plt.subplots(
        2,
        len(columns),
        figsize=(DOUBLE_COLUMN, 5.2),
        layout="constrained",
        sharex=True,
        sharey="row",
        squeeze=False,
    )
    for r, metric in enumerate(("error", "scale-free")):
        for c, (kind, estimator) in enumerate(columns):
            ax = axes[r, c]
            plot_error_vs_k(run, kind, ax, False, metric, estimator, labels="family")
            if c:
                ax.set_ylabel("")
            if r:
                ax.set_title("")
            else:
                ax.set_title(_column_title(kind, estimator))
            if r == 0:
                ax.set_xlabel("")
        readable_log_ticks(axes[r, 0])  # once the shared limits are known
    merged_legend(fig, list(axes.flat), ncol=3, fontsize="small")
    fig.suptitle(
        f"{run_label(run.config)}, n = {run.config['seq_len']}, "
        f"N = {run.config['num_sequences']}: mean over sequences, draws, layers and heads",
        fontsize="medium",
    )
    return fig


def _column_title(kind: str, estimator: str | None) -> str:
    if kind == "theorem2":
        return "Theorem 2, Linformer head\n" + r"$\|\tilde{O} - O\|_F\,/\,\|O\|_F$"
    head = "Theorem 1" if estimator is None else f"Theorem 1, {ESTIMATOR_LABEL[estimator]}"
    return head + "\n" + r"$\|\tilde{P}w - Pw\|_2\,/\,\|Pw\|_2$"


def plot_error_heatmap(
    run: ProjectionResult, method: str, k: int, kind: str = "theorem2", ax: Axes | None = None
) -> Axes:
    """Layer (rows, layer 1 at the bottom) x head heatmap of the mean error at one k, each
    cell's value written at the body font size where the grid is small enough to read."""
    import seaborn as sns

    ki = int(np.flatnonzero(run.ks == k)[0])
    values = run.stat(kind, method, "mean")[ki]  # (L, H)
    layers, heads = values.shape
    annotate = layers * heads <= ANNOTATED_CELLS
    ax = axes_or_new(ax, heatmap_size(layers, heads))
    big = np.nanmax(np.abs(values)) if np.isfinite(values).any() else 0.0
    sns.heatmap(
        values[::-1],
        ax=ax,
        cmap="magma_r",
        annot=annotate,
        fmt=".2f" if big < 10 else ".1f",
        annot_kws={"fontsize": "medium"},  # the body size
        cbar_kws={"label": "mean " + KIND_LABEL[kind].split(": ", 1)[1]},
        xticklabels=list(range(1, heads + 1)),
        yticklabels=list(range(layers, 0, -1)),
    )
    ax.set(xlabel="head", ylabel="layer (1 = bottom)")
    ax.tick_params(axis="both", length=0)
    ax.tick_params(axis="y", rotation=0)
    ax.set_title(
        f"{run_label(run.config)}, N = {run.config['num_sequences']}\n"
        f"{KIND_LABEL[kind].split(':')[0]}, {method}, k = {k}"
    )
    return ax


ANNOTATED_CELLS = 96
"""The largest layer x head grid whose cells carry their values (beyond, colour alone)."""


def heatmap_size(layers: int, heads: int) -> tuple[float, float]:
    """Inches that leave each annotated cell room for ``0.00`` at the body font size; a
    grid too large to annotate gets smaller cells, at most 7 inches tall."""
    if layers * heads <= ANNOTATED_CELLS:
        return (min(DOUBLE_COLUMN, 1.6 + 0.38 * heads), 1.3 + 0.3 * layers)
    return (min(DOUBLE_COLUMN, 1.6 + 0.22 * heads), min(7.0, 1.3 + 0.12 * layers))


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
    with paper_style():
        written += save(error_figure(run), out / "error_vs_k")
        fig = effect_figure(run)
        if fig is not None:
            written += save(fig, out / "model_effect")
        method = heatmap_method(run, "theorem2")
        layers, heads = run.stat("theorem2", method, "mean").shape[1:]
        fig, ax = plt.subplots(figsize=heatmap_size(layers, heads), layout="constrained")
        plot_error_heatmap(run, method, int(run.config["heatmap_k"]), ax=ax)
        written += save(fig, out / f"heatmap_{method}_k{run.config['heatmap_k']}")
    return written
