"""Families that rebuild attention from Q and K refuse models whose scores carry terms of
their own (MPNet's relative-position biases): their numbers would describe another matrix."""

from __future__ import annotations

import csv

import pytest
from click.testing import CliRunner

import lowrank
from lowrank.cli import main
from lowrank.errors import LowrankError

SMALL = ["--seq-len", "16", "--num-sequences", "2"]


@pytest.mark.parametrize(
    ("command", "extra", "message"),
    [
        ("project", ["--k", "4", "--draws", "1", "--no-model-effect"], "lowrank project rebuilds"),
        ("verify", ["--k", "4", "--eps", "0.5"], "pass --no-theorem2 to check Theorem 1 alone"),
    ],
)
def test_a_model_with_position_biases_is_refused_in_one_line(
    command, extra, message, mpnet_dir, tmp_path
):
    out = tmp_path / "run"
    res = CliRunner().invoke(main, [command, "--model", str(mpnet_dir), *SMALL, *extra,
                                    "--out", str(out)])  # fmt: skip
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "adds terms of its own" in errors[0] and message in errors[0]
    assert not out.exists()


def test_the_api_names_the_keyword_and_theorem1_alone_runs_on_that_model(mpnet_dir, tmp_path):
    with pytest.raises(LowrankError, match="pass theorem2=False"):
        lowrank.verify(str(mpnet_dir), seq_len=16, num_sequences=2, k=4, eps=0.5, progress=False)
    res = CliRunner().invoke(main, ["verify", "--model", str(mpnet_dir), *SMALL, "--k", "4",
                                    "--eps", "0.5", "--no-theorem2", "--synthetic-count", "1",
                                    "--jl-trials", "10", "--out", str(tmp_path / "v")])  # fmt: skip
    assert res.exit_code == 0, res.output
    with (tmp_path / "v" / "verify.csv").open() as rows:
        statements = {row["statement"] for row in csv.DictReader(rows)}
    assert "paper" in statements and "theorem2" not in statements
