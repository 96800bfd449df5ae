"""Leave a user's model object exactly as it was found: snapshot, restore, compare.

A forward pass inside lowrank changes more than the attention implementation: transformers
installs its output-capturing hooks on the first pass that asks for ``output_attentions`` or
``output_hidden_states`` and marks the model with ``_output_capturing_hooks_installed``; a
removed hook with the flag left set means the model never returns its attentions again. So
:func:`preserved` restores the whole object state, not a list of known fields:

* every module's instance attributes (``vars(module)``: flags such as ``training`` and
  ``_output_capturing_hooks_installed``, caches, an instance ``forward``): added ones are
  deleted, replaced ones put back, containers (hook tables, parameter and buffer tables,
  sets) refilled in place so that hook handles and shared references stay valid;
* every config object the modules hold, sub-configs and ``generation_config`` included
  (``to_dict()`` fields and private ones such as ``_attn_implementation_internal``);
* every parameter's and buffer's device and dtype (data moved back, not copied when
  unchanged) and every parameter's ``requires_grad``.

Tensor data is not snapshot: a block that writes into the weights is not undone.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

_PLAIN = (bool, int, float, str, bytes, type(None))
_CONTAINERS = (dict, list, set)


def _is_config(obj: object) -> bool:
    from transformers import GenerationConfig, PretrainedConfig

    return isinstance(obj, PretrainedConfig | GenerationConfig)


def _configs(model: torch.nn.Module) -> list[Any]:
    """Every distinct config object reachable from the modules' attributes."""
    seen: dict[int, Any] = {}
    stack: list[Any] = [v for m in model.modules() for v in vars(m).values() if _is_config(v)]
    while stack:
        config = stack.pop()
        if id(config) in seen:
            continue
        seen[id(config)] = config
        stack.extend(v for v in vars(config).values() if _is_config(v))
    return list(seen.values())


def _copy_container(value: Any) -> Any:
    if isinstance(value, dict):
        return value.copy()  # keeps OrderedDict's type
    return copy.copy(value)


@dataclass
class _Object:
    """One object's ``__dict__``: the references, and copies of its containers' contents."""

    obj: Any
    refs: dict[str, Any]
    contents: dict[str, Any]  # name -> copy of a dict/list/set attribute's contents
    deep: bool  # configs: nested containers are copied deeply

    @classmethod
    def take(cls, obj: Any, deep: bool = False) -> _Object:
        refs = dict(vars(obj))
        contents: dict[str, Any] = {}
        for name, value in refs.items():
            if isinstance(value, _CONTAINERS):
                try:
                    contents[name] = copy.deepcopy(value) if deep else _copy_container(value)
                except Exception:  # an uncopyable leaf: keep the reference only
                    contents[name] = _copy_container(value)
        return cls(obj, refs, contents, deep)

    def restore(self) -> None:
        current = vars(self.obj)
        for name in [k for k in current if k not in self.refs]:
            del current[name]
        for name, ref in self.refs.items():
            if current.get(name, _MISSING) is not ref:
                current[name] = ref
            if name in self.contents:
                _refill(ref, self.contents[name])


_MISSING = object()


def _refill(target: Any, saved: Any) -> None:
    """Put ``saved``'s contents back into the container ``target``, in place."""
    if _same(target, saved):
        return
    if isinstance(target, dict):
        target.clear()
        target.update(saved)
    elif isinstance(target, list):
        target[:] = saved
    else:
        target.clear()
        target |= saved


def _same(a: Any, b: Any) -> bool:
    """Identical (``is``) or equal plain values, containers compared element by element in
    order (never ``==`` on tensors, which is element-wise)."""
    if a is b:
        return True
    if isinstance(a, _PLAIN) and isinstance(b, _PLAIN):
        return bool(a == b)
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(v, b[k]) for k, v in a.items())
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, set) and isinstance(b, set):
        return a == b
    return False


@dataclass
class _Tensor:
    tensor: torch.Tensor
    device: torch.device
    dtype: torch.dtype
    requires_grad: bool


def _tensors(model: torch.nn.Module) -> list[_Tensor]:
    """Each distinct parameter and buffer once (tied weights appear once)."""
    seen: dict[int, _Tensor] = {}
    for t in (*model.parameters(), *model.buffers()):
        if id(t) not in seen:
            seen[id(t)] = _Tensor(t, t.device, t.dtype, t.requires_grad)
    return list(seen.values())


def _restore_tensor(saved: _Tensor) -> None:
    t = saved.tensor
    if t.device != saved.device or t.dtype != saved.dtype:
        with torch.no_grad():
            t.data = t.data.to(saved.device, saved.dtype)
    if t.requires_grad != saved.requires_grad and (t.is_leaf or not saved.requires_grad):
        t.requires_grad_(saved.requires_grad)


@contextmanager
def preserved(model: object) -> Iterator[None]:
    """Leave ``model`` exactly as found when the block ends, also when it raises.

    Restored (see the module docstring): every module's attributes, flags and hook tables
    (forward, pre-forward, backward, state-dict hooks; hooks added inside the block are
    removed, hooks removed are put back), train/eval modes, every config's fields and
    attention implementation, every parameter's and buffer's device and dtype, every
    parameter's ``requires_grad``. Anything that is not a ``torch.nn.Module`` (a model name,
    a path) passes through unchanged.

    Guarantee, asserted in tests/test_model_state.py: ``model_state(model)`` is equal before
    the block and after it.
    """
    if not isinstance(model, torch.nn.Module):
        yield
        return
    tensors = _tensors(model)
    modules = [_Object.take(m) for m in model.modules()]
    configs = [_Object.take(c, deep=True) for c in _configs(model)]
    try:
        yield
    finally:
        for saved in modules:
            saved.restore()
        for saved in configs:
            saved.restore()
        for tensor in tensors:
            _restore_tensor(tensor)


# -- a comparable snapshot, for tests ---------------------------------------------------------


def _describe(value: Any, depth: int = 0) -> Any:
    """A comparable stand-in: plain values as they are, containers element-wise, tensors by
    identity, shape, dtype and device (not data), other objects by type and identity."""
    if isinstance(value, _PLAIN):
        return value
    if depth > 6:
        return ("deep", type(value).__name__, id(value))
    if isinstance(value, torch.Tensor):
        return ("tensor", id(value), tuple(value.shape), str(value.dtype), str(value.device))
    if isinstance(value, dict):
        return ("dict", tuple((repr(k), _describe(v, depth + 1)) for k, v in value.items()))
    if isinstance(value, list | tuple):
        return (type(value).__name__, tuple(_describe(v, depth + 1) for v in value))
    if isinstance(value, set | frozenset):
        return ("set", tuple(sorted(repr(v) for v in value)))
    return ("object", type(value).__qualname__, id(value))


def model_state(model: torch.nn.Module) -> dict[str, Any]:
    """Everything :func:`preserved` restores, as nested tuples and dicts that compare with
    ``==``: per module (by name) its attributes; per config its ``to_dict()`` and private
    fields; per parameter and buffer its identity, device, dtype and ``requires_grad``."""
    modules = {
        name or "<model>": {k: _describe(v) for k, v in vars(m).items()}
        for name, m in model.named_modules()
    }
    configs = [
        {
            "dict": _describe(c.to_dict()),
            "private": {k: _describe(v) for k, v in vars(c).items() if k.startswith("_")},
        }
        for c in _configs(model)
    ]
    tensors = {
        name: (id(t), str(t.device), str(t.dtype), t.requires_grad)
        for name, t in (*model.named_parameters(), *model.named_buffers())
    }
    return {"modules": modules, "configs": configs, "tensors": tensors}
