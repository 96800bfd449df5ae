"""The run format of the compare family: run.json and compare.npz of ``lowrank compare``.

One :class:`~lowrank.runs.formats.RunFormat` record, :data:`FORMAT`, says it all: the format
name and version, the files, the run.json schema and the array spec, read and written by the
shared code of :mod:`lowrank.runs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lowrank.families.compare import FAMILY
from lowrank.runs.arrays import ArraySpec, length, names
from lowrank.runs.formats import RunFormat
from lowrank.runs.schema import AnalysisMeta, Count, Open, Positive


class CompareSettings(Open):
    seed: Count


class CompareMeta(AnalysisMeta):
    """``lowrank compare``."""

    seq_len: Positive
    num_sequences: Count
    compare: CompareSettings
    focus_budget: Positive
    winner_metric: str
    oracles: list[str] | None = None
    finding: str | None = None


def compare_array_spec(
    meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
) -> dict[str, ArraySpec]:
    """compare.npz: ``families`` ``[F]``, ``budgets`` ``[B]`` (1..n), per metric
    ``<metric>_{mean,std,m2}`` ``[F, B, layers, heads]`` (NaN where a family does not apply,
    e.g. to a causal model), ``attended_mean``/``coverage_mean`` alike, per-head statistics
    ``<stat>_{mean,std}`` ``[layers, heads]`` and ``c_at_budget_*`` ``[B, layers, heads]``
    (finite), ``winner``/``winner_from_q_k`` ``[B, layers, heads]`` in -1..F-1 (-1: none),
    ``applicable`` ``[F]``, ``input_ids`` ``[N, n]``."""
    n, plane = int(meta["seq_len"]), (int(meta["num_layers"]), int(meta["num_heads"]))
    f, b = length(arrays, "families"), length(arrays, "budgets")
    table = (f, b, *plane)
    spec = {
        "families": ArraySpec("str", (None,)),
        "budgets": ArraySpec("int", (None,), minimum=1, maximum=n),
        "metrics": ArraySpec("str", (None,), required=False),
        "head_stats": ArraySpec("str", (None,), required=False),
        "num_sequences": ArraySpec("int", (), minimum=0, required=False),
        "applicable": ArraySpec("bool", (f,), required=False),
        "input_ids": ArraySpec("int", (meta["num_sequences"], n), minimum=0, required=False),
        "attended_mean": ArraySpec("float", table, finite=False, required=False),
        "coverage_mean": ArraySpec("float", table, finite=False, required=False),
        "c_at_budget_mean": ArraySpec("float", (b, *plane)),
        "c_at_budget_std": ArraySpec("float", (b, *plane), minimum=0, required=False),
    }
    top = None if f is None else f - 1
    for name in ("winner", "winner_from_q_k"):
        spec[name] = ArraySpec("int", (b, *plane), minimum=-1, maximum=top)
    metrics = names(arrays, "metrics", ("probs_error", "output_error"))
    for metric in metrics:
        for stat in ("mean", "std", "m2"):
            required = stat != "m2" and metric in ("probs_error", "output_error")
            spec[f"{metric}_{stat}"] = ArraySpec("float", table, finite=False, required=required)
    for stat in names(arrays, "head_stats", ("entropy", "sink_mass", "effective_rank")):
        spec[f"{stat}_mean"] = ArraySpec("float", plane)
        spec[f"{stat}_std"] = ArraySpec("float", plane, minimum=0, required=False)
    return spec


FORMAT = RunFormat(
    name=FAMILY.format,
    version=1,
    npz="compare.npz",
    schema=CompareMeta,
    arrays=compare_array_spec,
)
