"""The run format of the compare family: run.json and compare.npz of ``lowrank compare``.

One :class:`~lowrank.runs.formats.RunFormat` record, :data:`FORMAT`, says it all: the format
name and version, the files, the run.json schema and the array spec, read and written by the
shared code of :mod:`lowrank.runs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import model_validator

from lowrank.families.compare import FAMILY
from lowrank.runs.arrays import ArraySpec, length, names
from lowrank.runs.formats import RunFormat
from lowrank.runs.schema import AnalysisMeta, Count, Open, Positive

VERSION = 2
"""Format 2 (issue 25) adds ``output_floor``, ``per_sequence_error``, ``entropy_per_sequence``
and ``finding`` as a record (text, metric, resampling); format 1 folders still load, with
their finding as text and the verdicts' intervals from their means (layers only)."""


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
    finding: str | dict[str, Any] | None = None

    @model_validator(mode="after")
    def _finding_of_its_version(self) -> CompareMeta:
        """A finding as text belongs to format 1, a record to format 2 and later."""
        if self.format_version >= 2 and not isinstance(self.finding, dict):
            raise ValueError(f"finding must be an object in format version {self.format_version}")
        if self.format_version < 2 and isinstance(self.finding, dict):
            raise ValueError("finding is a format-2 record, but format_version is 1")
        return self


def compare_array_spec(
    meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
) -> dict[str, ArraySpec]:
    """compare.npz: ``families`` ``[F]``, ``budgets`` ``[B]`` (1..n), per metric
    ``<metric>_{mean,std,m2}`` ``[F, B, layers, heads]`` (NaN where a family does not apply,
    e.g. to a causal model), ``attended_mean``/``coverage_mean`` alike, per-head statistics
    ``<stat>_{mean,std}`` ``[layers, heads]`` and ``c_at_budget_*`` ``[B, layers, heads]``
    (finite), ``winner``/``winner_from_q_k`` ``[B, layers, heads]`` in -1..F-1 (-1: none),
    ``applicable`` ``[F]``, ``input_ids`` ``[N, n]``; from format 2 (required there):
    ``output_floor`` ``[B, layers, heads]`` in [0, 1], ``per_sequence_error``
    ``[N, F, B, layers, heads, 2]`` (NaN where a family does not apply),
    ``entropy_per_sequence`` ``[N, layers, heads]``."""
    n, plane = int(meta["seq_len"]), (int(meta["num_layers"]), int(meta["num_heads"]))
    f, b = length(arrays, "families"), length(arrays, "budgets")
    table = (f, b, *plane)
    since2 = int(meta.get("format_version", 1)) >= 2
    seqs = meta["num_sequences"]
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
        "output_floor": ArraySpec("float", (b, *plane), minimum=0, maximum=1, required=since2),
        "output_floor_std": ArraySpec("float", (b, *plane), minimum=0, required=False),
        "per_sequence_error": ArraySpec(
            "float", (seqs, f, b, *plane, 2), finite=False, required=since2
        ),
        "per_sequence_metrics": ArraySpec("str", (2,), required=False),
        "entropy_per_sequence": ArraySpec("float", (seqs, *plane), minimum=0, required=since2),
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
    version=VERSION,
    npz="compare.npz",
    schema=CompareMeta,
    arrays=compare_array_spec,
)
