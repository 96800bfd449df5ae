"""Figures of a ``lowrank scaling`` folder: rank against n with the fitted models, and c
against i/n.

Drawn from the folder alone: ``scaling.npz`` for the measures, fits and verdicts, and the
spectrum run of each n (``n<n>/``) for the cumulative curves. Plot functions take
``ax=None`` and return the axes. A panel states a verdict only where the run has one (format
2, five lengths or more); format-1 folders and runs of fewer lengths show the data and the
fits without one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lowrank.families.scaling.measures import MEASURES
from lowrank.families.scaling.verdicts import NO_VERDICT, no_verdict_text, per_document
from lowrank.maths.curves import ModelFit
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
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from lowrank.families.scaling.result import ScalingResult
    from lowrank.families.spectrum.result import SpectrumResult

_CAUSAL = "causal decoder: P lower-triangular"
MAX_LEGEND = 6  # entries in one legend; more lengths n get a colour bar
MATH_LABELS = {
    "rank90": r"rank for 90% of $\Sigma_i\, s_i$",
    "rank99": r"rank for 99% of $\Sigma_i\, s_i$",
    "effective_rank": r"effective rank $\exp H(s/\Sigma_i\, s_i)$",
    "stable_rank": r"stable rank $\Sigma_i\, s_i^2/s_1^2$",
    "output_rank": r"rank $k$: $\|PV - (PV)_k\|_F \leq TAU\,\|PV\|_F$",
}
_STYLE = {"log": "-", "power": "--", "saturating": ":"}


def measure_label(run: ScalingResult, measure: str) -> str:
    """The measure in mathtext (``tau`` replaced by the run's value)."""
    return MATH_LABELS[measure].replace("TAU", f"{float(run.arrays['tau']):g}")


def _fit_label(run: ScalingResult, measure: str, g: int, model: str, values: bool) -> str:
    a = run.arrays
    if model == "log":
        text = r"$a + b\,\ln n$"
        return text + (rf", $b$ = {a[f'{measure}_log_params'][g, 1]:.2f}" if values else "")
    if model == "power":
        text = r"$a\,n^{\beta}$"
        return text + (rf", $\beta$ = {a[f'{measure}_power_params'][g, 1]:.2f}" if values else "")
    text = r"$C - c\,n^{-\gamma}$"
    return text + (rf", $C$ = {a[f'{measure}_saturating_params'][g, 0]:.3g}" if values else "")


def _models(run: ScalingResult) -> list[str]:
    if "growth_models" in run.arrays:
        return [str(m) for m in run.arrays["growth_models"]]
    return ["log", "power"]  # format 1


def _params(run: ScalingResult, measure: str, g: int, model: str) -> tuple[float, ...]:
    return tuple(float(x) for x in run.arrays[f"{measure}_{model}_params"][g])


def _control_point(run: ScalingResult, measure: str, g: int) -> tuple[float, float] | None:
    """(n, mean at shifted positions) of the position control for group ``g``, if measured."""
    pair = run.arrays.get(f"position_control_{measure}")
    if pair is None:
        return None
    rows = int(run.arrays["fit_windows"])
    clusters = np.unique(run.arrays["documents"][:rows], return_inverse=True)[1].reshape(-1)
    shifted = pair[1] if g == len(run.groups) - 1 else pair[1][:, g : g + 1]  # (W, L', H)
    per_doc = per_document(shifted.mean(axis=(1, 2))[None], clusters)[0]
    return float(run.arrays["position_control_n"]), float(per_doc.mean())


def n_label(n: int) -> str:
    """A tick label for n: ``512``, and from 1024 on its multiples of 1024 as ``1k``, ``2k``
    (four digits side by side run into each other in a narrow panel)."""
    return f"{n // 1024}k" if n >= 1024 and n % 1024 == 0 else str(n)


def x_label(ns: Sequence[int]) -> str:
    """``sequence length n``, saying what ``k`` means where a tick uses it."""
    short = any(n_label(int(n)).endswith("k") for n in ns)
    return "sequence length $n$" + ("\n(1k = 1024)" if short else "")


def panel_title(run: ScalingResult, measure: str, group: str) -> str:
    """``layer 3: saturating``; the group alone without a verdict (format 1, or fewer than
    five lengths: the suptitle says so)."""
    name = "all layers" if group == "model" else group
    label = run.verdict_label(measure, group)
    if label is None:
        return name  # format 1: its verdicts follow a rule that is no longer used
    if label == NO_VERDICT:
        return name  # the suptitle says why (too few lengths)
    return f"{name}: {label}"


def plot_measure(
    run: ScalingResult,
    measure: str,
    group: str = "model",
    ax: Axes | None = None,
    legend: bool = True,
) -> Axes:
    """One rank measure against n (log axis) for a layer or the whole model.

    Points: the mean over documents and heads, with the 95% bootstrap interval over
    documents. Lines: the fitted models (``a + b ln n`` solid, ``a n^beta`` dashed,
    ``C - c n^-gamma`` dotted; format 1 has the first two). An open square: the position
    control, the same windows of one n at shifted position ids. The title names the group and
    the verdict where there is one; with ``legend`` the entries, with the fitted parameters,
    go below the axes.
    """
    ax = axes_or_new(ax, (SINGLE_COLUMN, 3.4))
    g = run.groups.index(group)
    ns = np.array(run.ns, dtype=float)
    mean = run.arrays[f"{measure}_mean"][g]
    interval = run.arrays[f"{measure}_interval"][g]  # (S, 2)
    yerr = np.abs(np.stack([mean - interval[:, 0], interval[:, 1] - mean]))
    yerr = np.where(np.isfinite(yerr), yerr, 0.0)
    label = "mean over documents\nand heads, 95% interval"
    ax.errorbar(ns, mean, yerr=yerr, ls="none", marker="o", ms=3, capsize=2, color="k", lw=0.8)
    ax.plot([], [], ls="none", marker="o", ms=3, color="k", label=label)
    grid = np.geomspace(ns[0], ns[-1], 100)
    for model in _models(run):
        params = _params(run, measure, g, model)
        if not np.isfinite(params).all():
            continue
        curve = ModelFit(model, params, 0.0, 0, 0).predict(grid)
        ax.plot(
            grid, curve, lw=1, ls=_STYLE[model], label=_fit_label(run, measure, g, model, legend)
        )
    point = _control_point(run, measure, g)
    if point is not None:
        shift = int(run.arrays["position_control_shift"])
        ax.plot(*point, ls="none", marker="s", ms=4, mfc="none", color="C3",
                label=f"$n$ = {point[0]:.0f}, positions shifted by {shift}")  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [n_label(int(n)) for n in ns])
    ax.minorticks_off()
    # the output rank's formula on a line of its own: rotated, one line outgrows the panel
    ylabel = measure_label(run, measure).replace("$: $", "$:\n$")
    ax.set(xlabel=x_label(run.ns), ylabel=ylabel)
    ax.set_title(panel_title(run, measure, group))
    if legend:
        below_legend(ax, ncol=1, fontsize="medium")
    return ax


def _grid(count: int, height: float, width: float) -> tuple[Figure, np.ndarray]:
    import matplotlib.pyplot as plt

    cols = 4 if count > 6 else 3
    rows = -(-count // cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(width, height * rows + 1.0),
        layout="constrained",
        squeeze=False,
    )
    return fig, axes


def measure_figure(run: ScalingResult, measure: str, width: float = DOUBLE_COLUMN) -> Figure:
    """A panel per layer and one for the whole model, one legend below them (``width``
    inches wide: two legend columns below six inches, three above)."""
    groups = run.groups
    fig, axes = _grid(len(groups), 1.9, width)
    for ax, group in zip(axes.flat, groups, strict=False):
        plot_measure(run, measure, group, ax=ax, legend=False)
        ax.set(xlabel="", ylabel="")
    _tidy(axes, len(groups), x_label(run.ns), "mean")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    columns = 3 if width >= 6 else 2
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), columns),
               frameon=False)  # fmt: skip
    fig.suptitle(_suptitle(run, measure_label(run, measure), width))
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


def _shades(ns: Sequence[int]) -> list[tuple[float, float, float, float]]:
    import matplotlib as mpl

    cmap = mpl.colormaps["viridis"]
    return [cmap(0.85 * i / max(len(ns) - 1, 1)) for i in range(len(ns))]  # no pale yellow


def plot_c_curves(
    runs: dict[int, SpectrumResult],
    layer: int | None = None,
    ax: Axes | None = None,
    legend: bool = True,
) -> Axes:
    """Mean normalised cumulative singular value against i / n, a line per n (with
    ``legend``: a legend beside the axes, or a colour bar of n beyond six lengths).

    Args:
        runs: n -> its spectrum run.
        layer: 0-based layer (mean over its heads), or None for the mean over every layer
            and head.
    """
    ax = axes_or_new(ax, (SINGLE_COLUMN + 0.8, 2.4))
    ns = sorted(runs)
    for n, shade in zip(ns, _shades(ns), strict=True):
        curves = runs[n].stats.cumulative.mean  # (L, H, n)
        c = curves.mean(axis=(0, 1)) if layer is None else curves[layer].mean(axis=0)
        x = np.arange(1, n + 1) / n
        ax.plot(x, c, lw=1, color=shade, label=f"n = {n}")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="index / $n$",
        ylabel="normalized cumulative\nsingular value",
    )
    ax.set_title("all layers" if layer is None else f"layer {layer + 1}")
    if legend and len(ns) <= MAX_LEGEND:
        side_legend(ax, title="mean over heads\nand documents", fontsize="medium",
                    title_fontsize="medium")  # fmt: skip
    elif legend:
        _colorbar(ax.get_figure(root=True), ns, ax)  # type: ignore[arg-type]
    return ax


def _colorbar(fig: Figure, ns: Sequence[int], ax: Axes | np.ndarray) -> None:
    """A colour bar of the lengths n in place of a legend of more than six entries."""
    import matplotlib as mpl

    colors = mpl.colors.ListedColormap(_shades(ns))
    norm = mpl.colors.BoundaryNorm(np.arange(len(ns) + 1), len(ns))
    bar = fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=colors), ax=ax, shrink=0.8)
    bar.set_ticks([i + 0.5 for i in range(len(ns))], labels=[str(n) for n in ns])
    bar.set_label("$n$")


def c_curves_figure(
    run: ScalingResult, runs: dict[int, SpectrumResult], width: float = DOUBLE_COLUMN
) -> Figure:
    """c against i / n for every n: a panel per layer and one for the whole model, ``width``
    inches wide."""
    layers = next(iter(runs.values())).stats.cumulative.mean.shape[0]
    panels: list[int | None] = [*range(layers), None]
    fig, axes = _grid(len(panels), 1.7, width)
    for ax in axes.flat:
        ax.sharex(axes.flat[0])
        ax.sharey(axes.flat[0])
    for ax, layer in zip(axes.flat, panels, strict=False):
        plot_c_curves(runs, layer, ax=ax, legend=False)
        ax.set(xlabel="", ylabel="")
    _tidy(axes, len(panels), "index / $n$", "normalized cumulative\nsingular value")
    ns = sorted(runs)
    if len(ns) <= MAX_LEGEND:
        handles, labels = axes.flat[0].get_legend_handles_labels()
        columns = len(labels) if width >= 6 else 3
        fig.legend(handles, labels, loc="outside lower center", ncol=columns, frameon=False)
    else:
        _colorbar(fig, ns, axes)
    what = "c against the normalised index (mean over heads and documents)"
    fig.suptitle(_suptitle(run, what, width))
    return fig


def _suptitle(run: ScalingResult, what: str, width: float = DOUBLE_COLUMN) -> str:
    """``<model> / <corpus>: 16 documents, windows at drawn offsets``, a line of notes (a
    causal decoder, no verdict from too few lengths) where there are any, then ``what``; the
    plain lines wrapped to the figure's ``width`` in inches."""
    import textwrap

    docs = int(run.arrays["fit_documents"])
    policy = str((run.config.get("window_policy") or {}).get("policy"))
    where = {"matched": ", windows at drawn offsets", "openings": ", windows at openings"}
    notes = [_CAUSAL] if run.causal else []
    labels = {
        str(x) for m in MEASURES if f"{m}_label" in run.arrays for x in run.arrays[f"{m}_label"]
    }
    if labels == {NO_VERDICT}:
        notes.append(no_verdict_text(len(run.ns)))
    lines = [f"{run_label(run.config)}: {docs} documents{where.get(policy, '')}"]
    lines += ["; ".join(notes)] if notes else []
    chars = int(width * 13)  # characters of the title font in a line of the figure
    return "\n".join([*(textwrap.fill(line, chars) for line in lines), what])


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
