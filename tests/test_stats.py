"""Running moments: exact against numpy, and merges equal one pass."""

from __future__ import annotations

import numpy as np
import pytest

from lowrank.families.spectrum.stats import SpectrumStats
from lowrank.maths.stats import RunningMoments


def test_moments_equal_numpy_mean_and_sample_variance():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(37, 3, 4))
    m = RunningMoments.empty((3, 4))
    for lo in range(0, 37, 5):
        m = m.add(x[lo : lo + 5])
    assert m.count == 37
    np.testing.assert_allclose(m.mean, x.mean(axis=0), rtol=0, atol=1e-13)
    np.testing.assert_allclose(m.variance(), x.var(axis=0, ddof=1), rtol=1e-12)
    np.testing.assert_allclose(m.sem(), x.std(axis=0, ddof=1) / np.sqrt(37), rtol=1e-12)


def test_merge_of_two_halves_equals_the_whole():
    rng = np.random.default_rng(1)
    x = rng.lognormal(size=(50, 2, 6))
    whole = RunningMoments.empty((2, 6)).add(x)
    left = RunningMoments.empty((2, 6)).add(x[:19])
    right = RunningMoments.empty((2, 6)).add(x[19:])
    merged = left.merge(right)
    assert merged.count == 50
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(merged.m2, whole.m2, rtol=1e-12)


def test_merge_with_empty_and_shape_mismatch():
    m = RunningMoments.empty((2,)).add(np.array([[1.0, 2.0], [3.0, 4.0]]))
    assert m.merge(RunningMoments.empty((2,))).mean.tolist() == [2.0, 3.0]
    with pytest.raises(ValueError):
        m.merge(RunningMoments.empty((3,)))
    assert RunningMoments.empty((2,)).variance().tolist() == [0.0, 0.0]


def test_spectrum_stats_merge_equals_one_pass():
    rng = np.random.default_rng(2)
    s = -np.sort(-rng.random(size=(9, 2, 3, 8)), axis=-1)
    one = SpectrumStats.empty(2, 3, 8, 2).add(s)
    empty = SpectrumStats.empty(2, 3, 8, 2)
    two = empty.add(s[:4]).merge(empty.add(s[4:]))
    for name in ("cumulative", "singular_values", "summaries"):
        a, b = getattr(one, name), getattr(two, name)
        np.testing.assert_allclose(a.mean, b.mean, atol=1e-12, rtol=0)
        np.testing.assert_allclose(a.m2, b.m2, atol=1e-12, rtol=1e-12)
    c = np.cumsum(s, -1) / s.sum(-1, keepdims=True)
    np.testing.assert_allclose(one.cumulative.mean, c.mean(0), atol=1e-12)
    np.testing.assert_allclose(one.summaries.mean[..., 0], c[..., 1].mean(0), atol=1e-12)


def test_half_width_shrinks_with_more_sequences():
    rng = np.random.default_rng(3)
    s = -np.sort(-rng.random(size=(400, 1, 1, 8)), axis=-1)
    few = SpectrumStats.empty(1, 1, 8, 2).add(s[:20])
    many = SpectrumStats.empty(1, 1, 8, 2).add(s)
    assert many.half_width([2, 4]) < few.half_width([2, 4])
    expected = 1.959963984540054 * many.cumulative.sem()[0, 0, [1, 3]].max()
    assert many.half_width([2, 4]) == pytest.approx(expected)
    assert SpectrumStats.empty(1, 1, 8, 2).half_width([2]) == float("inf")
