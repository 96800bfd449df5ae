"""Figures from a run folder made here with a tiny model; redrawing needs no model."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.image import imread

from lowrank.cli import main
from lowrank.families.spectrum.plots import (
    figure1,
    heatmap_values,
    paper_style,
    plot_cumulative,
    plot_heatmap,
    plot_layer_summary,
    shared_limits,
)
from lowrank.families.spectrum.result import SpectrumResult
from lowrank.inputs import models as models
from tests.helpers import SEQ_LEN


@pytest.fixture(scope="module")
def runs(roberta_dir, bert_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("fig-runs")
    made = []
    for name, model, extra in [
        ("rob", roberta_dir, []),
        ("bert", bert_dir, ["--dataset", "sample-imdb", "--keep-short"]),
    ]:
        out = base / name
        args = [
            "spectrum",
            "--model",
            str(model),
            "--seq-len",
            str(SEQ_LEN),
            "--num-sequences",
            "4",
            "--out",
            str(out),
            *extra,
        ]
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, res.output
        made.append(out)
    return made


def test_figures_command_writes_valid_pdf_and_png_without_a_model(runs, tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("figures must not load a model")

    monkeypatch.setattr(models, "load_model", no_model)
    out = tmp_path / "figs"
    res = CliRunner().invoke(main, ["figures", *map(str, runs), "--out", str(out)])
    assert res.exit_code == 0, res.output
    # two runs, one heatmap in figure1: a one-line note says which, and how to pick another
    (note,) = [line for line in res.stderr.splitlines() if line.startswith("figure1")]
    assert "--heatmap-run" in note
    names = sorted(p.name for p in out.iterdir())
    stems = {p.rsplit(".", 1)[0] for p in names}
    assert len(names) == 2 * len(stems)
    assert {"figure1", "layers"} <= stems
    assert sum(s.startswith("heatmap_") for s in stems) == 2
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert imread(png).shape[1] >= 600  # 300 dpi at column width
    for pdf in out.glob("*.pdf"):
        data = pdf.read_bytes()
        assert data.startswith(b"%PDF")
        assert b"/FontFile2" in data and b"/FontFile3" not in data  # TrueType embedded


def test_heatmap_data_equals_the_runs_c_at_the_heatmap_index(runs):
    run = SpectrumResult.read(runs[0])
    with paper_style():
        ax = plot_heatmap(run)
    drawn = np.asarray(ax.collections[0].get_array()).reshape(run.stats.summaries.shape[:2])
    expected = run.stats.cumulative.mean[..., run.stats.index - 1]
    np.testing.assert_allclose(drawn[::-1], expected, atol=1e-12)  # layer 1 at the bottom
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[-1] == "1"
    assert len(ax.texts) == expected.size  # 12 cells: annotated


def test_plot_functions_take_and_return_axes(runs):
    import matplotlib.pyplot as plt

    both = [SpectrumResult.read(r) for r in runs]
    with paper_style():
        _fig, axes = plt.subplots(1, 3)
        assert plot_cumulative(both[0], ax=axes[0]) is axes[0]
        assert plot_heatmap(both[1], ax=axes[1], colorbar=False) is axes[1]
        assert plot_layer_summary(both, ax=axes[2]) is axes[2]
        line = axes[0].get_lines()[0]
        np.testing.assert_allclose(
            np.asarray(line.get_ydata()),
            both[0].stats.cumulative.mean.mean(axis=(0, 1)),
            atol=1e-12,
        )
        legend = axes[2].get_legend()
        assert legend is not None and len(legend.get_texts()) == 2
        combined = figure1(both)
        # two spectrum panels + heatmap + its colour bar
        assert len(combined.axes) == 4
        plt.close("all")


def test_spectrum_legend_names_the_statistics_drawn(runs):
    """The legend's words are checked against the run arrays, so 'mean' cannot sit on a
    median line, nor '10-90%' on another band."""
    import matplotlib.pyplot as plt

    run = SpectrumResult.read(runs[0])
    curves = run.stats.cumulative.mean  # (L, H, n)
    layers, heads, n = curves.shape
    flat = curves.reshape(layers * heads, n)
    # the tiny model's curves are skewed enough that mean and median differ
    assert not np.allclose(flat.mean(axis=0), np.median(flat, axis=0), atol=1e-6)
    with paper_style():
        ax = plot_cumulative(run)
    handles, labels = ax.get_legend_handles_labels()
    legend = ax.get_legend()
    assert legend is not None and [t.get_text() for t in legend.get_texts()] == labels
    drawn: dict[str, Any] = dict(zip(labels, handles, strict=True))
    statistic: dict[str, Callable[..., np.ndarray]] = {"mean": np.mean, "median": np.median}
    (line_label,) = [label for label in labels if label.split()[0] in statistic]
    assert line_label == f"mean over {layers * heads} heads"
    line = drawn[line_label]
    np.testing.assert_allclose(
        np.asarray(line.get_ydata()), statistic[line_label.split()[0]](flat, axis=0), atol=1e-12
    )
    band_label = f"10-90% across {layers * heads} heads"
    assert band_label in labels
    vertices = drawn[band_label].get_paths()[0].vertices  # (x, y) around the band
    lo, hi = np.percentile(flat, (10, 90), axis=0)
    for i in (1, n // 4, n // 2):
        ys = vertices[np.isclose(vertices[:, 0], i + 1), 1]
        np.testing.assert_allclose([ys.min(), ys.max()], [lo[i], hi[i]], atol=1e-12)
    plt.close("all")


def test_by_layer_names_each_of_few_layers_with_its_own_colour_and_dashes(runs):
    import matplotlib.pyplot as plt

    run = SpectrumResult.read(runs[0])
    layers = run.stats.cumulative.mean.shape[0]
    with paper_style():
        ax = plot_cumulative(run, by_layer=True)
    lines = [line for line in ax.get_lines() if str(line.get_label()).startswith("layer ")]
    assert len({line.get_color() for line in lines}) == layers
    # neighbouring layers differ in dash pattern too (MiniLM's layers 4 and 5 nearly coincide)
    dashes = [str(line._unscaled_dash_pattern) for line in lines]  # no public getter
    assert all(a != b for a, b in itertools.pairwise(dashes))
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [
        f"layer {i}" for i in range(1, layers + 1)
    ]
    np.testing.assert_allclose(lines[0].get_ydata(), run.stats.cumulative.mean[0].mean(axis=0))
    plt.close("all")


def test_by_layer_colour_bar_of_a_deep_model_has_a_block_per_layer_and_round_ticks():
    import matplotlib.pyplot as plt

    from lowrank.families.spectrum.plots import _plot_layers

    curves = np.cumsum(np.random.default_rng(0).random((30, 2, 16)), axis=-1)
    with paper_style():
        fig, ax = plt.subplots()
        _plot_layers(curves / curves[..., -1:], np.arange(1, 17), ax)
    assert ax.get_legend() is None and len({line.get_color() for line in ax.get_lines()}) == 30
    bar_ax = fig.axes[-1]
    assert [t.get_text() for t in bar_ax.get_yticklabels()] == [
        "1",
        "5",
        "10",
        "15",
        "20",
        "25",
        "30",
    ]
    plt.close("all")


def test_layer_summary_metric_rank90(runs):
    import matplotlib.pyplot as plt

    run = SpectrumResult.read(runs[0])
    with paper_style():
        ax = plot_layer_summary([run], metric="rank90")
    ys = np.asarray(ax.get_lines()[0].get_ydata())
    np.testing.assert_allclose(ys, run.stats.summaries.mean[..., 1].mean(axis=1))
    assert "rank for 90%" in ax.get_ylabel()
    plt.close("all")


def test_shared_colour_scale_covers_all_runs(runs):
    both = [SpectrumResult.read(r) for r in runs]
    lo, hi = shared_limits(both)
    for run in both:
        values = heatmap_values(run)
        assert lo <= values.min() and values.max() <= hi


def test_spectrum_plot_flag_draws_into_the_run_folder(roberta_dir, tmp_path):
    out = tmp_path / "run"
    args = [
        "spectrum",
        "--model",
        str(roberta_dir),
        "--seq-len",
        str(SEQ_LEN),
        "--num-sequences",
        "2",
        "--out",
        str(out),
        "--plot",
    ]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert (out / "figures" / "figure1.pdf").is_file()
    assert (out / "figures" / "layers.png").is_file()


def test_missing_or_malformed_run_folders_are_one_line(tmp_path, runs):
    res = CliRunner().invoke(main, ["figures", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "does not exist" in res.output
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "run.json").write_text("{not json")
    res = CliRunner().invoke(main, ["figures", str(runs[0]), str(bad), "--out", str(tmp_path)])
    assert res.exit_code == 2 and str(bad) in res.output and "not valid JSON" in res.output
    assert "Traceback" not in res.output


def test_layer_ticks_label_layer_one_and_round_numbers():
    """Every family's layer axes label the same layers: all of a small model, round numbers
    (and layer 1) of a deep one."""
    from lowrank.plots.style import layer_ticks

    assert layer_ticks(6) == [1, 2, 3, 4, 5, 6]
    assert layer_ticks(24) == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24]
    assert layer_ticks(30) == [1, 5, 10, 15, 20, 25, 30]
    assert layer_ticks(30, most=8) == [1, 5, 10, 15, 20, 25, 30]
    assert layer_ticks(80) == [1, 10, 20, 30, 40, 50, 60, 70, 80]
