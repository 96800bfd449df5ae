"""Every plot method of every result type: ``ax`` first, options by keyword, the axes given
back, labelled axes, a legend or colour bar where the panel needs one, legends clear of the
data, and bad options refused with one line naming the valid choices.

The runs are tiny (random models from configs, a few sequences) and made once per module.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator
from itertools import combinations
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb

import lowrank
from lowrank.errors import LowrankError
from lowrank.families.compare.result import CompareResult
from lowrank.families.efficiency.result import EfficiencyResult
from lowrank.families.keys.result import KeysResult
from lowrank.families.project.result import ProjectionResult
from lowrank.families.scaling.result import ScalingResult
from lowrank.families.spectrum.result import SpectrumResult
from lowrank.families.verify.result import VerifyResult
from lowrank.plots.style import paper_style

matplotlib.use("Agg")  # files only, before the first figure

RESULT_TYPES = (
    SpectrumResult,
    ProjectionResult,
    VerifyResult,
    EfficiencyResult,
    CompareResult,
    ScalingResult,
    KeysResult,
)
FAMILIES = "lowrank-oracle,sparse-oracle,lsh,local-global,performer"
TEXTS = [
    "A tidal mill is a water mill driven by the rise and fall of the sea; the miller closes "
    "the sluice gates at high water and lets the stored water through the wheel at low tide.",
    "Basalt columns are regular prisms of volcanic rock that form when a thick flow of lava "
    "cools slowly; seen from above, their tops make a pavement of polygons.",
    "A hedgerow is a line of closely planted shrubs and small trees marking the edge of a "
    "field, planted to keep livestock in and to shelter crops from the wind.",
]


# --- runs -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(roberta_dir, bert_dir) -> dict[str, Any]:
    from transformers import AutoModel, AutoTokenizer

    quiet: dict[str, Any] = {"progress": False}
    model = AutoModel.from_pretrained(bert_dir)
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    project = {"seq_len": 32, "num_sequences": 2, "k": (8, 16), "draws": 1, **quiet}
    return {
        "spectrum": lowrank.spectrum(str(bert_dir), seq_len=32, num_sequences=2, **quiet),
        "spectrum16": lowrank.spectrum(str(bert_dir), seq_len=16, num_sequences=2, **quiet),
        "memory": lowrank.spectrum(model, tokenizer, TEXTS, seq_len=16, **quiet),
        "project": lowrank.project(
            str(roberta_dir),
            method=("gaussian", "mean-pool", "svd"),
            sharing=("headwise", "layerwise"),
            **project,
        ),
        "project_no_svd": lowrank.project(
            str(roberta_dir), method=("gaussian",), model_effect=False, **project
        ),
        "verify": lowrank.verify(
            str(roberta_dir),
            seq_len=32,
            num_sequences=1,
            eps=(0.3, 0.5),
            k=(8, 32),
            inverse_temperatures=(0.5, 8.0),
            synthetic_count=2,
            jl_trials=100,
            **quiet,
        ),
        "efficiency": lowrank.efficiency(
            n=(32, 64),
            k=8,
            repeats=2,
            warmup=0,
            layers=1,
            hidden=16,
            heads=2,
            ffn=32,
            device="cpu",
            **quiet,
        ),
        "compare": lowrank.compare(
            str(bert_dir), seq_len=32, num_sequences=2, budget=(4, 8), families=FAMILIES, **quiet
        ),
        "scaling": lowrank.scaling(
            str(bert_dir),
            dataset="sample-imdb",
            seq_len=(8, 16, 32),
            num_sequences=4,
            bootstrap=50,
            **quiet,
        ),
        "keys": lowrank.keys(
            str(bert_dir), seq_len=32, num_sequences=2, bootstrap=20, queries=8, **quiet
        ),
    }


@pytest.fixture
def ax() -> Iterator[Axes]:
    with paper_style():
        fig, axes = plt.subplots(figsize=(3.4, 3.0), layout="constrained")
        yield axes
    plt.close(fig)


# --- signatures -------------------------------------------------------------------------------


def _plot_methods() -> list[tuple[type, str]]:
    return [
        (cls, name)
        for cls in RESULT_TYPES
        for name, _ in inspect.getmembers(cls, inspect.isfunction)
        if name in ("plot", "heatmap") or name.startswith("plot_")
    ]


@pytest.mark.parametrize(("cls", "name"), _plot_methods(), ids=lambda x: getattr(x, "__name__", x))
def test_ax_is_the_first_parameter_and_every_option_a_keyword(cls, name):
    params = list(inspect.signature(getattr(cls, name)).parameters.values())[1:]  # after self
    assert params[0].name == "ax" and params[0].default is None, name
    assert params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[1:]), name


def test_every_result_type_has_plot_methods():
    assert {cls for cls, _ in _plot_methods()} == set(RESULT_TYPES)


# --- every method: the axes given, labelled, with a legend or colour bar ------------------------

# (run, method, options, what the panel needs: "legend", "colorbar" or "legend-inside")
CASES: list[tuple[str, str, dict[str, Any], str]] = [
    ("spectrum", "plot", {}, "legend-inside"),
    ("spectrum", "plot", {"by_layer": True}, "legend-inside"),
    ("spectrum", "heatmap", {}, "colorbar"),
    ("project", "plot", {"kind": "theorem1"}, "legend"),
    ("project", "plot", {"kind": "theorem2"}, "legend"),
    ("project", "plot", {"kind": "theorem2", "metric": "cosine"}, "legend"),
    ("project", "heatmap", {"kind": "theorem1"}, "colorbar"),
    ("project", "plot_effect", {}, "legend"),
    ("project", "plot_effect", {"metric": "relative_error"}, "legend"),
    ("verify", "plot", {}, "legend"),
    ("efficiency", "plot", {}, "legend"),
    ("efficiency", "plot", {"metric": "memory_saving_equal_batch"}, "legend"),
    ("compare", "plot", {}, "legend"),
    ("compare", "plot_winners", {}, "legend"),
    ("compare", "plot_winners", {"budget": 4, "from_q_k": True}, "legend"),
    ("compare", "plot_ratio_vs_entropy", {}, "colorbar"),
    ("compare", "heatmap", {"family": "lsh"}, "colorbar"),
    ("scaling", "plot", {}, "legend"),
    ("scaling", "plot", {"measure": "rank90", "group": "layer 1"}, "legend"),
    ("scaling", "plot_c_curves", {}, "legend"),
    ("scaling", "plot_c_curves", {"layer": 0}, "legend"),
    ("keys", "plot", {}, "legend"),
    ("keys", "plot_topk", {}, "legend"),
    ("keys", "plot_logits", {}, "legend"),
    ("keys", "plot_layer", {}, "legend"),
]


def _case_id(case: tuple[str, str, dict[str, Any], str]) -> str:
    run, method, options, _ = case
    return "-".join([run, method, *(f"{k}={v}" for k, v in options.items())])


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_plot_method_draws_a_readable_panel_on_the_given_axes(runs, ax, case):
    run, method, options, needs = case
    drawn = getattr(runs[run], method)(ax, **options)
    assert drawn is ax
    assert ax.get_xlabel() and ax.get_ylabel()
    ax.figure.canvas.draw()
    if needs == "colorbar":
        bars = [other for other in ax.figure.axes if other is not ax]
        assert len(bars) == 1 and bars[0].get_ylabel(), "a labelled colour bar"
        return
    legend = ax.get_legend()
    assert legend is not None and [t.get_text() for t in legend.get_texts()]
    if needs == "legend":  # beside or below the panel, never on the data
        box = ax.get_window_extent()
        assert not legend.get_window_extent().overlaps(box)


def test_plot_methods_draw_new_figures_without_an_axes(runs):
    for name, run in runs.items():
        if name in ("spectrum16", "memory", "project_no_svd"):
            continue
        drawn = run.plot()
        assert isinstance(drawn, Axes) and drawn.get_xlabel()
        plt.close(drawn.figure)


def test_an_option_given_in_place_of_the_axes_is_one_line_naming_the_keywords(runs):
    with pytest.raises(LowrankError, match="keywords") as caught:
        runs["compare"].plot("probs_error")
    assert "\n" not in str(caught.value)
    with pytest.raises(LowrankError, match="keywords"):
        runs["efficiency"].plot("memory_saving")


# --- bad options: one line naming what the run has ---------------------------------------------

BAD: list[tuple[str, Callable[[Any], Any], list[str]]] = [
    ("project", lambda r: r.plot(kind="theorem3"), ["theorem1", "theorem2"]),
    ("project", lambda r: r.plot(metric="bogus"), ["error", "scale-free", "cosine"]),
    ("project", lambda r: r.heatmap(kind="theorem9"), ["theorem1", "theorem2"]),
    ("project", lambda r: r.heatmap(k=999), ["8", "16"]),
    ("project", lambda r: r.heatmap(kind="theorem1", method="gaussian"), ["gaussian[paper]"]),
    ("project_no_svd", lambda r: r.heatmap(method="svd"), ["gaussian", "uniform"]),
    ("project", lambda r: r.plot_effect(family="rademacher"), ["gaussian"]),
    ("project", lambda r: r.plot_effect(metric="loss"), ["cosine", "relative_error"]),
    ("project_no_svd", lambda r: r.plot_effect(), ["no model effect"]),
    ("verify", lambda r: r.plot(series="paper | nope | values"), ["jl-rows | real | values"]),
    ("efficiency", lambda r: r.plot(metric="latency"), ["speedup", "memory_saving"]),
    ("compare", lambda r: r.plot(metric="bogus"), ["output_error", "probs_error"]),
    ("compare", lambda r: r.plot(families=["nope"]), ["lowrank-oracle", "lsh"]),
    ("compare", lambda r: r.plot_winners(budget=5), ["4", "8"]),
    ("compare", lambda r: r.plot_ratio_vs_entropy(budget=3), ["4", "8"]),
    ("compare", lambda r: r.heatmap(family="nope"), ["lowrank-oracle", "performer"]),
    ("compare", lambda r: r.heatmap(family="lsh", metric="x"), ["output_error"]),
    ("scaling", lambda r: r.plot(measure="rank50"), ["rank90", "output_rank"]),
    ("scaling", lambda r: r.plot(group="layer 9"), ["layer 1", "model"]),
    ("scaling", lambda r: r.plot_c_curves(layer=7), ["0", "1"]),
]


@pytest.mark.parametrize(("run", "call", "named"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_a_bad_option_is_one_line_naming_the_valid_choices(runs, run, call, named):
    with pytest.raises(LowrankError) as caught:
        call(runs[run])
    message = str(caught.value)
    assert "\n" not in message
    for choice in named:
        assert choice in message, (choice, message)
    assert "_mean" not in message  # never an internal array name
    plt.close("all")


# --- what each figure must let a reader see ----------------------------------------------------


def _legend_labels(ax: Axes) -> list[str]:
    legend = ax.get_legend()
    assert legend is not None
    return [t.get_text() for t in legend.get_texts()]


def _tick_labels(ax: Axes, axis: str = "y") -> list[str]:
    ticks = ax.get_yticklabels() if axis == "y" else ax.get_xticklabels()
    return [t.get_text() for t in ticks if t.get_text()]


def test_projection_panels_label_the_values_and_the_baselines(runs, ax):
    res = runs["project"]
    res.plot(ax, kind="theorem1")
    assert len(_tick_labels(ax)) >= 3  # not a lone 10^0
    labels = _legend_labels(ax)
    assert "baseline: zero attention" in labels and "baseline: uniform attention" in labels
    styles = {
        line.get_label(): (line.get_linestyle(), line.get_linewidth(), line.get_color())
        for line in ax.get_lines()
    }
    assert styles["baseline: zero attention"] != styles["baseline: uniform attention"]
    others = {v for k, v in styles.items() if not k.startswith("baseline")}
    assert styles["baseline: zero attention"] not in others


def test_theorem2_output_floor_note_is_in_the_legend_not_on_the_data(runs, ax):
    res = runs["project"]  # d = 8 <= every k: the output floor is 0 throughout
    res.plot(ax, kind="theorem2")
    assert not ax.texts
    (floor,) = [label for label in _legend_labels(ax) if "output floor" in label]
    assert "= 0 at every k" in floor


def test_model_effect_title_names_every_kind_of_line_drawn(runs, ax):
    res = runs["project"]
    res.plot_effect(ax)
    title, labels = ax.get_title(), _legend_labels(ax)
    assert "gaussian" in title and "mean-pool" in title
    assert any(label.startswith("gaussian, headwise") for label in labels)
    named = [line for t in ax.texts for line in t.get_text().split("\n")]
    assert "mean-pool" in named
    assert any(t.startswith("zero attention ") for t in named)
    assert any(t.startswith("uniform attention ") for t in named)


def test_verify_legend_names_eps_and_the_bound(runs, ax):
    res = runs["verify"]
    res.plot(ax)  # jl-rows on real value columns: a bound, at 1 where it says nothing
    labels = _legend_labels(ax)
    assert labels[:2] == [r"$\varepsilon = 0.3$", r"$\varepsilon = 0.5$"]
    (bound,) = [label for label in labels if label.startswith("bound")]
    series = list(map(str, res.arrays["series"]))
    bounds = res.arrays["bound"][series.index("jl-rows | real | values")]
    assert ("drawn at 1" in bound) == bool((bounds >= 1).any())


def test_verify_legend_lists_only_the_marks_drawn(runs):
    res = runs["verify"]
    for series in map(str, res.arrays["series"]):
        with paper_style():
            ax = res.plot(series=series)
        labels = _legend_labels(ax)
        markers = {line.get_marker() for line in ax.get_lines() if len(line.get_xdata())}
        assert ("exact probability" in labels) == ("x" in markers), series
        assert ("no failure: upper 95% end" in labels) == ("v" in markers), series
        dashed = any(line.get_linestyle() == "--" for line in ax.get_lines())
        assert any(label.startswith("bound") for label in labels) == dashed, series
        plt.close(ax.figure)


def test_efficiency_speedup_axis_is_labelled_in_factors(runs, ax):
    res = runs["efficiency"]
    res.plot(ax)
    ticks = _tick_labels(ax)
    assert len(ticks) >= 2 and all(t.endswith("x") for t in ticks)
    labels = _legend_labels(ax)
    stars = any(line.get_marker() == "*" for line in ax.get_lines())
    assert ("median faster from here on" in labels) == stars
    bars = bool(ax.containers)  # errorbar containers: the min-max bars
    assert ("min to max over rounds" in labels) == bars


def test_efficiency_figure_counts_layers_and_lists_only_marks_drawn(runs):
    from lowrank.families.efficiency.plots import drawn_marks, efficiency_figure

    res = runs["efficiency"]
    with paper_style():
        fig = efficiency_figure(res.config, res.data)
    title = fig.get_suptitle()
    assert "1 layer," in title and "1 layers" not in title
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    _, stars = drawn_marks(res.data)
    assert ("median faster from here on" in labels) == stars
    plt.close(fig)


def test_compare_families_have_distinct_colours(runs, ax):
    from lowrank.families.compare.plots import FAMILY_COLOURS, family_style

    def lab(colour: Any) -> np.ndarray:  # CIELAB, D65 (perceptual distance)
        rgb = np.array(to_rgb(colour))
        lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
        to_xyz = [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]
        xyz = np.array(to_xyz) @ lin / np.array([0.95047, 1.0, 1.08883])
        f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
        return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])

    colours = {family: family_style(family)["color"] for family in FAMILY_COLOURS}
    for (a, x), (b, y) in combinations(colours.items(), 2):
        assert np.linalg.norm(lab(x) - lab(y)) > 25, (a, b)  # lsh and performer were ~20
    res = runs["compare"]
    res.plot(ax)
    drawn = {line.get_label(): line.get_color() for line in ax.get_lines()}
    assert drawn["lsh"] != drawn["performer"]


def test_winner_legend_names_the_families_that_win(runs, ax):
    res = runs["compare"]
    res.plot_winners(ax, budget=8)
    winners = res.arrays["winner"][res.budgets.index(8)]
    expected = {res.families[i] for i in np.unique(winners) if i >= 0}
    labels = set(_legend_labels(ax)) - {"none applies"}
    assert labels == expected


def test_compare_heatmap_has_ticks_for_every_layer(runs, ax):
    res = runs["compare"]
    res.heatmap(ax, family="lowrank-oracle", budget=4)
    layers, _ = res.arrays["entropy_mean"].shape
    assert _tick_labels(ax) == [str(i) for i in range(1, layers + 1)]
    assert "b = 4" in ax.get_title()


def test_scaling_plot_names_the_measure_and_puts_beta_in_the_legend(runs, ax):
    res = runs["scaling"]
    res.plot(ax, measure="rank90")
    assert "rank for 90%" in ax.get_ylabel()
    assert not ax.texts  # beta is in the legend, not printed over it
    beta = res.arrays["rank90_power_params"][res.groups.index("model"), 1]
    assert any(f"= {beta:.2f}" in label for label in _legend_labels(ax))


def test_scaling_c_curves_have_a_legend_entry_per_n(runs, ax):
    res = runs["scaling"]
    res.plot_c_curves(ax)
    assert _legend_labels(ax) == [f"n = {n}" for n in res.ns]


def test_in_memory_runs_are_titled_by_the_model_and_your_texts(runs, bert_dir, ax):
    res = runs["memory"]
    assert res.config["model"]["kind"] == "memory" and res.config["corpus"]["kind"] == "memory"
    res.plot(ax)
    title = ax.get_title()
    assert title.startswith(f"{bert_dir.name} / your texts")
    assert "memory" not in title


def test_layers_panel_names_each_runs_index_when_n_differs(runs, ax):
    from lowrank.families.spectrum.plots import plot_layer_summary

    both = [runs["spectrum"], runs["spectrum16"]]  # n = 32 and 16: indices 8 and 4
    plot_layer_summary(both, ax=ax)
    assert ax.get_ylabel().startswith("c at index n/4")
    labels = _legend_labels(ax)
    assert "n = 32: c at 8" in labels[0] and "n = 16: c at 4" in labels[1]
    same = [runs["spectrum"], runs["spectrum"]]
    with paper_style():
        _fig, other = plt.subplots()
    plot_layer_summary(same, ax=other)
    assert other.get_ylabel().startswith("c at index 8")
    plt.close(other.figure)


def test_figures_of_several_runs_note_which_heatmap_figure1_shows(runs, tmp_path, caplog):
    from lowrank.families.spectrum.plots import write_figures

    both = [runs["spectrum"], runs["spectrum16"]]
    with caplog.at_level(logging.INFO, logger="lowrank"):
        write_figures(both, tmp_path)
    notes = [r.getMessage() for r in caplog.records if "figure1" in r.getMessage()]
    assert len(notes) == 1 and "n = 32" in notes[0] and "--heatmap-run" in notes[0]


@pytest.mark.parametrize(
    ("limits", "base", "suffix", "labels"),
    [
        ((0.03, 3.0), 10, "", ["0.05", "0.1", "0.2", "0.5", "1", "2"]),
        ((1e-4, 2.0), 10, "", ["0.0001", "0.001", "0.01", "0.1", "1"]),
        ((0.8, 1.3), 10, "", ["0.8", "1", "1.2"]),  # too short for 1-2-5 steps
        ((0.2, 5.0), 2, "x", ["0.25x", "0.5x", "1x", "2x", "4x"]),
        ((0.3, 70.0), 2, "x", ["1x", "4x", "16x", "64x"]),  # thinned, 1x kept
        ((0.9, 1.2), 2, "x", ["0.9x", "1x", "1.1x"]),
        ((1.1, 1.8), 2, "x", ["1.2x", "1.4x", "1.6x", "1.8x"]),  # no power of two inside
    ],
)
def test_log_axes_get_at_least_three_plain_labels(limits, base, suffix, labels):
    from lowrank.plots.style import readable_log_ticks

    fig, ax = plt.subplots()
    ax.set_yscale("log")
    ax.set_ylim(*limits)
    readable_log_ticks(ax, suffix, base=base)
    assert _tick_labels(ax) == labels
    plt.close(fig)
