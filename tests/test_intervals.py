"""Intervals of a mean that stay inside the quantity's range and are valid at small N
(lowrank issue 25: a t-interval over 2 sequences printed cosines up to 1.026 and a relative
error of [-1.56, 4.81])."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lowrank.errors import LowrankError
from lowrank.maths.intervals import MIN_SEQUENCES, coverage, mean_interval
from lowrank.maths.stats import t_interval

COSINE = (-1.0, 1.0)
RELATIVE = (0.0, math.inf)


def test_the_old_t_interval_leaves_the_range_at_two_sequences():
    # the constructed case: two cosines near 1, two relative errors far apart
    lo, hi = t_interval(np.array([0.995, 0.999]))
    assert hi > 1  # what the table printed (1.026 in the issue)
    lo, hi = t_interval(np.array([0.1, 3.15]))
    assert lo < 0  # a negative relative error


@pytest.mark.parametrize("method", ["t-range", "t", "hoeffding"])
def test_two_sequences_never_leave_the_range(method):
    rng = np.random.default_rng(0)
    for _ in range(200):
        cos = 1 - 2 * rng.beta(1, 20, 2)
        iv = mean_interval(cos, *COSINE, method=method, min_n=2)
        assert -1 <= iv.low <= iv.mean <= iv.high <= 1
        if method == "hoeffding":
            continue  # needs a finite range
        rel = rng.lognormal(-1, 1.5, 2)
        iv = mean_interval(rel, *RELATIVE, method=method, min_n=2)
        assert 0 <= iv.low <= iv.mean <= iv.high


def test_too_few_sequences_say_so_instead_of_an_interval():
    iv = mean_interval(np.array([0.995, 0.999]), *COSINE)
    assert MIN_SEQUENCES == 3 and math.isnan(iv.low) and math.isnan(iv.high)
    assert iv.note.startswith("too few sequences for an interval")
    assert "too few sequences" in iv.text() and iv.record()["ci_low"] is None
    assert iv.mean == pytest.approx(0.997)


def test_t_range_is_asymmetric_towards_the_open_side_near_a_bound():
    cos = np.array([0.999, 0.99, 0.97, 0.995, 0.985])
    iv = mean_interval(cos, *COSINE)
    assert iv.high < 1 and (iv.high - iv.mean) < (iv.mean - iv.low)
    rel = np.array([0.01, 0.02, 0.3, 0.05, 0.04])
    iv = mean_interval(rel, *RELATIVE)
    assert iv.low > 0 and (iv.high - iv.mean) > (iv.mean - iv.low)


def test_unbounded_t_range_is_the_student_t_interval():
    x = np.array([0.3, -1.2, 2.0, 0.7, 0.1])
    iv = mean_interval(x)
    assert (iv.low, iv.high) == pytest.approx(t_interval(x))


def test_constant_values_give_the_point_and_bad_input_is_refused():
    iv = mean_interval(np.ones(4), *COSINE)
    assert iv.low == iv.high == iv.mean == 1
    with pytest.raises(LowrankError, match="outside the quantity's range"):
        mean_interval(np.array([0.5, 1.2, 0.3]), *COSINE)
    with pytest.raises(LowrankError, match="NaN"):
        mean_interval(np.array([0.5, np.nan, 0.3]), *COSINE)
    with pytest.raises(LowrankError, match="finite range"):
        mean_interval(np.array([0.5, 0.2, 0.3]), *RELATIVE, method="hoeffding")
    with pytest.raises(LowrankError, match="no values"):
        mean_interval(np.array([]))
    with pytest.raises(LowrankError, match="interval method 'bca'"):
        mean_interval(np.array([0.5, 0.2, 0.3]), method="bca")  # type: ignore[arg-type]


@pytest.mark.parametrize("n", [5, 20])
def test_coverage_is_near_nominal_on_skewed_cosines_and_errors(n):
    # 400 simulated data sets each; the full 2,000-set table is in the integration plan
    cos = coverage(lambda r, s: 1 - 2 * r.beta(2, 8, s), 0.6, n, *COSINE, reps=400, seed=n)
    rel = coverage(lambda r, s: 0.3 * r.exponential(1, s), 0.3, n, *RELATIVE, reps=400, seed=n)
    assert 0.90 <= cos <= 0.99 and 0.90 <= rel <= 0.99


def test_hoeffding_covers_whatever_the_shape():
    # a two-point distribution at the ends of the range: the hardest case for t-intervals
    cov = coverage(
        lambda r, s: np.where(r.random(s) < 0.05, -1.0, 1.0), 0.9, 5, *COSINE, "hoeffding", 400
    )
    assert cov >= 0.95
