"""Stream each layer's attention out of a forward pass, one layer at a time.

The capture registers an attention function with transformers' ``AttentionInterface`` and
the eager mask function under the same name with ``AttentionMaskInterface`` (a custom name
without a mask function makes transformers silently drop the padding mask). While the
:func:`capture` context is active, every self-attention layer of the model computes its
probabilities here exactly as transformers' eager attention functions do (:func:`eager_probs`:
``P = softmax(Q K^T * scale + mask)``, with Gemma 2's soft-cap, T5-style position biases and
gpt-oss's attention sinks where the model passes them), hands ``P`` (with ``Q, K, V``) to a
sink, and returns ``P V`` so the forward pass goes on exactly as with eager attention. Nothing
keeps ``P`` after the sink returns, unlike ``output_attentions=True``, which holds every
layer's ``P`` until the end of the pass.

Models that compute attention themselves (MPNet, DeBERTa) are captured by hooks on their
attention modules instead (:mod:`lowrank.hooks.fallback`); :func:`capture` picks the route
(:func:`lowrank.inputs.routes.capture_route`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import eager_mask

from lowrank.errors import LowrankError
from lowrank.hooks.calls import Active, AttentionCall, Override, PaddingSide, Sink

__all__ = [
    "IMPLEMENTATION",
    "AttentionCall",
    "Override",
    "PaddingSide",
    "Sink",
    "capture",
    "capture_attention_forward",
    "eager_probs",
    "padded_inputs",
    "valid_blocks",
]

IMPLEMENTATION = "lowrank_capture"
# Keyword arguments of transformers' attention functions that change P in ways this capture
# does not reproduce (sparse key selection): refused rather than captured wrong.
_UNSUPPORTED = ("indices", "block_indices")

_ACTIVE: ContextVar[Active | None] = ContextVar("lowrank_capture_active", default=None)


def _repeat_kv(x: torch.Tensor, heads: int) -> torch.Tensor:
    groups = heads // x.shape[1]
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def _key_mask(active: Active, key: torch.Tensor) -> torch.Tensor | None:
    """(B, n) True at the valid keys of a padded batch, None when unpadded."""
    if active.lengths is None:
        return None
    n = key.shape[-2]
    positions = torch.arange(n, device=key.device)
    lengths = active.lengths.to(key.device)[:, None]
    if active.padding_side == "left":
        return positions[None, :] >= n - lengths
    return positions[None, :] < lengths


def eager_probs(
    query: torch.Tensor,  # (B, H, n, d)
    key: torch.Tensor,  # (B, H, n, d), repeated to H heads
    attention_mask: torch.Tensor | None,  # (B, 1, n, n) additive
    scale: float,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,  # (H,) or (B, H, n, 1) sink logits
    position_bias: torch.Tensor | None = None,  # (B or 1, H, n, n) additive
) -> torch.Tensor:
    """P (B, H, n, n) as transformers' eager attention functions compute it.

    ``S = Q K^T * scale``; soft-capped ``c tanh(S / c)`` with ``softcap`` c (Gemma 2);
    ``+ position_bias`` (T5-style relative biases) ``+ mask``; then a softmax over the keys
    in float32. With ``sinks`` (gpt-oss: one learned logit per head, or per token), the sink
    logit joins each row's softmax and its column is dropped, so rows sum to
    ``1 - p_sink < 1`` (gpt-oss's ``eager_attention_forward``).
    """
    scores = torch.matmul(query, key.transpose(2, 3)) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if position_bias is not None:
        scores = scores + position_bias
    if attention_mask is not None:
        scores = scores + attention_mask[..., : key.shape[-2]]
    if sinks is None:
        return torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    sink = sinks.reshape(1, -1, 1, 1) if sinks.dim() == 1 else sinks
    sink = sink.to(scores.dtype).expand(*scores.shape[:-1], 1)
    logits = torch.cat([scores, sink], dim=-1)
    logits = logits - logits.max(dim=-1, keepdim=True).values
    return torch.softmax(logits, dim=-1, dtype=logits.dtype)[..., :-1].to(query.dtype)


def capture_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,  # (B, H, n, d)
    key: torch.Tensor,  # (B, Hkv, n, d)
    value: torch.Tensor,  # (B, Hkv, n, d)
    attention_mask: torch.Tensor | None,  # (B, 1, n, n) additive, from eager_mask
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Eager attention that shows ``P`` to the active sink, then forgets it."""
    active = _ACTIVE.get()
    if active is None:
        raise LowrankError("the lowrank capture attention ran outside lowrank.hooks.attention()")
    unsupported = [k for k in _UNSUPPORTED if kwargs.get(k) is not None]
    if unsupported:
        raise LowrankError(
            f"{type(module).__name__} passes '{unsupported[0]}' to its attention (sparse key "
            "selection), which lowrank's capture does not reproduce"
        )
    key = _repeat_kv(key, query.shape[1])
    value = _repeat_kv(value, query.shape[1])
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    softcap, bias = kwargs.get("softcap"), kwargs.get("position_bias")
    sinks = kwargs.get("s_aux", kwargs.get("sinks"))
    plain = softcap is None and bias is None and sinks is None
    if active.override is not None:
        if not plain:
            raise LowrankError(
                f"{type(module).__name__} adds soft-capping, position biases or attention "
                "sinks to its scores: an attention override (Linformer) would drop them"
            )
        out = active.override(active.calls, query, key, value, _key_mask(active, key), scale)
        active.calls += 1
        return out.transpose(1, 2).contiguous(), None
    probs = eager_probs(query, key, attention_mask, scale, softcap, sinks, bias)
    output = torch.matmul(probs.to(value.dtype), value).transpose(1, 2).contiguous()  # (B,n,H,d)
    if active.sink is not None:
        active.sink(
            AttentionCall(
                active.calls,
                probs,
                query,
                key,
                value,
                active.lengths,
                module,
                active.padding_side,
                probs_from_qk=plain,
                scale=scale,
            )
        )
    active.calls += 1
    return output, None


AttentionInterface.register(IMPLEMENTATION, capture_attention_forward)
AttentionMaskInterface.register(IMPLEMENTATION, eager_mask)


def _configs(model: Any) -> list[Any]:
    """Every distinct config object the model's modules hold (sub-configs included)."""
    seen: dict[int, Any] = {}
    stack = [getattr(m, "config", None) for m in model.modules()]
    while stack:
        config = stack.pop()
        if config is None or id(config) in seen or not hasattr(config, "to_dict"):
            continue
        seen[id(config)] = config
        stack.extend(getattr(config, k, None) for k in getattr(config, "sub_configs", {}) or {})
    return list(seen.values())


@contextmanager
def _implementation(model: Any) -> Iterator[None]:
    """Switch the model to lowrank's attention function; put every config's own
    implementation back on exit by writing the field, not through
    ``set_attn_implementation``, which would refuse one that cannot run here (e.g.
    ``flash_attention_2`` without its package) and leave the model half restored."""
    configs = _configs(model)
    saved = [c.__dict__.get("_attn_implementation_internal") for c in configs]
    try:
        model.set_attn_implementation(IMPLEMENTATION)
        if model.config._attn_implementation != IMPLEMENTATION:
            raise LowrankError(
                f"model type '{model.config.model_type}' does not use transformers' attention "
                "interface, so its attention cannot be captured"
            )
        yield
    finally:
        for config, value in zip(configs, saved, strict=True):
            config.__dict__["_attn_implementation_internal"] = value


def _check_fallback(model: Any, route: str, override: Override | None) -> None:
    """Refuse, before anything changes, what the fallback routes cannot do."""
    kind = model.config.model_type
    if override is not None:
        raise LowrankError(
            f"model type '{kind}' computes its attention itself ({route} route): an attention "
            "override (Linformer replacement) needs transformers' attention interface"
        )
    own = model.config._attn_implementation
    if own not in (None, "eager"):
        raise LowrankError(
            f"model type '{kind}' was built with attn_implementation '{own}', whose modules "
            "need not return attention probabilities: load it with attn_implementation='eager'"
        )


@contextmanager
def capture(
    model: Any,
    sink: Sink | None,
    lengths: torch.Tensor | None = None,
    override: Override | None = None,
    padding_side: PaddingSide = "right",
) -> Iterator[Callable[[], int]]:
    """Route the model's self-attention through ``sink`` for the duration of the block.

    Args:
        model: a transformers ``PreTrainedModel`` in eval mode.
        sink: called once per layer and forward pass with an :class:`AttentionCall`.
        lengths: (B,) valid tokens per sequence, passed on to the sink.
        padding_side: where the batch's padding is (see :func:`padded_inputs`).
        override: when given, each layer's output is ``override(layer, q, k, v, key_mask,
            scale)`` instead of eager attention (the sink is not called): a training-free
            replacement such as Linformer's projected keys and values. Interface route only.

    Yields:
        A function returning how many attention calls the sink has seen so far.

    The route (:func:`lowrank.inputs.routes.capture_route`) decides how P is seen: lowrank's
    attention function for models using transformers' attention interface, hooks on the
    attention modules otherwise (:mod:`lowrank.hooks.fallback`). Everything refused is
    refused before the model is touched; on exit the attention implementation and every
    hook are as they were, also when the block raises.
    """
    from lowrank.hooks.fallback import capture_hooks
    from lowrank.inputs.routes import model_route

    if model.training:
        raise LowrankError("capture needs the model in eval mode (dropout would change P)")
    if padding_side not in ("right", "left"):
        raise LowrankError(f"padding side '{padding_side}': use 'right' or 'left'")
    route = model_route(model)
    if route != "interface":
        _check_fallback(model, route, override)
    state = Active(sink, lengths, override, padding_side=padding_side)
    token = _ACTIVE.set(state)
    try:
        if route == "interface":
            with _implementation(model):
                yield lambda: state.calls
        else:
            with capture_hooks(model, state):
                yield lambda: state.calls
    finally:
        _ACTIVE.reset(token)


def valid_blocks(call: AttentionCall) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Group a batch's ``P`` by valid length: ``[(rows, block), ...]``.

    The block is ``P[rows, :, :m, :m]`` with right padding and ``P[rows, :, n-m:, n-m:]``
    with left padding. Run with the mask and positions of :func:`padded_inputs`, it is exactly
    the attention of that sequence run alone (padded keys get probability 0).
    """
    if call.lengths is None:
        return [(torch.arange(call.probs.shape[0]), call.probs)]
    lengths = call.lengths.to(call.probs.device)
    n = call.probs.shape[-1]
    groups = []
    for m in torch.unique(lengths).tolist():
        rows = (lengths == m).nonzero().flatten()
        lo = n - m if call.padding_side == "left" else 0
        groups.append((rows.cpu(), call.probs[rows][:, :, lo : lo + m, lo : lo + m]))
    return groups


# RoBERTa-family and MPNet embeddings number positions from padding_idx + 1 (HF's
# create_position_ids_from_input_ids); other models from 0.
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "mpnet")


def padded_inputs(
    model: Any, input_ids: torch.Tensor, lengths: torch.Tensor, padding_side: PaddingSide
) -> dict[str, torch.Tensor]:
    """Keyword arguments for ``model(**...)`` on a padded batch, so that each sequence's
    valid block of P is exactly its attention run alone.

    Args:
        input_ids: (B, n) ids, padded on ``padding_side``.
        lengths: (B,) valid tokens of each sequence.

    Returns:
        ``input_ids``, ``attention_mask`` (B, n) and, with left padding, ``position_ids``
        (B, n): the valid tokens numbered as if they started the sequence (RoBERTa-family
        models after their padding index), which absolute-position models need; with right
        padding every model numbers them so already.
    """
    n = input_ids.shape[1]
    positions = torch.arange(n, device=input_ids.device)
    lens = lengths.to(input_ids.device)[:, None]
    if padding_side == "right":
        mask = positions[None, :] < lens
        return {"input_ids": input_ids, "attention_mask": mask.long()}
    mask = positions[None, :] >= n - lens
    position_ids = (mask.long().cumsum(-1) - 1).clamp_min(0)
    config = model.config
    if config.model_type in _OFFSET_POSITIONS:
        pad = int(config.pad_token_id)
        position_ids = torch.where(mask, position_ids + pad + 1, pad)
    return {"input_ids": input_ids, "attention_mask": mask.long(), "position_ids": position_ids}
