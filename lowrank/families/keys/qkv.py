"""Capture each layer's queries, keys and values before and after the rotary embedding.

Post-RoPE queries and keys and the values are what transformers hands to the attention
function, taken from lowrank's attention capture (:mod:`lowrank.hooks.attention`) with the
keys and values un-repeated to one per KV head. Pre-RoPE queries and keys are the tensors the
rotary embedding receives (Su et al. 2021): the outputs of ``q_norm``/``k_norm`` where the
attention module has them (Qwen3, OLMo2, Gemma3), else of ``q_proj``/``k_proj``, read by
forward hooks. Models without a rotary embedding (BERT, RoBERTa, GPT-2) rotate nothing, so
pre = post there. Only one layer's tensors for one batch are alive at a time: the consumer is
called inside the layer's attention and nothing is kept after it returns.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from lowrank.errors import LowrankError
from lowrank.families.keys import maths
from lowrank.hooks.attention import AttentionCall, PaddingSide, capture

# (query, key) pre-RoPE sources by attribute name, first match wins; a norm applied to the
# projection's output comes before the rotary embedding, so it is preferred.
_PRE_ROPE = (("q_norm", "k_norm"), ("q_proj", "k_proj"))
# The projections whose weights form the logits' bilinear form W_Q^T W_K, per architecture.
_WEIGHTS = (("q_proj", "k_proj"), ("query", "key"))
# Recomputed softmax(scale q k^T + mask) must match the model's P to this (float32).
PROBS_TOLERANCE = 1e-4


@dataclass
class LayerQKV:
    """One layer's queries, keys and values for one batch.

    Attributes:
        layer: 0-based layer index in call order.
        query_pre, query_post: (B, H, n, d) queries before / after the rotary embedding.
        key_pre, key_post: (B, Hkv, n, d) keys, one per KV head (not repeated).
        value: (B, Hkv, n, d) values, one per KV head.
        probs: (B, H, n, n) the attention P the model computed (padding keys get 0).
        valid: (B, n) bool, True at real tokens (False at padding).
        causal: each query attends only to keys at or before it.
        scale: the factor on ``q . k`` in the softmax (the module's ``scaling``, else
            ``d ** -0.5``).
        rotary: the model applies a rotary embedding (False: pre and post are the same
            tensors).
        probs_from_qk: P is ``softmax(scale Q K^T + mask)`` (no soft-capping, position
            biases or learned sinks), as the capture reports it.
    """

    layer: int
    query_pre: torch.Tensor
    query_post: torch.Tensor
    key_pre: torch.Tensor
    key_post: torch.Tensor
    value: torch.Tensor
    probs: torch.Tensor
    valid: torch.Tensor
    causal: bool
    scale: float
    rotary: bool
    probs_from_qk: bool = True

    @property
    def heads(self) -> int:
        return int(self.query_post.shape[1])

    @property
    def kv_heads(self) -> int:
        return int(self.key_post.shape[1])

    def span(self, b: int) -> slice:
        """The token positions of sequence ``b`` that are valid (a contiguous block, at the
        start with right padding and at the end with left padding)."""
        where = self.valid[b].nonzero().flatten()
        if len(where) == 0:
            return slice(0, 0)
        return slice(int(where[0]), int(where[-1]) + 1)

    def attention_at(self, b: int, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The exact attention of some queries of sequence ``b``, recomputed in float32 as
        ``softmax(scale q k^T + mask)`` and checked against the model's P.

        Args:
            positions: (Q,) 0-based query positions among the sequence's m valid tokens.

        Returns:
            queries (H, Q, d), keys and values (Hkv, m, d), allowed keys (Q, m), unscaled
            logits (H, Q, m) (``-inf`` where not allowed) and P (H, Q, m).

        Raises:
            LowrankError: P differs from the model's by more than :data:`PROBS_TOLERANCE`
                (a sliding window, ALiBi or soft-capping: a mask or bias not modelled).
        """
        if not self.probs_from_qk:
            raise LowrankError(
                f"layer {self.layer + 1}: the model adds soft-capping, position biases or "
                "attention sinks to q . k, so top-k by q . k is not its attention"
            )
        s = self.span(b)
        positions = positions.to(self.query_post.device)
        q = self.query_post[b, :, s][:, positions].float()
        k, v = self.key_post[b, :, s].float(), self.value[b, :, s].float()
        allowed = maths.allowed_keys(positions, k.shape[1], self.causal)
        logits = maths.head_logits(q, k, allowed)
        probs = torch.softmax(logits * self.scale, dim=-1)
        gap = float((probs - self.probs[b, :, s, s][:, positions].float()).abs().max())
        if gap > PROBS_TOLERANCE:
            raise LowrankError(
                f"layer {self.layer + 1}: the model's attention is not softmax(scale q k^T) "
                f"with a {'causal' if self.causal else 'padding'} mask (P differs by {gap:.2g}"
                "; a sliding window, ALiBi or soft-capping?), so top-k cannot be evaluated"
            )
        return q, k, v, allowed, logits, probs


Consumer = Callable[[LayerQKV], None]


def is_rotary(model: Any) -> bool:
    """True when the model has a rotary position embedding module (transformers names them
    ``*RotaryEmbedding``)."""
    return any(type(m).__name__.endswith("RotaryEmbedding") for m in model.modules())


def _child(module: torch.nn.Module, name: str) -> torch.nn.Module | None:
    child = getattr(module, name, None)
    return child if isinstance(child, torch.nn.Module) else None


def _pre_rope_sources(module: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    for q_name, k_name in _PRE_ROPE:
        q, k = _child(module, q_name), _child(module, k_name)
        if q is not None and k is not None:
            return q, k
    return None


def _attention_modules(model: Any) -> list[torch.nn.Module]:
    """Modules that own query and key projections (candidate self-attention modules)."""
    found = []
    for module in model.modules():
        if any(
            _child(module, q) is not None and _child(module, k) is not None for q, k in _WEIGHTS
        ):
            found.append(module)
    return found


def _valid_mask(lengths: torch.Tensor | None, b: int, n: int, side: PaddingSide) -> torch.Tensor:
    if lengths is None:
        return torch.ones(b, n, dtype=torch.bool)
    positions = torch.arange(n)[None, :]
    lens = lengths.cpu()[:, None]
    return positions >= n - lens if side == "left" else positions < lens


def _kv_heads(model: Any, heads: int) -> int:
    kv = getattr(model.config, "num_key_value_heads", None)
    return int(kv) if isinstance(kv, int) and kv > 0 else heads


def _per_head(x: torch.Tensor, b: int, n: int, d: int) -> torch.Tensor:
    """(B, n, H*d) or (B, n, H, d) hook output -> (B, H, n, d)."""
    return x.reshape(b, n, -1, d).transpose(1, 2)


def _layer(call: AttentionCall, model: Any, pre: dict[str, torch.Tensor] | None) -> LayerQKV:
    """A :class:`LayerQKV` from the capture's call and, for rotary models, the pre-RoPE
    projections ``pre`` (``{"q": ..., "k": ...}``) the hooks saw in the same module."""
    name = model.config.model_type
    if not call.qkv or call.query.shape[-1] == 0:
        raise LowrankError(f"model type '{name}': lowrank's capture cannot see its Q, K and V")
    b, heads, n, d = call.query.shape
    kv = _kv_heads(model, heads)
    if heads % kv:
        raise LowrankError(f"{heads} query heads cannot share {kv} key/value heads")
    key_post, value = call.key[:, :: heads // kv], call.value[:, :: heads // kv]  # un-repeat
    query_pre, key_pre = call.query, key_post
    if pre is not None:
        if "q" not in pre or "k" not in pre:
            raise LowrankError(
                f"model type '{name}': no pre-rotary query/key projections (q_proj/k_proj) "
                f"were seen for attention layer {call.layer + 1}"
            )
        query_pre, key_pre = _per_head(pre["q"], b, n, d), _per_head(pre["k"], b, n, d)
        if n > 1 and torch.equal(query_pre, call.query):
            # RoPE leaves position 0 alone and turns every other one: equal tensors mean the
            # capture saw the projections, not what the attention multiplies (hooks route)
            raise LowrankError(
                f"model type '{name}': the capture sees its queries before the rotary "
                "embedding, so post-RoPE queries and keys are not available"
            )
    scale = call.scale if call.scale is not None else getattr(call.module, "scaling", None)
    return LayerQKV(
        call.layer, query_pre, call.query, key_pre, key_post, value, call.probs,
        _valid_mask(call.lengths, b, n, call.padding_side).to(call.query.device),
        bool(getattr(call.module, "is_causal", False)),
        float(scale) if isinstance(scale, int | float) else d**-0.5,
        pre is not None, call.probs_from_qk,
    )  # fmt: skip


@contextmanager
def capture_qkv(
    model: Any,
    consume: Consumer,
    lengths: torch.Tensor | None = None,
    padding_side: PaddingSide = "right",
) -> Iterator[Callable[[], int]]:
    """Call ``consume`` with a :class:`LayerQKV` for every self-attention layer run inside
    the block.

    Args:
        model: a transformers model in eval mode whose attention lowrank can capture.
        consume: called once per layer and forward pass; the tensors are freed after it.
        lengths: (B,) valid tokens per sequence of a padded batch (see
            :func:`lowrank.hooks.attention.padded_inputs`), None when unpadded.
        padding_side: where the batch's padding is.

    Yields:
        A function returning how many layers were consumed so far.

    Raises:
        LowrankError: the capture cannot see Q, K and V; a rotary model whose attention
            module has no ``q_proj``/``k_proj`` (fused projections such as Phi-3's
            ``qkv_proj`` are not supported) or whose post-RoPE tensors are not visible.

    Hooks and the attention implementation are removed on exit, also when the block raises.
    """
    rotary = is_rotary(model)
    pending: dict[int, dict[str, torch.Tensor]] = {}

    def stash(owner: torch.nn.Module, slot: str) -> Callable[..., None]:
        def hook(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            pending.setdefault(id(owner), {})[slot] = output

        return hook

    def sink(call: AttentionCall) -> None:
        pre = pending.pop(id(call.module), {}) if rotary else None
        consume(_layer(call, model, pre))

    try:
        with ExitStack() as stack:
            if rotary:
                for module in _attention_modules(model):
                    sources = _pre_rope_sources(module)
                    for slot, source in zip(("q", "k"), sources or (), strict=False):
                        handle = source.register_forward_hook(stash(module, slot))
                        stack.callback(handle.remove)
            yield stack.enter_context(capture(model, sink, lengths, padding_side=padding_side))
    finally:
        pending.clear()


@dataclass
class HeadWeights:
    """One layer's query and key weights per head (``nn.Linear``: ``q = W x + b``).

    Attributes:
        query: (H, d, D) rows of ``W_Q`` belonging to each query head.
        key: (Hkv, d, D) rows of ``W_K`` belonging to each KV head.
        exact: the logits' bilinear form before RoPE is ``x^T W_Q^h^T W_K^g x'`` (plus bias
            terms); False where a norm sits between projection and attention (``q_norm``),
            so the weights alone do not give the logits.
    """

    query: torch.Tensor
    key: torch.Tensor
    exact: bool


def head_weights(model: Any, heads: int, head_dim: int) -> list[HeadWeights]:
    """The per-head query and key weights of every self-attention layer, in module order.

    Args:
        heads: query heads per layer; head_dim: d.

    Raises:
        LowrankError: the model has no recognisable ``q_proj``/``k_proj`` or
            ``query``/``key`` linear layers.
    """
    layers = []
    for module in _attention_modules(model):
        for q_name, k_name in _WEIGHTS:
            q, k = _child(module, q_name), _child(module, k_name)
            if isinstance(q, torch.nn.Linear) and isinstance(k, torch.nn.Linear):
                wq = q.weight.detach().reshape(heads, head_dim, -1)
                wk = k.weight.detach().reshape(-1, head_dim, wq.shape[-1])
                exact = _child(module, "q_norm") is None and _child(module, "k_norm") is None
                layers.append(HeadWeights(wq, wk, exact))
                break
    if not layers:
        raise LowrankError(
            f"model type '{model.config.model_type}' has no q_proj/k_proj or query/key linear "
            "layers: the logits-against-weights view needs them"
        )
    return layers


def bilinear_spectra(model: Any, heads: int, head_dim: int) -> tuple[torch.Tensor, bool]:
    """Singular values of each head's pre-RoPE logit form ``W_Q^h^T W_K^{g(h)}`` (D x D,
    rank <= d), without forming it (:func:`maths.product_singular_values`).

    Returns:
        (L, H, d) float64 descending, and whether the form is exactly the logits' (no
        ``q_norm``/``k_norm``; biases are left out either way).
    """
    spectra, exact = [], True
    for w in head_weights(model, heads, head_dim):
        group = maths.kv_group(heads, w.key.shape[0]).to(w.key.device)
        spectra.append(maths.product_singular_values(w.query.mT, w.key[group].mT).cpu())
        exact = exact and w.exact
    return torch.stack(spectra), exact
