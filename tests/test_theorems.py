"""Theorem bounds by hand, verdict logic, Clopper-Pearson against scipy, JL on seeded draws."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from click.testing import CliRunner
from scipy.stats import binomtest

from lowrank.cli import main
from lowrank.errors import LowrankError
from lowrank.theorems import (
    Row,
    check_eps,
    clopper_pearson,
    jl_failures,
    jl_inner_failure_bound,
    jl_norm_failure_bound,
    smallest_k,
    synthetic_attention,
    theorem1_failure_bound,
    theorem1_failures,
    theorem1_k,
    theorem2_k,
    verdict,
)
from tests.helpers import SEQ_LEN


def test_jl_bounds_by_hand():
    # eps = 0.5: eps^2 - eps^3 = 0.125, so k = 32 gives exp(-1)
    assert jl_norm_failure_bound(0.5, 32) == pytest.approx(math.exp(-1))
    assert jl_inner_failure_bound(0.5, 32) == pytest.approx(2 * math.exp(-1))
    assert jl_inner_failure_bound(0.5, 1) == 1.0  # capped at a probability


def test_theorem1_k_and_its_union_bound_by_hand():
    # k = 5 ln(100) / 0.125 = 40 ln(100); at that k the bound is 2 n^(-1/4)
    assert theorem1_k(100, 0.5) == pytest.approx(40 * math.log(100))
    k = theorem1_k(100, 0.5)
    assert theorem1_failure_bound(100, k, 0.5) == pytest.approx(2 * 100**-0.25)
    assert theorem1_failure_bound(512, 16, 0.5) == 1.0
    assert theorem1_k(512, 0.1) > 512  # the theorem asks for more than n at small eps


def test_theorem2_k_by_hand():
    assert theorem2_k(512, 64, 0.5) == pytest.approx(5 * math.log(512) / 0.25)
    assert theorem2_k(10**9, 2, 0.5) == pytest.approx(9 * 2 * math.log(2) / 0.25)


@pytest.mark.parametrize("eps", [0.0, 1.0, -0.1, 1.5])
def test_eps_outside_the_open_unit_interval_is_refused(eps):
    with pytest.raises(LowrankError, match=r"outside \(0, 1\)"):
        check_eps(eps)


def test_verdict_on_constructed_cases():
    assert verdict(0.01, 0.02, 0.05) == "holds"
    assert verdict(0.10, 0.20, 0.05) == "violated"
    assert verdict(0.01, 0.10, 0.05) == "inconclusive"
    assert verdict(0.5, 0.6, 1.3) == "vacuous"
    assert verdict(0.5, 0.6, None) == "n/a"
    row = Row("x", 0.5, 16, failures=90, trials=100, bound=0.5)
    assert row.rate == 0.9 and row.verdict == "violated"
    assert Row("x", 0.5, 16, failures=0, trials=1000, bound=0.5).verdict == "holds"


@pytest.mark.parametrize(("x", "n"), [(0, 10), (3, 100), (50, 50), (7, 13), (1, 2000)])
def test_clopper_pearson_matches_scipy(x, n):
    ci = binomtest(x, n).proportion_ci(confidence_level=0.95, method="exact")
    lo, hi = clopper_pearson(x, n)
    assert lo == pytest.approx(ci.low, abs=1e-12)
    assert hi == pytest.approx(ci.high, abs=1e-12)


def test_jl_lemma_holds_with_its_stated_probability_on_seeded_draws():
    gen = torch.Generator().manual_seed(0)
    eps, k, trials = [0.3, 0.5], 48, 3000
    norms, inner = jl_failures(64, k, eps, trials, gen)
    for i, e in enumerate(eps):
        assert clopper_pearson(int(norms[i]), trials)[1] < jl_norm_failure_bound(e, k)
        assert clopper_pearson(int(inner[i]), trials)[1] < jl_inner_failure_bound(e, k)


def test_theorem1_failures_fall_with_k_and_count_pairs():
    gen = torch.Generator().manual_seed(1)
    p, v = synthetic_attention(64, 4, 1.0, 6, gen)
    low = theorem1_failures(p, v, 4, [0.5], torch.Generator().manual_seed(2))
    high = theorem1_failures(p, v, 64, [0.5], torch.Generator().manual_seed(2))
    assert 0 <= high[0] <= low[0] <= 6 * 4
    assert (p.sum(-1) - 1).abs().max() < 1e-12
    rows = [Row("s", 0.5, 4, int(low[0]), 24, None), Row("s", 0.5, 64, 0, 24, None)]
    assert smallest_k(rows, 0.5, 0.05) == 64


def test_verify_command_end_to_end(roberta_dir, tmp_path):
    out = tmp_path / "verify"
    args = [
        "verify",
        "--model",
        str(roberta_dir),
        "--seq-len",
        str(SEQ_LEN),
        "--num-sequences",
        "1",
        "--eps",
        "0.3,0.5",
        "--k",
        "8,48",
        "--temperatures",
        "0.1,8",
        "--synthetic-count",
        "3",
        "--jl-trials",
        "200",
        "--out",
        str(out),
        "--plot",
    ]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((out / "verify.csv").open()))
    sources = {r["source"] for r in rows}
    assert sources == {
        "real",
        "theorem2 real",
        "synthetic T=0.1",
        "synthetic T=8",
        "jl-norm",
        "jl-inner",
    }
    assert len(rows) == len(sources) * 2 * 2
    real = next(r for r in rows if r["source"] == "real" and r["k"] == "8" and r["eps"] == "0.5")
    assert int(real["trials"]) == 3 * 4 * 8  # layers x heads x head dimension
    assert float(real["bound"]) == pytest.approx(theorem1_failure_bound(SEQ_LEN, 8, 0.5))
    needed = json.loads((out / "verify.json").read_text())["k_needed"]
    assert {r["source"] for r in needed} == sources
    assert "k needed for a failure rate below 0.05" in res.output
    assert (out / "figures" / "failure_vs_k.png").is_file()


@pytest.mark.parametrize(
    ("args", "message"), [(["--eps", "1.5"], "outside (0, 1)"), (["--k", "0"], "outside 1..n")]
)
def test_verify_bad_input(roberta_dir, tmp_path, args, message):
    res = CliRunner().invoke(
        main,
        [
            "verify",
            "--model",
            str(roberta_dir),
            "--seq-len",
            str(SEQ_LEN),
            *args,
            "--out",
            str(tmp_path / "v"),
        ],
    )
    assert res.exit_code == 2 and message in res.output
    assert not (tmp_path / "v").exists()
