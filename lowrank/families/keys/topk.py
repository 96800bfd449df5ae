"""Mergeable statistics of top-k attention from r key dimensions (Loki's step), fed one layer
of one batch at a time.

Like :mod:`lowrank.families.keys.accumulate`, everything merges exactly across batches,
resumed runs and shards: moments over sequences by Chan's formula, per-sequence values by
the sequence's global index (which also seeds its sampled query positions).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import numpy as np
import torch

from lowrank.errors import LowrankError
from lowrank.families.keys import maths
from lowrank.families.keys.accumulate import Arrays, Moments, SequenceRows
from lowrank.families.keys.names import TOPK_METRICS
from lowrank.families.keys.qkv import LayerQKV

TOPK_PARTS = ("metrics", "binding", "paired", "sink", "bound")


@dataclass
class TopkStats:
    """Pass-two statistics: top-k attention from queries and keys projected on r dimensions
    (Loki, Singhania et al. 2024, Alg. 1), on post-RoPE queries and keys.

    For each basis (e.g. PCA of post-RoPE keys fitted on calibration text, the evaluated
    text's own PCA, a random orthogonal basis), rank r and budget fraction f (k = max(1,
    floor(f m)) keys for a sequence of m tokens, plus the sink), the mean over a sequence's
    sampled queries of :func:`maths.topk_quality`'s recall, mass and error is one
    observation; sequences are the independent units.

    Attributes:
        parts: moments over sequences, by name (:data:`TOPK_PARTS`): ``metrics`` (S, R, K,
            L, H, 3) over all sampled queries, metrics in :data:`TOPK_METRICS` order;
            ``binding``, the same over the queries whose budget binds (fewer keys chosen
            than allowed: with causal attention early queries see every key anyway);
            ``paired``, the per-sequence difference basis s - basis 0 of ``metrics`` (the
            transfer gap when basis 0 is fitted on calibration text and basis s on the
            evaluated text); ``sink`` (L, H), attention on the first token; ``bound`` (K,
            L), the share of binding queries.
        per_sequence: per sequence, (S, R, K, L, 3) the mean over the layer's heads of
            ``metrics``: the unit an interval of a mean over heads resamples (heads share
            the sequence, so their cells are not independent).
    """

    ranks: tuple[int, ...]
    budgets: tuple[float, ...]
    bases: int
    parts: dict[str, Moments]
    per_sequence: SequenceRows
    queries: int = 64
    seed: int = 0
    keep_first: bool = True

    @classmethod
    def empty(
        cls, bases: int, ranks: tuple[int, ...], budgets: tuple[float, ...], layers: int,
        heads: int, queries: int = 64, seed: int = 0, keep_first: bool = True,
    ) -> TopkStats:  # fmt: skip
        if bases < 1 or not ranks or min(ranks) < 1 or not budgets or queries < 1:
            raise LowrankError(f"top-k needs bases, ranks >= 1 (got {ranks}) and queries >= 1")
        if any(not 0 < f <= 1 for f in budgets):
            raise LowrankError(f"top-k budgets {budgets} must be fractions in (0, 1]")
        grid = (bases, len(ranks), len(budgets))
        cells = (*grid, layers, heads, len(TOPK_METRICS))
        shapes = [cells, cells, cells, (layers, heads), (len(budgets), layers)]
        parts = {n: Moments.empty(shape) for n, shape in zip(TOPK_PARTS, shapes, strict=True)}
        rows = SequenceRows((*grid, layers, len(TOPK_METRICS)))
        return cls(tuple(ranks), tuple(budgets), bases, parts, rows, queries, seed, keep_first)

    def update(self, qkv: LayerQKV, ids: list[int], bases: list[torch.Tensor]) -> None:
        """Add one layer of one batch, given this layer's bases, each (Hkv, d, d) with
        orthonormal columns in order of preference (the first r are used)."""
        if len(bases) != self.bases:
            raise LowrankError(f"top-k was set up for {self.bases} bases, got {len(bases)}")
        every = slice(None)
        for b, sid in enumerate(ids):
            metrics, binding, sink, bound = self._sequence(qkv, b, sid, bases)
            at = (every, every, every, qkv.layer)
            self.parts["metrics"].add(metrics[None], at)
            self.parts["binding"].add(binding[None], at)
            self.parts["paired"].add((metrics - metrics[:1])[None], at)
            self.parts["sink"].add(sink[None], (qkv.layer,))
            self.parts["bound"].add(bound[None], (every, qkv.layer))
            self.per_sequence.set(sid, at, metrics.mean(axis=-2))

    def _sequence(
        self, qkv: LayerQKV, b: int, sid: int, bases: list[torch.Tensor]
    ) -> tuple[np.ndarray, ...]:
        span = qkv.span(b)
        m = span.stop - span.start
        positions = maths.query_positions(m, self.queries, self.seed, sid)
        q, k, v, allowed, logits, probs = qkv.attention_at(b, positions)
        budgets = [max(1, int(f * m)) for f in self.budgets]
        shape = (self.bases, len(self.ranks), len(budgets), qkv.heads, len(TOPK_METRICS))
        every, bind = np.full(shape, np.nan), np.full(shape, np.nan)
        chosen = maths.chosen_keys(logits, budgets, self.keep_first)
        exact = maths.topk_quality(probs, logits, None, v, budgets, self.keep_first, chosen)
        for (si, basis), (ri, r) in itertools.product(enumerate(bases), enumerate(self.ranks)):
            found = exact  # r >= d: any orthonormal basis keeps every score (exact top-k)
            if r < q.shape[-1]:
                qr, kr = maths.project(q, basis, r), maths.project(k, basis, r)
                approx = maths.head_logits(qr, kr, allowed)
                found = maths.topk_quality(
                    probs, logits, approx, v, budgets, self.keep_first, chosen
                )
            metric = torch.stack(found[:3], dim=-1).double().cpu()  # (K, H, Q, 3)
            binds = found[3].cpu().double()[:, None, :, None]  # (K, 1, Q, 1)
            every[si, ri] = metric.mean(dim=2).numpy()
            with np.errstate(invalid="ignore"):  # no binding query: NaN, a missing value
                bind[si, ri] = ((metric * binds).sum(dim=2) / binds.sum(dim=2)).numpy()
        sink = probs[..., 0].double().mean(dim=-1).cpu().numpy()
        return every, bind, sink, exact[3].double().mean(dim=-1).cpu().numpy()

    def _setup(self) -> Arrays:
        setup = [self.bases, self.queries, self.seed, int(self.keep_first)]
        ranks, budgets = np.array(self.ranks), np.array(self.budgets)
        return {"topk_ranks": ranks, "topk_budgets": budgets, "topk_setup": np.array(setup)}

    def merge(self, other: TopkStats) -> TopkStats:
        mine, theirs = self._setup(), other._setup()
        if any(not np.array_equal(mine[k], theirs[k]) for k in mine):
            raise LowrankError("cannot merge top-k statistics of other ranks, budgets or seeds")
        parts = {k: p.merge(other.parts[k]) for k, p in self.parts.items()}
        return replace(self, parts=parts, per_sequence=self.per_sequence.merge(other.per_sequence))

    def to_arrays(self) -> Arrays:
        out = self._setup()
        for name, part in self.parts.items():
            out.update(part.to_arrays(f"topk_{name}"))
        out.update(self.per_sequence.to_arrays("topk_rows"))
        return out

    @classmethod
    def from_arrays(cls, a: Arrays) -> TopkStats:
        bases, queries, seed, keep = (int(x) for x in a["topk_setup"])
        parts = {n: Moments.from_arrays(a, f"topk_{n}") for n in TOPK_PARTS}
        rows = SequenceRows.from_arrays(a, "topk_rows")
        ranks = tuple(int(r) for r in a["topk_ranks"])
        budgets = tuple(float(f) for f in a["topk_budgets"])
        return cls(ranks, budgets, bases, parts, rows, queries, seed, bool(keep))
