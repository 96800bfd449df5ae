"""The Python API of the projection family: parity with the CLI, results, one-place checks."""

from __future__ import annotations

import logging
from itertools import combinations, pairwise

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lowrank import api
from lowrank.cli import main
from lowrank.errors import LowrankError
from lowrank.families.project.result import ProjectionResult
from lowrank.families.verify.plots import series_title
from lowrank.families.verify.result import VerifyResult
from lowrank.registry import load
from tests.helpers import SEQ_LEN, as_keywords

PROJECT = {
    "seq_len": SEQ_LEN,
    "num_sequences": 2,
    "k": (8, 16),
    "method": ("gaussian", "mean-pool", "svd"),
    "draws": 2,
    "sharing": ("headwise",),
}
PROJECT_ARGS = ["--seq-len", str(SEQ_LEN), "--num-sequences", "2", "--k", "16,8"]
PROJECT_ARGS += ["--method", "gaussian,mean-pool,svd", "--draws", "2", "--sharing", "headwise"]
VERIFY = {
    "seq_len": SEQ_LEN,
    "num_sequences": 1,
    "eps": (0.3, 0.5),
    "k": (8, 48),
    "inverse_temperatures": (0.5, 8.0),
    "synthetic_count": 2,
    "jl_trials": 100,
}
VERIFY_ARGS = ["--seq-len", str(SEQ_LEN), "--num-sequences", "1", "--eps", "0.3,0.5"]
VERIFY_ARGS += ["--k", "8,48", "--inverse-temperatures", "0.5,8", "--synthetic-count", "2"]
VERIFY_ARGS += ["--jl-trials", "100"]


def _cli(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(main, list(args), env={"LOWRANK_DEBUG": ""})
    return res.exit_code, res.stdout, res.stderr


@pytest.fixture(scope="module")
def cli_project(roberta_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "project"
    code, stdout, stderr = _cli(
        "project", "--model", str(roberta_dir), *PROJECT_ARGS, "--out", str(out)
    )
    assert code == 0, stderr
    return out, stdout, stderr


@pytest.fixture(scope="module")
def api_project(roberta_dir) -> ProjectionResult:
    return api.project(str(roberta_dir), **PROJECT, progress=False)


def _max_gap(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert set(a) == set(b)
    gap = 0.0
    for name, x in a.items():
        y = b[name]
        assert x.shape == y.shape and x.dtype == y.dtype, name
        if x.dtype.kind == "f":
            assert (np.isnan(x) == np.isnan(y)).all(), name
            gap = max(gap, float(np.nanmax(np.abs(x.astype(np.float64) - y), initial=0.0)))
        else:
            assert (x == y).all(), name
    return gap


def test_project_api_and_cli_give_identical_arrays(cli_project, api_project):
    out, stdout, stderr = cli_project
    cli = load(out)
    assert isinstance(cli, ProjectionResult)
    assert _max_gap(cli.arrays, api_project.arrays) <= 1e-12
    assert cli.config["identity"] == api_project.config["identity"]
    assert cli.config["model_effect"] == api_project.config["model_effect"]
    # the CLI prints exactly the report, and said on stderr that it sorted --k
    assert stdout == cli.report() + "\n"
    assert stdout.startswith(api_project.report())
    assert "--k: taking the values in increasing order: 8,16" in stderr


def test_project_on_an_in_memory_model_and_token_ids_matches_the_cli(roberta_dir, cli_project):
    from transformers import AutoModel

    cli = load(cli_project[0])
    model = AutoModel.from_pretrained(roberta_dir)
    model.train()  # the user's state, to be given back
    attn = model.config._attn_implementation
    ids = torch.from_numpy(cli.input_ids)
    res = api.project(model, None, ids, **PROJECT, progress=False)
    assert _max_gap(cli.arrays, res.arrays) <= 1e-12
    assert res.config["model"]["kind"] == "memory" and "data_digest" in res.config["identity"]
    assert model.training and model.config._attn_implementation == attn


def test_project_summary_equals_the_arrays(api_project):
    res = api_project
    table = res.summary(at=8, kind="theorem2", metric="error")
    assert list(table["row"]) == res.rows("theorem2")
    samples = res.arrays["theorem2_gaussian_samples"][0].astype(np.float64)  # k = 8
    layers, heads, _ = samples.shape
    per_sequence = samples.reshape(layers, heads, 2, 2).mean(axis=(0, 1, 3))  # [N]
    row = table.set_index("row").loc["gaussian"]
    assert row["mean"] == pytest.approx(per_sequence.mean(), rel=1e-12)
    # two sequences: no interval (a t-interval with 1 degree of freedom left the range)
    assert np.isnan(row["ci_low"]) and np.isnan(row["ci_high"])
    heads_table = res.summary(at=16, per_head=True)
    one = heads_table.query(
        "kind == 'theorem1' and row == 'mean-pool[paper]' and metric == 'cosine'"
    )
    assert len(one) == layers * heads
    expected = res.arrays["theorem1_mean-pool[paper]_cosine_mean"][1].ravel()
    np.testing.assert_array_equal(one["mean"].to_numpy(), expected)
    effects = res.effects()
    assert list(effects["method"][:2]) == ["zero", "uniform"] and effects["k"][:2].isna().all()
    with pytest.raises(LowrankError, match="at=7: this run has k = 8, 16"):
        res.summary(at=7)


def test_project_save_and_load_round_trip(api_project, tmp_path):
    res = ProjectionResult(api_project.config, api_project.arrays)  # the fixture stays unsaved
    path = res.save(tmp_path / "p")
    back = load(path)
    assert isinstance(back, ProjectionResult)
    assert _max_gap(res.arrays, back.arrays) == 0.0
    assert back.config == res.config
    assert back.report() == res.report()  # the path now set on both
    assert res.report().endswith(
        f"run folder: {path}  ({path / 'run.json'}, {path / 'projection.npz'})"
    )
    assert back.summary().equals(res.summary())
    # the same configuration replaces itself; another needs overwrite
    res.save(path)
    other = ProjectionResult({**res.config, "identity": {"other": 1}}, res.arrays)
    with pytest.raises(LowrankError, match="pass overwrite"):
        other.save(path)


def test_project_plots_return_their_axes(api_project):
    import matplotlib

    matplotlib.use("Agg")
    ax = api_project.plot(kind="theorem1", metric="cosine", estimator="projector")
    labels = ax.get_legend_handles_labels()[1]
    assert "gaussian[projector]" in labels and "mean-pool[projector]" in labels
    assert not any("[paper]" in label for label in labels)  # one estimator per panel
    labels = api_project.plot(kind="theorem1").get_legend_handles_labels()[1]
    assert "gaussian[paper]" in labels and "gaussian[projector]" not in labels  # the first
    heat = api_project.heatmap(k=16)
    assert "gaussian, k = 16" in heat.get_title()
    effect = api_project.plot_effect()
    assert any("headwise" in label for label in effect.get_legend_handles_labels()[1])


def test_verify_api_and_cli_agree_and_round_trip(roberta_dir, tmp_path):
    out = tmp_path / "cli"
    code, stdout, stderr = _cli(
        "verify", "--model", str(roberta_dir), *VERIFY_ARGS, "--out", str(out)
    )
    assert code == 0, stderr
    res = api.verify(str(roberta_dir), **VERIFY, progress=False)
    cli = load(out)
    assert isinstance(cli, VerifyResult)
    assert _max_gap(cli.arrays, res.arrays) == 0.0
    assert cli.records == res.records and cli.k_needed == res.k_needed
    assert stdout == cli.report() + "\n"
    assert stdout.startswith(res.report() + "\nrun folder: ")
    # summary = verify.csv, and its numbers are the arrays'
    table = res.summary()
    assert len(table) == len(res.records)
    series = [str(s) for s in res.arrays["series"]]
    for r in table.itertuples():
        idx = (series.index(r.series), [0.3, 0.5].index(r.eps), [8, 48].index(r.k))
        assert res.arrays["rate"][idx] == r.rate and res.arrays["trials"][idx] == r.trials
    assert set(res.summary(at=48)["k"]) == {48}
    saved = load(res.save(tmp_path / "api"))
    assert isinstance(saved, VerifyResult) and saved.records == res.records
    assert saved.report() == res.report()
    import matplotlib

    matplotlib.use("Agg")
    ax = res.plot()
    assert ax.get_title() == series_title("jl-rows | real | values")
    assert "|" not in ax.get_title().split("$")[0]  # words, not the series' pipe syntax
    assert [t.get_text() for t in ax.get_xticklabels()] == ["8", "48"]


BIG = str(2**32)


# (CLI arguments, API keywords, the one line both give)
BAD_PROJECT = [
    (["--seed", "-1"], {"seed": -1}, "--seed -1 must be at least 0"),
    (["--seed", BIG], {"seed": 2**32}, f"--seed {BIG} must be at most 4294967295"),
    (["--proj-seed", BIG], {"proj_seed": 2**32}, f"--proj-seed {BIG} must be at most"),
    (["--k", "8,8"], {"k": (8, 8)}, "--k lists 8 twice: give each value once"),
    (["--k", "0"], {"k": 0}, "--k 0 is outside 1..n = 48"),
    (["--k", "49"], {"k": [49]}, "--k 49 is outside 1..n = 48"),
    (["--delta", "nan"], {"delta": float("nan")}, "--delta nan must be a finite number > 0"),
    (["--delta", "-inf"], {"delta": -float("inf")}, "--delta -inf must be a finite number > 0"),
    (["--heatmap-k", "16"], {"heatmap_k": 16}, "--heatmap-k 16 is not one of --k [8]"),
    (["--seq-len", "1"], {"seq_len": 1}, "--seq-len 1 is too short"),
]
BAD_VERIFY = [
    (["--seed", "-1"], {"seed": -1}, "--seed -1 must be at least 0"),
    (["--verify-seed", BIG], {"verify_seed": 2**32}, f"--verify-seed {BIG} must be at most"),
    (["--eps", "0.5,0.5"], {"eps": [0.5, 0.5]}, "--eps lists 0.5 twice"),
    (["--eps", "1"], {"eps": 1.0}, "--eps 1.0 must be a finite number in (0, 1)"),
    (["--eps", "nan"], {"eps": [float("nan")]}, "--eps nan must be a finite number in (0, 1)"),
    (["--k", "16,8,16"], {"k": [16, 8, 16]}, "--k lists 16 twice"),
    (["--k", "96"], {"k": 96}, "--k 96 is outside 1..n = 48"),
    (
        ["--inverse-temperatures", "inf"],
        {"inverse_temperatures": float("inf")},
        "--inverse-temperatures inf must be a finite number > 0",
    ),
    (
        ["--inverse-temperatures", "2,2"],
        {"inverse_temperatures": (2.0, 2.0)},
        "--inverse-temperatures lists 2.0 twice",
    ),
    (["--target", "1"], {"target": 1.0}, "--target 1.0 must be a finite number in (0, 1)"),
    (["--delta", "0"], {"delta": 0.0}, "--delta 0.0 must be a finite number > 0"),
]


@pytest.mark.parametrize(
    ("command", "args", "kwargs", "line"),
    [("project", *case) for case in BAD_PROJECT] + [("verify", *case) for case in BAD_VERIFY],
)
def test_bad_options_one_line_from_the_cli_and_the_same_error_from_the_api(
    roberta_dir, tmp_path, command, args, kwargs, line
):
    base = {"project": ["--k", "8"], "verify": ["--k", "8"]}[command]
    argv = [command, "--model", str(roberta_dir), "--seq-len", str(SEQ_LEN), *base, *args]
    code, _, stderr = _cli(*argv, "--out", str(tmp_path / "o"))
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {line}"), stderr
    assert "Traceback" not in stderr and not (tmp_path / "o").exists()
    function = {"project": api.project, "verify": api.verify}[command]
    options = {"seq_len": SEQ_LEN, "k": 8, "out": tmp_path / "o", "progress": False} | kwargs
    with pytest.raises(LowrankError) as err:
        function(str(roberta_dir), **options)
    # the same mistake, named as the caller wrote it: flags on the command line, keywords here
    assert str(err.value) == as_keywords(lines[0].removeprefix("error: "))
    assert "--" not in str(err.value)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("kwargs", "line"),
    [
        ({"num_sequences": 0}, "num_sequences=0 must be at least 1"),
        ({"batch_size": 0}, "batch_size=0 must be at least 1"),
        ({"draws": 0}, "draws=0 must be at least 1"),
        ({"k": []}, "k: give at least one value"),
        ({"k": [8.5]}, "k=8.5 must be a whole number"),
        ({"method": "gaussian,magic"}, "method: 'magic' is not one of"),
        ({"method": ["svd", "svd"]}, "method lists 'svd' twice"),
        ({"estimator": "bogus"}, "estimator: 'bogus' is not one of paper, projector"),
        ({"sharing": []}, "sharing: give at least one value"),
        ({"delta": "1"}, "delta='1' must be a number"),
        ({"policy": "shuffle"}, "policy: 'shuffle' is not one of auto, pack, document"),
        ({"plot": True}, "plot draws into <out>/figures: give out as well"),
    ],
)
def test_api_only_mistakes_are_refused_before_any_work(roberta_dir, kwargs, line):
    with pytest.raises(LowrankError) as err:
        api.project(str(roberta_dir), **{"seq_len": SEQ_LEN, "k": 8, **kwargs})
    assert str(err.value).startswith(line)


def test_unsorted_lists_are_sorted_with_one_info_line(roberta_dir, caplog, capfd):
    with caplog.at_level(logging.INFO, logger="lowrank"):
        res = api.verify(
            str(roberta_dir),
            **VERIFY | {"eps": [0.5, 0.3], "k": 8, "inverse_temperatures": [4, 1]},
            theorem2=False,
            progress=False,
        )
    assert res.config["eps"] == [0.3, 0.5] and res.config["inverse_temperatures"] == [1.0, 4.0]
    assert res.arrays["eps"].tolist() == [0.3, 0.5]
    messages = [r.getMessage() for r in caplog.records]
    assert "eps: taking the values in increasing order: 0.3,0.5" in messages
    assert "inverse_temperatures: taking the values in increasing order: 1.0,4.0" in messages
    assert not any(m.startswith("k:") for m in messages)  # one k: nothing to sort
    assert "synthetic" not in capfd.readouterr().err  # progress=False: no bars


def test_padded_token_ids_are_refused(roberta_dir):
    ids = torch.randint(5, 300, (2, SEQ_LEN))
    mask = torch.ones_like(ids)
    mask[1, -4:] = 0  # the second sequence is 4 tokens short
    with pytest.raises(LowrankError, match="needs full-length sequences: 1 of 2 are padded"):
        api.project(str(roberta_dir), None, ids, k=8, attention_mask=mask, progress=False)


# --- figures: every project and verify figure type, drawn small, laid out without overlap ------


def layout_problems(fig, min_points: float = 6.5, max_entries: int = 6) -> list[str]:
    """What a reader would trip over in ``fig``: titles, axis labels, legends and texts that
    overlap one another or a tick label, tick labels that overlap their neighbours, a legend
    on a panel, type below ``min_points``, a legend of more than ``max_entries`` entries
    (blank padding not counted), and the warnings matplotlib gives when a layout fails."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.canvas.draw()
    problems = [f"warning: {w.message}" for w in caught if "layout" in str(w.message).lower()]
    renderer = fig.canvas.get_renderer()
    texts, ticks, legends = _labelled_boxes(fig, renderer, problems)
    panels = [ax.get_window_extent(renderer) for ax in fig.axes if _is_panel(ax)]
    for j, legend in enumerate(legends):
        box = legend.get_window_extent(renderer)
        texts.append((f"legend {j}", box))
        entries = [t for t in legend.get_texts() if t.get_text().strip()]
        if len(entries) > max_entries:
            problems.append(f"legend {j} has {len(entries)} entries")
        if any(_overlap(box, panel) for panel in panels):
            problems.append(f"legend {j} lies on the data of a panel")
        small = [t.get_text() for t in entries if t.get_fontsize() < min_points]
        problems += [f"legend {j} entry {t!r} below {min_points} pt" for t in small]
    for (name_a, a), (name_b, b) in combinations(texts, 2):
        if _overlap(a, b):
            problems.append(f"{name_a} overlaps {name_b}")
    problems += [
        f"{a} overlaps {b}" for a, box in texts for b, tick in ticks if _overlap(box, tick)
    ]
    return problems


def _is_panel(ax) -> bool:
    return ax.get_visible() and ax.get_label() != "<colorbar>"


def _labelled_boxes(fig, renderer, problems: list[str], min_points: float = 6.5):
    """(name, box) of the suptitle, every title, axis label and text, and of every tick
    label drawn; the legends; small type and crowded tick labels go into ``problems``."""
    texts, ticks, legends = [], [], list(fig.legends)
    named = [("suptitle", fig._suptitle)] if fig._suptitle is not None else []
    for i, ax in enumerate(a for a in fig.axes if a.get_visible()):
        named += [(f"axes {i} title", t) for t in (ax.title, ax._left_title, ax._right_title)]
        named += [(f"axes {i} xlabel", ax.xaxis.label), (f"axes {i} ylabel", ax.yaxis.label)]
        named += [(f"axes {i} text", t) for t in ax.texts]
        frame = ax.get_window_extent(renderer)
        for axis, labels in (("x", ax.get_xticklabels()), ("y", ax.get_yticklabels())):
            shown = [
                (t.get_text(), t.get_window_extent(renderer), t.get_fontsize())
                for t in labels
                if t.get_text() and t.get_visible()
            ]
            shown = [item for item in shown if _on_axis(item[1], frame, axis)]
            ticks += [(f"axes {i} tick {text!r}", box) for text, box, _ in shown]
            problems += [
                f"axes {i}: tick labels {a[0]!r} and {b[0]!r} overlap"
                for a, b in pairwise(shown)
                if _overlap(a[1], b[1])
            ]
            problems += [
                f"axes {i} tick {t!r} below {min_points} pt"
                for t, _, size in shown
                if size < min_points
            ]
        if ax.get_legend() is not None:
            legends.append(ax.get_legend())
    for name, text in named:
        if text.get_text().strip() and text.get_visible():
            texts.append((f"{name} {text.get_text()!r}", text.get_window_extent(renderer)))
            if text.get_fontsize() < min_points:
                problems.append(f"{name} {text.get_text()!r} below {min_points} pt")
    return texts, ticks, legends


def _on_axis(box, frame, axis: str) -> bool:
    """A label matplotlib keeps for a tick outside the view limits is not drawn: only labels
    whose centre lies along the axes' extent count."""
    if axis == "x":
        return frame.x0 - 1 <= (box.x0 + box.x1) / 2 <= frame.x1 + 1
    return frame.y0 - 1 <= (box.y0 + box.y1) / 2 <= frame.y1 + 1


def _overlap(a, b, slack: float = 1.0) -> bool:
    """True when two display boxes share more than ``slack`` pixels both ways."""
    return min(a.x1, b.x1) - max(a.x0, b.x0) > slack and min(a.y1, b.y1) - max(a.y0, b.y0) > slack


@pytest.fixture(scope="module")
def rich_project(roberta_dir) -> ProjectionResult:
    """The default methods, every sharing, three k and three sequences (intervals)."""
    return api.project(
        str(roberta_dir), seq_len=SEQ_LEN, num_sequences=3, k=(4, 8, 16), draws=1, progress=False
    )


@pytest.fixture(scope="module")
def verify_run(roberta_dir) -> VerifyResult:
    return api.verify(str(roberta_dir), **VERIFY, progress=False)


def _drawn(make):
    """The figure ``make()`` draws (a Figure, or the figure of the Axes it returns)."""
    import matplotlib

    matplotlib.use("Agg")
    from lowrank.plots.style import paper_style

    with paper_style():
        made = make()
        return made if hasattr(made, "savefig") else made.figure


PROJECT_FIGURES = {
    "error_vs_k": lambda r: __import__(
        "lowrank.families.project.plots", fromlist=["error_figure"]
    ).error_figure(r),
    "model_effect": lambda r: __import__(
        "lowrank.families.project.effect_plots", fromlist=["effect_figure"]
    ).effect_figure(r),
    "plot theorem1": lambda r: r.plot(kind="theorem1"),
    "plot theorem1 projector cosine": lambda r: r.plot(
        kind="theorem1", metric="cosine", estimator="projector"
    ),
    "plot theorem2 scale-free": lambda r: r.plot(kind="theorem2", metric="scale-free"),
    "plot_effect": lambda r: r.plot_effect(),
    "heatmap": lambda r: r.heatmap(k=8),
}


@pytest.mark.parametrize("name", PROJECT_FIGURES)
def test_every_project_figure_is_laid_out_without_overlap(rich_project, name):
    import matplotlib.pyplot as plt

    fig = _drawn(lambda: PROJECT_FIGURES[name](rich_project))
    # the tiny random model's JL families differ by more than 10%: all three are drawn,
    # beside mean pooling and four references (on MiniLM they agree and make six)
    entries = 7 if name in ("error_vs_k", "plot theorem2 scale-free") else 6
    try:
        assert layout_problems(fig, max_entries=entries) == [], name
    finally:
        plt.close(fig)


@pytest.mark.parametrize("every", [False, True])
def test_every_verify_figure_is_laid_out_without_overlap(verify_run, every):
    import matplotlib.pyplot as plt

    eps = len(verify_run.arrays["eps"])  # the eps colour key has a row of its own
    for fig in (_drawn(lambda: verify_run.figure(every)), _drawn(verify_run.plot)):
        try:
            assert layout_problems(fig, max_entries=eps + 6) == []
        finally:
            plt.close(fig)


def test_the_overlap_check_catches_what_the_issue_saw():
    # the old figures' faults, made on purpose: a y label into a neighbour's title, 5 pt
    # titles, a legend of 19 entries on the data
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(3.0, 2.0))
    for ax in axes:
        ax.set_title("a long panel title that runs into the next", fontsize=5)
        for i in range(19):
            ax.plot([0, 1], [i, i + 1], label=f"series {i}")
    axes[1].set_ylabel("a y label")
    axes[1].legend(loc="center")
    problems = layout_problems(fig)
    plt.close(fig)
    assert any("overlaps" in p for p in problems)
    assert any("19 entries" in p for p in problems)
    assert any("on the data" in p for p in problems)
    assert any("below 6.5 pt" in p for p in problems)


def test_jl_families_that_agree_are_drawn_once_and_named(rich_project):
    from lowrank.families.project.plots import AGREE, jl_stand_ins

    stand_ins = jl_stand_ins(rich_project)
    ax = _drawn(lambda: rich_project.plot(kind="theorem2")).axes[0]
    labels = ax.get_legend_handles_labels()[1]
    for first, (others, worst) in stand_ins.items():
        assert worst <= AGREE
        (line,) = [label for label in labels if label.startswith(first)]
        assert all(other in line for other in others)
        assert not any(label.startswith(tuple(others)) for label in labels)


def test_model_effect_baselines_close_together_stay_apart(rich_project):
    import matplotlib.pyplot as plt

    res = ProjectionResult(rich_project.config, rich_project.arrays)
    results = res.config["model_effect"]["results"]
    edited = [dict(r) for r in results]
    for r in edited:  # the issue's values: zero 0.584, uniform 0.589
        if r["k"] is None:
            r["cosine"] = 0.584 if r["method"] == "zero" else 0.589
    res.config = {**res.config, "model_effect": {**res.config["model_effect"], "results": edited}}
    fig = _drawn(res.plot_effect)
    texts = [t.get_text() for t in fig.axes[0].texts]
    # 0.005 apart: one label naming both, a line each, instead of two on each other
    assert "uniform attention 0.589\nzero attention 0.584" in texts
    assert layout_problems(fig) == []
    plt.close(fig)


# --- earlier formats still load, summarise, report and draw ------------------------------------


def _downgrade(folder, meta_edit, drop_arrays=(), npz="projection.npz"):
    import json

    meta = json.loads((folder / "run.json").read_text())
    meta.pop("manifest", None)  # as an earlier lowrank wrote run.json: no file digests
    meta_edit(meta)
    (folder / "run.json").write_text(json.dumps(meta))
    with np.load(folder / npz) as data:
        arrays = {k: data[k] for k in data.files if k not in drop_arrays}
    np.savez_compressed(folder / npz, **arrays)


def test_a_format_2_projection_folder_still_reads(rich_project, tmp_path):
    import matplotlib.pyplot as plt

    path = ProjectionResult(rich_project.config, rich_project.arrays).save(tmp_path / "p2")

    def old(meta):
        meta["format_version"] = 2
        for e in meta["model_effect"]["results"]:  # format 2: t-intervals, always numbers
            e["cosine_ci"], e["relative_error_ci"] = [0.1, 0.9], [0.2, 0.8]
        for t in meta["baseline_tests"]:
            t["ci"] = [-1.0, 1.0]

    _downgrade(path, old)
    res = load(path)
    assert isinstance(res, ProjectionResult) and res.config["format_version"] == 2
    assert "too few" not in res.report()  # three sequences: intervals, recomputed
    row = res.summary(at=8, kind="theorem2", metric="cosine").set_index("row").loc["gaussian"]
    assert -1 <= row["ci_low"] <= row["mean"] <= row["ci_high"] <= 1
    assert res.effects()["cosine_ci_low"].tolist()[0] == 0.1
    for fig in (res.plot().figure, res.plot_effect().figure, res.heatmap().figure):
        plt.close(fig)
    assert len(res.draw(tmp_path / "figures")) == 6


def test_a_format_2_verify_folder_still_reads(verify_run, tmp_path):
    import json

    import matplotlib.pyplot as plt

    path = VerifyResult(
        verify_run.config, verify_run.arrays, None, verify_run.records, verify_run.k_needed
    ).save(tmp_path / "v2")

    def old(meta):
        meta["format_version"] = 2
        for key in ("baselines", "conditional_on", "baseline_rule", "estimated_peak_bytes"):
            meta.pop(key)

    drop = ("baselines", "baseline_rate", "baseline_ci_low", "baseline_ci_high")
    _downgrade(path, old, drop, npz="verify.npz")
    table = json.loads((path / "verify.json").read_text())
    for row in table["k_needed"]:
        row.pop("trivial_meets_target")
    (path / "verify.json").write_text(json.dumps(table))
    res = load(path)
    assert isinstance(res, VerifyResult) and res.config["format_version"] == 2
    text = res.report()
    assert "\n  zero " not in text and "trivial P~" not in text
    assert res.summary()["zero_rate"].isna().all() and res.baselines().empty
    plt.close(res.figure())
    assert len(res.draw(tmp_path / "figures")) == 2


def test_verify_summary_and_baselines_carry_the_trivial_rates(verify_run):
    table = verify_run.summary(statement="jl-consistent")
    assert table["zero_rate"].notna().all() and table["uniform_rate"].between(0, 1).all()
    trivial = verify_run.baselines()
    assert set(trivial["baseline"]) == {"zero", "uniform"}
    one = trivial.query("statement == 'paper' and baseline == 'zero'")
    assert (one["rate"] == 1.0).all()  # ||0 - Pw|| = ||Pw|| fails the paper's wording
    assert verify_run.config["conditional_on"].startswith("every rate is conditional")
