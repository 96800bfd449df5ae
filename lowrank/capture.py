"""Stream each layer's attention out of a forward pass, one layer at a time.

The capture registers an attention function with transformers' ``AttentionInterface`` and
the eager mask function under the same name with ``AttentionMaskInterface`` (a custom name
without a mask function makes transformers silently drop the padding mask). While the
:func:`capture` context is active, every self-attention layer of the model computes its
probabilities ``P = softmax(Q K^T * scale + mask)`` here, hands ``P`` (with ``Q, K, V``) to a
sink, and returns ``P V`` so the forward pass goes on exactly as with eager attention. Nothing
keeps ``P`` after the sink returns, unlike ``output_attentions=True``, which holds every
layer's ``P`` until the end of the pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import eager_mask

from lowrank.errors import LowrankError

IMPLEMENTATION = "lowrank_capture"


@dataclass
class AttentionCall:
    """One self-attention layer's tensors in one forward pass.

    Attributes:
        layer: 0-based index of the layer in call order.
        probs: (B, H, n, n) attention probabilities P, rows over keys.
        query, key, value: (B, H, n, d) per-head projections, keys/values repeated for
            grouped-query models.
        lengths: (B,) valid tokens per sequence (right padding), or None when unpadded.
        module: the attention module that called.
    """

    layer: int
    probs: torch.Tensor
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    lengths: torch.Tensor | None
    module: torch.nn.Module


Sink = Callable[[AttentionCall], None]
# An override computes a layer's attention output itself: (layer, query, key, value,
# key_mask (B, n) or None, scale) -> (B, H, n, d). Used for Linformer-style replacements.
Override = Callable[
    [int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, float], torch.Tensor
]


@dataclass
class _Active:
    sink: Sink | None
    lengths: torch.Tensor | None
    override: Override | None = None
    calls: int = 0


_ACTIVE: ContextVar[_Active | None] = ContextVar("lowrank_capture_active", default=None)


def _repeat_kv(x: torch.Tensor, heads: int) -> torch.Tensor:
    groups = heads // x.shape[1]
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


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
        raise LowrankError("the lowrank capture attention ran outside lowrank.capture()")
    key = _repeat_kv(key, query.shape[1])
    value = _repeat_kv(value, query.shape[1])
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    if active.override is not None:
        key_mask = None
        if active.lengths is not None:
            positions = torch.arange(key.shape[-2], device=key.device)
            key_mask = positions[None, :] < active.lengths.to(key.device)[:, None]
        out = active.override(active.calls, query, key, value, key_mask, scale)
        active.calls += 1
        return out.transpose(1, 2).contiguous(), None
    scores = torch.matmul(query, key.transpose(2, 3)) * scale
    if attention_mask is not None:
        scores = scores + attention_mask[..., : key.shape[-2]]
    probs = torch.softmax(scores, dim=-1)
    del scores
    output = torch.matmul(probs, value).transpose(1, 2).contiguous()  # (B, n, H, d)
    if active.sink is not None:
        active.sink(AttentionCall(active.calls, probs, query, key, value, active.lengths, module))
    active.calls += 1
    return output, None


AttentionInterface.register(IMPLEMENTATION, capture_attention_forward)
AttentionMaskInterface.register(IMPLEMENTATION, eager_mask)


@contextmanager
def capture(
    model: Any,
    sink: Sink | None,
    lengths: torch.Tensor | None = None,
    override: Override | None = None,
) -> Iterator[Callable[[], int]]:
    """Route the model's self-attention through ``sink`` for the duration of the block.

    Args:
        model: a transformers ``PreTrainedModel`` in eval mode.
        sink: called once per layer and forward pass with an :class:`AttentionCall`.
        lengths: (B,) valid tokens per sequence, passed on to the sink.
        override: when given, each layer's output is ``override(layer, q, k, v, key_mask,
            scale)`` instead of eager attention (the sink is not called): a training-free
            replacement such as Linformer's projected keys and values.

    Yields:
        A function returning how many attention calls the sink has seen so far.

    The model's attention implementation is restored on exit, also when the block raises.
    """
    if model.training:
        raise LowrankError("capture needs the model in eval mode (dropout would change P)")
    previous = model.config._attn_implementation
    state = _Active(sink, lengths, override)
    token = _ACTIVE.set(state)
    try:
        model.set_attn_implementation(IMPLEMENTATION)
        if model.config._attn_implementation != IMPLEMENTATION:
            raise LowrankError(
                f"model type '{model.config.model_type}' does not use transformers' attention "
                "interface, so its attention cannot be captured"
            )
        yield lambda: state.calls
    finally:
        _ACTIVE.reset(token)
        model.set_attn_implementation(previous)


def valid_blocks(call: AttentionCall) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Group a batch's ``P`` by valid length: ``[(rows, P[rows, :, :m, :m]), ...]``.

    With right padding the valid block ``P[:m, :m]`` of each sequence is exactly the
    attention of that sequence run alone (padded keys get probability 0).
    """
    if call.lengths is None:
        return [(torch.arange(call.probs.shape[0]), call.probs)]
    lengths = call.lengths.to(call.probs.device)
    groups = []
    for m in torch.unique(lengths).tolist():
        rows = (lengths == m).nonzero().flatten()
        groups.append((rows.cpu(), call.probs[rows][:, :, :m, :m]))
    return groups
