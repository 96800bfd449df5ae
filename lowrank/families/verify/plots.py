"""Figure of a ``lowrank verify`` run: measured failure rate against k, bounds dashed, and the
trivial P~ (zero, uniform attention) beside the events they also meet.

The run's figure (:func:`verify_figure`) shows six headline series, one message each: the
proof's event and the event it implies, the paper's wording and the best rank-k witness on
real value columns, the JL lemma itself and Theorem 2; ``every=True`` draws every series. Each
panel is titled in words with its event in mathtext, and the figure carries two short legends
below the panels: the eps colours, and the marks drawn (only those drawn).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lowrank.plots.style import (
    DOUBLE_COLUMN,
    SINGLE_COLUMN,
    axes_or_new,
    below_legend,
    paper_style,
    per_run,
    save,
)
from lowrank.runs.labels import run_label

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from lowrank.families.verify.result import VerifyResult

GREY = "0.35"  # the legend's entries for marks drawn in every eps colour
HEADLINE = (
    "jl-rows | real | values",
    "jl-consistent | real | values",
    "paper | real | values",
    "witness | real | values",
    "jl-norm2 | random | -",
    "theorem2 | real | -",
)
STATEMENT_TITLE = {
    "paper": r"paper: $\|\tilde{P}w - Pw\| < \varepsilon\|Pw\|$",
    "jl-rows": r"jl-rows: each row within $\varepsilon\|p_i\|\,\|w\|$",
    "jl-consistent": r"jl-consistent: within $\varepsilon\|P\|_F\,\|w\|$",
    "witness": r"witness: $\|P_k w - Pw\| < \varepsilon\|Pw\|$",
    "jl-norm": r"JL lemma: $\|Rx\| \leq (1+\varepsilon)\|x\|$",
    "jl-norm2": r"JL lemma: $\|Rx\|^2 \leq (1+\varepsilon)\|x\|^2$",
    "jl-inner": r"JL lemma: $|xR^{\mathsf{T}}Ry - xy| \leq \varepsilon\|x\|\|y\|$",
    "theorem2": r"Theorem 2: within $\varepsilon\|p_i\|\,\|V\|_2$",
}
VECTOR_WORDS = {
    "values": "value columns w",
    "gaussian": "Gaussian w",
    "top-singular": "top singular vectors",
    "rows": "rows of P as w",
    "bottom-singular": "bottom singular vectors",
}
# the trivial P~ draw no R: one rate per eps, marked just outside the right spine
BASELINE_STYLE: dict[str, dict[str, Any]] = {
    "zero": {"marker": "<", "ms": 4.5, "mfc": "none", "label": r"trivial $\tilde{P} = 0$"},
    "uniform": {"marker": "<", "ms": 4.5, "label": r"trivial $\tilde{P}$: uniform"},
}
BASELINE_X = {"zero": 1.04, "uniform": 1.10}  # axes fraction, right of the panel


def series_title(series: str) -> str:
    """A series in words: its event in mathtext, then the matrices and vectors:
    ``jl-rows | synthetic beta=0.1 | values`` -> two lines, the event and
    ``synthetic P, beta = 0.1, value columns w``. Format 1 names are returned as they are."""
    parts = series.split(" | ")
    if len(parts) != 3:
        return series
    statement, source, vectors = parts
    if source.startswith("synthetic beta="):
        where = rf"synthetic P, $\beta$ = {source.removeprefix('synthetic beta=')}"
    elif source == "random":
        where = "random Gaussian vectors"
    else:
        where = f"{source} P"
    if vectors != "-":
        where += f", {VECTOR_WORDS.get(vectors, vectors)}"
    elif statement == "theorem2":
        where += ", query rows"
    return f"{STATEMENT_TITLE.get(statement, statement)}\n{where}"


def _baseline_rates(arrays: Mapping[str, np.ndarray], si: int) -> dict[str, np.ndarray]:
    """[E] failure rate of each trivial P~ on series ``si`` (format 3; NaN where none)."""
    if "baseline_rate" not in arrays:
        return {}
    names = [str(b) for b in arrays["baselines"]]
    return {name: arrays["baseline_rate"][i, si] for i, name in enumerate(names)}


def plot_failure_vs_k(
    arrays: dict[str, np.ndarray],
    source: str,
    theory_k: dict[float, float | None] | None = None,
    ax: Axes | None = None,
    legend: bool = True,
) -> Axes:
    """Failure rate against k for one series, a line per eps (log y), 95% intervals.

    Dashed: the bound, drawn at 1 where it is 1 or more (it then says nothing); x: the exact
    probability; dotted verticals: the k the bound asks for (when within the plot); fine
    dots and dash-dots across the panel: the failure rate of the trivial P~ (zero and
    uniform attention, the same at every k), where the run has them. A rate of zero is drawn
    at the upper end of its 95% interval with a downward marker. The title names the series
    in words (:func:`series_title`). ``legend`` (below the axes) names the eps colours and
    each of these marks that is drawn, and only those (:func:`mark_handles`).
    """
    import seaborn as sns

    ax = axes_or_new(ax, (SINGLE_COLUMN, 3.0))
    si = series_names(arrays).index(source)
    ks, eps = arrays["ks"], arrays["eps"]
    colours = sns.color_palette("colorblind", len(eps))
    floor = 1.0 / max(int(arrays["trials"][si].max()), 1)
    trivial = _baseline_rates(arrays, si)
    for ei, (e, colour) in enumerate(zip(eps, colours, strict=True)):
        rate = arrays["rate"][si, ei]
        hi = arrays["ci_high"][si, ei]
        lo = arrays["ci_low"][si, ei]
        shown = np.where(rate > 0, rate, np.nan)
        ax.plot(ks, shown, marker="o", ms=3, lw=1, color=colour, label=rf"$\varepsilon = {e:g}$")
        yerr = np.vstack([shown - lo, hi - shown])
        ax.errorbar(
            ks,
            shown,
            yerr=np.where(np.isnan(yerr), 0, yerr),
            fmt="none",
            lw=0.6,
            color=colour,
            capsize=1.5,
        )
        zero = rate == 0
        ax.plot(ks[zero], hi[zero], ls="none", marker="v", ms=3.5, color=colour)
        bound = arrays["bound"][si, ei]
        if np.isfinite(bound).any():
            ax.plot(ks, np.clip(bound, floor / 2, 1), ls="--", lw=0.9, color=colour)
        exact = _exact(arrays)[si, ei]
        if np.isfinite(exact).any():
            ax.plot(ks, np.clip(exact, floor / 2, 1), ls="none", marker="x", ms=3, color=colour)
        at = (theory_k or {}).get(float(e))
        if at is not None and at <= ks.max():
            ax.axvline(at, ls=":", lw=0.9, color=colour)
        for name, rates in trivial.items():
            if np.isfinite(rates[ei]) and rates[ei] > 0:
                style = {k: v for k, v in BASELINE_STYLE[name].items() if k != "label"}
                ax.plot(
                    [BASELINE_X[name]],
                    [float(rates[ei])],
                    ls="none",
                    color=colour,
                    clip_on=False,
                    transform=ax.get_yaxis_transform(),  # x in axes fraction, y in data
                    **style,
                )
    if np.all(arrays["rate"][si] >= 1):
        ax.text(
            0.5,
            0.45,
            "fails in every trial:\nrate 1 at every eps and k",
            transform=ax.transAxes,
            ha="center",
            color="0.3",
        )
    ax.set(xscale="log", yscale="log", ylim=(floor / 2, 1.5), xlabel="projected dimension k")
    ax.set_ylabel("failure rate")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_title(series_title(source))
    if legend:
        handles = ax.get_legend_handles_labels()[0]
        below_legend(
            ax, handles + mark_handles(arrays, [source], {source: theory_k}), fontsize="small"
        )
    return ax


def _exact(arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """[series, eps, k] exact failure probabilities (NaN where unknown; format 1: none)."""
    return arrays["exact"] if "exact" in arrays else np.full(arrays["rate"].shape, np.nan)


def mark_handles(
    arrays: Mapping[str, np.ndarray],
    sources: list[str],
    theory: Mapping[str, Mapping[float, float | None] | None],
) -> list[Any]:
    """Legend entries (grey) for the marks :func:`plot_failure_vs_k` draws on the panels of
    ``sources``, only those drawn: the bound (saying when it is drawn at 1), the exact
    probability, the no-failure triangle, the k the bound asks for and the trivial P~."""
    from matplotlib.lines import Line2D

    names = series_names(arrays)
    index = [names.index(s) for s in sources]
    rate, bound, exact = arrays["rate"][index], arrays["bound"][index], _exact(arrays)[index]
    top = float(arrays["ks"].max())
    asks = any(
        at is not None and at <= top for s in sources for at in (theory.get(s) or {}).values()
    )
    handles = []
    if np.isfinite(bound).any():
        vacuous = (bound[np.isfinite(bound)] >= 1).any()
        at_one = " (drawn at 1: says nothing)" if vacuous else ""
        handles.append(Line2D([], [], ls="--", lw=0.9, color=GREY, label=f"bound{at_one}"))
    if np.isfinite(exact).any():
        handles.append(
            Line2D([], [], ls="none", marker="x", ms=3, color=GREY, label="exact probability")
        )
    if (rate == 0).any():
        handles.append(
            Line2D(
                [], [], ls="none", marker="v", ms=3.5, color=GREY, label="no failure: upper 95% end"
            )
        )
    if asks:
        handles.append(Line2D([], [], ls=":", lw=0.9, color=GREY, label="k where bound = target"))
    for name, style in BASELINE_STYLE.items():
        drawn = [_baseline_rates(arrays, i).get(name) for i in index]
        if any(r is not None and (np.nan_to_num(r) > 0).any() for r in drawn):
            handles.append(Line2D([], [], ls="none", color=GREY, **style))
    return handles


def series_names(arrays: Mapping[str, np.ndarray]) -> list[str]:
    """Series of a verify run: ``statement | P | w`` (format 2) or sources (format 1)."""
    return [str(s) for s in arrays["series" if "series" in arrays else "sources"]]


def headline_series(sources: list[str]) -> list[str]:
    """The series of the run's figure, one message each (:data:`HEADLINE`, those the run
    has): the proof's event and the event it implies on real value columns (beside the
    trivial P~ that may meet them too), the paper's wording, the best rank-k witness, the JL
    lemma on squared norms against its exact probability, and Theorem 2. Format 1 runs, and
    runs with none of these: all sources."""
    picked = [s for s in HEADLINE if s in sources]
    if not picked or any(len(s.split(" | ")) != 3 for s in sources):
        return sources
    return picked


def write_figures(results: Sequence[VerifyResult], out: Path, *, every: bool = False) -> list[Path]:
    """Each run's headline series (all of them with ``every``) in one figure,
    ``failure_vs_k.pdf``/``.png``, into ``out`` (one run) or ``out/<run>`` (several); the
    rows behind it are in verify.csv."""
    written: list[Path] = []
    for run, folder in per_run(results, out):
        fig = verify_figure(run.config, run.arrays, run.k_needed, every)
        written += save_verify_figure(fig, folder)
    return written


def verify_figure(
    meta: dict[str, Any],
    arrays: dict[str, np.ndarray],
    needed: list[dict[str, Any]],
    every: bool = False,
) -> Figure:
    """The failure rate against k of the headline series (all with ``every``), a panel
    each, three to a row, from run.json (``meta``), verify.npz (``arrays``) and
    verify.json's ``k_needed``; one legend of the eps colours and one of the marks below."""
    import matplotlib.pyplot as plt

    sources = series_names(arrays)
    if not every:
        sources = headline_series(sources)
    cols = min(3, len(sources))
    rows = (len(sources) + cols - 1) // cols
    with paper_style():
        fig, axes = plt.subplots(
            rows,
            cols,
            figsize=(DOUBLE_COLUMN, 2.3 * rows + 1.0),
            layout="constrained",
            squeeze=False,
        )
        theory = {
            source: {
                float(r["eps"]): r.get("theory_k_at_target", r.get("theory_k"))
                for r in needed
                if r.get("series", r.get("source")) == source
            }
            for source in sources
        }
        for ax, source in zip(axes.flat, sources, strict=False):
            plot_failure_vs_k(arrays, source, theory[source], ax, legend=False)
        for ax in list(axes.flat)[len(sources) :]:
            ax.set_visible(False)
        for ax in axes[:, 1:].flat:
            ax.set_ylabel("")
        eps_lines = axes.flat[0].get_legend_handles_labels()[0]
        marks = mark_handles(arrays, sources, theory)
        cols = max(len(eps_lines), 3)
        fig.legend(  # the eps colours on the first row, the marks below them
            handles=row_major([eps_lines, *_chunks(marks, cols)], cols),
            loc="outside lower center",
            ncol=cols,
            frameon=False,
        )
        fig.suptitle(
            f"{run_label(meta)}, n = {meta['seq_len']}, N = {meta.get('num_sequences', '?')}: "
            "measured failure rate against k",
            fontsize="medium",
        )
    return fig


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def row_major(rows: list[list[Any]], cols: int) -> list[Any]:
    """Legend handles ordered so that a legend of ``cols`` columns (matplotlib fills them
    column by column) shows each of ``rows`` on a row of its own, blanks padding them."""
    from matplotlib.lines import Line2D

    grid = [row + [Line2D([], [], ls="none", label=" ")] * (cols - len(row)) for row in rows]
    return [grid[r][c] for c in range(cols) for r in range(len(grid))]


def save_verify_figure(fig: Figure, folder: Path) -> list[Path]:
    """Write ``fig`` as ``folder/failure_vs_k.pdf`` and ``.png`` (closing it)."""
    with paper_style():
        return save(fig, folder / "failure_vs_k")
