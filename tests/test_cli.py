"""The CLI end to end through click's CliRunner, on tiny models; every bad input exits 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from lowrank.cli import main
from lowrank.families.spectrum.result import SpectrumResult
from lowrank.inputs.models import load_model
from tests.helpers import SEQ_LEN, reference_cumulative


def _spectrum(args, **kw):
    return CliRunner().invoke(main, ["spectrum", *args], **kw)


@pytest.fixture(scope="module")
def tiny_run(roberta_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    res = _spectrum(
        [
            "--model",
            str(roberta_dir),
            "--seq-len",
            str(SEQ_LEN),
            "--num-sequences",
            "5",
            "--batch-size",
            "2",
            "--out",
            str(out),
        ]
    )
    assert res.exit_code == 0, res.output
    return out, res


def test_spectrum_writes_a_documented_run_folder(tiny_run, roberta_dir):
    out, res = tiny_run
    meta = json.loads((out / "run.json").read_text())
    assert meta["format"] == "lowrank-spectrum"
    assert meta["model"]["kind"] == "local" and meta["model"]["model_type"] == "roberta"
    assert meta["corpus"]["dataset"] == "sample-wiki" and meta["corpus"]["kind"] == "articles"
    assert (meta["num_layers"], meta["num_heads"], meta["seq_len"]) == (3, 4, SEQ_LEN)
    assert meta["num_sequences"] == 5 and meta["heatmap_index"] == SEQ_LEN // 4
    assert meta["sequence_policy"]["policy"] == "pack"
    assert set(meta["versions"]) >= {"lowrank", "torch", "transformers"}
    assert meta["command"].startswith("lowrank spectrum --model")
    run = SpectrumResult.read(out)
    ref = reference_cumulative(
        load_model(str(roberta_dir)).model, run.input_ids, np.full(5, SEQ_LEN)
    )
    assert np.abs(run.stats.cumulative.mean - ref.mean(0)).max() <= 1e-6
    assert run.attention_mask is None
    assert "mean normalized cumulative singular value at index 12" in res.output
    assert "run folder:" in res.output


def test_rerun_with_another_configuration_is_refused_and_nothing_changes(tiny_run, roberta_dir):
    out, _ = tiny_run
    before = (out / "spectrum.npz").read_bytes(), (out / "run.json").read_bytes()
    res = _spectrum(["--model", str(roberta_dir), "--seq-len", "32", "--out", str(out)])
    assert res.exit_code == 2
    assert res.output.strip().count("\n") == 0 and "holds another run" in res.output
    assert ((out / "spectrum.npz").read_bytes(), (out / "run.json").read_bytes()) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "./no/such/model"], "does not exist"),
        (["--model", "{tmp}"], "not a model directory"),
        (["--model", "{roberta}", "--seq-len", "49"], "exceeds the 48 positions"),
        (["--model", "{roberta}", "--seq-len", "1"], "too short"),
        (["--model", "{roberta}", "--data", "{tmp}/latin.txt"], "not UTF-8"),
        (["--model", "{roberta}", "--data", "{tmp}/missing.txt"], "does not exist"),
        (["--model", "{roberta}", "--device", "cuda"], "CUDA"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(args, message, roberta_dir, tmp_path):
    (tmp_path / "latin.txt").write_bytes("na\xefve".encode("latin-1"))
    args = [a.format(tmp=tmp_path, roberta=roberta_dir) for a in args]
    res = _spectrum([*args, "--out", str(tmp_path / "out")])
    if "CUDA" in message:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in lines[0]
    assert "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_unknown_dataset_is_a_usage_error():
    res = _spectrum(["--dataset", "wikipedia"])
    assert res.exit_code == 2 and "wikipedia" in res.output


def test_help_explains_the_command():
    res = CliRunner().invoke(main, ["spectrum", "--help"])
    assert res.exit_code == 0
    for word in ("--model", "--dataset", "--seq-len", "--num-sequences", "minilm", "Figure 1"):
        assert word in res.output


# -- lowrank summary: a saved run's table ---------------------------------------------------


def _summary_args(out, *extra):
    return CliRunner().invoke(main, ["summary", str(out), *extra])


@pytest.mark.parametrize("fmt", ["table", "csv", "markdown", "json"])
def test_summary_prints_the_table_in_every_format(tiny_run, fmt):
    import io

    import pandas as pd

    out, _ = tiny_run
    res = _summary_args(out, "--format", fmt, "--at", "20")
    assert res.exit_code == 0, res.output
    text = res.stdout
    if fmt == "csv":
        table = pd.read_csv(io.StringIO(text))
    elif fmt == "json":
        table = pd.DataFrame(json.loads(text))
    elif fmt == "markdown":
        lines = [ln.strip().strip("|") for ln in text.splitlines() if ln.strip()]
        assert set(lines[1].replace("|", "").strip()) <= set(":- ")  # the rule line
        rows = [[cell.strip() for cell in ln.split("|")] for ln in lines[2:]]
        header = [cell.strip() for cell in lines[0].split("|")]
        table = pd.DataFrame(rows, columns=header).apply(pd.to_numeric)
    else:
        table = pd.read_csv(io.StringIO(text), sep=r"\s+")
    run = SpectrumResult.read(out)
    layers, heads = 3, 4
    assert len(table) == layers * heads
    assert list(table.columns[:4]) == ["layer", "head", "index", "c"]
    assert (table["index"] == 20).all()
    # csv and json carry full precision; markdown and the aligned table print 6 digits
    tol = 1e-12 if fmt in ("csv", "json") else 1e-5
    c = table.sort_values(["layer", "head"])["c"].to_numpy().reshape(layers, heads)
    assert np.abs(c - run.stats.cumulative.mean[..., 19]).max() <= tol
    spread = table.sort_values(["layer", "head"])["c_std"].to_numpy().reshape(layers, heads)
    assert np.abs(spread - run.stats.cumulative.std()[..., 19]).max() <= tol
    assert ((table["c"] >= 0) & (table["c"] <= 1)).all()


def test_summary_of_a_folder_that_is_no_run_is_one_line(tmp_path):
    res = _summary_args(tmp_path)
    assert res.exit_code == 2
    assert res.stderr.count("\n") == 1 and "is not a run folder" in res.stderr
    res = _summary_args(tmp_path / "missing")
    assert res.exit_code == 2 and "does not exist" in res.stderr


def test_summary_refuses_an_index_past_n(tiny_run):
    out, _ = tiny_run
    res = _summary_args(out, "--at", str(SEQ_LEN + 1))
    assert res.exit_code == 2 and f"--at {SEQ_LEN + 1} must be at most {SEQ_LEN}" in res.stderr


def test_summary_markdown_escapes_bars_inside_cells():
    import pandas as pd

    from lowrank.cli.runs import FORMATS

    table = pd.DataFrame({"series": ["paper | real | values"], "k": [16]})
    text = FORMATS["markdown"](table)
    header, _rule, row = text.splitlines()
    cells = [c.strip() for c in row.strip().strip("|").split(" | ")]
    assert cells == [r"paper \| real \| values", "16"]  # two cells, as in the header
    assert len(header.strip().strip("|").split(" | ")) == 2
