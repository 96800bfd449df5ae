"""The measuring half of ``lowrank scaling``: a sink, a memory estimate, one n at a time.

Per n, one forward pass per batch streams each layer's P through a :class:`ScalingCollector`,
which keeps the singular values of P (exactly as ``lowrank spectrum`` does) and of PV in
float64, and drops P before the next layer: memory is one layer's attention whatever the
depth, and the batch is chosen from a memory estimate (:func:`choose_batch`).
"""

from __future__ import annotations

import logging
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lowrank.core.numeric import is_out_of_memory
from lowrank.core.options import flag
from lowrank.errors import LowrankError
from lowrank.families.scaling.measures import rank_measures
from lowrank.families.spectrum.pipeline import SpectrumCollector, half_width, tracked
from lowrank.families.spectrum.stats import SpectrumStats
from lowrank.hooks.attention import AttentionCall, capture, valid_blocks
from lowrank.inputs.config import heatmap_index

if TYPE_CHECKING:
    from lowrank.families.scaling.workflow import ScalingSpec
    from lowrank.inputs.models import LoadedModel

log = logging.getLogger(__name__)

MIN_SEQUENCES = 10  # --precision is checked from this many documents on, as in spectrum


class ScalingCollector(SpectrumCollector):
    """The spectrum sink, plus the float64 singular values of each head's output PV.

    Attributes:
        spectra: (B, L, H, n) singular values of P (as :class:`SpectrumCollector`).
        outputs: (B, L, H, r) singular values of PV, r = min(n, d), float64.
    """

    def __init__(self, batch: int, layers: int, heads: int, n: int) -> None:
        super().__init__(batch, layers, heads, n)
        self.outputs: torch.Tensor | None = None

    def __call__(self, call: AttentionCall) -> None:
        super().__call__(call)
        b, heads, n, d = call.value.shape
        if self.outputs is None:
            self.outputs = torch.zeros(
                b, self.spectra.shape[1], heads, min(n, d), dtype=torch.float64
            )
        for rows, block in valid_blocks(call):  # P was checked finite by the parent
            m = block.shape[-1]
            value = call.value[rows.to(call.value.device)][:, :, :m]  # (b, H, m, d)
            for h in range(heads):  # one head at a time: a float64 copy of P is 2x its size
                pv = block[:, h].double() @ value[:, h].double()  # (b, m, d) in float64
                s = torch.linalg.svdvals(pv)  # (b, min(m, d)), float64
                self.outputs[rows, call.layer, h, : s.shape[-1]] = s.cpu()


def estimate_bytes(
    batch: int, n: int, heads: int, hidden: int, head_dim: int, workers: int, cuda: bool
) -> int:
    """Peak working memory of one batch above the model's weights (float32 activations).

    One layer at a time: the scores, masked scores and P of the batch (3 B H n^2 floats);
    the float64 copies of the singular-value kernel (P, P P^T and LAPACK's copy of it: two
    matrices per CPU thread, or the whole batch on a GPU); the hidden states and feed-forward
    activations of one layer; PV in float64. Nothing depends on the number of layers but
    the (B, L, H, n) spectra, which are negligible. ``benchmarks/bench_scaling.py`` checks
    it against measured peaks.
    """
    attention = 3 * batch * heads * n * n * 4
    matrices = batch * heads if cuda else 2 * workers
    kernel = 3 * matrices * n * n * 8
    activations = 12 * batch * n * hidden * 4
    outputs = 2 * batch * heads * n * head_dim * 8
    return attention + kernel + activations + outputs


def default_budget(device: torch.device) -> int:
    """A quarter of the free memory (host RAM, or the GPU's), in bytes."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free // 4)
    import psutil

    return int(psutil.virtual_memory().available // 4)


def _hidden(loaded: LoadedModel) -> int:
    config = loaded.model.config
    return int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0) or 0)


def head_dim(loaded: LoadedModel) -> int:
    """d, the width of each head's V: the config's ``head_dim``, else hidden / heads. PV is
    n x d, so the output rank is at most d."""
    config = loaded.model.config
    return int(getattr(config, "head_dim", None) or _hidden(loaded) // max(loaded.num_heads, 1))


def estimate_for(loaded: LoadedModel, n: int, batch: int, device: torch.device) -> int:
    """:func:`estimate_bytes` for a loaded model on ``device``."""
    from lowrank.maths.spectra import default_workers

    cuda = device.type == "cuda"
    return estimate_bytes(
        batch, n, loaded.num_heads, _hidden(loaded), head_dim(loaded), default_workers(), cuda
    )


def choose_batch(
    loaded: LoadedModel, n: int, budget: int, documents: int, device: torch.device
) -> tuple[int, int]:
    """The largest batch (at most ``documents``) whose :func:`estimate_for` fits ``budget``
    bytes, and that estimate; batch 1 when even one sequence does not fit."""
    batch = 1
    while batch < documents and estimate_for(loaded, n, batch + 1, device) <= budget:
        batch += 1
    return batch, estimate_for(loaded, n, batch, device)


@dataclass
class LengthResult:
    """What one n gave."""

    n: int
    stats: SpectrumStats
    measures: np.ndarray  # (used, L, H, 7) in ALL_MEASURES order
    used: int
    batch: int
    estimate_bytes: int
    seconds: float
    batches: int = 0
    half_width: float | None = None
    stopped_early: bool = False
    peak_bytes: int = 0
    working_peak_bytes: int = 0  # above the memory in use when this n began
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)


def memory_record(res: LengthResult) -> dict[str, Any]:
    """run.json's memory fields of one n: batch, estimate, and the measured peaks."""
    return {
        "batch_size": res.batch,
        "estimated_peak_bytes": res.estimate_bytes,
        "measured_peak_bytes": res.peak_bytes,
        "measured": "CUDA max_memory_allocated for this n"
        if res.device == "cuda"
        else "process peak resident set so far (ru_maxrss)",
        "working_peak_bytes": res.working_peak_bytes,
        "working": "peak above the memory in use when this n began ("
        + (
            "CUDA max_memory_allocated)"
            if res.device == "cuda"
            else "resident set sampled every 5 ms): what the estimate predicts)"
        ),
    }


def _forward(
    loaded: LoadedModel,
    ids: np.ndarray,
    device: torch.device,
    positions: np.ndarray | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spectra of P and PV, (b, L, H, n) and (b, L, H, r), of one unpadded batch.

    Args:
        ids: (b, n) token ids.
        positions: (n,) position ids given to every row (the model's own when None).
    """
    n = ids.shape[1]
    sink = ScalingCollector(len(ids), loaded.num_layers, loaded.num_heads, n)
    mask = torch.ones(ids.shape, dtype=torch.long, device=device)
    extra = {}
    if positions is not None:
        extra["position_ids"] = torch.from_numpy(positions).to(device)[None].expand(len(ids), -1)
    with torch.inference_mode(), capture(loaded.model, sink) as seen:
        loaded.model(input_ids=torch.from_numpy(ids).to(device), attention_mask=mask, **extra)
        calls = seen()
    if calls != loaded.num_layers or sink.outputs is None:
        raise LowrankError(
            f"captured {calls} attention layers of model '{loaded.source.name}', its config "
            f"says {loaded.num_layers}"
        )
    return sink.spectra, sink.outputs


def _forward_retrying(
    loaded: LoadedModel,
    ids: np.ndarray,
    device: torch.device,
    positions: np.ndarray | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`_forward`, halving the batch (recursively) when it runs out of memory."""
    try:
        return [_forward(loaded, ids, device, positions)]
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        if len(ids) == 1:
            raise LowrankError(
                f"out of memory on a single sequence of n = {ids.shape[1]}: use a smaller "
                f"largest {flag('seq_len')}, another {flag('device')}, or a machine with more "
                f"memory"
            ) from exc
        if device.type == "cuda":
            torch.cuda.empty_cache()
        half = len(ids) // 2
        log.warning(f"out of memory on a batch of {len(ids)}: retrying as batches of {half}")
        return _forward_retrying(loaded, ids[:half], device, positions) + _forward_retrying(
            loaded, ids[half:], device, positions
        )


def measure_windows(
    loaded: LoadedModel,
    ids: np.ndarray,
    spec: ScalingSpec,
    batch: int,
    device: torch.device,
    positions: np.ndarray | None = None,
) -> np.ndarray:
    """Every rank measure of :data:`~lowrank.families.scaling.measures.ALL_MEASURES` per
    window, layer and head, with the given position ids (the position control).

    Args:
        ids: (W, n) token ids; positions: (n,) position ids for every window, or None.

    Returns:
        (W, L, H, 7) float64.
    """
    rows = []
    for lo in range(0, len(ids), batch):
        for s_p, s_pv in _forward_retrying(loaded, ids[lo : lo + batch], device, positions):
            rows.append(rank_measures(s_p, s_pv, ids.shape[1], spec.index, spec.tau).numpy())
    return np.concatenate(rows)


class PeakMemory:
    """Peak working memory of a block above what was in use when it began.

    On CUDA: ``torch.cuda.max_memory_allocated`` after a reset, minus the allocation at the
    start. On the CPU: the process's resident set sampled every ``interval`` seconds by a
    thread (``psutil``), minus its size at the start: unlike ``ru_maxrss`` (a peak over the
    whole process) it is this block's own, whatever ran before. Sampling can miss a spike
    shorter than the interval.
    """

    def __init__(self, device: torch.device, interval: float = 0.005) -> None:
        self.device, self.interval = device, interval
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = self.peak = int(torch.cuda.memory_allocated(self.device))
            return self
        import psutil

        process = psutil.Process()
        self.start = self.peak = int(process.memory_info().rss)

        def sample() -> None:
            while not self._stop.wait(self.interval):
                self.peak = max(self.peak, int(process.memory_info().rss))

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def above_start(self) -> int:
        """Bytes of the peak above the start (0 when nothing grew)."""
        return max(0, self.peak - self.start)


def analyse_length(
    loaded: LoadedModel,
    ids: np.ndarray,
    spec: ScalingSpec,
    batch: int,
    device: torch.device,
    precision: float | None,
    progress: Callable[[int], object] = lambda k: None,
) -> LengthResult:
    """Spectra statistics and per-window rank measures of one n.

    Args:
        ids: (W, n) the windows of this n, in order.
        precision: stop once the 95% half-width of every mean c value the spectrum figures
            read (n/8, n/4, n/2 and the heatmap index) is below it, from
            :data:`MIN_SEQUENCES` windows on; None runs every window.

    Returns:
        the result; ``measures`` is (used, L, H, 7) for the first ``used`` windows.
    """
    from lowrank.families.spectrum.job import figure_indices

    total, n = ids.shape
    stats = SpectrumStats.empty(loaded.num_layers, loaded.num_heads, n, heatmap_index(n))
    rows: list[np.ndarray] = []
    result = LengthResult(n, stats, np.zeros(0), 0, batch, 0, 0.0, device=device.type)
    began = time.perf_counter()
    with PeakMemory(device) as memory:
        for lo in range(0, total, batch):
            for s_p, s_pv in _forward_retrying(loaded, ids[lo : lo + batch], device):
                stats = stats.add(s_p.numpy())
                rows.append(rank_measures(s_p, s_pv, n, spec.index, spec.tau).numpy())
            result.batches += 1
            done = min(lo + batch, total)
            progress(done - lo)
            if precision is not None and stats.count >= MIN_SEQUENCES:
                result.half_width = half_width(tracked(stats, figure_indices(n)))
                if result.half_width < precision:
                    result.stopped_early = done < total
                    break
    if precision is not None and (result.half_width is None or result.half_width >= precision):
        result.half_width = half_width(tracked(stats, figure_indices(n)))
        result.notes.append(
            f"n = {n}: precision target {precision} not reached with {stats.count} windows "
            f"(half-width {result.half_width:.4g}): raise {flag('num_sequences')}"
        )
    result.seconds = time.perf_counter() - began
    result.stats, result.used = stats, stats.count
    result.measures = np.concatenate(rows)
    result.working_peak_bytes = memory.above_start
    if device.type == "cuda":
        result.peak_bytes = memory.peak
    else:
        # ru_maxrss: the process's peak resident set so far, in KiB on Linux
        result.peak_bytes = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    return result
