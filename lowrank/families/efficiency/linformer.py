"""Linformer self-attention (Wang et al. 2020, Sec. 4) and its exact-attention twin.

:class:`LinformerSelfAttention` projects the n keys and values of each head to k positions
with learned E, F (k x n), so attention costs O(n k) instead of O(n^2). E and F are shared
as the paper describes: per head, across heads (``headwise``), between keys and values
(``key-value``), or across layers (``layerwise``, by passing the same parameter to every
layer). :class:`ExactSelfAttention` has the same query/key/value/output weights and computes
softmax(Q K^T / sqrt(d)) V either explicitly (``eager``, the n x n matrix in memory) or with
PyTorch's fused ``scaled_dot_product_attention`` (``sdpa``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from torch.nn import functional

from lowrank.maths.sketches import Sharing

ExactKind = Literal["eager", "sdpa"]


class _Heads(nn.Module):
    def __init__(self, hidden: int, heads: int) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden size {hidden} is not a multiple of {heads} heads")
        self.heads, self.head_dim = heads, hidden // heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.output = nn.Linear(hidden, hidden)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape  # (B, n, D) -> (B, H, n, d)
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        b, _, n, _ = x.shape  # (B, H, n, d) -> (B, n, D)
        return self.output(x.transpose(1, 2).reshape(b, n, -1))


def projection_parameter(
    heads: int, k: int, n: int, generator: torch.Generator | None = None
) -> nn.Parameter:
    """E or F for ``heads`` heads (1 when shared), initialised N(0, 1/k) like the paper's R."""
    return nn.Parameter(torch.randn(heads, k, n, generator=generator) / math.sqrt(k))


class LinformerSelfAttention(_Heads):
    """Multi-head Linformer attention ``softmax(Q (E K)^T / sqrt(d)) (F V)``.

    Args:
        hidden, heads: model width and number of heads.
        max_len: n, the longest sequence (E and F have n columns; shorter inputs use the
            first columns, as in the reference implementation).
        k: projected length.
        sharing: ``none`` (E, F per head), ``headwise`` (one E, one F for all heads),
            ``key-value`` (one matrix as both E and F), ``layerwise`` (like key-value, with
            ``shared`` passed in by the stack).
        shared: a parameter (1, k, n) to use as E = F (layerwise sharing).
    """

    def __init__(
        self,
        hidden: int,
        heads: int,
        max_len: int,
        k: int,
        sharing: Sharing = "headwise",
        shared: nn.Parameter | None = None,
    ) -> None:
        super().__init__(hidden, heads)
        self.k, self.sharing = k, sharing
        per = heads if sharing == "none" else 1
        if sharing == "layerwise":
            if shared is None:
                raise ValueError("layerwise sharing needs the shared projection")
            self.e = shared
            self.f: nn.Parameter | None = None
        else:
            self.e = projection_parameter(per, k, max_len)
            self.f = None if sharing == "key-value" else projection_parameter(per, k, max_len)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, n, D); key_mask: (B, n), 1 for real tokens. Returns (B, n, D)."""
        q, key, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
        if key_mask is not None:  # padded positions must not reach the k projected slots
            keep = key_mask[:, None, :, None].to(x.dtype)
            key, v = key * keep, v * keep
        n = x.shape[1]
        e = self.e[..., :n]  # (1 or H, k, n)
        f = e if self.f is None else self.f[..., :n]
        pk, pv = e @ key, f @ v  # (B, H, k, d)
        scores = q @ pk.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, H, n, k)
        return self.merge(torch.softmax(scores, dim=-1) @ pv)


class ExactSelfAttention(_Heads):
    """Standard multi-head attention with the same weights as a Linformer layer."""

    def __init__(self, hidden: int, heads: int, kind: ExactKind = "eager") -> None:
        super().__init__(hidden, heads)
        self.kind = kind

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, key, v = self.split(self.query(x)), self.split(self.key(x)), self.split(self.value(x))
        bias = None
        if key_mask is not None:
            bias = torch.zeros(key_mask.shape, dtype=x.dtype, device=x.device)
            bias = bias.masked_fill(key_mask == 0, torch.finfo(x.dtype).min)[:, None, None, :]
        if self.kind == "sdpa":
            out = functional.scaled_dot_product_attention(q, key, v, attn_mask=bias)
        else:
            scores = q @ key.transpose(-1, -2) / math.sqrt(self.head_dim)  # (B, H, n, n)
            if bias is not None:
                scores = scores + bias
            out = torch.softmax(scores, dim=-1) @ v
        return self.merge(out)


class Block(nn.Module):
    """Pre-LayerNorm encoder block: attention and a GELU MLP, each with a residual."""

    def __init__(self, attention: nn.Module, hidden: int, ffn: int) -> None:
        super().__init__()
        self.attention = attention
        self.norm1, self.norm2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.ffn = ffn
        self.mlp = nn.Sequential(nn.Linear(hidden, ffn), nn.GELU(), nn.Linear(ffn, hidden))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attention(self.norm1(x), key_mask)
        return x + self.mlp(self.norm2(x))


class Encoder(nn.Module):
    """A small encoder stack for timing: ``layers`` blocks of one attention kind."""

    def __init__(self, blocks: list[Block]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, key_mask)
        return x


def linformer_encoder(
    layers: int,
    hidden: int,
    heads: int,
    ffn: int,
    max_len: int,
    k: int,
    sharing: Sharing = "layerwise",
    seed: int = 0,
) -> Encoder:
    """A Linformer encoder (the paper's efficiency runs use layerwise sharing)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    shared = projection_parameter(1, k, max_len, gen) if sharing == "layerwise" else None
    return Encoder(
        [
            Block(LinformerSelfAttention(hidden, heads, max_len, k, sharing, shared), hidden, ffn)
            for _ in range(layers)
        ]
    )


def exact_twin(linformer: Encoder, kind: ExactKind = "eager") -> Encoder:
    """The same stack with exact attention: identical Q/K/V/output, norm and MLP weights."""
    first = linformer.blocks[0]
    assert isinstance(first, Block) and isinstance(first.attention, _Heads)
    hidden = first.attention.query.in_features
    heads = first.attention.heads
    ffn = first.ffn
    twin = Encoder(
        [Block(ExactSelfAttention(hidden, heads, kind), hidden, ffn) for _ in linformer.blocks]
    )
    state = {
        k: v
        for k, v in linformer.state_dict().items()
        if not k.endswith((".e", ".f")) and ".attention.e" not in k
    }
    missing, unexpected = twin.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"twin weights differ: missing {missing}, unexpected {unexpected}")
    return twin
