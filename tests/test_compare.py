"""lowrank compare: known answers per family, invariants, Q/K parity with the model, the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lowrank.cli import main
from lowrank.families.compare.collect import CompareCollector, CompareSpec
from lowrank.families.compare.kernels import (
    favor_kernel,
    iterative_pinv,
    nystrom_attention,
    orthogonal_features,
    performer_attention,
    scatterbrain_attention,
    uniform_attention,
)
from lowrank.families.compare.methods import (
    CAUSAL_OK,
    FAMILIES,
    budget_cost,
    causal_mask,
    global_keys,
    left_singular,
    linformer_projector,
    local_global_attention,
    local_global_mask,
    lowrank_oracle,
    lsh_attention,
    lsh_buckets,
    lsh_keys,
    lsh_mask,
    lsh_parameters,
    lsh_rotations,
    masked_softmax,
    rebuild_probs,
    restrict,
    sorted_order,
    sparse_oracle,
)
from lowrank.families.compare.metrics import errors, row_entropy, sink_mass
from lowrank.families.compare.result import CompareResult
from lowrank.families.compare.workflow import winners
from lowrank.hooks.attention import capture
from lowrank.inputs.models import load_model
from lowrank.maths.stats import rank_correlation

N, D = 24, 6


def _qkv(seed: int, batch: tuple[int, ...] = (2,), n: int = N, d: int = D, spread: float = 1.5):
    gen = torch.Generator().manual_seed(seed)
    shape = (*batch, n, d)
    return tuple(torch.randn(shape, generator=gen, dtype=torch.float64) * spread for _ in "qkv")


def _probs(q, k, causal=False):
    return rebuild_probs(q, k, q.shape[-1] ** -0.5, causal=causal)


def _max_gap(a, b):
    return float((a - b).abs().max())


# --- known answers ---------------------------------------------------------------------


def test_oracles_and_a_full_window_are_exact_at_b_equals_n():
    q, k, _ = _qkv(0)
    p = _probs(q, k)
    globals_ = global_keys(torch.zeros(2, N, dtype=torch.bool), 2)
    assert _max_gap(lowrank_oracle(p, N), p) < 1e-12
    assert _max_gap(sparse_oracle(p, N), p) == 0
    assert _max_gap(sparse_oracle(p, N, renormalise=True), p) < 1e-15
    assert _max_gap(local_global_attention(q, k, D**-0.5, globals_, N), p) < 1e-15
    e = torch.randn(N, N, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert _max_gap(linformer_projector(p, e), p) < 1e-10  # E^+ E = I for a full-rank E


def test_best_rank_k_error_is_the_tail_of_the_spectrum():
    q, k, _ = _qkv(1)
    p = _probs(q, k)
    s, _ = left_singular(p)
    assert torch.allclose(s, torch.linalg.svdvals(p), atol=1e-10)
    for rank in (1, 5, 12):
        tail = torch.sqrt((s[..., rank:] ** 2).sum(-1))
        gap = torch.linalg.matrix_norm(lowrank_oracle(p, rank) - p)
        assert torch.allclose(gap, tail, atol=1e-10)


def test_lsh_with_one_bucket_is_exact():
    q, k, _ = _qkv(2)
    p = _probs(q, k)
    assert _max_gap(lsh_attention(q, k, D**-0.5, None, chunk=N // 2), p) < 1e-15


def test_nystrom_with_every_token_as_landmark_is_exact():
    q, k, _ = _qkv(3, spread=0.7)  # well-conditioned P: pinv loses nothing
    p = _probs(q, k)
    assert _max_gap(nystrom_attention(q, k, D**-0.5, N, "exact"), p) < 1e-9


def test_favor_kernel_is_unbiased_within_four_standard_errors():
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(3, 4, generator=gen, dtype=torch.float64) * 0.4
    k = torch.randn(3, 4, generator=gen, dtype=torch.float64) * 0.4
    omega = orthogonal_features(4000, 8, 4, gen)  # 4000 independent draws of 8 features
    draws = favor_kernel(q, k, omega)  # (4000, 3, 3)
    mean, sem = draws.mean(0), draws.std(0) / math.sqrt(draws.shape[0])
    assert ((mean - torch.exp(q @ k.T)).abs() <= 4 * sem).all()


def test_low_rank_wins_on_a_rank_one_p():
    gen = torch.Generator().manual_seed(5)
    row = torch.softmax(torch.randn(N, generator=gen, dtype=torch.float64), -1)
    p = row.expand(N, N).clone()  # every query attends alike: rank 1
    v = torch.randn(N, D, generator=gen, dtype=torch.float64)
    low = errors(lowrank_oracle(p, 1), p, v, p @ v)
    sparse = errors(sparse_oracle(p, 1), p, v, p @ v)
    assert low[0] < 1e-12 and sparse[0] > 0.3 and low[1] < sparse[1]


def test_sparse_wins_on_a_permutation_like_p():
    gen = torch.Generator().manual_seed(6)
    perm = torch.eye(N, dtype=torch.float64)[torch.randperm(N, generator=gen)]
    p = torch.softmax(12 * perm + 0.1 * torch.randn(N, N, generator=gen), -1)
    v = torch.randn(N, D, generator=gen, dtype=torch.float64)
    low = errors(lowrank_oracle(p, 1), p, v, p @ v)
    sparse = errors(sparse_oracle(p, 1), p, v, p @ v)
    assert sparse[0] < 1e-3 and low[0] > 0.9 and sparse[1] < low[1]


def test_uniform_baseline_is_exact_on_uniform_attention():
    p = torch.full((N, N), 1.0 / N, dtype=torch.float64)
    v = torch.randn(N, D, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    got = errors(uniform_attention(N), p, v, p @ v)
    assert torch.allclose(got, torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64))


def test_captured_query_and_key_rebuild_the_captured_probs(bert_dir):
    """Parity: softmax(Q K^T scale + mask) from the captured Q, K is the captured P, which
    is transformers' own eager P (output_attentions), padding mask included."""
    loaded = load_model(str(bert_dir))
    ids = torch.randint(1000, 2000, (2, 20), generator=torch.Generator().manual_seed(8))
    lengths = torch.tensor([20, 13])
    mask = (torch.arange(20)[None] < lengths[:, None]).long()
    calls = []
    with torch.no_grad(), capture(loaded.model, calls.append, lengths):
        loaded.model(input_ids=ids, attention_mask=mask)
    loaded.model.set_attn_implementation("eager")
    with torch.no_grad():
        reference = loaded.model(input_ids=ids, attention_mask=mask, output_attentions=True)
    for call, eager in zip(calls, reference.attentions, strict=True):
        scale = call.query.shape[-1] ** -0.5
        rebuilt = rebuild_probs(call.query, call.key, scale, mask.bool()[:, None, :])
        assert _max_gap(rebuilt, call.probs.double()) <= 1e-6
        assert _max_gap(call.probs, eager) <= 1e-6


# --- invariants ----------------------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
def test_every_attention_family_gives_rows_summing_to_one(causal):
    q, k, _ = _qkv(9)
    p = _probs(q, k, causal)
    scale = D**-0.5
    gen = torch.Generator().manual_seed(9)
    r, chunk, buckets = lsh_parameters(N, 8, 2)
    rot = lsh_rotations(1, r, D, buckets, gen)
    omega = orthogonal_features(1, 8, D, gen)
    support = lsh_mask(q, k, rot, chunk)
    globals_ = global_keys(torch.zeros(2, N, dtype=torch.bool), 2)
    tril = causal_mask(N)
    approximations = {
        "lsh": lsh_attention(q, k, scale, rot, chunk, causal),
        "local-global": local_global_attention(q, k, scale, globals_, 8, causal),
        "performer": performer_attention(q, k, scale, omega, causal),
        "scatterbrain": scatterbrain_attention(q, k, scale, support, omega, causal),
        "uniform": uniform_attention(N, causal).expand(2, N, N),
        "sparse-oracle-renorm": sparse_oracle(p, 8, renormalise=True),
    }
    for name, approx in approximations.items():
        assert torch.allclose(approx.sum(-1), torch.ones(2, N, dtype=torch.float64)), name
        if causal:
            assert name in CAUSAL_OK
            assert approx.masked_select(~tril).abs().max() == 0, name


def test_restrict_equals_the_masked_softmax_of_the_scores():
    q, k, _ = _qkv(10)
    scores = q @ k.mT * D**-0.5
    mask = torch.rand(2, N, N, generator=torch.Generator().manual_seed(10)) < 0.3
    mask |= torch.eye(N, dtype=torch.bool)
    assert (
        _max_gap(restrict(masked_softmax(scores, None), mask), masked_softmax(scores, mask)) < 1e-14
    )


def test_lsh_attends_the_neighbouring_sorted_chunks_of_each_round():
    q, k, _ = _qkv(11, batch=(3,))
    r, chunk, buckets = lsh_parameters(N, 8, 2)
    rot = lsh_rotations(3, r, D, buckets, torch.Generator().manual_seed(11))
    keys = lsh_keys(q, k, rot, chunk)
    assert keys.shape == (3, N, r * 2 * chunk)
    # brute force: chunk ids of queries and keys in their own sorted orders
    positions = torch.arange(N)

    def chunk_ids(x):
        order = sorted_order(lsh_buckets(x, rot))
        return torch.empty_like(order).scatter_(-1, order, positions.expand_as(order)) // chunk

    cq, ck = chunk_ids(q), chunk_ids(k)
    neighbour = torch.where(cq > 0, cq - 1, 1)
    brute = (
        (ck[..., None, :] == cq[..., :, None]) | (ck[..., None, :] == neighbour[..., None])
    ).any(-3)
    assert torch.equal(lsh_mask(q, k, rot, chunk), brute)
    assert (brute.sum(-1) <= 2 * chunk * r).all()


def test_local_global_attends_the_globals_and_exactly_b_keys():
    special = torch.zeros(1, N, dtype=torch.bool)
    special[0, [0, N - 1]] = True
    globals_ = global_keys(special, 3)
    assert globals_[0].nonzero().flatten().tolist() == [0, 1, N - 1]
    mask = local_global_mask(globals_, 7)
    assert (mask.sum(-1) == 7).all() and mask[..., [0, 1, N - 1]].all()
    assert mask[0, 10, 8:12].all()  # the window around query 10
    causal = local_global_mask(globals_, 7, causal=True)
    assert not causal.masked_select(~causal_mask(N)).any()


def test_scatterbrain_is_exact_on_a_full_support_and_performer_on_none():
    q, k, _ = _qkv(12)
    p = _probs(q, k)
    omega = orthogonal_features(1, 6, D, torch.Generator().manual_seed(12))
    full = torch.ones(2, N, N, dtype=torch.bool)
    assert _max_gap(scatterbrain_attention(q, k, D**-0.5, full, omega), p) < 1e-12
    none = torch.zeros_like(full)
    performer = performer_attention(q, k, D**-0.5, omega)
    assert _max_gap(scatterbrain_attention(q, k, D**-0.5, none, omega), performer) < 1e-12


def test_iterative_pinv_converges_to_the_pseudo_inverse():
    noise = torch.randn(2, N, N, generator=torch.Generator().manual_seed(13), dtype=torch.float64)
    a = torch.softmax(4 * torch.eye(N) + 0.3 * noise, -1)  # rows of attention, well conditioned
    assert _max_gap(iterative_pinv(a, 12), torch.linalg.pinv(a)) < 1e-8
    assert _max_gap(iterative_pinv(a) @ a, torch.eye(N, dtype=torch.float64)) < 1e-3  # 6 steps


def test_errors_relate_the_scale_free_error_to_the_cosine():
    q, k, v = _qkv(14)
    p = _probs(q, k)
    approx = sparse_oracle(p, 3)  # rows sum to less than 1: a scaled-down output
    got = errors(approx, p, v, p @ v)
    assert torch.allclose(got[..., 2], torch.sqrt(1 - got[..., 3] ** 2), atol=1e-7)
    assert (got[..., 2] <= got[..., 1] + 1e-12).all()
    zero = errors(torch.zeros_like(p), p, v, p @ v)
    assert torch.allclose(zero, torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64))


def test_entropy_and_sink_mass_on_hand_made_attention():
    n = 8
    uniform = torch.full((n, n), 1 / n, dtype=torch.float64)
    one_hot = torch.zeros(n, n, dtype=torch.float64)
    one_hot[:, 0] = 1
    assert math.isclose(float(row_entropy(uniform)), 1.0)
    assert float(row_entropy(one_hot)) == 0.0
    first = torch.zeros(n, dtype=torch.bool)
    first[0] = True
    assert float(sink_mass(one_hot, first)) == 1.0
    assert math.isclose(float(sink_mass(uniform, first)), 1 / n)


def test_budget_accounting_is_about_n_b():
    n, b = 512, 32
    for family in (*FAMILIES, "sparse-oracle-renorm"):
        cost = budget_cost(family, n, b)
        assert max(int(cost["stored"]), int(cost["scores"])) <= 2 * n * b + b * b, family
    assert budget_cost("local-global", n, b)["scores"] == n * b
    assert (
        budget_cost("scatterbrain", n, b, split=0.25)["parameter"] == "8 sparse keys + 24 features"
    )


def test_rank_correlation_sees_a_monotone_relation_and_not_noise():
    rng = np.random.default_rng(0)
    x = rng.random(72)
    strong = rank_correlation(x, np.exp(3 * x) + 0.01 * rng.random(72))
    assert strong["rho"] > 0.95 and strong["low"] > 0.9
    none = rank_correlation(x, rng.random(72))
    assert none["low"] < 0 < none["high"]
    assert math.isnan(rank_correlation(x[:3], x[:3])["rho"])


def test_winner_ignores_baselines_and_non_applicable_families():
    rows = ("lowrank-oracle", "lsh", "zero", "uniform")
    table = np.array([[[[0.5, np.nan]]], [[[0.4, 0.9]]], [[[0.1, 0.1]]], [[[0.1, 0.1]]]])
    assert winners(table, rows).tolist() == [[[1, 1]]]


# --- the command -----------------------------------------------------------------------


def _compare(*args):
    return CliRunner().invoke(main, ["compare", *map(str, args)])


@pytest.fixture(scope="module")
def tiny_compare(bert_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "run"
    res = _compare(
        "--model", bert_dir, "--seq-len", 32, "--num-sequences", 3, "--batch-size", 2,
        "--budget", "4,8,32", "--out", out, "--plot",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    return out, res


def test_compare_writes_a_documented_run_folder(tiny_compare):
    out, res = tiny_compare
    meta = json.loads((out / "run.json").read_text())
    assert meta["format"] == "lowrank-compare" and meta["num_sequences"] == 3
    assert meta["format_version"] == 2
    assert meta["winner_metric"] == "output_error" and meta["focus_budget"] == 8
    assert set(meta["budget_accounting"]) == set(meta["families"])
    assert meta["budget_accounting"]["lsh"]["per_budget"][0]["reads"] == "Q, K"
    low = meta["budget_accounting"]["lowrank-oracle"]["per_budget"][0]
    assert low["stored_with_indices"] == 2 * 32 * 4 and low["scores_computed"] == 32 * 32
    assert meta["findings"][1]["scatterbrain"]["split"] == [4, 4]
    assert meta["oracles_optimal_for"] == "probs_error"
    # the finding: a record naming its metrics and resampling (3 sequences, 2 layers: the
    # layers are too few to resample, and it says so)
    finding = meta["finding"]
    assert finding["budget"] == 8 and finding["metrics"] == ["output_error", "probs_error"]
    assert (
        finding["resampled"] == ["sequences"] and "layers not resampled" in finding["not_resampled"]
    )
    assert finding["sequences"] == 3 and finding["threshold_fitted_to_same_data"] is False
    versus = meta["findings"][1]["sparse_vs_lowrank"]
    assert (
        versus["probs_error"]["oracles_optimal"] and not versus["output_error"]["oracles_optimal"]
    )
    assert versus["probs_error"]["separability"]["resampling"]["resampled"] == ["sequences"]
    assert {e["quantity"] for e in meta["equal_cost"]} == {"stored", "scores"}
    assert meta["parity_tolerance"]["dtype"] == "float32"
    assert meta["parity_tolerance"]["measured"] <= meta["parity_tolerance"]["allowed"] == 1e-4
    run = CompareResult.read(out)
    fam, budgets = run.families, run.budgets
    assert budgets == [4, 8, 32] and fam[-2:] == ["zero", "uniform"]
    assert run.table("output_error").shape == (len(fam), 3, 2, 3)
    assert run.arrays["output_error_std"].shape == (len(fam), 3, 2, 3)
    assert run.arrays["entropy_mean"].shape == (2, 3)
    assert run.arrays["c_at_budget_mean"].shape == (3, 2, 3)
    assert np.allclose(run.arrays["c_at_budget_mean"][-1], 1.0)
    for exact in ("lowrank-oracle", "sparse-oracle", "local-global"):
        assert run.values(exact, 32, "probs_error").max() < 1e-6, exact
    assert np.allclose(run.values("zero", 8, "output_error"), 1.0)
    # per sequence: [S, F, K, L, H, 2] whose means are the saved means
    per_seq = run.arrays["per_sequence_error"]
    assert per_seq.shape == (3, len(fam), 3, 2, 3, 2) and per_seq.dtype == np.float64
    for j, metric in enumerate(("probs_error", "output_error")):
        assert np.allclose(per_seq[..., j].mean(0), run.table(metric), equal_nan=True)
    assert np.allclose(run.arrays["entropy_per_sequence"].mean(0), run.arrays["entropy_mean"])
    # the output floor lies below every family whose P~ has rank <= b, and is 0 once b >= d
    floor = run.arrays["output_floor"]
    assert floor.shape == (3, 2, 3) and (floor >= 0).all()
    for family in ("lowrank-oracle", "linformer", "performer", "nystrom"):
        assert (floor <= run.table("output_error")[fam.index(family)] + 1e-12).all(), family
    assert np.allclose(floor[budgets.index(32)], 0, atol=1e-12)  # b = 32 >= d = 8
    summary = run.summary()
    assert len(summary) == 6 and {"entropy", "winner", "lsh", "output_floor"} <= set(
        summary.columns
    )
    assert np.array_equal(summary["output_floor"], floor[budgets.index(8)].ravel())
    assert "Best family per head" in res.output and "Spearman" in res.output
    assert "floor: any rank-b P~" in res.output and "At equal cost" in res.output
    assert "AUC" in res.output and "Rests on one model" in res.output
    for name in ("error_vs_budget", "winners", "ratio_vs_entropy_b8", "heatmaps_b8"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 0
        assert (out / "figures" / f"{name}.pdf").read_bytes()[:4] == b"%PDF"


def test_compare_draws_do_not_depend_on_the_batching(tiny_compare, bert_dir, tmp_path):
    out, _ = tiny_compare
    res = _compare(
        "--model", bert_dir, "--seq-len", 32, "--num-sequences", 3, "--batch-size", 3,
        "--budget", "4,8,32", "--out", tmp_path / "again",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    a, b = CompareResult.read(out).arrays, CompareResult.read(tmp_path / "again").arrays
    keys = ("output_error_mean", "probs_error_std", "entropy_mean", "attended_mean")
    for key in (*keys, "per_sequence_error", "output_floor", "entropy_per_sequence"):
        assert np.allclose(a[key], b[key], atol=1e-10, equal_nan=True), key


def test_compare_marks_families_that_cannot_be_causal_as_not_applicable(gpt2_dir, tmp_path):
    res = _compare(
        "--model", gpt2_dir, "--seq-len", 32, "--num-sequences", 2, "--budget", "4,8",
        "--out", tmp_path / "gpt2",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    run = CompareResult.read(tmp_path / "gpt2")
    assert run.config["causal"] is True
    assert run.config["not_applicable"] == ["lowrank-oracle", "linformer", "nystrom"]
    table = run.table("output_error")
    for i, family in enumerate(run.families):
        assert np.isnan(table[i]).all() == (family not in CAUSAL_OK), family
    assert "n/a" in res.output
    assert "sparse_vs_lowrank" not in run.config["findings"][0]
    assert run.config["finding"]["metrics"] == [] and run.config["finding"]["resampled"] == []
    assert "no interval computed" in " ".join(res.output.split())
    assert "the low-rank oracle does not apply" in res.output
    assert run.sparse_vs_lowrank() is None


@pytest.fixture(scope="module")
def uncapturable_dir(mpnet_dir):
    """MPNet: captured by hooks, but P cannot be rebuilt from Q and K."""
    return mpnet_dir


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--budget", "4,40"], "exceeds n = 32"),
        (["--budget", "0,8"], "at least 1"),
        (["--budget", "-4"], "at least 1"),
        (["--budget", "8,4,8"], "lists 8 twice"),
        (["--budget", "4,nan"], "--budget nan must be a whole number"),
        (["--budget", "4,inf"], "--budget inf must be a whole number"),
        (["--budget", "4.5"], "--budget 4.5 must be a whole number"),
        (["--families", "lsh,flash"], "'flash' is not one of"),
        (["--scatterbrain-split", "nan"], "must be a finite number"),
        (["--scatterbrain-split", "inf"], "must be a finite number"),
        (["--scatterbrain-split", "1.5"], "in [0, 1]"),
        (["--focus-budget", "16"], "not one of --budget"),
        (["--model", "{mpnet}"], "adds terms of its own to the attention scores"),
    ],
)
def test_bad_compare_input_is_one_line_and_exit_code_2(
    args, message, bert_dir, uncapturable_dir, tmp_path
):
    model = ["--model", str(bert_dir)] if "--model" not in args else []
    budget = ["--budget", "4,8"] if "--budget" not in args else []
    args = [a.format(mpnet=uncapturable_dir) for a in args]
    res = _compare(
        *model, *budget, "--seq-len", 32, "--num-sequences", 2, *args, "--out", tmp_path / "o"
    )
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], res.output
    assert "Traceback" not in res.output
    assert not (tmp_path / "o").exists()


def test_compare_spec_checks_its_own_numbers():
    with pytest.raises(Exception, match="exceeds n"):
        CompareSpec(budgets=(64,)).check(32)


@pytest.mark.parametrize("causal", [False, True])
def test_the_sinks_fast_paths_equal_the_dense_pure_functions(causal):
    """Each family's structured metrics (no dense P~) equal errors() on the pure P~."""
    from lowrank.hooks.attention import AttentionCall

    q, k, v = (x.float() for x in _qkv(15, batch=(2, 3), n=32, d=8))
    p = _probs(q.double(), k.double(), causal).float()
    module = torch.nn.Module()
    module.is_causal = causal
    special = torch.zeros(2, 32, dtype=torch.bool)
    special[:, [0, 31]] = True
    spec = CompareSpec(budgets=(4, 8, 32), split=0.25)
    sinks = [CompareCollector(spec, 1, 3, 32, dense=dense, chunk=4) for dense in (False, True)]
    for sink in sinks:
        sink.special = special
        sink(AttentionCall(0, p, q, k, v, None, module))
    fast, dense = (s.metrics[0].mean for s in sinks)
    assert np.allclose(fast, dense, atol=1e-7, equal_nan=True)
    assert np.isnan(fast).any() == causal
    assert np.allclose(sinks[0].coverage[0].mean, sinks[1].coverage[0].mean, equal_nan=True)


def test_a_top_score_support_makes_scatterbrain_an_oracle():
    assert "scatterbrain" not in CompareSpec().oracles
    assert "scatterbrain" in CompareSpec(support="topk").oracles
    assert set(CompareSpec(families=("lsh", "sparse-oracle")).oracles) == {
        "sparse-oracle",
        "sparse-oracle-renorm",
    }
