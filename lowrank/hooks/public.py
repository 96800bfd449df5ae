"""``lowrank.capture``: the attention of your own forward passes, as tensors.

>>> import lowrank
>>> with lowrank.capture(model) as cap:                # doctest: +SKIP
...     model(**tokenizer(texts, return_tensors="pt", padding=True))
>>> cap.probs[0].shape                                 # doctest: +SKIP
torch.Size([batch, heads, n, n])

Inside the block every self-attention layer of ``model`` goes through lowrank's capture
(:mod:`lowrank.hooks.attention`, or hooks on the attention modules of models that compute
attention themselves, :mod:`lowrank.hooks.fallback`): ``P`` is exactly what
``output_attentions=True`` returns with eager attention, and :class:`Captured` keeps a
detached copy of each layer's P (and Q, K, V with ``qkv=True``). On exit the model object is
restored as it was found (:func:`lowrank.inputs.state.preserved`: every module's attributes
and hooks, configs, train/eval modes, devices, dtypes, ``requires_grad``), also when the
block raises.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lowrank.errors import LowrankError

if TYPE_CHECKING:
    import torch

    from lowrank.hooks.attention import AttentionCall


@dataclass
class Captured:
    """What :func:`capture` collected, one entry per forward pass and layer.

    Attributes:
        passes: per forward pass, per layer (call order), the layer's P
            [batch, heads, n, n]: ``passes[i][layer]``.
        qkv_passes: the same for (Q, K, V), each [batch, heads, n, d] (keys and values
            repeated per query head for grouped-query models); empty unless ``qkv=True``.
    """

    qkv: bool = False
    device: torch.device | str | None = "cpu"
    passes: list[list[torch.Tensor]] = field(default_factory=list)
    qkv_passes: list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = field(
        default_factory=list
    )
    _seen: set[int] = field(default_factory=set, repr=False)  # modules of the current pass

    def __len__(self) -> int:
        """Forward passes seen."""
        return len(self.passes)

    @property
    def num_layers(self) -> int:
        """Self-attention layers per forward pass."""
        return len(self.passes[0]) if self.passes else 0

    @property
    def probs(self) -> list[torch.Tensor]:
        """Per layer, P [batch, heads, n, n] over all passes (concatenated on batch)."""
        return [self._cat([p[layer] for p in self.passes]) for layer in range(self.num_layers)]

    @property
    def queries(self) -> list[torch.Tensor]:
        """Per layer, Q [batch, heads, n, d] over all passes (``qkv=True``)."""
        return self._part(0)

    @property
    def keys(self) -> list[torch.Tensor]:
        """Per layer, K [batch, heads, n, d] over all passes (``qkv=True``)."""
        return self._part(1)

    @property
    def values(self) -> list[torch.Tensor]:
        """Per layer, V [batch, heads, n, d] over all passes (``qkv=True``)."""
        return self._part(2)

    def stack(self) -> torch.Tensor:
        """All of P as one tensor [layers, batch, heads, n, n]."""
        import torch

        if not self.passes:
            raise LowrankError("nothing was captured: run the model inside the capture block")
        return torch.stack(self.probs)

    def _part(self, which: int) -> list[torch.Tensor]:
        if not self.qkv:
            raise LowrankError("Q, K and V are kept with capture(model, qkv=True)")
        return [
            self._cat([p[layer][which] for p in self.qkv_passes])
            for layer in range(self.num_layers)
        ]

    @staticmethod
    def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
        import torch

        if len(parts) == 1:
            return parts[0]
        shapes = {tuple(p.shape[1:]) for p in parts}
        if len(shapes) > 1:
            raise LowrankError(
                f"the forward passes had different shapes {sorted(shapes)}: read them one "
                "by one from .passes"
            )
        return torch.cat(parts)

    def _sink(self, call: AttentionCall) -> None:
        """Keep one layer's tensors; a layer seen already in this pass starts a new one."""
        if id(call.module) in self._seen or not self.passes:
            self._seen.clear()
            self.passes.append([])
            if self.qkv:
                self.qkv_passes.append([])
        self._seen.add(id(call.module))

        def keep(x: torch.Tensor) -> torch.Tensor:
            x = x.detach()
            return x.to(self.device) if self.device is not None else x.clone()

        self.passes[-1].append(keep(call.probs))
        if self.qkv:
            self.qkv_passes[-1].append((keep(call.query), keep(call.key), keep(call.value)))


@contextmanager
def capture(
    model: Any, *, qkv: bool = False, device: torch.device | str | None = "cpu"
) -> Iterator[Captured]:
    """Collect each layer's attention P during your own forward passes of ``model``.

    Args:
        model: a ``transformers.PreTrainedModel`` whose layers return their attention
            probabilities (BERT, RoBERTa, MPNet, DeBERTa, GPT-2, Llama, Mistral, Qwen2, ...;
            :func:`lowrank.inputs.routes.capture_route`). It runs in eval mode inside the
            block (attention dropout would change P) and is restored exactly as found on
            exit, also on error.
        qkv: also keep Q, K and V per layer ([batch, heads, n, d] each); refused for a model
            whose projections the capture cannot see (DeBERTa v1's fused ``in_proj``).
        device: where the kept tensors go (default ``"cpu"``, freeing accelerator memory;
            None keeps them where they were computed).

    Yields:
        A :class:`Captured`: ``cap.probs[layer]`` is P [batch, heads, n, n], rows summing
        to 1 (padded keys get 0; less than 1 in models with attention sinks, gpt-oss),
        exactly what ``output_attentions=True`` returns with eager attention;
        ``cap.passes[i][layer]`` per forward pass.

    Memory: everything captured is kept until the :class:`Captured` object is dropped:
    layers x batch x heads x n^2 x 4 bytes of P per forward pass in float32 (MiniLM, 6
    layers x 12 heads, a batch of 8 sequences of 512 tokens: 6 x 8 x 12 x 512^2 x 4 B =
    604 MB), plus 3 x layers x batch x heads x n x d x 4 bytes for Q, K, V with
    ``qkv=True``. For statistics over many sequences use :func:`lowrank.spectrum`, which
    reduces each P to its singular values inside the layer and keeps nothing.

    Raises:
        LowrankError: a model whose attention cannot be captured.
    """
    import torch

    from lowrank.hooks.attention import capture as route
    from lowrank.hooks.fallback import sees_qkv
    from lowrank.inputs.routes import model_route
    from lowrank.inputs.state import preserved

    if not isinstance(model, torch.nn.Module) or not hasattr(model, "set_attn_implementation"):
        raise LowrankError(
            f"capture needs a transformers PreTrainedModel, not {type(model).__name__}"
        )
    if qkv and model_route(model) != "interface" and not sees_qkv(model):
        model_type = getattr(model.config, "model_type", type(model).__name__)
        raise LowrankError(
            f"model type '{model_type}' computes its attention itself and "
            "lowrank cannot see its Q, K and V (no query/key/value projections it knows): "
            "capture it with qkv=False"
        )
    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError):
            raise LowrankError(
                f"device={device!r}: give a torch device ('cpu', 'cuda', 'cuda:1') or None"
            ) from None
    if not isinstance(qkv, bool):
        raise LowrankError(f"qkv={qkv!r} must be True or False")
    found = Captured(qkv=qkv, device=device)
    with preserved(model):
        model.eval()
        with route(model, found._sink):
            yield found
