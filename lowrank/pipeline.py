"""The spectrum pipeline: batches of sequences -> captured P -> singular values -> statistics.

Each layer's P is reduced to its singular values inside the attention call and dropped, so
peak memory is the model, one layer's P for one batch, and O(B L H n) spectra.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from lowrank.capture import AttentionCall, capture, valid_blocks
from lowrank.corpora import Sequences
from lowrank.errors import LowrankError
from lowrank.models import LoadedModel
from lowrank.spectra import (
    DEFAULT_SVD,
    SvdMethod,
    default_workers,
    pad_spectrum,
    singular_values,
)
from lowrank.stats import SpectrumStats


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is a user error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise LowrankError("--device cuda: no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(device)


class SpectrumSink:
    """Attention sink that keeps only the singular values of each valid block of P.

    Attributes:
        spectra: (B, L, H, n) float64 on the CPU, filled layer by layer.
    """

    def __init__(
        self,
        batch: int,
        layers: int,
        heads: int,
        n: int,
        method: SvdMethod = DEFAULT_SVD,
        workers: int | None = None,
    ) -> None:
        self.spectra = torch.zeros(batch, layers, heads, n, dtype=torch.float64)
        self.n = n
        self.method = method
        self.workers = default_workers() if workers is None else workers

    def __call__(self, call: AttentionCall) -> None:
        if call.layer >= self.spectra.shape[1]:
            raise LowrankError(
                f"the model ran more attention layers than its config's {self.spectra.shape[1]}"
            )
        for rows, block in valid_blocks(call):
            check_finite(block, call.layer)
            s = singular_values(block, self.method, self.workers)  # (b, H, m)
            self.spectra[rows, call.layer] = pad_spectrum(s, self.n).cpu()


def check_finite(probs: torch.Tensor, layer: int) -> None:
    """Raise naming the first (layer, head) whose P holds NaN or inf (e.g. fp16 overflow)."""
    bad = ~torch.isfinite(probs).flatten(2).all(dim=-1)  # (b, H)
    if bool(bad.any()):
        head = int(bad.any(dim=0).nonzero()[0])
        raise LowrankError(
            f"attention of layer {layer + 1}, head {head + 1} holds NaN or inf (overflow in "
            "this dtype?): run with --dtype float32"
        )


@dataclass
class PipelineResult:
    stats: SpectrumStats
    sequences_used: int
    seconds: float
    stopped_early: bool = False
    half_width: float | None = None
    notes: list[str] = field(default_factory=list)


class Interrupted(Exception):
    """Raised from :func:`analyse` on Ctrl-C/SIGTERM, carrying the statistics so far."""

    def __init__(self, stats: SpectrumStats, next_index: int) -> None:
        super().__init__(f"interrupted after {next_index} sequences")
        self.stats, self.next_index = stats, next_index


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA and CPU allocator failures (worth retrying with a smaller batch)."""
    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _spectra(
    loaded: LoadedModel, ids: np.ndarray, lengths: np.ndarray, padded: bool, device: torch.device
) -> np.ndarray:
    """(b, L, H, n) singular values of one batch."""
    n = ids.shape[1]
    lens = torch.from_numpy(lengths)
    mask = (torch.arange(n)[None, :] < lens[:, None]).long().to(device)
    sink = SpectrumSink(len(lengths), loaded.num_layers, loaded.num_heads, n)
    with torch.inference_mode(), capture(loaded.model, sink, lens if padded else None) as seen:
        loaded.model(input_ids=torch.from_numpy(ids).to(device), attention_mask=mask)
        calls = seen()
    if calls == 0:
        raise LowrankError(
            f"model '{loaded.source.name}' ran no attention layer that lowrank can "
            "capture (it needs transformers' attention interface)"
        )
    if calls != loaded.num_layers:
        raise LowrankError(
            f"captured {calls} attention layers, the config says {loaded.num_layers}"
        )
    return sink.spectra.numpy()


def _spectra_retrying(
    loaded: LoadedModel,
    ids: np.ndarray,
    lengths: np.ndarray,
    padded: bool,
    device: torch.device,
    warn: Callable[[str], None],
) -> list[np.ndarray]:
    """Spectra of a batch, halving it (recursively) when it runs out of memory."""
    try:
        return [_spectra(loaded, ids, lengths, padded, device)]
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        if len(lengths) == 1:
            raise LowrankError(
                "out of memory on a single sequence: use a smaller --seq-len, another "
                "--device, or a machine with more memory"
            ) from exc
        if device.type == "cuda":
            torch.cuda.empty_cache()
        half = len(lengths) // 2
        warn(f"out of memory on a batch of {len(lengths)}: retrying as batches of {half}")
        return _spectra_retrying(loaded, ids[:half], lengths[:half], padded, device, warn) + (
            _spectra_retrying(loaded, ids[half:], lengths[half:], padded, device, warn)
        )


def analyse(
    loaded: LoadedModel,
    sequences: Sequences,
    index: int,
    batch_size: int = 8,
    device: torch.device | None = None,
    precision: float | None = None,
    precision_indices: list[int] | None = None,
    progress: Callable[[int], None] | None = None,
    min_sequences: int = 10,
    start: tuple[SpectrumStats, int] | None = None,
    checkpoint: Callable[[SpectrumStats, int], None] | None = None,
    checkpoint_due: Callable[[int], bool] | None = None,
    warn: Callable[[str], None] = lambda message: None,
) -> PipelineResult:
    """Spectra of every (layer, head) for every sequence, accumulated into statistics.

    Args:
        loaded: the model in eval mode.
        sequences: (N, n) tokens and valid lengths.
        index: 1-based heatmap index.
        precision: stop once the 95% half-width of every tracked mean c value is below it
            (checked after each batch, from ``min_sequences`` on); None runs all sequences.
        precision_indices: 1-based curve points tracked by ``precision`` (default: index).
        progress: called with the number of sequences finished after each batch.
        start: statistics and the index of the next sequence, to resume a run.
        checkpoint: called with (statistics, next index) after a batch when
            ``checkpoint_due(sequences done since the last checkpoint)`` says so.
        warn: receives one-line warnings (e.g. a batch retried after running out of memory).

    Raises:
        Interrupted: on KeyboardInterrupt, with the statistics of the finished batches.
    """
    device = device or torch.device("cpu")
    n = sequences.input_ids.shape[1]
    stats, first = start or (SpectrumStats.empty(loaded.num_layers, loaded.num_heads, n, index), 0)
    tracked = precision_indices or [index]
    padded = bool((sequences.lengths < n).any())
    began = time.perf_counter()
    result = PipelineResult(stats, 0, 0.0)
    since = 0
    next_index = first  # the first sequence not yet in ``stats``
    try:
        for lo in range(first, len(sequences.lengths), batch_size):
            hi = lo + batch_size
            parts = _spectra_retrying(
                loaded, sequences.input_ids[lo:hi], sequences.lengths[lo:hi], padded, device, warn
            )
            for part in parts:
                stats = stats.add(part)
            done = len(sequences.lengths[lo:hi])
            next_index = lo + done
            since += done
            if progress is not None:
                progress(done)
            if checkpoint is not None and checkpoint_due is not None and checkpoint_due(since):
                checkpoint(stats, next_index)
                since = 0
            if precision is not None and stats.count >= min_sequences:
                hw = stats.half_width(tracked)
                result.half_width = hw
                if hw < precision:
                    result.stopped_early = next_index < len(sequences.lengths)
                    break
    except KeyboardInterrupt:
        raise Interrupted(stats, next_index) from None
    result.stats = stats
    result.sequences_used = stats.count
    result.seconds = time.perf_counter() - began
    if precision is not None:
        result.half_width = stats.half_width(tracked)
        if not math.isfinite(result.half_width) or result.half_width >= precision:
            result.notes.append(
                f"precision target {precision} not reached with {stats.count} sequences "
                f"(half-width {result.half_width:.4g}): raise --num-sequences"
            )
    return result


def per_layer_table(stats: SpectrumStats) -> np.ndarray:
    """(L, 2): mean over heads and std across heads of mean c at the heatmap index."""
    c = stats.summaries.mean[..., 0]  # (L, H)
    std = c.std(axis=1, ddof=1) if c.shape[1] > 1 else np.zeros(c.shape[0])
    return np.stack([c.mean(axis=1), std], axis=1)
