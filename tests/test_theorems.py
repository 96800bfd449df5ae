"""Theorem bounds by hand, verdict logic, cluster-robust intervals, JL constants, verify."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy.stats import binomtest, chi2

from lowrank.cli import main
from lowrank.errors import LowrankError
from lowrank.families.verify.theorems import (
    VECTORS,
    Row,
    assign_verdicts,
    check_eps,
    clopper_pearson,
    jl_exact_failure,
    jl_failures,
    jl_inner_failure_bound,
    jl_norm_failure_bound,
    k_for_failure,
    probe_vectors,
    smallest_k,
    synthetic_attention,
    theorem1_failure_bound,
    theorem1_failures,
    theorem1_k,
    theorem2_k,
)
from lowrank.maths.stats import ClusteredRate, holm
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


def _row(statement, failures, trials, bound, clusters=None):
    sizes = np.ones(trials) if clusters is None else np.full(clusters, trials // clusters)
    counts = np.zeros(len(sizes))
    if clusters is None:
        counts[:failures] = 1
    else:
        counts[: failures // (trials // clusters)] = trials // clusters
    return Row(statement, "s", "-", 0.5, 16, ClusteredRate.from_clusters(counts, sizes), bound)


def test_verdicts_only_on_promised_bounds_and_after_holm():
    rows = [
        _row("jl-consistent", 1, 1000, 0.05),  # far below: holds
        _row("jl-consistent", 900, 1000, 0.5),  # far above: violated
        _row("jl-consistent", 48, 1000, 0.05),  # at the bound: inconclusive
        _row("jl-norm", 10, 100, 1.3),  # bound >= 1: vacuous, not tested
        _row("paper", 900, 1000, 0.05),  # the paper's wording: no proof, no verdict
        _row("theorem2", 900, 1000, None),
    ]
    assert assign_verdicts(rows) == 3
    assert [r.verdict for r in rows] == [
        "holds",
        "violated",
        "inconclusive",
        "vacuous",
        "n/a",
        "n/a",
    ]
    # Holm: a row significant alone (p ~ 0.03) is not once 3 tests share the 5% level
    alone = _row("jl-consistent", 36, 1000, 0.05)
    assert alone.rate.p_value(0.05) < 0.05
    family = [alone, _row("jl-consistent", 48, 1000, 0.05), _row("jl-norm", 50, 1000, 0.05)]
    assign_verdicts(family)
    assert family[0].verdict == "inconclusive" and family[0].p_holm > 0.05


def test_holm_by_hand():
    # sorted p: 0.01 * 3, 0.02 * 2, 0.04 * 1 -> 0.03, 0.04, 0.04 (kept non-decreasing)
    assert holm([0.04, 0.01, 0.02]) == pytest.approx([0.04, 0.03, 0.04])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


@pytest.mark.parametrize(("x", "n"), [(0, 10), (3, 100), (50, 50), (7, 13), (1, 2000)])
def test_clopper_pearson_matches_scipy(x, n):
    ci = binomtest(x, n).proportion_ci(confidence_level=0.95, method="exact")
    lo, hi = clopper_pearson(x, n)
    assert lo == pytest.approx(ci.low, abs=1e-12)
    assert hi == pytest.approx(ci.high, abs=1e-12)
    # independent trials (clusters of one) give exactly the Clopper-Pearson interval
    rate = ClusteredRate.from_clusters(np.r_[np.ones(x), np.zeros(n - x)], np.ones(n))
    assert rate.n_eff == n
    assert rate.interval() == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_cluster_robust_interval_is_wider_on_correlated_trials():
    rng = np.random.default_rng(0)
    clusters, size = 60, 20
    # correlated: each cluster shares a draw that sets its failure probability
    p_cluster = rng.beta(0.5, 4.5, clusters)  # mean 0.1, strong between-cluster spread
    correlated = rng.binomial(size, p_cluster)
    rate = ClusteredRate.from_clusters(correlated, np.full(clusters, size))
    lo, hi = rate.interval()
    naive = clopper_pearson(rate.failures, rate.trials)
    assert hi - lo > 1.5 * (naive[1] - naive[0])
    assert clusters <= rate.n_eff < rate.trials
    # independent trials in the same clusters: the design effect is about 1
    independent = rng.binomial(size, 0.1, clusters)
    rate = ClusteredRate.from_clusters(independent, np.full(clusters, size))
    lo, hi = rate.interval()
    naive = clopper_pearson(rate.failures, rate.trials)
    assert hi - lo == pytest.approx(naive[1] - naive[0], rel=0.2)


def test_unequal_clusters_fall_back_to_kishs_worst_case():
    # no failures: the correlation cannot be estimated, so the worst case is used; with one
    # big cluster, 19 singletons and 200 trials in one cluster are worth
    # 219^2 / (19 + 200^2) = 1.2 trials, not 20 clusters
    sizes = np.r_[np.ones(19), 200.0]
    rate = ClusteredRate.from_clusters(np.zeros(20), sizes)
    assert rate.n_eff == pytest.approx(219**2 / (19 + 200**2))
    assert rate.interval()[1] > 0.9
    # with failures, the estimate never goes below that floor nor above the trials
    rate = ClusteredRate.from_clusters(np.r_[np.zeros(19), 200.0], sizes)
    assert 219**2 / (19 + 200**2) <= rate.n_eff <= 219


def test_no_failures_gives_the_worst_case_effective_size():
    rate = ClusteredRate.from_clusters(np.zeros(10), np.full(10, 50))
    assert rate.rate == 0 and rate.n_eff == 10
    assert rate.interval() == pytest.approx(clopper_pearson(0, 10))


@pytest.mark.parametrize(("failures", "bound"), [(3, 0.01), (30, 0.05), (0, 0.2), (90, 0.3)])
def test_p_value_is_dual_to_the_interval(failures, bound):
    indicators = np.r_[np.ones(failures), np.zeros(100 - failures)]
    rate = ClusteredRate.from_clusters(indicators, np.ones(100))
    lo, hi = rate.interval()
    assert (rate.p_value(bound) < 0.05) == (not lo <= bound <= hi)
    exact = binomtest(failures, 100, bound).pvalue
    assert rate.p_value(bound) >= exact - 1e-12  # doubled tail: at least the exact two-sided


@pytest.mark.parametrize("k", [8, 32, 128, 512])
@pytest.mark.parametrize("eps", [0.1, 0.3, 0.5, 0.9])
def test_jl_constants_hold_exactly_for_gaussian_matrices(k, eps):
    # k ||Rx||^2 / ||x||^2 ~ chi2_k: the lemma's exp(-gap k / 4) bounds both the squared-norm
    # event (Arriaga-Vempala) and the smaller norm event (the paper's wording)
    squared = jl_exact_failure(eps, k, squared=True)
    norms = jl_exact_failure(eps, k, squared=False)
    assert norms <= squared <= jl_norm_failure_bound(eps, k)
    assert squared == pytest.approx(chi2.sf(k * (1 + eps), k))


def test_jl_lemma_rates_match_the_exact_probabilities_on_seeded_draws():
    gen = torch.Generator().manual_seed(0)
    eps, k, trials = [0.3, 0.5], 48, 3000
    fails = jl_failures(64, k, eps, trials, gen)
    for i, e in enumerate(eps):
        for statement, squared in (("jl-norm", False), ("jl-norm2", True)):
            rate = ClusteredRate.from_clusters(fails[statement][:, i], np.ones(trials))
            lo, hi = rate.interval(0.999)
            assert lo <= jl_exact_failure(e, k, squared) <= hi
            assert hi < jl_norm_failure_bound(e, k)
        inner = clopper_pearson(int(fails["jl-inner"][:, i].sum()), trials)
        assert inner[1] < jl_inner_failure_bound(e, k)


@pytest.mark.parametrize("statement", ["jl-consistent", "jl-norm", "jl-norm2", "jl-inner"])
def test_k_for_failure_reaches_the_target_level(statement):
    n, eps, target = 512, 0.5, 0.05
    k = k_for_failure(statement, n, eps, target)
    factor = {"jl-consistent": 2 * n, "jl-inner": 2}.get(statement, 1)
    assert factor * math.exp(-0.125 * k / 4) == pytest.approx(target)
    assert k_for_failure("paper", n, eps, target) is None


def test_theorem1_statements_on_synthetic_attention():
    gen = torch.Generator().manual_seed(1)
    p, v = synthetic_attention(64, 4, 1.0, 6, gen)
    assert (p.sum(-1) - 1).abs().max() < 1e-12
    svd = torch.linalg.svd(p)
    kinds = ("values", "top-singular", "rows", "bottom-singular")
    vectors = probe_vectors(p, v, svd[2], kinds, gen)
    assert vectors["top-singular"].shape == (6, 64, 4)
    # aligned with P, ||Pw|| is large; against it (bottom singular vectors), it is s_min
    for i in range(6):
        s = svd[1][i]
        torch.testing.assert_close((p[i] @ vectors["top-singular"][i]).norm(dim=0), s[:4])
        torch.testing.assert_close((p[i] @ vectors["bottom-singular"][i]).norm(dim=0), s[-4:])
    torch.testing.assert_close(vectors["rows"][:, :, 0], p[:, 0, :])
    low = theorem1_failures(p, vectors, 4, [0.5], torch.Generator().manual_seed(2), svd)
    high = theorem1_failures(p, vectors, 64, [0.5], torch.Generator().manual_seed(2), svd)
    for counts in low.values():
        assert counts.shape == (6, 1) and ((counts >= 0) & (counts <= 4)).all()
    # the witness at k = n is P itself: it never fails
    assert high[("witness", "values")].sum() == 0
    # P_2 loses the top singular vectors beyond the second exactly: 2 of 4 fail everywhere
    two = theorem1_failures(p, vectors, 2, [0.5], torch.Generator().manual_seed(2), svd)
    assert (two[("witness", "top-singular")] == 2).all()
    # ||P||_F ||w|| >= ||Pw||: the JL-consistent statement never fails where the paper's holds
    # and every row within eps ||p_i|| ||w|| implies it: it fails no more than jl-rows
    for kind in vectors:
        assert (low[("jl-consistent", kind)] <= low[("paper", kind)]).all()
        assert (low[("jl-consistent", kind)] <= low[("jl-rows", kind)]).all()
        assert (high[("jl-consistent", kind)] <= low[("jl-consistent", kind)].sum()).all()


def test_smallest_k_point_and_certified():
    rows = [_row("paper", 100, 1000, None), _row("paper", 30, 1000, None)]
    rows.append(_row("paper", 0, 200, None))
    for r, k in zip(rows, (8, 16, 32), strict=True):
        r.k = k
    # 30 of 1000: upper 95% end 0.0425; 0 of 200: upper end 0.0183
    assert rows[1].interval[1] == pytest.approx(clopper_pearson(30, 1000)[1])
    assert 0.04 < rows[1].interval[1] < 0.05
    assert smallest_k(rows, certified=False, target=0.05) == 16
    assert smallest_k(rows, certified=True, target=0.05) == 16
    assert smallest_k(rows, certified=False, target=0.04) == 16
    assert smallest_k(rows, certified=True, target=0.04) == 32
    assert smallest_k(rows, certified=True, target=0.01) is None


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
        "--inverse-temperatures",
        "0.1,8",
        "--synthetic-count",
        "3",
        "--jl-trials",
        "200",
        "--delta",
        "0.5",
        "--out",
        str(out),
        "--plot",
    ]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader((out / "verify.csv").open()))
    series = {r["series"] for r in rows}
    statements = ("paper", "jl-rows", "jl-consistent", "witness")
    real = {f"{s} | real | {v}" for s in statements for v in VECTORS}
    synthetic = {
        f"{s} | synthetic beta={b} | values"
        for s in ("paper", "jl-rows", "jl-consistent")
        for b in ("0.1", "8")
    }
    jl = {f"{s} | random | -" for s in ("jl-norm", "jl-norm2", "jl-inner")}
    assert series == real | synthetic | jl | {"theorem2 | real | -"}
    assert len(rows) == len(series) * 2 * 2
    one = next(
        r
        for r in rows
        if r["series"] == "jl-consistent | real | values" and r["k"] == "8" and r["eps"] == "0.5"
    )
    assert int(one["trials"]) == 3 * 4 * 8  # layers x heads x head dimension
    assert int(one["clusters"]) == 3 * 4  # one draw of R per matrix
    assert float(one["bound"]) == pytest.approx(theorem1_failure_bound(SEQ_LEN, 8, 0.5))
    # verdicts only where a proof gives a bound
    verdicts = {r["statement"]: set() for r in rows}
    for r in rows:
        verdicts[r["statement"]].add(r["verdict"])
    for statement in ("paper", "witness", "theorem2"):
        assert verdicts[statement] == {"n/a"}
    assert verdicts["jl-norm2"] <= {"holds", "inconclusive", "vacuous", "violated"}
    needed = json.loads((out / "verify.json").read_text())["k_needed"]
    assert {r["series"] for r in needed} == series
    assert all(r["theory_k_at_target"] is None for r in needed if r["statement"] == "paper")
    meta = json.loads((out / "run.json").read_text())
    assert meta["delta"] == 0.5 and meta["format_version"] == 2
    assert "Holm" in meta["multiplicity"] and "Korn-Graubard" in meta["intervals"]
    assert "k needed for a failure rate below 0.05" in res.output
    assert "no proof covers it" in res.output
    arrays = np.load(out / "verify.npz")
    assert arrays["rate"].shape == (len(series), 2, 2)
    png = out / "figures" / "failure_vs_k.png"
    assert png.stat().st_size > 10_000


def test_deprecated_temperatures_still_work_with_a_warning(roberta_dir, tmp_path):
    args = ["verify", "--model", str(roberta_dir), "--seq-len", str(SEQ_LEN)]
    args += ["--num-sequences", "1", "--eps", "0.5", "--k", "8", "--temperatures", "2"]
    args += ["--synthetic-count", "1", "--jl-trials", "10", "--no-theorem2"]
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "v")])
    assert res.exit_code == 0, res.output
    assert "--temperatures is deprecated" in res.output
    meta = json.loads((tmp_path / "v" / "run.json").read_text())
    assert meta["inverse_temperatures"] == [2.0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--eps", "1.5"], "must be a finite number in (0, 1)"),
        (["--eps", "nan"], "must be a finite number in (0, 1)"),
        (["--k", "0"], "outside 1..n"),
        (["--delta", "nan"], "--delta nan must be"),
        (["--delta", "0"], "--delta 0.0 must be"),
        (["--delta", "-inf"], "--delta -inf must be"),
        (["--inverse-temperatures", "inf"], "--inverse-temperatures inf"),
        (["--inverse-temperatures", "-1"], "--inverse-temperatures -1.0"),
        (["--target", "nan"], "--target nan"),
        (["--verify-seed", "-1"], "-1"),
    ],
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
            "--k",
            "8",
            *args,
            "--out",
            str(tmp_path / "v"),
        ],
    )
    assert res.exit_code == 2 and message in res.output, res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "v").exists()
