"""The paper's probabilistic statements as computable bounds, and their empirical check.

Conventions (Wang et al. 2020, Sec. 4 and Appendix A; Arriaga & Vempala 2006 for the JL
lemma): R is k x n with iid N(0, 1/k) entries; ``gap(eps) = eps^2 - eps^3``.

* JL lemma: ``Pr(||R x|| > (1 + eps) ||x||) <= exp(-gap k / 4)`` and
  ``Pr(|x R^T R y^T - x y^T| > eps ||x|| ||y||) <= 2 exp(-gap k / 4)``.
* Theorem 1: with ``k = 5 ln(n) / gap``, ``||P R^T R w - P w|| < eps ||P w||`` fails with
  probability at most ``2 n exp(-gap k / 4)`` (the union bound of the proof), ``2 n^(-1/4)``
  at that k.
* Theorem 2: ``k = min(9 d ln(d) / eps^2, 5 ln(n) / eps^2)``, the Theta constants set to 1,
  for ``||softmax(w E^T) F V - softmax(w) V|| <= eps ||softmax(w)|| ||V||``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from lowrank.errors import LowrankError
from lowrank.projection import column_errors


def check_eps(eps: float) -> None:
    """The statements need 0 < eps < 1 (and gap(eps) > 0)."""
    if not 0 < eps < 1:
        raise LowrankError(f"--eps {eps} is outside (0, 1): the theorems need 0 < eps < 1")


def gap(eps: float) -> float:
    """``eps^2 - eps^3``, the exponent's rate in the Arriaga-Vempala form of JL."""
    check_eps(eps)
    return eps**2 - eps**3


def jl_norm_failure_bound(eps: float, k: float) -> float:
    """Upper bound on ``Pr(||R x|| > (1 + eps) ||x||)``: ``exp(-gap k / 4)``."""
    return math.exp(-gap(eps) * k / 4)


def jl_inner_failure_bound(eps: float, k: float) -> float:
    """Upper bound on ``Pr(|x R^T R y^T - x y^T| > eps ||x|| ||y||)``: ``2 exp(-gap k / 4)``."""
    return min(1.0, 2 * math.exp(-gap(eps) * k / 4))


def theorem1_k(n: int, eps: float) -> float:
    """The k of Theorem 1: ``5 ln(n) / (eps^2 - eps^3)``."""
    return 5 * math.log(n) / gap(eps)


def theorem1_failure_bound(n: int, k: float, eps: float) -> float:
    """Union bound of Theorem 1's proof, ``min(1, 2 n exp(-gap k / 4))``."""
    return min(1.0, 2 * n * math.exp(-gap(eps) * k / 4))


def theorem2_k(n: int, d: int, eps: float) -> float:
    """The k of Theorem 2 with its Theta constants set to 1:
    ``min(9 d ln(d) / eps^2, 5 ln(n) / eps^2)``."""
    check_eps(eps)
    return min(9 * d * math.log(d) / eps**2, 5 * math.log(n) / eps**2)


def clopper_pearson(failures: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) confidence interval for a binomial proportion."""
    if trials <= 0:
        raise ValueError("no trials")
    alpha = 1 - level
    lo = 0.0 if failures == 0 else float(stats.beta.ppf(alpha / 2, failures, trials - failures + 1))
    hi = (
        1.0
        if failures == trials
        else float(stats.beta.ppf(1 - alpha / 2, failures + 1, trials - failures))
    )
    return lo, hi


def verdict(ci_low: float, ci_high: float, bound: float | None) -> str:
    """Compare a 95% interval of a failure rate with a bound on it.

    ``holds``: the interval's upper end is below the bound; ``violated``: its lower end is
    above the bound (the rate is significantly higher than the theorem allows);
    ``inconclusive``: the bound lies inside the interval (more trials needed);
    ``vacuous``: the bound is >= 1 and says nothing; ``n/a``: no bound.
    """
    if bound is None or not math.isfinite(bound):
        return "n/a"
    if bound >= 1:
        return "vacuous"
    if ci_high < bound:
        return "holds"
    return "violated" if ci_low > bound else "inconclusive"


@dataclass
class Row:
    """One line of the verification table."""

    source: str  # "real", "synthetic T=..", "jl-norm", "jl-inner", "theorem2 real"
    eps: float
    k: int
    failures: int
    trials: int
    bound: float | None

    @property
    def rate(self) -> float:
        return self.failures / self.trials

    @property
    def interval(self) -> tuple[float, float]:
        return clopper_pearson(self.failures, self.trials)

    @property
    def verdict(self) -> str:
        return verdict(*self.interval, self.bound)


def theorem1_failures(
    probs: torch.Tensor, value: torch.Tensor, k: int, eps_list: list[float], gen: torch.Generator
) -> np.ndarray:
    """Failures of ``||P R^T R w - P w|| < eps ||P w||`` for one fresh R per matrix.

    Args:
        probs: (M, n, n) attention matrices; value: (M, n, d), each column one w.

    Returns:
        (E,) counts of failing (P, w) pairs for each eps, out of M * d.
    """
    m, n, _ = probs.shape
    r = torch.randn(m, k, n, generator=gen, dtype=torch.float64) / math.sqrt(k)
    p, v = probs.double(), value.double()
    exact = p @ v  # (M, n, d)
    approx = (p @ r.transpose(1, 2)) @ (r @ v)
    ratio = column_errors(approx, exact)  # (M, d)
    return np.array([int((ratio >= eps).sum()) for eps in eps_list])


def theorem2_failures(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    k: int,
    eps_list: list[float],
    gen: torch.Generator,
    delta: float = 1.0,
) -> np.ndarray:
    """Failures, per query row, of ``||softmax(w E^T) F V - softmax(w) V|| <= eps
    ||softmax(w)|| ||V||_2`` with E = delta R, F = exp(-delta) R, R Gaussian N(0, 1/k).

    Args:
        query, key, value: (M, n, d), ``w`` = the scaled scores ``q K^T / sqrt(d)``.

    Returns:
        (E,) counts out of M * n.
    """
    m, n, d = query.shape
    r = torch.randn(m, k, n, generator=gen, dtype=torch.float64) / math.sqrt(k)
    q, kk, v = query.double(), key.double(), value.double()
    scores = q @ kk.transpose(1, 2) / math.sqrt(d)  # (M, n, n)
    p = torch.softmax(scores, dim=-1)
    exact = p @ v
    approx = torch.softmax(scores @ (delta * r).transpose(1, 2), -1) @ (math.exp(-delta) * r @ v)
    lhs = (approx - exact).norm(dim=-1)  # (M, n)
    rhs = p.norm(dim=-1) * torch.linalg.matrix_norm(v, ord=2)[:, None]
    return np.array([int((lhs > eps * rhs).sum()) for eps in eps_list])


def jl_failures(
    n: int, k: int, eps_list: list[float], trials: int, gen: torch.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The JL lemma itself on random Gaussian vectors (the sanity rows).

    Returns:
        (norm failures, inner-product failures), each (E,) out of ``trials``.
    """
    r = torch.randn(trials, k, n, generator=gen, dtype=torch.float64) / math.sqrt(k)
    x = torch.randn(trials, n, generator=gen, dtype=torch.float64)
    y = torch.randn(trials, n, generator=gen, dtype=torch.float64)
    rx, ry = (r @ x[..., None])[..., 0], (r @ y[..., None])[..., 0]
    norm_ratio = rx.norm(dim=-1) / x.norm(dim=-1)
    inner_err = (rx * ry).sum(-1) - (x * y).sum(-1)
    scale = x.norm(dim=-1) * y.norm(dim=-1)
    norms = np.array([int((norm_ratio > 1 + eps).sum()) for eps in eps_list])
    inner = np.array([int((inner_err.abs() > eps * scale).sum()) for eps in eps_list])
    return norms, inner


def synthetic_attention(
    n: int, d: int, temperature: float, count: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``P = softmax(X Y^T / sqrt(d) * temperature)`` and Gaussian values V.

    Low temperatures give near-uniform rows, high ones near one-hot rows.

    Returns:
        P (count, n, n) and V (count, n, d), float64.
    """
    x = torch.randn(count, n, d, generator=gen, dtype=torch.float64)
    y = torch.randn(count, n, d, generator=gen, dtype=torch.float64)
    p = torch.softmax(x @ y.transpose(1, 2) / math.sqrt(d) * temperature, dim=-1)
    return p, torch.randn(count, n, d, generator=gen, dtype=torch.float64)


def smallest_k(rows: list[Row], eps: float, target: float) -> int | None:
    """Smallest k whose measured failure rate is below ``target`` (None if none is)."""
    ok = sorted(r.k for r in rows if r.eps == eps and r.rate < target)
    return ok[0] if ok else None
