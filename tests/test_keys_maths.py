"""lowrank keys, the mathematics: rank definitions, PCA, mergeable moments, top-k quality.

Known answers are computed by hand in the comments; references are plain numpy (no sklearn).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lowrank.errors import LowrankError
from lowrank.families.keys import maths
from lowrank.families.keys.accumulate import Comoments, Moments, SequenceRows


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---- rank definitions -------------------------------------------------------------------


def test_rank_counts_components_and_loki_reports_one_less():
    # variances 5, 3, 1.5, 0.5 (total 10): shares 0.5, 0.8, 0.95, 1.0. The first share at or
    # above 0.90 is the 3rd: 3 components. Loki's argmax(cumsum > 0.90) is the 0-based
    # index of that component, 2: one less than the count.
    v = torch.tensor([5.0, 3.0, 1.5, 0.5], dtype=torch.float64)
    assert int(maths.rank_at(v, 0.9)) == 3
    assert int(maths.loki_index(v, 0.9)) == 2
    # on the brief's 5, 3, 1, 1 the shares are 0.5, 0.8, 0.9, 1.0: exactly 0.90 at the 3rd
    # (also in float64: 0.8 + 0.1 rounds to 0.9). The count is 3. Loki's strict '>' skips
    # the share that equals 0.90 and returns index 3, which here coincides with the count:
    # on a share exactly at the fraction the two conventions agree, elsewhere they differ
    # by one.
    w = torch.tensor([5.0, 3.0, 1.0, 1.0], dtype=torch.float64)
    assert float(torch.cumsum(w / w.sum(), 0)[2]) == 0.9
    assert int(maths.rank_at(w, 0.9)) == 3
    assert int(maths.loki_index(w, 0.9)) == 3


def test_the_three_definitions_differ_on_one_spectrum():
    # singular values 3, 2, 1, 1. nuclear (sum s = 7): 3/7, 5/7, 6/7 = 0.857, 1 -> 4.
    # energy (sum s^2 = 15): 9/15 = 0.6, 13/15 = 0.867, 14/15 = 0.933 -> 3.
    s = torch.tensor([3.0, 2.0, 1.0, 1.0], dtype=torch.float64)
    assert int(maths.rank_at(s, 0.9)) == 4
    assert int(maths.rank_at(s**2, 0.9)) == 3


def test_rank_edge_cases():
    assert int(maths.rank_at(torch.zeros(4), 0.9)) == 1  # all-zero: share is 1 at once
    assert int(maths.rank_at(torch.tensor([1.0, 0.0, 0.0]), 0.9)) == 1
    assert maths.rank_at(torch.ones(2, 3, 8), 0.5).shape == (2, 3)
    assert int(maths.rank_at(torch.ones(8), 0.5)) == 4
    with pytest.raises(LowrankError, match="fraction"):
        maths.rank_at(torch.ones(3), 1.5)


def test_cumulative_share_is_monotone_and_ends_at_one():
    v = torch.from_numpy(np.sort(_rng().random((5, 7)))[:, ::-1].copy())
    c = maths.cumulative_share(v)
    assert (c.diff(dim=-1) >= 0).all() and torch.allclose(c[:, -1], torch.ones(5, dtype=c.dtype))


# ---- PCA of pooled tokens ---------------------------------------------------------------


def _tokens(seed: int = 0, b: int = 3, h: int = 2, n: int = 20, d: int = 5):
    rng = _rng(seed)
    scales = rng.random(d) * 3  # anisotropic, with an offset mean
    x = torch.from_numpy(rng.standard_normal((b, h, n, d)) * scales + 2.0)
    valid = torch.ones(b, n, dtype=torch.bool)
    if b >= 3:
        valid[1, 15:] = False  # right padding
        valid[2, :7] = False  # left padding
    return x, valid


def test_explained_variance_equals_numpy_pca():
    x, valid = _tokens()
    count, mean, com = maths.token_moments(x, valid)
    pooled = (count[0], mean[0], com[0])
    for b in range(1, 3):
        pooled = maths.merge_moments(pooled, (count[b], mean[b], com[b]))
    ev = maths.explained_variance(pooled[0].expand(2), pooled[2])  # (H, d)
    for h in range(2):
        tokens = torch.cat([x[b, h][valid[b]] for b in range(3)]).numpy()
        cov = np.cov(tokens, rowvar=False)  # centred, ddof=1: sklearn's PCA explained_variance_
        want = np.linalg.eigh(cov)[0][::-1]
        assert np.abs(ev[h].numpy() - want).max() <= 1e-10
        assert np.abs(pooled[1][h].numpy() - tokens.mean(axis=0)).max() <= 1e-12


def test_principal_axes_are_orthonormal_and_diagonalise_the_covariance():
    x, valid = _tokens(1)
    count, _, com = maths.token_moments(x, valid)
    u = maths.principal_axes(com)  # (B, H, d, d)
    eye = torch.eye(5, dtype=torch.float64)
    assert torch.allclose(u.mT @ u, eye.expand_as(u), atol=1e-12)
    rotated = u.mT @ com @ u  # diagonal, descending
    diag = torch.diagonal(rotated, dim1=-2, dim2=-1)
    assert torch.allclose(rotated, torch.diag_embed(diag), atol=1e-9)
    assert (diag.diff(dim=-1) <= 1e-9).all()
    ev = maths.explained_variance(count[:, None].expand(-1, 2), com)
    assert torch.allclose(diag / (count[:, None, None] - 1), ev, atol=1e-10)


def test_comoments_merge_equals_one_pass_over_the_union():
    x, valid = _tokens(2, b=4)
    one = Comoments.empty(3, 2, 2, 5)
    halves = [Comoments.empty(3, 2, 2, 5), Comoments.empty(3, 2, 2, 5)]
    for layer in range(2):
        one.add(layer, x + layer, valid, [0, 1, 2, 3])
        halves[0].add(layer, x[:2] + layer, valid[:2], [0, 1])
        halves[1].add(layer, x[2:] + layer, valid[2:], [2, 3])
    merged = halves[0].merge(halves[1])
    for got, want in zip(merged.parts(), one.parts(), strict=True):
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    # pooling the groups equals the moments of every valid token at once
    count, _, com = one.pooled()
    tokens = torch.cat([x[b, 1][valid[b]] for b in range(4)]).numpy()
    assert count[0, 1] == len(tokens)
    centred = tokens - tokens.mean(axis=0)
    assert np.abs(com[0, 1].numpy() - centred.T @ centred).max() <= 1e-10
    with pytest.raises(LowrankError, match="cannot merge"):
        one.merge(Comoments.empty(2, 2, 2, 5))


def test_bootstrap_interval_of_identical_sequences_is_the_point():
    x, valid = _tokens(3, b=1)
    acc = Comoments.empty(4, 1, 2, 5)
    for sid in range(4):  # four copies of one sequence: every replicate is the same pool
        acc.add(0, x, valid[:1], [sid])
    out = acc.intervals(replicates=20)
    rank = maths.rank_at(acc.explained_variance(), 0.9).numpy()
    assert int(out["groups"]) == 4
    assert np.array_equal(out["rank_low"][0], rank[0]) and np.array_equal(
        out["rank_high"][0], rank[0]
    )
    assert np.allclose(out["curve_low"], out["curve_high"], atol=1e-9)


def test_bootstrap_needs_two_groups_and_brackets_the_spread():
    x, valid = _tokens(4, b=1)
    acc = Comoments.empty(8, 1, 2, 5)
    acc.add(0, x, valid[:1], [0])
    assert np.isnan(acc.intervals(replicates=5)["rank_low"]).all()
    rng = _rng(5)
    for sid in range(1, 8):
        acc.add(
            0,
            torch.from_numpy(rng.standard_normal((1, 2, 20, 5)) * rng.random(5)),
            valid[:1],
            [sid],
        )
    out = acc.intervals(replicates=100)
    assert (out["rank_low"] <= out["rank_high"]).all()
    assert (out["curve_low"] <= out["curve_high"] + 1e-12).all()


def test_running_moments_merge_and_missing_values():
    rng = _rng(6)
    data = rng.standard_normal((10, 3))
    data[2, 1] = np.nan  # a missing observation in one cell
    one = Moments.empty((3,))
    one.add(data)
    a, b = Moments.empty((3,)), Moments.empty((3,))
    a.add(data[:4])
    b.add(data[4:])
    merged = a.merge(b)
    for cell in range(3):
        col = data[:, cell][~np.isnan(data[:, cell])]
        assert merged.count[cell] == len(col) == one.count[cell]
        assert abs(merged.mean[cell] - col.mean()) <= 1e-12
        assert abs(merged.std()[cell] - col.std(ddof=1)) <= 1e-12


def test_sequence_rows_merge_by_index_and_refuse_duplicates():
    a, b = SequenceRows((2,)), SequenceRows((2,))
    a.set(3, (0,), np.array(1.0))
    b.set(1, (slice(None),), np.array([5.0, 6.0]))
    ids, values = a.merge(b).arrays()
    assert ids.tolist() == [1, 3]
    assert values[0].tolist() == [5.0, 6.0] and values[1][0] == 1.0 and np.isnan(values[1][1])
    with pytest.raises(LowrankError, match="twice"):
        a.merge(a)


# ---- singular values without forming the matrices ---------------------------------------


def test_product_and_gram_singular_values_match_numpy_svd():
    rng = _rng(7)
    q, k = rng.standard_normal((3, 30, 6)), rng.standard_normal((3, 25, 6))
    got = maths.product_singular_values(torch.from_numpy(q), torch.from_numpy(k)).numpy()
    want = np.linalg.svd(q @ k.transpose(0, 2, 1), compute_uv=False)[:, :6]
    assert np.abs(got - want).max() <= 1e-10 * want.max()
    short = maths.product_singular_values(torch.from_numpy(q[:, :4]), torch.from_numpy(k))
    assert short.shape == (3, 6) and (short[:, 4:] == 0).all()  # rank <= 4 rows
    x = rng.standard_normal((40, 12))
    gram = maths.gram_singular_values(torch.from_numpy(x)).numpy()
    assert np.abs(gram - np.linalg.svd(x, compute_uv=False)).max() <= 1e-10


def test_whole_layer_concatenates_heads_per_token():
    x = torch.arange(2 * 3 * 4).reshape(2, 3, 4)  # (Hkv, m, d)
    w = maths.whole_layer(x)
    assert w.shape == (3, 8)
    assert torch.equal(w[1], torch.cat([x[0, 1], x[1, 1]]))


def test_kv_group_and_random_orthogonal():
    assert maths.kv_group(6, 2).tolist() == [0, 0, 0, 1, 1, 1]  # transformers' repeat_kv
    assert maths.kv_group(4, 4).tolist() == [0, 1, 2, 3]
    with pytest.raises(LowrankError, match="cannot share"):
        maths.kv_group(6, 4)
    r = maths.random_orthogonal((2, 3), 8, torch.Generator().manual_seed(0))
    assert torch.allclose(r.mT @ r, torch.eye(8, dtype=r.dtype).expand(2, 3, 8, 8), atol=1e-12)


def test_query_positions_are_seeded_by_sequence():
    a = maths.query_positions(100, 10, 0, 5)
    assert torch.equal(a, maths.query_positions(100, 10, 0, 5))
    assert not torch.equal(a, maths.query_positions(100, 10, 0, 6))
    assert len(a.unique()) == 10 and (a.diff() > 0).all()
    assert torch.equal(maths.query_positions(8, 10, 0, 0), torch.arange(8))


# ---- top-k from few dimensions ----------------------------------------------------------


def _attention(causal: bool, seed: int = 8, h: int = 4, hkv: int = 2, m: int = 24, d: int = 8):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(h, m, d, generator=gen, dtype=torch.float64) * 2
    k = torch.randn(hkv, m, d, generator=gen, dtype=torch.float64) * 2
    v = torch.randn(hkv, m, d, generator=gen, dtype=torch.float64)
    positions = torch.arange(m)
    allowed = maths.allowed_keys(positions, m, causal)
    logits = maths.head_logits(q, k, allowed)
    return q, k, v, allowed, logits, torch.softmax(logits * d**-0.5, dim=-1)


def test_chosen_keys_respect_causality_and_keep_the_sink():
    allowed = _attention(causal=True)[3]
    # scores that favour the future: without the mask every query would pick late keys
    scores = (
        torch.arange(24.0, dtype=torch.float64)
        .expand(4, 24, 24)
        .masked_fill(~allowed, float("-inf"))
    )
    masks = maths.chosen_keys(scores, [3, 6], keep_first=True)  # (K, H, Q, m)
    assert masks.shape == (2, 4, 24, 24)
    assert (masks * (~allowed).to(masks.dtype)).sum() == 0, "no chosen key after its query"
    assert (masks[..., 0] == 1).all(), "the sink is always kept"
    counts = masks.sum(dim=-1)  # sink + min(k, i) for the query at position i
    expected = torch.tensor(
        [[1 + min(kk, i) for i in range(24)] for kk in (3, 6)], dtype=counts.dtype
    )
    assert torch.equal(counts, expected[:, None, :].expand_as(counts))
    # the chosen keys are the latest ones, the largest scores
    assert masks[0, 0, 10].nonzero().flatten().tolist() == [0, 8, 9, 10]
    no_sink = maths.chosen_keys(scores, [3], keep_first=False)
    assert no_sink[0, 0, 10].nonzero().flatten().tolist() == [8, 9, 10]
    with pytest.raises(LowrankError, match="at least 1"):
        maths.chosen_keys(scores, [0], True)


@pytest.mark.parametrize("causal", [True, False])
def test_exact_scores_give_recall_one_and_all_keys_give_exact_attention(causal):
    q, k, v, allowed, logits, probs = _attention(causal)
    # r = d with a full orthonormal basis: the projected scores are the exact ones
    basis = maths.random_orthogonal((2,), 8, torch.Generator().manual_seed(1))
    approx = maths.head_logits(maths.project(q, basis, 8), maths.project(k, basis, 8), allowed)
    assert torch.allclose(approx, logits, atol=1e-10)
    recall, mass, error, binding = maths.topk_quality(probs, logits, None, v, [2, 5], True)
    assert (recall == 1).all()
    assert (mass <= 1 + 1e-12).all() and (error > 0).any()  # exact top-k is not exact attention
    # k = m: every allowed key is chosen, P is kept whole
    recall, mass, error, binding = maths.topk_quality(probs, logits, approx, v, [24], True)
    assert (recall == 1).all() and not binding.any()
    assert torch.allclose(mass, torch.ones_like(mass), atol=1e-12)
    assert error.abs().max() <= 1e-12


def test_topk_quality_on_a_hand_example():
    # one head, one query, 4 keys, no sink: P = (0.1, 0.2, 0.3, 0.4). The approximate
    # scores rank key 0 first, so with k = 2 the chosen set is {0, 3}, the exact {2, 3}.
    # recall 1/2, mass 0.5; values e_j: o = P, o~ = (0.1, 0, 0, 0.4)/0.5 = (0.2, 0, 0, 0.8).
    probs = torch.tensor([[[0.1, 0.2, 0.3, 0.4]]], dtype=torch.float64)
    logits = probs.log()
    approx = torch.tensor([[[9.0, 1.0, 2.0, 3.0]]], dtype=torch.float64)
    value = torch.eye(4, dtype=torch.float64)[None]
    recall, mass, error, binding = maths.topk_quality(probs, logits, approx, value, [2], False)
    want = np.linalg.norm([0.2 - 0.1, -0.2, -0.3, 0.8 - 0.4]) / np.linalg.norm([0.1, 0.2, 0.3, 0.4])
    assert float(recall) == 0.5 and abs(float(mass) - 0.5) <= 1e-12
    assert abs(float(error) - want) <= 1e-12 and bool(binding)
    # with the sink kept, key 0 no longer counts: candidates {1, 2, 3}, approx picks 3, 2
    recall, mass, _, _ = maths.topk_quality(probs, logits, approx, value, [2], True)
    assert float(recall) == 1.0 and abs(float(mass) - 0.8) <= 1e-12  # sink 0.1 + 0.3 + 0.4


def test_projection_on_few_dimensions_loses_recall():
    q, k, v, allowed, logits, probs = _attention(causal=False, seed=9)
    basis = maths.random_orthogonal((2,), 8, torch.Generator().manual_seed(2))
    approx = maths.head_logits(maths.project(q, basis, 1), maths.project(k, basis, 1), allowed)
    recall, *_ = maths.topk_quality(probs, logits, approx, v, [4], True)
    assert recall.mean() < 0.9  # one random direction of 8 does not rank keys exactly
