"""Running means and variances that merge exactly (Welford 1962; Chan, Golub & LeVeque 1979).

A :class:`RunningMoments` holds ``count``, ``mean`` and ``m2`` (the sum of squared deviations)
for an array of statistics. Adding a batch and merging two accumulators use Chan's parallel
formula, so shards and resumed runs combine to the same numbers as one pass (up to float64
rounding).
"""

from __future__ import annotations

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


@dataclass
class SpectrumStats:
    """Figure 1 statistics over sequences, per (layer, head).

    Attributes:
        cumulative: moments of c, shape (L, H, n).
        singular_values: moments of s, shape (L, H, n).
        summaries: moments of the per-matrix summaries, shape (L, H, 5), in
            :data:`lowrank.spectra.SUMMARY_NAMES` order.
        index: 1-based singular-value index of ``c_at_index`` (128 in the paper).
    """

    cumulative: RunningMoments
    singular_values: RunningMoments
    summaries: RunningMoments
    index: int

    @classmethod
    def empty(cls, layers: int, heads: int, n: int, index: int) -> SpectrumStats:
        from lowrank.spectra import SUMMARY_NAMES

        return cls(
            RunningMoments.empty((layers, heads, n)),
            RunningMoments.empty((layers, heads, n)),
            RunningMoments.empty((layers, heads, len(SUMMARY_NAMES))),
            index,
        )

    @property
    def count(self) -> int:
        return self.cumulative.count

    def add(self, s: np.ndarray) -> SpectrumStats:
        """Add the spectra ``s`` (B, L, H, n) of B sequences."""
        import torch

        from lowrank.spectra import cumulative, summaries

        st = torch.from_numpy(np.asarray(s, dtype=np.float64))
        c = cumulative(st)
        return SpectrumStats(
            self.cumulative.add(c.numpy()),
            self.singular_values.add(st.numpy()),
            self.summaries.add(summaries(st, c, self.index).numpy()),
            self.index,
        )

    def merge(self, other: SpectrumStats) -> SpectrumStats:
        if self.index != other.index:
            raise ValueError(f"heatmap index {self.index} != {other.index}")
        return SpectrumStats(
            self.cumulative.merge(other.cumulative),
            self.singular_values.merge(other.singular_values),
            self.summaries.merge(other.summaries),
            self.index,
        )

    def half_width(self, indices: list[int], z: float = 1.959963984540054) -> float:
        """Largest 95% normal half-width ``z * sem`` of mean c over 1-based ``indices``."""
        if self.count < 2:
            return float("inf")
        sem = self.cumulative.sem()[..., [i - 1 for i in indices]]
        return float(z * sem.max())
