"""Projections behind Linformer's theorems (Wang et al. 2020, Sec. 4 and Appendix).

Pure functions on tensors:

* JL matrices ``R`` (k x n) with ``E[R^T R] = I``: Gaussian N(0, 1/k) (the paper's),
  Rademacher +-1/sqrt(k), and sparse JL (Achlioptas 2003 with s = 3; Li et al. 2006's very
  sparse s = sqrt(n)).
* Deterministic projections the paper mentions: mean and max pooling over blocks of about
  n/k positions, and a strided convolution with fixed averaging weights (kernel 2b, stride b).
* Linformer's E and F built from R as in the proof of Theorem 2 (E = delta R,
  F = exp(-delta) R) and the paper's sharing strategies (Sec. 4, "parameter sharing").
* The optimum: the best rank-k approximation of P (Eckart-Young).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

Method = Literal[
    "gaussian", "rademacher", "sparse", "very-sparse", "mean-pool", "max-pool", "conv", "svd"
]
JL_METHODS: tuple[str, ...] = ("gaussian", "rademacher", "sparse", "very-sparse")
Sharing = Literal["none", "headwise", "key-value", "layerwise"]


def seeded_generator(*entropy: int) -> torch.Generator:
    """A torch generator seeded from several integers (numpy's SeedSequence mixes them), so
    every (seed, batch, layer, draw, ...) gets its own reproducible stream."""
    seed = int(np.random.SeedSequence(list(entropy)).generate_state(1, np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(seed)


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
    """Mean pooling (``mean-pool``) or strided averaging convolution (``conv``) as E (k, n).

    Rows are non-negative and sum to 1, so ``E K`` averages keys within windows: blocks of
    about n/k positions for mean pooling, windows of two blocks (kernel 2b, stride b) for
    the convolution.
    """
    e = torch.zeros(k, n, dtype=torch.float64)
    spans = blocks(n, k)
    for i, (lo, hi) in enumerate(spans):
        if method == "conv":
            hi = spans[min(i + 1, k - 1)][1]
        elif method != "mean-pool":
            raise ValueError(f"no pooling matrix for {method!r}")
        e[i, lo:hi] = 1.0 / (hi - lo)
    return e


def max_pool(x: torch.Tensor, k: int) -> torch.Tensor:
    """Max pooling over the sequence axis in k blocks.

    Args:
        x: (..., n, d) keys or values.

    Returns:
        (..., k, d).
    """
    return torch.stack([x[..., lo:hi, :].amax(dim=-2) for lo, hi in blocks(x.shape[-2], k)], -2)


@functools.lru_cache(maxsize=64)
def pooling_factors(method: str, k: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(E^+, E)`` of a pooling/convolution matrix, so that ``P E^+ E w = (P E^+)(E w)``
    without forming the n x n projector; cached, as E depends only on (method, k, n)."""
    e = pooling_matrix(method, k, n)
    return torch.linalg.pinv(e), e


def row_space_projector(e: torch.Tensor) -> torch.Tensor:
    """The orthogonal projector ``E^+ E`` (n, n) onto the row space of E (k, n).

    For mean pooling this is block averaging; for JL matrices the paper uses ``R^T R``
    instead, which equals the identity only in expectation.
    """
    return torch.linalg.pinv(e) @ e


def theorem1_matrix(method: str, k: int, n: int, generator: torch.Generator) -> torch.Tensor | None:
    """M (n, n) with ``P~ = P M``: ``R^T R`` for JL (Theorem 1), ``E^+ E`` for pooling/conv.

    None for methods with no linear form (max pooling) or no fixed matrix (svd).
    """
    if method in JL_METHODS:
        r = jl_matrix(method, k, n, generator)
        return r.T @ r
    if method in ("mean-pool", "conv"):
        return row_space_projector(pooling_matrix(method, k, n))
    return None


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


@dataclass
class ProjectionBank:
    """Linformer E and F matrices for every (layer, head) under a sharing strategy.

    Strategies (paper Sec. 4): ``none`` draws E and F per layer and head (2 L H matrices),
    ``headwise`` one E and one F per layer shared by its heads (2 L), ``key-value`` one
    matrix per layer used as both E and F (L), ``layerwise`` one matrix for the whole model
    (1). For JL families E = delta R and F = exp(-delta) R (proof of Theorem 2); pooling and
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
        if self.sharing == "none":
            return (which, layer, head)
        if self.sharing == "headwise":
            return (which, layer, 0)
        if self.sharing == "key-value":
            return ("EF", layer, 0)
        return ("EF", 0, 0)

    def _base(self, key: tuple[str, int, int]) -> torch.Tensor:
        if key not in self._cache:
            if self.method in JL_METHODS:
                # one seed per matrix identity: draws do not depend on the order of use
                which, layer, head = key
                salt = {"E": 1, "F": 2, "EF": 3}[which]
                gen = seeded_generator(self.seed, salt, layer, head, self.k, self.n)
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
