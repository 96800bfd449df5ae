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
from typing import Any, Literal

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import eager_mask

from lowrank.errors import LowrankError

IMPLEMENTATION = "lowrank_capture"
# Where the padding of a batch goes: after the tokens (the default) or before them.
PaddingSide = Literal["right", "left"]


@dataclass
class AttentionCall:
    """One self-attention layer's tensors in one forward pass.

    Attributes:
        layer: 0-based index of the layer in call order.
        probs: (B, H, n, n) attention probabilities P, rows over keys.
        query, key, value: (B, H, n, d) per-head projections, keys/values repeated for
            grouped-query models.
        lengths: (B,) valid tokens per sequence, or None when unpadded.
        module: the attention module that called.
        padding_side: ``right`` (valid tokens first) or ``left`` (valid tokens last).
    """

    layer: int
    probs: torch.Tensor
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    lengths: torch.Tensor | None
    module: torch.nn.Module
    padding_side: PaddingSide = "right"


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
    padding_side: PaddingSide = "right"


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
        raise LowrankError("the lowrank capture attention ran outside lowrank.hooks.attention()")
    key = _repeat_kv(key, query.shape[1])
    value = _repeat_kv(value, query.shape[1])
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    if active.override is not None:
        key_mask = None
        if active.lengths is not None:
            n = key.shape[-2]
            positions = torch.arange(n, device=key.device)
            lengths = active.lengths.to(key.device)[:, None]
            if active.padding_side == "left":
                key_mask = positions[None, :] >= n - lengths
            else:
                key_mask = positions[None, :] < lengths
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
        active.sink(
            AttentionCall(
                active.calls, probs, query, key, value, active.lengths, module, active.padding_side
            )
        )
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
            replacement such as Linformer's projected keys and values.

    Yields:
        A function returning how many attention calls the sink has seen so far.

    The model's attention implementation is restored on exit, also when the block raises.
    """
    if model.training:
        raise LowrankError("capture needs the model in eval mode (dropout would change P)")
    previous = model.config._attn_implementation
    if padding_side not in ("right", "left"):
        raise LowrankError(f"padding side '{padding_side}': use 'right' or 'left'")
    state = _Active(sink, lengths, override, padding_side=padding_side)
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


# RoBERTa-family embeddings number positions from padding_idx + 1 (HF's
# create_position_ids_from_input_ids); other models from 0.
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert")


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
