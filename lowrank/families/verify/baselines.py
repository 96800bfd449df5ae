"""Verify's trivial P~ beside every measured event: the zero matrix and uniform attention.

An event that P~ = 0 also meets says nothing about low rank (lowrank issue 25): for value
columns w, ||Pw|| / (||P||_F ||w||) is small, so the zero matrix meets ``jl-consistent``
(error <= eps ||P||_F ||w||) most of the time. Every Theorem 1 event on real and synthetic
attention, and Theorem 2's event on real attention, is therefore also counted for

* ``zero``: P~ = 0 (Theorem 2: the head output 0), and
* ``uniform``: rows 1/n, or 1/(i + 1) over j <= i for a causal model (Theorem 2: the mean of
  the values so far),

with the same strictness and the same clusters (a matrix with its vectors, or with its query
rows) as the measured rows (:mod:`lowrank.maths.baselines`). These P~ draw nothing, so their
rates are exact given the measured P and w; like every rate of verify they are conditional on
the sequences measured. A verdict ``holds`` then reads ``holds, but so does zero`` where a
baseline's failure rate is below the same bound (:func:`lowrank.maths.baselines.qualified_verdict`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lowrank.families.verify.theorems import Row, Theorem2Setup
from lowrank.maths.baselines import BASELINE_NAMES, baseline_failures, baseline_matrix
from lowrank.maths.baselines import qualified_verdict as qualify_one
from lowrank.maths.stats import ClusteredRate

RULE = (
    "a row that holds reads 'holds, but so does zero' (or uniform) when that trivial P~ "
    "fails less often than the same bound; trivial P~ draw no R, so their rates are exact "
    "given the measured P and w (intervals: the same clusters as the measured rows)"
)
CONDITIONAL = (
    "every rate is conditional on the sequences measured (and on the synthetic matrices "
    "drawn): the theorems quantify over R only"
)
# (statement, source, vectors, baseline) -> per-matrix failure counts, chunk by chunk
BaseCounts = dict[tuple[str, str, str, str], list[np.ndarray]]


@dataclass
class BaselineRow:
    """The failure rate of one trivial P~ on one event, matrices and vectors, at one eps
    (the same at every k: no R is drawn)."""

    statement: str
    source: str
    vectors: str
    baseline: str  # "zero" or "uniform"
    eps: float
    rate: ClusteredRate

    @property
    def key(self) -> tuple[str, str, str, float]:
        """(statement, source, vectors, eps): the measured rows it stands beside."""
        return (self.statement, self.source, self.vectors, self.eps)


def add_theorem1(
    counts: BaseCounts,
    source: str,
    probs: torch.Tensor,
    vectors: dict[str, torch.Tensor],
    eps: list[float],
    causal: bool,
) -> None:
    """Count the Theorem 1 events of both trivial P~ on (M, n, n) ``probs`` and each kind of
    (M, n, m) vectors into ``counts`` (one (M, E) array per call)."""
    p = probs.double().cpu().numpy()
    for kind, w in vectors.items():
        per_base = baseline_failures(p, w.double().cpu().numpy(), eps, causal)
        for base, events in per_base.items():
            for event, fails in events.items():
                counts.setdefault((event, source, kind, base), []).append(fails)


def add_theorem2(counts: BaseCounts, setup: Theorem2Setup, eps: list[float], causal: bool) -> None:
    """Count Theorem 2's event, per query row, for the zero output and uniform attention:
    ``||P~ V - P V|| > eps ||p_i|| ||V||_2`` (the measured rows' strictness)."""
    n = setup.exact.shape[-2]
    for base in BASELINE_NAMES:
        approx = torch.from_numpy(baseline_matrix(base, n, causal)) @ setup.value  # (M, n, d)
        lhs = (approx - setup.exact).norm(dim=-1)  # (M, n)
        fails = torch.stack([(lhs > e * setup.rhs).sum(-1) for e in eps], -1).numpy()
        counts.setdefault(("theorem2", "real", "-", base), []).append(fails)


def baseline_rows(counts: BaseCounts, eps: list[float], sizes: dict[str, int]) -> list[BaselineRow]:
    """One row per (statement, source, vectors, baseline, eps); ``sizes[vectors]`` is the
    number of trials per matrix (the measured rows' cluster size)."""
    rows = []
    for (statement, source, vectors, base), chunks in counts.items():
        fails = np.concatenate(chunks)  # (clusters, E)
        per = np.full(len(fails), sizes[vectors])
        for i, e in enumerate(eps):
            rate = ClusteredRate.from_clusters(fails[:, i], per)
            rows.append(BaselineRow(statement, source, vectors, base, e, rate))
    return rows


def qualify(rows: list[Row], base: list[BaselineRow]) -> int:
    """Turn ``holds`` into ``holds, but so does zero`` (and/or uniform) where that trivial
    P~ fails less often than the row's bound. Returns the number of rows qualified."""
    rates: dict[tuple[str, str, str, float], dict[str, float]] = {}
    for b in base:
        rates.setdefault(b.key, {})[b.baseline] = b.rate.rate
    changed = 0
    for r in rows:
        mine = rates.get((r.statement, r.source, r.vectors, r.eps))
        if mine:
            verdict = qualify_one(r.verdict, r.bound, mine)
            changed += verdict != r.verdict
            r.verdict = verdict
    return changed


def baseline_records(
    base: list[BaselineRow], rows: list[Row], target: float
) -> list[dict[str, Any]]:
    """run.json's ``baselines``: each trivial P~'s rate with its interval and pass rate, and
    per k of the measured rows whether it is below that row's bound (``below_bound``; JSON
    keys are the k as strings) and whether it is below ``target`` (``meets_target``)."""
    bounds: dict[tuple[str, str, str, float], dict[str, float | None]] = {}
    for r in rows:
        bounds.setdefault((r.statement, r.source, r.vectors, r.eps), {})[str(r.k)] = r.bound
    records = []
    for b in base:
        lo, hi = b.rate.interval()
        below = {
            k: (bound is not None and b.rate.rate < bound)
            for k, bound in bounds.get(b.key, {}).items()
        }
        records.append(
            {
                "statement": b.statement,
                "source": b.source,
                "vectors": b.vectors,
                "baseline": b.baseline,
                "eps": b.eps,
                "failures": b.rate.failures,
                "trials": b.rate.trials,
                "clusters": b.rate.clusters,
                "n_eff": b.rate.n_eff,
                "rate": b.rate.rate,
                "ci_low": lo,
                "ci_high": hi,
                "pass_rate": 1 - b.rate.rate,
                "below_bound": below,
                "meets_target": b.rate.rate < target,
            }
        )
    return records


def baseline_arrays(records: list[dict[str, Any]], series: list[str], eps: list[float]) -> dict:
    """verify.npz's ``baselines`` [2] and ``baseline_rate``, ``baseline_ci_low``,
    ``baseline_ci_high`` [2, series, eps] (NaN where a series has no trivial P~: JL rows)."""
    shape = (len(BASELINE_NAMES), len(series), len(eps))
    out = {name: np.full(shape, np.nan) for name in ("rate", "ci_low", "ci_high")}
    index = {s: i for i, s in enumerate(series)}
    for rec in records:
        name = f"{rec['statement']} | {rec['source']} | {rec['vectors']}"
        if name not in index:
            continue
        at = (BASELINE_NAMES.index(rec["baseline"]), index[name], eps.index(rec["eps"]))
        for field in out:
            out[field][at] = rec[field]
    return {"baselines": np.array(BASELINE_NAMES)} | {
        f"baseline_{field}": values for field, values in out.items()
    }


def trivial_meeting(
    records: list[dict[str, Any]], series: str, eps: float, target: float
) -> list[str] | None:
    """The trivial P~ whose failure rate on ``series`` at ``eps`` is below ``target`` (None:
    the series has no trivial P~, e.g. the JL lemma rows)."""
    mine = [
        r
        for r in records
        if f"{r['statement']} | {r['source']} | {r['vectors']}" == series and r["eps"] == eps
    ]
    if not mine:
        return None
    return [r["baseline"] for r in mine if r["rate"] < target]
