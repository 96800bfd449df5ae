"""Low-rank, sparse, hashed, local, kernel and Nystrom approximations of one attention matrix.

Pure functions on float64 tensors whose leading axes (``...``, in practice (B, H): sequences
and heads) broadcast. Each family returns the approximate probabilities ``P~`` (..., n, n);
the head output is ``P~ V``. At a budget b every family spends about n b stored numbers or
n b score evaluations per n x n attention (the exact accounting is :func:`budget_cost`):

* ``lowrank-oracle``: the best rank-b approximation of P (Eckart-Young); needs P itself.
* ``linformer``: the projector estimator ``P E^+ E`` with E a b x n Gaussian JL matrix
  (Wang et al. 2020, Theorem 1 with the projector in place of ``R^T R``); needs P.
* ``sparse-oracle``: the b largest entries of each row of P, as they are (the best
  b-sparse row in Frobenius norm) or renormalised to sum to 1; needs P.
* ``lsh``: Reformer's angular LSH (Kitaev et al. 2020, Sec. 2) on the real queries and keys,
  hashed with the same rotations (pretrained models do not share Q and K): sorted chunks,
  each query attends its chunk and the neighbouring one, several rounds, softmax over the
  union of what is attended.
* ``local-global``: a sliding window plus g global key tokens (Longformer / BigBird).
* ``performer``: FAVOR+ with b positive orthogonal random features (Choromanski et al.
  2021, Sec. 2.3-2.4).
* ``nystrom``: Nystromformer with b segment-mean landmarks (Xiong et al. 2021, Eq. 14) and an
  exact or iterative (their Eq. 16) pseudo-inverse.
* ``scatterbrain``: Performer plus a sparse correction on a support (Chen et al. 2021,
  Sec. 3): exact ``exp(s_ij)`` on the support, the feature estimate elsewhere.

Families that only use Q and K can respect a causal mask; the oracles, Linformer's projector
and Nystrom landmarks mix future keys into every row and are reported as not applicable.
The kernel and landmark families live in :mod:`lowrank.families.compare.kernels`, the errors in
:mod:`lowrank.families.compare.metrics`.
"""

from __future__ import annotations

import math

import torch

from lowrank.families.compare.names import (
    BASELINES,
    CAUSAL_OK,
    FAMILIES,
    ORACLES,
    Family,
    PinvMethod,
    SupportMethod,
)

__all__ = ["BASELINES", "CAUSAL_OK", "FAMILIES", "ORACLES", "Family", "PinvMethod", "SupportMethod"]

METRICS: tuple[str, ...] = ("probs_error", "output_error", "output_scaled_error", "output_cosine")
_TINY = 1e-300


def variants(family: str) -> tuple[str, ...]:
    """Rows a family contributes to the results (the sparse oracle gives two)."""
    return ("sparse-oracle", "sparse-oracle-renorm") if family == "sparse-oracle" else (family,)


# --- exact attention -----------------------------------------------------------------------


def attention_scores(query: torch.Tensor, key: torch.Tensor, scale: float) -> torch.Tensor:
    """``Q K^T * scale`` in float64.

    Args:
        query, key: (..., n, d).

    Returns:
        (..., n, n).
    """
    return (query.double() @ key.double().mT) * scale


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Softmax of each row over the keys where ``mask`` is True (all keys when None).

    Args:
        scores: (..., n, n); mask: bool, broadcastable to scores.

    Returns:
        (..., n, n): rows sum to 1 over the mask, 0 off it; a row with no key is all 0.
    """
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf)
    top = scores.amax(dim=-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, 0.0)
    e = torch.exp(scores - top)
    return e / e.sum(dim=-1, keepdim=True).clamp_min(_TINY)


def restrict(probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """P restricted to ``mask`` and each row renormalised: for ``P = softmax(S)`` this is
    ``masked_softmax(S, mask)`` without another exponential.

    Args:
        probs: (..., n, n); mask: bool, broadcastable.

    Returns:
        (..., n, n).
    """
    kept = torch.where(mask, probs.double(), 0.0)
    return kept.div_(kept.sum(dim=-1, keepdim=True).clamp_min(_TINY))


def causal_mask(n: int, device: torch.device | None = None) -> torch.Tensor:
    """(n, n) bool, True on and below the diagonal (key j <= query i)."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril()


def rebuild_probs(
    query: torch.Tensor,
    key: torch.Tensor,
    scale: float,
    key_mask: torch.Tensor | None = None,
    causal: bool = False,
) -> torch.Tensor:
    """``softmax(Q K^T * scale + mask)``, the P a model's eager attention computes.

    Args:
        query, key: (..., n, d); key_mask: (..., n) bool, False on padded keys.

    Returns:
        (..., n, n) float64.
    """
    n = query.shape[-2]
    mask = causal_mask(n, query.device) if causal else None
    if key_mask is not None:
        keys = key_mask[..., None, :].bool()
        mask = keys if mask is None else mask & keys
    return masked_softmax(attention_scores(query, key, scale), mask)


# --- oracles on P --------------------------------------------------------------------------


def left_singular(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values and left singular vectors of P from the eigenpairs of ``P P^T``.

    Args:
        probs: (..., n, n).

    Returns:
        s (..., n) descending and U (..., n, n) with the matching columns, float64.
    """
    p = probs.double()
    eig, u = torch.linalg.eigh(p @ p.mT)  # ascending
    return eig.flip(-1).clamp_min(0).sqrt(), u.flip(-1)


def lowrank_oracle(probs: torch.Tensor, k: int, u: torch.Tensor | None = None) -> torch.Tensor:
    """``U_k U_k^T P``: the best rank-k approximation of P in Frobenius norm (Eckart-Young).

    Args:
        probs: (..., n, n); u: (..., n, n) left singular vectors from :func:`left_singular`.

    Returns:
        (..., n, n), with ``||P - P~||_F^2 = sum_{i>k} s_i^2``.
    """
    p = probs.double()
    if u is None:
        u = left_singular(p)[1]
    uk = u[..., :k]
    return uk @ (uk.mT @ p)


def linformer_projector(probs: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """``P E^+ E``: P's rows projected onto the row space of E (rank k).

    Args:
        probs: (..., n, n); e: (..., k, n), broadcast over the leading axes.

    Returns:
        (..., n, n).
    """
    e = e.double()
    return (probs.double() @ torch.linalg.pinv(e)) @ e


def sparse_oracle(probs: torch.Tensor, k: int, renormalise: bool = False) -> torch.Tensor:
    """The k largest entries of each row of P, zeros elsewhere (optionally rows rescaled to 1).

    Args:
        probs: (..., n, n).

    Returns:
        (..., n, n): as kept, the best k-sparse approximation of each row in Euclidean norm.
    """
    p = probs.double()
    values, index = p.topk(k, dim=-1)
    out = torch.zeros_like(p).scatter_(-1, index, values)
    if renormalise:
        out = out / out.sum(dim=-1, keepdim=True).clamp_min(_TINY)
    return out


# --- hashing, windows ---------------------------------------------------------------------


def lsh_parameters(n: int, budget: int, rounds: int) -> tuple[int, int, int]:
    """(rounds, chunk, buckets) attending about ``budget`` keys per query.

    Each round a query sees two chunks, so ``2 * chunk * rounds <= budget``; buckets are
    about n / chunk (Reformer pairs bucket size with chunk size), even for the +-rotation hash.
    """
    r = max(1, min(rounds, budget // 2))
    chunk = max(1, budget // (2 * r))
    buckets = 2 * max(1, round(n / (2 * chunk)))
    return r, min(chunk, n), buckets


def lsh_rotations(
    heads: int, rounds: int, d: int, buckets: int, generator: torch.Generator
) -> torch.Tensor | None:
    """Random Gaussian rotations R, (heads, rounds, d, buckets/2); None for one bucket."""
    if buckets < 2:
        return None
    return torch.randn(heads, rounds, d, buckets // 2, generator=generator, dtype=torch.float64)


def lsh_buckets(x: torch.Tensor, rotations: torch.Tensor | None) -> torch.Tensor:
    """Angular LSH ``h(x) = argmax([x R; -x R])`` per round (Kitaev et al. 2020, Sec. 2).

    Args:
        x: (..., n, d); rotations: (..., r, d, buckets/2), or None (one bucket, r = 1).

    Returns:
        (..., r, n) bucket ids.
    """
    if rotations is None:
        return torch.zeros(*x.shape[:-2], 1, x.shape[-2], dtype=torch.long, device=x.device)
    proj = x.double().unsqueeze(-3) @ rotations  # (..., r, n, buckets/2)
    return torch.cat([proj, -proj], dim=-1).argmax(dim=-1)


def sorted_order(buckets: torch.Tensor) -> torch.Tensor:
    """Positions in order of (bucket, position), a stable sort.

    Args:
        buckets: (..., n) ids.

    Returns:
        (..., n) a permutation of 0..n-1.
    """
    n = buckets.shape[-1]
    return (buckets * n + torch.arange(n, device=buckets.device)).argsort(dim=-1)


def lsh_keys(
    query: torch.Tensor, key: torch.Tensor, rotations: torch.Tensor | None, chunk: int
) -> torch.Tensor:
    """Keys each query attends under Reformer's sorted-chunk LSH, every round.

    Queries and keys are hashed with the same rotations and sorted separately by (bucket,
    position); the query in sorted chunk t attends the keys in key chunks t - 1 and t
    (chunk 0: chunks 0 and 1), so ``2 * chunk`` keys per round (with repeats where rounds
    agree). As in the Reformer implementation, chunk boundaries stand in for buckets.

    Args:
        query, key: (..., n, d); rotations: (..., r, d, buckets/2) or None (one bucket).

    Returns:
        (..., n, r * 2 chunk) key indices (repeats possible).
    """
    n = query.shape[-2]
    positions = torch.arange(n, device=query.device)
    q_order = sorted_order(lsh_buckets(query, rotations))  # (..., r, n)
    k_order = sorted_order(lsh_buckets(key, rotations))
    q_rank = torch.empty_like(q_order).scatter_(-1, q_order, positions.expand_as(q_order))
    t = q_rank // chunk  # (..., r, n) chunk of each query
    start = torch.where(t > 0, (t - 1) * chunk, 0)
    window = (start[..., None] + torch.arange(2 * chunk, device=query.device)).clamp(max=n - 1)
    keys = k_order.gather(-1, window.flatten(-2)).unflatten(-1, (n, 2 * chunk))
    return keys.movedim(-3, -2).flatten(-2)  # (..., n, r * 2 chunk)


def lsh_mask(
    query: torch.Tensor, key: torch.Tensor, rotations: torch.Tensor | None, chunk: int
) -> torch.Tensor:
    """:func:`lsh_keys` as a (..., n, n) bool mask (the union over rounds)."""
    keys = lsh_keys(query, key, rotations, chunk)
    n = query.shape[-2]
    mask = torch.zeros(*keys.shape[:-1], n, dtype=torch.bool, device=keys.device)
    return mask.scatter_(-1, keys, True)


def lsh_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    scale: float,
    rotations: torch.Tensor | None,
    chunk: int,
    causal: bool = False,
) -> torch.Tensor:
    """Reformer-style LSH attention: softmax of the scores over :func:`lsh_mask`'s keys.

    Args:
        query, key: (..., n, d); rotations: (..., r, d, buckets/2) or None (one bucket).

    Returns:
        (..., n, n); exact with one bucket and ``chunk >= n / 2``. Causal: future keys are
        dropped and each query also attends itself (at most one key over the budget).
    """
    mask = lsh_mask(query, key, rotations, chunk)
    if causal:
        mask = causal_lsh(mask)
    return masked_softmax(attention_scores(query, key, scale), mask)


def causal_lsh(mask: torch.Tensor) -> torch.Tensor:
    """Drop future keys and keep each query's own key, so no row is left empty (Reformer
    lets a token attend itself when nothing else is in reach)."""
    n = mask.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=mask.device)
    return (mask & causal_mask(n, mask.device)) | eye


def global_keys(special: torch.Tensor, g: int) -> torch.Tensor:
    """The g global tokens: special tokens first, then the first positions.

    Args:
        special: (..., n) bool, True on special tokens ([CLS], [SEP], <s>, ...).

    Returns:
        (..., n) bool with min(g, n) True.
    """
    n = special.shape[-1]
    positions = torch.arange(n, device=special.device)
    priority = torch.where(special, positions, positions + n)
    chosen = priority.argsort(dim=-1)[..., : min(g, n)]
    return torch.zeros_like(special).scatter_(-1, chosen, True)


def local_global_ranks(globals_: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """Order in which each query takes keys: globals first, then by distance (ties left).

    Args:
        globals_: (..., n) bool global key positions.

    Returns:
        (..., n, n) rank 0..n-1 of key j for query i (causal: future keys last).
    """
    n = globals_.shape[-1]
    i = torch.arange(n, device=globals_.device)
    distance = (i[:, None] - i[None, :]).abs() * 2 + (i[None, :] > i[:, None]).long()
    priority = torch.where(globals_[..., None, :], -1, distance)
    if causal:
        priority = priority.masked_fill(~causal_mask(n, globals_.device), 2 * n + 1)
    order = priority.argsort(dim=-1, stable=True)
    ranks = torch.empty_like(order)
    return ranks.scatter_(-1, order, i.expand_as(order).contiguous())


def local_global_mask(globals_: torch.Tensor, budget: int, causal: bool = False) -> torch.Tensor:
    """Each query attends the global keys and the nearest other keys, ``budget`` in all.

    The window is the budget - g keys closest to the query (ties to the left), shifted
    inward at the ends so every query attends exactly ``budget`` keys; with ``budget = n``
    it is full attention. Causal: only keys j <= i, nearest first.

    Args:
        globals_: (..., n) bool global key positions.

    Returns:
        (..., n, n) bool.
    """
    mask = local_global_ranks(globals_, causal) < budget
    return mask & causal_mask(globals_.shape[-1], globals_.device) if causal else mask


def local_global_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    scale: float,
    globals_: torch.Tensor,
    budget: int,
    causal: bool = False,
) -> torch.Tensor:
    """Sliding window plus global keys: softmax of the scores over :func:`local_global_mask`.

    Args:
        query, key: (..., n, d); globals_: (..., n) bool.

    Returns:
        (..., n, n); exact at ``budget = n`` (non-causal).
    """
    mask = local_global_mask(globals_, budget, causal)
    return masked_softmax(attention_scores(query, key, scale), mask)


# --- budget accounting -------------------------------------------------------------------


def scatterbrain_split(budget: int, split: float) -> tuple[int, int]:
    """(sparse keys per query, random features) of Scatterbrain at ``budget``."""
    sparse = min(budget, max(0, round(split * budget)))
    return sparse, budget - sparse


def budget_cost(
    family: str, n: int, b: int, rounds: int = 2, globals_: int = 2, split: float = 0.5
) -> dict[str, object]:
    """What one n x n attention costs a family at budget b.

    Returns:
        ``{"parameter": ..., "stored": numbers kept, "scores": score evaluations q . k or
        kernel entries, "reads": "P" (an oracle) or "Q, K"}``. Mask families attend at most
        ``b`` keys per query; LSH's attended count is measured and stored with the run.
    """
    if family == "lowrank-oracle":
        return {"parameter": f"rank {b}", "stored": 2 * n * b, "scores": 0, "reads": "P"}
    if family == "linformer":
        return {"parameter": f"k = {b}", "stored": 2 * n * b, "scores": n * b, "reads": "P"}
    if family in ("sparse-oracle", "sparse-oracle-renorm"):
        return {"parameter": f"top {b} per row", "stored": n * b, "scores": n * b, "reads": "P"}
    if family == "lsh":
        r, chunk, buckets = lsh_parameters(n, b, rounds)
        return {
            "parameter": f"{r} rounds x 2 chunks of {chunk}, {buckets} buckets",
            "stored": n * min(n, 2 * chunk * r),
            "scores": n * min(n, 2 * chunk * r),
            "reads": "Q, K",
        }
    if family == "local-global":
        g = min(globals_, b)
        return {
            "parameter": f"window {b - g} + {g} global",
            "stored": n * b,
            "scores": n * b,
            "reads": "Q, K",
        }
    if family == "performer":
        return {"parameter": f"m = {b} features", "stored": 2 * n * b, "scores": 0, "reads": "Q, K"}
    if family == "nystrom":
        return {
            "parameter": f"{b} landmarks",
            "stored": 2 * n * b + b * b,
            "scores": 2 * n * b + b * b,
            "reads": "Q, K",
        }
    if family == "scatterbrain":
        sparse, m = scatterbrain_split(b, split)
        return {
            "parameter": f"{sparse} sparse keys + {m} features",
            "stored": n * sparse + 2 * n * m,
            "scores": n * sparse,
            "reads": "Q, K",
        }
    if family in BASELINES:
        return {"parameter": "none", "stored": 0, "scores": 0, "reads": "nothing"}
    raise ValueError(f"unknown family {family!r}")


ACCOUNTING: dict[str, str] = {
    "lowrank-oracle": "rank b: U_b S_b (n x b) and V_b^T (b x n), 2nb numbers; reads all of P",
    "linformer": "k = b: P E^+ (n x b) and E (b x n, shared), 2nb numbers; a trained Linformer "
    "evaluates n b scores Q (E K)^T; the estimator reads all of P",
    "sparse-oracle": "top b entries of each row: n b numbers (and their indices); reads all of P",
    "sparse-oracle-renorm": "as sparse-oracle, each row rescaled to sum to 1",
    "lsh": "r rounds (default 2) of 2 sorted chunks of c = b / (2r) keys: at most 2 c r <= b "
    "score evaluations per query (the measured union is stored); about n / c buckets; "
    "queries and keys hashed with the same rotations, since pretrained models do not "
    "share Q and K",
    "local-global": "g global keys (default 2: special tokens, then the first positions) plus "
    "the b - g nearest keys: exactly b score evaluations per query",
    "performer": "m = b positive orthogonal random features: phi(Q) and phi(K), 2nb numbers, "
    "no score evaluations",
    "nystrom": "b segment-mean landmarks: n x b, b x b and b x n kernel blocks, 2nb + b^2 "
    "score evaluations",
    "scatterbrain": "b_s = round(split b) sparse keys per query (n b_s scores, LSH or top-b_s "
    "support) plus m = b - b_s Performer features (2 n m numbers); split 0.5 by default",
    "zero": "attention 0, output 0",
    "uniform": "rows 1/n (causal: 1/(i+1) over j <= i)",
}
