"""Capture without transformers' attention interface: forward hooks on the attention modules.

For models that compute attention themselves (MPNet, DeBERTa, DeBERTa-v2, ...), ``P`` is read
where the model already returns it under ``output_attentions=True``:

* ``hooks`` route, per layer: a forward pre-hook on each attention module asks it for its
  probabilities (``output_attentions=True`` where its forward takes that flag; modules that
  transformers' output recorders read return them always), a forward hook hands ``P`` to the
  sink and replaces it by None in the module's outputs, so no layer's ``P`` outlives its hook.
  Q, K and V are read by forward hooks on the module's query/key/value projections where it
  has them (``Linear`` children such as ``q, k, v`` or ``query_proj, key_proj, value_proj``).
* ``outputs`` route, whole pass: the model runs with ``output_attentions=True`` and all its
  layers' ``P`` go to the sink after the pass (``num_layers`` layers alive at once); no Q, K, V.

``P`` here is the model's own eager probabilities, which need not equal
``softmax(Q K^T / sqrt(d) + mask)``: MPNet adds a relative-position bias and DeBERTa its
content-to-position and position-to-content scores (He et al. 2021, Eq. 4), so every call
carries ``probs_from_qk=False``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from lowrank.errors import LowrankError
from lowrank.hooks.calls import Active, AttentionCall, no_qkv

# Names of the query, key and value projections in the attention modules of transformers'
# own-attention models: BERT-style, MPNet, DeBERTa(-v2), BART-style, DistilBERT.
_QKV_NAMES = (
    ("query", "key", "value"),
    ("q", "k", "v"),
    ("query_proj", "key_proj", "value_proj"),
    ("q_proj", "k_proj", "v_proj"),
    ("q_lin", "k_lin", "v_lin"),
)


@dataclass
class Target:
    """An attention module the hooks route reads ``P`` from."""

    name: str
    module: torch.nn.Module
    index: int  # where P sits in the module's output tuple
    flag: bool  # its forward takes output_attentions (set to True by the pre-hook)
    qkv: tuple[torch.nn.Linear, torch.nn.Linear, torch.nn.Linear] | None


def _takes_flag(module: torch.nn.Module) -> bool:
    try:
        return "output_attentions" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return False


def _projections(module: torch.nn.Module) -> tuple[Any, Any, Any] | None:
    for names in _QKV_NAMES:
        parts = [getattr(module, n, None) for n in names]
        if all(isinstance(p, torch.nn.Linear) for p in parts):
            return parts[0], parts[1], parts[2]
    return None


def _recorded(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module, int]]:
    """Modules transformers' output recorders read ``attentions`` from (its
    ``_can_record_outputs``, matched as ``recursively_install_hooks`` matches them)."""
    from transformers import PreTrainedModel
    from transformers.utils.output_capturing import OutputRecorder

    found: list[tuple[str, torch.nn.Module, int]] = []
    for prefix, sub in model.named_modules():
        if not isinstance(sub, PreTrainedModel):
            continue
        specs = (getattr(type(sub), "_can_record_outputs", None) or {}).get("attentions")
        if specs is None:
            continue
        for spec in specs if isinstance(specs, list) else [specs]:
            if isinstance(spec, str):
                spec = OutputRecorder(target_class=None, index=1, class_name=spec)  # type: ignore[arg-type]
            elif not isinstance(spec, OutputRecorder):
                spec = OutputRecorder(target_class=spec, index=1)
            for name, module in sub.named_modules():
                path = f".{name}."
                by_class = spec.target_class is not None and isinstance(module, spec.target_class)
                by_name = spec.class_name is not None and f".{name}".endswith(spec.class_name)
                layer = spec.layer_name is None or f".{spec.layer_name.strip('.')}." in path
                if (by_class or by_name) and layer:
                    full = f"{prefix}.{name}" if prefix else name
                    found.append((full, module, spec.index))
        break  # the outermost PreTrainedModel's recorders cover its submodules
    return found


def _innermost(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module, int]]:
    """Modules whose forward takes ``output_attentions`` and none of whose submodules does:
    the self-attention modules of transformers' older encoders (P at output index 1)."""
    from transformers import PreTrainedModel

    flagged = {
        name: m
        for name, m in model.named_modules()
        if not isinstance(m, PreTrainedModel) and _takes_flag(m)
    }
    return [
        (name, m, 1)
        for name, m in flagged.items()
        if not any(other.startswith(f"{name}.") for other in flagged)
    ]


def attention_targets(model: torch.nn.Module) -> list[Target]:
    """The modules of ``model`` the hooks route reads ``P`` from, in registration order
    (empty when the model has none: the outputs route)."""
    found = _recorded(model) or _innermost(model)
    unique: dict[int, tuple[str, torch.nn.Module, int]] = {}
    for item in found:  # a module two recorders match is read once
        unique.setdefault(id(item[1]), item)
    return [
        Target(name, module, index, _takes_flag(module), _projections(module))
        for name, module, index in unique.values()
    ]


def sees_qkv(model: torch.nn.Module) -> bool:
    """True when the hooks route hands Q, K and V to the sink: every attention module has
    query/key/value projections it knows."""
    targets = attention_targets(model)
    return bool(targets) and all(t.qkv is not None for t in targets)


def _heads(x: torch.Tensor, heads: int, n: int, d: int) -> torch.Tensor | None:
    """(B, n, h * d) -> (B, heads, n, d), grouped key/value heads repeated; None when the
    projection's output does not have that shape."""
    if x.dim() != 3 or x.shape[1] != n or x.shape[-1] % d or heads % (x.shape[-1] // d):
        return None
    b, _, width = x.shape
    out = x.reshape(b, n, width // d, d).transpose(1, 2)
    return out.repeat_interleave(heads // out.shape[1], dim=1)


class _Hooks:
    """The hooks of one capture on one model: it calls the sink and counts layers."""

    def __init__(self, active: Active) -> None:
        self.active = active
        self.seen: dict[int, torch.Tensor] = {}  # id(projection) -> its last output
        self.asked: dict[int, list[bool]] = {}  # id(module) -> did its caller ask for P

    def pre(self, target: Target) -> Callable[..., Any]:
        signature = inspect.signature(target.module.forward)
        slots = [id(p) for p in target.qkv or ()]

        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            for slot in slots:  # this call's projections, not a previous call's
                self.seen.pop(slot, None)
            if not target.flag:
                return None
            bound = signature.bind_partial(*args, **kwargs)
            self.asked.setdefault(id(module), []).append(
                bool(bound.arguments.get("output_attentions", False))
            )
            bound.arguments["output_attentions"] = True
            return bound.args, bound.kwargs

        return hook

    def keep(self, module: Any, args: Any, output: torch.Tensor) -> None:
        # the first call of a forward pass is Q, K or V: DeBERTa-v2 with shared keys runs
        # key_proj and query_proj again on the relative-position embeddings (He et al. 2021)
        self.seen.setdefault(id(module), output)

    def post(self, target: Target) -> Callable[..., Any]:
        def hook(module: Any, args: Any, output: Any) -> Any:
            asked = self.asked[id(module)].pop() if target.flag else False
            if not isinstance(output, tuple | list) or len(output) <= target.index:
                raise LowrankError(
                    f"attention module {target.name} ({type(module).__name__}) returned no "
                    "attention probabilities"
                )
            probs = output[target.index]
            self.call(probs, target, module)
            if asked:
                return None
            dropped = [*output[: target.index], None, *output[target.index + 1 :]]
            if isinstance(output, list):
                return dropped
            return type(output)(*dropped) if hasattr(output, "_fields") else tuple(dropped)

        return hook

    def call(self, probs: Any, target: Target | None, module: torch.nn.Module) -> None:
        where = target.name if target else f"layer {self.active.calls}"
        if not isinstance(probs, torch.Tensor) or probs.dim() != 4:
            raise LowrankError(
                f"attention module {where} ({type(module).__name__}) returned "
                f"{type(probs).__name__} where lowrank expects P [batch, heads, n, n]: its "
                "attention probabilities are not where lowrank reads them, so it cannot be "
                "captured"
            )
        _, h, n, m = probs.shape
        if n != m:
            raise LowrankError(
                f"attention module {where} ({type(module).__name__}) returned P of shape "
                f"{tuple(probs.shape)}, not square: its attention is not full self-attention "
                "over n tokens (local windows, pooling, cross-attention), which lowrank does "
                "not capture"
            )
        parts = self._qkv(target, h, n)
        active = self.active
        query, key, value = parts if parts else (no_qkv(probs),) * 3
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
                    probs_from_qk=False,
                    scale=None,
                    qkv=parts is not None,
                )
            )
        active.calls += 1

    def _qkv(self, target: Target | None, heads: int, n: int) -> tuple[Any, Any, Any] | None:
        if target is None or target.qkv is None:
            return None
        raw = [self.seen.pop(id(p), None) for p in target.qkv]
        if raw[0] is None or raw[0].shape[-1] % heads:
            return None
        d = raw[0].shape[-1] // heads
        parts = [_heads(x, heads, n, d) if x is not None else None for x in raw]
        if parts[0] is None or parts[1] is None or parts[2] is None:
            return None
        return parts[0], parts[1], parts[2]


@contextmanager
def capture_hooks(model: torch.nn.Module, active: Active, qkv: bool = True) -> Iterator[bool]:
    """Hand each attention module's ``P`` to ``active.sink`` (hooks route), or the whole
    pass's (outputs route) when no module returns it. Hooks are removed on exit.

    Yields:
        True when Q, K and V reach the sink (every attention module has projections).
    """
    targets = attention_targets(model)
    hooks = _Hooks(active)
    with ExitStack() as stack:
        if not targets:
            stack.enter_context(_whole_pass(model, hooks))
            yield False
            return
        for target in targets:
            if not qkv:
                target.qkv = None
            handle = target.module.register_forward_pre_hook(hooks.pre(target), with_kwargs=True)
            stack.callback(handle.remove)
            if target.qkv is not None:
                for proj in target.qkv:
                    stack.callback(proj.register_forward_hook(hooks.keep).remove)
            stack.callback(target.module.register_forward_hook(hooks.post(target)).remove)
        yield all(t.qkv is not None for t in targets)


@contextmanager
def _whole_pass(model: torch.nn.Module, hooks: _Hooks) -> Iterator[None]:
    """Outputs route: run the model with ``output_attentions=True`` and hand each layer's
    ``P`` to the sink after the pass; drop them from the output unless the caller asked."""
    signature = inspect.signature(model.forward)
    asked: list[bool] = []

    def pre(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        bound = signature.bind_partial(*args, **kwargs)
        asked.append(bool(bound.arguments.get("output_attentions", False)))
        bound.arguments["output_attentions"] = True
        return bound.args, bound.kwargs

    def post(module: Any, args: Any, output: Any) -> Any:
        mine = not asked.pop()
        attentions = getattr(output, "attentions", None)
        if not attentions:
            raise LowrankError(
                f"model type '{model.config.model_type}' returned no attentions with "  # type: ignore[union-attr]
                "output_attentions=True (return_dict=False?): lowrank cannot capture it"
            )
        for probs in attentions:
            hooks.call(probs, None, module)
        if mine:
            output.attentions = None
        return output

    pre_handle = model.register_forward_pre_hook(pre, with_kwargs=True)
    post_handle = model.register_forward_hook(post)
    try:
        yield
    finally:
        pre_handle.remove()
        post_handle.remove()
