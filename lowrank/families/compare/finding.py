"""The finding ``lowrank compare`` prints and records: what the verdicts of
:mod:`lowrank.families.compare.verdicts` say at the focus budget, in words, and what they
rest on (``run.json``'s ``finding`` record).
"""

from __future__ import annotations

import math
import textwrap
from typing import Any

from lowrank.families.compare.verdicts import MIN_CLUSTERS, TOLERANCE, resampling_units
from lowrank.runs.labels import corpus_name, model_name

METRIC_WORDS = {
    "probs_error": "attention error ||P~ - P||_F / ||P||_F",
    "output_error": "output error ||P~V - PV|| / ||PV||",
    "output_scaled_error": "scale-free output error min_a ||a P~V - PV|| / ||PV||",
    "output_cosine": "output cosine",
}
QUANTITY_WORDS = {
    ("stored", True): "stored numbers, indices counted",
    ("stored", False): "stored numbers, values only",
    ("scores", True): "scores computed",
    ("scores", False): "scores computed",
}
WIDTH = 100


def _interval(record: dict[str, Any], digits: int = 2) -> str:
    """`` [low, high] (95% bootstrap, resampling ...)`` or ``(no interval: why)``."""
    low, high = record.get("low"), record.get("high")
    resampling = record["resampling"]
    if low is None or not math.isfinite(low) or high is None or not math.isfinite(high):
        return f" (no interval: {resampling.get('resampled_words', 'too few clusters')})"
    return f" [{low:.{digits}f}, {high:.{digits}f}]"


def _number(x: Any, digits: int = 2) -> str:
    return f"{x:.{digits}f}" if isinstance(x, int | float) and math.isfinite(x) else "n/a"


def versus_text(record: dict[str, Any], budget: int, floor: float | None) -> list[str]:
    """Two sentences on one metric: who wins how many heads and how well entropy separates
    them (no threshold claimed), then the rank correlation, pooled and per layer."""
    metric, heads = record["metric"], record["heads"]
    if record["oracles_optimal"]:
        head = f"{METRIC_WORDS[metric]} (both oracles are optimal on it)"
    else:
        reach = f", median {floor:.4f} over heads" if floor is not None else ""
        head = (
            f"{METRIC_WORDS[metric]} (the oracles are not optimal on it: the best rank-{budget} "
            f"P~ reaches the output floor{reach})"
        )
    sep = record["separability"]
    text = (
        f"{head}: sparse beats low-rank on {record['sparse']} of {heads} heads, low-rank "
        f"on {record['lowrank']}"
    )
    if not (isinstance(sep["auc"], float) and math.isfinite(sep["auc"])):
        text += "; one side wins no head, so there is nothing for entropy to separate."
    else:
        side = {"low": sep["auc_side_low"], "high": sep["auc_side_high"], **sep}
        cut = sep["cut"]
        sign = "<" if cut["direction"].endswith("below") else ">"
        text += (
            f"; the heads sparse wins have {sep['sparse_side']}, AUC {sep['auc_side']:.2f}"
            f"{_interval(side)} (0.5: no separation, 1: complete). The best entropy cut "
            f"(sparse iff entropy {sign} {cut['threshold']:.3f}), fitted to these same heads, "
            f"misclassifies {cut['errors_in_sample']} of {heads}"
        )
        cross = sep.get("crossfit_errors")
        if cross:
            text += (
                f"; fitted on half the sequences, it misclassifies {cross[0]} of {cross[1]} "
                "heads of the other half"
            )
        text += "."
    cor = record["entropy_spearman"]
    layers = ", ".join(_number(r) for r in cor["per_layer"])
    rho = (
        f"ln(err sparse / err low-rank) (> 0: low-rank better) against entropy: Spearman rho "
        f"{_number(cor['rho'])}{_interval(cor)}; within layers 1-{len(cor['per_layer'])}: "
        f"{layers}."
    )
    return [text, rho]


def equal_cost_text(entries: list[dict[str, Any]], budget: int) -> list[str]:
    """One sentence per comparison at equal cost whose first family is at ``budget``."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for e in entries:
        if e["budget_a"] == budget:
            groups.setdefault((e["a"], e["b"], e["quantity"], e["indices"]), []).append(e)
    lines = []
    for (a, b, quantity, indices), rows in groups.items():
        first = rows[0]
        wins = "; ".join(
            f"{a} {r['a_wins']}, {b} {r['b_wins']} of {r['heads']} heads on "
            f"{METRIC_WORDS[r['metric']].split(' ||')[0]}"
            for r in rows
        )
        lines.append(
            f"{QUANTITY_WORDS[(quantity, indices)]}: {a} b = {first['budget_a']} against {b} "
            f"b = {first['budget_b']} (cost ratio {first['ratio']:.2f}): {wins}."
        )
    return lines


def rests_on(meta: dict[str, Any], sequences: int, layers: int, intervals: bool = True) -> str:
    """What every verdict here rests on, and (``intervals``) which clusters its intervals
    resample."""
    units, note = resampling_units(sequences, layers)
    how = {
        "sequences+layers": "95% bootstrap intervals resample sequences and layers (each "
        "with all its heads)",
        "sequences": "95% bootstrap intervals resample sequences",
        "layers": "95% bootstrap intervals resample layers (each with all its heads)",
        None: "no interval",
    }[units]
    if note:
        how += f" ({note})"
    if not intervals:
        how = "no interval computed"
    return (
        f"Rests on one model ({model_name(meta['model'])}), one corpus "
        f"({corpus_name(meta['corpus'])}), {sequences} sequences of {meta['seq_len']} tokens; "
        f"{how}; no statement here rests on a threshold fitted to these heads."
    )


def winners_text(entry: dict[str, Any]) -> list[str]:
    """The winner counts at equal b, the Q/K-only counts, and Scatterbrain against its parts."""
    heads = entry["heads"]
    ranked = ", ".join(f"{name} {count}" for name, count in entry["winners"].items())
    lines = [
        f"Best family per head on {METRIC_WORDS[entry['metric']].split(' ||')[0]}, at equal b "
        f"(b buys different amounts per family, up to 2x: see equal_cost): {ranked}."
    ]
    if entry["winners_from_q_k"]:
        ranked = ", ".join(f"{n} {c}" for n, c in entry["winners_from_q_k"].items())
        lines.append(f"Among the families that need only Q and K: {ranked}.")
    sb = entry.get("scatterbrain")
    if sb is not None:
        s, m = sb["split"]
        kind = "top-score" if sb["parts"][0].startswith("sparse") else sb["parts"][0]
        verdict = "beats" if sb["median_ratio"] < 1 else "does not beat"
        lines.append(
            f"Scatterbrain ({s} {kind} keys + {m} features) {verdict} the better of "
            f"{sb['parts'][0]} and {sb['parts'][1]} at the same b: better on "
            f"{sb['beats_both']} of {heads} heads, median error ratio {sb['median_ratio']:.2f}."
        )
    return lines


def finding_text(
    entry: dict[str, Any],
    equal: list[dict[str, Any]],
    meta: dict[str, Any],
    shape: tuple[int, int, int],
    floor: float | None,
) -> str:
    """The printed finding at one budget, wrapped to :data:`WIDTH` columns.

    Args:
        entry: that budget's ``findings`` entry; equal: the ``equal_cost`` entries;
        meta: run.json so far (model, corpus, seq_len); shape: (sequences, layers, heads);
        floor: median over heads of the output floor at this budget (None: not measured).
    """
    s, layers, heads = shape
    b = entry["budget"]
    lines = [
        f"At b = {b}, {layers} layers x {heads} heads, sparse oracle (top b of each row of P) "
        "against low-rank oracle (best rank b):"
    ]
    versus = entry.get("sparse_vs_lowrank") or {}
    for metric in ("probs_error", "output_error"):
        if metric in versus:
            lines += versus_text(versus[metric], b, floor)
    if not versus:
        lines.append(
            "no verdict: the low-rank oracle does not apply (a causal model: its P~ would mix "
            "future keys into every row) or the run lacks an oracle."
        )
    cost = equal_cost_text(equal, b)
    if cost:
        lines.append(
            f"At equal cost (costs in run.json budget_accounting, rules in equal_cost_rule; "
            f"budgets matched within {TOLERANCE}x):"
        )
        lines += cost
    lines += winners_text(entry)
    lines.append(rests_on(meta, s, layers, intervals=bool(versus)))
    wrapped = []
    for i, line in enumerate(lines):
        indent = "" if i == 0 or line.startswith(("At equal", "Rests", "Best")) else "  "
        wrapped.append(
            textwrap.fill(
                line,
                WIDTH,
                initial_indent=indent,
                subsequent_indent=indent + "  ",
                break_on_hyphens=False,
            )
        )
    return "\n".join(wrapped)


def finding_record(
    entry: dict[str, Any],
    equal: list[dict[str, Any]],
    meta: dict[str, Any],
    shape: tuple[int, int, int],
    floor: float | None,
) -> dict[str, Any]:
    """run.json's ``finding``: the text, the budget, the metrics it speaks of, how its
    intervals were resampled, and what it rests on."""
    s, layers, heads = shape
    units, note = resampling_units(s, layers)
    versus = entry.get("sparse_vs_lowrank") or {}
    if not versus:  # no verdict, no interval
        units, note = None, "no sparse-against-low-rank verdict: no interval computed"
    return {
        "text": finding_text(entry, equal, meta, shape, floor),
        "budget": entry["budget"],
        "metric": entry["metric"],  # the metric the winner counts rank on
        "metrics": sorted(versus),  # the metrics of the sparse-against-low-rank verdicts
        "oracles_optimal_for": "probs_error",
        "resampled": [] if units is None else units.split("+"),
        "not_resampled": note,
        "min_clusters": MIN_CLUSTERS,
        "at": "equal b for the winner counts; equal stored numbers and equal scores in equal_cost",
        "threshold_fitted_to_same_data": False,
        "model": model_name(meta["model"]),
        "corpus": corpus_name(meta["corpus"]),
        "sequences": s,
        "seq_len": meta["seq_len"],
        "layers": layers,
        "heads": layers * heads,
    }
