"""Figure of a ``lowrank verify`` run: measured failure rate against k, bounds dashed."""

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


def plot_failure_vs_k(
    arrays: dict[str, np.ndarray],
    source: str,
    theory_k: dict[float, float | None] | None = None,
    ax: Axes | None = None,
    legend: bool = True,
) -> Axes:
    """Failure rate against k for one series, a line per eps (log y), 95% intervals.

    Dashed: the bound, drawn at 1 where it is 1 or more (it then says nothing); x: the exact
    probability; dotted verticals: the k the theorem asks for (when within the plot). A rate
    of zero is drawn at the upper end of its 95% interval with a downward marker.
    ``legend`` (below the axes) names the eps colours and each of these marks that is
    drawn, and only those (:func:`mark_handles`).
    """
    import seaborn as sns

    ax = axes_or_new(ax, (SINGLE_COLUMN, 3.0))
    si = series_names(arrays).index(source)
    ks, eps = arrays["ks"], arrays["eps"]
    colours = sns.color_palette("colorblind", len(eps))
    floor = 1.0 / max(int(arrays["trials"][si].max()), 1)
    for ei, (e, colour) in enumerate(zip(eps, colours, strict=True)):
        rate = arrays["rate"][si, ei]
        hi = arrays["ci_high"][si, ei]
        lo = arrays["ci_low"][si, ei]
        shown = np.where(rate > 0, rate, np.nan)
        ax.plot(ks, shown, marker="o", ms=3, lw=1, color=colour, label=f"eps = {e:g}")
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
    if np.all(arrays["rate"][si] >= 1):
        ax.text(
            0.5,
            0.45,
            "fails in every trial:\nrate 1 at every eps and k",
            transform=ax.transAxes,
            ha="center",
            fontsize="x-small",
            color="0.3",
        )
    ax.set(xscale="log", yscale="log", ylim=(floor / 2, 1.2), xlabel="k")
    ax.set_ylabel("failure rate (share of trials)")
    ax.set_xticks(ks, [str(k) for k in ks], rotation=90 if len(ks) > 4 else 0)
    ax.minorticks_off()
    ax.set_title(source, fontsize="x-small")
    if legend:
        handles = ax.get_legend_handles_labels()[0]
        below_legend(ax, handles + mark_handles(arrays, [source], {source: theory_k}))
    return ax


def _exact(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """[series, eps, k] exact failure probabilities (NaN where unknown; format 1: none)."""
    return arrays["exact"] if "exact" in arrays else np.full(arrays["rate"].shape, np.nan)


def mark_handles(
    arrays: dict[str, np.ndarray],
    sources: list[str],
    theory: Mapping[str, Mapping[float, float | None] | None],
) -> list[Any]:
    """Legend entries (grey) for the marks :func:`plot_failure_vs_k` draws on the panels of
    ``sources``, only those drawn: the bound (saying when it is drawn at 1), the exact
    probability, the no-failure triangle and the k the bound asks for."""
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
        at_one = "\n(drawn at 1 where >= 1: says nothing)" if vacuous else ""
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
        handles.append(
            Line2D(
                [], [], ls=":", lw=0.9, color=GREY, label="k at which the bound reaches the target"
            )
        )
    return handles


def series_names(arrays: dict[str, np.ndarray]) -> list[str]:
    """Series of a verify run: ``statement | P | w`` (format 2) or sources (format 1)."""
    return [str(s) for s in arrays["series" if "series" in arrays else "sources"]]


def headline_series(sources: list[str]) -> list[str]:
    """The series of the reference figure: every statement on real attention with the value
    columns and the hard vectors (bottom singular vectors), the synthetic matrices under the
    proof's own event, the JL lemma rows and Theorem 2. Format 1 runs: all sources."""
    picked = []
    for s in sources:
        parts = s.split(" | ")
        if len(parts) != 3:
            return sources
        statement, source, vectors = parts
        real = source == "real" and vectors in ("values", "bottom-singular", "-")
        synthetic = source.startswith("synthetic") and statement == "jl-rows"
        if real or synthetic or source == "random":
            picked.append(s)
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
    each, from run.json (``meta``), verify.npz (``arrays``) and verify.json's ``k_needed``."""
    import matplotlib.pyplot as plt

    sources = series_names(arrays)
    if not every:
        sources = headline_series(sources)
    cols = 4
    rows = (len(sources) + cols - 1) // cols
    with paper_style():
        fig, axes = plt.subplots(
            rows,
            cols,
            figsize=(DOUBLE_COLUMN, 1.8 * rows + 0.6),
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
        fig.legend(
            handles=eps_lines + marks,
            loc="outside lower center",
            ncol=min(len(eps_lines) + len(marks), 4),
            frameon=False,
            fontsize="small",
        )
        fig.suptitle(
            f"{run_label(meta)}, n = {meta['seq_len']}: measured failure rate with its 95% "
            "cluster-robust interval, against k",
            fontsize="medium",
        )
    return fig


def save_verify_figure(fig: Figure, folder: Path) -> list[Path]:
    """Write ``fig`` as ``folder/failure_vs_k.pdf`` and ``.png`` (closing it)."""
    with paper_style():
        return save(fig, folder / "failure_vs_k")
