"""What a budget b buys each attention family, comparisons at equal cost, and the true floor of
compare's output error.

``lowrank compare`` sets every family at the same b, but b buys different amounts (lowrank
issue 25): at one n x n attention, low-rank, Linformer and Performer keep 2nb numbers, the
sparse oracle nb values plus nb indices, local+global nb scores, Nystrom 2nb + b^2. Here
:func:`cost` states both counts per family under a stated rule, :func:`matched_budgets`
pairs budgets of two families at equal stored numbers or equal scores, and
:func:`paired_wins` counts the heads each side wins at those pairs.

The oracles (best rank-b, top-b) are optimal for ||P~ - P||_F only. For the head output
``||P~V - PV||_F`` the least error of a rank-b P~ is the tail of PV's singular values
(:func:`output_floor`), 0 once b >= rank(PV) <= d.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from lowrank.errors import LowrankError

Quantity = Literal["stored", "scores"]
READS_P = ("lowrank-oracle", "linformer", "sparse-oracle", "sparse-oracle-renorm")
RULE = {
    "stored": "numbers kept to apply P~ to V: factors, kept values and (with indices) one "
    "index per kept value of an unstructured pattern; a window's positions are implied",
    "scores": "query-key scores or kernel entries evaluated; a family that reads P needs all n^2",
}


@dataclass(frozen=True)
class Cost:
    """What one n x n attention costs a family at budget b.

    Attributes:
        stored: numbers kept (see :data:`RULE`); scores: score or kernel evaluations;
        reads: ``P`` (needs the exact attention), ``Q, K`` or ``nothing``.
    """

    stored: int
    scores: int
    reads: str


def _lsh_attended(n: int, b: int, rounds: int) -> int:
    """Keys per query of Reformer's sorted-chunk LSH at budget b (as lsh_parameters in
    compare's methods): r rounds of two chunks of b / 2r keys, at most n."""
    r = max(1, min(rounds, b // 2))
    chunk = max(1, b // (2 * r))
    return min(n, 2 * min(chunk, n) * r)


def cost(
    family: str,
    n: int,
    b: int,
    indices: bool = True,
    rounds: int = 2,
    globals_: int = 2,
    split: float = 0.5,
) -> Cost:
    """Stored numbers and scores computed by one family at budget b, length n.

    Args:
        indices: count one index per kept value of an unstructured sparse pattern (top-b,
            LSH, Scatterbrain's sparse part); False counts values only, as compare's
            run.json does.

    Returns:
        low-rank oracle and Linformer 2nb stored (n x b and b x n factors), n^2 scores (they
        read P); sparse oracle nb values (+ nb indices), n^2 scores; LSH n a values (+ n a
        indices) and n a scores, a the attended keys; local+global nb stored and scored;
        Performer 2nb stored (phi(Q), phi(K)), no scores; Nystrom 2nb + b^2 of both;
        Scatterbrain n b_s (+ n b_s) + 2 n m stored, n b_s scores; zero, uniform: nothing.
    """
    if n < 1 or not 1 <= b <= n:
        raise LowrankError(f"budget b = {b} must lie in 1..n = {n}")
    idx = 2 if indices else 1
    if family in ("lowrank-oracle", "linformer"):
        return Cost(2 * n * b, n * n, "P")
    if family in ("sparse-oracle", "sparse-oracle-renorm"):
        return Cost(idx * n * b, n * n, "P")
    if family == "lsh":
        a = _lsh_attended(n, b, rounds)
        return Cost(idx * n * a, n * a, "Q, K")
    if family == "local-global":
        return Cost(n * b, n * b, "Q, K")
    if family == "performer":
        return Cost(2 * n * b, 0, "Q, K")
    if family == "nystrom":
        return Cost(2 * n * b + b * b, 2 * n * b + b * b, "Q, K")
    if family == "scatterbrain":
        sparse = min(b, max(0, round(split * b)))
        return Cost(idx * n * sparse + 2 * n * (b - sparse), n * sparse, "Q, K")
    if family in ("zero", "uniform"):
        return Cost(0, 0, "nothing")
    raise LowrankError(f"unknown family {family!r}")


@dataclass(frozen=True)
class Pair:
    """Budgets of two families matched on one quantity; ratio = cost_b / cost_a."""

    budget_a: int
    budget_b: int
    cost_a: int
    cost_b: int
    ratio: float


def matched_budgets(
    family_a: str,
    family_b: str,
    n: int,
    budgets: Sequence[int],
    quantity: Quantity = "stored",
    indices: bool = True,
    tolerance: float = 1.25,
) -> list[Pair]:
    """Pairs (b_a, b_b) of the grid at which two families cost about the same.

    The rule: for each b_a, the b_b of the grid whose cost is nearest on a log scale; the
    pair is kept when the two costs differ by at most the factor ``tolerance`` and neither
    is 0. Families that read P cost n^2 scores at every b, so at equal scores they pair with
    nothing below b = n.

    Returns:
        the pairs in the order of ``budgets``; [] when none qualifies.
    """
    if tolerance < 1:
        raise LowrankError(f"tolerance {tolerance} must be >= 1 (a factor between costs)")
    out = []
    for ba in budgets:
        ca = getattr(cost(family_a, n, ba, indices), quantity)
        if ca <= 0:
            continue
        pairs = [(bb, getattr(cost(family_b, n, bb, indices), quantity)) for bb in budgets]
        pairs = [(bb, cb) for bb, cb in pairs if cb > 0]
        if not pairs:
            continue
        bb, cb = min(pairs, key=lambda p: (abs(math.log(p[1] / ca)), p[0]))
        if max(cb / ca, ca / cb) <= tolerance:
            out.append(Pair(ba, bb, ca, cb, cb / ca))
    return out


def paired_wins(
    err_a: np.ndarray, err_b: np.ndarray, budgets: Sequence[int], pairs: Sequence[Pair]
) -> list[dict[str, object]]:
    """Heads won by each family at matched budgets.

    Args:
        err_a, err_b: [K, L, H] mean errors of the two families at the K ``budgets``.

    Returns:
        per pair: ``budget_a``, ``budget_b``, ``ratio``, ``a_wins``, ``b_wins``, ``heads``
        (heads where both are finite; equal errors count for neither).
    """
    a, b = np.asarray(err_a, np.float64), np.asarray(err_b, np.float64)
    index = {int(x): i for i, x in enumerate(budgets)}
    out: list[dict[str, object]] = []
    for p in pairs:
        ea, eb = a[index[p.budget_a]].ravel(), b[index[p.budget_b]].ravel()
        ok = np.isfinite(ea) & np.isfinite(eb)
        out.append(
            {
                "budget_a": p.budget_a,
                "budget_b": p.budget_b,
                "ratio": p.ratio,
                "a_wins": int((ea[ok] < eb[ok]).sum()),
                "b_wins": int((eb[ok] < ea[ok]).sum()),
                "heads": int(ok.sum()),
            }
        )
    return out


# --- the output floor ----------------------------------------------------------------------


def output_floor(pv: np.ndarray, budgets: Sequence[int]) -> np.ndarray:
    """The least ``||P~V - PV||_F / ||PV||_F`` over all P~ of rank <= b, for each budget.

    Proof sketch. P~V has rank <= rank P~ <= b, so by Eckart-Young
    ``||P~V - PV||_F >= ||(PV)_b - PV||_F = sqrt(sum_{i>b} s_i^2)``, s the singular values
    of PV. The bound is attained by ``P~ = (PV)_b V^+`` (:func:`floor_attainer`): its rank
    is <= b, and ``P~ V = (PV)_b V^+ V = (PV)_b`` because the rows of (PV)_b lie in the row
    space of PV, inside that of V, onto which V^+ V projects (no rank condition on V is
    needed). Hence the floor is 0 once b >= rank(PV), and rank(PV) <= min(n, d).

    Args:
        pv: (..., n, d) head outputs P V (float64 advised).
        budgets: K ranks b >= 0.

    Returns:
        (..., K) relative floors in [0, 1]; 0 where PV = 0.
    """
    x = np.asarray(pv, dtype=np.float64)
    if x.ndim < 2:
        raise LowrankError(f"PV must be (..., n, d), got shape {x.shape}")
    s2 = np.linalg.svd(x, compute_uv=False) ** 2  # (..., r) descending
    tail = np.concatenate([np.cumsum(s2[..., ::-1], axis=-1)[..., ::-1], 0 * s2[..., :1]], -1)
    total = tail[..., :1]
    ks = np.minimum(np.asarray(budgets, dtype=np.int64), s2.shape[-1])
    if (ks < 0).any():
        raise LowrankError(f"budgets {list(budgets)} must be >= 0")
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = np.sqrt(np.clip(tail[..., ks] / total, 0, 1))
    return np.where(total > 0, rel, 0.0)


def floor_attainer(pv: np.ndarray, v: np.ndarray, b: int) -> np.ndarray:
    """``P~ = (PV)_b V^+``, a rank-<=b matrix with ``P~ V = (PV)_b`` (see :func:`output_floor`).

    Args:
        pv: (..., n, d); v: (..., n, d).

    Returns:
        (..., n, n).
    """
    u, s, vt = np.linalg.svd(np.asarray(pv, np.float64), full_matrices=False)
    best = (u[..., :b] * s[..., None, :b]) @ vt[..., :b, :]
    return best @ np.linalg.pinv(np.asarray(v, np.float64))
