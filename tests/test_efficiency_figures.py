"""Every efficiency figure rendered small: titles, labels, tick labels and legends do not
overlap one another, legends stay off the data, at most six legend entries at the body font
size, the 1x reference unlike any data line or legend entry, and no verdict in a title."""

from __future__ import annotations

import re
import warnings
from itertools import combinations
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import pytest
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

import lowrank
from lowrank.families.efficiency import timing
from lowrank.families.efficiency.linformer import ExactSelfAttention
from lowrank.families.efficiency.plots import MAX_KS, efficiency_figure, shown_ks
from lowrank.plots.style import paper_style

matplotlib.use("Agg")

TINY = {"hidden": 16, "heads": 2, "ffn": 32, "layers": 1, "device": "cpu", "progress": False}
QUICK = {"repeats": 2, "warmup": 0, **TINY}
VERDICT = re.compile(r"\b(faster|slower|better|worse|wins?|beats?|outperforms?)\b", re.I)


def _fake_peak(model, x):
    exact = isinstance(model.blocks[0].attention, ExactSelfAttention)
    return int((0.5 + (4 if exact else 1) * x.shape[0]) * 2**20)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """(run.json, efficiency.json) of each kind of run the figure draws."""
    fixed = lowrank.efficiency(n=(32, 64, 128), k=(8, 16, 32), **QUICK)
    many = lowrank.efficiency(n=(64, 128), k=(2, 4, 8, 16, 32, 64), **QUICK)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(timing, "peak_memory", _fake_peak)
        budget = lowrank.efficiency(n=(32, 64), k=(8, 16), memory_budget=8.6 / 1024, **QUICK)
    legacy = {**fixed.config, "format_version": 2}  # a format 2 CPU run: sampled peaks
    for key in ("memory_method", "memory_resolution_bytes"):
        legacy.pop(key)
    format1 = {
        "format_version": 1,
        "hardware": {"device": "cpu", "processor": "x86_64", "torch_threads": 2},
        "stack": {"layers": 2, "hidden": 256},
        "memory_budget_gib": 0.1,
        "repeats": 3,
    }
    cells = [{"n": 1024, "k": 64, "speedup": 0.5, "memory_saving": 0.89}]
    format1_data = {"records": [], "tables": {"exact": cells, "sdpa": cells}}
    return {
        "fixed": (fixed.config, fixed.data),
        "many k": (many.config, many.data),
        "budget": (budget.config, budget.data),
        "format 2": (legacy, fixed.data),
        "format 1": (format1, format1_data),
    }


def _texts(fig: Figure) -> list[tuple[str, Any]]:
    """(group, text artist) of every visible, non-empty text: the suptitle, and per axes its
    title, axis labels and tick labels (a group per axis)."""
    found: list[tuple[str, Any]] = []
    if fig._suptitle is not None:
        found.append(("suptitle", fig._suptitle))
    for i, ax in enumerate(fig.axes):
        found += [(f"title {i}", t) for t in (ax.title, ax._left_title, ax._right_title)]
        found += [(f"xlabel {i}", ax.xaxis.label), (f"ylabel {i}", ax.yaxis.label)]
        found += [(f"xticks {i}", t) for t in ax.get_xticklabels()]
        found += [(f"yticks {i}", t) for t in ax.get_yticklabels()]
    return [(g, t) for g, t in found if t.get_visible() and t.get_text().strip()]


def _shrunk(box: Bbox, by: float = 0.5) -> Bbox:
    return Bbox.from_extents(box.x0 + by, box.y0 + by, box.x1 - by, box.y1 - by)


def check_layout(fig: Figure) -> None:
    """Draw ``fig`` small (72 dpi), with every warning an error (a failed constrained layout
    warns), then assert that no two texts overlap (tick labels of one axis included), no
    legend overlaps a text or the data area of any axes, and everything lies on the figure."""
    fig.set_dpi(72)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [(g, t.get_text(), _shrunk(t.get_window_extent(renderer))) for g, t in _texts(fig)]
    legends = [leg for leg in [*fig.legends, *(ax.get_legend() for ax in fig.axes)] if leg]
    boxes += [("legend", "legend", _shrunk(leg.get_window_extent(renderer))) for leg in legends]
    for (g1, t1, b1), (g2, t2, b2) in combinations(boxes, 2):
        assert not b1.overlaps(b2), f"{g1} {t1!r} overlaps {g2} {t2!r}"
    for leg in legends:
        box = _shrunk(leg.get_window_extent(renderer))
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), "a legend on the data"
    page = fig.bbox
    for group, text, box in boxes:
        assert page.x0 - 1 <= box.x0 and box.x1 <= page.x1 + 1, f"{group} {text!r} off the page"
        assert page.y0 - 1 <= box.y0 and box.y1 <= page.y1 + 1, f"{group} {text!r} off the page"


def _entries(legend: Any) -> list[tuple[str, Any]]:
    """(label, handle) of the entries a reader sees (not the blank padding)."""
    pairs = zip(legend.get_texts(), legend.legend_handles, strict=True)
    return [(t.get_text(), h) for t, h in pairs if t.get_text().strip() and h.get_alpha() != 0]


def check_reading(fig: Figure) -> None:
    """At most six legend entries, legend and titles at the body font size or larger, a
    marker on every data line and legend entry while the 1x line is dotted without one, and
    no verdict in the titles."""
    body = matplotlib.rcParams["font.size"]
    legend = fig.legends[0] if fig.legends else fig.axes[0].get_legend()
    entries = _entries(legend)
    assert 1 <= len(entries) <= 6, [label for label, _ in entries]
    assert all(t.get_fontsize() >= body for t in legend.get_texts())
    for _, handle in entries:
        assert handle.get_marker() not in ("", "None", None), "a marker-less legend entry"
    titles = [fig.get_suptitle(), *(ax.get_title() for ax in fig.axes)]
    assert all(not VERDICT.search(title) for title in titles), titles
    for ax in fig.axes:
        assert ax.title.get_fontsize() >= body
        lines = [line for line in ax.get_lines() if len(line.get_xdata())]
        reference = [line for line in lines if list(line.get_ydata()) == [1, 1]]
        assert len(reference) == 1 and reference[0].get_linestyle() == ":"
        assert reference[0].get_marker() in ("", "None", None)
        for line in lines:
            if line is not reference[0]:
                assert line.get_marker() not in ("", "None", None), "a data line like 1x"


@pytest.mark.parametrize("kind", ["fixed", "many k", "budget", "format 2", "format 1"])
def test_the_figure_of_each_kind_of_run_is_laid_out_and_readable(runs, kind):
    meta, data = runs[kind]
    with paper_style():
        fig = efficiency_figure(meta, data)
        try:
            check_layout(fig)
            check_reading(fig)
            columns = 3 if kind == "budget" else 2
            assert len(fig.axes) == 2 * columns  # a row per baseline, a column per measure
        finally:
            plt.close(fig)


def test_more_k_than_fit_are_thinned_and_the_legend_says_so(runs):
    assert shown_ks([2, 4, 8, 16, 32, 64]) == [2, 8, 16, 64]
    assert shown_ks([8, 16]) == [8, 16]
    meta, data = runs["many k"]
    with paper_style():
        fig = efficiency_figure(meta, data)
    legend = fig.legends[0]
    assert legend.get_title().get_text() == f"{MAX_KS} of 6 k shown"
    labels = [label for label, _ in _entries(legend)]
    assert {label for label in labels if label.startswith("$k$")} == {
        f"$k$ = {k}" for k in (2, 8, 16, 64)
    }
    plt.close(fig)


def test_a_format_2_figure_names_its_unreproducible_peaks_and_draws_no_unresolved_saving(runs):
    meta, data = runs["format 2"]
    with paper_style():
        fig = efficiency_figure(meta, data)
    assert "not reproducible" in fig.get_suptitle()
    memory_panels = [ax for ax in fig.axes if "memory" in ax.get_title()]
    assert len(memory_panels) == 2
    for ax in memory_panels:  # the tiny stacks' peaks are all below the sampler's 1 MiB
        data_lines = [line for line in ax.get_lines() if line.get_marker() not in ("", "None")]
        assert all(all(y != y for y in line.get_ydata()) for line in data_lines)  # NaN
        assert any(t.get_text().startswith("no saving shown") for t in ax.texts)
    plt.close(fig)


@pytest.mark.parametrize("baseline", ["exact", "sdpa"])
@pytest.mark.parametrize("metric", ["speedup", "memory_saving_equal_batch"])
def test_each_single_panel_is_laid_out_and_readable(runs, metric, baseline):
    meta, data = runs["fixed"]
    from lowrank.families.efficiency.result import EfficiencyResult

    result = EfficiencyResult(meta, {}, data=data)
    with paper_style():
        ax = result.plot(metric=metric, baseline=baseline)
        try:
            check_layout(ax.figure)
            check_reading(ax.figure)
            assert ("softmax" if baseline == "exact" else "SDPA") in ax.get_ylabel()
        finally:
            plt.close(ax.figure)


def test_an_unknown_baseline_is_one_line_naming_the_choices(runs):
    from lowrank.errors import LowrankError
    from lowrank.families.efficiency.result import EfficiencyResult

    meta, data = runs["fixed"]
    with pytest.raises(LowrankError, match=r"^baseline='flash': choose one of exact, sdpa$"):
        EfficiencyResult(meta, {}, data=data).plot(baseline="flash")


def test_the_figure_is_written_as_pdf_and_png(runs, tmp_path):
    from lowrank.families.efficiency.plots import write_figures
    from lowrank.families.efficiency.result import EfficiencyResult

    meta, data = runs["budget"]
    paths = write_figures([EfficiencyResult(meta, {}, data=data)], tmp_path)
    assert [p.name for p in paths] == ["speedup_vs_n.pdf", "speedup_vs_n.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
