"""The run format of the spectrum family: run.json and spectrum.npz of ``lowrank spectrum``
(also ``merge`` and each ``n<n>`` of ``scaling``).

One :class:`~lowrank.runs.formats.RunFormat` record, :data:`FORMAT`, says it all: the format
name and version, the files, the run.json schema and the array spec, read and written by the
shared code of :mod:`lowrank.runs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from lowrank.families.spectrum import FAMILY
from lowrank.families.spectrum.stats import stats_array_spec
from lowrank.runs.arrays import ArraySpec, scalar
from lowrank.runs.formats import RunFormat
from lowrank.runs.schema import AnalysisMeta, Count, Open, Positive, Seconds


class Shard(Open):
    """The i-th of N contiguous parts of the sequences (``lowrank spectrum --shard i/N``)."""

    index: Positive
    count: Positive

    @model_validator(mode="after")
    def _inside(self) -> Shard:
        if self.index > self.count:
            raise ValueError(f"shard index {self.index} is above its count {self.count}")
        return self


class Precision(Open):
    """``--precision``: the target half-width and the one reached (inf: too few sequences)."""

    target: float
    achieved_half_width: float | None


class RankShare(Open):
    """What one rank of a torchrun launch did."""

    rank: Count
    host: str
    device: str
    num_sequences: Count
    batches: Count
    compute_seconds: float


class SpectrumMeta(AnalysisMeta):
    """``lowrank spectrum`` (and ``merge``, and each ``n<n>`` folder of ``scaling``)."""

    seq_len: Positive
    num_sequences: Count | None = None
    heatmap_index: Positive | None = None
    shard: Shard | None = None
    sequence_policy: dict[str, Any] = Field(default_factory=dict)
    analysis_seconds: Seconds | None = None
    precision: Precision | None = None
    world_size: Positive | None = None
    ranks: list[RankShare] | None = None

    @model_validator(mode="after")
    def _index_inside(self) -> SpectrumMeta:
        if self.heatmap_index is not None and self.heatmap_index > self.seq_len:
            raise ValueError(f"heatmap_index {self.heatmap_index} is above seq_len {self.seq_len}")
        return self


def spectrum_array_spec(
    meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
) -> dict[str, ArraySpec]:
    """spectrum.npz: the statistics, ``input_ids`` ``[N, n]`` (N = num_sequences, tokens
    >= 0), when sequences are padded ``attention_mask`` ``[N, n]`` of 0/1, and with
    ``keep_per_sequence`` ``singular_values_per_sequence`` ``[N, layers, heads, n]``."""
    n = int(meta["seq_len"])
    count = meta.get("num_sequences")
    if count is None:
        count = scalar(arrays, "num_sequences")
    spec = stats_array_spec(
        int(meta["num_layers"]), int(meta["num_heads"]), n, count, meta.get("heatmap_index")
    )
    spec["input_ids"] = ArraySpec("int", (count, n), minimum=0)
    spec["attention_mask"] = ArraySpec("mask", (count, n), minimum=0, maximum=1, required=False)
    # keep_per_sequence: every sequence's singular values, largest first, zero-padded to n
    layers, heads = int(meta["num_layers"]), int(meta["num_heads"])
    spec["singular_values_per_sequence"] = ArraySpec(
        "float", (count, layers, heads, n), minimum=-1e-6, required=False
    )
    return spec


FORMAT = RunFormat(
    name=FAMILY.format,
    version=1,
    npz="spectrum.npz",
    schema=SpectrumMeta,
    arrays=spectrum_array_spec,
)
