"""Kernel and landmark families: Performer (FAVOR+), Scatterbrain and Nystromformer, and the
uniform baseline.

Pure functions on float64 tensors whose leading axes broadcast, as in
:mod:`lowrank.families.compare.methods`; each returns the approximate probabilities ``P~``
(..., n, n).
"""

from __future__ import annotations

import math

import torch

from lowrank.families.compare.methods import (
    _TINY,
    PinvMethod,
    attention_scores,
    causal_mask,
    masked_softmax,
)
from lowrank.maths.sketches import pooling_matrix


def orthogonal_features(heads: int, m: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """FAVOR+ random features omega, (heads, m, d): blocks of d orthogonal rows with chi(d)
    norms, so each row is marginally N(0, I_d) (Choromanski et al. 2021, Sec. 2.4)."""
    blocks = max(1, -(-m // d))
    g = torch.randn(heads, blocks, d, d, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[..., None, :]  # Haar
    rows = q.mT.reshape(heads, blocks * d, d)[:, :m]
    norms = torch.randn(heads, m, d, generator=generator, dtype=torch.float64).norm(dim=-1)
    return rows * norms[..., None]


def favor_log_features(x: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """``log(sqrt(m) phi(x)) = omega x - ||x||^2 / 2`` (positive features, FAVOR+ Eq. 7).

    Args:
        x: (..., n, d); omega: (..., m, d).

    Returns:
        (..., n, m).
    """
    x = x.double()
    return x @ omega.mT - 0.5 * (x * x).sum(dim=-1, keepdim=True)


def favor_kernel(query: torch.Tensor, key: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """``phi(Q) phi(K)^T``, an unbiased estimate of ``exp(Q K^T)`` over draws of omega.

    Args:
        query, key: (..., n, d); omega: (..., m, d).

    Returns:
        (..., n, n).
    """
    m = omega.shape[-2]
    fq = torch.exp(favor_log_features(query, omega))
    fk = torch.exp(favor_log_features(key, omega))
    return fq @ fk.mT / m


def stable_features(
    query: torch.Tensor, key: torch.Tensor, scale: float, omega: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """FAVOR+ features of ``Q sqrt(scale)`` and ``K sqrt(scale)``, shifted for stability.

    Args:
        query, key: (..., n, d); omega: (..., m, d).

    Returns:
        ``(fq, fk, cq, ck)``: fq, fk (..., n, m) with ``phi(q_i) . phi(k_j) = exp(cq_i + ck)
        fq_i . fk_j / m``; cq (..., n, 1) per query and ck (..., 1, 1) per matrix, both
        cancelling in the normalised P~.
    """
    root = math.sqrt(scale)
    lq = favor_log_features(query.double() * root, omega)  # (..., n, m)
    lk = favor_log_features(key.double() * root, omega)
    cq = lq.amax(dim=-1, keepdim=True)  # (..., n, 1)
    ck = lk.amax(dim=(-2, -1), keepdim=True)  # (..., 1, 1)
    return torch.exp(lq - cq), torch.exp(lk - ck), cq, ck


def _normalise_rows(a: torch.Tensor, causal: bool) -> torch.Tensor:
    if causal:
        a = a.tril()
    return a / a.sum(dim=-1, keepdim=True).clamp_min(_TINY)


def performer_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    scale: float,
    omega: torch.Tensor,
    causal: bool = False,
) -> torch.Tensor:
    """FAVOR+ ``P~ = D^-1 phi(Q) phi(K)^T`` with ``D = diag(phi(Q) phi(K)^T 1)``.

    Args:
        query, key: (..., n, d); omega: (..., m, d); Q and K are scaled by sqrt(scale)
            each so that ``phi(q) . phi(k)`` estimates ``exp(scale q . k)``.

    Returns:
        (..., n, n), rows summing to 1 (causal: over keys j <= i).
    """
    fq, fk, _, _ = stable_features(query, key, scale, omega)
    return _normalise_rows(fq @ fk.mT, causal)


def scatterbrain_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    scale: float,
    support: torch.Tensor,
    omega: torch.Tensor | None,
    causal: bool = False,
    scores: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scatterbrain: Performer's estimate of ``exp(S)``, exact on a sparse support, normalised.

    ``A~ = phi(Q) phi(K)^T + C`` with ``C_ij = exp(s_ij) - phi(q_i) . phi(k_j)`` on the
    support and 0 elsewhere (Chen et al. 2021, Sec. 3.1), then ``P~ = D^-1 A~``.

    Args:
        query, key: (..., n, d); support: (..., n, n) bool; omega: (..., m, d) or None for
            no features (then P~ is the softmax over the support); scores: (..., n, n)
            ``Q K^T scale`` when already computed.

    Returns:
        (..., n, n), rows summing to 1.
    """
    if scores is None:
        scores = attention_scores(query, key, scale)
    if omega is None or omega.shape[-2] == 0:
        return masked_softmax(
            scores, support & causal_mask(scores.shape[-1]) if causal else support
        )
    m = omega.shape[-2]
    fq, fk, cq, ck = stable_features(query, key, scale, omega)
    # phi(q) . phi(k) = exp(cq + ck) fq . fk / m: put exp(s) in the same units
    exact = torch.exp(scores - cq - ck) * m
    return _normalise_rows(torch.where(support, exact, fq @ fk.mT), causal)


def segment_means(x: torch.Tensor, landmarks: int) -> torch.Tensor:
    """Means of ``landmarks`` contiguous segments of the sequence.

    Args:
        x: (..., n, d).

    Returns:
        (..., landmarks, d).
    """
    return pooling_matrix("mean-pool", landmarks, x.shape[-2]).to(x.device) @ x.double()


def iterative_pinv(a: torch.Tensor, iterations: int = 6) -> torch.Tensor:
    """Nystromformer's iterative Moore-Penrose inverse (Xiong et al. 2021, Eq. 16).

    ``Z_0 = A^T / (||A||_1 ||A||_inf)``, ``Z <- Z (13 I - A Z (15 I - A Z (7 I - A Z))) / 4``.

    Args:
        a: (..., c, c).

    Returns:
        (..., c, c).
    """
    a = a.double()
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    norm1 = a.abs().sum(dim=-2).amax(dim=-1)[..., None, None]
    norm_inf = a.abs().sum(dim=-1).amax(dim=-1)[..., None, None]
    z = a.mT / (norm1 * norm_inf)
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def nystrom_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    scale: float,
    landmarks: int,
    pinv: PinvMethod = "exact",
) -> torch.Tensor:
    """Nystromformer ``P~ = softmax(Q K~^T) softmax(Q~ K~^T)^+ softmax(Q~ K^T)`` (scaled).

    Args:
        query, key: (..., n, d); landmarks: segment means of Q and K (1 <= c <= n).

    Returns:
        (..., n, n); exact when every token is its own landmark (c = n, exact pinv).
    """
    ql, kl = segment_means(query, landmarks), segment_means(key, landmarks)
    f = torch.softmax(attention_scores(query, kl, scale), dim=-1)  # (..., n, c)
    a = torch.softmax(attention_scores(ql, kl, scale), dim=-1)  # (..., c, c)
    b = torch.softmax(attention_scores(ql, key, scale), dim=-1)  # (..., c, n)
    inverse = torch.linalg.pinv(a) if pinv == "exact" else iterative_pinv(a)
    return (f @ inverse) @ b


def uniform_attention(n: int, causal: bool = False) -> torch.Tensor:
    """Rows 1/n (causal: 1/(i+1) over j <= i), (n, n) float64."""
    if not causal:
        return torch.full((n, n), 1.0 / n, dtype=torch.float64)
    return causal_mask(n).double() / torch.arange(1, n + 1, dtype=torch.float64)[:, None]
