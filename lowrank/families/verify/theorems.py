"""The paper's probabilistic statements as computable bounds, and their empirical check.

Conventions (Wang et al. 2020, Sec. 4 and Appendix A; Arriaga & Vempala 2006 for the JL
lemma): R is k x n with iid N(0, 1/k) entries; ``gap(eps) = eps^2 - eps^3``.

* JL lemma. The source (Arriaga & Vempala 2006, Thm. 2) is on *squared* norms:
  ``Pr(||R x||^2 > (1 + eps) ||x||^2) <= exp(-gap k / 4)``. The paper's Lemma states it on
  norms, ``Pr(||R x|| > (1 + eps) ||x||)``, a smaller event, so the same bound holds for it
  too (``jl-norm`` and ``jl-norm2`` rows). For Gaussian R both probabilities are known
  exactly: ``k ||R x||^2 / ||x||^2`` is chi-square with k degrees of freedom. Inner
  products: ``Pr(|x R^T R y^T - x y^T| > eps ||x|| ||y||) <= 2 exp(-gap k / 4)``, the
  paper's constant (a polarisation argument from the squared-norm lemma alone gives 4).
* Theorem 1 says only that *some* low-rank P~ exists with
  ``||P~ w - P w|| < eps ||P w||`` with probability 1 - o(1). Its proof *constructs*
  ``P~ = P R^T R`` and applies the inner-product lemma to each row p_i of P and w: every
  row then satisfies ``|p_i R^T R w - p_i w| <= eps ||p_i|| ||w||`` outside an event of
  probability ``2 n exp(-gap k / 4)`` (union bound over the n rows). Squaring and summing
  the rows gives the weaker ``||P R^T R w - P w|| <= eps ||P||_F ||w||`` (not eps ||P w||:
  ||P||_F ||w|| is larger). Four statements are therefore measured, each named for what it
  is: ``paper`` (the proof's construction judged against the printed bound eps ||Pw||: no
  proof covers it), ``jl-rows`` (the per-row event the union bound covers), ``jl-consistent``
  (the Frobenius event it implies, so the same bound holds), and ``witness`` (the best
  rank-k approximation P_k). Only the two JL rows can "hold" or be "violated".
* Theorem 2: ``k = min(9 d ln(d) / eps^2, 5 ln(n) / eps^2)``, the Theta constants set to 1,
  for ``||softmax(w E^T) F V - softmax(w) V|| <= eps ||softmax(w)|| ||V||_2``; no explicit
  failure bound, so its rows carry rates, not verdicts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats

from lowrank.families.verify.options import MIN_EPS, check_eps
from lowrank.maths.stats import ClusteredRate, holm

__all__ = ["MIN_EPS", "check_eps"]


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


STATEMENTS: dict[str, str] = {
    "paper": (
        "||P R^T R w - P w|| < eps ||P w||  (the proof's construction judged against the "
        "printed bound; no proof covers it)"
    ),
    "jl-rows": (
        "|p_i R^T R w - p_i w| <= eps ||p_i|| ||w|| for every row i  (the event the proof's "
        "union bound covers: failure <= 2n exp(-(eps^2-eps^3)k/4))"
    ),
    "jl-consistent": (
        "||P R^T R w - P w|| <= eps ||P||_F ||w||  (implied by jl-rows, so the same bound "
        "2n exp(-(eps^2-eps^3)k/4) holds)"
    ),
    "witness": (
        "||P_k w - P w|| < eps ||P w||, P_k the best rank-k approximation (one low-rank P~ "
        "for all w; exact once k >= rank P)"
    ),
    "jl-norm": "||R x|| <= (1+eps) ||x||  (the paper's JL lemma, on norms; bound exp(-gap k/4))",
    "jl-norm2": (
        "||R x||^2 <= (1+eps) ||x||^2  (Arriaga-Vempala's lemma, on squared norms; "
        "bound exp(-gap k/4))"
    ),
    "jl-inner": "|x R^T R y - x y| <= eps ||x|| ||y||  (the paper's bound 2 exp(-gap k/4))",
    "theorem2": (
        "||softmax(w E^T) F V - softmax(w) V|| <= eps ||softmax(w)||_2 ||V||_2 (spectral norm "
        "of V), E = delta R, F = exp(-delta) R  (probability 1 - o(1), no explicit bound)"
    ),
}
# Statements whose failure probability a proof bounds: only these get holds/violated.
PROMISED = ("jl-rows", "jl-consistent", "jl-norm", "jl-norm2", "jl-inner")
# Vectors w: data (value columns), random (Gaussian), aligned with P (its top right singular
# vectors and its rows: ||Pw|| large, the easy case for the paper's bound) and against it
# (its bottom right singular vectors: ||Pw|| = s_min, the hard case).
VECTORS = ("values", "gaussian", "top-singular", "rows", "bottom-singular")


def jl_exact_failure(eps: float, k: int, squared: bool) -> float:
    """Exact ``Pr(||R x||^2 > t ||x||^2)`` for Gaussian R (k ||Rx||^2/||x||^2 ~ chi2_k), with
    ``t = 1 + eps`` (``squared``) or ``(1 + eps)^2`` (norms)."""
    t = 1 + eps if squared else (1 + eps) ** 2
    return float(stats.chi2.sf(k * t, k))


def k_for_failure(statement: str, n: int, eps: float, target: float) -> float | None:
    """The k at which a statement's bound reaches the failure level ``target``: the bound
    solved for k, so that theory and measurement are compared at the same level.

    ``jl-rows``/``jl-consistent``: ``2 n exp(-gap k/4) = target``, k = 4 ln(2n/target) / gap;
    ``jl-norm``/``jl-norm2``: 4 ln(1/target) / gap; ``jl-inner``: 4 ln(2/target) / gap.
    None for statements without a failure bound.
    """
    factor = {
        "jl-rows": 2 * n,
        "jl-consistent": 2 * n,
        "jl-norm": 1,
        "jl-norm2": 1,
        "jl-inner": 2,
    }.get(statement)
    if factor is None:
        return None
    return 4 * math.log(factor / target) / gap(eps)


@dataclass
class Row:
    """One line of the verification table: a statement on one source of matrices and
    vectors, at one (eps, k), with its cluster-robust rate and, after Holm, its verdict."""

    statement: str  # a key of STATEMENTS
    source: str  # "real", "synthetic beta=..", "random" (JL rows)
    vectors: str  # one of VECTORS, or "-" (JL rows on random vectors, Theorem 2 rows)
    eps: float
    k: int
    rate: ClusteredRate
    bound: float | None
    exact: float | None = None  # exact failure probability, where known (Gaussian JL)
    p_holm: float | None = None
    verdict: str = "n/a"

    @property
    def interval(self) -> tuple[float, float]:
        return self.rate.interval()


def assign_verdicts(rows: list[Row], alpha: float = 0.05) -> int:
    """Holm-corrected verdicts on the rows whose bound a proof promises.

    ``holds``: the rate is significantly below the bound; ``violated``: significantly above;
    ``inconclusive``: neither after Holm over all tested rows; ``vacuous``: the bound is
    >= 1. Other rows keep ``n/a``. Returns the number of tests in the family.
    """
    tested = [r for r in rows if r.statement in PROMISED and r.bound is not None and r.bound < 1]
    for r in rows:
        if r.statement in PROMISED and r.bound is not None and r.bound >= 1:
            r.verdict = "vacuous"
    for r, p in zip(tested, holm([r.rate.p_value(r.bound) for r in tested]), strict=True):  # type: ignore[arg-type]
        r.p_holm = p
        if p >= alpha:
            r.verdict = "inconclusive"
        else:
            r.verdict = "holds" if r.rate.rate < r.bound else "violated"  # type: ignore[operator]
    return len(tested)


def probe_vectors(
    probs: torch.Tensor,
    value: torch.Tensor,
    vh: torch.Tensor | None,
    kinds: tuple[str, ...],
    gen: torch.Generator,
) -> dict[str, torch.Tensor]:
    """The vectors w Theorem 1 is tested on, min(d, n) of each kind per matrix, (M, n, .).

    ``values``: the columns of V (real data); ``gaussian``: iid N(0, I) vectors; aligned with
    P, the easy case for the paper's bound eps ||Pw||: ``top-singular`` (the top right
    singular vectors of P, from ``vh``) and ``rows`` (rows of P spread evenly over the
    sequence, as vectors); against P, the hard case: ``bottom-singular`` (the bottom right
    singular vectors, where ||Pw|| = s_min).
    """
    m, n, d = value.shape
    c = min(d, n)
    out: dict[str, torch.Tensor] = {}
    for kind in kinds:
        if kind == "values":
            out[kind] = value.double()
        elif kind == "gaussian":
            out[kind] = torch.randn(m, n, d, generator=gen, dtype=torch.float64)
        elif kind == "top-singular":
            assert vh is not None
            out[kind] = vh[:, :c, :].transpose(1, 2)
        elif kind == "bottom-singular":
            assert vh is not None
            out[kind] = vh[:, n - c :, :].transpose(1, 2)
        elif kind == "rows":
            idx = torch.linspace(0, n - 1, c).round().long()
            out[kind] = probs.double()[:, idx, :].transpose(1, 2)
        else:
            raise ValueError(f"unknown vectors {kind!r}")
    return out


def theorem1_failures(
    probs: torch.Tensor,
    vectors: dict[str, torch.Tensor],
    k: int,
    eps_list: list[float],
    gen: torch.Generator,
    svd: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
) -> dict[tuple[str, str], np.ndarray]:
    """Failures of the Theorem 1 statements, per matrix, for one fresh R per matrix.

    Args:
        probs: (M, n, n) attention matrices; vectors: kind -> (M, n, m), each column one w;
        svd: P's SVD ``(U, S, Vh)`` to also measure the ``witness`` statement.

    Returns:
        ``(statement, kind)`` -> (M, E) counts of failing vectors (out of m) per matrix and
        eps: one cluster per matrix, since its vectors share its draw of R.
    """
    m, n, _ = probs.shape
    r = torch.randn(m, k, n, generator=gen, dtype=torch.float64) / math.sqrt(k)
    p = probs.double()
    p_fro = torch.linalg.matrix_norm(p)[:, None]  # (M, 1)
    pr = p @ r.transpose(1, 2)  # (M, n, k)
    out: dict[tuple[str, str], np.ndarray] = {}
    for kind, w in vectors.items():
        exact = p @ w  # (M, n, m)
        diff = pr @ (r @ w) - exact  # (M, n, m): P R^T R w - P w
        err = diff.norm(dim=-2)  # (M, m)
        pw, wn = exact.norm(dim=-2), w.norm(dim=-2)
        out[("paper", kind)] = _counts(err, pw, eps_list, strict=False)
        # the union bound's event: every row within eps ||p_i|| ||w||
        diff = diff.abs()
        row_scale = p.norm(dim=-1)[:, :, None] * wn[:, None, :]  # (M, n, m)
        out[("jl-rows", kind)] = np.stack(
            [(diff > e * row_scale).any(dim=-2).sum(-1).numpy() for e in eps_list], -1
        )
        out[("jl-consistent", kind)] = _counts(err, p_fro * wn, eps_list, strict=True)
        if svd is not None:
            u, s, vh = svd
            best = (u[..., :k] * s[:, None, :k]) @ (vh[:, :k, :] @ w)
            out[("witness", kind)] = _counts((best - exact).norm(dim=-2), pw, eps_list, False)
    return out


def _counts(
    err: torch.Tensor, scale: torch.Tensor, eps_list: list[float], strict: bool
) -> np.ndarray:
    """(M, E) failures per matrix: ``err > eps scale`` (``strict``) or ``err >= eps scale``."""
    cols = [(err > e * scale) if strict else (err >= e * scale) for e in eps_list]
    return torch.stack([c.sum(-1) for c in cols], -1).numpy()


@dataclass(frozen=True)
class Theorem2Setup:
    """What Theorem 2's check needs of one set of matrices, whatever k: computed once.

    Attributes:
        scores: (M, n, n) the scaled scores ``w = q K^T * scale`` the Linformer head projects.
        value: (M, n, d) V; exact: (M, n, d) ``P V`` with the model's own P.
        rhs: (M, n) ``||p_i|| ||V||_2`` (spectral norm of V), the bound's scale per row.
    """

    scores: torch.Tensor
    value: torch.Tensor
    exact: torch.Tensor
    rhs: torch.Tensor


def theorem2_setup(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    probs: torch.Tensor | None = None,
    scale: float | None = None,
) -> Theorem2Setup:
    """Theorem 2's k-free parts, float64, from (M, n, d) Q, K, V.

    ``probs`` (M, n, n) is the model's P (causal, masked or biased as the model made it); None
    rebuilds it as ``softmax(q K^T * scale)``. ``scale`` defaults to ``d^-1/2``.
    """
    d = query.shape[-1]
    scale = d**-0.5 if scale is None else scale
    q, kk, v = query.double(), key.double(), value.double()
    scores = q @ kk.transpose(1, 2) * scale  # (M, n, n)
    p = torch.softmax(scores, dim=-1) if probs is None else probs.double()
    rhs = p.norm(dim=-1) * torch.linalg.matrix_norm(v, ord=2)[:, None]
    return Theorem2Setup(scores, v, p @ v, rhs)


def theorem2_failures(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    k: int,
    eps_list: list[float],
    gen: torch.Generator,
    delta: float = 1.0,
    setup: Theorem2Setup | None = None,
) -> np.ndarray:
    """Failures, per query row, of ``||softmax(w E^T) F V - softmax(w) V|| <= eps
    ||softmax(w)|| ||V||_2`` with E = delta R, F = exp(-delta) R, R Gaussian N(0, 1/k).

    Args:
        query, key, value: (M, n, d), ``w`` = the scaled scores ``q K^T / sqrt(d)``.
        setup: :func:`theorem2_setup` of the same matrices (computed here when None); with
            the model's P in it, ``softmax(w)`` is that P (a causal model's rows stay causal;
            the Linformer head itself mixes every key, as Linformer does).

    Returns:
        (M, E) counts out of n per matrix: one cluster per matrix (its rows share R).
    """
    m, n, _ = query.shape
    r = torch.randn(m, k, n, generator=gen, dtype=torch.float64) / math.sqrt(k)
    s = setup if setup is not None else theorem2_setup(query, key, value)
    projected = torch.softmax(s.scores @ (delta * r).transpose(1, 2), -1)  # (M, n, k)
    approx = projected @ (math.exp(-delta) * r @ s.value)
    lhs = (approx - s.exact).norm(dim=-1)  # (M, n)
    return torch.stack([(lhs > e * s.rhs).sum(-1) for e in eps_list], -1).numpy()


JL_CHUNK_ENTRIES = 2**22
"""Entries of R drawn at once by :func:`jl_failures` (32 MiB of float64): trials are streamed
in chunks of ``max(1, JL_CHUNK_ENTRIES // (k n))``, so the peak memory no longer grows with
``trials x k x n`` (2000 trials at k = n = 512 took 4.2 GB at once). The chunk size depends
on k and n only, so the draws are the same on every machine."""


def jl_failures(
    n: int, k: int, eps_list: list[float], trials: int, gen: torch.Generator
) -> dict[str, np.ndarray]:
    """The JL lemma itself on random Gaussian vectors, a fresh R per trial.

    The vectors x, y (trials, n) are drawn first, then R (k x n, iid N(0, 1/k)) chunk by
    chunk (:data:`JL_CHUNK_ENTRIES`): the same numbers whatever the memory.

    Returns:
        ``jl-norm``, ``jl-norm2``, ``jl-inner`` -> (trials, E) failure indicators.
    """
    x = torch.randn(trials, n, generator=gen, dtype=torch.float64)
    y = torch.randn(trials, n, generator=gen, dtype=torch.float64)
    chunk = max(1, JL_CHUNK_ENTRIES // (k * n))
    rx_parts, ry_parts = [], []
    for lo in range(0, trials, chunk):
        hi = min(trials, lo + chunk)
        r = torch.randn(hi - lo, k, n, generator=gen, dtype=torch.float64) / math.sqrt(k)
        rx_parts.append((r @ x[lo:hi, :, None])[..., 0])  # (chunk, k)
        ry_parts.append((r @ y[lo:hi, :, None])[..., 0])
    rx, ry = torch.cat(rx_parts), torch.cat(ry_parts)
    norm_ratio = rx.norm(dim=-1) / x.norm(dim=-1)
    inner_err = (rx * ry).sum(-1) - (x * y).sum(-1)
    scale = x.norm(dim=-1) * y.norm(dim=-1)
    return {
        "jl-norm": np.stack([(norm_ratio > 1 + e).numpy() for e in eps_list], -1),
        "jl-norm2": np.stack([(norm_ratio**2 > 1 + e).numpy() for e in eps_list], -1),
        "jl-inner": np.stack([(inner_err.abs() > e * scale).numpy() for e in eps_list], -1),
    }


def synthetic_attention(
    n: int, d: int, inverse_temperature: float, count: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``P = softmax(beta X Y^T / sqrt(d))`` and Gaussian values V.

    ``beta`` is an inverse temperature: small beta gives near-uniform rows, large beta
    near one-hot rows.

    Returns:
        P (count, n, n) and V (count, n, d), float64.
    """
    x = torch.randn(count, n, d, generator=gen, dtype=torch.float64)
    y = torch.randn(count, n, d, generator=gen, dtype=torch.float64)
    p = torch.softmax(x @ y.transpose(1, 2) / math.sqrt(d) * inverse_temperature, dim=-1)
    return p, torch.randn(count, n, d, generator=gen, dtype=torch.float64)


def smallest_k(rows: list[Row], certified: bool, target: float) -> int | None:
    """Smallest k of ``rows`` (one series, one eps) from which the failure rate stays below
    ``target`` at every larger k of the grid: the point estimate, or (``certified``) the
    upper end of its 95% interval (each k's own interval, not adjusted for the scan)."""
    below = {r.k: (r.interval[1] if certified else r.rate.rate) < target for r in rows}
    found = None
    for k in sorted(below, reverse=True):
        if not below[k]:
            break
        found = k
    return found
