"""The run format of the verify family: run.json, verify.npz and the verify.csv/verify.json
tables of ``lowrank verify``.

One :class:`~lowrank.runs.formats.RunFormat` record, :data:`FORMAT`, says it all: the format
name and version, the files, the run.json schema and the array spec, read and written by the
shared code of :mod:`lowrank.runs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from lowrank.families.verify import FAMILY
from lowrank.runs.arrays import ArraySpec, length
from lowrank.runs.formats import RunFormat
from lowrank.runs.schema import AnalysisMeta, Count, Open, Positive


class BaselineRecord(Open):
    """One trivial P~ (zero or uniform attention) on one event, matrices, vectors and eps
    (run.json ``baselines``, format 3)."""

    statement: str
    source: str
    vectors: str
    baseline: str
    eps: float
    failures: Count
    trials: Count
    rate: Annotated[float, Field(ge=0, le=1)]
    ci_low: Annotated[float, Field(ge=0, le=1)]
    ci_high: Annotated[float, Field(ge=0, le=1)]
    below_bound: dict[str, bool]


class VerifyMeta(AnalysisMeta):
    """``lowrank verify``."""

    seq_len: Positive
    eps: Annotated[list[float], Field(min_length=1)]
    k: Annotated[list[Positive], Field(min_length=1)]
    baselines: list[BaselineRecord] | None = None  # format 3


def verify_array_spec(
    meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
) -> dict[str, ArraySpec]:
    """verify.npz: ``eps`` ``[E]`` and ``ks`` ``[K]`` (= run.json ``eps`` and ``k``), the
    series names ``[S]`` (``sources`` in format 1), counts ``failures``, ``trials``,
    ``clusters`` ``[S, E, K]`` (>= 0), and ``rate``, ``ci_low``, ``ci_high``, ``bound``,
    ``exact``, ``n_eff``, ``p_holm`` ``[S, E, K]``: NaN where a row has no such value (no
    bound proven, no exact probability, not tested). Format 3 adds the trivial P~:
    ``baselines`` [2] (zero, uniform) and ``baseline_rate``, ``baseline_ci_low``,
    ``baseline_ci_high`` [2, S, E] in [0, 1], NaN where a series has none (JL rows)."""
    eps, ks = list(meta["eps"]), list(meta["k"])
    names = "series" if "series" in arrays or "sources" not in arrays else "sources"
    s = length(arrays, names)
    cube = (s, len(eps), len(ks))
    spec = {
        "eps": ArraySpec("float", (len(eps),), equals=eps),
        "ks": ArraySpec("int", (len(ks),), equals=ks),
        names: ArraySpec("str", (None,)),
        "statement": ArraySpec("str", (s,), required=False),
    }
    for name in ("failures", "trials", "clusters"):
        spec[name] = ArraySpec("int", cube, minimum=0, required=name != "clusters")
    for name in ("rate", "ci_low", "ci_high", "bound", "exact", "n_eff", "p_holm"):
        required = name in ("rate", "ci_low", "ci_high", "bound")
        spec[name] = ArraySpec("float", cube, finite=False, required=required)
    trivial = int(meta.get("format_version", 1)) >= 3
    spec["baselines"] = ArraySpec("str", (2,), required=trivial)
    for name in ("baseline_rate", "baseline_ci_low", "baseline_ci_high"):
        spec[name] = ArraySpec(
            "float", (2, s, len(eps)), finite=False, minimum=0.0, maximum=1.0, required=trivial
        )
    return spec


FORMAT = RunFormat(
    name=FAMILY.format,
    version=3,
    npz="verify.npz",
    schema=VerifyMeta,
    arrays=verify_array_spec,
    files=("verify.csv", "verify.json"),
)
