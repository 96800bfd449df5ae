"""What a capture hands its sink: one self-attention layer's tensors in one forward pass.

Shared by the interface route (:mod:`lowrank.hooks.attention`) and the fallback routes
(:mod:`lowrank.hooks.fallback`), so that neither imports the other's internals.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

# Where the padding of a batch goes: after the tokens (the default) or before them.
PaddingSide = Literal["right", "left"]


@dataclass
class AttentionCall:
    """One self-attention layer's tensors in one forward pass.

    Attributes:
        layer: 0-based index of the layer in call order.
        probs: (B, H, n, n) attention probabilities P, rows over keys: the model's own eager
            probabilities. Rows sum to 1, except in models with learned attention sinks
            (gpt-oss: an extra logit per head joins the softmax and is dropped), whose rows
            sum to less than 1, exactly as ``output_attentions=True`` returns them.
        query, key, value: (B, H, n, d) per-head projections, keys/values repeated for
            grouped-query models; (B, H, n, 0) empty tensors when ``qkv`` is False.
        lengths: (B,) valid tokens per sequence, or None when unpadded.
        module: the attention module that called.
        padding_side: ``right`` (valid tokens first) or ``left`` (valid tokens last).
        probs_from_qk: True when ``P == softmax(Q K^T * scale + mask)`` row by row, so a
            consumer may rebuild P (or replace it) from Q and K. False when the model adds
            terms of its own: relative-position biases (MPNet, T5-style), DeBERTa's
            disentangled content-position scores, tanh soft-capping (Gemma 2), attention
            sinks (gpt-oss), and on the fallback routes, whose Q and K are the projections'
            outputs before any rotation.
        scale: the factor of ``Q K^T`` in the scores, when known (interface route).
        qkv: False when the capture cannot see Q, K and V (see ``query``).
    """

    layer: int
    probs: torch.Tensor
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    lengths: torch.Tensor | None
    module: torch.nn.Module
    padding_side: PaddingSide = "right"
    probs_from_qk: bool = True
    scale: float | None = None
    qkv: bool = True


Sink = Callable[[AttentionCall], None]
# An override computes a layer's attention output itself: (layer, query, key, value,
# key_mask (B, n) or None, scale) -> (B, H, n, d). Used for Linformer-style replacements.
Override = Callable[
    [int, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None, float], torch.Tensor
]


@dataclass
class Active:
    """The state of the capture in progress (one per context)."""

    sink: Sink | None
    lengths: torch.Tensor | None
    override: Override | None = None
    calls: int = 0
    padding_side: PaddingSide = "right"


def no_qkv(probs: torch.Tensor) -> torch.Tensor:
    """(B, H, n, 0): the stand-in for Q, K, V a route cannot see."""
    return probs.new_empty((*probs.shape[:3], 0))
