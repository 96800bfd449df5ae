"""The model effect of a ``lowrank project`` run: every layer's K, V projected, the final
hidden states against the exact model's.

A sharing strategy is a level (per head, per layer, per model) and a choice: E and F drawn
from one R, or separately (``lowrank.maths.names.SHARING_DESIGN``). The run's figure
(:func:`effect_figure`) is a grid of small multiples, a row per random family and a column per
level, each panel holding the two choices at that level: its one message is whether drawing E
and F from one R costs anything there. The single panel (:func:`plot_effect`) colours the
lines by level and dashes the one-R choice. Both name the trivial baselines with their values
in the legend, so that two baselines close together (zero 0.584, uniform 0.589) stay apart.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lowrank.families.project.styles import REFERENCE_STYLE
from lowrank.maths.names import SHARING_DESIGN
from lowrank.plots.style import (
    DOUBLE_COLUMN,
    SINGLE_COLUMN,
    axes_or_new,
    below_legend,
    merged_legend,
)
from lowrank.runs.labels import run_label

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from lowrank.families.project.result import ProjectionResult

EFFECT_LABEL = {
    "cosine": "cosine with exact final states",
    "relative_error": "relative error, final states",
    "scale_free": "scale-free error, final states",
}
EFFECT_SHORT = {
    "cosine": "cosine with exact",
    "relative_error": "relative error",
    "scale_free": "scale-free error",
}
LEVELS = ("head", "layer", "model")
CHOICE_LABEL = {False: "separate E and F", True: "one R for E and F"}
CHOICE_STYLE: dict[bool, dict[str, Any]] = {
    False: {"color": "#0072B2", "ls": "-", "marker": "o"},
    True: {"color": "#D55E00", "ls": "--", "marker": "s"},
}
LEVEL_COLOUR = {"head": "#0072B2", "layer": "#009E73", "model": "#CC79A7"}


def _results(run: ProjectionResult) -> list[dict[str, Any]]:
    return (run.config.get("model_effect") or {}).get("results") or []


def random_families(run: ProjectionResult) -> list[str]:
    """The random projection families of the run's model effect, in measuring order."""
    return list(
        dict.fromkeys(
            r["method"] for r in _results(run) if r["k"] is not None and r["sharing"] != "n/a"
        )
    )


def _sharing_label(sharing: str) -> str:
    """``none (per head, separate E, F)``: the strategy and its place in the sharing grid."""
    if sharing not in SHARING_DESIGN:
        return sharing
    level, same_r = SHARING_DESIGN[sharing]
    return f"{sharing} (per {level}, {'one R for E, F' if same_r else 'separate E, F'})"


def _references(
    ax: Axes, results: list[dict[str, Any]], metric: str, family: str | None
) -> list[tuple[str, float, Any]]:
    """Draw the baselines (grey horizontals) and every deterministic method (black).

    Returns ``(name, value at the largest k, colour)`` of each, for direct labels; the
    lines are labelled too (``baseline: zero attention = 0.584``, ``mean-pool
    (deterministic)``) for the figures whose panels share one legend."""
    drawn: list[tuple[str, float, Any]] = []
    pooled: dict[str, list[tuple[int, float]]] = {}
    for r in results:
        if r["k"] is None:
            style = {
                k: v for k, v in REFERENCE_STYLE[r["method"]].items() if k not in ("marker", "ms")
            }
            style["label"] = f"{style['label']} = {r[metric]:.3f}"
            ax.axhline(r[metric], **style)
            name = f"{r['method']} attention {r[metric]:.3f}"
            drawn.append((name, r[metric], "0.3"))
        elif r["sharing"] == "n/a" and r["method"] != family:
            pooled.setdefault(r["method"], []).append((r["k"], r[metric]))
    for method, marker in zip(pooled, "^vDs", strict=False):
        ks, values = zip(*sorted(pooled[method]), strict=True)
        ax.plot(
            ks,
            values,
            color="k",
            marker=marker,
            mfc="none",
            ms=3.5,
            lw=1,
            label=f"{method} (deterministic)",
        )
        drawn.append((method, values[-1], "k"))
    return drawn


def direct_labels(ax: Axes, labels: list[tuple[str, float, Any]], gap: float = 0.09) -> None:
    """Write each ``(text, y, colour)`` just right of the panel at height y, at the body
    font size. Labels closer than ``gap`` of the axes' height share one text, a line each,
    the higher value on top (two baselines 0.005 apart stay legible); the texts left are
    nudged apart so that none overlaps the next."""
    if not labels:
        return
    ax.autoscale_view()
    lo, hi = ax.get_ylim()
    rows: list[tuple[list[str], float, Any]] = []
    for text, y, colour in sorted(labels, key=lambda item: item[1]):
        place = (y - lo) / (hi - lo)
        if rows and place - rows[-1][1] < gap:
            rows[-1][0].append(text)  # too close to tell apart: one line, both values
            continue
        rows.append(([text], place, colour))
    places = [place for _, place, _ in rows]
    for i in range(1, len(places)):  # a text of m lines is m gaps tall
        half = gap * (len(rows[i - 1][0]) + len(rows[i][0])) / 2
        places[i] = max(places[i], places[i - 1] + half)
    shift = max(0.0, places[-1] - 1.0)  # pushed off the top: move the stack down
    for (texts, _, colour), place in zip(rows, places, strict=True):
        ax.text(
            1.02,
            place - shift,
            "\n".join(reversed(texts)),
            transform=ax.transAxes,
            va="center",
            ha="left",
            color=colour,
        )


def _axes_setup(ax: Axes, run: ProjectionResult, metric: str) -> None:
    ax.set(xscale="log", xlabel="projected dimension k", ylabel=EFFECT_LABEL[metric])
    ax.set_xticks(run.ks, [str(k) for k in run.ks])
    ax.minorticks_off()


def plot_effect(
    run: ProjectionResult,
    family: str,
    ax: Axes | None = None,
    metric: str = "cosine",
    legend: bool = True,
) -> Axes | None:
    """Model-level ``cosine`` (``relative_error``, ``scale_free``) of the final hidden states
    against k for one random projection ``family`` (E = delta R, F = exp(-delta) R): a line
    per sharing strategy, coloured by the level it shares at and dashed where E and F come
    from one R (the legend, below the axes with ``legend``, lists them); every deterministic
    method (pooling) in black and the trivial baselines (every layer's attention replaced by
    zero or uniform attention) as grey horizontal lines, each named right of the panel with
    its value (:func:`direct_labels`). None when the run has no model effect."""
    results = _results(run)
    if not results:
        return None
    ax = axes_or_new(ax, (SINGLE_COLUMN + 1.0, 4.4))
    references = _references(ax, results, metric, family)
    lines: dict[str, list[tuple[int, float]]] = {}
    for r in results:
        if r["k"] is not None and r["method"] == family:
            lines.setdefault(r["sharing"], []).append((r["k"], r[metric]))
    for sharing, points in lines.items():
        level, same_r = SHARING_DESIGN.get(sharing, ("head", False))
        ks, values = zip(*sorted(points), strict=True)
        ax.plot(
            ks,
            values,
            color=LEVEL_COLOUR.get(level, "C0"),
            ls=CHOICE_STYLE[same_r]["ls"],
            marker=CHOICE_STYLE[same_r]["marker"],
            ms=3,
            lw=1.1,
            label=f"{family}, {_sharing_label(sharing)}",
        )
    _axes_setup(ax, run, metric)
    direct_labels(ax, references)
    pooled = [name for name, _, colour in references if colour == "k"]
    others = f"\nblack: {', '.join(pooled)} (deterministic)" if pooled else ""
    ax.set_title(rf"{family}: $E = \delta R$, $F = e^{{-\delta}} R$ in every layer{others}")
    if legend:
        handles = [
            h
            for h in ax.get_legend_handles_labels()[0]
            if str(h.get_label()).startswith(f"{family}, ")
        ]
        below_legend(ax, handles, ncol=1, fontsize="small")
    return ax


def effect_figure(run: ProjectionResult, metric: str = "cosine") -> Figure | None:
    """The run's model-effect figure: a row per random family, a column per sharing level,
    each panel the two choices at that level (separate E and F, one R for both) against k,
    with the deterministic methods and the baselines; one legend below. None when the run
    has no model effect of a random family."""
    import matplotlib.pyplot as plt

    results, families = _results(run), random_families(run)
    if not families:
        return None
    present = {SHARING_DESIGN[r["sharing"]][0] for r in results if r["sharing"] in SHARING_DESIGN}
    levels = [level for level in LEVELS if level in present]
    fig, axes = plt.subplots(
        len(families),
        len(levels),
        figsize=(DOUBLE_COLUMN, 1.85 * len(families) + 1.3),
        layout="constrained",
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    for i, family in enumerate(families):
        for j, level in enumerate(levels):
            ax = axes[i, j]
            _references(ax, results, metric, family)
            for sharing, (lvl, same_r) in SHARING_DESIGN.items():
                points = sorted(
                    (r["k"], r[metric])
                    for r in results
                    if r["method"] == family and r["sharing"] == sharing
                )
                if lvl != level or not points:
                    continue
                ks, values = zip(*points, strict=True)
                ax.plot(
                    ks, values, ms=3, lw=1.2, label=CHOICE_LABEL[same_r], **CHOICE_STYLE[same_r]
                )
            _axes_setup(ax, run, metric)
            ax.set_title(f"{family}, per {level}")
            ax.set_ylabel(EFFECT_SHORT[metric] if j == 0 else "")
            if i < len(families) - 1:
                ax.set_xlabel("")
    merged_legend(fig, list(axes.flat), ncol=3, fontsize="small")
    fig.suptitle(
        f"{run_label(run.config)}, n = {run.config['seq_len']}, N = {run.config['num_sequences']}: "
        f"{EFFECT_LABEL[metric]} with every layer's K, V projected\n"
        r"($E = \delta R$, $F = e^{-\delta} R$; one draw per configuration)",
        fontsize="medium",
    )
    return fig
