"""Statistics the analyses share: mergeable moments, intervals, multiplicity, correlation.

A :class:`RunningMoments` holds ``count``, ``mean`` and ``m2`` (the sum of squared deviations)
for an array of statistics. Adding a batch and merging two accumulators use Chan's parallel
formula (Welford 1962; Chan, Golub & LeVeque 1979), so shards and resumed runs combine to the
same numbers as one pass (up to float64 rounding). Beside them: t-intervals over sequences,
Holm's correction, cluster-robust rates and Spearman's rho with a bootstrap interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class RunningMoments:
    """Mean and variance of a stream of arrays of a fixed shape.

    Attributes:
        count: number of observations so far.
        mean: (*shape) float64 running mean.
        m2: (*shape) float64 sum of squared deviations from the mean.
    """

    count: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, shape: tuple[int, ...]) -> RunningMoments:
        return cls(0, np.zeros(shape), np.zeros(shape))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.mean.shape)

    def variance(self, ddof: int = 1) -> np.ndarray:
        """Sample variance (``ddof=1``); zeros while fewer than ``ddof + 1`` observations."""
        if self.count <= ddof:
            return np.zeros_like(self.mean)
        return self.m2 / (self.count - ddof)

    def std(self, ddof: int = 1) -> np.ndarray:
        return np.sqrt(self.variance(ddof))

    def sem(self) -> np.ndarray:
        """Standard error of the mean, ``std / sqrt(count)``."""
        return self.std() / np.sqrt(max(self.count, 1))

    def merge(self, other: RunningMoments) -> RunningMoments:
        """A new accumulator over both streams (Chan et al.'s pairwise update)."""
        if self.shape != other.shape:
            raise ValueError(f"cannot merge moments of shape {self.shape} and {other.shape}")
        if other.count == 0:
            return RunningMoments(self.count, self.mean.copy(), self.m2.copy())
        if self.count == 0:
            return RunningMoments(other.count, other.mean.copy(), other.m2.copy())
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        return RunningMoments(n, mean, m2)

    def add(self, batch: np.ndarray) -> RunningMoments:
        """A new accumulator with ``batch`` (B, *shape) added, B observations."""
        batch = np.asarray(batch, dtype=np.float64)
        if batch.shape[1:] != self.shape:
            raise ValueError(f"batch of shape {batch.shape} does not fit moments {self.shape}")
        if batch.shape[0] == 0:
            return self
        mean = batch.mean(axis=0)
        m2 = ((batch - mean) ** 2).sum(axis=0)
        return self.merge(RunningMoments(batch.shape[0], mean, m2))


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of independent cluster values (NaN below 2)."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return (float("nan"), float("nan"))
    half = stats.t.ppf(0.5 + level / 2, values.size - 1) * values.std(ddof=1)
    half /= np.sqrt(values.size)
    return (float(values.mean() - half), float(values.mean() + half))


def holm(pvalues: list[float]) -> list[float]:
    """Holm's (1979) step-down adjusted p-values: family-wise error control over all tests.

    The i-th smallest p is multiplied by (m - i + 1), then made non-decreasing.
    """
    order = np.argsort(pvalues, kind="stable")
    m = len(pvalues)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted.tolist()


@dataclass(frozen=True)
class ClusteredRate:
    """A failure rate from clustered Bernoulli trials and its cluster-robust interval.

    Trials in one cluster share a draw (one R for a matrix P and its vectors; one sequence),
    so they are not independent. The interval is Korn & Graubard's (1998) Clopper-Pearson
    on an effective sample size: ``n_eff = p (1 - p) / v``, with ``v`` the linearised
    (Taylor) cluster variance of the ratio estimator ``p = sum f_c / sum m_c``,
    ``v = C / (C - 1) sum (f_c - p m_c)^2 / (sum m_c)^2`` over C clusters, then scaled by
    their degrees-of-freedom factor ``(t_{N-1} / t_{C-1})^2`` (N trials), which widens the
    interval when clusters are few. ``n_eff`` is kept between Kish's worst case
    ``(sum m_c)^2 / sum m_c^2`` (every cluster perfectly correlated; C for equal sizes) and
    N (no credit is given for a design effect below 1). With no failures (or no successes)
    the correlation cannot be estimated and ``n_eff`` is Kish's worst case. Clusters of one
    trial each are independent by construction: ``n_eff = N``, plain Clopper-Pearson.
    """

    failures: int
    trials: int
    clusters: int
    n_eff: float

    @classmethod
    def from_clusters(
        cls, failures: np.ndarray, sizes: np.ndarray, level: float = 0.95
    ) -> ClusteredRate:
        from scipy import stats

        f = np.asarray(failures, dtype=np.float64).ravel()
        m = np.asarray(sizes, dtype=np.float64).ravel()
        total, trials, clusters = f.sum(), m.sum(), f.size
        if trials <= 0:
            raise ValueError("no trials")
        worst = float(trials**2 / (m**2).sum())  # Kish: perfectly correlated clusters
        p = total / trials
        if (m == 1).all():
            n_eff = float(trials)
        elif 0 < p < 1 and clusters > 1:
            v = clusters / (clusters - 1) * float(((f - p * m) ** 2).sum()) / trials**2
            n_eff = p * (1 - p) / v if v > 0 else float(trials)
            q = 0.5 + level / 2
            n_eff *= (stats.t.ppf(q, trials - 1) / stats.t.ppf(q, clusters - 1)) ** 2
            n_eff = float(np.clip(n_eff, worst, trials))
        else:
            n_eff = worst
        return cls(int(total), int(trials), clusters, n_eff)

    @property
    def rate(self) -> float:
        return self.failures / self.trials

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """Clopper-Pearson interval with ``n_eff`` trials and ``rate * n_eff`` failures."""
        from scipy import stats

        x, n = self.rate * self.n_eff, self.n_eff
        alpha = 1 - level
        lo = 0.0 if x <= 0 else float(stats.beta.ppf(alpha / 2, x, n - x + 1))
        hi = 1.0 if x >= n else float(stats.beta.ppf(1 - alpha / 2, x + 1, n - x))
        return lo, hi

    def p_value(self, bound: float) -> float:
        """Two-sided exact binomial p-value (doubled smaller tail, on ``n_eff``) of
        ``rate == bound``; dual to :meth:`interval` (``bound`` outside the 95% interval
        iff p < 0.05)."""
        from scipy import stats

        x, n = self.rate * self.n_eff, self.n_eff
        if bound <= 0:
            return 1.0 if x <= 0 else 0.0
        if bound >= 1:
            return 1.0 if x >= n else 0.0
        upper = 1.0 if x <= 0 else float(stats.beta.cdf(bound, x, n - x + 1))  # P(X >= x)
        lower = 1.0 if x >= n else float(stats.beta.sf(bound, x + 1, n - x))  # P(X <= x)
        return min(1.0, 2 * min(upper, lower))


def rank_correlation(
    x: np.ndarray, y: np.ndarray, draws: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Spearman's rho of (x, y) with a 95% percentile bootstrap interval over the points.

    Returns:
        ``{"rho", "low", "high", "points"}``; NaN where fewer than 4 finite points or a
        constant variable leave rho undefined.
    """
    from scipy.stats import rankdata

    keep = np.isfinite(x) & np.isfinite(y)
    x, y = np.asarray(x)[keep], np.asarray(y)[keep]
    nan = {"rho": math.nan, "low": math.nan, "high": math.nan, "points": int(keep.sum())}
    if len(x) < 4 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return nan

    def rho(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        ra, rb = rankdata(a, axis=-1), rankdata(b, axis=-1)
        ra -= ra.mean(axis=-1, keepdims=True)
        rb -= rb.mean(axis=-1, keepdims=True)
        den = np.sqrt((ra**2).sum(-1) * (rb**2).sum(-1))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.asarray((ra * rb).sum(-1) / den)

    pick = np.random.default_rng(seed).integers(0, len(x), (draws, len(x)))
    boot = rho(x[pick], y[pick])
    low, high = np.nanpercentile(boot, [2.5, 97.5])
    return {"rho": float(rho(x, y)), "low": float(low), "high": float(high), "points": len(x)}
