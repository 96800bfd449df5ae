"""compare's figures at a small size: no title, label or legend overlaps another, no text
under 6 pt, no layout warning; the ratio figure uses the finding's ratio and a robust axis;
at most about six series per panel."""

from __future__ import annotations

import copy
import warnings
from itertools import combinations, pairwise
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.text import Text

import lowrank
from lowrank.families.compare import plots
from lowrank.families.compare.plots import MAX_SERIES, default_families
from lowrank.families.compare.ratio import robust_limits
from lowrank.families.compare.result import CompareResult
from lowrank.plots.style import SINGLE_COLUMN, paper_style

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def run(bert_dir) -> CompareResult:
    return lowrank.compare(
        str(bert_dir), seq_len=32, num_sequences=3, budget=(4, 8), batch_size=3, progress=False
    )


def _boxes(fig: Any) -> list[tuple[str, Any]]:
    """(name, window extent) of every title, axis label and legend of the figure."""
    renderer = fig.canvas.get_renderer()
    found: list[tuple[str, Any]] = []

    def text(name: str, t: Text | None) -> None:
        if t is not None and t.get_visible() and t.get_text().strip():
            found.append((f"{name}: {t.get_text()[:30]!r}", t.get_window_extent(renderer)))

    text("suptitle", getattr(fig, "_suptitle", None))
    for i, ax in enumerate(fig.axes):
        if not ax.get_visible():
            continue
        for title in (ax.title, ax._left_title, ax._right_title):
            text(f"axes {i} title", title)
        text(f"axes {i} xlabel", ax.xaxis.label)
        text(f"axes {i} ylabel", ax.yaxis.label)
        if ax.get_legend() is not None:
            found.append((f"axes {i} legend", ax.get_legend().get_window_extent(renderer)))
    for j, legend in enumerate(fig.legends):
        found.append((f"figure legend {j}", legend.get_window_extent(renderer)))
    return found


def check_layout(fig: Any) -> None:
    """Draw ``fig`` (no layout warning), then: no two boxes of :func:`_boxes` overlap, every
    visible text is at least 6 pt and inside the figure."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.canvas.draw()
    layout = [str(w.message) for w in caught if "layout" in str(w.message).lower()]
    assert not layout, layout
    boxes = _boxes(fig)
    for (a, box_a), (b, box_b) in combinations(boxes, 2):
        assert not box_a.overlaps(box_b), (a, b)
    page = fig.bbox
    for name, box in boxes:
        assert box.x0 >= page.x0 - 1 and box.x1 <= page.x1 + 1, name
        assert box.y0 >= page.y0 - 1 and box.y1 <= page.y1 + 1, name
    for t in fig.findobj(Text):
        if t.get_visible() and t.get_text().strip():
            assert t.get_fontsize() >= 6 - 1e-9, (t.get_text(), t.get_fontsize())
    renderer = fig.canvas.get_renderer()
    gap = 2 * fig.dpi / 72  # neighbouring tick labels at least 2 pt apart
    for ax in fig.axes:
        for axis, (lo, hi), side in ((ax.xaxis, ax.get_xlim(), 0), (ax.yaxis, ax.get_ylim(), 1)):
            lo, hi = min(lo, hi), max(lo, hi)
            shown = [
                t.label1.get_window_extent(renderer)
                for t in sorted(axis.get_major_ticks(), key=lambda t: t.get_loc())
                if t.label1.get_visible()
                and t.label1.get_text()
                and lo - 1e-9 <= t.get_loc() <= hi + 1e-9
            ]
            for a, b in pairwise(shown):
                first, second = sorted((a, b), key=lambda box: box.get_points()[0][side])
                apart = second.get_points()[0][side] - first.get_points()[1][side]
                assert apart >= gap, (ax.get_title(), side, apart)


FIGURES = ["_error_figure", "_winners_figure", "_ratio_figure", "_heatmaps_figure"]


def _wide(run: CompareResult, families: list[str] | None = None) -> CompareResult:
    """A run of MiniLM's shape (4 budgets, 6 layers x 12 heads, every family or
    ``families``) with random values, built from ``run``'s names: the crowded case of every
    figure."""
    rng = np.random.default_rng(0)
    families = families or run.families
    f, k, layers, heads = len(families), 4, 6, 12
    budgets = np.array([16, 32, 64, 128])
    errors = rng.uniform(0.01, 1.5, (f, k, layers, heads))
    arrays = {
        "families": np.array(families),
        "budgets": budgets,
        "output_error_mean": errors,
        "probs_error_mean": errors**1.2,
        "entropy_mean": rng.uniform(0, 1, (layers, heads)),
        "winner": rng.integers(0, 4, (k, layers, heads)),
        "winner_from_q_k": rng.integers(3, 6, (k, layers, heads)),
        "output_floor": np.where(budgets[:, None, None] >= 32, 0.0, 0.05) + 0 * errors[0],
    }
    config = copy.deepcopy(run.config) | {"seq_len": 512, "num_sequences": 16}
    config |= {"focus_budget": 32, "findings": [], "label": "all-MiniLM-L6-v2 / WikiText-103"}
    return CompareResult(config, arrays)


ORACLES_ONLY = ["lowrank-oracle", "sparse-oracle", "sparse-oracle-renorm", "zero", "uniform"]


def test_a_run_of_oracles_only_gets_one_error_panel(run):
    with paper_style():
        fig = plots._error_figure(_wide(run, ORACLES_ONLY), "output_error")
        assert len(fig.axes) == 1 and "floor" in fig.axes[0].get_legend().get_texts()[-1].get_text()
        check_layout(fig)
        plt.close(fig)


@pytest.mark.parametrize("name", FIGURES)
@pytest.mark.parametrize("shape", ["tiny", "minilm"])
def test_every_compare_figure_is_laid_out_without_overlap(run, name, shape):
    run = run if shape == "tiny" else _wide(run)
    with paper_style():
        if name == "_error_figure" or name == "_winners_figure":
            fig = getattr(plots, name)(run, "output_error")
        elif name == "_ratio_figure":
            fig = plots._ratio_figure(run, run.focus_budget)
        else:
            fig = plots._heatmaps_figure(run, run.focus_budget, "output_error")
        check_layout(fig)
        plt.close(fig)


METHODS = [
    ("plot", {}),
    ("plot", {"metric": "probs_error"}),
    ("plot_winners", {}),
    ("plot_ratio_vs_entropy", {}),
    ("plot_ratio_vs_entropy", {"metric": "probs_error"}),
    ("heatmap", {"family": "nystrom"}),
]


@pytest.mark.parametrize(("method", "options"), METHODS, ids=lambda x: str(x))
def test_every_plot_method_is_laid_out_without_overlap_at_one_column(run, method, options):
    with paper_style():
        fig = plt.figure(figsize=(SINGLE_COLUMN, 3.6), layout="constrained")
        ax = getattr(run, method)(fig.add_subplot(), **options)
        check_layout(ax.figure)
        plt.close(fig)


def _legend_count(ax: Any) -> int:
    return len(ax.get_legend().get_texts())


def test_error_against_budget_shows_a_few_series_with_bars_not_bands(run):
    with paper_style():
        ax = run.plot()
    # both oracles, the best three from Q and K, uniform, the output floor
    assert _legend_count(ax) <= MAX_SERIES + 1
    assert not ax.collections or all(
        c.__class__.__name__ == "LineCollection" for c in ax.collections
    )
    shown = default_families(run, "output_error")
    assert shown[:2] == ["lowrank-oracle", "sparse-oracle"] and shown[-1] == "uniform"
    assert len(shown) <= MAX_SERIES
    plt.close(ax.figure)
    with paper_style():
        fig = plots._error_figure(run, "output_error")
    assert all(_legend_count(a) <= MAX_SERIES + 1 for a in fig.axes)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any("floor" in label for label in labels)  # on the output error
    assert "$" in fig.axes[0].get_ylabel()  # mathtext
    assert "all-MiniLM" not in fig.get_suptitle() and "tiny-bert" in fig.get_suptitle()
    plt.close(fig)


def test_the_ratio_figure_uses_the_findings_ratio_and_sign(run):
    record = run.sparse_vs_lowrank(metric="probs_error")
    with paper_style():
        ax = run.plot_ratio_vs_entropy(metric="probs_error")
        body = matplotlib.rcParams["font.size"]  # annotations at the body size
    points = np.concatenate([c.get_offsets() for c in ax.collections if len(c.get_offsets())])
    low = run.values("lowrank-oracle", run.focus_budget, "probs_error")
    sparse = run.values("sparse-oracle", run.focus_budget, "probs_error")
    expected = np.log(sparse / low).ravel()  # ln(err sparse / err low-rank)
    assert np.allclose(np.sort(points[:, 1]), np.sort(expected))
    from scipy.stats import spearmanr

    rho = spearmanr(points[:, 0], points[:, 1]).statistic
    assert np.sign(rho) == np.sign(record["entropy_spearman"]["rho"])
    assert f"sparse wins {record['sparse']} of {record['heads']} heads" in ax.get_title()
    assert "AUC" in ax.get_title() and "Spearman" in ax.get_title()
    assert "err sparse / err low-rank" in ax.get_ylabel()
    assert ax.title.get_fontsize() == pytest.approx(body)
    plt.close(ax.figure)


def test_an_outlier_does_not_squash_the_ratio_figure(run):
    bent = CompareResult(copy.deepcopy(run.config), {k: v.copy() for k, v in run.arrays.items()})
    fi, ki = bent.families.index("sparse-oracle"), bent.budgets.index(bent.focus_budget)
    bent.arrays["output_error_mean"][fi, ki, 0, 0] *= 1e-7  # ln ratio about -16 on one head
    y = np.log(
        bent.values("sparse-oracle", bent.focus_budget) / bent.values("lowrank-oracle", 8)
    ).ravel()
    with paper_style():
        ax = bent.plot_ratio_vs_entropy(metric="output_error")
    bottom, top = ax.get_ylim()
    assert bottom > y.min() + 5  # the outlier is off the axis ...
    body = np.sort(y)[1:]
    assert bottom <= body.min() and top >= body.max()  # ... the rest is on it
    assert "1 head beyond the axis" in ax.get_title()
    plt.close(ax.figure)


def test_robust_limits_keep_mild_tails_and_zero():
    y = np.array([0.5, 1.0, 1.5, 2.0, 2.5, 3.0])
    lo, hi = robust_limits(y)
    assert lo < 0 < hi and hi > 3.0
    lo, hi = robust_limits(np.r_[np.linspace(-1, 1, 50), 40.0])
    assert hi < 40 and lo < -1


def test_heatmap_is_the_name_and_plot_heatmap_is_deprecated(run):
    with paper_style():
        ax = run.heatmap(family="lowrank-oracle", budget=4)
        assert "b = 4" in ax.get_title()
        plt.close(ax.figure)
        with pytest.warns(DeprecationWarning, match="heatmap"):
            ax = run.plot_heatmap(family="lowrank-oracle", budget=4)
        plt.close(ax.figure)
