"""compare's verdicts on sparse against low-rank, re-derived so that they survive another text
(lowrank issue 25): no threshold fitted to the same heads, intervals that resample the units
the data were drawn in, both metrics, and comparisons at equal cost.

The statistics are :mod:`lowrank.maths.verdicts` (AUC, best and cross-fitted cuts, Spearman,
the cluster bootstrap) and :mod:`lowrank.maths.budgets` (costs, matched budgets); here they are
applied to compare's arrays and recorded. The heads of a model share their layer and every
sequence, so an interval resamples sequences and layers (each with all its heads) where there
are at least :data:`MIN_CLUSTERS` of them, and says what it could not resample.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from lowrank.maths.budgets import RULE, matched_budgets, paired_wins
from lowrank.maths.verdicts import (
    DRAWS,
    Correlation,
    Interval,
    Separability,
    Units,
    auc,
    best_cut,
    cluster_bootstrap,
    correlation,
    crossfit_errors,
    separability,
    spearman,
)

MIN_CLUSTERS = 3
"""Fewest sequences (or layers) a bootstrap resamples: two give 3 distinct draws."""
PER_SEQUENCE_METRICS = ("probs_error", "output_error")
ORACLES_OPTIMAL_FOR = "probs_error"
"""Eckart-Young (best rank b) and top-b are optimal for ||P~ - P||_F, not for ||P~V - PV||."""
# (family a, family b, quantity, indices counted): each pair of families set side by side at
# equal cost (lowrank.maths.budgets.RULE); the first two differ only in counting indices
EQUAL_COST: tuple[tuple[str, str, str, bool], ...] = (
    ("lowrank-oracle", "sparse-oracle", "stored", True),
    ("lowrank-oracle", "sparse-oracle", "stored", False),
    ("nystrom", "local-global", "scores", True),
)
TOLERANCE = 1.25  # budgets are matched when their costs differ by at most this factor


def resampling_units(sequences: int, layers: int) -> tuple[Units | None, str]:
    """What a bootstrap over these clusters can resample, and what it cannot, in words.

    Returns:
        (``"sequences+layers"``, ``"sequences"``, ``"layers"`` or None, a note: "" when both
        are resampled, else why one or both are not).
    """
    seqs, lays = sequences >= MIN_CLUSTERS, layers >= MIN_CLUSTERS
    missing = []
    if not seqs:
        what = "means only" if sequences <= 1 else f"{sequences} sequences"
        missing.append(f"sequences not resampled ({what}; a bootstrap needs {MIN_CLUSTERS})")
    if not lays:
        missing.append(f"layers not resampled ({layers}; a bootstrap needs {MIN_CLUSTERS})")
    units: Units | None = (
        "sequences+layers" if seqs and lays else "sequences" if seqs else "layers" if lays else None
    )
    return units, "; ".join(missing)


def _no_interval(estimate: float, sequences: int, layers: int, note: str) -> Interval:
    record = {
        "method": "none",
        "resampled": [],
        "resampled_words": note or "no interval",
        "draws": 0,
        "sequences": sequences,
        "layers": layers,
    }
    return Interval(estimate, math.nan, math.nan, 0, record)


def _finite_wins(score: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, a, b = score.ravel(), a.ravel(), b.ravel()
    keep = np.isfinite(x) & np.isfinite(a) & np.isfinite(b)
    return x[keep], (a < b)[keep]


def _separability(
    score: np.ndarray, err_a: np.ndarray, err_b: np.ndarray, seed: int
) -> Separability:
    """:func:`separability` of [S, L, H] arrays, with the interval its clusters allow."""
    s, layers = score.shape[:2]
    units, note = resampling_units(s, layers)
    if units is not None:
        return separability(score, err_a, err_b, units=units, draws=DRAWS, seed=seed)
    x, pos = _finite_wins(score.mean(0), err_a.mean(0), err_b.mean(0))
    cross = crossfit_errors(score, err_a, err_b, seed=seed) if s >= 2 else None
    interval = _no_interval(auc(x, pos), s, layers, note)
    return Separability(len(x), int(pos.sum()), interval, best_cut(x, pos), cross)


def _log_ratio(means: Mapping[str, np.ndarray]) -> float:
    """Spearman's rho of ``score`` and ln(b / a) over the heads of ``means``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return spearman(means["score"], np.log(means["b"] / means["a"]))


def _correlation(
    score: np.ndarray, err_a: np.ndarray, err_b: np.ndarray, seed: int, per_layer: bool
) -> Correlation:
    """Spearman's rho of entropy and ln(err_b / err_a), pooled with the interval its clusters
    allow, and per layer (intervals over sequences only with ``per_layer``: 2,000 draws per
    layer, so only at the focus budget)."""
    s, layers = score.shape[:2]
    units, note = resampling_units(s, layers)
    if units is not None and per_layer and s >= MIN_CLUSTERS:
        return correlation(score, err_a, err_b, units=units, draws=DRAWS, seed=seed)
    arrays = {"score": score, "a": err_a, "b": err_b}
    if units is None:
        pooled = _no_interval(
            _log_ratio({k: v.mean(0) for k, v in arrays.items()}), s, layers, note
        )
    else:
        pooled = cluster_bootstrap(_log_ratio, arrays, units, DRAWS, seed)
    rho = np.array(
        [_log_ratio({k: v[:, li].mean(0) for k, v in arrays.items()}) for li in range(layers)]
    )
    nan = np.full(layers, np.nan)
    return Correlation(pooled, rho, nan, nan.copy())


def per_sequence_values(
    arrays: dict[str, np.ndarray], family: str, ki: int, metric: str, rows: list[str]
) -> np.ndarray:
    """[S, L, H] errors of one family at budget index ``ki`` on ``metric``, per sequence when
    the run kept them (format 2), else the means as one "sequence" [1, L, H]."""
    fi = rows.index(family)
    if "per_sequence_error" in arrays:
        names = [str(m) for m in arrays.get("per_sequence_metrics", PER_SEQUENCE_METRICS)]
        return np.asarray(arrays["per_sequence_error"][:, fi, ki, ..., names.index(metric)], float)
    return np.asarray(arrays[f"{metric}_mean"][fi, ki], float)[None]


def entropy_values(arrays: dict[str, np.ndarray]) -> np.ndarray:
    """[S, L, H] entropy per sequence (format 2), else the means [1, L, H]."""
    if "entropy_per_sequence" in arrays:
        return np.asarray(arrays["entropy_per_sequence"], float)
    return np.asarray(arrays["entropy_mean"], float)[None]


def sparse_vs_lowrank(
    arrays: dict[str, np.ndarray],
    rows: list[str],
    ki: int,
    metric: str,
    seed: int = 0,
    per_layer: bool = False,
) -> dict[str, Any] | None:
    """The sparse oracle against the low-rank oracle at budget index ``ki`` on ``metric``:
    head counts, the separability of "sparse wins" by entropy (AUC with its interval, the
    best in-sample cut, a cross-fitted cut) and Spearman's rho of entropy and
    ln(err sparse / err low-rank) (> 0: low-rank better), pooled and per layer.

    Returns:
        the record run.json keeps (:func:`Separability.record`, :func:`Correlation.record`),
        or None where the run lacks an oracle or none of its values is finite (a causal
        model: the low-rank oracle does not apply).
    """
    if not {"lowrank-oracle", "sparse-oracle"} <= set(rows):
        return None
    low = per_sequence_values(arrays, "lowrank-oracle", ki, metric, rows)
    sparse = per_sequence_values(arrays, "sparse-oracle", ki, metric, rows)
    if not (np.isfinite(low).any() and np.isfinite(sparse).any()):
        return None
    entropy = entropy_values(arrays)
    sep = _separability(entropy, sparse, low, seed)
    cor = _correlation(entropy, low, sparse, seed, per_layer)
    low_mean, sparse_mean = low.mean(0), sparse.mean(0)
    auc_side = sep.auc.estimate < 0.5  # sparse wins where entropy is lower
    mirrored = [1 - sep.auc.high, 1 - sep.auc.low] if auc_side else [sep.auc.low, sep.auc.high]
    return {
        "metric": metric,
        "oracles_optimal": metric == ORACLES_OPTIMAL_FOR,
        "heads": sep.heads,
        "sparse": int((sparse_mean < low_mean).sum()),
        "lowrank": int((low_mean < sparse_mean).sum()),
        "separability": sep.record()
        | {
            "sparse_side": "lower entropy" if auc_side else "higher entropy",
            "auc_side": 1 - sep.auc.estimate if auc_side else sep.auc.estimate,
            "auc_side_low": mirrored[0],
            "auc_side_high": mirrored[1],
        },
        "entropy_spearman": cor.record() | {"points": sep.heads},
    }


def equal_cost(
    arrays: dict[str, np.ndarray], rows: list[str], n: int, budgets: list[int]
) -> list[dict[str, Any]]:
    """Heads won by each side of :data:`EQUAL_COST` at budgets of equal cost, on both metrics.

    Each entry: ``a``, ``b``, ``quantity`` (stored numbers or scores computed), ``indices``
    (whether an unstructured pattern's indices count), ``metric``, ``budget_a``,
    ``budget_b``, ``cost_a``, ``cost_b``, ``ratio`` (cost_b / cost_a), ``a_wins``,
    ``b_wins``, ``heads``. Pairs whose costs differ by more than :data:`TOLERANCE` are
    left out; families the run lacks or that do not apply (all NaN) are skipped.
    """
    out: list[dict[str, Any]] = []
    for a, b, quantity, indices in EQUAL_COST:
        if a not in rows or b not in rows:
            continue
        pairs = matched_budgets(a, b, n, budgets, quantity, indices, TOLERANCE)  # type: ignore[arg-type]
        for metric in PER_SEQUENCE_METRICS:
            table = arrays[f"{metric}_mean"]
            ta, tb = table[rows.index(a)], table[rows.index(b)]
            if not (np.isfinite(ta).any() and np.isfinite(tb).any()):
                continue
            for pair, wins in zip(pairs, paired_wins(ta, tb, budgets, pairs), strict=True):
                out.append(
                    {"a": a, "b": b, "quantity": quantity, "indices": indices, "metric": metric}
                    | wins
                    | {"cost_a": pair.cost_a, "cost_b": pair.cost_b}
                )
    return out


EQUAL_COST_RULE = {
    **RULE,
    "matching": f"for each budget b_a of family a, the budget of family b whose cost is nearest "
    f"on a log scale; kept when the costs differ by at most {TOLERANCE}x",
}
