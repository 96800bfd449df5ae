"""The ``lowrank compare`` sink: every family at every budget, layer by layer, as moments.

One forward pass per batch; inside each layer's attention call a :class:`CompareSink`
rebuilds the exact P in float64 from the captured Q and K (checked against the captured P),
evaluates every family's ``P~`` at every budget, reduces it to four errors per (sequence,
head), adds them to per-layer :class:`RunningMoments` and drops the layer's tensors, so
memory is one layer's work whatever the depth.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from lowrank.comparisons.methods import (
    BASELINES,
    CAUSAL_OK,
    FAMILIES,
    METRICS,
    ORACLES,
    PinvMethod,
    SupportMethod,
    attention_scores,
    causal_lsh,
    causal_mask,
    errors,
    global_keys,
    iterative_pinv,
    left_singular,
    linformer_projector,
    local_global_ranks,
    lowrank_oracle,
    lsh_mask,
    lsh_parameters,
    lsh_rotations,
    masked_softmax,
    metrics_from,
    nystrom_attention,
    orthogonal_features,
    performer_attention,
    restrict,
    row_entropy,
    scatterbrain_attention,
    scatterbrain_split,
    segment_means,
    sink_mass,
    stable_features,
    uniform_attention,
    variants,
)
from lowrank.errors import LowrankError
from lowrank.hooks.attention import AttentionCall
from lowrank.projections.sketches import seeded_generator
from lowrank.runs.stats import RunningMoments
from lowrank.spectra.maths import cumulative, effective_rank

Metric = Literal["output", "probs", "output-scaled"]
HEAD_STATS = ("entropy", "sink_mass", "effective_rank")
PARITY_TOLERANCE = 1e-4  # captured float32 P against softmax(Q K^T scale) in float64
_SALT = {"linformer": 1, "lsh": 2, "performer": 3, "scatterbrain-lsh": 4, "scatterbrain": 5}


@dataclass(frozen=True)
class CompareSpec:
    """What ``lowrank compare`` measures."""

    budgets: tuple[int, ...] = (16, 32, 64, 128)  # b: about n b numbers per attention
    families: tuple[str, ...] = FAMILIES
    rounds: int = 2  # LSH hash rounds
    globals_: int = 2  # global tokens of local-global (special tokens, then the first)
    pinv: PinvMethod = "iterative"  # Nystrom's pseudo-inverse: the paper's 6 iterations
    support: SupportMethod = "lsh"  # Scatterbrain's sparse part: LSH (the paper's) or top-b
    split: float = 0.5  # share of Scatterbrain's budget spent on its sparse part
    metric: Metric = "output"  # the error that picks the winner
    focus: int | None = None  # budget of the finding and heatmaps (None: the second)
    seed: int = 0  # seed of the random draws: E, rotations, features

    @property
    def rows(self) -> tuple[str, ...]:
        """Names along the family axis of the results: the families' variants, baselines."""
        return tuple(v for f in FAMILIES if f in self.families for v in variants(f)) + BASELINES

    @property
    def oracles(self) -> tuple[str, ...]:
        """Rows that read more than Q and K: P itself, or (Scatterbrain with a top-b
        support) every score of the row."""
        extra = ("scatterbrain",) if self.support == "topk" else ()
        return tuple(r for r in self.rows if r in ORACLES + extra)

    @property
    def focus_budget(self) -> int:
        return self.focus if self.focus is not None else self.budgets[min(1, len(self.budgets) - 1)]

    def check(self, n: int) -> None:
        if not self.budgets:
            raise LowrankError("--budget: give at least one budget")
        if len(set(self.budgets)) != len(self.budgets):
            raise LowrankError(f"--budget {list(self.budgets)} lists a budget twice")
        for b in self.budgets:
            if b <= 0:
                raise LowrankError(f"--budget {b}: a budget must be at least 1")
            if b > n:
                raise LowrankError(f"--budget {b} exceeds n = {n}: choose budgets <= --seq-len")
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown:
            raise LowrankError(f"--families: unknown family '{unknown[0]}' ({', '.join(FAMILIES)})")
        if self.focus is not None and self.focus not in self.budgets:
            raise LowrankError(f"--focus-budget {self.focus} is not one of --budget")
        if not (math.isfinite(self.split) and 0 <= self.split <= 1):
            raise LowrankError(f"--scatterbrain-split {self.split}: give a number in [0, 1]")
        if self.rounds < 1 or self.globals_ < 0:
            raise LowrankError("--lsh-rounds must be >= 1 and --globals >= 0")


def is_causal(call: AttentionCall) -> bool:
    """Whether the layer masks future keys (GPT-2-style decoders)."""
    return bool(getattr(call.module, "is_causal", False))


@dataclass
class CompareSink:
    """Attention sink: every family at every budget, reduced to moments per layer.

    ``metrics[layer]`` holds moments of shape (F, K, H, 4) (metrics in :data:`METRICS`
    order), ``attended[layer]`` and ``coverage[layer]`` (F, K, H) the keys attended per
    query and the share of P's mass on them (NaN where the family has no mask),
    ``head_stats[layer]`` (3, H) in :data:`HEAD_STATS` order, ``c_at[layer]`` (K, H).
    Set ``special`` to the batch's (B, n) special-token mask before each forward pass.

    The (sequence, head) matrices of a layer are cut into chunks of ``chunk`` matrices,
    shared out over ``workers`` threads with one BLAS thread each: float64 temporaries stay
    small and cache-resident, and a busy machine does not stall multithreaded LAPACK.
    """

    spec: CompareSpec
    layers: int
    heads: int
    n: int
    special: torch.Tensor | None = None
    causal: bool | None = None
    chunk: int = 4
    workers: int = 1
    dense: bool = False  # build every P~ densely (the pure functions) instead of the fast paths
    metrics: list[RunningMoments] = field(default_factory=list)
    attended: list[RunningMoments] = field(default_factory=list)
    coverage: list[RunningMoments] = field(default_factory=list)
    head_stats: list[RunningMoments] = field(default_factory=list)
    c_at: list[RunningMoments] = field(default_factory=list)
    _draws: dict[tuple[str, int, int], Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        f, k, h = len(self.spec.rows), len(self.spec.budgets), self.heads
        self.metrics = [RunningMoments.empty((f, k, h, len(METRICS))) for _ in range(self.layers)]
        self.attended = [RunningMoments.empty((f, k, h)) for _ in range(self.layers)]
        self.coverage = [RunningMoments.empty((f, k, h)) for _ in range(self.layers)]
        self.head_stats = [RunningMoments.empty((len(HEAD_STATS), h)) for _ in range(self.layers)]
        self.c_at = [RunningMoments.empty((k, h)) for _ in range(self.layers)]

    def __call__(self, call: AttentionCall) -> None:
        layer = call.layer
        if layer >= self.layers:
            raise LowrankError(f"the model ran more attention layers than its {self.layers}")
        from lowrank.spectra.pipeline import check_finite

        check_finite(call.probs, layer)
        batch, heads, n, d = call.query.shape
        self.causal = is_causal(call)
        with _one_torch_thread():
            self._prepare_draws(layer, heads, n, d)
        special = self._special(batch, n).cpu()
        flat = [x.reshape(batch * heads, *x.shape[2:]).cpu() for x in _tensors(call)]
        total = batch * heads
        rows, budgets = self.spec.rows, self.spec.budgets
        shape = (total, len(rows), len(budgets))
        out = _Out(
            torch.full((*shape, len(METRICS)), math.nan, dtype=torch.float64),
            torch.full(shape, math.nan, dtype=torch.float64),
            torch.full(shape, math.nan, dtype=torch.float64),
            torch.zeros(total, len(HEAD_STATS), dtype=torch.float64),
            torch.zeros(total, len(budgets), dtype=torch.float64),
            torch.zeros(total, dtype=torch.float64),
        )
        spans = [(lo, min(lo + self.chunk, total)) for lo in range(0, total, self.chunk)]

        def work(span: tuple[int, int]) -> None:
            lo, hi = span
            index = torch.arange(lo, hi)
            with torch.inference_mode():  # thread-local: the workers enter it themselves
                self._chunk(layer, flat, index % heads, special[index // heads], out, lo, hi)

        with _one_torch_thread():
            _parallel(work, spans, self.workers)
        gap = float(out.gap.max())
        if gap > PARITY_TOLERANCE:
            raise LowrankError(
                f"layer {layer + 1}: the captured P differs from softmax(Q K^T / sqrt(d)) "
                f"by {gap:.2g}; lowrank compare needs standard scaled dot-product attention"
            )

        def per_head(x: torch.Tensor) -> np.ndarray:
            """(B H, F, K, ...) -> (B, F, K, H, ...)"""
            x = x.reshape(batch, heads, *x.shape[1:])
            return x.movedim(1, 3).numpy()

        self.metrics[layer] = self.metrics[layer].add(per_head(out.metrics))
        self.attended[layer] = self.attended[layer].add(per_head(out.attended))
        self.coverage[layer] = self.coverage[layer].add(per_head(out.coverage))
        stats = out.stats.reshape(batch, heads, -1).movedim(1, 2).numpy()
        self.head_stats[layer] = self.head_stats[layer].add(stats)
        self.c_at[layer] = self.c_at[layer].add(
            out.c_at.reshape(batch, heads, -1).movedim(1, 2).numpy()
        )

    def _chunk(
        self,
        layer: int,
        flat: list[torch.Tensor],
        heads: torch.Tensor,
        special: torch.Tensor,
        out: _Out,
        lo: int,
        hi: int,
    ) -> None:
        """Every family and budget on matrices lo:hi of the layer (c = hi - lo of them)."""
        captured, q, k, v = (x[lo:hi].double() for x in flat)  # (c, n, n), (c, n, d) x 3
        n, d = q.shape[-2:]
        causal = bool(self.causal)
        tril = causal_mask(n) if causal else None
        scale = d**-0.5
        scores = attention_scores(q, k, scale)  # (c, n, n)
        p = masked_softmax(scores, tril)  # the exact P in float64
        out.gap[lo:hi] = (p - captured).abs().amax(dim=(-2, -1))
        del captured
        exact = p @ v
        p_rows = torch.linalg.vector_norm(p, dim=-1) ** 2  # (c, n) ||P_i||^2
        norms = (p_rows.sum(-1).sqrt(), torch.linalg.vector_norm(exact, dim=(-2, -1)))
        s, u = left_singular(p)
        budgets = self.spec.budgets
        out.c_at[lo:hi] = cumulative(s)[:, [b - 1 for b in budgets]]
        sinks = special | (torch.arange(n) == 0)
        out.stats[lo:hi] = torch.stack([row_entropy(p), sink_mass(p, sinks), effective_rank(s)], 1)
        ctx = _Context(p, q, k, v, exact, scores, s, u, special, causal, scale, layer, heads)
        ctx.norms, ctx.p_rows = norms, p_rows
        ctx.top = p.topk(max(budgets), dim=-1)
        if "local-global" in self.spec.families:
            ctx.ranks = local_global_ranks(global_keys(special, self.spec.globals_), causal)
        for ki, b in enumerate(budgets):
            for fi, name in enumerate(self.spec.rows):
                if causal and name not in CAUSAL_OK:
                    continue  # not applicable: stays NaN
                if name == "zero":
                    out.metrics[lo:hi, fi, ki] = torch.tensor([1.0, 1.0, 1.0, 0.0])
                    continue
                fast = None if self.dense else self._fast(name, b, ctx)
                if fast is not None:
                    out.metrics[lo:hi, fi, ki], mask = fast
                else:
                    approx, mask = self._approx(name, b, ctx)
                    out.metrics[lo:hi, fi, ki] = errors(approx, p, v, exact, ctx.norms)
                    del approx
                if mask is not None:
                    out.attended[lo:hi, fi, ki] = mask.sum(dim=-1).double().mean(dim=-1)
                    mass = ctx.mass if ctx.mass is not None else torch.where(mask, p, 0.0).sum(-1)
                    out.coverage[lo:hi, fi, ki] = mass.mean(dim=-1)
                del mask
                ctx.mass = None

    def _special(self, batch: int, n: int) -> torch.Tensor:
        if self.special is None:
            return torch.zeros(batch, n, dtype=torch.bool)
        return self.special.bool()

    def _prepare_draws(self, layer: int, heads: int, n: int, d: int) -> None:
        """One draw per (family, layer, budget), the same for every sequence and batch (seeded
        by those three), made before the threads start; only this layer's are kept."""

        if any(key[1] != layer for key in self._draws):
            self._draws = {}  # keep one layer's draws: memory stays flat in depth

        def draw(what: str, b: int, make: Any) -> None:
            if (what, layer, b) not in self._draws:
                gen = seeded_generator(self.spec.seed, _SALT[what], layer, b)
                self._draws[(what, layer, b)] = make(gen)

        families = self.spec.families
        for b in self.spec.budgets:
            if "linformer" in families:
                draw("linformer", b, lambda g, b=b: _projector_factors(heads, b, n, g))
            if "lsh" in families:
                draw("lsh", b, lambda g, b=b: self._rotations(heads, n, d, b, g))
            if "performer" in families:
                draw("performer", b, lambda g, b=b: orthogonal_features(heads, b, d, g))
            if "scatterbrain" in families:
                sparse, m = scatterbrain_split(b, self.spec.split)
                if sparse and self.spec.support == "lsh":
                    draw(
                        "scatterbrain-lsh",
                        sparse,
                        lambda g, s=sparse: self._rotations(heads, n, d, s, g),
                    )
                if m:
                    draw("scatterbrain", m, lambda g, m=m: orthogonal_features(heads, m, d, g))

    def _rotations(self, heads: int, n: int, d: int, b: int, g: torch.Generator) -> Any:
        r, _, buckets = lsh_parameters(n, b, self.spec.rounds)
        return lsh_rotations(heads, r, d, buckets, g)

    def _lsh(self, what: str, b: int, ctx: _Context) -> torch.Tensor:
        _, chunk, _ = lsh_parameters(ctx.p.shape[-1], b, self.spec.rounds)
        rot = self._draws[(what, ctx.layer, b)]
        mask = lsh_mask(ctx.q, ctx.k, None if rot is None else rot[ctx.heads], chunk)
        return causal_lsh(mask) if ctx.causal else mask

    def _approx(self, name: str, b: int, ctx: _Context) -> tuple[Any, torch.Tensor | None]:
        """``(P~, the keys it attends or None)`` of one family at budget b."""
        p, n = ctx.p, ctx.p.shape[-1]
        if name == "lowrank-oracle":
            return lowrank_oracle(p, b, ctx.u), None
        if name == "linformer":
            e, _ = self._draws[("linformer", ctx.layer, b)]
            return linformer_projector(p, e[ctx.heads]), None
        if name in ("sparse-oracle", "sparse-oracle-renorm"):
            values, index = ctx.top.values[..., :b], ctx.top.indices[..., :b]
            if name.endswith("renorm"):
                values = values / values.sum(dim=-1, keepdim=True).clamp_min(1e-300)
            return torch.zeros_like(p).scatter_(-1, index, values), None
        if name == "lsh":
            mask = self._lsh("lsh", b, ctx)
            return restrict(p, mask), mask
        if name == "local-global":
            assert ctx.ranks is not None
            mask = ctx.ranks < b
            mask = mask & ctx.tril if ctx.tril is not None else mask
            return restrict(p, mask), mask
        if name == "performer":
            omega = self._draws[("performer", ctx.layer, b)][ctx.heads]
            return performer_attention(ctx.q, ctx.k, ctx.scale, omega, ctx.causal), None
        if name == "nystrom":
            return nystrom_attention(ctx.q, ctx.k, ctx.scale, b, self.spec.pinv), None
        if name == "scatterbrain":
            return self._scatterbrain(b, ctx)
        if name == "uniform":
            return uniform_attention(n, ctx.causal), None
        raise ValueError(f"unknown family {name!r}")

    def _fast(self, name: str, b: int, ctx: _Context) -> tuple[Any, Any] | None:
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
            basis = self._draws[("linformer", ctx.layer, b)][1][ctx.heads]
            pb = p @ basis
            return done(p_sq - (pb**2).sum(dim=(-2, -1)), pb @ (basis.mT @ v)), None
        if name in ("sparse-oracle", "sparse-oracle-renorm"):
            values, index = ctx.top.values[..., :b], ctx.top.indices[..., :b]
            kept = torch.zeros_like(p).scatter_(-1, index, values)
            return self._restricted(kept, values.sum(-1), name.endswith("renorm"), ctx), None
        if name in ("lsh", "local-global"):
            if name == "lsh":
                mask = self._lsh("lsh", b, ctx)
            else:
                assert ctx.ranks is not None
                mask = ctx.ranks < b
                mask = mask & ctx.tril if ctx.tril is not None else mask
            kept = torch.where(mask, p, 0.0)
            ctx.mass = kept.sum(-1)  # (c, n) share of each row's attention kept
            return self._restricted(kept, ctx.mass, True, ctx), mask
        if name == "performer" and not ctx.causal:
            omega = self._draws[("performer", ctx.layer, b)][ctx.heads]
            fq, fk, _, _ = stable_features(ctx.q, ctx.k, ctx.scale, omega)
            a = fq / (fq @ fk.sum(dim=-2, keepdim=True).mT)  # P~ = A fk^T
            return self._factored(a, fk, p_sq, ctx), None
        if name == "nystrom":
            return self._factored(*_nystrom_factors(ctx, b, self.spec.pinv), p_sq, ctx), None
        if name == "uniform":
            n = p.shape[-1]
            counts = torch.arange(1, n + 1, dtype=p.dtype) if ctx.causal else torch.full((n,), n)
            out = v.cumsum(-2) / counts[:, None] if ctx.causal else v.mean(-2, keepdim=True)
            err_sq = (ctx.p_rows - 1 / counts).sum(-1)  # rows of P sum to 1
            return done(err_sq, out.expand_as(exact)), None
        return None

    def _restricted(
        self, kept: torch.Tensor, mass: torch.Tensor, renormalise: bool, ctx: _Context
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

    def _factored(
        self, left: torch.Tensor, right: torch.Tensor, p_sq: torch.Tensor, ctx: _Context
    ) -> torch.Tensor:
        """Metrics of ``P~ = L R^T`` (L (c, n, r), R (c, n, r)) without forming it:
        ``||P~||^2 = <L^T L, R^T R>``, ``<P~, P> = <L, P R>``."""
        p_norm, o_norm = ctx.norms
        fro_sq = ((left.mT @ left) * (right.mT @ right)).sum(dim=(-2, -1))
        inner = (left * (ctx.p @ right)).sum(dim=(-2, -1))
        err_sq = fro_sq - 2 * inner + p_sq
        out = left @ (right.mT @ ctx.v)
        return metrics_from(err_sq.clamp_min(0).sqrt() / p_norm, out, ctx.exact, o_norm)

    def _scatterbrain(self, b: int, ctx: _Context) -> tuple[torch.Tensor, torch.Tensor]:
        sparse, m = scatterbrain_split(b, self.spec.split)
        if sparse == 0:
            support = torch.zeros_like(ctx.p, dtype=torch.bool)
        elif self.spec.support == "lsh":
            support = self._lsh("scatterbrain-lsh", sparse, ctx)
        else:  # the top entries of P are the top scores of each row
            index = ctx.top.indices[..., :sparse]
            support = torch.zeros_like(ctx.p, dtype=torch.bool).scatter_(-1, index, True)
        omega = self._draws[("scatterbrain", ctx.layer, m)][ctx.heads] if m else None
        approx = scatterbrain_attention(
            ctx.q, ctx.k, ctx.scale, support, omega, ctx.causal, ctx.scores
        )
        return approx, support

    def arrays(self) -> dict[str, np.ndarray]:
        """The npz arrays: [family, budget, layer, head] per metric, per-head statistics."""
        count = self.metrics[0].count
        out: dict[str, np.ndarray] = {"num_sequences": np.array(count)}
        mean = np.stack([m.mean for m in self.metrics], axis=2)  # (F, K, L, H, 4)
        std = np.stack([m.std() for m in self.metrics], axis=2)
        m2 = np.stack([m.m2 for m in self.metrics], axis=2)
        for i, name in enumerate(METRICS):
            out[f"{name}_mean"], out[f"{name}_std"] = mean[..., i], std[..., i]
            out[f"{name}_m2"] = m2[..., i]
        out["attended_mean"] = np.stack([m.mean for m in self.attended], axis=2)
        out["coverage_mean"] = np.stack([m.mean for m in self.coverage], axis=2)
        for i, name in enumerate(HEAD_STATS):
            out[f"{name}_mean"] = np.stack([m.mean[i] for m in self.head_stats])  # (L, H)
            out[f"{name}_std"] = np.stack([m.std()[i] for m in self.head_stats])
        out["c_at_budget_mean"] = np.stack([m.mean for m in self.c_at], axis=1)  # (K, L, H)
        out["c_at_budget_std"] = np.stack([m.std() for m in self.c_at], axis=1)
        return out


@dataclass
class _Out:
    """Per-matrix results of one layer, (B H, ...), written by chunks."""

    metrics: torch.Tensor  # (B H, F, K, 4)
    attended: torch.Tensor  # (B H, F, K)
    coverage: torch.Tensor  # (B H, F, K)
    stats: torch.Tensor  # (B H, 3)
    c_at: torch.Tensor  # (B H, K)
    gap: torch.Tensor  # (B H,) max |P(Q, K) - captured P|


@dataclass
class _Context:
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


def _nystrom_factors(ctx: _Context, b: int, pinv: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Nystromformer's P~ = (F A^+) B as (L, R) with L = F A^+ (c, n, b), R = B^T."""
    ql, kl = segment_means(ctx.q, b), segment_means(ctx.k, b)
    f = torch.softmax(attention_scores(ctx.q, kl, ctx.scale), dim=-1)  # (c, n, b)
    a = torch.softmax(attention_scores(ql, kl, ctx.scale), dim=-1)  # (c, b, b)
    bt = torch.softmax(attention_scores(ql, ctx.k, ctx.scale), dim=-1).mT  # (c, n, b)
    inverse = torch.linalg.pinv(a) if pinv == "exact" else iterative_pinv(a)
    return f @ inverse, bt


def _tensors(call: AttentionCall) -> list[torch.Tensor]:
    return [call.probs, call.query, call.key, call.value]


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """Torch (and LAPACK) on one thread inside the block: multithreaded LAPACK on small
    matrices stalls badly on a busy machine; parallelism comes from :func:`_parallel`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _parallel(work: Any, items: list[Any], workers: int) -> None:
    """``work(item)`` for every item on ``workers`` threads (call inside _one_torch_thread)."""
    if workers <= 1:
        for item in items:
            work(item)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, items))


def _projector_factors(
    heads: int, k: int, n: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(E, B)`` per head: E (heads, k, n) Gaussian N(0, 1/k) and B (heads, n, k) an
    orthonormal basis of E's row space, so that ``E^+ E = B B^T``."""
    e = torch.randn(heads, k, n, generator=generator, dtype=torch.float64) / math.sqrt(k)
    return e, torch.linalg.qr(e.mT).Q


def measure(
    loaded: Any,
    sequences: Any,
    spec: CompareSpec,
    batch_size: int,
    device: torch.device,
    progress: Any = None,
    workers: int | None = None,
) -> CompareSink:
    """Run every batch through the model with a :class:`CompareSink` capturing each layer.

    Raises:
        LowrankError: budgets that do not fit n, padded sequences, or a model whose
            attention the capture cannot see.
    """
    from lowrank.hooks.attention import capture
    from lowrank.spectra.maths import default_workers

    n = sequences.input_ids.shape[1]
    spec.check(n)
    if (sequences.lengths < n).any():
        raise LowrankError("lowrank compare needs full-length sequences (no padding)")
    special_ids = list(loaded.tokenizer.all_special_ids)
    sink = CompareSink(
        spec,
        loaded.num_layers,
        loaded.num_heads,
        n,
        workers=default_workers() if workers is None else workers,
    )
    for lo in range(0, len(sequences.lengths), batch_size):
        ids = sequences.input_ids[lo : lo + batch_size]
        sink.special = torch.from_numpy(np.isin(ids, special_ids))
        with torch.inference_mode(), capture(loaded.model, sink) as seen:
            loaded.model(input_ids=torch.from_numpy(ids).to(device))
            calls = seen()
        if calls == 0:
            raise LowrankError(
                f"model '{loaded.source.name}' ran no attention layer that lowrank can capture "
                "(it needs transformers' attention interface)"
            )
        if calls != loaded.num_layers:
            raise LowrankError(f"captured {calls} attention layers of {loaded.num_layers}")
        if progress is not None:
            progress(len(ids))
    return sink
