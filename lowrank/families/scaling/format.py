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
    window_policy: dict[str, Any] | None = None  # format 2: where the windows start
    position_control: dict[str, Any] | None = None  # format 2: the position-shift control


def scaling_array_spec(
    meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray]
) -> dict[str, ArraySpec]:
    """scaling.npz: ``ns`` ``[S]`` (= run.json ``ns``), ``groups`` ``[layers + 1]``, per
    measure (``measures`` and ``c_measures``) the per-window values ``[S, W, layers, heads]``
    (finite) and ``<measure>_mean`` ``[G, S]`` (finite), and the fits of each fitted measure,
    which may hold NaN or inf (a fit that failed, no verdict). Format 1 (two models) and
    format 2 (three models, windows, the position control) differ in the fits: see
    :func:`_fits_v1` and :func:`_fits_v2`."""
    layers, heads = int(meta["num_layers"]), int(meta["num_heads"])
    s, g = len(meta["ns"]), layers + 1
    version = int(meta.get("format_version", 1))
    rows = scalar(arrays, "fit_documents" if version < 2 else "fit_windows")
    spec = {
        "ns": ArraySpec("int", (s,), minimum=1, equals=list(meta["ns"])),
        "groups": ArraySpec("str", (g,)),
        "fit_documents": ArraySpec("int", (), minimum=0),
        "measures": ArraySpec("str", (None,)),
        "c_measures": ArraySpec("str", (None,), required=False),
        "tau": ArraySpec("float", (), required=False),
    }
    measures = names(arrays, "measures", ())
    for m in [*measures, *names(arrays, "c_measures", ())]:
        spec[m] = ArraySpec("float", (s, rows, layers, heads))
        spec[f"{m}_mean"] = ArraySpec("float", (g, s))
    for m in measures:
        spec |= _fits_v1(m, g, s) if version < 2 else _fits_v2(m, g, s)
    if version >= 2:
        spec |= _windows_v2(arrays, rows, layers, heads)
    return spec


def _fits_v1(m: str, g: int, s: int) -> dict[str, ArraySpec]:
    """Format 1: ``_interval`` ``[G, S, 2]``, ``_log_params``, ``_power_params``,
    ``_heldout_error``, ``_beta_interval`` ``[G, 2]``, ``_delta_aic``, ``_aic_support``,
    ``_heldout_support`` ``[G]`` and ``_verdict`` ``[G]``."""
    fits = {"_interval": (g, s, 2), "_log_params": (g, 2), "_power_params": (g, 2)}
    fits |= {"_heldout_error": (g, 2), "_beta_interval": (g, 2), "_delta_aic": (g,)}
    fits |= {"_aic_support": (g,), "_heldout_support": (g,)}
    spec = {f"{m}{end}": ArraySpec("float", shape, finite=False) for end, shape in fits.items()}
    spec[f"{m}_verdict"] = ArraySpec("str", (g,))
    return spec


def _fits_v2(m: str, g: int, s: int) -> dict[str, ArraySpec]:
    """Format 2 (K = 3 models of ``growth_models``): ``_interval`` ``[G, S, 2]``,
    ``_log_params``, ``_power_params``, ``_beta_interval`` ``[G, 2]``,
    ``_saturating_params`` ``[G, 3]``, ``_heldout_relative``, ``_heldout_within``,
    ``_curvature``, ``_criterion`` ``[G, K]``, ``_curvature_interval`` ``[G, K, 2]``,
    ``_param_interval`` ``[G, K, 3, 2]``, ``_fits`` ``[G, K]`` (bool), ``_label`` and
    ``_verdict`` ``[G]``."""
    k = 3
    fits = {"_interval": (g, s, 2), "_log_params": (g, 2), "_power_params": (g, 2)}
    fits |= {"_beta_interval": (g, 2), "_saturating_params": (g, 3)}
    fits |= {f"_{x}": (g, k) for x in ("heldout_relative", "heldout_within", "curvature")}
    fits |= {"_criterion": (g, k), "_curvature_interval": (g, k, 2)}
    fits |= {"_param_interval": (g, k, 3, 2)}
    spec = {f"{m}{end}": ArraySpec("float", shape, finite=False) for end, shape in fits.items()}
    spec[f"{m}_heldout_within"] = ArraySpec("float", (g, k), False, minimum=0, maximum=1)
    spec[f"{m}_fits"] = ArraySpec("bool", (g, k))
    spec[f"{m}_label"] = ArraySpec("str", (g,))
    spec[f"{m}_verdict"] = ArraySpec("str", (g,))
    return spec


def _windows_v2(
    arrays: Mapping[str, np.ndarray], rows: int | None, layers: int, heads: int
) -> dict[str, ArraySpec]:
    """Format 2: ``growth_models`` ``[3]``, ``documents`` and ``window_starts`` ``[W_all]``,
    ``fit_windows``, ``bootstrap``, ``verdict_bootstrap``, ``head_dim``, and, where the
    position control ran, ``position_control_<m>`` ``[2, W, layers, heads]`` (base,
    shifted) with ``position_control_n`` and ``position_control_shift``."""
    spec = {
        "growth_models": ArraySpec("str", (3,)),
        "documents": ArraySpec("int", (None,), minimum=0),
        "window_starts": ArraySpec("int", (None,), minimum=0),
        "fit_windows": ArraySpec("int", (), minimum=1),
        "bootstrap": ArraySpec("int", (), minimum=0),
        "verdict_bootstrap": ArraySpec("int", (), minimum=0),
        "head_dim": ArraySpec("int", (), minimum=1),
        "position_control_n": ArraySpec("int", (), minimum=1, required=False),
        "position_control_shift": ArraySpec("int", (), minimum=1, required=False),
    }
    for m in names(arrays, "measures", ()):
        spec[f"position_control_{m}"] = ArraySpec("float", (2, rows, layers, heads), required=False)
    return spec


FORMAT = RunFormat(
    name=FAMILY.format,
    version=2,
    npz="scaling.npz",
    schema=ScalingMeta,
    arrays=scaling_array_spec,
)
