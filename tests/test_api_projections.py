"""The Python API of the projection family: parity with the CLI, results, one-place checks."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lowrank import api
from lowrank.cli import main
from lowrank.errors import LowrankError
from lowrank.families.project.result import ProjectionResult
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
    assert row["ci_low"] < row["mean"] < row["ci_high"]
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
    ax = api_project.plot(kind="theorem1", metric="cosine")
    labels = ax.get_legend_handles_labels()[1]
    assert "gaussian[projector]" in labels and "mean-pool[paper]" in labels
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
    assert ax.get_title() == "jl-rows | real | values"
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
