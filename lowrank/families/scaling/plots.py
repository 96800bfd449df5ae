"""Figures of a ``lowrank scaling`` folder: rank against n with both fits, and c against i/n.

Drawn from the folder alone: ``scaling.npz`` for the measures, fits and verdicts, and the
spectrum run of each n (``n<n>/``) for the cumulative curves. Plot functions take
``ax=None`` and return the axes.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lowrank.families.scaling.fits import log_model, power_model
from lowrank.families.scaling.measures import MEASURE_LABELS, MEASURES
from lowrank.plots.style import (
    DOUBLE_COLUMN,
    SINGLE_COLUMN,
    axes_or_new,
    below_legend,
    paper_style,
    per_run,
    save,
    side_legend,
)
from lowrank.runs.labels import run_label

if TYPE_CHECKING:
    from collections.abc import Sequence

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from lowrank.families.scaling.result import ScalingResult
    from lowrank.families.spectrum.result import SpectrumResult

_CAUSAL = "causal decoder: P lower-triangular"


def measure_label(run: ScalingResult, measure: str) -> str:
    label = MEASURE_LABELS[measure]
    if measure == "output_rank":
        label = label.replace("tau", f"{float(run.arrays['tau']):g}")
    return label


def _axis_label(run: ScalingResult, measure: str) -> str:
    """The measure on two lines, to fit beside a panel: ``rank k for ||PV - (PV)_k|| /
    ||PV||`` then ``<= 0.1``."""
    words = measure_label(run, measure).split(" ")
    half = next((i for i in range(len(words)) if len(" ".join(words[: i + 1])) > 26), len(words))
    return " ".join(words[:half]) + ("\n" + " ".join(words[half:]) if half < len(words) else "")


def plot_measure(
    run: ScalingResult,
    measure: str,
    group: str = "model",
    ax: Axes | None = None,
    legend: bool = True,
) -> Axes:
    """One rank measure against n (log axis) for a layer or the whole model.

    Points: the mean over documents and heads, with the 95% bootstrap interval over
    documents. Lines: ``a + b ln n`` (solid) and ``a n^beta`` (dashed) fitted to the points;
    the fitted beta is in the legend (``legend``, below the axes) or, without it, written
    in the panel's top left. The title carries the group and the verdict; the y axis names
    the measure.
    """
    ax = axes_or_new(ax, (SINGLE_COLUMN, 3.0))
    g = run.groups.index(group)
    ns = np.array(run.ns, dtype=float)
    mean = run.arrays[f"{measure}_mean"][g]
    interval = run.arrays[f"{measure}_interval"][g]  # (S, 2)
    yerr = np.abs(np.stack([mean - interval[:, 0], interval[:, 1] - mean]))
    ax.errorbar(
        ns,
        mean,
        yerr=yerr,
        ls="none",
        marker="o",
        ms=3,
        capsize=2,
        color="k",
        lw=0.8,
        label="mean over documents and heads,\n95% bootstrap interval over documents",
    )
    grid = np.geomspace(ns[0], ns[-1], 100)
    a, b = run.arrays[f"{measure}_log_params"][g]
    ax.plot(grid, log_model(grid, a, b), lw=1, label=r"fit $a + b \ln n$")
    a, beta = run.arrays[f"{measure}_power_params"][g]
    if np.isfinite(beta):
        fit = rf"fit $a\,n^\beta$, $\beta$ = {beta:.2f}" if legend else r"fit $a\,n^\beta$"
        ax.plot(grid, power_model(grid, a, beta), lw=1, ls="--", label=fit)
        if not legend:
            ax.text(
                0.04, 0.92, rf"$\beta$ = {beta:.2f}", transform=ax.transAxes, fontsize="x-small"
            )
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(int(n)) for n in ns])
    ax.minorticks_off()
    ax.set(xlabel="sequence length n", ylabel=_axis_label(run, measure))
    name = "model (all layers)" if group == "model" else group
    ax.set_title(f"{name}\n{run.verdict(measure, group)}", fontsize="small")
    if legend:
        below_legend(ax, ncol=1)
    return ax


def measure_figure(run: ScalingResult, measure: str) -> Figure:
    """A panel per layer and one for the whole model."""
    import matplotlib.pyplot as plt

    groups = run.groups
    cols = 4 if len(groups) > 6 else 3
    rows = -(-len(groups) // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(DOUBLE_COLUMN, 2.1 * rows + 0.8), layout="constrained", squeeze=False
    )
    for ax, group in zip(axes.flat, groups, strict=False):
        plot_measure(run, measure, group, ax=ax, legend=False)
        ax.set(xlabel="", ylabel="")
    _tidy(axes, len(groups), "sequence length n", "mean over documents\nand heads")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False)
    fig.suptitle(_suptitle(run, measure_label(run, measure)), fontsize="medium")
    return fig


def _tidy(axes: np.ndarray, used: int, xlabel: str, ylabel: str) -> None:
    """Hide the unused panels of a grid; label x under the lowest panel of each column."""
    rows, cols = axes.shape
    for i, ax in enumerate(axes.flat):
        ax.set_visible(i < used)
    for col in range(cols):
        lowest = max(r for r in range(rows) if r * cols + col < used)
        axes[lowest, col].set_xlabel(xlabel)
        axes[lowest, col].xaxis.set_tick_params(labelbottom=True)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel)


def plot_c_curves(
    runs: dict[int, SpectrumResult],
    layer: int | None = None,
    ax: Axes | None = None,
    legend: bool = True,
) -> Axes:
    """Mean normalised cumulative singular value against i / n, a line per n (legend, beside
    the axes, with ``legend``).

    Args:
        runs: n -> its spectrum run.
        layer: 0-based layer (mean over its heads), or None for the mean over every layer
            and head.
    """
    import matplotlib as mpl

    ax = axes_or_new(ax, (SINGLE_COLUMN + 0.8, 2.4))
    ns = sorted(runs)
    cmap = mpl.colormaps["viridis"]
    for i, n in enumerate(ns):
        curves = runs[n].stats.cumulative.mean  # (L, H, n)
        c = curves.mean(axis=(0, 1)) if layer is None else curves[layer].mean(axis=0)
        x = np.arange(1, n + 1) / n
        shade = 0.85 * i / max(len(ns) - 1, 1)  # viridis without its pale yellow end
        ax.plot(x, c, lw=1, color=cmap(shade), label=f"n = {n}")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="index / n",
        ylabel="normalized cumulative\nsingular value",
    )
    where = "model (all layers)" if layer is None else f"layer {layer + 1}"
    ax.set_title(where, fontsize="small")
    if legend:
        side_legend(ax, title="mean over heads\nand documents", title_fontsize="x-small")
    return ax


def c_curves_figure(run: ScalingResult, runs: dict[int, SpectrumResult]) -> Figure:
    """c against i / n for every n: a panel per layer and one for the whole model."""
    import matplotlib.pyplot as plt

    layers = next(iter(runs.values())).stats.cumulative.mean.shape[0]
    panels: list[int | None] = [*range(layers), None]
    cols = 4 if len(panels) > 6 else 3
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(DOUBLE_COLUMN, 1.9 * rows + 0.6),
        layout="constrained",
        squeeze=False,
        sharex=True,
        sharey=True,
    )
    for ax, layer in zip(axes.flat, panels, strict=False):
        plot_c_curves(runs, layer, ax=ax, legend=False)
        ax.set(xlabel="", ylabel="")
    _tidy(axes, len(panels), "index / n", "normalized cumulative\nsingular value")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), frameon=False)
    fig.suptitle(
        _suptitle(run, "c against the normalised index (mean over heads and documents)"),
        fontsize="medium",
    )
    return fig


def _suptitle(run: ScalingResult, what: str) -> str:
    docs = int(run.arrays["fit_documents"])
    causal = f"; {_CAUSAL}" if run.causal else ""
    return f"{run_label(run.config)}, {docs} documents at every n{causal}\n{what}"


def write_figures(results: Sequence[ScalingResult], out: Path) -> list[Path]:
    """``scaling_<measure>`` for every rank measure and ``scaling_c_curves`` of each run, PDF
    and PNG, into ``out`` (one run) or ``out/<run>`` (several)."""
    written: list[Path] = []
    with paper_style():
        for run, folder in per_run(results, out):
            for measure in MEASURES:
                written += save(measure_figure(run, measure), folder / f"scaling_{measure}")
            written += save(c_curves_figure(run, run.spectrum_runs()), folder / "scaling_c_curves")
    return written
