"""The ``lowrank compare`` sink: every family at every budget, layer by layer, as moments.

One forward pass per batch; inside each layer's attention call a :class:`CompareCollector`
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
from typing import Any

import numpy as np
import torch

from lowrank.core.random import seeded_generator
from lowrank.errors import LowrankError
from lowrank.families.compare.fast import ChunkContext, fast_metrics
from lowrank.families.compare.kernels import (
    nystrom_attention,
    orthogonal_features,
    performer_attention,
    scatterbrain_attention,
    uniform_attention,
)
from lowrank.families.compare.methods import (
    CAUSAL_OK,
    METRICS,
    attention_scores,
    causal_lsh,
    causal_mask,
    global_keys,
    left_singular,
    linformer_projector,
    local_global_ranks,
    lowrank_oracle,
    lsh_mask,
    lsh_parameters,
    lsh_rotations,
    masked_softmax,
    restrict,
    scatterbrain_split,
)
from lowrank.families.compare.metrics import errors, row_entropy, sink_mass
from lowrank.families.compare.spec import PARITY_TOLERANCE, CompareSpec, parity_tolerance
from lowrank.hooks.attention import AttentionCall
from lowrank.maths.budgets import output_floor
from lowrank.maths.spectra import cumulative, effective_rank
from lowrank.maths.stats import RunningMoments

HEAD_STATS = ("entropy", "sink_mass", "effective_rank")
# the metrics kept per sequence (the findings' bootstrap resamples sequences): METRICS[:2]
PER_SEQUENCE_METRICS = ("probs_error", "output_error")
_SALT = {"linformer": 1, "lsh": 2, "performer": 3, "scatterbrain-lsh": 4, "scatterbrain": 5}


def is_causal(call: AttentionCall) -> bool:
    """Whether the layer masks future keys (GPT-2-style decoders)."""
    return bool(getattr(call.module, "is_causal", False))


@dataclass
class CompareCollector:
    """Attention sink: every family at every budget, reduced to moments per layer.

    ``metrics[layer]`` holds moments of shape (F, K, H, 4) (metrics in :data:`METRICS`
    order), ``attended[layer]`` and ``coverage[layer]`` (F, K, H) the keys attended per
    query and the share of P's mass on them (NaN where the family has no mask),
    ``head_stats[layer]`` (3, H) in :data:`HEAD_STATS` order, ``c_at[layer]`` (K, H),
    ``floor[layer]`` (K, H) the output floor of a rank-b P~ (:func:`output_floor`). Per
    sequence it keeps ``per_sequence[layer]``, batches of (B, F, K, H, 2) errors
    (:data:`PER_SEQUENCE_METRICS`), and ``entropy[layer]``, batches of (B, H): the findings
    resample sequences. ``gap`` is the largest |captured P - rebuilt P| seen, ``tolerance``
    the largest gap allowed so far (:func:`parity_tolerance`, by the captured dtype).
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
    floor: list[RunningMoments] = field(default_factory=list)
    per_sequence: list[list[np.ndarray]] = field(default_factory=list)
    entropy: list[list[np.ndarray]] = field(default_factory=list)
    draws: dict[tuple[str, int, int], Any] = field(default_factory=dict)
    gap: float = 0.0
    tolerance: float = PARITY_TOLERANCE
    dtype: str = "float32"
    scale: float | None = None  # the factor of Q K^T in the scores (None: 1 / sqrt(d))

    def __post_init__(self) -> None:
        f, k, h = len(self.spec.rows), len(self.spec.budgets), self.heads
        self.metrics = [RunningMoments.empty((f, k, h, len(METRICS))) for _ in range(self.layers)]
        self.attended = [RunningMoments.empty((f, k, h)) for _ in range(self.layers)]
        self.coverage = [RunningMoments.empty((f, k, h)) for _ in range(self.layers)]
        self.head_stats = [RunningMoments.empty((len(HEAD_STATS), h)) for _ in range(self.layers)]
        self.c_at = [RunningMoments.empty((k, h)) for _ in range(self.layers)]
        self.floor = [RunningMoments.empty((k, h)) for _ in range(self.layers)]
        self.per_sequence = [[] for _ in range(self.layers)]
        self.entropy = [[] for _ in range(self.layers)]

    def __call__(self, call: AttentionCall) -> None:
        layer = call.layer
        if layer >= self.layers:
            raise LowrankError(f"the model ran more attention layers than its {self.layers}")
        from lowrank.core.numeric import check_finite

        check_finite(call.probs, layer)
        if not (call.probs_from_qk and call.qkv):
            raise LowrankError(
                f"layer {layer + 1} ({type(call.module).__name__}) adds terms of its own to the "
                "attention scores (position biases, soft-capping, sinks) or hides Q and K: lowrank "
                "compare rebuilds P from Q and K and needs plain scaled dot-product attention"
            )
        batch, heads, n, d = call.query.shape
        self.causal = is_causal(call)
        self.scale = call.scale
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
        self._check_parity(layer, out, str(call.probs.dtype).removeprefix("torch."))

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
        floor = out.floor.reshape(batch, heads, -1).movedim(1, 2).numpy()  # (B, K, H)
        self.floor[layer] = self.floor[layer].add(floor)
        self.per_sequence[layer].append(per_head(out.metrics)[..., :2].copy())  # float64
        self.entropy[layer].append(stats[:, HEAD_STATS.index("entropy")])  # (B, H)

    def _check_parity(self, layer: int, out: _Out, dtype: str) -> None:
        """Refuse a layer whose captured P is not softmax(Q K^T / sqrt(d)) within the
        tolerance of its dtype (:func:`parity_tolerance`)."""
        tolerance = parity_tolerance(dtype, float(out.max_score.max()))
        gap = float(out.gap.max())
        self.gap, self.tolerance = max(self.gap, gap), max(self.tolerance, tolerance)
        self.dtype = dtype
        if gap > tolerance:
            raise LowrankError(
                f"layer {layer + 1}: the captured P differs from softmax(Q K^T / sqrt(d)) "
                f"by {gap:.2g} (allowed in {dtype}: {tolerance:.2g}); lowrank compare needs "
                "standard scaled dot-product attention"
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
        scale = self.scale if self.scale is not None else d**-0.5
        scores = attention_scores(q, k, scale)  # (c, n, n)
        p = masked_softmax(scores, tril)  # the exact P in float64
        out.gap[lo:hi] = (p - captured).abs().amax(dim=(-2, -1))
        out.max_score[lo:hi] = scores.abs().amax(dim=(-2, -1))  # masked -inf never reach here
        del captured
        exact = p @ v
        out.floor[lo:hi] = torch.from_numpy(output_floor(exact.numpy(), self.spec.budgets))
        p_rows = torch.linalg.vector_norm(p, dim=-1) ** 2  # (c, n) ||P_i||^2
        norms = (p_rows.sum(-1).sqrt(), torch.linalg.vector_norm(exact, dim=(-2, -1)))
        s, u = left_singular(p)
        budgets = self.spec.budgets
        out.c_at[lo:hi] = cumulative(s)[:, [b - 1 for b in budgets]]
        sinks = special | (torch.arange(n) == 0)
        out.stats[lo:hi] = torch.stack([row_entropy(p), sink_mass(p, sinks), effective_rank(s)], 1)
        ctx = ChunkContext(p, q, k, v, exact, scores, s, u, special, causal, scale, layer, heads)
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
                fast = None if self.dense else fast_metrics(self, name, b, ctx)
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

        if any(key[1] != layer for key in self.draws):
            self.draws = {}  # keep one layer's draws: memory stays flat in depth

        def draw(what: str, b: int, make: Any) -> None:
            if (what, layer, b) not in self.draws:
                gen = seeded_generator(self.spec.seed, _SALT[what], layer, b)
                self.draws[(what, layer, b)] = make(gen)

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

    def lsh_support(self, what: str, b: int, ctx: ChunkContext) -> torch.Tensor:
        _, chunk, _ = lsh_parameters(ctx.p.shape[-1], b, self.spec.rounds)
        rot = self.draws[(what, ctx.layer, b)]
        mask = lsh_mask(ctx.q, ctx.k, None if rot is None else rot[ctx.heads], chunk)
        return causal_lsh(mask) if ctx.causal else mask

    def _approx(self, name: str, b: int, ctx: ChunkContext) -> tuple[Any, torch.Tensor | None]:
        """``(P~, the keys it attends or None)`` of one family at budget b."""
        p, n = ctx.p, ctx.p.shape[-1]
        if name == "lowrank-oracle":
            return lowrank_oracle(p, b, ctx.u), None
        if name == "linformer":
            e, _ = self.draws[("linformer", ctx.layer, b)]
            return linformer_projector(p, e[ctx.heads]), None
        if name in ("sparse-oracle", "sparse-oracle-renorm"):
            values, index = ctx.top.values[..., :b], ctx.top.indices[..., :b]
            if name.endswith("renorm"):
                values = values / values.sum(dim=-1, keepdim=True).clamp_min(1e-300)
            return torch.zeros_like(p).scatter_(-1, index, values), None
        if name == "lsh":
            mask = self.lsh_support("lsh", b, ctx)
            return restrict(p, mask), mask
        if name == "local-global":
            assert ctx.ranks is not None
            mask = ctx.ranks < b
            mask = mask & ctx.tril if ctx.tril is not None else mask
            return restrict(p, mask), mask
        if name == "performer":
            omega = self.draws[("performer", ctx.layer, b)][ctx.heads]
            return performer_attention(ctx.q, ctx.k, ctx.scale, omega, ctx.causal), None
        if name == "nystrom":
            return nystrom_attention(ctx.q, ctx.k, ctx.scale, b, self.spec.pinv), None
        if name == "scatterbrain":
            return self._scatterbrain(b, ctx)
        if name == "uniform":
            return uniform_attention(n, ctx.causal), None
        raise ValueError(f"unknown family {name!r}")

    def _scatterbrain(self, b: int, ctx: ChunkContext) -> tuple[torch.Tensor, torch.Tensor]:
        sparse, m = scatterbrain_split(b, self.spec.split)
        if sparse == 0:
            support = torch.zeros_like(ctx.p, dtype=torch.bool)
        elif self.spec.support == "lsh":
            support = self.lsh_support("scatterbrain-lsh", sparse, ctx)
        else:  # the top entries of P are the top scores of each row
            index = ctx.top.indices[..., :sparse]
            support = torch.zeros_like(ctx.p, dtype=torch.bool).scatter_(-1, index, True)
        omega = self.draws[("scatterbrain", ctx.layer, m)][ctx.heads] if m else None
        approx = scatterbrain_attention(
            ctx.q, ctx.k, ctx.scale, support, omega, ctx.causal, ctx.scores
        )
        return approx, support

    def arrays(self) -> dict[str, np.ndarray]:
        """The npz arrays: [family, budget, layer, head] per metric, per-head statistics,
        ``output_floor`` [K, L, H] (mean over sequences), ``per_sequence_error``
        [S, F, K, L, H, 2] (float64) and ``entropy_per_sequence`` [S, L, H]."""
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
        out["output_floor"] = np.stack([m.mean for m in self.floor], axis=1)  # (K, L, H)
        out["output_floor_std"] = np.stack([m.std() for m in self.floor], axis=1)
        # (S, F, K, L, H, 2): every batch's sequences, layers stacked on axis 3
        out["per_sequence_error"] = np.stack(
            [np.concatenate(batches) for batches in self.per_sequence], axis=3
        )
        out["per_sequence_metrics"] = np.array(PER_SEQUENCE_METRICS)
        out["entropy_per_sequence"] = np.stack(
            [np.concatenate(batches) for batches in self.entropy], axis=1
        )  # (S, L, H)
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
    floor: torch.Tensor  # (B H, K) output floor of a rank-b P~
    max_score: torch.Tensor  # (B H,) max |Q K^T scale|


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
) -> CompareCollector:
    """Run every batch through the model with a :class:`CompareCollector` capturing each layer.

    Raises:
        LowrankError: budgets that do not fit n, padded sequences, or a model whose
            attention the capture cannot see.
    """
    from lowrank.hooks.attention import capture
    from lowrank.maths.spectra import default_workers

    n = sequences.input_ids.shape[1]
    if (sequences.lengths < n).any():
        raise LowrankError("lowrank compare needs full-length sequences (no padding)")
    # token ids given without a tokenizer: no token is known to be special
    tokenizer = loaded.tokenizer
    special_ids = list(tokenizer.all_special_ids) if tokenizer is not None else []
    sink = CompareCollector(
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
