"""The run format of the scaling family: run.json and scaling.npz of ``lowrank scaling`` (each
``n<n>`` folder is a spectrum run).

One :class:`~lowrank.runs.formats.RunFormat` record, :data:`FORMAT`, says it all: the format
name and version, the files, the run.json schema and the array spec, read and written by the
shared code of :mod:`lowrank.runs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
from pydantic import Field

from lowrank.families.scaling import FAMILY
from lowrank.runs.arrays import ArraySpec, names, scalar
from lowrank.runs.formats import RunFormat
from lowrank.runs.schema import AnalysisMeta, Positive


class ScalingMeta(AnalysisMeta):
    """``lowrank scaling`` (its top folder; each ``n<n>`` is a spectrum run)."""

    ns: Annotated[list[Positive], Field(min_length=1)]


def scaling_array_spec(
    meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
) -> dict[str, ArraySpec]:
    """scaling.npz: ``ns`` ``[S]`` (= run.json ``ns``), ``groups`` ``[layers + 1]``, per
    measure (``measures`` and ``c_measures``) the per-document values ``[S, D, layers,
    heads]`` (D = ``fit_documents``; finite) and ``<measure>_mean`` ``[G, S]`` (finite); the
    fits of each measure (``_interval`` ``[G, S, 2]``, ``_log_params``, ``_power_params``,
    ``_heldout_error``, ``_beta_interval`` ``[G, 2]``, ``_delta_aic``, ``_aic_support``,
    ``_heldout_support`` ``[G]``) may hold NaN or inf (a fit that failed, no resamples),
    and ``_verdict`` ``[G]`` names the verdict."""
    layers, heads = int(meta["num_layers"]), int(meta["num_heads"])
    s, g = len(meta["ns"]), layers + 1
    docs = scalar(arrays, "fit_documents")
    spec = {
        "ns": ArraySpec("int", (s,), minimum=1, equals=list(meta["ns"])),
        "groups": ArraySpec("str", (g,)),
        "fit_documents": ArraySpec("int", (), minimum=0),
        "measures": ArraySpec("str", (None,)),
        "c_measures": ArraySpec("str", (None,), required=False),
        "tau": ArraySpec("float", (), required=False),
    }
    fits = {"_interval": (g, s, 2), "_log_params": (g, 2), "_power_params": (g, 2)}
    fits |= {"_heldout_error": (g, 2), "_beta_interval": (g, 2), "_delta_aic": (g,)}
    fits |= {"_aic_support": (g,), "_heldout_support": (g,)}
    measures = names(arrays, "measures", ())
    for m in [*measures, *names(arrays, "c_measures", ())]:
        spec[m] = ArraySpec("float", (s, docs, layers, heads))
        spec[f"{m}_mean"] = ArraySpec("float", (g, s))
    for m in measures:
        for end, shape in fits.items():
            spec[f"{m}{end}"] = ArraySpec("float", shape, finite=False)
        spec[f"{m}_verdict"] = ArraySpec("str", (g,))
    return spec


FORMAT = RunFormat(
    name=FAMILY.format,
    version=1,
    npz="scaling.npz",
    schema=ScalingMeta,
    arrays=scaling_array_spec,
)
