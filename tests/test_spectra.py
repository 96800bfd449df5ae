"""Spectra: exact answers on hand-computable matrices, then invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from lowrank.maths.spectra import (
    SUMMARY_NAMES,
    cumulative,
    effective_rank,
    pad_spectrum,
    rank_for,
    singular_values,
    stable_rank,
    summaries,
)


def test_singular_values_of_a_diagonal_matrix_are_its_sorted_absolute_entries():
    m = torch.diag(torch.tensor([1.0, -3.0, 2.0]))
    s = singular_values(m)
    assert s.dtype == torch.float64
    assert torch.allclose(s, torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64), atol=1e-6)


def test_singular_values_match_numpy_float64_on_a_softmax_batch():
    gen = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(4, 2, 16, 16, generator=gen) * 3, dim=-1)
    ref = np.linalg.svd(p.double().numpy(), compute_uv=False)
    assert np.abs(singular_values(p).numpy() - ref).max() < 1e-5


def test_cumulative_by_hand():
    c = cumulative(torch.tensor([3.0, 2.0, 1.0]))
    assert torch.allclose(c, torch.tensor([0.5, 5 / 6, 1.0], dtype=torch.float64))


def test_cumulative_of_zero_spectrum_is_all_ones():
    assert torch.equal(cumulative(torch.zeros(4)), torch.ones(4, dtype=torch.float64))


def test_pad_spectrum_appends_zeros_and_keeps_c_at_one():
    s = torch.tensor([2.0, 1.0], dtype=torch.float64)
    padded = pad_spectrum(s, 4)
    assert padded.tolist() == [2.0, 1.0, 0.0, 0.0]
    assert cumulative(padded).tolist() == pytest.approx([2 / 3, 1.0, 1.0, 1.0])


def test_rank_for_and_ranks_by_hand():
    c = cumulative(torch.tensor([5.0, 3.0, 1.0, 1.0]))  # 0.5, 0.8, 0.9, 1.0
    assert rank_for(c, 0.9).item() == 3
    assert rank_for(c, 0.5).item() == 1
    assert rank_for(c, 0.99).item() == 4


def test_effective_rank_of_flat_and_one_hot_spectra():
    assert effective_rank(torch.ones(8)).item() == pytest.approx(8.0)
    assert effective_rank(torch.tensor([1.0, 0.0, 0.0])).item() == pytest.approx(1.0)
    # two equal values and two zeros: entropy ln 2 -> effective rank 2
    assert effective_rank(torch.tensor([1.0, 1.0, 0.0, 0.0])).item() == pytest.approx(2.0)


def test_stable_rank_by_hand():
    assert stable_rank(torch.tensor([2.0, 1.0, 1.0])).item() == pytest.approx(6 / 4)


def test_summaries_order_and_values():
    s = torch.tensor([[4.0, 2.0, 1.0, 1.0]])
    c = cumulative(s)
    out = summaries(s, c, index=2)
    assert out.shape == (1, len(SUMMARY_NAMES))
    assert out[0, 0].item() == pytest.approx(0.75)  # c_2 = 6/8
    assert out[0, 1].item() == 4  # c = (.5, .75, .875, 1): 0.9 is first reached at 4
    assert out[0, 4].item() == pytest.approx(22 / 16)


def test_identity_attention_is_full_rank_and_uniform_attention_rank_one():
    n = 8
    c_id = cumulative(singular_values(torch.eye(n)))
    assert torch.allclose(c_id, torch.arange(1, n + 1, dtype=torch.float64) / n)
    s_uni = singular_values(torch.full((n, n), 1.0 / n))
    assert s_uni[0].item() == pytest.approx(1.0, abs=1e-6)
    assert s_uni[1:].abs().max().item() < 1e-6


@settings(max_examples=50, deadline=None)
@given(
    arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 40)), elements=st.floats(0, 1e3))
)
def test_cumulative_is_non_decreasing_and_ends_at_one(values):
    s = torch.from_numpy(-np.sort(-values, axis=-1))
    c = cumulative(s)
    assert torch.all(c[..., 1:] >= c[..., :-1] - 1e-12)
    assert torch.allclose(c[..., -1], torch.ones(c.shape[0], dtype=torch.float64))
    assert torch.all((c >= 0) & (c <= 1 + 1e-12))


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 24), st.floats(0.1, 20), st.integers(0, 2**31 - 1))
def test_ranks_are_ordered_and_bounded(n, temperature, seed):
    gen = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(n, n, generator=gen, dtype=torch.float64) * temperature, -1)
    s = singular_values(p)
    c = cumulative(s)
    r90, r99 = rank_for(c, 0.9).item(), rank_for(c, 0.99).item()
    assert 1 <= r90 <= r99 <= n
    assert 1 - 1e-9 <= stable_rank(s).item() <= n + 1e-9
    assert 1 - 1e-9 <= effective_rank(s).item() <= n + 1e-9
    # rows of a stochastic matrix: s_1 >= 1 (P 1 = 1 gives ||P||_2 >= 1)
    assert s[0].item() >= 1 - 1e-9
    assert math.isfinite(c.sum().item())
