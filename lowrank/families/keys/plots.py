"""Figures of a ``lowrank keys`` run: PCA rank against layer (pre against post RoPE, per KV
head, d marked), top-k recall, mass and output error against r for each k, the logits'
rank against the weights', and ShadowKV's whole-layer ranks.

Every function takes ``ax=None`` and returns the axes; :func:`write_figures` composes them
into the PDF/PNG files ``lowrank figures`` and ``--plot`` write.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lowrank.families.keys.names import per_sequence_mean
from lowrank.plots.style import (
    DOUBLE_COLUMN,
    SINGLE_COLUMN,
    axes_or_new,
    below_legend,
    layer_ticks,
    merged_legend,
    paper_style,
    per_run,
    save,
)
from lowrank.runs.labels import corpus_name, run_label

if TYPE_CHECKING:
    from collections.abc import Sequence

    from matplotlib.axes import Axes

    from lowrank.families.keys.result import KeysResult

PRE, POST, VALUE, CALIBRATION = "#0072b2", "#d55e00", "#009e73", "0.45"
BUDGET_COLOURS = ("#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9")
METRIC_AXIS = {
    "recall": "recall of the exact top-$k$",
    "mass": "attention mass kept",
    "error": r"output error $\|\tilde{o} - o\| \,/\, \|o\|$",
}


def _percent(run: KeysResult) -> str:
    return f"{round(100 * float(run.config['rank_fraction']))}%"


def _fraction(f: float) -> str:
    inverse = 1 / f
    if f < 1 and abs(inverse - round(inverse)) < 1e-9:
        return f"n/{round(inverse)}"
    return f"{f:g}\\,n"


def plot_rank_vs_layer(
    run: KeysResult, ax: Axes | None = None, head: int | None = None, tensor: str = "key"
) -> Axes:
    """PCA rank against layer, pre- (blue) against post-RoPE (orange), values (green) with
    keys, the rank on the calibration text (grey, dotted) and d (black, dashed).

    ``head`` (1-based) draws that head with its bootstrap band; None the mean over heads
    with the range over heads as the band.
    """
    ax = axes_or_new(ax, (SINGLE_COLUMN, 2.6))
    a, d = run.arrays, run.head_dim
    rotary = bool(run.config.get("rotary"))
    what = {"key": "keys", "query": "queries"}[tensor]
    series = [("pre", PRE, f"pre-RoPE {what}"), ("post", POST, f"post-RoPE {what}")]
    if not rotary:
        series = [("post", POST, f"{what} (no rotary: pre = post)")]
    for side, colour, label in series:
        _rank_line(ax, a, f"{tensor}_rank90_{side}", head, colour, label)
    if tensor == "key":
        _rank_line(ax, a, "value_rank90", head, VALUE, "values", band=False, lw=0.9)
    cal = a.get(f"calibration_{tensor}_rank90_post")
    if cal is not None:
        layers = np.arange(1, cal.shape[0] + 1)
        y = cal.mean(axis=1) if head is None else cal[:, head - 1]
        label = f"{'post-RoPE ' if rotary else ''}{what}, calibration text"
        ax.plot(layers, y, color=CALIBRATION, ls=":", lw=1.0, label=label)
    ax.axhline(d, color="0.1", ls="--", lw=0.8, label=f"head dimension $d = {d}$")
    ax.set_ylim(0, d * 1.08)
    ax.set_xlabel("layer")
    ax.set_ylabel(f"PCA components for {_percent(run)}\nof the explained variance")
    shared = tensor == "key" and run.config["kv_heads"] != run.config["num_heads"]
    which = f"mean over {'KV ' if shared else ''}heads (band: range)"
    which = which if head is None else "bootstrap 95% band"
    ax.set_title(which if head is None else f"head {head}: {which}", fontsize="small")
    _integer_ticks(ax, a[f"{tensor}_rank90_post"].shape[0])
    below_legend(ax)
    return ax


def _rank_line(
    ax: Axes,
    a: dict[str, np.ndarray],
    name: str,
    head: int | None,
    colour: str,
    label: str,
    band: bool = True,
    lw: float = 1.4,
) -> None:
    ranks = a[name].astype(float)
    layers = np.arange(1, ranks.shape[0] + 1)
    if head is None:
        y, low, high = ranks.mean(axis=1), ranks.min(axis=1), ranks.max(axis=1)
    else:
        y = ranks[:, head - 1]
        low, high = a[f"{name}_low"][:, head - 1], a[f"{name}_high"][:, head - 1]
    ax.plot(layers, y, color=colour, lw=lw, marker="o", ms=2.5, label=label)
    if band and np.isfinite(low).any():
        ax.fill_between(layers, low, high, color=colour, alpha=0.18, lw=0)


def _integer_ticks(ax: Axes, layers: int) -> None:
    ax.set_xlim(0.5, layers + 0.5)
    ax.set_xticks(layer_ticks(layers, most=8))


def plot_topk_vs_rank(
    run: KeysResult,
    ax: Axes | None = None,
    metric: str = "recall",
    budgets: Sequence[float] | None = None,
) -> Axes:
    """One colour per budget k: the calibrated PCA basis (solid, circles) and the random
    orthogonal basis (dotted, crosses); mean over layers and heads of each sequence's mean,
    error bars the 95% t-interval over sequences. At r = d both are exact top-k."""
    from matplotlib.lines import Line2D

    from lowrank.maths.stats import t_interval

    ax = axes_or_new(ax, (SINGLE_COLUMN, 2.6))
    ranks, grid = np.array(run.ranks), run.budgets
    chosen = list(budgets) if budgets else grid
    handles: list[Any] = []
    bases = [(0, "-", "o", "PCA, calibration text")]
    if len(run.bases) > 2:
        bases.append((2, ":", "x", "random orthogonal"))
    for ki, f in enumerate(grid):
        if f not in chosen:
            continue
        colour = BUDGET_COLOURS[ki % len(BUDGET_COLOURS)]
        for s, ls, marker, _ in bases:
            values = per_sequence_mean(run.arrays, s, metric)[:, :, ki]  # (N, R)
            mean = values.mean(axis=0)
            bounds = np.array([t_interval(values[:, j]) for j in range(len(ranks))])
            err = np.abs(bounds.T - mean) if np.isfinite(bounds).all() else None
            ax.errorbar(ranks, mean, yerr=err, color=colour, ls=ls, marker=marker, ms=3,
                        lw=1.1, capsize=1.5, mfc="none")  # fmt: skip
        handles.append(Line2D([], [], color=colour, lw=1.5, label=f"$k = {_fraction(f)}$"))
    for _, ls, marker, label in bases:
        handles.append(Line2D([], [], color="0.3", ls=ls, marker=marker, mfc="none", label=label))
    ax.set_xscale("log", base=2)
    ax.set_xticks(ranks, [str(r) for r in ranks])
    ax.minorticks_off()
    ax.set_xlabel("dimensions $r$ of $q, k$ ($r = d$: exact)")
    ax.set_ylabel(METRIC_AXIS[metric])
    if metric != "error":
        ax.set_ylim(top=1.02)
    below_legend(ax, handles=handles, ncol=2)
    return ax


def plot_logits_vs_weights(run: KeysResult, ax: Axes | None = None) -> Axes:
    """Each head's energy rank of its logits on the text (mean over sequences) against that
    of its weights W_Q^h W_K^g^T (biases and RoPE aside), with y = x."""
    ax = axes_or_new(ax, (SINGLE_COLUMN, 2.9))
    a, d = run.arrays, run.head_dim
    x = a["weights_rank90_energy"].ravel().astype(float)
    jitter = np.random.default_rng(0).uniform(-0.25, 0.25, x.shape)  # integer ranks overlap
    rotary = bool(run.config.get("rotary"))
    series = [("pre", PRE, "o", "pre-RoPE logits"), ("post", POST, "^", "post-RoPE logits")]
    if not rotary:
        series = [("post", POST, "o", "logits (no rotary)")]
    for side, colour, marker, label in series:
        y = a[f"logits_{side}_rank90_energy"].mean(axis=0).ravel()
        ax.scatter(x + jitter, y, s=7, color=colour, marker=marker, alpha=0.6, lw=0, label=label)
    ax.plot([0, d], [0, d], color="0.3", ls="--", lw=0.8, label="$y = x$")
    ax.set(xlim=(0, d * 1.04), ylim=(0, d * 1.04))
    share = _percent(run)
    ax.set_xlabel(f"rank of $W_Q^h W_K^{{h\\top}}$ for {share} energy")
    ax.set_ylabel(f"rank of the logits $QK^\\top$\nfor {share} energy (mean over seq.)")
    below_legend(ax, ncol=3)
    return ax


def plot_whole_layer(run: KeysResult, ax: Axes | None = None) -> Axes:
    """ShadowKV's view: each layer's energy rank of every sequence's n x (H_kv d) pre- and
    post-RoPE key matrix and value matrix (mean over sequences, band: range), H_kv d marked."""
    ax = axes_or_new(ax, (SINGLE_COLUMN, 2.6))
    ranks = run.arrays["layer_rank90_energy"]  # (N, 3, L)
    width = int(run.config["kv_heads"]) * run.head_dim
    top = min(width, int(run.config["seq_len"]))  # the rank of an n x (H_kv d) matrix
    layers = np.arange(1, ranks.shape[2] + 1)
    rotary = bool(run.config.get("rotary"))
    kinds = [(0, PRE, "pre-RoPE keys"), (1, POST, "post-RoPE keys"), (2, VALUE, "values")]
    if not rotary:
        kinds = [(1, POST, "keys (no rotary)"), (2, VALUE, "values")]
    for i, colour, label in kinds:
        y = ranks[:, i]
        ax.plot(layers, y.mean(axis=0), color=colour, marker="o", ms=2.5, lw=1.3, label=label)
        ax.fill_between(layers, y.min(axis=0), y.max(axis=0), color=colour, alpha=0.15, lw=0)
    bound = f"$H_{{kv}}\\,d = {width}$" if top == width else f"$n = {top} < H_{{kv}}\\,d$"
    ax.axhline(top, color="0.1", ls="--", lw=0.8, label=f"full rank: {bound}")
    ax.set_ylim(0, top * 1.08)
    ax.set_xlabel("layer")
    ax.set_ylabel(f"rank for {_percent(run)} energy of the\nwhole layer's $n \\times H_{{kv}} d$")
    _integer_ticks(ax, ranks.shape[2])
    below_legend(ax, ncol=2)
    return ax


def write_figures(results: Sequence[KeysResult], out: Path) -> list[Path]:
    """Every keys figure of each run (PDF + PNG): ``key_rank`` (mean over KV heads),
    ``key_rank_heads`` (one panel per KV head), ``topk`` (recall, mass and error against r),
    ``logits_vs_weights`` and ``whole_layer``; several runs go to one subfolder each."""
    import matplotlib.pyplot as plt

    written: list[Path] = []
    with paper_style():
        for run, folder in per_run(results, out):
            title = run_label(run.config)
            fig, ax = plt.subplots(figsize=(SINGLE_COLUMN, 3.0), layout="constrained")
            plot_rank_vs_layer(run, ax)
            fig.suptitle(title, fontsize="small")
            written += save(fig, folder / "key_rank")
            written += save(_heads_figure(run, title), folder / "key_rank_heads")
            written += save(_topk_figure(run, title), folder / "topk")
            if "weights_rank90_energy" in run.arrays:
                fig, ax = plt.subplots(figsize=(SINGLE_COLUMN, 3.2), layout="constrained")
                plot_logits_vs_weights(run, ax)
                fig.suptitle(title, fontsize="small")
                written += save(fig, folder / "logits_vs_weights")
            fig, ax = plt.subplots(figsize=(SINGLE_COLUMN, 3.0), layout="constrained")
            plot_whole_layer(run, ax)
            fig.suptitle(title, fontsize="small")
            written += save(fig, folder / "whole_layer")
    return written


def _heads_figure(run: KeysResult, title: str) -> Any:
    import matplotlib.pyplot as plt

    kv = int(run.config["kv_heads"])
    group = int(run.config["num_heads"]) // kv
    cols = min(kv, 4)
    rows = -(-kv // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(DOUBLE_COLUMN, 2.0 * rows + 0.8), layout="constrained",
        squeeze=False, sharex=True, sharey=True,
    )  # fmt: skip
    for h, panel in enumerate(axes.flat):
        if h >= kv:
            panel.set_visible(False)
            continue
        plot_rank_vs_layer(run, panel, head=h + 1)
        panel.get_legend().remove()
        heads = f"query heads {h * group + 1}-{(h + 1) * group}" if group > 1 else f"head {h + 1}"
        panel.set_title(f"KV head {h + 1} ({heads})" if group > 1 else heads, fontsize="small")
        if h % cols:
            panel.set_ylabel("")
        if h < kv - cols:
            panel.set_xlabel("")
    merged_legend(fig, [axes.flat[0]], ncol=3)
    unit = "KV head" if group > 1 else "head"
    fig.suptitle(f"{title}: keys per {unit} (bands: 95% bootstrap over sequences)",
                 fontsize="small")  # fmt: skip
    return fig


def _topk_figure(run: KeysResult, title: str) -> Any:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(DOUBLE_COLUMN, 3.0), layout="constrained")
    for i, (panel, metric) in enumerate(zip(axes, ("recall", "mass", "error"), strict=True)):
        plot_topk_vs_rank(run, panel, metric=metric)
        panel.get_legend().remove()
        if i != 1:
            panel.set_xlabel("")
    handles, labels = _legend_entries(axes[0], run)
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), frameon=False,
               fontsize="x-small")  # fmt: skip
    cal = corpus_name(run.config["calibration"])
    fig.suptitle(
        f"{title}: top-$k$ keys chosen from $r$ of $d = {run.head_dim}$ dimensions\n(PCA fitted "
        f"on {cal}; mean over layers and heads, bars: 95% t-interval over sequences)",
        fontsize="small",
    )
    return fig


def _legend_entries(ax: Axes, run: KeysResult) -> tuple[list[Any], list[str]]:
    """The handles :func:`plot_topk_vs_rank` gave its legend (drawn again for a figure)."""
    from matplotlib.lines import Line2D

    handles: list[Any] = [
        Line2D([], [], color=BUDGET_COLOURS[i % len(BUDGET_COLOURS)], lw=1.5)
        for i in range(len(run.budgets))
    ]
    labels = [f"$k = {_fraction(f)}$" for f in run.budgets]
    handles.append(Line2D([], [], color="0.3", marker="o", mfc="none"))
    labels.append("PCA, calibration text")
    if len(run.bases) > 2:
        handles.append(Line2D([], [], color="0.3", ls=":", marker="x"))
        labels.append("random orthogonal")
    return handles, labels
