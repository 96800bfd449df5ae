"""Every figure type of ``lowrank scaling``, rendered small, checked for layout (lowrank issue
27): no title, label, tick label or legend runs into another; everything inside the figure;
matplotlib reports no layout failure; at most six legend entries; no text below the body
size; a panel states a verdict only where the run has one (five lengths or more)."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

import lowrank
from lowrank.families.scaling.measures import MEASURES
from lowrank.families.scaling.plots import (
    MAX_LEGEND,
    c_curves_figure,
    measure_figure,
    plot_c_curves,
    plot_measure,
)
from lowrank.plots.style import paper_style

FIVE = (8, 16, 24, 32, 64)
SEVEN = (8, 12, 16, 24, 32, 48, 64)
THREE = (8, 16, 32)
LABELS = ("logarithmic", "power law", "saturating", "none fits", "cannot tell")


@pytest.fixture(scope="module")
def runs(bert_dir) -> dict[str, lowrank.ScalingResult]:
    def run(ns: tuple[int, ...]) -> lowrank.ScalingResult:
        return lowrank.scaling(
            str(bert_dir), dataset="sample-imdb", seq_len=ns, num_sequences=4, bootstrap=50,
            verdict_bootstrap=50, progress=False, label="tiny BERT / IMDB sample",
        )  # fmt: skip

    return {"five": run(FIVE), "seven": run(SEVEN), "three": run(THREE)}


@pytest.fixture
def style() -> Iterator[None]:
    with paper_style(), mpl.rc_context({"figure.dpi": 72}):
        yield
    plt.close("all")


def _drawn(make: Callable[[], Figure]) -> Figure:
    """The figure, drawn, with any layout warning matplotlib raises turned into a failure."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        fig = make()
        fig.canvas.draw()
    return fig


def _boxes(fig: Figure) -> dict[str, Bbox]:
    """Window extents of every piece of text furniture: per visible axes its title, its x and
    y axis (the tick labels drawn, with the axis label) and its legend; the suptitle; the
    figure's legends."""
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    boxes: dict[str, Bbox] = {}
    for i, ax in enumerate(a for a in fig.axes if a.get_visible()):
        if ax.get_title():
            boxes[f"axes{i}.title"] = ax.title.get_window_extent(renderer)
        for name, axis in (("xaxis", ax.xaxis), ("yaxis", ax.yaxis)):
            box = axis.get_tightbbox(renderer)
            if box is not None and box.width > 0 and box.height > 0:
                boxes[f"axes{i}.{name}"] = box
        legend = ax.get_legend()
        if legend is not None:
            boxes[f"axes{i}.legend"] = legend.get_window_extent(renderer)
    suptitle = fig._suptitle  # type: ignore[attr-defined]
    if suptitle is not None and suptitle.get_text():
        boxes["suptitle"] = suptitle.get_window_extent(renderer)
    for k, legend in enumerate(fig.legends):
        boxes[f"figure.legend{k}"] = legend.get_window_extent(renderer)
    return boxes


def _check_layout(fig: Figure) -> None:
    boxes = _boxes(fig)
    assert boxes, "nothing drawn"
    page = fig.bbox.padded(1.0)
    for name, box in boxes.items():
        assert page.contains(box.x0, box.y0) and page.contains(box.x1, box.y1), f"{name} off page"
    clashes = [
        (a, b)
        for (a, box_a), (b, box_b) in itertools.combinations(boxes.items(), 2)
        if box_a.overlaps(box_b) and not _same_axis_furniture(a, b)
    ]
    assert not clashes, f"overlapping text: {clashes}"
    for ax in (a for a in fig.axes if a.get_visible()):
        for axis in (ax.xaxis, ax.yaxis):
            ticks = _tick_boxes(axis, fig)
            # a gap of a quarter of the font size: "1024" and "2048" 0.1 px apart read "10242048"
            pad = 0.125 * mpl.rcParams["xtick.labelsize"] * fig.dpi / 72
            touching = [
                (a, b)
                for a, b in itertools.combinations(ticks, 2)
                if a[1].padded(pad).overlaps(b[1].padded(pad))
            ]
            assert not touching, (
                f"tick labels run into each other: {[(a, b) for (a, _), (b, _) in touching]}"
            )
    body = mpl.rcParams["font.size"]
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    for legend in legends:
        assert len(legend.get_texts()) <= MAX_LEGEND
    for text in fig.findobj(mpl.text.Text):
        if text.get_text() and text.get_visible():
            assert text.get_fontsize() >= 0.95 * body, (text.get_text(), text.get_fontsize())


def _tick_boxes(axis: Any, fig: Figure) -> list[tuple[str, Bbox]]:
    """(text, box) of the tick labels an axis draws (those inside its view)."""
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    lo, hi = sorted(axis.get_view_interval())
    return [
        (tick.label1.get_text(), tick.label1.get_window_extent(renderer))
        for tick in axis.get_major_ticks()
        if tick.label1.get_visible() and tick.label1.get_text()
        and lo - 1e-9 * abs(hi) <= tick.get_loc() <= hi * (1 + 1e-9)
    ]  # fmt: skip


def _same_axis_furniture(a: str, b: str) -> bool:
    """The x and y axes of one panel meet at its corner by design."""
    pair = {a.split(".", 1)[1], b.split(".", 1)[1]} if "." in a and "." in b else set()
    return a.split(".")[0] == b.split(".")[0] and pair == {"xaxis", "yaxis"}


@pytest.mark.parametrize("measure", MEASURES)
def test_each_measure_figure_is_laid_out_and_titled_by_its_verdicts(runs, style, measure):
    run = runs["five"]
    fig = _drawn(lambda: measure_figure(run, measure))
    _check_layout(fig)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    for title, group in zip(titles, run.groups, strict=True):
        label = run.verdict_label(measure, group)
        assert title.endswith(f": {label}") and label in LABELS
    assert fig._suptitle.get_text().startswith("tiny BERT / IMDB sample: 4 documents")  # type: ignore[attr-defined]


def test_three_lengths_draw_no_verdict(runs, style):
    run = runs["three"]
    fig = _drawn(lambda: measure_figure(run, "output_rank"))
    _check_layout(fig)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == ["layer 1", "layer 2", "all layers"]  # no verdict in any panel
    suptitle = fig._suptitle.get_text()  # type: ignore[attr-defined]
    assert "no verdict: 3 lengths, a verdict needs 5" in suptitle
    assert not any(label in suptitle for label in LABELS)


@pytest.mark.parametrize("key", ["five", "seven"])
@pytest.mark.parametrize("width", [7.0, 5.25])
def test_the_c_curves_figure_is_laid_out_with_a_legend_or_a_colour_bar(runs, style, key, width):
    run = runs[key]
    fig = _drawn(lambda: c_curves_figure(run, run.spectrum_runs(), width=width))
    _check_layout(fig)
    if key == "seven":  # seven lengths: a colour bar of n instead of seven legend entries
        assert not fig.legends
        bars = [ax for ax in fig.axes if ax.get_ylabel() == "$n$"]
        assert len(bars) == 1 and [t.get_text() for t in bars[0].get_yticklabels()] == [
            str(n) for n in SEVEN
        ]
    else:
        assert [t.get_text() for t in fig.legends[0].get_texts()] == [f"n = {n}" for n in FIVE]


@pytest.mark.parametrize("group", ["layer 1", "model"])
def test_a_single_panel_with_its_legend_is_laid_out(runs, style, group):
    run = runs["five"]
    fig = _drawn(lambda: plot_measure(run, "output_rank", group).figure)
    _check_layout(fig)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(labels) == 5  # the means, three fits, the position control
    assert labels[-1] == "$n$ = 24, positions shifted by 40"
    assert any(r"$\beta$ = " in label for label in labels)  # fitted values in the legend
    assert "rank $k$" in ax.get_ylabel() and "0.1" in ax.get_ylabel()  # mathtext, tau


@pytest.mark.parametrize("key", ["five", "seven"])
def test_a_single_c_panel_is_laid_out(runs, style, key):
    run = runs[key]
    fig = _drawn(lambda: plot_c_curves(run.spectrum_runs(), 0).figure)
    _check_layout(fig)


def test_lengths_in_the_thousands_keep_their_tick_labels_apart(runs, style):
    """n = 1024 and 2048 side by side in a narrow panel ran together ('10242048')."""
    five = runs["five"]
    long = (128, 256, 512, 1024, 2048)
    # the tiny run's numbers drawn at these n: a layout check, the curves mean nothing
    run = replace(five, arrays=five.arrays | {"ns": np.array(long), "position_control_n": 512})
    fig = _drawn(lambda: measure_figure(run, "rank90", width=5.25))  # panels as in 4 columns
    _check_layout(fig)
    ax = next(a for a in fig.axes if a.get_visible())
    assert [t.get_text() for t in ax.get_xticklabels()] == ["128", "256", "512", "1k", "2k"]
    assert fig.axes[-2].get_xlabel() == "sequence length $n$\n(1k = 1024)"
