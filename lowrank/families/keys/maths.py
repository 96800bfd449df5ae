"""Low-rank structure of queries, keys, values and logits: pure functions on tensors.

Three definitions of "rank for 90%" are in use and are not interchangeable; every function
names the one it computes and every reported number should carry its name:

- ``nuclear``: the share of the sum of singular values ``sum_{j<=i} s_j / sum_j s_j``, the
  Linformer paper's c (Wang et al. 2020, Fig. 1) and ``lowrank spectrum``'s rank90.
- ``variance``: explained variance of centred data, the eigenvalues of the covariance
  (``s^2 / (N - 1)`` of the centred matrix), as sklearn's PCA and Loki (Singhania et al.
  2024, Sec. 3) use.
- ``energy``: ``sum_{j<=i} s_j^2 / sum_j s_j^2`` of the uncentred matrix, ShadowKV's (Sun et
  al. 2024, Sec. 3.1) rank of the pre-RoPE key cache.

Ranks are counts of components (1-based): the smallest i whose cumulative share reaches the
fraction. Loki's script reports ``argmax(cumsum(ratio) > 0.90)``, a 0-based index with a
strict inequality, which is one less than the count unless the share lands exactly on the
fraction (:func:`loki_index` reproduces it for comparison).
"""

from __future__ import annotations

import numpy as np
import torch

from lowrank.errors import LowrankError

# Rounding in a cumulative sum must not push a rank one up (as in lowrank.spectra.maths).
_SLACK = 1e-12


def cumulative_share(values: torch.Tensor) -> torch.Tensor:
    """Normalised cumulative sum ``c_i = sum_{j<=i} v_j / sum_j v_j`` in float64.

    Args:
        values: (..., n) non-negative, in descending order (singular values for ``nuclear``,
            their squares for ``energy``, covariance eigenvalues for ``variance``).

    Returns:
        (..., n) non-decreasing, ``c_n = 1`` (all ones for an all-zero input).
    """
    v = values.to(torch.float64)
    total = v.sum(dim=-1, keepdim=True)
    positive = total > 0
    return torch.where(positive, torch.cumsum(v, dim=-1) / torch.where(positive, total, 1.0), 1.0)


def rank_at(values: torch.Tensor, fraction: float = 0.9) -> torch.Tensor:
    """Number of leading components whose share reaches ``fraction``: the smallest 1-based i
    with ``cumulative_share(values)[i-1] >= fraction``.

    Args:
        values: (..., n) non-negative, descending (see :func:`cumulative_share`).

    Returns:
        (...,) int64 in [1, n].
    """
    if not 0 < fraction <= 1:
        raise LowrankError(f"rank fraction {fraction} must be in (0, 1]")
    hit = cumulative_share(values) >= fraction - _SLACK
    return hit.to(torch.int64).argmax(dim=-1) + 1


def loki_index(values: torch.Tensor, fraction: float = 0.9) -> torch.Tensor:
    """Loki's ``np.argmax(np.cumsum(ratio) > fraction)`` (pca_analysis/plot_pca.py): the
    0-based index of the first component whose share exceeds ``fraction`` strictly.

    Equals ``rank_at(values, fraction) - 1`` except when a cumulative share equals the
    fraction exactly (then it equals the count). Kept for comparison only.

    Args:
        values: (..., n) explained variances, descending.

    Returns:
        (...,) int64 in [0, n - 1].
    """
    ratio = values.to(torch.float64) / values.to(torch.float64).sum(dim=-1, keepdim=True)
    return (torch.cumsum(ratio, dim=-1) > fraction).to(torch.int64).argmax(dim=-1)


def token_moments(
    x: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Count, mean and co-moment of each sequence's valid token vectors, per head (float64).

    Args:
        x: (B, H, n, d) per-head vectors (queries, keys or values).
        valid: (B, n) bool, True at real (not padding) tokens.

    Returns:
        count (B,), mean (B, H, d) and co-moment ``sum_t (x_t - mean)(x_t - mean)^T``
        (B, H, d, d); mean and co-moment are 0 for a sequence without valid tokens.
    """
    x64 = x.to(torch.float64)
    w = valid.to(torch.float64)[:, None, :, None]  # (B, 1, n, 1)
    count = valid.to(torch.float64).sum(dim=1)  # (B,)
    mean = (x64 * w).sum(dim=2) / count.clamp_min(1.0)[:, None, None]
    centred = (x64 - mean[:, :, None, :]) * w
    return count, mean, centred.mT @ centred


def merge_moments(
    a: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    b: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Chan, Golub & LeVeque (1979) pairwise merge of (count, mean, co-moment).

    Args:
        a, b: count (...), mean (..., d), co-moment (..., d, d), same shapes.

    Returns:
        The moments of the union: ``n = n_a + n_b``, ``mean = mean_a + delta n_b / n``,
        ``M = M_a + M_b + delta delta^T n_a n_b / n`` with ``delta = mean_b - mean_a``
        (exact in exact arithmetic; empty sides contribute nothing).
    """
    na, ma, ca = a
    nb, mb, cb = b
    n = na + nb
    safe = torch.where(n > 0, n, 1.0)
    delta = mb - ma
    mean = ma + delta * (nb / safe)[..., None]
    outer = delta[..., :, None] * delta[..., None, :]
    return n, mean, ca + cb + outer * (na * nb / safe)[..., None, None]


def explained_variance(count: torch.Tensor, comoment: torch.Tensor) -> torch.Tensor:
    """PCA explained variances (``variance`` definition): eigenvalues of the sample
    covariance ``M / (count - 1)``, descending, as sklearn's ``PCA.explained_variance_``.

    Args:
        count: (...,) tokens pooled; comoment: (..., d, d) centred co-moment.

    Returns:
        (..., d) float64 >= 0 (zeros where count < 2).
    """
    eig = torch.linalg.eigvalsh(comoment.to(torch.float64)).flip(-1).clamp_min(0.0)
    scale = torch.where(count > 1, 1.0 / (count - 1).clamp_min(1.0), 0.0)
    return eig * scale[..., None]


def principal_axes(comoment: torch.Tensor) -> torch.Tensor:
    """Principal axes as orthonormal columns, by descending explained variance.

    Args:
        comoment: (..., d, d) centred co-moment (any positive multiple of the covariance).

    Returns:
        (..., d, d) float64 ``U`` with ``U^T U = I``; ``U[..., :r]`` spans the best rank-r
        subspace of the centred data (Eckart-Young), Loki's PCA basis.
    """
    _, vectors = torch.linalg.eigh(comoment.to(torch.float64))
    return vectors.flip(-1)


def gram_singular_values(x: torch.Tensor) -> torch.Tensor:
    """Singular values of uncentred (..., m, D) matrices, descending, float64, via the
    eigenvalues of ``X^T X`` (D x D): ShadowKV's view of a whole layer's key cache, an
    m x (H_kv d) matrix per sequence.

    Returns:
        (..., D); beyond min(m, D) they are 0 (up to rounding).
    """
    x64 = x.to(torch.float64)
    eig = torch.linalg.eigvalsh(x64.mT @ x64)
    return eig.clamp_min(0.0).sqrt().flip(-1)


def product_singular_values(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Singular values of ``A B^T`` without forming it, from thin QR factors.

    ``A = Q_a R_a``, ``B = Q_b R_b`` give ``A B^T = Q_a (R_a R_b^T) Q_b^T`` with orthonormal
    ``Q_a, Q_b``, so the singular values are those of the small ``R_a R_b^T``: the logits
    ``Q K^T`` of one head (m x m, rank <= d) in O(m d^2), or the D x D bilinear form
    ``W_Q^T W_K`` of one head's weights.

    Args:
        a: (..., m, d); b: (..., p, d).

    Returns:
        (..., d) float64, descending, zero-padded beyond min(m, p, d).
    """
    d = a.shape[-1]
    ra = torch.linalg.qr(a.to(torch.float64), mode="r").R
    rb = torch.linalg.qr(b.to(torch.float64), mode="r").R
    s = torch.linalg.svdvals(ra @ rb.mT)
    return torch.nn.functional.pad(s, (0, d - s.shape[-1]))


def kv_group(heads: int, kv_heads: int) -> torch.Tensor:
    """The KV head each query head reads (grouped-query attention, Ainslie et al. 2023):
    query head h uses KV head ``h // (heads // kv_heads)``, as transformers' ``repeat_kv``.

    Returns:
        (heads,) int64.
    """
    if kv_heads < 1 or heads % kv_heads:
        raise LowrankError(f"{heads} query heads cannot share {kv_heads} key/value heads")
    return torch.arange(heads) // (heads // kv_heads)


def random_orthogonal(shape: tuple[int, ...], d: int, generator: torch.Generator) -> torch.Tensor:
    """Haar-random orthogonal matrices (QR of a Gaussian with the signs of R's diagonal
    fixed, Mezzadri 2007): the random-projection baseline at the same r.

    Returns:
        (*shape, d, d) float64 with orthonormal columns.
    """
    g = torch.randn((*shape, d, d), generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)


def allowed_keys(positions: torch.Tensor, m: int, causal: bool) -> torch.Tensor:
    """Keys each query may attend to: all m valid keys, or with causal attention the keys at
    or before the query.

    Args:
        positions: (Q,) 0-based query positions within the sequence's m valid tokens.

    Returns:
        (Q, m) bool.
    """
    keys = torch.arange(m, device=positions.device)
    if not causal:
        return torch.ones(len(positions), m, dtype=torch.bool, device=positions.device)
    return keys[None, :] <= positions[:, None]


def head_logits(q: torch.Tensor, k: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Unscaled logits ``q_h . k_{g(h)}`` of each query head against its KV head's keys,
    ``-inf`` where not allowed.

    Args:
        q: (H, Q, r) queries (projected or not); k: (Hkv, m, r) keys; allowed: (Q, m).

    Returns:
        (H, Q, m) float32/64 as the inputs.
    """
    group = q.shape[0] // k.shape[0]
    scores = q @ k.repeat_interleave(group, dim=0).mT
    return scores.masked_fill(~allowed, float("-inf"))


def project(x: torch.Tensor, basis: torch.Tensor, r: int) -> torch.Tensor:
    """Coordinates of per-head vectors on the first r columns of their head's basis.

    Args:
        x: (Hx, t, d) vectors; basis: (Hb, d, d) orthonormal columns, Hx a multiple of Hb
            (query heads read the basis of their KV head).

    Returns:
        (Hx, t, r).
    """
    group = x.shape[0] // basis.shape[0]
    return x @ basis[..., :r].to(x.device, x.dtype).repeat_interleave(group, dim=0)


def chosen_keys(scores: torch.Tensor, budgets: list[int], keep_first: bool) -> torch.Tensor:
    """The keys a top-k attention keeps, for each budget k.

    Per query, the candidates are the keys with a finite score, less the first token when
    ``keep_first`` (the attention sink, Xiao et al. 2024, then always kept, on top of k).
    The ``k_i = min(k, candidates)`` candidates with the largest scores are chosen (ties
    broken by ``torch.topk``).

    Args:
        scores: (H, Q, m) scores, ``-inf`` at keys not allowed (causal future, padding).
        budgets: key budgets k >= 1, excluding the sink.

    Returns:
        (K, H, Q, m) float 0/1 masks, same dtype as ``scores``.
    """
    if not budgets or min(budgets) < 1:
        raise LowrankError(f"top-k budgets {budgets} must be at least 1")
    pool = scores.clone()
    if keep_first:
        pool[..., 0] = float("-inf")
    candidates = torch.isfinite(pool).sum(dim=-1, keepdim=True)  # (H, Q, 1)
    m = scores.shape[-1]
    order = torch.topk(pool, min(max(budgets), m), dim=-1).indices  # candidates come first
    masks = []
    for k in budgets:
        kk = min(k, m)
        take = (torch.arange(kk, device=scores.device) < candidates).to(scores.dtype)
        mask = torch.zeros_like(scores).scatter(-1, order[..., :kk], take)
        if keep_first:
            mask[..., 0] = 1.0
        masks.append(mask)
    return torch.stack(masks)


def topk_quality(
    probs: torch.Tensor,
    logits: torch.Tensor,
    approx: torch.Tensor | None,
    value: torch.Tensor,
    budgets: list[int],
    keep_first: bool = True,
    exact: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """How well k keys chosen by approximate scores stand in for full attention (Loki's
    top-k step: pick k keys by low-dimensional scores, attend exactly over them).

    The chosen set is :func:`chosen_keys` of the approximate scores, the exact set that of
    the exact logits; both keep the sink when ``keep_first``, which recall does not count.

    Args:
        probs: (H, Q, m) exact attention, rows summing to 1 over the allowed keys.
        logits: (H, Q, m) exact logits, ``-inf`` where not allowed.
        approx: (H, Q, m) approximate logits, ``-inf`` where not allowed; None means the
            exact ones (r = d: a full orthonormal basis leaves every score unchanged, so
            exact top-k is computed without rounding flipping near-ties).
        value: (Hkv, m, dv) values of the KV heads.
        budgets: key budgets k >= 1, excluding the sink.
        exact: (K, H, Q, m) ``chosen_keys(logits, budgets, keep_first)`` when already
            computed (it does not depend on the approximation).

    Returns:
        recall (K, H, Q): ``|chosen & exact| / k_i`` over candidates (1 when k_i = 0);
        mass (K, H, Q): attention the chosen keys carry, ``sum_{j in chosen} P_j`` (1 when
        every allowed key is chosen);
        error (K, H, Q): ``||o~ - o|| / ||o||`` with ``o = P V`` and ``o~`` the attention
        renormalised over the chosen keys (0 when every allowed key is chosen);
        binding (K, Q) bool: the budget binds (fewer keys chosen than allowed).
    """
    if exact is None:
        exact = chosen_keys(logits, budgets, keep_first)  # (K, H, Q, m)
    pick = exact if approx is None else chosen_keys(approx, budgets, keep_first)
    sink = 1.0 if keep_first else 0.0
    candidates = torch.isfinite(logits[0]).sum(dim=-1) - sink  # (Q,)
    k = torch.tensor(budgets, dtype=probs.dtype, device=probs.device)
    k_i = torch.minimum(k[:, None], candidates)  # (K, Q)
    hits = (exact * pick).sum(dim=-1) - sink  # (K, H, Q)
    recall = torch.where(k_i[:, None] > 0, hits / k_i.clamp_min(1)[:, None], 1.0)
    v = value.repeat_interleave(probs.shape[0] // value.shape[0], dim=0).to(probs.dtype)
    out = probs @ v  # (H, Q, dv)
    kept = probs * pick  # (K, H, Q, m)
    mass = kept.sum(dim=-1)
    tiny = torch.finfo(probs.dtype).tiny
    diff = ((kept @ v) / mass.clamp_min(tiny)[..., None] - out).norm(dim=-1)
    norm = out.norm(dim=-1)
    error = torch.where(norm > 0, diff / norm.clamp_min(tiny), diff)
    return recall, mass, error, k_i < candidates


def whole_layer(x: torch.Tensor) -> torch.Tensor:
    """One sequence's per-head vectors (Hkv, m, d) -> its (m, Hkv d) matrix, the whole
    layer's key (or value) cache as ShadowKV factorises it."""
    return x.permute(1, 0, 2).reshape(x.shape[1], -1)


def resampled_spectra(
    count: torch.Tensor, first: torch.Tensor, second: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Explained variances of the union of groups each taken ``weights`` times (a bootstrap
    replicate when the weights are multinomial counts).

    Args:
        count: (G, ...) tokens n_g per group; first: (G, ..., d) ``n_g (mu_g - c)``;
            second: (G, ..., d, d) ``M_g + n_g (mu_g - c)(mu_g - c)^T``, for any shift c
            (the pooled mean keeps the sums from cancelling); weights: (G,) float64.

    Returns:
        (..., d) descending, :func:`explained_variance` of the union, whose co-moment is
        ``sum_g w_g second_g - s s^T / sum_g w_g n_g`` with ``s = sum_g w_g first_g``.
    """
    n = torch.tensordot(weights, count, dims=1)
    s = torch.tensordot(weights, first, dims=1)
    com = torch.tensordot(weights, second, dims=1)
    com -= s[..., :, None] * s[..., None, :] / n.clamp_min(1.0)[..., None, None]
    return explained_variance(n, com)


def query_positions(m: int, queries: int, seed: int, sequence: int) -> torch.Tensor:
    """Query positions evaluated for top-k in a sequence of m valid tokens: all of them when
    ``queries >= m``, else ``queries`` drawn without replacement by a generator seeded with
    (seed, sequence index), so any sharding of a run draws the same ones.

    Returns:
        (Q,) int64, increasing.
    """
    if queries >= m:
        return torch.arange(m)
    rng = np.random.default_rng([seed, sequence])
    return torch.from_numpy(np.sort(rng.choice(m, queries, replace=False))).to(torch.int64)
