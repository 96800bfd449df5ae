"""Projections behind Linformer's theorems (Wang et al. 2020, Sec. 4 and Appendix).

Pure functions on tensors:

* JL matrices ``R`` (k x n) with ``E[R^T R] = I``: Gaussian N(0, 1/k) (the paper's),
  Rademacher +-1/sqrt(k), and sparse JL (Achlioptas 2003 with s = 3; Li et al. 2006's very
  sparse s = sqrt(n)).
* Deterministic projections the paper mentions: mean and max pooling over blocks of about
  n/k positions, and a learning-free strided convolution with a triangular (Bartlett)
  kernel, whose row space (piecewise-linear functions of position) differs from mean
  pooling's (piecewise-constant ones).
* Two estimators of ``P`` from a projection E (k x n), compared on the same draw:
  ``paper``, the Gram form ``P E^T E`` of Theorem 1's proof (``R^T R`` for JL, with
  ``E[R^T R] = I``; a deterministic E is rescaled so that ``tr(E^T E) = n``, its counterpart),
  and ``projector``, ``P E^+ E``, the orthogonal projection onto E's row space.
* References every comparison needs: the best rank-k approximation of P (Eckart-Young; the
  floor for ``||P~ - P||``, not for the output error), the output floor
  ``||PV - (PV)_k|| / ||PV||`` (the floor for any rank-k output), and the trivial baselines
  zero attention (output 0) and uniform attention (every row of P equal to 1/n).
* Linformer's E and F built from R as in the proof of Theorem 2 (E = delta R,
  F = exp(-delta) R) and the paper's sharing strategies (Sec. 4, "parameter sharing").
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from lowrank.core.options import flag, named
from lowrank.core.random import seeded_generator
from lowrank.errors import LowrankError
from lowrank.maths.names import (
    BASELINES,
    JL_METHODS,
    LINEAR_METHODS,
    METHODS,
    SHARING_DESIGN,
    SHARINGS,
    Baseline,
    Estimator,
    Method,
    Sharing,
)

__all__ = [
    "BASELINES",
    "JL_METHODS",
    "LINEAR_METHODS",
    "METHODS",
    "SHARINGS",
    "SHARING_DESIGN",
    "Baseline",
    "Estimator",
    "Method",
    "Sharing",
    "check_k_range",
]


def check_k_range(ks: Sequence[int], n: int) -> None:
    """Every projected dimension k in 1..n (a k x n projection of an n x n matrix)."""
    bad = [k for k in ks if not 0 < k <= n]
    if bad:
        raise LowrankError(
            f"{named('k', bad[0])} is outside 1..n = {n}: choose k <= {flag('seq_len')} (pass "
            f"{flag('k')} when {flag('seq_len')} is below a default k)"
        )


def jl_matrix(method: str, k: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """A random JL matrix R (k, n), float64, with iid entries of mean 0 and variance 1/k.

    So ``E[R^T R] = I_n`` for every family; ``sparse`` has 2/3 zeros (Achlioptas),
    ``very-sparse`` all but a 1/sqrt(n) fraction.
    """
    if method == "gaussian":
        return torch.randn(k, n, generator=generator, dtype=torch.float64) / math.sqrt(k)
    if method == "rademacher":
        signs = torch.randint(0, 2, (k, n), generator=generator, dtype=torch.int64) * 2 - 1
        return signs.to(torch.float64) / math.sqrt(k)
    if method in ("sparse", "very-sparse"):
        s = 3.0 if method == "sparse" else math.sqrt(n)
        u = torch.rand(k, n, generator=generator, dtype=torch.float64)
        values = torch.zeros(k, n, dtype=torch.float64)
        values[u < 1 / (2 * s)] = 1.0
        values[u > 1 - 1 / (2 * s)] = -1.0
        return values * math.sqrt(s / k)
    raise ValueError(f"unknown JL family {method!r}")


def blocks(n: int, k: int) -> list[tuple[int, int]]:
    """k contiguous blocks covering 0..n, sizes differing by at most one."""
    edges = [round(i * n / k) for i in range(k + 1)]
    return [(edges[i], edges[i + 1]) for i in range(k)]


def pooling_matrix(method: str, k: int, n: int) -> torch.Tensor:
    """Mean pooling (``mean-pool``) or the triangular convolution (``conv``) as E (k, n).

    Rows are non-negative and sum to 1, so ``E K`` averages keys. Mean pooling averages
    blocks of about n/k positions. ``conv`` is a strided convolution with a triangular
    (Bartlett) kernel of half-width h = (n - 1) / (k - 1) and stride h: row i is the hat
    function centred on position i h, so E's row space is the piecewise-linear functions of
    position with knots i h, a
    different operator from mean pooling's piecewise-constant one: its projector
    ``E^+ E`` keeps constant and linear sequences exactly (E itself averages, so its
    boundary rows do not). k = 1 is the mean.
    """
    if method == "mean-pool":
        e = torch.zeros(k, n, dtype=torch.float64)
        for i, (lo, hi) in enumerate(blocks(n, k)):
            e[i, lo:hi] = 1.0 / (hi - lo)
        return e
    if method != "conv":
        raise ValueError(f"no pooling matrix for {method!r}")
    if k == 1:
        return torch.full((1, n), 1.0 / n, dtype=torch.float64)
    h = (n - 1) / (k - 1)
    pos = torch.arange(n, dtype=torch.float64)
    centres = torch.arange(k, dtype=torch.float64) * h
    e = (1 - (pos[None, :] - centres[:, None]).abs() / h).clamp_min(0)  # (k, n) hats
    return e / e.sum(dim=1, keepdim=True)


def max_pool(x: torch.Tensor, k: int) -> torch.Tensor:
    """Max pooling over the sequence axis in k blocks.

    Args:
        x: (..., n, d) keys or values.

    Returns:
        (..., k, d).
    """
    return torch.stack([x[..., lo:hi, :].amax(dim=-2) for lo, hi in blocks(x.shape[-2], k)], -2)


def row_space_basis(e: torch.Tensor) -> torch.Tensor:
    """An orthonormal basis Q (n, r) of the row space of E (k, n), so ``E^+ E = Q Q^T``.

    Reduced QR of ``E^T`` when E has full row rank (far cheaper than a pseudo-inverse); a
    rank-revealing SVD otherwise (a very sparse JL matrix can draw all-zero rows), keeping
    the singular vectors above the usual pseudo-inverse tolerance.
    """
    q, r = torch.linalg.qr(e.T)
    diag = r.diagonal().abs()
    tol = max(e.shape) * torch.finfo(e.dtype).eps * float(diag.max().clamp_min(1e-300))
    if bool((diag > tol).all()):
        return q
    _, s, vh = torch.linalg.svd(e, full_matrices=False)
    keep = s > max(e.shape) * torch.finfo(e.dtype).eps * float(s.max().clamp_min(1e-300))
    return vh[keep].T


@functools.lru_cache(maxsize=64)
def pooling_factors(method: str, k: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Q, E)`` of a pooling/convolution matrix E, Q an orthonormal basis of its row space,
    so that ``P E^+ E w = (P Q)(Q^T w)`` without forming the n x n projector; cached, as E
    depends only on (method, k, n)."""
    e = pooling_matrix(method, k, n)
    return row_space_basis(e), e


def row_space_projector(e: torch.Tensor) -> torch.Tensor:
    """The orthogonal projector ``E^+ E = Q Q^T`` (n, n) onto the row space of E (k, n).

    For mean pooling this is block averaging; for JL matrices the paper uses ``R^T R``
    instead, which equals the identity only in expectation.
    """
    q = row_space_basis(e)
    return q @ q.T


def estimator_factors(
    method: str, k: int, n: int, estimator: str, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` with ``A`` (n, k) and ``B`` (k, n), so ``P~ V = (P A)(B V)``, float64.

    ``paper``: ``A B = c E^T E`` with c = 1 for JL families (``R^T R``, Theorem 1's proof)
    and ``c = n / tr(E^T E)`` for pooling/convolution (the deterministic counterpart of
    ``E[R^T R] = I``, whose trace is n). ``projector``: ``A B = Q Q^T = E^+ E``, the
    orthogonal projector onto the row space of E, so ``P~ = P`` whenever the row space of P
    lies in that of E. A JL method draws R from ``generator`` (both estimators of one
    generator state see the same R); pooling ignores it.
    """
    if method in JL_METHODS:
        e = jl_matrix(method, k, n, generator)
        if estimator == "paper":
            return e.T, e
        q = row_space_basis(e)
        if q.shape[1] < k:  # a sparse R of lower rank (zero or repeated rows): pad with
            # zero columns so every draw has k columns; Q Q^T, the projector, is unchanged
            q = torch.cat([q, q.new_zeros(n, k - q.shape[1])], dim=1)
        return q, q.T
    if method not in ("mean-pool", "conv"):
        raise ValueError(f"{method!r} has no linear estimator")
    q, e = pooling_factors(method, k, n)
    if estimator == "paper":
        return e.T * (n / float((e**2).sum())), e
    return q, q.T


def best_rank_k(probs: torch.Tensor, k: int) -> torch.Tensor:
    """Truncated SVD ``P_k`` of a batch of matrices (..., n, n): the best rank-k approximation
    in every unitarily invariant norm (Eckart-Young-Mirsky)."""
    u, s, vh = torch.linalg.svd(probs, full_matrices=False)
    return (u[..., :, :k] * s[..., None, :k]) @ vh[..., :k, :]


def eckart_young_error(s: torch.Tensor, k: int) -> torch.Tensor:
    """``||P - P_k||_F = sqrt(sum_{i>k} s_i^2)`` from singular values (..., n)."""
    return torch.sqrt((s[..., k:] ** 2).sum(dim=-1))


def theorem1_errors(probs: torch.Tensor, value: torch.Tensor, approx: torch.Tensor) -> torch.Tensor:
    """Relative errors ``||P~ w - P w|| / ||P w||`` for every column w of V.

    Args:
        probs: (..., n, n) P; value: (..., n, d) V (each column is one w);
        approx: (..., n, n) P~.

    Returns:
        (..., d) float64.
    """
    return column_errors(approx.double() @ value.double(), probs.double() @ value.double())


def column_errors(approx: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """``||a_j - x_j|| / ||x_j||`` for every column j, in float64.

    Args:
        approx, exact: (..., n, d) ``P~ V`` and ``P V``.

    Returns:
        (..., d).
    """
    a, x = approx.double(), exact.double()
    return (a - x).norm(dim=-2) / x.norm(dim=-2).clamp_min(1e-300)


def linformer_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    e: torch.Tensor | None,
    f: torch.Tensor | None,
    scale: float,
    key_mask: torch.Tensor | None = None,
    pool: int | None = None,
) -> torch.Tensor:
    """Linformer head output ``softmax(Q (E K)^T * scale) (F V)`` (paper Eq. 7).

    Args:
        query, key, value: (..., n, d).
        e, f: (..., k, n) projections (broadcast over leading axes), or None with ``pool``
            set for max pooling of K and V into ``pool`` blocks.
        scale: 1/sqrt(d) for BERT-style attention.
        key_mask: (..., n) 1 for real tokens; padded keys and values are zeroed before the
            projection so they cannot leak into the k projected positions.

    Returns:
        (..., n, d).
    """
    if key_mask is not None:
        keep = key_mask[..., :, None].to(key.dtype)
        key, value = key * keep, value * keep
    if pool is not None:
        pk, pv = max_pool(key, pool), max_pool(value, pool)
    else:
        assert e is not None and f is not None
        pk, pv = e.to(key.dtype) @ key, f.to(value.dtype) @ value
    scores = (query @ pk.transpose(-1, -2)) * scale  # (..., n, k)
    return torch.softmax(scores, dim=-1) @ pv


def relative_frobenius(approx: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """``||A~ - A||_F / ||A||_F`` over the last two axes, float64."""
    a, b = approx.double(), exact.double()
    return (a - b).flatten(-2).norm(dim=-1) / b.flatten(-2).norm(dim=-1).clamp_min(1e-300)


def cosine_and_scale_free(
    approx: torch.Tensor, exact: torch.Tensor, dims: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarity and the scale-free error, reducing over ``dims``, float64.

    ``cos = <A~, A> / (||A~|| ||A||)``; the scale-free error is the error after the best
    scalar rescale, ``min_alpha ||alpha A~ - A|| / ||A||`` (alpha = <A~, A> / ||A~||^2),
    which equals ``sqrt(1 - cos^2)``. A zero approximation has cosine 0 (by convention) and
    scale-free error 1 (alpha cannot help it).
    """
    a, b = approx.double(), exact.double()
    dot = (a * b).sum(dim=dims)
    na, nb = a.norm(dim=dims), b.norm(dim=dims).clamp_min(1e-300)
    cos = torch.where(na > 0, dot / (na.clamp_min(1e-300) * nb), torch.zeros_like(dot))
    return cos, torch.sqrt((1 - cos**2).clamp_min(0))


def output_floor(exact: torch.Tensor, k: int) -> torch.Tensor:
    """``||PV - (PV)_k||_F / ||PV||_F``: the true floor for any output of rank <= k.

    ``P M V`` with M of rank k, the Linformer head ``softmax(.)_(n x k) (F V)`` and ``P_k V``
    all have rank <= k, so none can beat it (Eckart-Young on PV). It is 0 once k >= d.

    Args:
        exact: (..., n, d) ``P V``.

    Returns:
        (...,) float64.
    """
    s = torch.linalg.svdvals(exact.double())  # (..., min(n, d))
    return eckart_young_error(s, k) / s.norm(dim=-1).clamp_min(1e-300)


def baseline_output(baseline: str, value: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """The output of a trivial attention: ``zero`` (0) or ``uniform`` (every row of P equal
    to 1/n, so each output row is the mean of V; with ``causal``, row i averages V[:i+1]).

    Args:
        value: (..., n, d).

    Returns:
        (..., n, d) in value's dtype.
    """
    if baseline == "zero":
        return torch.zeros_like(value)
    if baseline != "uniform":
        raise ValueError(f"unknown baseline {baseline!r}")
    if causal:
        counts = torch.arange(1, value.shape[-2] + 1, dtype=value.dtype, device=value.device)
        return value.cumsum(dim=-2) / counts[:, None]
    return value.mean(dim=-2, keepdim=True).expand_as(value)


@dataclass
class ProjectionBank:
    """Linformer E and F matrices for every (layer, head) under a sharing strategy.

    Strategies (paper Sec. 4): ``none`` draws E and F per layer and head (2 L H matrices),
    ``headwise`` one E and one F per layer shared by its heads (2 L), ``key-value`` one
    matrix per layer used as both E and F (L), ``layerwise`` one matrix for the whole model
    (1). The paper's four confound two things: how widely a matrix is shared, and whether E
    and F come from one R. ``none-same-R`` (one R per head for E and F, L H) and
    ``layerwise-separate`` (one E and one F for the model, 2) complete the grid of
    :data:`SHARING_DESIGN`, so that each effect can be read with the other held fixed. For
    JL families E = delta R and F = exp(-delta) R (proof of Theorem 2); pooling and
    convolution matrices are deterministic, so every strategy gives the same one matrix.
    """

    method: str
    k: int
    n: int
    layers: int
    heads: int
    sharing: Sharing = "headwise"
    seed: int = 0
    delta: float = 1.0
    _cache: dict[tuple[str, int, int], torch.Tensor] = field(default_factory=dict, repr=False)

    def _key(self, which: str, layer: int, head: int) -> tuple[str, int, int]:
        if self.method not in JL_METHODS:
            return ("fixed", 0, 0)
        level, same_r = SHARING_DESIGN[self.sharing]
        name = "EF" if same_r else which
        if level == "head":
            return (name, layer, head)
        if level == "layer":
            return (name, layer, 0)
        return (name, 0, 0)

    def _base(self, key: tuple[str, int, int]) -> torch.Tensor:
        if key not in self._cache:
            if self.method in JL_METHODS:
                # one seed per matrix identity: draws do not depend on the order of use
                which, layer, head = key
                salt = {"E": 1, "F": 2, "EF": 3}[which]
                # 12: the banks' tag (project's R draws use 11, verify's 21-25)
                gen = seeded_generator(12, self.seed, salt, layer, head, self.k, self.n)
                self._cache[key] = jl_matrix(self.method, self.k, self.n, gen)
            else:
                self._cache[key] = pooling_matrix(self.method, self.k, self.n)
        return self._cache[key]

    def e(self, layer: int, head: int) -> torch.Tensor:
        base = self._base(self._key("E", layer, head))
        return base * self.delta if self.method in JL_METHODS else base

    def f(self, layer: int, head: int) -> torch.Tensor:
        base = self._base(self._key("F", layer, head))
        return base * math.exp(-self.delta) if self.method in JL_METHODS else base

    def layer_matrices(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """E and F stacked over heads: (H, k, n) each."""
        es = torch.stack([self.e(layer, h) for h in range(self.heads)])
        fs = torch.stack([self.f(layer, h) for h in range(self.heads)])
        return es, fs

    def distinct(self) -> int:
        """Number of distinct random matrices the strategy draws for the whole model."""
        keys = {
            self._key(w, layer, h)
            for w in ("E", "F")
            for layer in range(self.layers)
            for h in range(self.heads)
        }
        return len(keys)
