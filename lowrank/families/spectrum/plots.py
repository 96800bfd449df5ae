"""Paper-style figures from saved run folders (no model, no corpus needed).

Every plot function takes ``ax=None`` and returns the axes it drew on, so users can compose
their own figures; :func:`figure1` and :func:`write_figures` compose them the paper's way.
Figures are saved as PDF (TrueType fonts embedded, ``pdf.fonttype = 42``) and 300 dpi PNG.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from lowrank.errors import LowrankError
from lowrank.plots.style import (
    DOUBLE_COLUMN,
    SINGLE_COLUMN,
    axes_or_new,
    below_legend,
    bottom_legend,
    layer_ticks,
    paper_style,
    save,
)
from lowrank.runs.labels import run_label

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from lowrank.families.spectrum.result import SpectrumResult

__all__ = [
    "DOUBLE_COLUMN",
    "SINGLE_COLUMN",
    "LayerMetric",
    "axes_or_new",
    "figure1",
    "heatmap_values",
    "paper_style",
    "plot_cumulative",
    "plot_heatmap",
    "plot_layer_summary",
    "run_title",
    "save",
    "set_fitted_title",
    "shared_limits",
    "write_figures",
]

log = logging.getLogger(__name__)
LayerMetric = Literal["c_at_index", "rank90", "rank99", "effective_rank", "stable_rank"]
_METRIC_INDEX = {"c_at_index": 0, "rank90": 1, "rank99": 2, "effective_rank": 3, "stable_rank": 4}


def run_title(run: SpectrumResult) -> str:
    """``model / dataset`` (:func:`lowrank.runs.labels.run_label`: an in-memory model by its
    name, your texts as such) and ``n = .., N = ..`` on two lines; a decoder's run
    (``causal`` in run.json) says on the second that its P is lower-triangular."""
    causal = "; causal: P lower-triangular" if run.config.get("causal") else ""
    return f"{run_label(run.config)}\nn = {run.seq_len}, N = {run.stats.count}{causal}"


def set_fitted_title(ax: Axes, text: str, fontsize: str | float = "medium") -> None:
    """Title ``ax`` with ``text``, each line broken where its measured width would run past
    the axes' (after ``/``, ``,`` or ``;`` first, then at spaces), so neighbouring panels'
    titles never meet."""
    import re

    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath

    figure = ax.get_figure(root=True)
    assert figure is not None, "the axes must belong to a figure"
    prop = FontProperties(size=fontsize)
    room = ax.get_position().width * figure.get_size_inches()[0] * 72 * 1.1  # pt

    def fits(words: str) -> bool:
        return TextPath((0, 0), words.strip(), prop=prop).get_extents().width <= room

    def fill(pieces: list[str]) -> list[str]:
        rows = [""]
        for piece in pieces:
            if rows[-1] and not fits(rows[-1] + piece):
                rows.append("")
            rows[-1] += piece
        return [row.strip() for row in rows]

    lines: list[str] = []
    for line in text.split("\n"):
        for row in fill(re.split(r"(?<=[/,;] )", line)):
            lines += [row] if fits(row) else fill(re.split(r"(?<= )", row))
    ax.set_title("\n".join(lines), fontsize=fontsize)


def plot_cumulative(
    run: SpectrumResult,
    ax: Axes | None = None,
    by_layer: bool = False,
    band: tuple[float, float] = (10.0, 90.0),
    title: bool = True,
    legend: bool = True,
) -> Axes:
    """Mean normalized cumulative singular value against index (paper Fig. 1, left).

    The line is the mean of the L x H per-(layer, head) curves, each a mean over sequences
    (so, with equal counts, the mean over sequences, layers and heads). The band spans,
    pointwise, the ``band`` percentiles of those same L x H curves: the spread across heads,
    not a confidence interval. The legend names both with L x H. With ``by_layer`` one
    line per layer (mean over heads) is drawn, coloured by depth on a discrete layer scale.
    The dashed line marks the heatmap index (128 for n = 512).
    """
    ax = axes_or_new(ax)
    curves = run.stats.cumulative.mean  # (L, H, n)
    layers, heads, n = curves.shape
    x = np.arange(1, n + 1)
    flat = curves.reshape(layers * heads, n)  # (L*H, n)
    if by_layer:
        _plot_layers(curves, x, ax)
    else:
        lo, hi = np.percentile(flat, band, axis=0)  # (n,) each
        cells = layers * heads
        spans = f"{band[0]:g}-{band[1]:g}% across {cells} heads"
        ax.fill_between(x, lo, hi, alpha=0.3, lw=0, label=spans)
        ax.plot(x, flat.mean(axis=0), lw=1.2, label=f"mean over {cells} heads")
    index = run.stats.index
    ax.axvline(index, color="0.3", ls="--", lw=0.8)
    ax.text(index, 0.03, f" {index}", color="0.3", fontsize="small", va="bottom")
    ax.set(
        xlim=(1, n),
        ylim=(0, 1.0),
        xlabel="singular value index",
        ylabel="normalized cumulative\nsingular value",
    )
    if not by_layer and legend:
        ax.legend(loc="lower right", bbox_to_anchor=(1.0, 0.1), frameon=False, fontsize="small")
    if title:
        set_fitted_title(ax, run_title(run))
    return ax


def _plot_layers(curves: np.ndarray, x: np.ndarray, ax: Axes) -> None:
    """One line per layer (mean over heads), coloured by depth.

    Up to 8 layers each line has its own dash pattern too, named in a legend (two layers
    with nearly the same mean curve, MiniLM's 4 and 5, stay two visible lines); deeper
    models get a discrete colour bar, one colour a layer.

    Args:
        curves: (L, H, n) per-(layer, head) mean curves.
        x: (n,) 1-based singular value indices.
    """
    import matplotlib as mpl

    layers = curves.shape[0]
    viridis = mpl.colormaps["viridis"]
    colours = [viridis(layer / max(layers - 1, 1)) for layer in range(layers)]
    dashes = [(), (4, 1.5), (1.5, 1), (6, 1.5, 1.5, 1.5)]
    few = layers <= 8
    for layer, colour in enumerate(colours):
        (line,) = ax.plot(
            x, curves[layer].mean(axis=0), color=colour, lw=1.0, label=f"layer {layer + 1}"
        )
        if few and dashes[layer % len(dashes)]:
            line.set_dashes(dashes[layer % len(dashes)])
    if few:
        ax.legend(
            loc="lower right", frameon=False, fontsize="small", title="mean over heads",
            title_fontsize="small", handlelength=2.6,
        )  # fmt: skip
        return
    # layers are discrete: one block per layer, not a continuous gradient
    cmap = mpl.colors.ListedColormap(colours)
    norm = mpl.colors.BoundaryNorm(np.arange(0.5, layers + 1.5), layers)
    bar = ax.figure.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.02)
    bar.set_label("layer (mean over heads)")
    bar.set_ticks(layer_ticks(layers, most=7))
    bar.minorticks_off()
    bar.ax.tick_params(length=0)


def plot_heatmap(
    run: SpectrumResult,
    ax: Axes | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    annotate: bool | None = None,
    colorbar: bool = True,
    title: bool = True,
) -> Axes:
    """Layer x head heatmap of mean c at the heatmap index (paper Fig. 1, right).

    Layer 1 is the bottom row. Cells carry their value (``.98`` for 0.98) when the cells
    are large enough for it at >= 6 pt (unless ``annotate`` says otherwise: a 30 x 9 grid
    is left to the colour scale). Pass the same ``vmin``/``vmax`` to compare runs.
    """
    import seaborn as sns

    ax = axes_or_new(ax, (SINGLE_COLUMN, 2.6))
    values = heatmap_values(run)  # (L, H), row 0 = layer 1
    layers, heads = values.shape
    size = cell_font_size(ax, layers, heads)
    annotate = size is not None if annotate is None else annotate
    labels = np.vectorize(lambda v: f"{v:.2f}".removeprefix("0"))(values[::-1])
    sns.heatmap(
        values[::-1],
        ax=ax,
        vmin=vmin,
        vmax=vmax,
        cmap="viridis",
        annot=labels if annotate else False,
        fmt="",
        annot_kws={"fontsize": size or 6},
        cbar=colorbar,
        cbar_kws={"label": f"mean c at index {run.stats.index}", "pad": 0.02},
        xticklabels=list(range(1, heads + 1)),
        yticklabels=_every(layers),
        square=False,
        linewidths=0,
    )
    ax.set(xlabel="head", ylabel="layer (1 = bottom)")
    ax.tick_params(axis="both", length=0, labelsize="small")
    ax.tick_params(axis="y", rotation=0)
    if title:
        set_fitted_title(ax, run_title(run))
    return ax


def cell_font_size(ax: Axes, rows: int, cols: int, chars: int = 3) -> float | None:
    """The font size (pt, at most 8) at which ``chars`` characters fit a cell of a rows x
    cols grid drawn in ``ax``, or None when that would be below 6 pt (unreadable in print).
    The cell size is read from the axes' current place in its figure."""
    box = ax.get_position()
    figure = ax.get_figure(root=True)
    assert figure is not None, "the axes must belong to a figure"
    width, height = figure.get_size_inches()
    cell_w, cell_h = box.width * width / cols, box.height * height / rows  # inches
    # a digit is about 0.55 em wide; leave a margin of one character
    size = min(cell_w * 72 / (0.55 * (chars + 1)), cell_h * 72 * 0.7, 8.0)
    return round(size, 1) if size >= 6 else None


def _every(count: int) -> list[str]:
    """Tick labels counting down from ``count``, at most about 12 of them: every layer, or
    the multiples of 2, 5, 10 or 20 (and layer 1 where its neighbour label is 5 or more
    away); the rest blank."""
    shown = set(layer_ticks(count))
    return [str(i) if i in shown else "" for i in range(count, 0, -1)]


def heatmap_values(run: SpectrumResult) -> np.ndarray:
    """(L, H) mean c at the heatmap index, layer 1 first."""
    return np.asarray(run.stats.summaries.mean[..., 0])


def plot_layer_summary(
    runs: Sequence[SpectrumResult],
    ax: Axes | None = None,
    metric: LayerMetric = "c_at_index",
) -> Axes:
    """Per-layer mean of a summary with error bars (std across heads), one line per run.

    With ``c_at_index`` a rising line is the paper's "higher layers are more skewed". Each
    run reads c at its own heatmap index (n/4: 128 for n = 512); when the runs' indices
    differ the axis says "c at index n/4" and the legend gives each run's index.
    """
    ax = axes_or_new(ax)
    k = _METRIC_INDEX[metric]
    indices = [run.stats.index for run in runs]
    several = metric == "c_at_index" and len(set(indices)) > 1
    offsets = np.linspace(-0.12, 0.12, len(runs)) if len(runs) > 1 else [0.0]
    for run, dx in zip(runs, offsets, strict=True):
        values = run.stats.summaries.mean[..., k]  # (L, H)
        layers = np.arange(1, values.shape[0] + 1) + dx  # dodge so error bars stay apart
        err = values.std(axis=1, ddof=1) if values.shape[1] > 1 else None
        read = f", n = {run.seq_len}: c at {run.stats.index}" if several else ""
        ax.errorbar(
            layers,
            values.mean(axis=1),
            yerr=err,
            marker="o",
            ms=3,
            lw=1,
            capsize=2,
            label=f"{run_label(run.config)}{read} (N = {run.stats.count})",
        )
    label = {
        "c_at_index": _c_label(runs),
        "rank90": "rank for 90% of sum s",
        "rank99": "rank for 99% of sum s",
        "effective_rank": "effective rank",
        "stable_rank": "stable rank",
    }[metric]
    ax.set(xlabel="layer", ylabel=f"{label}\n(mean, std across heads)")
    if runs:
        n_layers = max(r.stats.cumulative.mean.shape[0] for r in runs)
        ax.set_xticks(layer_ticks(n_layers))
    below_legend(ax, ncol=1)
    return ax


def _c_label(runs: Sequence[SpectrumResult]) -> str:
    """The c axis of several runs: ``c at index 16`` when all read the same index, else
    ``c at index n/4`` (each run's index in the legend) or, for indices that are not n/4,
    ``c at each run's index``."""
    indices = {run.stats.index for run in runs}
    if len(indices) <= 1:
        return f"c at index {next(iter(indices), 128)}"
    if all(run.stats.index == max(1, run.seq_len // 4) for run in runs):
        return "c at index n/4"
    return "c at each run's index"


def shared_limits(runs: Sequence[SpectrumResult]) -> tuple[float, float]:
    """A colour scale that covers every run's heatmap, rounded outwards to 0.05."""
    values = np.concatenate([heatmap_values(r).ravel() for r in runs])
    lo = np.floor(values.min() * 20) / 20
    hi = np.ceil(values.max() * 20) / 20
    return float(lo), float(max(hi, lo + 0.05))


def figure1(runs: Sequence[SpectrumResult], heatmap_run: int = 0, by_layer: bool = False) -> Figure:
    """The paper's arrangement: a spectrum panel per run, next to one run's heatmap."""
    import matplotlib.pyplot as plt

    count = len(runs)
    cols = 1 if count == 1 else 2
    rows = (count + cols - 1) // cols
    legend_room = 0.3 if by_layer else 0.55  # the band's legend goes below the panels
    fig = plt.figure(figsize=(DOUBLE_COLUMN, 2.2 * rows + legend_room), layout="constrained")
    # the per-panel layer colour bars take width the annotated heatmap needs
    heat_width = 1.6 if by_layer else 1.25
    grid = fig.add_gridspec(rows, cols + 1, width_ratios=[1] * cols + [heat_width])
    for i, run in enumerate(runs):
        ax = fig.add_subplot(grid[i // cols, i % cols])
        plot_cumulative(run, ax=ax, by_layer=by_layer, legend=False)
        if i % cols:
            ax.set_ylabel("")
        if i == 0 and not by_layer:
            # below the panels: inside a narrow panel the legend covers the band
            bottom_legend(fig, ax)
    heat = fig.add_subplot(grid[:, cols])
    vmin, vmax = shared_limits(runs)
    plot_heatmap(runs[heatmap_run], ax=heat, vmin=vmin, vmax=vmax)
    return fig


def _slug(run: SpectrumResult) -> str:
    """A file-name part for the run: its model's and corpus's short names (``minilm-wiki103``),
    not the display names of the titles."""
    model = Path(str(run.config["model"].get("name") or "model")).name
    corpus = run.config["corpus"].get("dataset") or "corpus"
    split = run.config["corpus"].get("split")
    name = f"{model}-{corpus}" + (f"-{split}" if split and corpus in ("wiki103", "imdb") else "")
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def write_figures(
    runs: Sequence[SpectrumResult],
    out: Path,
    by_layer: bool = False,
    layer_metric: LayerMetric = "c_at_index",
) -> list[Path]:
    """All figures for these runs into ``out``; returns the files written.

    Per run: ``spectrum_<model>-<dataset>`` (mean and spread across heads),
    ``spectrum-by-layer_<...>`` (a line per layer), ``heatmap_<...>`` (shared colour scale);
    for all runs: ``layers`` (per-layer c at the heatmap index) and ``figure1`` (the paper's
    arrangement; ``by_layer`` draws its spectrum panels a line per layer).
    """
    import matplotlib.pyplot as plt

    if not runs:
        raise LowrankError("no run folders given")
    written: list[Path] = []
    with paper_style():
        vmin, vmax = shared_limits(runs)
        slugs = _unique([_slug(r) for r in runs])
        for run, slug in zip(runs, slugs, strict=True):
            for layered, prefix in ((False, "spectrum"), (True, "spectrum-by-layer")):
                fig, ax = plt.subplots(figsize=(SINGLE_COLUMN, 2.4), layout="constrained")
                plot_cumulative(run, ax=ax, by_layer=layered)
                written += save(fig, out / f"{prefix}_{slug}")
            fig, ax = plt.subplots(figsize=(SINGLE_COLUMN, 2.6), layout="constrained")
            plot_heatmap(run, ax=ax, vmin=vmin, vmax=vmax)
            written += save(fig, out / f"heatmap_{slug}")
        size = (SINGLE_COLUMN, 2.5 + 0.15 * len(runs))  # the legend goes below
        fig, ax = plt.subplots(figsize=size, layout="constrained")
        plot_layer_summary(runs, ax=ax, metric=layer_metric)
        written += save(fig, out / "layers")
        if len(runs) > 1:
            log.info(
                f"figure1 shows the heatmap of one run, {run_label(runs[0].config)} at n = "
                f"{runs[0].seq_len} (--heatmap-run picks another); heatmap_* has every run's"
            )
        written += save(figure1(runs, by_layer=by_layer), out / "figure1")
    return written


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out
