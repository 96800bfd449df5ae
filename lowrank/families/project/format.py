"""The run format of the project family: run.json and projection.npz of ``lowrank project``.

One :class:`~lowrank.runs.formats.RunFormat` record, :data:`FORMAT`, says it all: the format
name and version, the files, the run.json schema and the array spec, read and written by the
shared code of :mod:`lowrank.runs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import Field

from lowrank.families.project import FAMILY
from lowrank.runs.arrays import ArraySpec, length
from lowrank.runs.formats import RunFormat
from lowrank.runs.schema import AnalysisMeta, Count, Open, Positive


class EffectRow(Open):
    """One row of a projection run's model-level effect."""

    method: str
    sharing: str
    k: Positive | None  # None: a baseline, the same at every k
    relative_error: float  # NaN allowed: undefined for that configuration
    cosine: float
    # format 3: intervals inside the range, [None, None] below 3 sequences
    relative_error_ci: list[float | None] | None = None
    cosine_ci: list[float | None] | None = None


class BaselineTest(Open):  # format 3: ``ci`` is [None, None] below 3 sequences
    """One paired test of a projection run: a method against a trivial baseline, at one k
    (what the verdicts of the report and ``summary()`` are read from)."""

    kind: str
    row: str
    metric: str
    k: Positive
    baseline: str
    mean_diff: float  # NaN allowed: one sequence
    significant: bool


class ModelEffect(Open):
    mode: str | None = None
    results: list[EffectRow] = Field(default_factory=list)


class ProjectionMeta(AnalysisMeta):
    """``lowrank project``."""

    seq_len: Positive
    num_sequences: Count
    heatmap_k: Positive
    model_effect: ModelEffect | None = None
    baseline_tests: list[BaselineTest] | None = None


def projection_array_spec(
    meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
) -> dict[str, ArraySpec]:
    """projection.npz: ``ks`` ``[K]`` (1..n), row names, ``input_ids`` ``[N, n]``, and per
    row, metric and statistic ``theorem{1,2}_<row>[_<metric>]_{mean,median,p95}``
    ``[K, layers, heads]`` with the samples ``..._samples`` ``[K, layers, heads, S]``. The
    statistics may hold NaN: a row that does not apply (e.g. to a causal model) is NaN;
    the others are >= 0 (errors are ratios of norms) or in [-1, 1] (cosines)."""
    n, cube = int(meta["seq_len"]), (int(meta["num_layers"]), int(meta["num_heads"]))
    k = length(arrays, "ks")
    spec = {
        "ks": ArraySpec("int", (None,), minimum=1, maximum=n),
        "methods": ArraySpec("str", (None,)),
        "rows_theorem1": ArraySpec("str", (None,), required=False),
        "rows_theorem2": ArraySpec("str", (None,), required=False),
        "input_ids": ArraySpec("int", (meta["num_sequences"], n), minimum=0, required=False),
    }
    for name in arrays:
        if name.startswith(("theorem1_", "theorem2_")):
            samples = name.endswith("_samples")
            shape = (k, *cube, None) if samples else (k, *cube)
            if "_cosine" in name:  # a cosine lies in [-1, 1]; errors are norms, >= 0
                low, high = -1 - 1e-6, 1 + 1e-6
            else:
                low, high = 0.0, None
            spec[name] = ArraySpec("float", shape, finite=False, minimum=low, maximum=high)
    return spec


FORMAT = RunFormat(
    name=FAMILY.format,
    version=3,
    npz="projection.npz",
    schema=ProjectionMeta,
    arrays=projection_array_spec,
)
