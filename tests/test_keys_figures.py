"""The figures of ``lowrank keys``: every panel labelled, few legend entries, and no title,
label, tick label or legend drawn over another (checked on the rendered figure).

Runs of tiny random models (a SmolLM2-shaped Llama and a BERT); the real runs' figures are
looked at by eye (docs/keys.md).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest

import lowrank
from lowrank.errors import LowrankError
from lowrank.families.keys import plots
from tests.test_keys import OPTIONS, llama_dir  # noqa: F401  (a fixture)

MAX_LEGEND = 6


@pytest.fixture(scope="module")
def runs(llama_dir, bert_dir):  # noqa: F811
    quiet: dict[str, Any] = {"progress": False, **OPTIONS}
    return {
        "llama": lowrank.keys(str(llama_dir), **quiet),
        "bert": lowrank.keys(str(bert_dir), **quiet),
    }


def _texts(fig) -> list[tuple[str, Any]]:
    """(what, window extent) of every title, axis label, tick label and legend drawn."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    found: list[tuple[str, Any]] = []

    def add(what: str, artist: Any) -> None:
        if artist is None or not artist.get_visible():
            return
        if hasattr(artist, "get_text") and not artist.get_text().strip():
            return
        found.append((what, artist.get_window_extent(renderer)))

    add("suptitle", fig._suptitle)
    for legend in fig.legends:
        add("figure legend", legend)
    for i, ax in enumerate(fig.axes):
        if not ax.get_visible():
            continue
        add(f"axes {i} title", ax.title)
        add(f"axes {i} x label", ax.xaxis.label)
        add(f"axes {i} y label", ax.yaxis.label)
        add(f"axes {i} legend", ax.get_legend())
        for axis, name in ((ax.xaxis, "x"), (ax.yaxis, "y")):
            low, high = sorted(axis.get_view_interval())
            for loc, t in zip(axis.get_ticklocs(), axis.get_ticklabels(), strict=False):
                if low - 1e-9 * abs(high - low) <= loc <= high + 1e-9 * abs(high - low):
                    add(f"axes {i} {name} tick {t.get_text()}", t)  # drawn: inside the view
    return found


def _overlaps(fig) -> list[str]:
    found = []
    for (a, box_a), (b, box_b) in itertools.combinations(_texts(fig), 2):
        width = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
        height = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
        if width > 1 and height > 1:  # more than a pixel each way
            found.append(f"{a} / {b}")
    return found


class Kept:
    """The figures write_figures saves, checked for overlaps first; ``write`` False skips
    the files (the PDF and PNG writing is most of the time)."""

    def __init__(self) -> None:
        self.figures: list[tuple[str, Any]] = []
        self.write = True


@pytest.fixture
def kept(monkeypatch) -> Kept:
    found = Kept()
    real = plots.save

    def keep(fig, path: Path):
        assert not _overlaps(fig), (path.name, _overlaps(fig))
        found.figures.append((path.name, fig))
        if found.write:
            return real(fig, path)
        return [path.with_suffix(".pdf"), path.with_suffix(".png")]

    monkeypatch.setattr(plots, "save", keep)
    return found


STEMS = ["key_rank", "key_rank_heads", "topk", "logits_vs_weights", "whole_layer"]


@pytest.mark.parametrize("name", ["llama", "bert"])
def test_every_figure_is_labelled_and_free_of_overlaps(runs, kept, tmp_path, name):
    kept.write = False  # drawn and checked; writing them is the slow test below
    files = plots.write_figures([runs[name]], tmp_path)
    assert [f.stem for f in files] == [s for s in STEMS for _ in (0, 1)]  # PDF, PNG
    assert [n for n, _ in kept.figures] == STEMS
    for stem, fig in kept.figures:
        legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
        assert legends, stem
        for legend in legends:
            assert 1 <= len(legend.get_texts()) <= MAX_LEGEND, stem
        for ax in fig.axes:
            if ax.get_visible() and ax.has_data():
                assert ax.get_xlabel() or ax.get_ylabel() or stem in ("topk", "key_rank_heads")
        plt.close(fig)


@pytest.mark.slow
def test_the_figures_command_writes_every_figure_of_a_saved_run(runs, tmp_path):
    from click.testing import CliRunner

    from lowrank.cli import main

    folder = runs["llama"].save(tmp_path / "run")
    res = CliRunner().invoke(main, ["figures", str(folder), "--out", str(tmp_path / "figures")])
    assert res.exit_code == 0, res.output
    written = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert written == sorted(f"{s}.{x}" for s in STEMS for x in ("pdf", "png"))
    assert all((tmp_path / "figures" / name).stat().st_size > 1000 for name in written)


def test_the_rank_figure_marks_d_and_draws_each_kv_head(runs):
    run = runs["llama"]
    ax = run.plot(kv_head=2)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "head dimension $d = 8$" in labels
    assert any("pre-RoPE" in x for x in labels) and any("post-RoPE" in x for x in labels)
    pre = next(line for line in ax.get_lines() if line.get_label() == "pre-RoPE keys")
    assert np.array_equal(pre.get_ydata(), run.key_rank90_pre[:, 1])
    encoder = runs["bert"].plot()
    assert any("pre = post" in t.get_text() for t in encoder.get_legend().get_texts())
    plt.close("all")


def test_the_topk_panel_draws_the_mean_over_sequences(runs):
    run = runs["llama"]
    ax = run.plot_topk(metric="recall")
    lines = [line for line in ax.get_lines() if len(line.get_xdata()) == len(run.ranks)]
    first = np.asarray(lines[0].get_ydata())
    rows = run.topk_sequence_means[:, 0, :, 0, :, 0].mean(axis=-1)  # (N, R): basis 0, k 0
    assert np.allclose(first, rows.mean(axis=0))
    assert first[-1] == 1.0  # r = d: exact
    with pytest.raises(LowrankError, match="recall, mass, error"):
        run.plot_topk(metric="loss")
    with pytest.raises(LowrankError, match="1, 2, 3"):
        run.plot(kv_head=4)
    plt.close("all")
