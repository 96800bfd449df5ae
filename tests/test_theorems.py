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
    assert meta["delta"] == 0.5 and meta["format_version"] == 3
    assert "Holm" in meta["multiplicity"] and "Korn-Graubard" in meta["intervals"]
    # every Theorem 1 event on real and synthetic P, and Theorem 2's, beside both trivial P~
    trivial = {
        (b["statement"], b["source"], b["vectors"], b["baseline"]) for b in meta["baselines"]
    }
    for name in real | synthetic | {"theorem2 | real | -"}:
        statement, source, vectors = name.split(" | ")
        assert {(statement, source, vectors, b) for b in ("zero", "uniform")} <= trivial, name
    assert not any(b["source"] == "random" for b in meta["baselines"])  # no P~ in the JL rows
    assert "sequences measured" in meta["conditional_on"]
    assert "conditional on the sequences measured" in res.output
    assert "\n  zero " in res.output and "\n  uniform " in res.output
    assert all(r["trivial_meets_target"] is None for r in needed if r["statement"] == "jl-norm")
    assert "k needed for a failure rate below 0.05" in res.output
    # progress while it measures, and the memory it expects, before the first forward pass
    assert "real attention" in res.stderr and "synthetic" in res.stderr and "JL lemma" in res.stderr
    assert "at peak beyond the model" in res.stderr
    assert "no proof covers it" in res.output
    arrays = np.load(out / "verify.npz")
    assert arrays["rate"].shape == (len(series), 2, 2)
    assert arrays["baselines"].tolist() == ["zero", "uniform"]
    assert arrays["baseline_rate"].shape == (2, len(series), 2)
    names = arrays["series"].tolist()
    assert np.isnan(arrays["baseline_rate"][:, names.index("jl-norm | random | -")]).all()
    zero = arrays["baseline_rate"][0, names.index("paper | real | values")]
    assert (zero == 1).all()  # ||0 - Pw|| = ||Pw||: the paper's wording fails every time
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


# --- the trivial P~ beside every event (issue 25, item 7) ---------------------------------------


def _flat_attention(m: int = 40, n: int = 64, d: int = 4):
    """Near-uniform attention and its values: ||Pw|| is small against ||P||_F ||w||, the case
    where the zero matrix meets the Frobenius event."""
    gen = torch.Generator().manual_seed(3)
    p = torch.softmax(0.3 * torch.randn(m, n, n, generator=gen, dtype=torch.float64), -1)
    return p, torch.randn(m, n, d, generator=gen, dtype=torch.float64)


def test_a_holds_that_zero_also_meets_now_says_so():
    # the old verdict, "holds" for P R^T R on the Frobenius event, was read as evidence for
    # low rank; P~ = 0 meets the same bound on these matrices, and the verdict now says it
    from lowrank.families.verify import baselines as trivial

    p, v = _flat_attention(200)
    n, k, eps = 64, 256, [0.5]  # bound 2n exp(-gap k / 4) = 0.043
    fails = theorem1_failures(p, {"values": v}, k, eps, torch.Generator().manual_seed(1))
    rate = ClusteredRate.from_clusters(fails[("jl-consistent", "values")][:, 0], np.full(200, 4))
    row = Row("jl-consistent", "real", "values", 0.5, k, rate, theorem1_failure_bound(n, k, 0.5))
    assign_verdicts([row])
    assert row.verdict == "holds"  # what verify printed before
    counts: dict = {}
    trivial.add_theorem1(counts, "real", p, {"values": v}, eps, causal=False)
    base = trivial.baseline_rows(counts, eps, {"values": 4})
    zero = next(b for b in base if b.baseline == "zero" and b.statement == "jl-consistent")
    assert zero.rate.rate < row.bound  # the zero matrix fails less often than the bound
    assert trivial.qualify([row], base) == 1
    assert row.verdict.startswith("holds, but so does zero")
    # the paper's wording is never met by P~ = 0 (||0 - Pw|| = ||Pw||)
    paper = next(b for b in base if b.baseline == "zero" and b.statement == "paper")
    assert paper.rate.rate == 1.0


def test_trivial_records_say_where_they_meet_the_bound():
    from lowrank.families.verify import baselines as trivial

    p, v = _flat_attention(12, 32, 3)
    counts: dict = {}
    trivial.add_theorem1(counts, "real", p, {"values": v}, [0.3], causal=False)
    base = trivial.baseline_rows(counts, [0.3], {"values": 3})
    rows = []
    for k in (16, 256):
        bound = theorem1_failure_bound(32, k, 0.3)
        rows.append(Row("jl-consistent", "real", "values", 0.3, k, base[0].rate, bound))
    records = trivial.baseline_records(base, rows, target=0.05)
    zero = next(r for r in records if r["baseline"] == "zero" and r["statement"] == "jl-consistent")
    # the bound shrinks with k: a trivial P~ meets it at small k, not at large k
    bounds = {str(r.k): r.bound for r in rows}
    assert zero["below_bound"] == {k: zero["rate"] < b for k, b in bounds.items()}
    assert zero["pass_rate"] == pytest.approx(1 - zero["rate"])
    assert 0 <= zero["ci_low"] <= zero["rate"] <= zero["ci_high"] <= 1


def test_theorem2_trivial_outputs_by_hand():
    from lowrank.families.verify import baselines as trivial
    from lowrank.families.verify.theorems import theorem2_setup

    gen = torch.Generator().manual_seed(0)
    q, key, v = (torch.randn(2, 6, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    setup = theorem2_setup(q, key, v)
    counts: dict = {}
    trivial.add_theorem2(counts, setup, [0.5], causal=False)
    # zero output: fails where ||p_i V|| > eps ||p_i|| ||V||_2
    expected = (setup.exact.norm(dim=-1) > 0.5 * setup.rhs).sum(-1).numpy()
    np.testing.assert_array_equal(counts[("theorem2", "real", "-", "zero")][0][:, 0], expected)
    # uniform: the mean value row for every query
    uniform = v.mean(-2, keepdim=True).expand_as(v)
    lhs = (uniform - setup.exact).norm(dim=-1)
    expected = (lhs > 0.5 * setup.rhs).sum(-1).numpy()
    np.testing.assert_array_equal(counts[("theorem2", "real", "-", "uniform")][0][:, 0], expected)


def test_theorem2_uses_the_models_own_p_for_a_causal_model():
    from lowrank.families.verify.theorems import theorem2_setup

    gen = torch.Generator().manual_seed(1)
    q, key, v = (torch.randn(3, 5, 2, generator=gen, dtype=torch.float64) for _ in range(3))
    scores = q @ key.mT / math.sqrt(2)
    causal = torch.softmax(scores.masked_fill(torch.ones(5, 5).triu(1).bool(), -torch.inf), -1)
    setup = theorem2_setup(q, key, v, probs=causal)
    torch.testing.assert_close(setup.exact, causal @ v)  # not the unmasked softmax's PV
    assert not torch.allclose(theorem2_setup(q, key, v).exact, setup.exact)
    torch.testing.assert_close(setup.scores, scores)  # what the Linformer head projects


def test_jl_rows_stream_r_in_chunks_and_still_match_the_exact_probabilities(monkeypatch):
    from lowrank.families.verify import theorems

    monkeypatch.setattr(theorems, "JL_CHUNK_ENTRIES", 48 * 64 * 7)  # chunks of 7 trials
    fails = theorems.jl_failures(64, 48, [0.3], 3000, torch.Generator().manual_seed(0))
    assert fails["jl-norm2"].shape == (3000, 1)
    rate = ClusteredRate.from_clusters(fails["jl-norm2"][:, 0], np.ones(3000))
    lo, hi = rate.interval(0.999)
    assert lo <= jl_exact_failure(0.3, 48, squared=True) <= hi


def test_memory_estimate_names_the_batch_that_fits(monkeypatch):
    from lowrank.families.verify import memory

    need = memory.estimate(heads=12, n=512, k_max=512, synthetic_count=24, jl_trials=2000)
    assert need.peak(8) > need.peak(1)  # the forward pass grows with the batch
    free = need.peak(2) + 1
    monkeypatch.setattr(memory, "free_bytes", lambda device: free)
    assert memory.check_memory(2, 12, 512, 512, 24, 2000, torch.device("cpu")) <= free
    with pytest.raises(LowrankError, match=r"batch_size=8 needs about .* use batch_size=2 or less"):
        memory.check_memory(8, 12, 512, 512, 24, 2000, torch.device("cpu"))
    monkeypatch.setattr(memory, "free_bytes", lambda device: 1024)
    with pytest.raises(LowrankError, match="use a smaller seq_len, k or synthetic_count") as err:
        memory.check_memory(1, 12, 512, 512, 24, 2000, torch.device("cpu"))
    assert "\n" not in str(err.value)


def test_verify_counts_do_not_depend_on_the_batch_size(roberta_dir):
    from lowrank.families.verify.workflow import measure_real
    from lowrank.inputs.corpora import build_sequences, load_corpus
    from lowrank.inputs.models import load_model

    loaded = load_model(str(roberta_dir))
    ids = build_sequences(load_corpus("sample-wiki", None), loaded.tokenizer, SEQ_LEN, 3).input_ids
    one = measure_real(loaded, ids, [8], [0.5], 1, 0, 1.0, True)
    three = measure_real(loaded, ids, [8], [0.5], 3, 0, 1.0, True)

    # batches of 1 hand over (sequence, layer) in another order than batches of 3: the
    # per-matrix counts are the same multiset, each R seeded by its sequence's index
    def same(a: list[np.ndarray], b: list[np.ndarray]) -> None:
        np.testing.assert_array_equal(np.sort(np.concatenate(a), 0), np.sort(np.concatenate(b), 0))

    for key, chunks in one.t1.items():
        same(chunks, three.t1[key])
    same(one.t2[8], three.t2[8])
    for key, chunks in one.base.items():
        same(chunks, three.base[key])
    assert sum(int(np.concatenate(c).sum()) for c in one.t1.values()) > 0
