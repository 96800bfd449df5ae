"""The collector's fast paths: each family's four errors from its structure, without the
dense ``P~`` where it has one (each equals :func:`lowrank.families.compare.metrics.errors` on
the pure function's ``P~`` up to rounding; tested), and the tensors of one chunk they share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from lowrank.families.compare.kernels import iterative_pinv, segment_means, stable_features
from lowrank.families.compare.methods import attention_scores, causal_mask
from lowrank.families.compare.metrics import metrics_from


@dataclass
class ChunkContext:
    """One chunk's tensors, shared by every family (c matrices)."""

    p: torch.Tensor  # (c, n, n) float64 exact P
    q: torch.Tensor  # (c, n, d)
    k: torch.Tensor
    v: torch.Tensor
    exact: torch.Tensor  # (c, n, d) P V
    scores: torch.Tensor  # (c, n, n) Q K^T scale
    s: torch.Tensor  # (c, n) singular values of P, descending
    u: torch.Tensor  # (c, n, n) left singular vectors of P, descending
    special: torch.Tensor  # (c, n) bool
    causal: bool
    scale: float
    layer: int
    heads: torch.Tensor  # (c,) head of each matrix, to pick its draws
    norms: Any = None  # (||P||_F, ||P V||_F), each (c,)
    p_rows: Any = None  # (c, n) squared row norms of P
    top: Any = None  # topk of each row of P at the largest budget
    mass: torch.Tensor | None = None  # (c, n) P's mass on the last family's mask
    ranks: torch.Tensor | None = None  # (c, n, n) local-global key order

    @property
    def tril(self) -> torch.Tensor | None:
        return causal_mask(self.p.shape[-1]) if self.causal else None


class Draws(Protocol):
    """What the fast paths read from the collector: its random draws per (family, layer,
    budget), its LSH supports, and its spec (Nystrom's pseudo-inverse)."""

    draws: dict[tuple[str, int, int], Any]
    spec: Any

    def lsh_support(self, name: str, b: int, ctx: ChunkContext) -> torch.Tensor: ...


def nystrom_factors(ctx: ChunkContext, b: int, pinv: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Nystromformer's P~ = (F A^+) B as (L, R) with L = F A^+ (c, n, b), R = B^T."""
    ql, kl = segment_means(ctx.q, b), segment_means(ctx.k, b)
    f = torch.softmax(attention_scores(ctx.q, kl, ctx.scale), dim=-1)  # (c, n, b)
    a = torch.softmax(attention_scores(ql, kl, ctx.scale), dim=-1)  # (c, b, b)
    bt = torch.softmax(attention_scores(ql, ctx.k, ctx.scale), dim=-1).mT  # (c, n, b)
    inverse = torch.linalg.pinv(a) if pinv == "exact" else iterative_pinv(a)
    return f @ inverse, bt


def fast_metrics(
    collector: Draws, name: str, b: int, ctx: ChunkContext
) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """``(metrics (c, 4), mask or None)`` from the family's structure, without the
    dense P~ where it has one; None where only the dense path applies. Each equals
    :func:`errors` on the pure function's P~ (up to rounding; tested)."""
    p, v, exact = ctx.p, ctx.v, ctx.exact
    p_norm, o_norm = ctx.norms
    p_sq = p_norm**2

    def done(err_sq: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return metrics_from(err_sq.clamp_min(0).sqrt() / p_norm, out, exact, o_norm)

    if name == "lowrank-oracle":  # Eckart-Young: the tail of the spectrum
        uk = ctx.u[..., :b]
        return done((ctx.s[..., b:] ** 2).sum(-1), uk @ (uk.mT @ exact)), None
    if name == "linformer":  # P B B^T with B orthonormal: ||P||^2 - ||P B||^2
        basis = collector.draws[("linformer", ctx.layer, b)][1][ctx.heads]
        pb = p @ basis
        return done(p_sq - (pb**2).sum(dim=(-2, -1)), pb @ (basis.mT @ v)), None
    if name in ("sparse-oracle", "sparse-oracle-renorm"):
        values, index = ctx.top.values[..., :b], ctx.top.indices[..., :b]
        kept = torch.zeros_like(p).scatter_(-1, index, values)
        return restricted(kept, values.sum(-1), name.endswith("renorm"), ctx), None
    if name in ("lsh", "local-global"):
        if name == "lsh":
            mask = collector.lsh_support("lsh", b, ctx)
        else:
            assert ctx.ranks is not None
            mask = ctx.ranks < b
            mask = mask & ctx.tril if ctx.tril is not None else mask
        kept = torch.where(mask, p, 0.0)
        ctx.mass = kept.sum(-1)  # (c, n) share of each row's attention kept
        return restricted(kept, ctx.mass, True, ctx), mask
    if name == "performer" and not ctx.causal:
        omega = collector.draws[("performer", ctx.layer, b)][ctx.heads]
        fq, fk, _, _ = stable_features(ctx.q, ctx.k, ctx.scale, omega)
        a = fq / (fq @ fk.sum(dim=-2, keepdim=True).mT)  # P~ = A fk^T
        return factored(a, fk, p_sq, ctx), None
    if name == "nystrom":
        return factored(*nystrom_factors(ctx, b, collector.spec.pinv), p_sq, ctx), None
    if name == "uniform":
        n = p.shape[-1]
        counts = torch.arange(1, n + 1, dtype=p.dtype) if ctx.causal else torch.full((n,), n)
        out = v.cumsum(-2) / counts[:, None] if ctx.causal else v.mean(-2, keepdim=True)
        err_sq = (ctx.p_rows - 1 / counts).sum(-1)  # rows of P sum to 1
        return done(err_sq, out.expand_as(exact)), None
    return None


def restricted(
    kept: torch.Tensor, mass: torch.Tensor, renormalise: bool, ctx: ChunkContext
) -> torch.Tensor:
    """Metrics of ``P~ = kept / mass`` (or ``kept``), kept = P on a support, 0 off it.

    Per row, ``||P~_i - P_i||^2 = (1/r - 1)^2 a + (||P_i||^2 - a)`` with r the mass and a
    the squared norm of P on the support (r = 1 when not renormalised).
    """
    p_norm, o_norm = ctx.norms
    a = torch.linalg.vector_norm(kept, dim=-1) ** 2
    out = kept @ ctx.v
    if renormalise:
        scale = torch.where(mass > 0, 1 / mass.clamp_min(1e-300), 0.0)
        out = out * scale[..., None]
        rows = (scale - 1) ** 2 * a + ctx.p_rows - a
    else:
        rows = ctx.p_rows - a
    p_err = rows.sum(-1).clamp_min(0).sqrt() / p_norm
    return metrics_from(p_err, out, ctx.exact, o_norm)


def factored(
    left: torch.Tensor, right: torch.Tensor, p_sq: torch.Tensor, ctx: ChunkContext
) -> torch.Tensor:
    """Metrics of ``P~ = L R^T`` (L (c, n, r), R (c, n, r)) without forming it:
    ``||P~||^2 = <L^T L, R^T R>``, ``<P~, P> = <L, P R>``."""
    p_norm, o_norm = ctx.norms
    fro_sq = ((left.mT @ left) * (right.mT @ right)).sum(dim=(-2, -1))
    inner = (left * (ctx.p @ right)).sum(dim=(-2, -1))
    err_sq = fro_sq - 2 * inner + p_sq
    out = left @ (right.mT @ ctx.v)
    return metrics_from(err_sq.clamp_min(0).sqrt() / p_norm, out, ctx.exact, o_norm)
