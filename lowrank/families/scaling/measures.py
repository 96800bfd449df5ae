"""What ``lowrank scaling`` measures at every n: windows and rank measures.

Every n sees the same text: each window of a qualifying document starts at one offset (drawn,
or the document's first token) and is cut to n tokens for every n (:func:`document_windows`).
Rank measures per (window, layer, head), in :data:`MEASURES` order: the ranks for 90% and 99%
of the normalised cumulative sum of singular values, the effective and stable ranks of P, and
the rank that the head output needs, the smallest k with ``||PV - (PV)_k||_F / ||PV||_F <=
tau`` (Eckart-Young on PV, from its float64 singular values; at most d, the head dimension).
:data:`C_MEASURES` are read off the same curve but not fitted: c at n/4 and c at a fixed index.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lowrank.core.options import flag, named
from lowrank.errors import LowrankError
from lowrank.maths.spectra import cumulative, effective_rank, rank_for, stable_rank
from lowrank.maths.windows import Policy, matched_windows

MEASURES = ("rank90", "rank99", "effective_rank", "stable_rank", "output_rank")
C_MEASURES = ("c_at_quarter", "c_at_fixed")
ALL_MEASURES = MEASURES + C_MEASURES
MEASURE_LABELS = {
    "rank90": "rank for 90% of sum s",
    "rank99": "rank for 99% of sum s",
    "effective_rank": "effective rank exp H(s / sum s)",
    "stable_rank": "stable rank sum s^2 / s_1^2",
    "output_rank": "rank k for ||PV - (PV)_k|| / ||PV|| <= tau",
    "c_at_quarter": "c at index n/4",
    "c_at_fixed": "c at a fixed index",
}


# ---------------------------------------------------------------------------------------------
# windows


@dataclass(frozen=True)
class DocumentWindows:
    """The same tokens of each window cut to every n.

    Attributes:
        ns: the lengths, ascending.
        documents: (W,) index (into the tokenised corpus) of each window's document; a
            document with several windows appears several times, consecutively.
        starts: (W,) offset of each window's first text token in its document.
        windows: per n, (W, n) int64 token ids: the model's start tokens, the document's
            tokens ``[start, start + n - specials)``, its end tokens. Row i of every n holds
            a prefix of the same tokens (row i of the largest n).
        qualified: how many documents have enough tokens for the largest n.
        longest: tokens of the longest document (without special tokens).
        policy: run.json's ``window_policy`` (:meth:`lowrank.maths.windows.Windows.record`,
            with the documents as corpus indices, and how the intervals cover the choice).
    """

    ns: tuple[int, ...]
    documents: np.ndarray
    starts: np.ndarray
    windows: dict[int, np.ndarray]
    qualified: int
    longest: int
    policy: dict[str, Any]

    @property
    def clusters(self) -> np.ndarray:
        """(W,) 0-based cluster of each window: windows of one document share one."""
        return np.unique(self.documents, return_inverse=True)[1].reshape(-1)


def document_windows(
    token_docs: Sequence[Sequence[int]],
    ns: Sequence[int],
    prefix: Sequence[int],
    suffix: Sequence[int],
    wanted: int,
    seed: int | None = None,
    policy: Policy = "matched",
    per_document: int = 1,
    window_seed: int = 0,
) -> DocumentWindows:
    """Choose the documents long enough for the largest n and cut their windows to every n.

    The documents are the first ``wanted`` that qualify (or a seeded sample without
    replacement, ``seed``); :func:`lowrank.maths.windows.matched_windows` then draws each
    window's start from ``window_seed`` (``matched``: uniform over the offsets where the
    largest window fits, stratified when a document gives ``per_document`` windows;
    ``openings``: offset 0). Every n of a window reads ``tokens[start : start + n -
    specials]``, so the windows stay nested across n.

    Args:
        token_docs: documents as token ids, without special tokens.
        ns: sequence lengths, special tokens included.
        prefix, suffix: the model's start and end tokens, wrapped around every window.

    Raises:
        LowrankError: when no document has enough tokens for the largest n (naming the
            longest one found), or an n leaves no room for text.
    """
    ns = tuple(sorted(set(int(n) for n in ns)))
    specials = len(prefix) + len(suffix)
    if ns[0] - specials < 1:
        raise LowrankError(
            f"{named('seq_len', ns[0])} leaves no room for text after special tokens"
        )
    body = ns[-1] - specials
    longest = max((len(d) for d in token_docs), default=0)
    qualified = [i for i, d in enumerate(token_docs) if len(d) >= body]
    if not qualified:
        raise LowrankError(
            f"no document has the {body} tokens (+{specials} special) that n = {ns[-1]} needs: "
            f"the longest has {longest}; use a smaller largest {flag('seq_len')} or a corpus of "
            "longer documents"
        )
    if seed is None or wanted >= len(qualified):
        chosen = np.array(qualified[:wanted], dtype=np.int64)
    else:
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(len(qualified), size=wanted, replace=False))
        chosen = np.array(qualified, dtype=np.int64)[pick]
    lengths = [len(token_docs[i]) for i in chosen]
    # every chosen document is drawn (count = all of them); only the starts are random
    drawn = matched_windows(lengths, ns, len(chosen), window_seed, per_document, specials, policy)
    docs = chosen[drawn.documents]
    windows = {}
    for n in ns:
        rows = [
            [*prefix, *token_docs[d][a:b], *suffix]
            for d, (a, b) in zip(docs.tolist(), drawn.spans(n).tolist(), strict=True)
        ]
        windows[n] = np.array(rows, dtype=np.int64).reshape(len(docs), n)
    record = drawn.record() | {
        "documents": docs.tolist(),
        "qualified_documents": len(qualified),
        "per_document": per_document,
        "uncertainty": WINDOW_UNCERTAINTY[policy],
    }
    return DocumentWindows(ns, docs, drawn.starts.copy(), windows, len(qualified), longest, record)


WINDOW_UNCERTAINTY = {
    "matched": "each window's start is a random draw, so each document's value carries its "
    "window's draw and the bootstrap over documents (with all their windows) resamples that "
    "spread: every interval and verdict covers the choice of windows as a random effect",
    "openings": "every window starts at its document's first token: the intervals cover the "
    "choice of documents only, and n is tied to the position in the document",
}


# ---------------------------------------------------------------------------------------------
# rank measures


def output_rank(s: torch.Tensor, tau: float) -> torch.Tensor:
    """Smallest k with ``||X - X_k||_F / ||X||_F <= tau`` from the singular values of X.

    By Eckart-Young ``||X - X_k||_F^2 = sum_{i>k} s_i^2``, so k needs only s. Applied to
    X = PV (n x d) it is the rank that any approximation of the head output needs.

    Args:
        s: (..., r) singular values, descending (computed in float64).
        tau: relative error in [0, 1).

    Returns:
        (...,) float64 in [0, r]; 0 for an all-zero X.
    """
    s = s.to(torch.float64)
    sq = s**2
    tail = sq.flip(-1).cumsum(-1).flip(-1)  # tail[..., k] = sum_{i>=k} s_i^2 (0-based)
    total = tail[..., :1]
    # relative error after keeping k values, k = 0..r (k = r leaves no tail)
    zero = torch.zeros_like(total)
    rel = torch.sqrt(torch.cat([tail, zero], dim=-1) / torch.where(total > 0, total, 1.0))
    hit = rel <= tau + 1e-12  # slack against rounding in the sums
    k = hit.to(torch.int64).argmax(dim=-1).to(torch.float64)
    return torch.where(total[..., 0] > 0, k, torch.zeros_like(k))


def rank_measures(
    s_p: torch.Tensor, s_pv: torch.Tensor, n: int, fixed_index: int, tau: float
) -> torch.Tensor:
    """Every measure of :data:`ALL_MEASURES` for a batch of attention matrices.

    Args:
        s_p: (..., n) singular values of P, descending.
        s_pv: (..., r) float64 singular values of PV, descending.
        n: the sequence length (c at n/4 reads index ``max(1, n // 4)``).
        fixed_index: 1-based index read by ``c_at_fixed`` (at most n).

    Returns:
        (..., 7) float64 in :data:`ALL_MEASURES` order.
    """
    if not 1 <= fixed_index <= n:
        raise LowrankError(f"fixed index {fixed_index} is outside 1..{n}")
    c = cumulative(s_p)
    return torch.stack(
        [
            rank_for(c, 0.90),
            rank_for(c, 0.99),
            effective_rank(s_p),
            stable_rank(s_p),
            output_rank(s_pv, tau),
            c[..., max(1, n // 4) - 1],
            c[..., fixed_index - 1],
        ],
        dim=-1,
    )
