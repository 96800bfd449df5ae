"""How well projections approximate real attention: Theorem 1 and 2 errors, model effect.

One forward pass per batch feeds every method, k and draw at once through the capture:

* **Theorem 1** (paper Sec. 4): ``P~ = P M`` with ``M = R^T R`` for JL families (``E^+ E``
  for pooling/convolution, ``P_k`` itself for ``svd``); per sequence and draw, the mean over
  the columns w of the head's value matrix V of ``||P~ w - P w|| / ||P w||``.
* **Theorem 2**: the Linformer head output ``softmax(Q (E K)^T / sqrt(d)) F V`` against the
  exact ``softmax(Q K^T / sqrt(d)) V``, relative Frobenius error per head (``P_k V`` for svd).
* **Model effect**: every layer's keys and values replaced by their projections (each
  sharing strategy), compared with the exact model on its final hidden states (relative
  Frobenius error, cosine similarity) and, for models with a masked-LM head, the MLM loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lowrank.capture import AttentionCall, capture
from lowrank.corpora import Sequences
from lowrank.errors import LowrankError
from lowrank.projection import (
    JL_METHODS,
    ProjectionBank,
    column_errors,
    jl_matrix,
    linformer_attention,
    pooling_factors,
    relative_frobenius,
    seeded_generator,
)

DETERMINISTIC = ("mean-pool", "max-pool", "conv", "svd")


@dataclass(frozen=True)
class ProjectionSpec:
    """What to measure."""

    methods: tuple[str, ...] = ("gaussian", "rademacher", "sparse", "mean-pool", "svd")
    ks: tuple[int, ...] = (32, 64, 128, 256)
    draws: int = 3  # draws of R per sequence for random methods
    delta: float = 1.0  # E = delta R, F = exp(-delta) R (Theorem 2's proof)
    seed: int = 0  # seed of the projection draws

    def check(self, n: int) -> None:
        bad = [k for k in self.ks if not 0 < k <= n]
        if bad:
            raise LowrankError(f"--k {bad[0]} is outside 1..n = {n}: choose k <= --seq-len")
        if self.draws < 1:
            raise LowrankError("--draws must be at least 1")

    def draws_of(self, method: str) -> int:
        return self.draws if method in JL_METHODS else 1


@dataclass
class ProjectionSink:
    """Attention sink collecting per-(sequence, draw) errors for every method and k.

    ``samples[kind][method]`` holds per layer a list of (K, H, b * draws) arrays.
    """

    spec: ProjectionSpec
    layers: int
    heads: int
    n: int
    batch_index: int = 0
    samples: dict[str, dict[str, list[list[np.ndarray]]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind in ("theorem1", "theorem2"):
            self.samples[kind] = {m: [[] for _ in range(self.layers)] for m in self.spec.methods}

    def __call__(self, call: AttentionCall) -> None:
        p, q, k, v = call.probs, call.query, call.key, call.value  # (b, H, n, n|d)
        scale = q.shape[-1] ** -0.5
        exact = p @ v  # (b, H, n, d)
        b = p.shape[0]
        svd = torch.linalg.svd(p, full_matrices=False) if "svd" in self.spec.methods else None
        for method in self.spec.methods:
            t1 = np.full((len(self.spec.ks), self.heads, b, self.spec.draws_of(method)), np.nan)
            t2 = np.full_like(t1, np.nan)
            for ki, kk in enumerate(self.spec.ks):
                for draw in range(self.spec.draws_of(method)):
                    gen = seeded_generator(self.spec.seed, self.batch_index, call.layer, draw)
                    e1, e2 = self._errors(method, kk, p, q, k, v, exact, scale, gen, svd)
                    t1[ki, :, :, draw] = e1.T
                    t2[ki, :, :, draw] = e2.T
            self.samples["theorem1"][method][call.layer].append(t1.reshape(*t1.shape[:2], -1))
            self.samples["theorem2"][method][call.layer].append(t2.reshape(*t2.shape[:2], -1))

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
        gen: torch.Generator,
        svd: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(b, H) Theorem 1 (mean over columns) and Theorem 2 errors."""
        n = p.shape[-1]
        dtype = p.dtype
        if method == "svd":
            assert svd is not None
            u, s, vh = svd
            approx = (u[..., :k] * s[..., None, :k]) @ (vh[..., :k, :] @ v)  # P_k V
            return column_errors(approx, exact).mean(-1), relative_frobenius(approx, exact)
        if method == "max-pool":
            out = linformer_attention(q, key, v, None, None, scale, pool=k)
            t2 = relative_frobenius(out, exact)
            return torch.full_like(t2, float("nan")), t2
        if method in JL_METHODS:
            r = jl_matrix(method, k, n, gen).to(dtype)
            left, right = r.T, r  # P R^T R
            e, f = self.spec.delta * r, math.exp(-self.spec.delta) * r
        else:
            pinv, pool = pooling_factors(method, k, n)
            left, right = pinv.to(dtype), pool.to(dtype)
            e = f = right
        approx = (p @ left) @ (right @ v)  # (b, H, n, d)
        out = linformer_attention(q, key, v, e, f, scale)
        return column_errors(approx, exact).mean(-1), relative_frobenius(out, exact)

    def arrays(self) -> dict[str, np.ndarray]:
        """``{kind}_{method}``: (K, L, H, S) float32 samples, S = sequences x draws."""
        out: dict[str, np.ndarray] = {}
        for kind, per_method in self.samples.items():
            for method, per_layer in per_method.items():
                stacked = [np.concatenate(chunks, axis=-1) for chunks in per_layer]
                out[f"{kind}_{method}"] = np.stack(stacked, axis=1).astype(np.float32)
        return out


def measure(
    loaded: Any,
    sequences: Sequences,
    spec: ProjectionSpec,
    batch_size: int,
    device: torch.device,
    progress: Callable[[int], None] | None = None,
) -> dict[str, np.ndarray]:
    """Theorem 1 and 2 errors for every method, k, (layer, head), sequence and draw."""
    n = sequences.input_ids.shape[1]
    spec.check(n)
    sink = ProjectionSink(spec, loaded.num_layers, loaded.num_heads, n)
    for lo in range(0, len(sequences.lengths), batch_size):
        ids = torch.from_numpy(sequences.input_ids[lo : lo + batch_size]).to(device)
        with torch.inference_mode(), capture(loaded.model, sink) as seen:
            loaded.model(input_ids=ids)
            if seen() != loaded.num_layers:
                raise LowrankError(f"captured {seen()} attention layers of {loaded.num_layers}")
        sink.batch_index += 1
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
) -> Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, float], Any]:
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


@dataclass
class EffectResult:
    method: str
    sharing: str
    k: int
    relative_error: float  # ||H~ - H||_F / ||H||_F of the final hidden states
    cosine: float  # mean cosine similarity of token states
    mlm_loss: float | None
    mlm_loss_exact: float | None


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

    Args:
        model: the model (a masked-LM model when ``mlm`` is given).
        mlm: ``{"input_ids": (N, n) masked ids, "labels": (N, n) with -100 off the masks}``
            to also report the masked-LM loss.
    """
    n = sequences.input_ids.shape[1]
    layers = model.config.num_hidden_layers
    heads = model.config.num_attention_heads
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
    results = []
    for method in spec.methods:
        if method == "svd":
            continue  # needs P itself: not a key/value projection
        for sharing in sharings if method in JL_METHODS else ("layerwise",):
            for k in spec.ks:
                bank = ProjectionBank(method, k, n, layers, heads, sharing, spec.seed, spec.delta)  # type: ignore[arg-type]
                states, loss = run(linformer_override(bank))
                num = sum(
                    float((a - b).norm() ** 2) for a, b in zip(states, exact_states, strict=True)
                )
                den = sum(float(b.norm() ** 2) for b in exact_states)
                cos = torch.cat(
                    [
                        torch.nn.functional.cosine_similarity(a, b, dim=-1).flatten()
                        for a, b in zip(states, exact_states, strict=True)
                    ]
                )
                results.append(
                    EffectResult(
                        method,
                        sharing if method in JL_METHODS else "n/a",
                        k,
                        math.sqrt(num / den),
                        float(cos.mean()),
                        loss,
                        exact_loss,
                    )
                )
                if progress is not None:
                    progress(1)
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
