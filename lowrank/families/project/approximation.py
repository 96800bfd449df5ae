"""How well projections approximate real attention: Theorem 1 and 2 errors, model effect.

One forward pass per batch feeds every method, k and draw at once through the capture:

* **Theorem 1** (paper Sec. 4): ``P~ = P M`` from a projection E (k x n) under each
  estimator: ``paper`` (``M = R^T R`` for JL, ``n E^T E / tr(E^T E)`` for pooling) and
  ``projector`` (``M = E^+ E``); ``P_k`` itself for ``svd``. Per sequence and draw, the mean
  over the columns w of the head's value matrix V of ``||P~ w - P w|| / ||P w||``, and of
  each column's scale-free error and cosine.
* **Theorem 2**: the Linformer head output ``softmax(Q (E K)^T / sqrt(d)) F V`` (E = delta R,
  F = exp(-delta) R for JL; E = F = the pooling matrix) against the exact ``PV``: relative
  Frobenius error, scale-free error and cosine per head (``P_k V`` for svd).
* **References** in every run: the output floor ``||PV - (PV)_k|| / ||PV||`` and the trivial
  baselines, zero and uniform attention.
* **Model effect**: every layer's keys and values replaced by their projections (each
  sharing strategy), or its attention by a baseline, compared with the exact model on its
  final hidden states (relative error, scale-free error, cosine) and, for models with a
  masked-LM head, the MLM loss.

Each random draw of R belongs to one sequence (shared by that sequence's heads), so
sequences are independent clusters of the samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lowrank.core.random import seeded_generator
from lowrank.errors import LowrankError
from lowrank.hooks.attention import AttentionCall, Override, capture
from lowrank.inputs.corpora import Sequences
from lowrank.maths.intervals import mean_interval
from lowrank.maths.names import ESTIMATORS
from lowrank.maths.sketches import (
    BASELINES,
    JL_METHODS,
    LINEAR_METHODS,
    ProjectionBank,
    baseline_output,
    check_k_range,
    column_errors,
    cosine_and_scale_free,
    estimator_factors,
    jl_matrix,
    linformer_attention,
    output_floor,
    pooling_factors,
    relative_frobenius,
)

DETERMINISTIC = ("mean-pool", "max-pool", "conv", "svd")
METRICS: tuple[str, ...] = ("error", "scale-free", "cosine")
SEED_TAG = 11  # first entropy word of project's R draws (verify and the banks use others)
# Rows every run carries whatever --method lists: references, not methods.
THEOREM1_REFERENCES: tuple[str, ...] = BASELINES
THEOREM2_REFERENCES: tuple[str, ...] = ("output-floor", *BASELINES)


@dataclass(frozen=True)
class ProjectionSpec:
    """What to measure."""

    methods: tuple[str, ...] = ("gaussian", "rademacher", "sparse", "mean-pool", "svd")
    ks: tuple[int, ...] = (32, 64, 128, 256)
    draws: int = 3  # draws of R per sequence for random methods
    delta: float = 1.0  # E = delta R, F = exp(-delta) R (Theorem 2's proof)
    seed: int = 0  # seed of the projection draws
    estimators: tuple[str, ...] = ESTIMATORS  # Theorem 1 estimators of P from E

    def check(self, n: int) -> None:
        """Raise the one-line error for a spec that cannot run on sequences of n (each
        option alone is checked by its declaration, :mod:`lowrank.families.project.options`)."""
        check_k_range(self.ks, n)

    def draws_of(self, method: str) -> int:
        return self.draws if method in JL_METHODS else 1

    def rows(self, kind: str) -> list[str]:
        """Row names of ``kind``: ``method[estimator]`` for linear methods under Theorem 1
        (``svd`` alone: P_k has no estimator), every method under Theorem 2, then the
        references (output floor, zero and uniform attention)."""
        if kind == "theorem2":
            return [*self.methods, *THEOREM2_REFERENCES]
        rows = []
        for method in self.methods:
            if method in LINEAR_METHODS:
                rows += [estimator_row(method, e) for e in self.estimators]
            elif method == "svd":
                rows.append(method)
        return [*rows, *THEOREM1_REFERENCES]


def estimator_row(method: str, estimator: str) -> str:
    """The Theorem 1 row name of a linear method under an estimator: ``gaussian[paper]``."""
    return f"{method}[{estimator}]"


def _metrics(approx: torch.Tensor, exact: torch.Tensor, per_column: bool) -> list[torch.Tensor]:
    """(b, H) raw error, scale-free error and cosine of outputs (b, H, n, d).

    ``per_column`` (Theorem 1): each column w of V is its own vector, so each is measured
    (and rescaled) alone and the column values are averaged. Otherwise (Theorem 2): the
    head's whole n x d output, in the Frobenius norm, one rescale per head.
    """
    if per_column:
        cos, free = cosine_and_scale_free(approx, exact, (-2,))
        return [column_errors(approx, exact).mean(-1), free.mean(-1), cos.mean(-1)]
    cos, free = cosine_and_scale_free(approx, exact, (-2, -1))
    return [relative_frobenius(approx, exact), free, cos]


@dataclass
class ProjectionCollector:
    """Attention sink collecting per-(sequence, draw) metrics for every row and k.

    ``samples[kind][row][metric]`` holds per layer a list of (K, H, b * draws) arrays. The
    paper and projector estimators of a JL row see the same draw of R (a paired design).
    """

    spec: ProjectionSpec
    layers: int
    heads: int
    n: int
    offset: int = 0  # index in the run of the next batch's first sequence
    samples: dict[str, dict[str, dict[str, list[list[np.ndarray]]]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind in ("theorem1", "theorem2"):
            self.samples[kind] = {
                row: {m: [[] for _ in range(self.layers)] for m in METRICS}
                for row in self.spec.rows(kind)
            }

    def _store(self, kind: str, row: str, layer: int, table: np.ndarray) -> None:
        """table: (metric, K, H, b, draws)."""
        for mi, metric in enumerate(METRICS):
            t = table[mi]
            self.samples[kind][row][metric][layer].append(t.reshape(*t.shape[:2], -1))

    def __call__(self, call: AttentionCall) -> None:
        # float16/bfloat16 models: P, Q, K, V as the model made them, measured in float32
        # at least (SVD needs it; the norms of the metrics are float64 in any case)
        if not (call.probs_from_qk and call.qkv):
            raise LowrankError(
                f"layer {call.layer + 1} ({type(call.module).__name__}) adds terms of its own "
                "to the attention scores (position biases, soft-capping, sinks) or hides Q and "
                "K: lowrank project rebuilds Linformer's attention from Q and K (Theorem 2, the "
                "model effect) and needs plain scaled dot-product attention"
            )
        work = torch.promote_types(call.probs.dtype, torch.float32)
        p, q, k, v = (t.to(work) for t in (call.probs, call.query, call.key, call.value))
        scale = call.scale if call.scale is not None else q.shape[-1] ** -0.5
        exact = p @ v  # (b, H, n, d)
        b = p.shape[0]
        ks = self.spec.ks
        causal = bool(getattr(call.module, "is_causal", False))
        svd = torch.linalg.svd(p, full_matrices=False) if "svd" in self.spec.methods else None
        for method in self.spec.methods:
            draws = self.spec.draws_of(method)
            t1 = {
                row: np.full((3, len(ks), self.heads, b, draws), np.nan)
                for row in self._t1_rows(method)
            }
            t2 = np.full((3, len(ks), self.heads, b, draws), np.nan)
            for ki, kk in enumerate(ks):
                for draw in range(draws):
                    # one R per sequence (shared by its heads), seeded by the sequence's
                    # index in the run: sequences are independent clusters, and a sequence
                    # gets the same R whatever the batch size
                    states = [
                        (SEED_TAG, self.spec.seed, self.offset + i, call.layer, draw)
                        for i in range(b)
                    ]
                    one, two = self._errors(method, kk, p, q, k, v, exact, scale, states, svd)
                    for row, values in one.items():
                        for mi, value in enumerate(values):
                            t1[row][mi, ki, :, :, draw] = value.T.cpu().numpy()
                    for mi, value in enumerate(two):
                        t2[mi, ki, :, :, draw] = value.T.cpu().numpy()
            for row, table in t1.items():
                self._store("theorem1", row, call.layer, table)
            self._store("theorem2", method, call.layer, t2)
        self._references(call.layer, exact, v, causal)

    def _t1_rows(self, method: str) -> list[str]:
        if method in LINEAR_METHODS:
            return [estimator_row(method, e) for e in self.spec.estimators]
        return ["svd"] if method == "svd" else []

    def _references(self, layer: int, exact: torch.Tensor, v: torch.Tensor, causal: bool) -> None:
        """Output floor and trivial baselines (one 'draw', repeated over k)."""
        ks = self.spec.ks
        b = exact.shape[0]
        for baseline in BASELINES:
            out = baseline_output(baseline, v, causal)
            for kind, per_column in (("theorem1", True), ("theorem2", False)):
                values = [m.T.cpu().numpy() for m in _metrics(out, exact, per_column)]
                table = np.stack([np.broadcast_to(m, (len(ks), *m.shape)) for m in values])
                self._store(kind, baseline, layer, table[..., None])
        floor = np.full((3, len(ks), self.heads, b, 1), np.nan)
        for ki, kk in enumerate(ks):
            floor[0, ki, :, :, 0] = output_floor(exact, kk).T.cpu().numpy()
        # the best rank-k output (PV)_k is a rescale-free optimum: its cosine is
        # sqrt(1 - floor^2) and its scale-free error equals the floor
        floor[1] = floor[0]
        floor[2] = np.sqrt(np.clip(1 - floor[0] ** 2, 0, None))
        self._store("theorem2", "output-floor", layer, floor)

    def _errors(
        self,
        method: str,
        k: int,
        p: torch.Tensor,
        q: torch.Tensor,
        key: torch.Tensor,
        v: torch.Tensor,
        exact: torch.Tensor,
        scale: float,
        states: Sequence[tuple[int, ...]],
        svd: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    ) -> tuple[dict[str, list[torch.Tensor]], list[torch.Tensor]]:
        """Theorem 1 metrics per row (each (b, H)) and Theorem 2 metrics.

        ``states``: the seed of each sequence's R; every estimator and the Linformer head of
        one sequence see the same R (a paired design)."""
        n = p.shape[-1]
        dtype = p.dtype
        if method == "svd":
            assert svd is not None
            u, s, vh = svd
            approx = (u[..., :k] * s[..., None, :k]) @ (vh[..., :k, :] @ v)  # P_k V
            return {"svd": _metrics(approx, exact, True)}, _metrics(approx, exact, False)
        if method == "max-pool":
            out = linformer_attention(q, key, v, None, None, scale, pool=k)
            return {}, _metrics(out, exact, False)
        theorem1 = {}
        per_sequence = states if method in JL_METHODS else states[:1]  # pooling: one E
        for estimator in self.spec.estimators:
            factors = [
                estimator_factors(method, k, n, estimator, seeded_generator(*st))
                for st in per_sequence
            ]
            left = torch.stack([a for a, _ in factors])[:, None].to(dtype)  # (b|1, 1, n, k)
            right = torch.stack([c for _, c in factors])[:, None].to(dtype)  # (b|1, 1, k, n)
            approx = (p @ left) @ (right @ v)  # (b, H, n, d)
            theorem1[estimator_row(method, estimator)] = _metrics(approx, exact, True)
        if method in JL_METHODS:
            r = torch.stack([jl_matrix(method, k, n, seeded_generator(*st)) for st in states])
            r = r[:, None].to(dtype)  # (b, 1, k, n)
            e, f = self.spec.delta * r, math.exp(-self.spec.delta) * r
        else:
            e = f = pooling_factors(method, k, n)[1].to(dtype)
        out = linformer_attention(q, key, v, e, f, scale)
        return theorem1, _metrics(out, exact, False)

    def arrays(self) -> dict[str, np.ndarray]:
        """``{kind}_{row}`` (raw error) and ``{kind}_{row}_{metric}`` (scale-free, cosine):
        (K, L, H, S) float32 samples, S = sequences x draws."""
        out: dict[str, np.ndarray] = {}
        for kind, per_row in self.samples.items():
            for row, per_metric in per_row.items():
                for metric, per_layer in per_metric.items():
                    stacked = [np.concatenate(chunks, axis=-1) for chunks in per_layer]
                    name = f"{kind}_{row}" if metric == "error" else f"{kind}_{row}_{metric}"
                    out[name] = np.stack(stacked, axis=1).astype(np.float32)
        return out


def measure(
    loaded: Any,
    sequences: Sequences,
    spec: ProjectionSpec,
    batch_size: int,
    device: torch.device,
    progress: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Theorem 1 and 2 metrics for every row, k, (layer, head), sequence and draw."""
    n = sequences.input_ids.shape[1]
    spec.check(n)
    sink = ProjectionCollector(spec, loaded.num_layers, loaded.num_heads, n)
    for lo in range(0, len(sequences.lengths), batch_size):
        ids = torch.from_numpy(sequences.input_ids[lo : lo + batch_size]).to(device)
        with torch.inference_mode(), capture(loaded.model, sink) as seen:
            loaded.model(input_ids=ids)
            if seen() != loaded.num_layers:
                raise LowrankError(f"captured {seen()} attention layers of {loaded.num_layers}")
        sink.offset += len(ids)
        if progress is not None:
            progress(len(ids))
    return sink.arrays()


def summarize(samples: np.ndarray) -> dict[str, np.ndarray]:
    """Mean, median and 95th percentile over the last axis (NaN where not applicable)."""
    if np.isnan(samples).all():
        nan = np.full(samples.shape[:-1], np.nan)
        return {"mean": nan, "median": nan, "p95": nan}
    return {
        "mean": samples.mean(axis=-1),
        "median": np.median(samples, axis=-1),
        "p95": np.percentile(samples, 95, axis=-1),
    }


def linformer_override(
    bank: ProjectionBank,
) -> Override:
    """An attention override that projects every layer's keys and values with ``bank``."""

    def override(
        layer: int,
        q: torch.Tensor,  # (B, H, n, d)
        k: torch.Tensor,
        v: torch.Tensor,
        key_mask: torch.Tensor | None,  # (B, n)
        scale: float,
    ) -> torch.Tensor:
        if bank.method == "max-pool":
            return linformer_attention(
                q,
                k,
                v,
                None,
                None,
                scale,
                key_mask[:, None] if key_mask is not None else None,
                pool=bank.k,
            )
        es, fs = bank.layer_matrices(layer)  # (H, k, n)
        mask = key_mask[:, None, :] if key_mask is not None else None
        return linformer_attention(q, k, v, es.to(q.dtype), fs.to(q.dtype), scale, mask)

    return override


def baseline_override(baseline: str, causal: bool) -> Override:
    """An attention override that replaces every layer's attention by a trivial one:
    ``zero`` (output 0) or ``uniform`` (rows of P equal over the valid keys)."""

    def override(
        layer: int,
        q: torch.Tensor,  # (B, H, n, d)
        k: torch.Tensor,
        v: torch.Tensor,
        key_mask: torch.Tensor | None,  # (B, n)
        scale: float,
    ) -> torch.Tensor:
        if key_mask is None or baseline == "zero" or causal:
            return baseline_output(baseline, v, causal)
        keep = key_mask[:, None, :, None].to(v.dtype)  # (B, 1, n, 1)
        mean = (v * keep).sum(-2, keepdim=True) / keep.sum(-2, keepdim=True).clamp_min(1)
        return mean.expand_as(v)

    return override


@dataclass
class EffectResult:
    """Model-level effect of one replacement of every layer's attention.

    Per-sequence values are averaged; ``*_ci`` are 95% intervals over sequences (each
    sequence one cluster: its tokens are not independent) inside the quantity's range
    (:func:`lowrank.maths.intervals.mean_interval`), ``(None, None)`` below 3 sequences.
    """

    method: str  # a projection family, or a baseline: "zero" / "uniform" attention
    sharing: str  # sharing strategy of the JL matrices ("n/a" otherwise)
    k: int | None  # None for the baselines
    relative_error: float  # ||H~ - H||_F / ||H||_F of the final hidden states
    scale_free: float  # min_alpha ||alpha H~ - H||_F / ||H||_F
    cosine: float  # mean cosine similarity of token states
    relative_error_ci: tuple[float | None, float | None]
    cosine_ci: tuple[float | None, float | None]
    mlm_loss: float | None
    mlm_loss_exact: float | None
    per_sequence: dict[str, list[float]]  # "relative_error", "scale_free", "cosine"


def _compare_states(
    states: list[torch.Tensor], exact: list[torch.Tensor]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per sequence: relative error, scale-free error and mean token cosine of (b, n, h)
    final hidden states against the exact model's."""
    a = torch.cat(states)
    b = torch.cat(exact)
    rel = (a - b).flatten(1).norm(dim=-1) / b.flatten(1).norm(dim=-1).clamp_min(1e-300)
    _, free = cosine_and_scale_free(a, b, (-2, -1))
    token_cos = torch.nn.functional.cosine_similarity(a, b, dim=-1).mean(-1)
    return rel.numpy(), free.numpy(), token_cos.numpy()


def _interval(values: np.ndarray, lo: float, hi: float) -> tuple[float | None, float | None]:
    """The 95% interval of per-sequence values inside [lo, hi]; (None, None) without one."""
    if not np.isfinite(values).all():
        return (None, None)
    iv = mean_interval(values, lo, hi)
    return (iv.low, iv.high) if math.isfinite(iv.low) else (None, None)


def model_effect(
    model: Any,
    sequences: Sequences,
    spec: ProjectionSpec,
    sharings: tuple[str, ...],
    batch_size: int,
    device: torch.device,
    mlm: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[EffectResult]:
    """Training-free Linformer: replace all keys/values by projections, compare outputs.

    The trivial baselines (every layer's attention replaced by zero or by uniform
    attention) are always measured: a projection that does not beat them recovers nothing.

    Args:
        model: the model (a masked-LM model when ``mlm`` is given).
        mlm: ``{"input_ids": (N, n) masked ids, "labels": (N, n) with -100 off the masks}``
            to also report the masked-LM loss.
    """
    n = sequences.input_ids.shape[1]
    layers = model.config.num_hidden_layers
    heads = model.config.num_attention_heads
    # decoders' attention modules say so; a uniform baseline must then stay causal
    causal = any(getattr(m, "is_causal", False) for m in model.modules())
    ids_all = torch.from_numpy(mlm["input_ids"] if mlm else sequences.input_ids)
    labels_all = torch.from_numpy(mlm["labels"]) if mlm else None

    def run(override: Any) -> tuple[list[torch.Tensor], float | None]:
        states, losses, count = [], 0.0, 0
        for lo in range(0, len(ids_all), batch_size):
            ids = ids_all[lo : lo + batch_size].to(device)
            labels = labels_all[lo : lo + batch_size].to(device) if labels_all is not None else None
            with torch.inference_mode(), capture(model, None, override=override):
                out = model(input_ids=ids, labels=labels, output_hidden_states=True)
            states.append(out.hidden_states[-1].double().cpu())
            if labels is not None:
                masked = int((labels != -100).sum())
                losses += float(out.loss) * masked
                count += masked
        return states, (losses / count if count else None)

    exact_states, exact_loss = run(None)

    def result(method: str, sharing: str, k: int | None, override: Any) -> EffectResult:
        states, loss = run(override)
        rel, free, cos = _compare_states(states, exact_states)
        if progress is not None:
            progress(1)
        return EffectResult(
            method,
            sharing,
            k,
            float(rel.mean()),
            float(free.mean()),
            float(cos.mean()),
            _interval(rel, 0.0, math.inf),
            _interval(np.clip(cos, -1.0, 1.0), -1.0, 1.0),
            loss,
            exact_loss,
            {"relative_error": rel.tolist(), "scale_free": free.tolist(), "cosine": cos.tolist()},
        )

    results = [result(b, "n/a", None, baseline_override(b, causal)) for b in BASELINES]
    for method in spec.methods:
        if method == "svd":
            continue  # needs P itself: not a key/value projection
        for sharing in sharings if method in JL_METHODS else ("layerwise",):
            for k in spec.ks:
                bank = ProjectionBank(method, k, n, layers, heads, sharing, spec.seed, spec.delta)  # type: ignore[arg-type]
                label = sharing if method in JL_METHODS else "n/a"
                results.append(result(method, label, k, linformer_override(bank)))
    return results


def mask_tokens(
    input_ids: np.ndarray, mask_id: int, special: set[int], rate: float = 0.15, seed: int = 0
) -> dict[str, np.ndarray]:
    """BERT-style masked-LM inputs: ``rate`` of the non-special tokens become ``mask_id``.

    Returns ``{"input_ids", "labels"}`` with labels -100 except at masked positions.
    """
    rng = np.random.default_rng(seed)
    candidates = ~np.isin(input_ids, list(special))
    chosen = candidates & (rng.random(input_ids.shape) < rate)
    labels = np.where(chosen, input_ids, -100)
    return {"input_ids": np.where(chosen, mask_id, input_ids), "labels": labels}
