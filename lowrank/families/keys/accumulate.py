"""Mergeable statistics of ``lowrank keys``, fed one layer of one batch at a time.

Everything here merges exactly (up to float64 rounding) across batches, resumed runs, shards
and torchrun ranks: co-moments by Chan, Golub & LeVeque's (1979) formula, per-sequence
values by sequence index. A sequence is known by its global index in the run, which also
fixes its bootstrap group (``index % groups``) and its sampled query positions, so a sharded
run gives the statistics of one process. Each part saves to flat arrays (``to_arrays``) and
loads back (``from_arrays``) for checkpoints and run folders. The top-k statistics are in
:mod:`lowrank.families.keys.topk`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from lowrank.errors import LowrankError
from lowrank.families.keys import maths
from lowrank.families.keys.qkv import LayerQKV
from lowrank.maths.spectra import default_workers, singular_values

# Tensors whose PCA per head is pooled over every valid token, in array order.
KINDS = ("query_pre", "query_post", "key_pre", "key_post", "value")
# The whole-layer (ShadowKV) views: each sequence's m x (Hkv d) matrix.
LAYER_KINDS = ("key_pre", "key_post", "value")
# Per (sequence, layer, head) ranks of the logits and of P, last axis in this order.
LOGIT_NAMES = ("logits_post_energy", "logits_pre_energy", "logits_post_nuclear", "probs_nuclear")
Arrays = dict[str, np.ndarray]


def _f64(a: object) -> np.ndarray:
    return np.array(a, dtype=np.float64)


@dataclass
class Moments:
    """Running count, mean and sum of squared deviations, element by element (each element
    has its own count: cells may miss observations). Arrays of one shape, float64."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, shape: tuple[int, ...]) -> Moments:
        return cls(np.zeros(shape), np.zeros(shape), np.zeros(shape))

    def add(self, batch: np.ndarray, at: tuple[int | slice, ...] = ()) -> None:
        """Add observations ``batch`` (B, *cells) to the cells ``self[at]``; NaN entries are
        missing and change nothing."""
        x = _f64(batch)
        present = ~np.isnan(x)
        nb = present.sum(axis=0).astype(np.float64)
        mb = np.where(present, x, 0.0).sum(axis=0) / np.maximum(nb, 1)
        self._merge_at(at, nb, mb, (np.where(present, x - mb, 0.0) ** 2).sum(axis=0))

    def _merge_at(self, at: tuple, nb: np.ndarray, mb: np.ndarray, m2b: np.ndarray) -> None:
        na, ma = self.count[at], self.mean[at]
        n = na + nb
        delta = mb - ma
        self.mean[at] = ma + delta * nb / np.maximum(n, 1)
        self.m2[at] = self.m2[at] + m2b + delta**2 * na * nb / np.maximum(n, 1)
        self.count[at] = n

    def merge(self, other: Moments) -> Moments:
        if self.mean.shape != other.mean.shape:
            raise LowrankError(f"cannot merge moments {self.mean.shape} and {other.mean.shape}")
        out = Moments(self.count.copy(), self.mean.copy(), self.m2.copy())
        out._merge_at((), other.count, other.mean, other.m2)
        return out

    def std(self) -> np.ndarray:
        """Sample standard deviation (NaN below 2 observations)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.count > 1, np.sqrt(self.m2 / (self.count - 1)), np.nan)

    def to_arrays(self, prefix: str) -> Arrays:
        return {f"{prefix}_count": self.count, f"{prefix}_mean": self.mean, f"{prefix}_m2": self.m2}

    @classmethod
    def from_arrays(cls, a: Arrays, prefix: str) -> Moments:
        return cls(*(_f64(a[f"{prefix}_{k}"]) for k in ("count", "mean", "m2")))


@dataclass
class Comoments:
    """Per (group, layer, head) token count, mean and co-moment ``sum (x - mean)(x - mean)^T``
    of d-dimensional vectors, float64. Sequence ``i`` goes to group ``i % G``; the pooled
    statistics merge all groups, the bootstrap resamples groups (one sequence per group
    while there are at most G sequences: then it is the bootstrap by sequence).

    Attributes:
        count: (G, L, H); mean: (G, L, H, d); comoment: (G, L, H, d, d).
    """

    count: torch.Tensor
    mean: torch.Tensor
    comoment: torch.Tensor

    @classmethod
    def empty(cls, groups: int, layers: int, heads: int, d: int) -> Comoments:
        z = torch.zeros((groups, layers, heads), dtype=torch.float64)
        return cls(
            z,
            torch.zeros((*z.shape, d), dtype=z.dtype),
            torch.zeros((*z.shape, d, d), dtype=z.dtype),
        )

    def parts(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.count, self.mean, self.comoment

    def add(self, layer: int, x: torch.Tensor, valid: torch.Tensor, ids: list[int]) -> None:
        """Pool the valid vectors of ``x`` (B, H, n, d) into ``layer``; ``ids`` (B,) are the
        sequences' global indices."""
        count, mean, com = (t.cpu() for t in maths.token_moments(x, valid))
        for b, sid in enumerate(ids):
            g = sid % self.count.shape[0]
            here = (self.count[g, layer], self.mean[g, layer], self.comoment[g, layer])
            new = (count[b].expand(x.shape[1]), mean[b], com[b])
            self.count[g, layer], self.mean[g, layer], self.comoment[g, layer] = (
                maths.merge_moments(here, new)
            )

    def merge(self, other: Comoments) -> Comoments:
        if self.comoment.shape != other.comoment.shape:
            raise LowrankError(
                f"cannot merge co-moments {tuple(self.comoment.shape)} and "
                f"{tuple(other.comoment.shape)} (another model or number of groups?)"
            )
        return Comoments(*maths.merge_moments(self.parts(), other.parts()))

    def pooled(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(count (L, H), mean (L, H, d), co-moment (L, H, d, d)) over every group."""
        acc = (self.count[0], self.mean[0], self.comoment[0])
        for g in range(1, self.count.shape[0]):
            acc = maths.merge_moments(acc, (self.count[g], self.mean[g], self.comoment[g]))
        return acc

    def explained_variance(self) -> torch.Tensor:
        """(L, H, d) pooled PCA explained variances, descending (``variance`` definition)."""
        count, _, com = self.pooled()
        return maths.explained_variance(count, com)

    def axes(self) -> torch.Tensor:
        """(L, H, d, d) pooled principal axes (columns, by descending variance)."""
        return maths.principal_axes(self.pooled()[2])

    def intervals(
        self, replicates: int = 200, seed: int = 0, fraction: float = 0.9, level: float = 0.95
    ) -> Arrays:
        """Basic (pivotal) bootstrap over groups of sequences (Davison & Hinkley 1997,
        eq. 5.6), each group resampled whole so the tokens of one sequence stay together (a
        cluster bootstrap): ``[2 t - q_high, 2 t - q_low]`` with ``t`` the pooled estimate
        and ``q`` the replicates' percentiles, clipped to the statistic's range.

        The basic rather than the percentile interval because a rank at a share of pooled
        variance grows with the diversity of the text: a resample holds fewer distinct
        sequences, so its ranks fall below the estimate (measured on SmolLM2: the
        percentile interval's upper end sat on the estimate itself), and the estimate
        sits below the rank of more text in the same way; the basic interval carries that
        shift over.

        Returns:
            ``rank_low``/``rank_high`` (L, H) of the ``variance`` rank at ``fraction``,
            ``layer_low``/``layer_high`` (L,) of its mean over the heads of each layer,
            ``all_low``/``all_high`` () of its mean over every (layer, head) (each
            replicate's means, so the heads' dependence through shared sequences is kept),
            ``curve_low``/``curve_high`` (L, H, d) of the cumulative explained-variance
            ratio, ``groups`` () that held sequences (NaN intervals below 2 groups).
        """
        used = (self.count[:, 0, 0] > 0).nonzero().flatten()
        shape, d = tuple(self.count.shape[1:]), self.mean.shape[-1]
        ranks, curves = (
            np.full((replicates, *shape), np.nan),
            np.full((replicates, *shape, d), np.nan),
        )
        if len(used) >= 2:
            n_g, shifted = self.count[used], self.mean[used] - self.pooled()[1]
            first = n_g[..., None] * shifted
            second = self.comoment[used] + first[..., :, None] * shifted[..., None, :]
            rng = np.random.default_rng(seed)
            draws = rng.multinomial(len(used), np.full(len(used), 1 / len(used)), replicates)
            # filled in place: appending small arrays between large temporaries fragmented
            # the heap (RSS grew ~6 MB per replicate)
            for i, w in enumerate(torch.from_numpy(draws).to(torch.float64)):
                ev = maths.resampled_spectra(n_g, first, second, w)
                ranks[i], curves[i] = maths.rank_at(ev, fraction), maths.cumulative_share(ev)
        ev = self.explained_variance()
        rank, curve = maths.rank_at(ev, fraction).double().numpy(), maths.cumulative_share(ev)
        points = {"rank": rank, "layer": rank.mean(axis=-1), "all": rank.mean(axis=(-2, -1))}
        points["curve"] = curve.numpy()
        drawn = {"rank": ranks, "layer": ranks.mean(axis=-1), "all": ranks.mean(axis=(-2, -1))}
        drawn["curve"] = curves
        tails = [50 * (1 - level), 50 * (1 + level)]
        out: Arrays = {"groups": np.array(len(used))}
        for name, point in points.items():
            low, high = np.percentile(drawn[name], tails, axis=0)
            bounds = (1.0, float(d)) if name != "curve" else (0.0, 1.0)
            out[f"{name}_low"] = np.clip(2 * point - high, *bounds)
            out[f"{name}_high"] = np.clip(2 * point - low, *bounds)
        return out

    def to_arrays(self, prefix: str) -> Arrays:
        names = ("count", "mean", "comoment")
        return {f"{prefix}_{k}": t.numpy() for k, t in zip(names, self.parts(), strict=True)}

    @classmethod
    def from_arrays(cls, a: Arrays, prefix: str) -> Comoments:
        names = ("count", "mean", "comoment")
        return cls(*(torch.from_numpy(_f64(a[f"{prefix}_{k}"])) for k in names))


@dataclass
class SequenceRows:
    """Values of a fixed shape per sequence, keyed by global sequence index (NaN until set)."""

    shape: tuple[int, ...]
    rows: dict[int, np.ndarray] = field(default_factory=dict)

    def set(self, sid: int, at: tuple[int | slice, ...], values: np.ndarray) -> None:
        self.rows.setdefault(sid, np.full(self.shape, np.nan))[at] = values

    def merge(self, other: SequenceRows) -> SequenceRows:
        twice = self.rows.keys() & other.rows.keys()
        if twice or self.shape != other.shape:
            what = f"sequences {sorted(twice)[:3]} twice" if twice else "different shapes"
            raise LowrankError(f"cannot merge per-sequence statistics: {what}")
        return SequenceRows(self.shape, {**self.rows, **other.rows})

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids (N,), values (N, *shape)), by increasing sequence index."""
        ids = np.array(sorted(self.rows), dtype=np.int64)
        return ids, np.stack([self.rows[int(i)] for i in ids]) if len(ids) else np.zeros(
            (0, *self.shape)
        )

    def to_arrays(self, prefix: str) -> Arrays:
        ids, values = self.arrays()
        return {f"{prefix}_ids": ids, f"{prefix}_values": values}

    @classmethod
    def from_arrays(cls, a: Arrays, prefix: str) -> SequenceRows:
        ids, values = a[f"{prefix}_ids"], _f64(a[f"{prefix}_values"])
        return cls(tuple(values.shape[1:]), {int(i): v for i, v in zip(ids, values, strict=True)})


Part = Moments | Comoments | SequenceRows


def _save(parts: dict[str, Part], settings: Arrays) -> Arrays:
    out = dict(settings)
    for name, part in parts.items():
        out.update(part.to_arrays(name))
    return out


@dataclass
class KeysStats:
    """Pass-one statistics: pooled PCA per head, whole-layer spectra and logit ranks.

    Attributes:
        pca: per :data:`KINDS`, the per-head co-moments of that tensor.
        layer_curve: (3, L, Hkv d) moments over sequences of the cumulative ``energy`` share
            of each sequence's whole-layer matrix, in :data:`LAYER_KINDS` order.
        layer_rank: per sequence, (3, L) ``energy`` rank at ``fraction`` (ShadowKV's).
        logit_curve: (L, H, d) moments of the cumulative ``energy`` share of each head's
            post-RoPE logits.
        logit_rank: per sequence, (L, H, 4) ranks in :data:`LOGIT_NAMES` order
            (``probs_nuclear`` is NaN unless ``probs_rank``: an SVD of P costs O(m^3) per
            head and sequence).
    """

    pca: dict[str, Comoments]
    layer_curve: Moments
    layer_rank: SequenceRows
    logit_curve: Moments
    logit_rank: SequenceRows
    fraction: float = 0.9
    probs_rank: bool = True

    @classmethod
    def empty(
        cls, layers: int, heads: int, kv_heads: int, d: int, groups: int,
        fraction: float = 0.9, probs_rank: bool = True,
    ) -> KeysStats:  # fmt: skip
        if groups < 1:
            raise LowrankError(f"bootstrap groups {groups} must be at least 1")
        per = {"query_pre": heads, "query_post": heads}
        return cls(
            {k: Comoments.empty(groups, layers, per.get(k, kv_heads), d) for k in KINDS},
            Moments.empty((len(LAYER_KINDS), layers, kv_heads * d)),
            SequenceRows((len(LAYER_KINDS), layers)),
            Moments.empty((layers, heads, d)),
            SequenceRows((layers, heads, len(LOGIT_NAMES))),
            fraction,
            probs_rank,
        )

    def update(self, qkv: LayerQKV, ids: list[int]) -> None:
        """Add one layer of one batch; ``ids`` (B,) are the sequences' global indices."""
        layer, f = qkv.layer, self.fraction
        if layer >= self.layer_curve.mean.shape[1]:
            raise LowrankError(f"layer {layer + 1} is beyond the configured layers")
        for kind in KINDS:
            self.pca[kind].add(layer, getattr(qkv, kind), qkv.valid, ids)
        group = maths.kv_group(qkv.heads, qkv.kv_heads).to(qkv.key_post.device)
        every = slice(None)
        for b, sid in enumerate(ids):
            s = qkv.span(b)
            whole = [maths.whole_layer(getattr(qkv, k)[b, :, s]) for k in LAYER_KINDS]
            energy = torch.stack([maths.gram_singular_values(x) for x in whole]).cpu() ** 2
            self.layer_rank.set(sid, (every, layer), maths.rank_at(energy, f).numpy())
            self.layer_curve.add(maths.cumulative_share(energy).numpy()[None], (every, layer))
            post, pre = (
                maths.product_singular_values(q[b, :, s], k[b, group][:, s]).cpu()  # (H, d)
                for q, k in ((qkv.query_post, qkv.key_post), (qkv.query_pre, qkv.key_pre))
            )
            probs = torch.full((qkv.heads,), torch.nan, dtype=torch.float64)
            if self.probs_rank:  # spectrum's singular values: one matrix per core
                sv = singular_values(qkv.probs[b, :, s, s], workers=default_workers())
                probs = maths.rank_at(sv.cpu(), f)
            ranks = [maths.rank_at(post**2, f), maths.rank_at(pre**2, f), maths.rank_at(post, f)]
            row = torch.stack([r.to(torch.float64) for r in (*ranks, probs)], dim=-1)
            self.logit_rank.set(sid, (layer,), row.numpy())
            self.logit_curve.add(maths.cumulative_share(post**2).numpy()[None], (layer,))

    def merge(self, other: KeysStats) -> KeysStats:
        return KeysStats(
            {k: c.merge(other.pca[k]) for k, c in self.pca.items()},
            self.layer_curve.merge(other.layer_curve),
            self.layer_rank.merge(other.layer_rank),
            self.logit_curve.merge(other.logit_curve),
            self.logit_rank.merge(other.logit_rank),
            self.fraction,
            self.probs_rank,
        )

    def ranks(self) -> Arrays:
        """Pooled PCA component counts at ``fraction`` (``variance`` definition), per kind:
        ``{kind}_rank`` (L, heads of that kind), e.g. ``key_pre_rank`` (L, Hkv)."""
        return {
            f"{k}_rank": maths.rank_at(c.explained_variance(), self.fraction).numpy()
            for k, c in self.pca.items()
        }

    def to_arrays(self) -> Arrays:
        parts: dict[str, Part] = {f"pca_{k}": c for k, c in self.pca.items()}
        parts.update(layer_curve=self.layer_curve, layer_rank=self.layer_rank)
        parts.update(logit_curve=self.logit_curve, logit_rank=self.logit_rank)
        settings = {"fraction": np.array(self.fraction), "probs_rank": np.array(self.probs_rank)}
        return _save(parts, settings)

    @classmethod
    def from_arrays(cls, a: Arrays) -> KeysStats:
        return cls(
            {k: Comoments.from_arrays(a, f"pca_{k}") for k in KINDS},
            Moments.from_arrays(a, "layer_curve"),
            SequenceRows.from_arrays(a, "layer_rank"),
            Moments.from_arrays(a, "logit_curve"),
            SequenceRows.from_arrays(a, "logit_rank"),
            float(a["fraction"]),
            bool(a["probs_rank"]),
        )
