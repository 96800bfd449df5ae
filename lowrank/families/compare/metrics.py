"""The errors of an approximate attention, and the per-head statistics ``compare`` relates
them to (entropy, sink mass)."""

from __future__ import annotations

import math

import torch

from lowrank.families.compare.methods import _TINY, METRICS

__all__ = ["METRICS", "errors", "metrics_from", "row_entropy", "sink_mass"]


def errors(
    approx: torch.Tensor,
    probs: torch.Tensor,
    value: torch.Tensor,
    exact: torch.Tensor,
    norms: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The four metrics of an approximation, in :data:`METRICS` order.

    ``||P~ - P||_F / ||P||_F``; ``||O~ - O||_F / ||O||_F`` with ``O = P V``,
    ``O~ = P~ V``; the scale-free error ``min_a ||a O~ - O|| / ||O|| = sqrt(1 - cos^2)``;
    and ``cos = <O~, O> / (||O~|| ||O||)`` (0 when O~ = 0).

    Args:
        approx, probs: (..., n, n); value: (..., n, d); exact: (..., n, d) = P V;
        norms: ``(||P||_F, ||O||_F)``, each (...), when already known.

    Returns:
        (..., 4) float64.
    """
    p = probs.double()
    p_norm, o_norm = norms if norms is not None else (_fro(p), _fro(exact))
    out = approx.double() @ value.double()
    return metrics_from(_fro(approx - p) / p_norm.clamp_min(_TINY), out, exact, o_norm)


def metrics_from(
    p_err: torch.Tensor, out: torch.Tensor, exact: torch.Tensor, o_norm: torch.Tensor
) -> torch.Tensor:
    """:func:`errors` from ``||P~ - P||_F / ||P||_F`` (...) and ``O~ = P~ V`` (..., n, d),
    for families whose structure gives both without forming P~.

    Returns:
        (..., 4) float64 in :data:`METRICS` order.
    """
    o_err = _fro(out - exact) / o_norm.clamp_min(_TINY)
    dot = (out * exact).sum(dim=(-2, -1))
    out_norm = _fro(out)
    cos = (dot / (out_norm * o_norm).clamp_min(_TINY)).clamp(-1.0, 1.0)
    alpha = dot / (out_norm**2).clamp_min(_TINY)  # the best scale, 0 for O~ = 0
    scaled = _fro(exact - alpha[..., None, None] * out) / o_norm.clamp_min(_TINY)
    return torch.stack([p_err, o_err, scaled, cos], dim=-1)


def _fro(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x, dim=(-2, -1))


def row_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-sum_j P_ij ln P_ij``, divided by ln n (in [0, 1]).

    Args:
        probs: (..., n, n).

    Returns:
        (...,).
    """
    p = probs.double()
    n = p.shape[-1]
    h = -torch.where(p > 0, p * torch.log(torch.where(p > 0, p, 1.0)), 0.0).sum(dim=-1)
    return h.mean(dim=-1) / math.log(n)


def sink_mass(probs: torch.Tensor, sinks: torch.Tensor) -> torch.Tensor:
    """Mean over rows of the attention on the sink keys.

    Args:
        probs: (..., n, n); sinks: (..., n) bool, broadcast (first/special tokens).

    Returns:
        (...,).
    """
    return (probs.double() * sinks[..., None, :].double()).sum(dim=-1).mean(dim=-1)
