"""Verify's events met by a trivial P~: the zero matrix and uniform attention.

``lowrank verify`` measures how often the proof's construction ``P~ = P R^T R`` meets each
Theorem 1 event (Wang et al. 2020, Sec. 4 and Appendix A). An event that P~ = 0 also meets
says nothing about low rank: for value columns w, ||Pw|| / (||P||_F ||w||) has median 0.061
on MiniLM, so the zero matrix passes ``jl-consistent`` (error <= eps ||P||_F ||w||) 75% of
the time at eps 0.1 (lowrank issue 25). :func:`baseline_failures` evaluates the same events,
with the same strictness as verify, for ``P~ = 0`` and for uniform attention (rows 1/n, or
1/(i+1) over j <= i when causal); these P~ draw nothing, so their rates are exact given the
measured P and w (conditional on the sequences measured, like every rate of verify).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from lowrank.errors import LowrankError

EVENTS = ("paper", "jl-rows", "jl-consistent", "witness")
BASELINE_NAMES = ("zero", "uniform")


def baseline_matrix(name: str, n: int, causal: bool = False) -> np.ndarray:
    """The trivial P~: ``zero`` (n, n) zeros, or ``uniform`` rows 1/n (causal: 1/(i+1) on
    and below the diagonal), rows summing to 1."""
    if name == "zero":
        return np.zeros((n, n))
    if name == "uniform":
        if causal:
            return np.tril(np.ones((n, n))) / np.arange(1, n + 1)[:, None]
        return np.full((n, n), 1.0 / n)
    raise LowrankError(f"unknown baseline {name!r}: choose zero or uniform")


def event_failures(
    approx_w: np.ndarray, probs: np.ndarray, w: np.ndarray, eps: Sequence[float]
) -> dict[str, np.ndarray]:
    """Failures of the four Theorem 1 events for a given ``P~ w``, as verify counts them.

    With ``err = ||P~w - Pw||`` per column: ``paper`` and ``witness`` fail when ``err >= eps
    ||Pw||`` (their P~ differ, the event does not), ``jl-consistent`` when ``err > eps
    ||P||_F ||w||``, ``jl-rows`` when some row has ``|p~_i w - p_i w| > eps ||p_i|| ||w||``.

    Args:
        approx_w: (M, n, m) P~ w; probs: (M, n, n) P; w: (M, n, m) columns w.

    Returns:
        event -> (M, E) failing columns per matrix and eps (one cluster per matrix).
    """
    p, w, aw = (np.asarray(a, dtype=np.float64) for a in (probs, w, approx_w))
    if p.ndim != 3 or w.shape[:2] != p.shape[:2] or aw.shape != w.shape:
        raise LowrankError(f"shapes P {p.shape}, w {w.shape}, P~w {aw.shape} do not match")
    exact = p @ w  # (M, n, m)
    diff = aw - exact
    err = np.linalg.norm(diff, axis=-2)  # (M, m)
    pw, wn = np.linalg.norm(exact, axis=-2), np.linalg.norm(w, axis=-2)
    fro = np.linalg.norm(p, axis=(-2, -1))[:, None]  # (M, 1)
    rows = np.linalg.norm(p, axis=-1)[:, :, None] * wn[:, None, :]  # (M, n, m)
    out = {}
    for name, fails in (
        ("paper", lambda e: err >= e * pw),
        ("jl-rows", lambda e: (np.abs(diff) > e * rows).any(axis=-2)),
        ("jl-consistent", lambda e: err > e * fro * wn),
        ("witness", lambda e: err >= e * pw),
    ):
        out[name] = np.stack([fails(e).sum(-1) for e in eps], axis=-1)
    return out


def baseline_failures(
    probs: np.ndarray, w: np.ndarray, eps: Sequence[float], causal: bool = False
) -> dict[str, dict[str, np.ndarray]]:
    """Failures of every Theorem 1 event for P~ = 0 and uniform P~.

    Args:
        probs: (M, n, n) the measured P; w: (M, n, m) the vectors verify tests (e.g. V).

    Returns:
        baseline -> event -> (M, E) failing columns per matrix, as verify's counts for
        P R^T R (so :class:`ClusteredRate` takes them with cluster size m).
    """
    p, w = np.asarray(probs, np.float64), np.asarray(w, np.float64)
    n = p.shape[-1]
    out = {}
    for name in BASELINE_NAMES:
        approx_w = baseline_matrix(name, n, causal) @ w
        out[name] = event_failures(approx_w, p, w, eps)
    return out


def pass_rates(
    failures: Mapping[str, Mapping[str, np.ndarray]], columns: int
) -> dict[str, dict[str, np.ndarray]]:
    """baseline -> event -> (E,) share of (matrix, column) trials that pass."""
    return {
        base: {ev: 1 - np.asarray(f).sum(0) / (np.shape(f)[0] * columns) for ev, f in evs.items()}
        for base, evs in failures.items()
    }


def qualified_verdict(
    verdict: str, bound: float | None, baseline_failure_rates: Mapping[str, float]
) -> str:
    """A verdict with the baselines that meet the same bound: ``holds, but so does zero``.

    A baseline "also holds" when its failure rate (exact given the measured P and w) is
    below the statement's bound, the test verify applies to P R^T R. Other verdicts, and
    rows without a bound, are returned unchanged.
    """
    if verdict != "holds" or bound is None:
        return verdict
    also = [b for b, rate in baseline_failure_rates.items() if rate < bound]
    return verdict if not also else f"holds, but so does {' and '.join(also)}"
