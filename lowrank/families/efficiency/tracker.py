"""Peak memory of one forward pass, measured so that it does not depend on what ran before
(the methods in words: :mod:`lowrank.families.efficiency.memory`).

On the CPU, :class:`TensorPeak` (a :class:`~torch.utils._python_dispatch.TorchDispatchMode`)
sees the output of every ATen operator and puts a finaliser on each new storage, so it counts
every tensor from its creation to its release; on a GPU the CUDA allocator reports its peak.
The count equals the CPU allocator's own running total (``tests/test_efficiency_memory.py``)
except for scratch a fused kernel allocates inside itself: SDPA's CPU flash-attention kernel
takes a buffer per thread of at most about 0.6 MiB in float32 (head size 64), uncounted.
Both measure one pass after an unmeasured warm-up pass, so that one-time allocations (a
library's workspace, lazily built buffers) fall on no stack in particular.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

if TYPE_CHECKING:
    from collections.abc import Callable


class TensorPeak(TorchDispatchMode):
    """Live and peak bytes of the tensor storages created while the mode is active.

    A storage counts from the operator that returns it (not a view of an input) until it is
    freed. Storages that existed before (weights, the input) are never counted, so
    ``peak`` is the peak above the start. Contract: for ops ``y = a @ b; del y; z = a @ b``
    with ``a @ b`` of S bytes, ``peak == S`` and, once ``z`` is freed, ``live == 0``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}  # data pointer -> bytes, of storages alive
        self._finalizers: list[weakref.finalize[Any, Any]] = []

    def __torch_dispatch__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        out = func(*args, **(kwargs or {}))
        given = {_pointer(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self._count(tensor.untyped_storage(), given)
        return out

    def _count(self, storage: torch.UntypedStorage, given: set[int]) -> None:
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in given or key in self._sizes:
            return  # empty, a view of an input, or already counted
        self._sizes[key] = size
        self.live += size
        self.peak = max(self.peak, self.live)
        # the storage's Python object lives as long as the storage itself (torch keeps it),
        # so the finaliser runs when the memory is freed
        self._finalizers.append(weakref.finalize(storage, self._free, key))

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        for done in self._finalizers:
            done.detach()  # storages that outlive the count hold no reference to it
        self._finalizers.clear()


def _pointer(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()


def _cuda_peak(run: Callable[[], object], device: torch.device) -> int:
    """Allocator peak of ``run()`` above the memory allocated before it, bytes."""
    torch.cuda.synchronize(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    run()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device) - base)


def peak_memory(model: Callable[[torch.Tensor], object], x: torch.Tensor) -> int:
    """Peak bytes of one forward pass of ``x`` (B, n, D) above the start, after one
    unmeasured warm-up pass: :class:`TensorPeak` on the CPU
    (:data:`~lowrank.families.efficiency.memory.TENSORS`), the CUDA allocator's peak on a GPU
    (:data:`~lowrank.families.efficiency.memory.CUDA_ALLOCATOR`).

    The passes run under ``no_grad``, not ``inference_mode``: there composite operators
    (``matmul``, ``linear``) reach the count whole and the copies they make inside would be
    missed; under ``no_grad`` they are split into the operators that allocate. No
    ``gc.collect()``: tensors freed by reference counting are seen as freed, and garbage left
    from before is never counted (a full collection took a second in a process holding
    transformers' objects)."""
    with torch.no_grad():
        model(x)  # warm-up: one-time allocations are nobody's peak
        if x.device.type == "cuda":
            return _cuda_peak(lambda: model(x), x.device)
        with TensorPeak() as count:
            model(x)
        return count.peak
