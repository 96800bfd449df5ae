"""What a ``lowrank scaling`` run writes (format 2): the arrays of scaling.npz and run.json.

Pure assembly: the measurements (:class:`Measured`), the verdicts
(:mod:`lowrank.families.scaling.verdicts`) and the position control
(:mod:`lowrank.families.scaling.control`) become the arrays that
:class:`~lowrank.families.scaling.result.ScalingResult` documents and the run.json fields
that :mod:`lowrank.families.scaling.format` checks.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from lowrank.families.scaling.collect import memory_record
from lowrank.families.scaling.control import ControlPlan, control_arrays, control_record
from lowrank.families.scaling.format import FORMAT
from lowrank.families.scaling.measures import ALL_MEASURES, C_MEASURES, MEASURES
from lowrank.families.scaling.verdicts import GroupVerdict, per_document, verdict_arrays
from lowrank.maths.curves import MODELS
from lowrank.maths.growth import AIC_MARGIN, HELDOUT_TOLERANCE, LEVEL, MIN_LENGTHS, SUPPORT

if TYPE_CHECKING:
    from lowrank.families.scaling.collect import LengthResult
    from lowrank.families.scaling.measures import DocumentWindows
    from lowrank.families.scaling.workflow import ScalingSpec
    from lowrank.inputs.prepared import Prepared

VerdictRows = dict[str, list[GroupVerdict]]


@dataclass(frozen=True)
class Measured:
    """What the model gave, before any fit.

    Attributes:
        results: one per n, ascending.
        windows: every window analysed (W of them).
        used: the first ``used`` windows, analysed at every n, make the fits.
        clusters: (used,) 0-based document of each of those windows.
        plan: the position control; base, shifted: (used, L, H, 7) its measures at the
            model's own and at shifted position ids (None where it was skipped).
        head_dim: d, the bound of the output rank.
    """

    results: list[LengthResult]
    windows: DocumentWindows
    used: int
    clusters: np.ndarray
    plan: ControlPlan
    base: np.ndarray | None
    shifted: np.ndarray | None
    head_dim: int

    @property
    def documents(self) -> int:
        """Documents behind the fits (each with its windows)."""
        return int(self.clusters.max()) + 1


def _groups(layers: int) -> list[str]:
    return [f"layer {i + 1}" for i in range(layers)] + ["model"]


def scaling_arrays(
    measured: Measured, found: VerdictRows, per_window: dict[str, np.ndarray], spec: ScalingSpec
) -> dict[str, np.ndarray]:
    """The arrays of scaling.npz (documented in :class:`ScalingResult`).

    Args:
        per_window: measure -> (S, used, L, H), every measure of :data:`ALL_MEASURES`.
    """
    layers = per_window[MEASURES[0]].shape[2]
    arrays: dict[str, np.ndarray] = {
        "ns": np.array(spec.ns),
        "groups": np.array(_groups(layers)),
        "measures": np.array(MEASURES),
        "c_measures": np.array(C_MEASURES),
        "growth_models": np.array(MODELS),
        "documents": measured.windows.documents,
        "window_starts": measured.windows.starts,
        "sequences_used": np.array([r.used for r in measured.results]),
        "fit_documents": np.array(measured.documents),
        "fit_windows": np.array(measured.used),
        "tau": np.array(spec.tau),
        "fixed_index": np.array(spec.index),
        "bootstrap": np.array(spec.bootstrap),
        "verdict_bootstrap": np.array(spec.verdict_bootstrap),
        "head_dim": np.array(measured.head_dim),
    }
    for m in ALL_MEASURES:
        arrays[m] = per_window[m]  # (S, used, L, H)
    for m in C_MEASURES:
        values = per_document(per_window[m], measured.clusters)  # (S, D, L, H)
        arrays[f"{m}_mean"] = np.concatenate(
            [values.mean(axis=(1, 3)).T, values.mean(axis=(1, 2, 3))[None]]
        )  # (G, S)
    for m, rows in found.items():
        arrays |= verdict_arrays(m, rows)
    if measured.base is not None and measured.shifted is not None:
        arrays |= control_arrays(measured.base, measured.shifted)
        arrays["position_control_n"] = np.array(measured.plan.n)
        arrays["position_control_shift"] = np.array(measured.plan.shift)
    return arrays


def verdict_rule(spec: ScalingSpec, head_dim: int) -> dict[str, Any]:
    """run.json's ``verdict_rule``: the models, the cuts and the resampling."""
    return {
        "models": {
            "log": "a + b ln n",
            "power": "a n^beta",
            "saturating": "C - c n^-gamma (c, gamma > 0; C >= the largest mean, fitted)",
        },
        "saturating_bound": {"output_rank": head_dim, "other measures": None},
        "fitted_to": "per-n means over documents (each the mean of its windows) and heads, "
        "and layers for 'model'",
        "fits_when": f"fitted without the largest n it predicts it within {HELDOUT_TOLERANCE:g} "
        f"(relative) and the {100 * LEVEL:g}% bootstrap interval of its curvature q (quadratic "
        "term of its linearising scale in ln n) contains 0",
        "named_when": f"the only model that fits, or AICc (AIC where AICc is undefined) lower "
        f"by >= {AIC_MARGIN:g} than every "
        f"other model that fits in >= {SUPPORT:.0%} of resamples; else 'cannot tell'; none: "
        "'none fits'",
        "min_lengths": MIN_LENGTHS,
        "bootstrap": spec.bootstrap,
        "verdict_bootstrap": spec.verdict_bootstrap,
        "bootstrap_seed": spec.bootstrap_seed,
        "resampled": "documents, with replacement, each with all its windows (the same "
        "documents at every n)",
        "interval_level": LEVEL,
    }


def summary_meta(
    ctx: Any, prep: Prepared, measured: Measured, found: VerdictRows, policy: dict[str, Any]
) -> dict[str, Any]:
    """run.json of the scaling run (``ctx``: the workflow's invocation record)."""
    spec = ctx.spec
    base = prep.meta(replace(ctx.config, seq_len=max(spec.ns)))
    for key in ("seq_len", "batch_size", "sequence_policy"):
        base.pop(key, None)
    results, windows = measured.results, measured.windows
    groups = _groups(prep.loaded.num_layers)
    control = control_record(measured.plan, _control_arrays(measured), measured.clusters, groups)
    return {
        **FORMAT.header(),
        "command": ctx.provenance.command,
        "created": ctx.provenance.created,
        "identity": ctx.identity,
        "config": ctx.config.to_json() | {"scaling": asdict(spec)},
        **base,
        "causal": bool(prep.loaded.causal),
        "ns": list(spec.ns),
        "runs": {str(r.n): f"n{r.n}" for r in results},
        "sequence_policy": policy,
        "window_policy": windows.policy,
        "documents": {
            "qualified": windows.qualified,
            "analysed": len(np.unique(windows.documents)),
            "windows": len(windows.documents),
            "longest_tokens": windows.longest,
            "used_per_n": {str(r.n): r.used for r in results},
            "fit": measured.documents,
            "fit_windows": measured.used,
        },
        "tau": spec.tau,
        "fixed_index": spec.index,
        "head_dim": measured.head_dim,
        "precision": ctx.precision,
        "verdict_rule": verdict_rule(spec, measured.head_dim),
        "verdicts": {m: {v.group: v.record() for v in rows} for m, rows in found.items()},
        "position_control": control,
        "lengths": {str(r.n): _length_record(r) for r in results},
        "versions": ctx.provenance.versions,
        "elapsed_seconds": round(time.perf_counter() - ctx.started, 3),
    }


def _control_arrays(measured: Measured) -> dict[str, np.ndarray]:
    if measured.base is None or measured.shifted is None:
        return {}
    return control_arrays(measured.base, measured.shifted)


def _length_record(r: LengthResult) -> dict[str, Any]:
    return {
        "seconds": round(r.seconds, 3),
        "documents": r.used,
        "stopped_early": r.stopped_early,
        "half_width": r.half_width,
        **memory_record(r),
    }
