"""Projections: exact identities, JL statistics on seeded draws, parity with the model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lowrank.cli import main
from lowrank.families.project.approximation import (
    ProjectionSpec,
    linformer_override,
    measure,
    summarize,
)
from lowrank.families.project.result import ProjectionResult
from lowrank.hooks.attention import AttentionCall, capture
from lowrank.inputs.corpora import build_sequences, load_corpus
from lowrank.inputs.models import load_model
from lowrank.maths.sketches import (
    JL_METHODS,
    SHARING_DESIGN,
    ProjectionBank,
    baseline_output,
    best_rank_k,
    blocks,
    cosine_and_scale_free,
    eckart_young_error,
    estimator_factors,
    jl_matrix,
    linformer_attention,
    max_pool,
    output_floor,
    pooling_matrix,
    relative_frobenius,
    row_space_basis,
    row_space_projector,
    theorem1_errors,
)
from tests.helpers import SEQ_LEN, tiny_model_folder


def _softmax_matrix(n: int, seed: int, temperature: float = 3.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(n, n, generator=gen, dtype=torch.float64) * temperature, -1)


@pytest.mark.parametrize("k", [1, 3, 7])
def test_eckart_young_error_equals_the_tail_singular_values(k):
    p = _softmax_matrix(9, 0)
    s = torch.linalg.svdvals(p)
    err = (p - best_rank_k(p, k)).norm()
    assert err.item() == pytest.approx(torch.sqrt((s[k:] ** 2).sum()).item(), rel=1e-10)
    assert eckart_young_error(s, k).item() == pytest.approx(err.item(), rel=1e-10)
    assert torch.linalg.matrix_rank(best_rank_k(p, k)).item() == k


def test_best_rank_k_beats_every_jl_approximation_in_frobenius_norm():
    p = _softmax_matrix(32, 1)
    gen = torch.Generator().manual_seed(0)
    for method in JL_METHODS:
        r = jl_matrix(method, 8, 32, gen)
        assert (p - best_rank_k(p, 8)).norm() <= (p - p @ r.T @ r).norm()


@pytest.mark.parametrize(
    ("sharing", "count"), [("none", 288), ("headwise", 24), ("key-value", 12), ("layerwise", 1)]
)
def test_sharing_strategies_draw_the_papers_number_of_matrices(sharing, count):
    bank = ProjectionBank("gaussian", 16, 64, layers=12, heads=12, sharing=sharing)
    assert bank.distinct() == count
    es = {id(bank._base(bank._key("E", layer, h))) for layer in range(12) for h in range(12)}
    fs = {id(bank._base(bank._key("F", layer, h))) for layer in range(12) for h in range(12)}
    assert len(es | fs) == count  # really that many distinct tensors
    if sharing == "key-value":
        torch.testing.assert_close(bank.e(3, 1) * np.exp(-1.0), bank.f(3, 7) * 1.0)


def test_deterministic_projections_are_one_matrix_whatever_the_sharing():
    assert ProjectionBank("mean-pool", 16, 64, 12, 12, "none").distinct() == 1


def test_bank_draws_are_reproducible_and_seeded():
    a = ProjectionBank("rademacher", 8, 32, 2, 2, "none", seed=5)
    b = ProjectionBank("rademacher", 8, 32, 2, 2, "none", seed=5)
    c = ProjectionBank("rademacher", 8, 32, 2, 2, "none", seed=6)
    torch.testing.assert_close(a.e(1, 1), b.e(1, 1))
    assert not torch.equal(a.e(1, 1), c.e(1, 1))
    assert torch.allclose(a.f(0, 0), a._base(("F", 0, 0)) * np.exp(-1.0))


@pytest.mark.parametrize("method", JL_METHODS)
def test_jl_families_have_identity_expectation(method):
    n, k = 24, 6
    gen = torch.Generator().manual_seed(0)

    def distance(draws: int) -> float:
        acc = torch.zeros(n, n, dtype=torch.float64)
        for _ in range(draws):
            r = jl_matrix(method, k, n, gen)
            acc += r.T @ r
        return (acc / draws - torch.eye(n, dtype=torch.float64)).abs().max().item()

    few, many = distance(20), distance(2000)
    assert many < few
    assert many < 0.25


def test_gaussian_theorem1_error_shrinks_like_one_over_sqrt_k():
    n = 256
    p = _softmax_matrix(n, 2, temperature=2.0)
    w = torch.randn(n, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    gen = torch.Generator().manual_seed(3)
    ks = [16, 32, 64, 128]
    errors = []
    for k in ks:
        draws = [
            theorem1_errors(p, w, p @ (r.T @ r)).mean().item()
            for r in (jl_matrix("gaussian", k, n, gen) for _ in range(40))
        ]
        errors.append(np.mean(draws))
    slope = np.polyfit(np.log(ks), np.log(errors), 1)[0]
    assert -0.65 < slope < -0.35, (slope, errors)


def test_pooling_matrices_average_blocks_and_project():
    e = pooling_matrix("mean-pool", 4, 10)
    assert torch.allclose(e.sum(1), torch.ones(4, dtype=torch.float64))
    assert blocks(10, 4) == [(0, 2), (2, 5), (5, 8), (8, 10)]
    proj = row_space_projector(e)
    x = torch.arange(10, dtype=torch.float64)
    assert torch.allclose(
        proj @ x, torch.tensor([0.5, 0.5, 3, 3, 3, 6, 6, 6, 8.5, 8.5], dtype=torch.float64)
    )
    conv = pooling_matrix("conv", 4, 10)
    assert torch.allclose(conv.sum(1), torch.ones(4, dtype=torch.float64))
    assert (conv[1] > 0).sum() == 5  # a hat of half-width 3 around position 3
    pooled = max_pool(torch.arange(10.0)[:, None], 4)
    assert pooled.flatten().tolist() == [1.0, 4.0, 7.0, 9.0]


def test_linformer_exact_branch_with_identity_is_exact_attention():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 10, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    eye = torch.eye(10, dtype=torch.float64)
    exact = torch.softmax(q @ k.transpose(-1, -2) / 2.0, -1) @ v
    torch.testing.assert_close(linformer_attention(q, k, v, eye, eye, 0.5), exact)
    mask = torch.ones(2, 1, 10)
    mask[:, :, 7:] = 0
    masked = linformer_attention(q, k, v, eye, eye, 0.5, key_mask=mask)
    # padded keys are zeroed, so they can't carry values into the output
    assert not torch.allclose(masked, exact)


def test_theorem2_exact_branch_reproduces_the_models_head_output(roberta_dir):
    loaded = load_model(str(roberta_dir))
    ids = torch.from_numpy(
        build_sequences(load_corpus("sample-wiki", None), loaded.tokenizer, SEQ_LEN, 2).input_ids
    )
    outputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def sink(call: AttentionCall) -> None:
        eye = torch.eye(SEQ_LEN)
        mine = linformer_attention(
            call.query, call.key, call.value, eye, eye, call.query.shape[-1] ** -0.5
        )
        outputs.append((mine, call.probs @ call.value))

    with torch.no_grad():
        with capture(loaded.model, sink):
            exact_states = loaded.model(input_ids=ids).last_hidden_state
        for mine, model_head in outputs:
            torch.testing.assert_close(mine, model_head, atol=1e-5, rtol=1e-5)
        identity = ProjectionBank("mean-pool", SEQ_LEN, SEQ_LEN, 3, 4)  # k = n blocks of one
        with capture(loaded.model, None, override=linformer_override(identity)):
            projected = loaded.model(input_ids=ids).last_hidden_state
    torch.testing.assert_close(projected, exact_states, atol=1e-5, rtol=1e-5)


def test_measure_shapes_and_summary(roberta_dir):
    loaded = load_model(str(roberta_dir))
    seqs = build_sequences(load_corpus("sample-wiki", None), loaded.tokenizer, SEQ_LEN, 3)
    spec = ProjectionSpec(("gaussian", "max-pool", "svd"), (4, SEQ_LEN), draws=2)
    arrays = measure(loaded, seqs, spec, 2, torch.device("cpu"))
    assert spec.rows("theorem1") == [
        "gaussian[paper]",
        "gaussian[projector]",
        "svd",
        "zero",
        "uniform",
    ]
    assert spec.rows("theorem2") == [
        "gaussian",
        "max-pool",
        "svd",
        "output-floor",
        "zero",
        "uniform",
    ]
    assert arrays["theorem1_gaussian[paper]"].shape == (2, 3, 4, 3 * 2)
    assert arrays["theorem2_svd"].shape == (2, 3, 4, 3)
    assert "theorem1_max-pool" not in arrays  # no linear form: no Theorem 1 row
    # k = n: the best rank-n approximation is P itself
    assert np.nanmax(arrays["theorem2_svd"][1]) < 1e-4
    stats = summarize(arrays["theorem2_gaussian"].astype(np.float64))
    assert (stats["median"] <= stats["p95"] + 1e-12).all()
    # more dimensions help the random projection on average
    assert stats["mean"][1].mean() < stats["mean"][0].mean()


def test_project_command_end_to_end_with_masked_lm_head(tmp_path):
    from transformers import RobertaConfig, RobertaForMaskedLM

    folder = tiny_model_folder(
        tmp_path / "tiny-mlm", RobertaForMaskedLM, RobertaConfig, seed=0,
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=SEQ_LEN + 2, pad_token_id=0,
    )  # fmt: skip
    out = tmp_path / "proj"
    args = [
        "project",
        "--model",
        str(folder),
        "--seq-len",
        str(SEQ_LEN),
        "--num-sequences",
        "3",
        "--k",
        "8,16",
        "--method",
        "gaussian,mean-pool,svd",
        "--draws",
        "2",
        "--sharing",
        "headwise,layerwise",
        "--out",
        str(out),
        "--plot",
    ]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    run = ProjectionResult.read(out)
    assert run.methods == ["gaussian", "mean-pool", "svd"]
    assert run.ks.tolist() == [8, 16]
    assert run.rows("theorem2") == [
        "gaussian",
        "mean-pool",
        "svd",
        "output-floor",
        "zero",
        "uniform",
    ]
    np.testing.assert_allclose(
        run.stat("theorem2", "gaussian", "mean"),
        run.arrays["theorem2_gaussian_samples"].astype(np.float64).mean(-1),
    )
    np.testing.assert_allclose(
        run.stat("theorem1", "mean-pool[projector]", "median", "cosine"),
        np.median(run.arrays["theorem1_mean-pool[projector]_cosine_samples"], axis=-1),
        rtol=1e-6,
    )
    assert "theorem2_output-floor_mean" in run.arrays
    effect = run.config["model_effect"]
    assert effect["mode"].startswith("masked-LM")
    kinds = {(r["method"], r["sharing"]) for r in effect["results"]}
    assert kinds == {
        ("zero", "n/a"),
        ("uniform", "n/a"),
        ("gaussian", "headwise"),
        ("gaussian", "layerwise"),
        ("mean-pool", "n/a"),
    }
    assert all(r["mlm_loss"] is not None and r["mlm_loss_exact"] > 0 for r in effect["results"])
    for r in effect["results"]:
        assert len(r["per_sequence"]["cosine"]) == 3
        assert r["verdict"] in ("baseline", "beats both", "loses", "inconclusive")
        lo, hi = r["cosine_ci"]
        assert lo <= r["cosine"] <= hi
    meta = json.loads((out / "run.json").read_text())
    assert meta["format"] == "lowrank-projection" and meta["format_version"] == 3
    tests = meta["baseline_tests"]
    # every method row x metric (raw, scale-free) x baseline x k, Holm-adjusted upwards
    assert len(tests) == (5 + 3) * 2 * 2 * 2  # 5 Theorem 1 rows, 3 Theorem 2 rows
    assert all(t["p_holm"] >= t["p"] for t in tests)
    assert "paired over sequences" in res.output and "uniform" in res.output
    assert (out / "figures" / "error_vs_k.png").stat().st_size > 20_000


@pytest.mark.parametrize("ks", ["0", "49", "8,-1"])
def test_bad_k_is_one_line_exit_2(roberta_dir, tmp_path, ks):
    res = CliRunner().invoke(
        main,
        [
            "project",
            "--model",
            str(roberta_dir),
            "--seq-len",
            str(SEQ_LEN),
            "--k",
            ks,
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert res.exit_code == 2
    assert "outside 1..n" in res.output
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("sharing", "count", "level", "same_r"),
    [
        ("none-same-R", 144, "head", True),
        ("layerwise-separate", 2, "model", False),
        ("none", 288, "head", False),
        ("key-value", 12, "layer", True),
    ],
)
def test_sharing_grid_separates_level_from_drawing_e_and_f_from_one_r(
    sharing, count, level, same_r
):
    bank = ProjectionBank("gaussian", 16, 64, layers=12, heads=12, sharing=sharing)
    assert bank.distinct() == count
    assert SHARING_DESIGN[sharing] == (level, same_r)
    same = torch.allclose(bank.e(2, 3) * np.exp(-1.0), bank.f(2, 3))
    assert same == same_r


def test_output_floor_is_eckart_young_on_pv_and_zero_once_k_reaches_d():
    gen = torch.Generator().manual_seed(0)
    pv = torch.randn(3, 40, 8, generator=gen, dtype=torch.float64)
    s = torch.linalg.svdvals(pv)
    for k in (1, 3, 7):
        expected = torch.sqrt((s[:, k:] ** 2).sum(-1)) / s.norm(dim=-1)
        torch.testing.assert_close(output_floor(pv, k), expected)
        best = best_rank_k(pv, k)
        torch.testing.assert_close(output_floor(pv, k), relative_frobenius(best, pv))
    for k in (8, 9, 40):
        assert output_floor(pv, k).abs().max() < 1e-12


def test_output_floor_bounds_every_rank_k_output():
    n, d, k = 32, 6, 3
    p = _softmax_matrix(n, 4)
    v = torch.randn(n, d, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    floor = output_floor(p @ v, k).item()
    gen = torch.Generator().manual_seed(6)
    for estimator in ("paper", "projector"):
        left, right = estimator_factors("gaussian", k, n, estimator, gen)
        assert relative_frobenius(p @ left @ (right @ v), p @ v).item() >= floor - 1e-12
    assert relative_frobenius(best_rank_k(p, k) @ v, p @ v).item() >= floor - 1e-12


def test_projector_estimator_is_exact_on_a_p_in_the_row_space_of_e():
    n, k = 30, 5
    left, right = estimator_factors("gaussian", k, n, "projector", torch.Generator().manual_seed(1))
    r = jl_matrix("gaussian", k, n, torch.Generator().manual_seed(1))  # the same draw of R
    torch.testing.assert_close(left @ right, torch.linalg.pinv(r) @ r)  # E^+ E, via QR
    a = torch.rand(n, k, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    p = a @ r  # rank k, rows in the row space of R
    torch.testing.assert_close(p @ left @ right, p)
    paper_left, paper_right = estimator_factors(
        "gaussian", k, n, "paper", torch.Generator().manual_seed(1)
    )
    torch.testing.assert_close(paper_left @ paper_right, r.T @ r)
    assert relative_frobenius(p @ paper_left @ paper_right, p).item() > 0.5  # not a projector


def test_mean_pool_estimators_on_a_block_constant_p():
    n, k = 12, 4  # blocks of 3
    p = torch.rand(n, k, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    p = p.repeat_interleave(3, dim=1) / 3  # each row constant on the blocks
    gen = torch.Generator()
    left, right = estimator_factors("mean-pool", k, n, "projector", gen)
    torch.testing.assert_close(p @ left @ right, p)
    # the paper's Gram form, scaled to tr = n like E[R^T R] = I, is n/k times the projector
    paper_left, paper_right = estimator_factors("mean-pool", k, n, "paper", gen)
    torch.testing.assert_close(paper_left @ paper_right, (n / k) * (left @ right))
    assert torch.trace(paper_left @ paper_right).item() == pytest.approx(n)


def test_conv_is_a_different_operator_that_keeps_linear_sequences():
    n, k = 20, 5
    conv = pooling_matrix("conv", k, n)
    assert torch.allclose(conv.sum(1), torch.ones(k, dtype=torch.float64))
    assert (conv >= 0).all()
    projector = row_space_projector(conv)
    line = 3.0 + 0.7 * torch.arange(n, dtype=torch.float64)
    torch.testing.assert_close(projector @ line, line)  # piecewise linear: lines are kept
    mean_projector = row_space_projector(pooling_matrix("mean-pool", k, n))
    assert (projector - mean_projector).norm().item() > 0.5
    assert (mean_projector @ line - line).norm().item() > 1.0  # blocks flatten a line
    torch.testing.assert_close(
        row_space_projector(pooling_matrix("conv", n, n)), torch.eye(n, dtype=torch.float64)
    )


def test_trivial_baselines_by_hand():
    n, d = 10, 3
    v = torch.randn(2, n, d, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    uniform_p = torch.full((n, n), 1.0 / n, dtype=torch.float64)
    exact = uniform_p @ v
    out = baseline_output("uniform", v)
    assert relative_frobenius(out, exact).max().item() < 1e-14  # uniform on uniform P: 0
    causal_p = torch.tril(torch.ones(n, n, dtype=torch.float64))
    causal_p /= causal_p.sum(-1, keepdim=True)
    torch.testing.assert_close(baseline_output("uniform", v, causal=True), causal_p @ v)
    zero = baseline_output("zero", v)
    assert relative_frobenius(zero, exact).tolist() == [1.0, 1.0]
    cos, free = cosine_and_scale_free(zero, exact, (-2, -1))
    assert cos.tolist() == [0.0, 0.0] and free.tolist() == [1.0, 1.0]


def test_scale_free_error_is_the_error_after_the_best_rescale():
    gen = torch.Generator().manual_seed(4)
    a, b = (torch.randn(5, 7, generator=gen, dtype=torch.float64) for _ in range(2))
    cos, free = cosine_and_scale_free(a, b, (-2, -1))
    alphas = torch.linspace(-3, 3, 60001, dtype=torch.float64)
    brute = min((al * a - b).norm().item() for al in alphas) / b.norm().item()
    assert free.item() == pytest.approx(brute, abs=1e-6)
    assert free.item() == pytest.approx(math.sqrt(1 - cos.item() ** 2))
    cos, free = cosine_and_scale_free(-2.5 * b, b, (-2, -1))
    assert cos.item() == pytest.approx(-1.0) and free.item() == pytest.approx(0.0, abs=1e-7)


def test_sequence_clusters_group_the_draws_of_one_sequence():
    from lowrank.families.project.workflow import sequence_clusters

    # (K, L, H, S) with S = sequences x draws, sequence-major as the sink lays it out
    n_seq, draws = 3, 2
    values = np.array([10.0, 11.0, 20.0, 21.0, 30.0, 31.0])
    samples = np.broadcast_to(values, (2, 1, 4, n_seq * draws))
    np.testing.assert_allclose(sequence_clusters(samples, n_seq), [[10.5, 20.5, 30.5]] * 2)


def test_sink_metrics_known_answers(roberta_dir):
    loaded = load_model(str(roberta_dir))
    seqs = build_sequences(load_corpus("sample-wiki", None), loaded.tokenizer, SEQ_LEN, 2)
    spec = ProjectionSpec(("gaussian", "mean-pool"), (4, SEQ_LEN), draws=2)
    arrays = measure(loaded, seqs, spec, 2, torch.device("cpu"))
    # k = n: R^+ R = I and blocks of one are the identity, so the projector is exact
    for row in ("gaussian[projector]", "mean-pool[projector]", "mean-pool[paper]"):
        assert np.nanmax(arrays[f"theorem1_{row}"][1]) < 1e-4, row
        assert np.nanmin(arrays[f"theorem1_{row}_cosine"][1]) > 1 - 1e-6
    # ... while R^T R at k = n is still a random matrix
    assert np.nanmean(arrays["theorem1_gaussian[paper]"][1]) > 0.1
    # the output floor is 0 once k >= d (d = 8 here) and below every Theorem 2 row
    assert np.nanmax(arrays["theorem2_output-floor"][1]) < 1e-5
    for row in ("gaussian", "mean-pool", "zero", "uniform"):
        per_draw = arrays[f"theorem2_{row}"].reshape(2, 3, 4, 2, -1)  # sequence-major draws
        assert (per_draw >= arrays["theorem2_output-floor"][..., None] - 1e-6).all()
    assert np.allclose(arrays["theorem2_zero"], 1.0) and np.allclose(arrays["theorem1_zero"], 1.0)
    # scale-free error and cosine agree: free = sqrt(1 - cos^2)
    free, cos = arrays["theorem2_gaussian_scale-free"], arrays["theorem2_gaussian_cosine"]
    np.testing.assert_allclose(free, np.sqrt(1 - cos.astype(np.float64) ** 2), atol=1e-5)
    assert arrays["theorem1_gaussian[paper]"].shape == (2, 3, 4, 2 * 2)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--delta", "nan"], "--delta nan must be a finite number > 0"),
        (["--delta", "inf"], "--delta inf must be a finite number > 0"),
        (["--delta", "0"], "--delta 0.0 must be a finite number > 0"),
        (["--delta", "-1"], "--delta -1.0 must be a finite number > 0"),
        (["--estimator", "paper,bogus"], "bogus"),
        (["--sharing", "everything"], "everything"),
        (["--proj-seed", "-1"], "-1"),
    ],
)
def test_project_bad_options_are_one_line_exit_2(roberta_dir, tmp_path, args, message):
    base = ["project", "--model", str(roberta_dir), "--seq-len", str(SEQ_LEN), "--k", "8"]
    res = CliRunner().invoke(main, [*base, *args, "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o").exists()


def test_project_draws_do_not_depend_on_the_batch_size(roberta_dir):
    # one R per sequence, seeded by its index in the run: batches of 1 and of 3 agree, and
    # two sequences of one batch do not share a draw
    loaded = load_model(str(roberta_dir))
    seqs = build_sequences(load_corpus("sample-wiki", None), loaded.tokenizer, SEQ_LEN, 3)
    spec = ProjectionSpec(("gaussian",), (8,), draws=2)
    one = measure(loaded, seqs, spec, 1, torch.device("cpu"))
    three = measure(loaded, seqs, spec, 3, torch.device("cpu"))
    for key in ("theorem1_gaussian[paper]", "theorem2_gaussian_cosine"):
        np.testing.assert_allclose(one[key], three[key], rtol=2e-5, atol=1e-6)
    dup = seqs.input_ids.copy()
    dup[1] = dup[0]
    twin = type(seqs)(**{**vars(seqs), "input_ids": dup})
    both = measure(loaded, twin, spec, 2, torch.device("cpu"))["theorem1_gaussian[paper]"]
    assert not np.allclose(both[..., 0:2], both[..., 2:4])  # same text, different R


def test_row_space_basis_of_a_matrix_with_a_zero_row():
    e = torch.randn(4, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    e[2] = 0  # a very sparse JL draw can do this
    q = row_space_basis(e)
    assert q.shape == (10, 3)
    torch.testing.assert_close(q @ q.T, torch.linalg.pinv(e) @ e)


def test_projector_of_a_rank_deficient_sparse_draw_has_k_columns_and_is_a_projector():
    import torch

    from lowrank.core.random import seeded_generator
    from lowrank.maths.sketches import estimator_factors, jl_matrix

    n, k = 64, 32
    seed = next(
        s
        for s in range(200)
        if torch.linalg.matrix_rank(jl_matrix("very-sparse", k, n, seeded_generator(s))) < k
    )  # a draw with zero rows, as the adversary's run met
    a, b = estimator_factors("very-sparse", k, n, "projector", seeded_generator(seed))
    assert a.shape == (n, k) and b.shape == (k, n)
    proj = a @ b
    assert torch.allclose(proj @ proj, proj, atol=1e-10)  # idempotent
    e = jl_matrix("very-sparse", k, n, seeded_generator(seed))
    assert torch.allclose(e @ proj, e, atol=1e-10)  # fixes the row space of E


# --- intervals inside the range, valid at small N (issue 25, "everywhere") ----------------------


def test_intervals_stay_inside_the_range_where_the_t_interval_left_it():
    from lowrank.families.project.workflow import cluster_interval
    from lowrank.maths.stats import t_interval

    # the cases: two sequences gave a cosine interval up to 1.026 and a relative
    # error interval of [-1.56, 4.81]; the old t-interval left the range
    two_cos, two_err = np.array([0.90, 0.99]), np.array([0.5, 2.75])
    assert t_interval(two_cos)[1] > 1 and t_interval(two_err)[0] < 0
    for values, metric in ((two_cos, "cosine"), (two_err, "error")):
        iv = cluster_interval(values, metric)
        assert np.isnan(iv.low) and "too few sequences" in iv.note
        assert iv.mean == pytest.approx(values.mean())
    # three sequences near a bound: an interval, asymmetric, inside the range
    cos = cluster_interval(np.array([0.97, 0.99, 0.995]), "cosine")
    assert t_interval(np.array([0.97, 0.99, 0.995]))[1] > 1
    assert -1 <= cos.low < cos.mean < cos.high <= 1
    assert cos.high - cos.mean < cos.mean - cos.low  # squeezed against 1
    err = cluster_interval(np.array([0.01, 0.2, 0.05]), "error")
    assert 0 <= err.low < err.mean < err.high
    free = cluster_interval(np.array([0.999, 1.0000001, 0.998]), "scale-free")  # float32
    assert free.high <= 1.0
    # a row that does not apply (NaN) to some sequences: those are left out
    assert cluster_interval(np.array([np.nan, 0.2, 0.3, 0.25]), "error").n == 3


def test_project_report_at_two_sequences_prints_no_interval(roberta_dir):
    from lowrank import api

    res = api.project(
        str(roberta_dir),
        seq_len=SEQ_LEN,
        num_sequences=2,
        k=8,
        method="gaussian",
        model_effect=True,
        sharing="headwise",
        draws=1,
        progress=False,
    )
    text = res.report()
    assert "+-" not in text and "too few sequences for an interval" in text
    assert "N = 2: too few sequences for an interval" in text
    for e in res.config["model_effect"]["results"]:
        assert e["cosine_ci"] == [None, None] and e["relative_error_ci"] == [None, None]
    assert all(t["ci"] == [None, None] for t in res.config["baseline_tests"])
    assert res.effects()["cosine_ci_low"].isna().all()


def test_default_k_grid_follows_n(roberta_dir, caplog, tmp_path):
    import logging

    from lowrank import api
    from lowrank.families.project.options import k_grid

    assert k_grid(None, 128) == [32, 64]  # k = n is not a projection: left out
    assert k_grid(None, 512) == [32, 64, 128, 256]
    assert k_grid(None, 20) == [2, 4, 8, 16]  # no grid value fits: powers of two below n
    assert k_grid((8, 16), 20) == [8, 16]  # given: as given
    with caplog.at_level(logging.INFO, logger="lowrank"):
        res = api.project(
            str(roberta_dir),
            seq_len=SEQ_LEN,
            num_sequences=1,
            method="mean-pool",
            model_effect=False,
            progress=False,
        )
    assert res.ks.tolist() == [32]
    assert "k: the default grid below n = 48: 32" in [r.getMessage() for r in caplog.records]
    res = CliRunner().invoke(
        main,
        [
            "project",
            "--model",
            str(roberta_dir),
            "--seq-len",
            "48",
            "--num-sequences",
            "1",
            "--method",
            "mean-pool",
            "--no-model-effect",
            "--out",
            str(tmp_path / "p"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "p" / "run.json").read_text())["projection"]["ks"] == [32]


def test_dtype_float32_runs_and_float16_on_the_cpu_is_one_line(roberta_dir, tmp_path):
    from lowrank import api
    from lowrank.errors import LowrankError

    res = api.project(
        str(roberta_dir),
        seq_len=SEQ_LEN,
        num_sequences=1,
        k=8,
        method="mean-pool",
        model_effect=False,
        dtype="float32",
        device="cpu",
        progress=False,
    )
    assert (
        res.config["config"]["dtype"] == "float32" and res.config["identity"]["dtype"] == "float32"
    )
    with pytest.raises(LowrankError, match=r"^dtype='float16' needs device cuda"):
        api.project(str(roberta_dir), seq_len=SEQ_LEN, k=8, dtype="float16", device="cpu")
    for command in ("project", "verify"):
        args = [command, "--model", str(roberta_dir), "--seq-len", str(SEQ_LEN), "--k", "8"]
        args += ["--dtype", "float16", "--device", "cpu", "--out", str(tmp_path / command)]
        out = CliRunner().invoke(main, args)
        lines = [x for x in out.output.splitlines() if x.startswith("error")]
        assert out.exit_code == 2 and lines == [
            "error: --dtype float16 needs --device cuda; use float32 on the CPU"
        ], out.output
        assert not (tmp_path / command).exists()


def test_half_precision_attention_is_measured_in_float32(roberta_dir):
    # what a float16 model on CUDA hands the collector: P, Q, K, V in half precision
    from lowrank.families.project.approximation import ProjectionCollector
    from lowrank.hooks.calls import AttentionCall

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 16, 4, generator=gen).half() for _ in range(3))
    probs = torch.softmax(q.float() @ k.float().mT / 2, -1).half()
    spec = ProjectionSpec(("gaussian", "svd"), (4,), draws=1)
    sink = ProjectionCollector(spec, layers=1, heads=2, n=16)
    sink(AttentionCall(0, probs, q, k, v, None, torch.nn.Identity()))  # no half-precision SVD
    arrays = sink.arrays()
    assert np.isfinite(arrays["theorem2_svd"]).all() and arrays["theorem2_svd"].dtype == np.float32
