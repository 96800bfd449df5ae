"""Intervals for a mean of per-sequence values that stay inside the quantity's range.

A cosine lies in [-1, 1], a relative error in [0, inf); a Student-t interval over two
sequences (t_{0.975, 1} = 12.7) printed a cosine interval up to 1.026 and a relative error of
[-1.56, 4.81] (lowrank issue 25). :func:`mean_interval` instead builds the t-interval on a
scale that maps the range onto the real line and maps it back (the delta method: Student-t
on ``g(mean)`` with standard error ``g'(mean) s / sqrt(N)``), with ``g`` the logit of the
position in a finite range [lo, hi], ``ln(x - lo)`` for [lo, inf), the identity for an
unbounded quantity. Both ends are inside the range by construction, and the interval is
asymmetric where the data crowd a bound, as means of such data are. Below
:data:`MIN_SEQUENCES` it gives no interval and says so.

Coverage simulated with :func:`coverage` (2,000 data sets per cell, nominal 0.95; seven
shapes: cosines 1 - 2 Beta(1, 30), 1 - 2 Beta(2, 8), 2 Beta(5, 2) - 1, relative errors
0.3 Exp(1), LogNormal(-1, 0.5), LogNormal(-1, 1), Uniform(0, 1)): ``t-range`` 0.91-0.96 at
N = 5 and 0.90-0.955 at N = 20 (lowest for the heavy lognormal), against 0.84-0.94 and
0.875-0.95 for the plain t-interval. ``method="hoeffding"`` is the distribution-free choice
for a finite range (coverage 1.00 in every cell, at the price of width: the whole cosine
range at N = 5).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

from lowrank.errors import LowrankError

Method = Literal["t-range", "t", "hoeffding"]
METHODS: dict[str, str] = {
    "t-range": "Student-t on the range's logit/log scale, mapped back (delta method)",
    "t": "Student-t, clipped to the range",
    "hoeffding": "Hoeffding's bound (distribution-free), clipped to the range",
}
MIN_SEQUENCES = 3
"""Fewest sequences for an interval: below, ``mean_interval`` answers "too few sequences for
an interval" (one sequence has no spread; two give t_{0.975,1} = 12.7 and no check of skew)."""


@dataclass(frozen=True)
class MeanInterval:
    """A mean over N sequences and its interval.

    Attributes:
        mean: the sample mean.
        low, high: the interval's ends (NaN when there is none), inside [lo, hi].
        n: sequences (clusters) behind the mean.
        method: how the interval was made, in words for run.json.
        note: why there is no interval ("too few sequences for an interval"), else "".
    """

    mean: float
    low: float
    high: float
    n: int
    method: str
    note: str = ""

    @property
    def half_width(self) -> float:
        """Half the interval's length (NaN without an interval)."""
        return (self.high - self.low) / 2

    def text(self, digits: int = 3) -> str:
        """``0.912 [0.874, 0.941]`` or ``0.912 (too few sequences for an interval, N = 2)``."""
        if not math.isfinite(self.low):
            return f"{self.mean:.{digits}f} ({self.note})"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def record(self) -> dict[str, object]:
        """The fields run.json keeps: mean, ci_low, ci_high, sequences, method, note."""
        low = self.low if math.isfinite(self.low) else None
        high = self.high if math.isfinite(self.high) else None
        return {
            "mean": self.mean,
            "ci_low": low,
            "ci_high": high,
            "sequences": self.n,
            "method": self.method,
            "note": self.note,
        }


def _check_range(values: np.ndarray, lo: float, hi: float) -> None:
    if not lo < hi:
        raise LowrankError(f"interval range [{lo}, {hi}] is empty: give lo < hi")
    if values.size and (values.min() < lo or values.max() > hi):
        raise LowrankError(
            f"values from {values.min():.6g} to {values.max():.6g} lie outside the quantity's "
            f"range [{lo}, {hi}]"
        )


def _to_line(x: float, lo: float, hi: float) -> tuple[float, float]:
    """``g(x)`` and ``g'(x)``: the logit of the position in [lo, hi], ``ln(x - lo)``, ``-ln(hi
    - x)`` or the identity, by which ends are finite."""
    if math.isfinite(lo) and math.isfinite(hi):
        u = (x - lo) / (hi - lo)
        return math.log(u / (1 - u)), 1 / ((hi - lo) * u * (1 - u))
    if math.isfinite(lo):
        return math.log(x - lo), 1 / (x - lo)
    if math.isfinite(hi):
        return -math.log(hi - x), 1 / (hi - x)
    return x, 1.0


def _from_line(z: float, lo: float, hi: float) -> float:
    """The inverse of :func:`_to_line`'s ``g``."""
    if math.isfinite(lo) and math.isfinite(hi):
        return lo + (hi - lo) * float(stats.logistic.cdf(z))
    if math.isfinite(lo):
        return lo + math.exp(z) if z < 700 else math.inf
    if math.isfinite(hi):
        return hi - math.exp(-z) if z > -700 else -math.inf
    return z


def mean_interval(
    values: np.ndarray,
    lo: float = -math.inf,
    hi: float = math.inf,
    level: float = 0.95,
    method: Method = "t-range",
    min_n: int = MIN_SEQUENCES,
) -> MeanInterval:
    """The mean of per-sequence values (one value per cluster) and an interval inside [lo, hi].

    Args:
        values: (N,) one value per sequence (NaNs are refused: say which sequences to drop).
        lo, hi: the quantity's range: (-1, 1) for cosines, (0, inf) for relative errors.
        method: ``t-range`` (Student-t with N - 1 degrees of freedom on the scale ``g`` of
            :func:`_to_line`, mapped back: the default), ``t`` (plain Student-t, its ends
            clipped to [lo, hi]; clipping never excludes a mean that lies in the range), or
            ``hoeffding`` (``mean +- (hi - lo) sqrt(ln(2 / alpha) / 2N)``, valid for every
            distribution and N, clipped to the range; needs a finite range).
        min_n: fewest values for an interval; below it the interval is NaN and ``note``
            says "too few sequences for an interval".

    Returns:
        :class:`MeanInterval` with ``lo <= low <= mean <= high <= hi`` (or NaN ends).
        All values equal: the interval is the point itself.

    Raises:
        LowrankError: no values, a NaN, values outside [lo, hi], or an empty range.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise LowrankError("no values: an interval needs at least one sequence")
    if not np.isfinite(x).all():
        raise LowrankError("values hold NaN or infinity: drop those sequences first")
    _check_range(x, lo, hi)
    if not 0 < level < 1:
        raise LowrankError(f"level {level} must lie in (0, 1)")
    mean = float(np.clip(x.mean(), lo, hi))
    n = int(x.size)
    words = METHODS.get(method)
    if words is None:
        raise LowrankError(f"interval method {method!r}: choose one of {', '.join(METHODS)}")
    if n < min_n:
        note = f"too few sequences for an interval (N = {n}; needs {min_n})"
        return MeanInterval(mean, math.nan, math.nan, n, words, note)
    alpha = 1 - level
    if method == "hoeffding":
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise LowrankError("Hoeffding's interval needs a finite range [lo, hi]")
        half = (hi - lo) * math.sqrt(math.log(2 / alpha) / (2 * n))
        return MeanInterval(mean, max(lo, mean - half), min(hi, mean + half), n, words)
    s = float(x.std(ddof=1))
    if s == 0 or mean in (lo, hi):
        return MeanInterval(mean, mean, mean, n, words)  # no spread: the point itself
    t = float(stats.t.ppf(1 - alpha / 2, n - 1))
    if method == "t":
        half = t * s / math.sqrt(n)
        return MeanInterval(mean, max(lo, mean - half), min(hi, mean + half), n, words)
    z, slope = _to_line(mean, lo, hi)
    half = t * slope * s / math.sqrt(n)
    low, high = _from_line(z - half, lo, hi), _from_line(z + half, lo, hi)
    return MeanInterval(mean, max(lo, min(low, mean)), min(hi, max(high, mean)), n, words)


def coverage(
    draw: Callable[[np.random.Generator, tuple[int, int]], np.ndarray],
    truth: float,
    n: int,
    lo: float,
    hi: float,
    method: Method = "t-range",
    reps: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> float:
    """Share of ``reps`` simulated data sets of ``n`` values whose interval holds ``truth``.

    Args:
        draw: ``draw(rng, size) -> ndarray`` of values in [lo, hi] with mean ``truth``.

    Returns:
        the simulated coverage in [0, 1] (intervals refused below ``min_n`` count as misses).
    """
    rng = np.random.default_rng(seed)
    data = np.asarray(draw(rng, (reps, n)), dtype=np.float64)
    hits = 0
    for row in data:
        iv = mean_interval(row, lo, hi, level, method, min_n=2)
        hits += bool(iv.low <= truth <= iv.high)
    return hits / reps
