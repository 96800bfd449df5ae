"""``lowrank.efficiency``, ``lowrank.compare`` and ``lowrank.scaling`` against their commands.

The same options give the same arrays from Python as from the CLI (to 1e-12 where the
numbers are deterministic; efficiency's timings are measurements, so there the shapes,
batches and missing cells must agree), a result saves and loads back unchanged, its summary
holds the arrays' values, ``report()`` is what the command prints, and a bad option is one
line and exit 2 from the CLI and the very same message as a LowrankError from Python.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import lowrank
from lowrank.cli import main
from lowrank.errors import LowrankError
from lowrank.families.compare.result import CompareResult
from lowrank.families.efficiency.result import EfficiencyResult
from lowrank.families.scaling.result import ScalingResult
from lowrank.registry import load
from tests.helpers import as_keywords

STACK = {"layers": 1, "hidden": 16, "heads": 2, "ffn": 32, "device": "cpu"}
STACK_ARGS = [a for key, value in STACK.items() for a in (f"--{key}", str(value))]
FAMILIES = "lowrank-oracle,sparse-oracle,lsh,local-global,performer"
NS = (8, 16, 32)


def _cli(*args: object):
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray], tol: float = 1e-12) -> None:
    assert set(a) == set(b), set(a) ^ set(b)
    for key in a:
        x, y = np.asarray(a[key]), np.asarray(b[key])
        assert x.shape == y.shape, key
        if x.dtype.kind in "fiub":
            assert np.array_equal(np.isnan(x), np.isnan(y)) if x.dtype.kind == "f" else True
            diff = np.nanmax(np.abs(x.astype(float) - y.astype(float)), initial=0.0)
            assert diff <= tol, (key, diff)
        else:
            assert np.array_equal(x, y), key


# --- efficiency -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def efficiency_pair(tmp_path_factory):
    base = tmp_path_factory.mktemp("efficiency")
    cli = _cli(
        "efficiency", "--n", "32,64", "--k", "8", *STACK_ARGS,
        "--repeats", 2, "--warmup", 0, "--out", base / "cli",
    )  # fmt: skip
    res = lowrank.efficiency(n=(32, 64), k=8, repeats=2, warmup=0, progress=False, **STACK)
    return res, base, cli


def test_efficiency_api_gives_the_cli_arrays(efficiency_pair):
    res, base, _ = efficiency_pair
    disk = _npz(base / "cli" / "efficiency.npz")
    assert set(res.arrays) == set(disk)
    for key, value in res.arrays.items():
        assert value.shape == disk[key].shape, key
        if value.dtype.kind == "f":  # timings and peaks differ; the cells measured do not
            assert np.array_equal(np.isnan(value), np.isnan(disk[key])), key
        else:
            assert np.array_equal(value, disk[key]), key
    assert res.n.tolist() == [32, 64] and res.k.tolist() == [8]
    assert res.batch_exact.tolist() == [1, 1] and res.equal_batch.tolist() == [1, 1]
    assert res.path is None and res.config["command"].startswith("lowrank.efficiency(")


def test_efficiency_result_saves_loads_and_summarises(efficiency_pair, tmp_path):
    res, base, cli = efficiency_pair
    saved = res.save(tmp_path / "api")
    back = load(saved)
    assert isinstance(back, EfficiencyResult) and back.path == saved
    _assert_same(back.arrays, res.arrays, tol=0.0)
    assert back.data == res.data and back.config == res.config
    assert back.report() == res.report()
    frame = res.summary()
    assert len(frame) == 2 and list(frame["n"]) == [32, 64]
    for i, row in frame.iterrows():
        for key in ("speedup_vs_exact", "memory_saving_equal_batch_vs_sdpa", "batch_linformer"):
            assert np.allclose(row[key], res.arrays[key][i, 0], equal_nan=True), key
        assert row["peak_bytes_per_sequence_exact"] == res.peak_bytes_per_sequence_exact[i]
    assert list(res.summary(at=64)["n"]) == [64]
    with pytest.raises(LowrankError, match=r"^at=48"):
        res.summary(at=48)
    # the CLI prints the report of the run it wrote
    assert cli.stdout == EfficiencyResult.read(base / "cli").report() + "\n"


def test_efficiency_plot_returns_its_axes(efficiency_pair):
    import matplotlib.pyplot as plt

    res, _, _ = efficiency_pair
    ax = res.plot()
    assert ax.get_xlabel() == "sequence length n" and len(ax.lines) >= 2
    plt.close(ax.figure)


# --- compare ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compare_pair(bert_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("compare")
    options = ["--seq-len", 32, "--num-sequences", 2, "--batch-size", 2, "--budget", "4,8"]
    cli = _cli(
        "compare", "--model", bert_dir, *options, "--families", FAMILIES, "--out", base / "cli"
    )
    res = lowrank.compare(
        str(bert_dir),
        seq_len=32,
        num_sequences=2,
        batch_size=2,
        budget=(4, 8),
        families=FAMILIES,
        progress=False,
    )
    return res, base, cli


def test_compare_api_gives_the_cli_arrays(compare_pair):
    res, base, _ = compare_pair
    _assert_same(res.arrays, _npz(base / "cli" / "compare.npz"))
    assert res.budgets == [4, 8] and res.focus_budget == 8


def test_compare_result_saves_loads_and_summarises(compare_pair, tmp_path):
    res, base, cli = compare_pair
    back = load(res.save(tmp_path / "api"))
    assert isinstance(back, CompareResult)
    _assert_same(back.arrays, res.arrays, tol=0.0)
    assert back.report() == res.report()
    frame = res.summary(at=4)
    ki, layers, heads = 0, *res.entropy_mean.shape
    assert len(frame) == layers * heads
    assert np.array_equal(frame["entropy"], res.entropy_mean.ravel())
    assert np.array_equal(frame["c_at_budget"], res.c_at_budget_mean[ki].ravel())
    for fi, family in enumerate(res.families):
        assert np.array_equal(frame[family], res.output_error_mean[fi, ki].ravel(), equal_nan=True)
    winners = [res.families[w] for w in res.winner[ki].ravel()]
    assert list(frame["winner"]) == winners
    with pytest.raises(LowrankError, match=r"^at=16"):
        res.summary(at=16)
    assert cli.stdout == CompareResult.read(base / "cli").report() + "\n"


def test_compare_takes_a_model_object_and_token_ids_and_restores_the_model(compare_pair, bert_dir):
    from transformers import AutoModel, AutoTokenizer

    res, _, _ = compare_pair
    model = AutoModel.from_pretrained(bert_dir).train()  # left in training mode on purpose
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    ids = torch.from_numpy(res.input_ids)  # [2, 32], the CLI's sequences
    mem = lowrank.compare(
        model, tokenizer, ids, budget=(4, 8), families=FAMILIES, batch_size=2, progress=False
    )
    _assert_same(mem.arrays, res.arrays)
    assert mem.config["corpus"]["kind"] == "memory" and "data_digest" in mem.config["identity"]
    assert model.training  # as found


def test_compare_plots_return_their_axes(compare_pair):
    import matplotlib.pyplot as plt

    res, _, _ = compare_pair
    ax = res.plot()
    assert len(ax.lines) >= len(FAMILIES.split(","))
    winners = res.plot_winners(budget=4)
    assert "b = 4" in winners.get_title()
    plt.close("all")


# --- scaling ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scaling_pair(bert_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("scaling")
    lengths = ",".join(map(str, NS))
    cli = _cli(
        "scaling", "--model", bert_dir, "--dataset", "sample-imdb", "--seq-len", lengths,
        "--num-sequences", 4, "--bootstrap", 50, "--out", base / "cli",
    )  # fmt: skip
    res = lowrank.scaling(
        str(bert_dir),
        dataset="sample-imdb",
        seq_len=NS,
        num_sequences=4,
        bootstrap=50,
        progress=False,
    )
    return res, base, cli


def test_scaling_api_gives_the_cli_arrays_and_spectrum_runs(scaling_pair):
    res, base, _ = scaling_pair
    _assert_same(res.arrays, _npz(base / "cli" / "scaling.npz"))
    assert sorted(res.runs) == list(NS)
    for n in NS:
        _assert_same(res.runs[n].arrays, _npz(base / "cli" / f"n{n}" / "spectrum.npz"))


def test_scaling_result_saves_loads_and_summarises(scaling_pair, tmp_path):
    res, base, cli = scaling_pair
    back = load(res.save(tmp_path / "api"))
    assert isinstance(back, ScalingResult)
    _assert_same(back.arrays, res.arrays, tol=0.0)
    for n in NS:
        _assert_same(back.runs[n].arrays, res.runs[n].arrays, tol=0.0)
    assert back.report() == res.report()
    frame = res.summary(at=16)
    assert [c for c in frame.columns if c.startswith("n=")] == ["n=16"]
    rows = frame[frame["measure"] == "output_rank"]
    assert list(rows["group"]) == res.groups
    assert np.array_equal(rows["n=16"], res.output_rank_mean[:, 1])
    assert np.array_equal(rows["beta"], res.output_rank_power_params[:, 1])
    assert list(rows["verdict"]) == res.output_rank_verdict.tolist()
    with pytest.raises(LowrankError, match=r"^at=12"):
        res.summary(at=12)
    assert cli.stdout == ScalingResult.read(base / "cli").report() + "\n"


def test_scaling_takes_a_model_object_and_texts(scaling_pair, bert_dir):
    from transformers import AutoModel, AutoTokenizer

    from lowrank.inputs.corpora import load_corpus

    res, _, _ = scaling_pair
    model = AutoModel.from_pretrained(bert_dir)
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    texts = load_corpus("sample-imdb", None).documents
    mem = lowrank.scaling(
        model, tokenizer, iter(texts), seq_len=NS, num_sequences=4, bootstrap=50, progress=False
    )
    _assert_same(mem.arrays, res.arrays)
    assert mem.config["corpus"]["kind"] == "memory"


def test_scaling_plots_return_their_axes(scaling_pair):
    import matplotlib.pyplot as plt

    res, _, _ = scaling_pair
    ax = res.plot(measure="rank90", group="layer 1")
    assert ax.get_xscale() == "log" and "layer 1" in ax.get_title()
    curves = res.plot_c_curves()
    assert len(curves.lines) == len(NS)
    plt.close("all")


# --- one check, one message, for the CLI and the API -----------------------------------------

EFF = ["--n", "32,64", "--k", "8", *STACK_ARGS]
EFF_KW: dict[str, object] = {"n": (32, 64), "k": 8, **STACK}
CMP = ["--seq-len", "32", "--num-sequences", "2", "--budget", "4,8"]
CMP_KW: dict[str, object] = {"seq_len": 32, "num_sequences": 2, "budget": (4, 8)}
SCL = ["--seq-len", "8,16,32", "--num-sequences", "4"]
SCL_KW: dict[str, object] = {"seq_len": (8, 16, 32), "num_sequences": 4}

CASES = [
    # (id, command, base args, extra args, api keywords, a fragment of the message)
    ("eff-n-1", "efficiency", EFF, ["--n", "1"], EFF_KW | {"n": 1}, "--n 1"),
    ("eff-n-twice", "efficiency", EFF, ["--n", "64,64"], EFF_KW | {"n": (64, 64)}, "twice"),
    ("eff-k-0", "efficiency", EFF, ["--k", "0"], EFF_KW | {"k": 0}, "--k 0"),
    ("eff-budget-nan", "efficiency", EFF, ["--memory-budget", "nan"],
     EFF_KW | {"memory_budget": float("nan")}, "--memory-budget nan"),
    ("eff-budget-neg", "efficiency", EFF, ["--memory-budget", "-1"],
     EFF_KW | {"memory_budget": -1.0}, "--memory-budget"),
    ("eff-both", "efficiency", EFF, ["--batch-size", "2", "--memory-budget", "1"],
     EFF_KW | {"batch_size": 2, "memory_budget": 1.0}, "not both"),
    ("eff-layers-0", "efficiency", EFF, ["--layers", "0"], EFF_KW | {"layers": 0}, "--layers"),
    ("eff-repeats-0", "efficiency", EFF, ["--repeats", "0"], EFF_KW | {"repeats": 0}, "--repeats"),
    ("eff-warmup-neg", "efficiency", EFF, ["--warmup", "-1"], EFF_KW | {"warmup": -1}, "--warmup"),
    ("eff-heads", "efficiency", EFF, ["--heads", "3"], EFF_KW | {"heads": 3}, "multiple"),
    ("cmp-globals", "compare", CMP, ["--globals", "-1"], CMP_KW | {"globals": -1}, "--globals -1"),
    ("cmp-rounds", "compare", CMP, ["--lsh-rounds", "0"], CMP_KW | {"lsh_rounds": 0},
     "--lsh-rounds 0"),
    ("cmp-budget-twice", "compare", CMP, ["--budget", "4,8,4"], CMP_KW | {"budget": (4, 8, 4)},
     "--budget lists 4 twice"),
    ("cmp-budget-n", "compare", CMP, ["--budget", "64"], CMP_KW | {"budget": 64}, "exceeds n"),
    ("cmp-budget-nan", "compare", CMP, ["--budget", "nan"], CMP_KW | {"budget": float("nan")},
     "must be a whole number"),
    ("cmp-seed", "compare", CMP, ["--seed", "-1"], CMP_KW | {"seed": -1}, "--seed -1"),
    ("cmp-draw-seed", "compare", CMP, ["--draw-seed", str(2**32)],
     CMP_KW | {"draw_seed": 2**32}, "--draw-seed"),
    ("cmp-split", "compare", CMP, ["--scatterbrain-split", "inf"],
     CMP_KW | {"scatterbrain_split": float("inf")}, "--scatterbrain-split inf"),
    ("cmp-workers", "compare", CMP, ["--workers", "0"], CMP_KW | {"workers": 0}, "--workers"),
    ("cmp-num-seq", "compare", CMP, ["--num-sequences", "0"], CMP_KW | {"num_sequences": 0},
     "--num-sequences"),
    ("cmp-family", "compare", CMP, ["--families", "lsh,lsh"], CMP_KW | {"families": "lsh,lsh"},
     "twice"),
    ("scl-twice", "scaling", SCL, ["--seq-len", "8,16,16"], SCL_KW | {"seq_len": (8, 16, 16)},
     "--seq-len lists 16 twice"),
    ("scl-two", "scaling", SCL, ["--seq-len", "8,16"], SCL_KW | {"seq_len": (8, 16)},
     "at least three lengths"),
    ("scl-tau-nan", "scaling", SCL, ["--tau", "nan"], SCL_KW | {"tau": float("nan")}, "--tau"),
    ("scl-tau-1", "scaling", SCL, ["--tau", "1"], SCL_KW | {"tau": 1.0}, "--tau"),
    ("scl-precision", "scaling", SCL, ["--precision", "inf"], SCL_KW | {"precision": float("inf")},
     "--precision"),
    ("scl-budget", "scaling", SCL, ["--memory-budget", "nan"],
     SCL_KW | {"memory_budget": float("nan")}, "--memory-budget"),
    ("scl-seed", "scaling", SCL, ["--seed", str(2**32)], SCL_KW | {"seed": 2**32}, "--seed"),
    ("scl-boot", "scaling", SCL, ["--bootstrap", "10"], SCL_KW | {"bootstrap": 10}, "--bootstrap"),
    ("scl-fixed", "scaling", SCL, ["--fixed-index", "9"], SCL_KW | {"fixed_index": 9},
     "exceeds the smallest n = 8"),
    ("scl-num-seq", "scaling", SCL, ["--num-sequences", "1"], SCL_KW | {"num_sequences": 1},
     "--num-sequences"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("command", "base", "extra", "kwargs", "fragment"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_a_bad_option_is_the_same_line_from_the_cli_and_the_api(
    bert_dir, tmp_path, command, base, extra, kwargs, fragment
):
    model = [] if command == "efficiency" else ["--model", str(bert_dir)]
    out = tmp_path / "out"
    res = CliRunner().invoke(main, [command, *model, *base, *extra, "--out", str(out)])
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    message = lines[0].removeprefix("error: ")
    assert fragment in message
    assert not out.exists()
    function = getattr(lowrank, command)
    args = () if command == "efficiency" else (str(bert_dir),)
    with pytest.raises(LowrankError) as caught:
        function(*args, **kwargs, out=out, progress=False)
    # the same mistake, named as the caller wrote it: flags there, keywords here
    assert str(caught.value).replace("'", "") == as_keywords(message).replace("'", "")
    assert "--" not in str(caught.value)
    assert not out.exists()


def test_the_globals_message_names_globals_not_the_lsh_rounds():
    with pytest.raises(LowrankError) as caught:
        lowrank.compare(globals=-1, seq_len=32, budget=8)
    assert "globals" in str(caught.value) and "lsh_rounds" not in str(caught.value)


@contextmanager
def _lowrank_log(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """The ``lowrank`` logger's records into caplog, however its propagation is set."""
    logger = logging.getLogger("lowrank")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="lowrank"):
            yield
    finally:
        logger.removeHandler(caplog.handler)


@pytest.mark.parametrize(
    ("function", "kwargs", "line"),
    [
        ("compare", {"budget": (8, 4), "globals": -1}, "budget: taking the values in "
         "increasing order: 4,8"),
        ("efficiency", {"n": (64, 32), "k": 8, "repeats": 0}, "n: taking the values in "
         "increasing order: 32,64"),
        ("scaling", {"seq_len": (32, 8, 16), "fixed_index": 9}, "seq_len: taking the values "
         "in increasing order: 8,16,32"),
    ],
)  # fmt: skip
def test_an_unsorted_list_is_sorted_with_a_log_line(function, kwargs, line, caplog):
    with _lowrank_log(caplog), pytest.raises(LowrankError):
        getattr(lowrank, function)(**kwargs, progress=False)
    assert line in caplog.messages
