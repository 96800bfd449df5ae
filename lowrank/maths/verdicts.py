"""Verdicts that survive another text: separability and rank correlation of per-head outcomes,
with intervals from resampling the units the data were drawn in (lowrank issue 25; compare's
budgets and output floor are in :mod:`lowrank.maths.budgets`, verify's trivial baselines in
:mod:`lowrank.maths.baselines`).

The heads of a model are not independent draws: the H heads of a layer share its inputs,
and every head sees the same S sequences. A per-sequence, per-head value is an array
[S, L, H]; the bootstrap here (:func:`cluster_bootstrap`) resamples sequences, layers with
all their heads, or both at once (Owen 2007, "The pigeonhole bootstrap", Ann. Appl. Stat.
1(2): rows and columns of a crossed design resampled independently; mildly conservative),
recomputes the per-head means over the drawn sequences, and recomputes the statistic from
them: outcomes such as "sparse beats low-rank on this head" are re-decided in every draw.
Resampling heads as if independent is kept only as the reference the issue compared against.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from lowrank.errors import LowrankError

Units = Literal["heads", "layers", "sequences", "sequences+layers"]
UNITS: dict[str, str] = {
    "heads": "(layer, head) pairs, as if independent (ignores shared layers and sequences)",
    "layers": "layers, each with all its heads (sequences fixed)",
    "sequences": "sequences (layers and heads fixed)",
    "sequences+layers": "sequences and layers (with all their heads), independently "
    "(Owen 2007 pigeonhole bootstrap)",
}
LEVEL = 0.95
DRAWS = 2000


# --- resampling ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    """A statistic, its percentile interval and how it was resampled.

    Attributes:
        estimate: the statistic on the full data; low, high: the percentile interval.
        undefined: draws in which the statistic was undefined (NaN), left out.
        record: what run.json keeps (units resampled, draws, seed, level, counts).
    """

    estimate: float
    low: float
    high: float
    undefined: int
    record: dict[str, Any]

    def text(self, digits: int = 2) -> str:
        return f"{self.estimate:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def _check_cube(arrays: Mapping[str, np.ndarray]) -> tuple[int, int, int]:
    shapes = {np.shape(a) for a in arrays.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        raise LowrankError(f"per-sequence values must share one shape [S, L, H], got {shapes}")
    s, layers, h = next(iter(shapes))
    return int(s), int(layers), int(h)


def cluster_bootstrap(
    statistic: Callable[[Mapping[str, np.ndarray]], float],
    arrays: Mapping[str, np.ndarray],
    units: Units = "sequences+layers",
    draws: int = DRAWS,
    seed: int = 0,
    level: float = LEVEL,
) -> Interval:
    """Percentile interval of ``statistic`` of the per-head means under cluster resampling.

    Args:
        statistic: maps name -> [L', H] means over the (drawn) sequences of the (drawn)
            layers to one number ([1, L H] for ``heads``); it re-decides any outcome itself.
        arrays: name -> [S, L, H] per-sequence values (S = 1: means only).
        units: what is drawn with replacement (see :data:`UNITS`).

    Raises:
        LowrankError: shapes that differ, or sequences resampled with S < 2 (or layers
            with L < 2).
    """
    s, nl, h = _check_cube(arrays)
    if units not in UNITS or draws < 1:
        raise LowrankError(f"resample one of {', '.join(UNITS)} at least once, not {units!r}")
    if "sequences" in units and s < 2:
        raise LowrankError("one sequence (means only): resample layers, not sequences")
    if "layers" in units and nl < 2:
        raise LowrankError("one layer: resample sequences or heads, not layers")
    rng = np.random.default_rng(seed)
    arrays = {k: np.asarray(a, np.float64) for k, a in arrays.items()}
    full = {k: a.mean(axis=0) for k, a in arrays.items()}
    out = np.empty(draws)
    for b in range(draws):
        seqs = rng.integers(0, s, s) if "sequences" in units else slice(None)
        if units == "heads":
            cols = rng.integers(0, nl * h, nl * h)
            drawn = {k: v.reshape(1, -1)[:, cols] for k, v in full.items()}
        else:
            rows = rng.integers(0, nl, nl) if "layers" in units else np.arange(nl)
            drawn = {k: a[seqs][:, rows].mean(0) for k, a in arrays.items()}
        out[b] = statistic(drawn)
    ok = out[np.isfinite(out)]
    q = (100 * (1 - level) / 2, 100 * (1 + level) / 2)
    low, high = np.percentile(ok, q) if ok.size else (math.nan, math.nan)
    record = {
        "method": "percentile bootstrap",
        "resampled": units.split("+") if units != "heads" else ["heads"],
        "resampled_words": UNITS[units],
        "draws": draws,
        "undefined_draws": int(draws - ok.size),
        "seed": seed,
        "level": level,
        "sequences": s,
        "layers": nl,
        "heads_per_layer": h,
    }
    return Interval(statistic(full), float(low), float(high), int(draws - ok.size), record)


# --- separability ------------------------------------------------------------------------------


def midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of (N,) values, ties sharing the mean of their ranks (as
    ``scipy.stats.rankdata``, without its per-call overhead inside a bootstrap)."""
    order = np.argsort(x, kind="stable")
    ordered = x[order]
    new = np.r_[True, ordered[1:] != ordered[:-1]]
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x))
    ranks[order] = ((starts + ends + 1) / 2)[np.cumsum(new) - 1]
    return ranks


def auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney AUC: Pr(score of a positive > score of a negative) + Pr(tie) / 2.

    Args:
        score, positive: (N,) numbers and bools (NaN scores are dropped).

    Returns:
        in [0, 1]; NaN without both a positive and a negative. 1: every positive scores
        above every negative; 0.5: no separation.
    """
    score, positive = np.asarray(score, np.float64).ravel(), np.asarray(positive, bool).ravel()
    keep = np.isfinite(score)
    score, positive = score[keep], positive[keep]
    pos, neg = int(positive.sum()), int((~positive).sum())
    if pos == 0 or neg == 0:
        return math.nan
    ranks = midranks(score)  # a tie counts one half
    return float((ranks[positive].sum() - pos * (pos + 1) / 2) / (pos * neg))


@dataclass(frozen=True)
class Cut:
    """The threshold rule with the fewest errors, fitted to the data it is scored on.

    Attributes:
        threshold: midway between neighbouring scores; direction: +1 "positive iff score >
        threshold", -1 "positive iff score < threshold"; errors: misclassified points.
    """

    threshold: float
    direction: int
    errors: int
    points: int

    def classify(self, score: np.ndarray) -> np.ndarray:
        return (np.asarray(score) > self.threshold) == (self.direction > 0)


def best_cut(score: np.ndarray, positive: np.ndarray) -> Cut:
    """The threshold (either direction) with the fewest misclassified points; equal scores
    stay on one side. In-sample: an optimistic count, never a verdict by itself."""
    score, positive = np.asarray(score, np.float64).ravel(), np.asarray(positive, bool).ravel()
    keep = np.isfinite(score)
    score, positive = score[keep], positive[keep]
    if score.size == 0:
        return Cut(math.nan, 1, 0, 0)
    order = np.argsort(score, kind="stable")
    s, p = score[order], positive[order].astype(int)
    last = np.r_[np.flatnonzero(np.diff(s) > 0), len(s) - 1]  # last index of each value
    values = s[last]
    below_pos = np.r_[0, np.cumsum(p)[last]]  # cut j: positives at or below the j-th value
    below_all = np.r_[0, last + 1]
    up = below_pos + (len(s) - below_all) - (p.sum() - below_pos)  # "positive iff above"
    down = len(s) - up  # the opposite rule errs exactly where "above" is right
    j_up, j_down = int(np.argmin(up)), int(np.argmin(down))
    j, direction = (j_up, 1) if up[j_up] <= down[j_down] else (j_down, -1)
    edges = np.r_[-np.inf, values, np.inf]
    low, high = edges[j], edges[j + 1]
    if np.isfinite(low) and np.isfinite(high):
        threshold = float((low + high) / 2)
    else:  # every point on one side
        threshold = -math.inf if j == 0 else math.inf
    errors = int(up[j] if direction > 0 else down[j])
    return Cut(threshold, direction, errors, len(s))


def crossfit_errors(
    score: np.ndarray, err_a: np.ndarray, err_b: np.ndarray, seed: int = 0
) -> tuple[int, int]:
    """Errors of a cut fitted on half the sequences and scored on the other half (both ways).

    Args:
        score, err_a, err_b: [S, L, H] per-sequence values, S >= 2.

    Returns:
        (misclassified heads, heads scored) summed over the two halves; the outcome is
        "a beats b" (mean err_a < mean err_b over the half's sequences).
    """
    s = np.shape(score)[0]
    if s < 2:
        raise LowrankError("a cross-fitted cut needs at least two sequences")
    perm = np.random.default_rng(seed).permutation(s)
    halves = (perm[: s // 2], perm[s // 2 :])
    wrong = total = 0
    for fit, test in (halves, halves[::-1]):
        cut = best_cut(
            score[fit].mean(0).ravel(), (err_a[fit].mean(0) < err_b[fit].mean(0)).ravel()
        )
        x, y = score[test].mean(0).ravel(), (err_a[test].mean(0) < err_b[test].mean(0)).ravel()
        keep = np.isfinite(x)
        wrong += int((cut.classify(x[keep]) != y[keep]).sum())
        total += int(keep.sum())
    return wrong, total


def _wins(means: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(score, "a beats b") over the heads where all three are finite."""
    x, a, b = (np.asarray(means[k], np.float64).ravel() for k in ("score", "a", "b"))
    keep = np.isfinite(x) & np.isfinite(a) & np.isfinite(b)
    return x[keep], (a < b)[keep]


@dataclass(frozen=True)
class Separability:
    """How well a per-head score (normalised entropy) separates "a beats b" from "b beats a".

    Attributes:
        heads: heads with every value finite; a_wins: heads where mean err_a < mean err_b.
        auc: :func:`auc` of the score for "a beats b", with its cluster-bootstrap interval.
        cut: the best threshold on the same data (in-sample).
        crossfit: (errors, heads) of a cut fitted on one half of the sequences, scored on the
            other (None with one sequence).
    """

    heads: int
    a_wins: int
    auc: Interval
    cut: Cut
    crossfit: tuple[int, int] | None

    def text(self, a: str, b: str, score: str = "entropy") -> str:
        """One sentence: counts, AUC with its interval and resampling, the cut's errors.

        The AUC is printed for the side the data put "a beats b" on: 1 - AUC and its
        mirrored interval when those heads score lower (a re-expression, not a fold)."""
        side = ">" if self.cut.direction > 0 else "<"
        est, lo, hi = self.auc.estimate, self.auc.low, self.auc.high
        low_side = est < 0.5
        if low_side:
            est, lo, hi = 1 - est, 1 - hi, 1 - lo
        held = (
            f"; a cut fitted on half the sequences misclassifies {self.crossfit[0]} of "
            f"{self.crossfit[1]} heads on the other half"
            if self.crossfit
            else ""
        )
        return (
            f"{a} beats {b} on {self.a_wins} of {self.heads} heads; they have "
            f"{'lower' if low_side else 'higher'} {score} with AUC {est:.2f} [{lo:.2f}, "
            f"{hi:.2f}] (0.5: no separation; 95% bootstrap, resampling "
            f"{' and '.join(self.auc.record['resampled'])}); the best cut, {a} iff {score} "
            f"{side} {self.cut.threshold:.3f}, fitted to these same heads, misclassifies "
            f"{self.cut.errors}{held}"
        )

    def record(self) -> dict[str, Any]:
        return {
            "heads": self.heads,
            "a_wins": self.a_wins,
            "auc": self.auc.estimate,  # Pr(score higher on a head where a beats b)
            "auc_low": self.auc.low,
            "auc_high": self.auc.high,
            "cut": {
                "threshold": self.cut.threshold,
                "direction": "a iff score above" if self.cut.direction > 0 else "a iff below",
                "errors_in_sample": self.cut.errors,
            },
            "crossfit_errors": None if self.crossfit is None else list(self.crossfit),
            "resampling": self.auc.record,
        }


def separability(
    score: np.ndarray,
    err_a: np.ndarray,
    err_b: np.ndarray,
    units: Units = "sequences+layers",
    draws: int = DRAWS,
    seed: int = 0,
    level: float = LEVEL,
) -> Separability:
    """AUC of ``score`` for "a beats b" per head, its interval, the best and a cross-fitted cut.

    Args:
        score, err_a, err_b: [S, L, H] per sequence, layer and head (entropy, the errors of
            families a and b at one budget, on one metric); S = 1 for means only (then
            ``units`` must not resample sequences).

    The outcome is re-decided in every draw from the drawn sequences' means, so heads that
    flip between texts widen the interval, as a held-out text would.
    """
    arrays = {"score": score, "a": err_a, "b": err_b}
    _check_cube(arrays)
    x, pos = _wins({k: np.asarray(v, np.float64).mean(0) for k, v in arrays.items()})
    interval = cluster_bootstrap(lambda m: auc(*_wins(m)), arrays, units, draws, seed, level)
    cross = None
    if np.shape(score)[0] >= 2:
        x3, a3, b3 = (np.asarray(v, np.float64) for v in arrays.values())
        cross = crossfit_errors(x3, a3, b3, seed=seed)
    return Separability(len(x), int(pos.sum()), interval, best_cut(x, pos), cross)


# --- rank correlation --------------------------------------------------------------------------


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho over the finite pairs (midranks for ties); NaN below 3 pairs or for a
    constant variable."""
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3 or np.ptp(x[keep]) == 0 or np.ptp(y[keep]) == 0:
        return math.nan
    rx, ry = midranks(x[keep]), midranks(y[keep])
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx @ ry) / math.sqrt((rx @ rx) * (ry @ ry)))


def _advantage(means: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(score, ln(err_b / err_a)) per head: > 0 where a has the smaller error."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(means["score"]), np.log(np.asarray(means["b"]) / np.asarray(means["a"]))


@dataclass(frozen=True)
class Correlation:
    """Spearman's rho of a score and ln(err_b / err_a), pooled and per layer.

    Attributes:
        pooled: rho over every head with its cluster-bootstrap interval.
        per_layer: (L,) rho over each layer's heads; per_layer_low, per_layer_high: (L,)
            intervals from resampling sequences (NaN with one sequence).
    """

    pooled: Interval
    per_layer: np.ndarray
    per_layer_low: np.ndarray
    per_layer_high: np.ndarray

    def text(self) -> str:
        layers = ", ".join(f"{r:.2f}" for r in self.per_layer)
        return (
            f"Spearman rho {self.pooled.text()} (95% bootstrap, resampling "
            f"{' and '.join(self.pooled.record['resampled'])}); within layers 1-"
            f"{len(self.per_layer)}: {layers}"
        )

    def record(self) -> dict[str, Any]:
        return {
            "rho": self.pooled.estimate,
            "low": self.pooled.low,
            "high": self.pooled.high,
            "per_layer": self.per_layer.tolist(),
            "per_layer_low": self.per_layer_low.tolist(),
            "per_layer_high": self.per_layer_high.tolist(),
            "resampling": self.pooled.record,
        }


def correlation(
    score: np.ndarray,
    err_a: np.ndarray,
    err_b: np.ndarray,
    units: Units = "sequences+layers",
    draws: int = DRAWS,
    seed: int = 0,
    level: float = LEVEL,
) -> Correlation:
    """Spearman's rho of ``score`` and ln(err_b / err_a) over heads, pooled (interval from
    ``units``) and within each layer (interval from resampling sequences).

    Args:
        score, err_a, err_b: [S, L, H] per-sequence values, as for :func:`separability`.
    """
    arrays = {"score": score, "a": err_a, "b": err_b}
    s, layers, _ = _check_cube(arrays)
    pooled = cluster_bootstrap(
        lambda m: spearman(*_advantage(m)), arrays, units, draws, seed, level
    )
    per = np.full((3, layers), np.nan)
    for li in range(layers):
        one = {k: np.asarray(v, np.float64)[:, li : li + 1] for k, v in arrays.items()}
        if s >= 2:
            iv = cluster_bootstrap(
                lambda m: spearman(*_advantage(m)), one, "sequences", draws, seed, level
            )
            per[:, li] = (iv.estimate, iv.low, iv.high)
        else:
            per[0, li] = spearman(*_advantage({k: v.mean(0) for k, v in one.items()}))
    return Correlation(pooled, per[0], per[1], per[2])
