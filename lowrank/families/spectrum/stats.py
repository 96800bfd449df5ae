"""The mergeable statistics of a spectrum run, and their arrays in spectrum.npz.

:class:`SpectrumStats` holds Figure 1's moments over sequences per (layer, head); they merge
exactly (Chan et al.), so shards, ranks and resumed runs combine to the numbers of one pass.
:func:`stats_arrays` and :func:`stats_from_arrays` turn them into the npz arrays and back, and
:func:`stats_array_spec` says what those arrays must be.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lowrank.errors import LowrankError
from lowrank.maths.spectra import SUMMARY_NAMES
from lowrank.maths.stats import RunningMoments
from lowrank.runs.arrays import ArraySpec, check_arrays

_MOMENTS = ("cumulative", "singular_values")


@dataclass
class SpectrumStats:
    """Figure 1 statistics over sequences, per (layer, head).

    Attributes:
        cumulative: moments of c, shape (L, H, n).
        singular_values: moments of s, shape (L, H, n).
        summaries: moments of the per-matrix summaries, shape (L, H, 5), in
            :data:`lowrank.maths.spectra.SUMMARY_NAMES` order.
        index: 1-based singular-value index of ``c_at_index`` (128 in the paper).
    """

    cumulative: RunningMoments
    singular_values: RunningMoments
    summaries: RunningMoments
    index: int

    @classmethod
    def empty(cls, layers: int, heads: int, n: int, index: int) -> SpectrumStats:
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

        from lowrank.maths.spectra import cumulative, summaries

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


def stats_arrays(stats: SpectrumStats) -> dict[str, np.ndarray]:
    """The npz arrays of a :class:`SpectrumStats` (means, std with ddof=1, and m2)."""
    arrays: dict[str, np.ndarray] = {"num_sequences": np.array(stats.count)}
    for name in _MOMENTS:
        m: RunningMoments = getattr(stats, name)
        arrays[f"{name}_mean"] = m.mean
        arrays[f"{name}_std"] = m.std()
        arrays[f"{name}_m2"] = m.m2
    for k, name in enumerate(SUMMARY_NAMES):
        arrays[f"{name}_mean"] = stats.summaries.mean[..., k]
        arrays[f"{name}_std"] = stats.summaries.std()[..., k]
    arrays["summaries_m2"] = stats.summaries.m2
    arrays["heatmap_index"] = np.array(stats.index)
    return arrays


def _moments(data: Mapping[str, np.ndarray], name: str, count: int) -> RunningMoments:
    mean = np.asarray(data[f"{name}_mean"], dtype=np.float64)
    return RunningMoments(count, mean, np.asarray(data[f"{name}_m2"], dtype=np.float64))


def stats_from_arrays(data: Mapping[str, np.ndarray]) -> SpectrumStats:
    """The inverse of :func:`stats_arrays` (KeyError when an array is missing; check the
    arrays first with :func:`lowrank.runs.arrays.stats_array_spec`)."""
    count = int(data["num_sequences"])
    summary_mean = np.stack([data[f"{s}_mean"] for s in SUMMARY_NAMES], axis=-1)
    return SpectrumStats(
        _moments(data, "cumulative", count),
        _moments(data, "singular_values", count),
        RunningMoments(
            count,
            summary_mean.astype(np.float64),
            np.asarray(data["summaries_m2"], dtype=np.float64),
        ),
        int(data["heatmap_index"]),
    )


def stats_array_spec(
    layers: int, heads: int, n: int, count: int | None = None, index: int | None = None
) -> dict[str, ArraySpec]:
    """The statistics of a spectrum run or checkpoint (:func:`folders.stats_arrays`).

    Means, stds and m2 of c and s are ``[layers, heads, n]``, the five summaries
    ``[layers, heads]`` (m2: ``[layers, heads, 5]``); all finite (a mean over sequences of
    finite spectra), stds and m2 non-negative. ``num_sequences`` and ``heatmap_index`` are
    scalars.
    """
    cube, plane = (layers, heads, n), (layers, heads)
    spec = {
        "num_sequences": ArraySpec("int", (), minimum=0, equals=count),
        "heatmap_index": ArraySpec("int", (), minimum=1, maximum=n, equals=index),
    }
    # c is a fraction of the nuclear norm; s are singular values (both up to rounding)
    spec["cumulative_mean"] = ArraySpec("float", cube, minimum=0, maximum=1 + 1e-6)
    spec["singular_values_mean"] = ArraySpec("float", cube, minimum=-1e-6)
    for name in ("cumulative", "singular_values"):
        spec[f"{name}_std"] = ArraySpec("float", cube, minimum=0)
        spec[f"{name}_m2"] = ArraySpec("float", cube, minimum=0)
    for name in SUMMARY_NAMES:
        spec[f"{name}_mean"] = ArraySpec("float", plane)
        spec[f"{name}_std"] = ArraySpec("float", plane, minimum=0, required=False)
    spec["summaries_m2"] = ArraySpec("float", (*plane, len(SUMMARY_NAMES)), minimum=0)
    return spec


class StatsCodec:
    """How a spectrum run's checkpoint stores :class:`SpectrumStats` (one per rank): under
    spectrum.npz's names, each rank's checked against the shape its ``cumulative_mean``
    gives and the run's n, every rank with the same heatmap index."""

    def encode(self, part: SpectrumStats) -> dict[str, np.ndarray]:
        return stats_arrays(part)

    def decode(
        self, path: Path, split: list[dict[str, np.ndarray]], identity: dict[str, Any]
    ) -> list[SpectrumStats]:
        first = split[0].get("cumulative_mean")
        if first is None or first.ndim != 3:
            raise LowrankError(f"'{path}' lacks a [layers, heads, n] cumulative_mean")
        layers, heads, n = first.shape
        seq_len = identity.get("seq_len")
        if isinstance(seq_len, int) and n != seq_len:
            raise LowrankError(f"'{path}': cumulative_mean has n = {n}, the run has {seq_len}")
        index = None
        for rank, arrays in enumerate(split):
            where = path if len(split) == 1 else Path(f"{path}, rank {rank},")
            check_arrays(where, arrays, stats_array_spec(layers, heads, n, index=index))
            index = int(arrays["heatmap_index"])
        return [stats_from_arrays(arrays) for arrays in split]

    def count(self, part: SpectrumStats) -> int:
        return part.count


CODEC = StatsCodec()
