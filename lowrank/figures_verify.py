"""Figure of a ``lowrank verify`` run: measured failure rate against k, bounds dashed."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lowrank.figures import DOUBLE_COLUMN, axes_or_new, bottom_legend, paper_style, save
from lowrank.runs import read_json, read_meta, read_npz

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def plot_failure_vs_k(
    arrays: dict[str, np.ndarray],
    source: str,
    theory_k: dict[float, float] | None = None,
    ax: Axes | None = None,
) -> Axes:
    """Failure rate against k for one source, a line per eps (log y).

    Dashed: the bound; dotted verticals: the k the theorem asks for (when within the plot).
    A rate of zero is drawn at the upper end of its 95% interval with a downward marker.
    """
    import seaborn as sns

    ax = axes_or_new(ax)
    sources = [str(s) for s in arrays["sources"]]
    si = sources.index(source)
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
        if theory_k and theory_k.get(float(e), np.inf) <= ks.max():
            ax.axvline(theory_k[float(e)], ls=":", lw=0.9, color=colour)
    ax.set(xscale="log", yscale="log", ylim=(floor / 2, 1.2), xlabel="k", ylabel="failure rate")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.set_title(source, fontsize="medium")
    return ax


def plot_verify_folder(folder: Path, out: Path | None = None) -> list[Path]:
    """All sources of a verify run in one figure, into ``folder/figures``."""
    import matplotlib.pyplot as plt

    meta = read_meta(folder, "lowrank-verify")
    arrays = read_npz(folder / "verify.npz")
    needed = read_json(folder / "verify.json")["k_needed"]
    sources = [str(s) for s in arrays["sources"]]
    cols = 3
    rows = (len(sources) + cols - 1) // cols
    with paper_style():
        fig, axes = plt.subplots(
            rows, cols, figsize=(DOUBLE_COLUMN, 2.2 * rows), layout="constrained", squeeze=False
        )
        for ax, source in zip(axes.flat, sources, strict=False):
            theory = {float(r["eps"]): r["theory_k"] for r in needed if r["source"] == source}
            plot_failure_vs_k(arrays, source, theory, ax)
        for ax in list(axes.flat)[len(sources) :]:
            ax.set_visible(False)
        bottom_legend(fig, axes.flat[0])
        fig.suptitle(
            f"{meta['model']['name']} / {meta['corpus']['dataset']}, n = {meta['seq_len']}: "
            "measured failure rate (95% CI), bound dashed, theorem's k dotted",
            fontsize="medium",
        )
        return save(fig, (out or folder / "figures") / "failure_vs_k")
