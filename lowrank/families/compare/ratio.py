"""The figure of compare's verdict on sparse against low-rank: ln(err sparse / err low-rank)
of the oracles against each head's entropy, annotated with what the finding says (heads won,
the AUC of entropy with its interval, Spearman's rho with its interval) and nothing more: no
threshold is drawn, since none separates the heads."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from lowrank.plots.style import SINGLE_COLUMN, axes_or_new

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from lowrank.families.compare.result import CompareResult

SHORT = {
    "probs_error": r"attention error $\|\tilde{P} - P\|_F$",
    "output_error": r"output error $\|\tilde{P}V - PV\|$",
    "output_scaled_error": "scale-free output error",
    "output_cosine": "output cosine",
}
RESAMPLED = {
    ("sequences", "layers"): "sequences and layers",
    ("sequences",): "sequences",
    ("layers",): "layers",
}


def robust_limits(y: np.ndarray) -> tuple[float, float]:
    """y limits that show the body of the points and 0: from the lowest to the highest point
    within 3 interquartile ranges of the quartiles (Tukey's far-out fences; a point beyond
    would squash the rest), padded by 8%."""
    y = y[np.isfinite(y)]
    if y.size == 0:
        return -1.0, 1.0
    q1, q3 = np.percentile(y, [25, 75])
    spread = float(q3 - q1) or float(np.ptp(y)) or 1.0
    body = y[(y >= q1 - 3 * spread) & (y <= q3 + 3 * spread)]
    lo, hi = min(float(body.min()), 0.0), max(float(body.max()), 0.0)
    pad = 0.08 * (hi - lo or 1.0)
    return lo - pad, hi + pad


def _interval(record: dict[str, Any], low: str, high: str) -> str:
    a, b = record.get(low), record.get(high)
    if isinstance(a, float) and isinstance(b, float) and np.isfinite(a) and np.isfinite(b):
        return f" [{a:.2f}, {b:.2f}]"
    return " (no interval)"


def verdict_title(
    record: dict[str, Any] | None, metric: str, budget: int, resampling: bool = True
) -> str:
    """The panel's title: metric and budget, then what the finding says about them (and,
    with ``resampling``, what its intervals resample)."""
    lines = [f"{SHORT.get(metric, metric)}, b = {budget}"]
    if record is None:
        return lines[0]
    sep, cor = record["separability"], record["entropy_spearman"]
    lines.append(f"sparse wins {record['sparse']} of {record['heads']} heads")
    if np.isfinite(sep.get("auc", np.nan)):
        side = "lower" if sep["sparse_side"].startswith("lower") else "higher"
        interval = _interval(sep, "auc_side_low", "auc_side_high")
        lines.append(f"AUC {sep['auc_side']:.2f}{interval} ({side} entropy)")
    rho = cor.get("rho", np.nan)
    if isinstance(rho, float) and np.isfinite(rho):
        lines.append(f"Spearman $\\rho$ = {rho:.2f}{_interval(cor, 'low', 'high')}")
    units = resampled_words(cor)
    if resampling and units:
        lines.append(f"95% bootstrap over {units}")
    return "\n".join(lines)


def resampled_words(record: dict[str, Any]) -> str:
    """What a record's interval resampled, in words ("" for none)."""
    units = tuple(record.get("resampling", {}).get("resampled", []))
    return RESAMPLED.get(units, "")


def plot_ratio_vs_entropy(
    run: CompareResult,
    budget: int,
    metric: str | None = None,
    ax: Axes | None = None,
    colorbar: bool = True,
    resampling: bool = True,
) -> Axes:
    """ln(err sparse / err low-rank) of the oracles' mean errors against each head's mean
    normalised row entropy, one point per head coloured by layer: above 0 low-rank is
    better, below 0 sparse wins. It is the ratio of the printed finding, so Spearman's rho
    has the finding's sign.

    The title states the finding (:meth:`CompareResult.sparse_vs_lowrank`): heads sparse wins,
    the AUC of entropy for them and rho, with their intervals. The y axis is robust
    (:func:`robust_limits`): a point beyond Tukey's far-out fences is drawn at the axis'
    edge as an open triangle and counted in the title. ``resampling`` False leaves the
    intervals' resampling out of the title (a figure of several panels says it once).
    """
    import matplotlib as mpl

    ax = axes_or_new(ax, (SINGLE_COLUMN, 3.0))
    metric = metric or str(run.config.get("winner_metric", "output_error"))
    low = run.values("lowrank-oracle", budget, metric)
    sparse = run.values("sparse-oracle", budget, metric)
    entropy = run.arrays["entropy_mean"]  # (L, H)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.log(sparse / low)  # > 0: low-rank better
    bottom, top = robust_limits(ratio)
    layers = entropy.shape[0]
    viridis = mpl.colormaps["viridis"]
    colours = [viridis(i / max(layers - 1, 1)) for i in range(layers)]
    beyond = 0
    for layer in range(layers):
        x, y = entropy[layer], ratio[layer]
        inside = (y >= bottom) & (y <= top)
        ax.scatter(x[inside], y[inside], s=10, color=colours[layer], lw=0)
        for edge, marker, out in ((top, "^", y > top), (bottom, "v", y < bottom)):
            if out.any():
                ax.scatter(
                    x[out], np.full(out.sum(), edge), s=22, marker=marker, facecolors="none",
                    edgecolors=colours[layer], lw=0.8, clip_on=False,
                )  # fmt: skip
                beyond += int(out.sum())
    ax.set_ylim(bottom, top)
    if colorbar:
        _layer_bar(ax, colours)
    ax.axhline(0, color="0.5", lw=0.6, ls="--")
    record = run.sparse_vs_lowrank(at=budget, metric=metric)
    title = verdict_title(record, metric, budget, resampling)
    if beyond:
        title += f"\n{beyond} head{'s' * (beyond > 1)} beyond the axis (triangles)"
    ax.set_title(title, fontsize="medium")
    ax.set(
        xlabel="mean row entropy of P / ln n",
        ylabel="$\\ln$(err sparse / err low-rank)\n(> 0: low-rank better)",
    )
    return ax


def _layer_bar(ax: Axes, colours: list[Any]) -> None:
    import matplotlib as mpl

    layers = len(colours)
    cmap = mpl.colors.ListedColormap(colours)
    norm = mpl.colors.BoundaryNorm(np.arange(0.5, layers + 1.5), layers)
    bar = ax.figure.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.02)
    bar.set_label("layer")
    step = max(1, -(-layers // 10))
    bar.set_ticks(range(1, layers + 1, step))
    bar.minorticks_off()
    bar.ax.tick_params(length=0)
