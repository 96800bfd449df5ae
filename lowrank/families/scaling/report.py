"""What ``lowrank scaling`` prints, from the run folder alone (formats 1 and 2).

Format 2: per rank measure the means at every n and the verdict per layer and for the model;
under each group one line per model with its margin to every cut (held-out error against the
10% cut, the curvature interval against 0, the criterion against the best), and the position
control beside the fits. Format 1 folders (two models) print their stored verdicts, marked as
the old rule's.
"""

from __future__ import annotations

import math
import textwrap
from typing import TYPE_CHECKING, Any

import numpy as np

from lowrank.families.scaling.control import control_line
from lowrank.families.scaling.measures import C_MEASURES, MEASURE_LABELS, MEASURES
from lowrank.maths.growth import HELDOUT_TOLERANCE, MIN_LENGTHS, margin_text

if TYPE_CHECKING:
    from lowrank.families.scaling.result import ScalingResult

_MODEL_NAMES = {"log": "a + b ln n", "power": "a n^beta", "saturating": "C - c n^-gamma"}
_WIDTH = 100


def _wrap(text: str, indent: str, hanging: str) -> list[str]:
    return textwrap.wrap(text, _WIDTH, initial_indent=indent, subsequent_indent=hanging)


def measure_title(run: ScalingResult, m: str) -> str:
    """The measure's plain-text name (``tau`` replaced by the run's)."""
    return MEASURE_LABELS[m].replace("tau", f"{float(run.arrays['tau']):g}")


def header_v2(run: ScalingResult) -> str:
    """The paragraph above the tables: the models, the rule, what is resampled."""
    a, ns = run.arrays, run.ns
    docs, windows = int(a["fit_documents"]), int(a["fit_windows"])
    policy = run.config.get("window_policy") or {}
    drawn = policy.get("policy") == "matched"
    where = (
        f"{windows} windows at drawn offsets, the same start for every n"
        if drawn
        else f"{windows} windows at the documents' first tokens"
    )
    rule = (
        f"A model fits when, fitted without n = {ns[-1]}, it predicts it within "
        f"{HELDOUT_TOLERANCE:.0%} and the 95% bootstrap interval of its curvature q (the "
        "quadratic term of its linearising scale in ln n) contains 0; the verdict names the "
        "only model that fits, or the one AICc (AIC where AICc is undefined: five lengths and a "
        "fitted C) prefers by >= 2 in >= 95% of "
        f"{int(a['verdict_bootstrap'])} resamples; otherwise 'none fits' or 'cannot tell'."
        if len(ns) >= MIN_LENGTHS
        else f"No verdict: {len(ns)} lengths, a verdict needs {MIN_LENGTHS} (two parameters, a "
        "held-out n and a curvature test); the means and fits are shown."
    )
    cover = (
        "Each window starts at a random offset, so the bootstrap over documents covers the "
        "choice of windows."
        if drawn
        else "Windows at the first tokens: the intervals cover the choice of documents only."
    )
    return (
        f"Three models fitted to the mean over {docs} documents ({where}) and heads at n = "
        f"{', '.join(map(str, ns))}: a + b ln n (log), a n^beta (power) and C - c n^-gamma "
        f"(saturating; C <= d = {int(a['head_dim'])} for the output rank). {rule} Intervals: "
        f"95% percentile, {int(a['bootstrap'])} resamples of documents with all their windows. "
        f"{cover} One model, one corpus, {docs} documents."
    )


def model_line(run: ScalingResult, m: str, g: int, k: int) -> str:
    """``log (a + b ln n): held-out error 9.96% vs the 10% cut (0.04 points inside), within
    it in 100% of resamples; curvature q = -0.415 [-0.492, -0.343] excludes 0; AICc +12.8
    over the best -> does not fit``."""
    a = run.arrays
    model = str(a["growth_models"][k])
    held = float(a[f"{m}_heldout_relative"][g, k])
    within = float(a[f"{m}_heldout_within"][g, k])
    q = float(a[f"{m}_curvature"][g, k])
    lo, hi = (float(x) for x in a[f"{m}_curvature_interval"][g, k])
    crit = a[f"{m}_criterion"][g]
    delta = float(crit[k] - np.nanmin(crit)) if np.isfinite(crit).any() else math.nan
    held_text = margin_text(held, HELDOUT_TOLERANCE) if math.isfinite(held) else "no fit"
    if not (math.isfinite(lo) and math.isfinite(hi)):
        shape = "undefined"
    elif lo <= 0 <= hi and math.isfinite(q):
        shape = "contains 0"
    elif lo <= 0 <= hi:  # the fitted level C equals the largest mean: ln(C - y) is undefined
        shape = "undefined at the fitted C"
    else:
        shape = "excludes 0: residuals patterned"
    fits = "fits" if bool(a[f"{m}_fits"][g, k]) else "does not fit"
    record = (run.config.get("verdicts") or {}).get(m, {}).get(run.groups[g], {})
    criterion = record.get("criterion", "AIC")
    name = _MODEL_NAMES.get(model, model)
    if model == "saturating" and math.isfinite(a[f"{m}_saturating_params"][g, 0]):
        name += f", C = {a[f'{m}_saturating_params'][g, 0]:.4g}"
    return (
        f"{model} ({name}): held-out error {held_text}, within it in {within:.0%} of "
        f"resamples; curvature q = {q:.3g} [{lo:.3g}, {hi:.3g}] {shape}; {criterion} +{delta:.1f} "
        f"over the best -> {fits}"
    )


def _table(run: ScalingResult, m: str, value: str) -> list[str]:
    ns = run.ns
    return ["  group   " + "".join(f"{'n=' + str(n):>8}" for n in ns) + f"   {value}"]


def report_v2(run: ScalingResult) -> list[str]:
    """Format 2's printout (without the run folder lines)."""
    a = run.arrays
    lines = ["", textwrap.fill(header_v2(run), _WIDTH)]
    control = run.config.get("position_control") or {}
    for m in MEASURES:
        lines += ["", measure_title(run, m), *_table(run, m, "verdict")]
        for g, group in enumerate(run.groups):
            means = "".join(f"{v:>8.2f}" for v in a[f"{m}_mean"][g])
            lines.append(f"  {group:<8}{means}   {run.verdict(m, group)}")
            if str(a[f"{m}_label"][g]) == "no verdict":
                continue
            for k in range(len(a["growth_models"])):
                lines += _wrap(model_line(run, m, g, k), "      ", "          ")
        if control:
            lines += _wrap(control_line(control, m), "  ", "    ")
    lines += c_tables(run)
    return lines


def c_tables(run: ScalingResult) -> list[str]:
    """The c measures, mean over documents and heads (not fitted)."""
    lines: list[str] = []
    for m in C_MEASURES:
        index = int(run.arrays["fixed_index"])
        title = "c at index n/4" if m == "c_at_quarter" else f"c at index {index} (fixed)"
        lines += ["", f"{title} (mean over documents and heads; not fitted)", *_table(run, m, "")]
        for g, group in enumerate(run.groups):
            values = "".join(f"{v:>8.3f}" for v in run.arrays[f"{m}_mean"][g])
            lines.append(f"  {group:<8}{values}")
    return lines


def report_v1(run: ScalingResult) -> list[str]:
    """Format 1's printout: the stored verdicts of the two-model rule, marked as such."""
    ns = run.ns
    used = int(run.arrays["fit_documents"])
    draws = int(run.arrays["bootstrap"])
    header = (
        f"A format-1 run (read as written): fits of a + b ln n ('log') and a n^beta ('power') to "
        f"the mean over {used} documents (each cut to its first n tokens) at n = "
        f"{', '.join(map(str, ns))}, and the verdicts of format 1's rule (AIC and the held-out "
        f"n = {ns[-1]} agreeing in >= 95% of {draws} resamples, within 10%). That rule tests no "
        "saturating model, cannot answer 'none fits' and named verdicts from three lengths; "
        f"re-run with this lowrank for the current rule (>= {MIN_LENGTHS} lengths)."
    )
    lines = ["", textwrap.fill(header, _WIDTH)]
    for m in MEASURES:
        lines += ["", measure_title(run, m), *_table(run, m, "verdict (format 1 rule)")]
        for g, group in enumerate(run.groups):
            means = "".join(f"{v:>8.2f}" for v in run.arrays[f"{m}_mean"][g])
            lines.append(f"  {group:<8}{means}   {run.verdict(m, group)}")
            lines.append(f"  {'':<8}{'':>{8 * len(ns)}}   {evidence_v1(run, m, g)}")
    return lines + c_tables(run)


def evidence_v1(run: ScalingResult, m: str, g: int) -> str:
    """``AIC: power better by 35.1, 100% agree | held-out n = 512: power off by 5.3 (3%), log
    by 71, 100% agree`` (format 1)."""
    a = run.arrays
    delta = float(a[f"{m}_delta_aic"][g])
    better = "log" if delta > 0 else "power"
    log_err, power_err = a[f"{m}_heldout_error"][g]
    errs = {"log": log_err, "power": power_err}
    other = "power" if better == "log" else "log"
    last = abs(float(a[f"{m}_mean"][g, -1]))
    relative = errs[better] / last if last else float("inf")
    return (
        f"AIC: {better} better by {abs(delta):.1f}, {a[f'{m}_aic_support'][g]:.0%} agree | "
        f"held-out n = {run.ns[-1]}: {better} off by {errs[better]:.2g} ({relative:.0%}), "
        f"{other} by {errs[other]:.2g}, {a[f'{m}_heldout_support'][g]:.0%} agree"
    )


def summary_rows_v2(run: ScalingResult, m: str, g: int) -> dict[str, Any]:
    """The format-2 columns of :meth:`ScalingResult.summary` for one (measure, group)."""
    a = run.arrays
    lo, hi = a[f"{m}_beta_interval"][g]
    row: dict[str, Any] = {
        "verdict": run.verdict(m, run.groups[g]),
        "label": str(a[f"{m}_label"][g]),
        "b": float(a[f"{m}_log_params"][g, 1]),
        "beta": float(a[f"{m}_power_params"][g, 1]),
        "beta_lo": float(lo),
        "beta_hi": float(hi),
        "C": float(a[f"{m}_saturating_params"][g, 0]),
        "gamma": float(a[f"{m}_saturating_params"][g, 2]),
    }
    for k, model in enumerate(str(x) for x in a["growth_models"]):
        row[f"heldout_{model}"] = float(a[f"{m}_heldout_relative"][g, k])
        row[f"curvature_{model}"] = float(a[f"{m}_curvature"][g, k])
        row[f"fits_{model}"] = bool(a[f"{m}_fits"][g, k])
    return row
