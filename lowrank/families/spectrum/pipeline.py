"""The spectrum pipeline: batches of sequences -> captured P -> singular values -> statistics.

Each layer's P is reduced to its singular values inside the attention call and dropped, so
peak memory is the model, one layer's P for one batch, and O(B L H n) spectra.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from lowrank.core.numeric import check_finite, is_out_of_memory
from lowrank.core.options import flag, named, switch
from lowrank.errors import LowrankError
from lowrank.families.spectrum.stats import SpectrumStats
from lowrank.hooks.attention import AttentionCall, PaddingSide, capture, padded_inputs, valid_blocks
from lowrank.hooks.check import check_capture
from lowrank.inputs.corpora import Sequences
from lowrank.inputs.models import LoadedModel
from lowrank.maths.spectra import (
    DEFAULT_SVD,
    SvdMethod,
    default_workers,
    pad_spectrum,
    singular_values,
)
from lowrank.maths.stats import RunningMoments
from lowrank.runs.distributed import Team, merge_in_order


class SpectrumCollector:
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


@dataclass
class PipelineResult:
    """What :func:`analyse` did on this process.

    ``stats`` holds this rank's sequences only (all of them in a single process);
    ``sequences_used`` counts the sequences of every rank, ``[0, sequences_used)`` of the list.
    """

    stats: SpectrumStats
    sequences_used: int
    seconds: float
    stopped_early: bool = False
    half_width: float | None = None
    notes: list[str] = field(default_factory=list)
    batches: int = 0  # batches this rank analysed (resumed ones not counted)
    own_sequences: int = 0  # sequences in those batches
    compute_seconds: float = 0.0  # spent in them, without waiting for other ranks
    # (N, L, H, n) float32 singular values of every sequence, in order (keep_per_sequence)
    per_sequence: np.ndarray | None = None


class Interrupted(Exception):
    """Raised from :func:`analyse` on Ctrl-C/SIGTERM, carrying the statistics so far."""

    def __init__(self, stats: SpectrumStats, next_index: int) -> None:
        super().__init__(f"interrupted after {next_index} sequences")
        self.stats, self.next_index = stats, next_index


def _spectra(
    loaded: LoadedModel,
    ids: np.ndarray,
    lengths: np.ndarray,
    padding: PaddingSide | None,
    device: torch.device,
) -> np.ndarray:
    """(b, L, H, n) singular values of one batch; ``padding`` is the side the batch is
    padded on (None: every sequence is full length)."""
    n = ids.shape[1]
    lens = torch.from_numpy(lengths)
    side: PaddingSide = padding or "right"
    inputs = padded_inputs(loaded.model, torch.from_numpy(ids).to(device), lens, side)
    sink = SpectrumCollector(len(lengths), loaded.num_layers, loaded.num_heads, n)
    active = lens if padding else None
    with torch.inference_mode(), capture(loaded.model, sink, active, padding_side=side) as seen:
        loaded.model(**inputs)
        calls = seen()
    if calls == 0:
        raise LowrankError(
            f"model '{loaded.source.name}' ran no attention layer that lowrank can capture"
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
    padding: PaddingSide | None,
    device: torch.device,
    warn: Callable[[str], None],
    auto_batch: bool = False,
) -> list[np.ndarray]:
    """Spectra of a batch; out of memory, halved (recursively) with ``auto_batch``, else
    refused in one line naming the batch size to use."""
    try:
        return [_spectra(loaded, ids, lengths, padding, device)]
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        if len(lengths) == 1:
            raise LowrankError(
                f"out of memory on a single sequence: use a smaller {flag('seq_len')}, another "
                f"{flag('device')}, or a machine with more memory"
            ) from exc
        if device.type == "cuda":
            torch.cuda.empty_cache()
        half = len(lengths) // 2
        if not auto_batch:
            raise LowrankError(
                f"out of memory on a batch of {len(lengths)}: use {named('batch_size', half)}, or "
                f"pass "
                f"{switch('auto_batch')} to halve a batch that runs out of memory"
            ) from exc
        warn(f"out of memory on a batch of {len(lengths)}: retrying as batches of {half}")
        return [
            *_spectra_retrying(loaded, ids[:half], lengths[:half], padding, device, warn, True),
            *_spectra_retrying(loaded, ids[half:], lengths[half:], padding, device, warn, True),
        ]


def deal(
    first: int, total: int, batch_size: int, rank: int = 0, world: int = 1
) -> Iterator[tuple[int, int, int]]:
    """Deal the batches of sequences ``[first, total)`` to ``world`` ranks, round-robin.

    In round k, rank r takes the batch starting at ``first + (k * world + r) * batch_size``.
    Yields, per round, this rank's ``(lo, hi)`` (``lo == hi`` when the last round has no batch
    left for it) and the index ``end`` after the round: once every rank has finished a round,
    together they have analysed exactly ``[first, end)``. One rank gets the single-process
    batches.
    """
    step = batch_size * world
    for begin in range(first, total, step):
        lo = min(begin + rank * batch_size, total)
        yield lo, min(lo + batch_size, total), min(begin + step, total)


# Two-sided 95% normal quantile, as in SpectrumStats.half_width.
Z95 = 1.959963984540054


def tracked(stats: SpectrumStats, indices: list[int]) -> RunningMoments:
    """Moments of c at the 1-based ``indices`` only: (L, H, len(indices))."""
    cols = [i - 1 for i in indices]
    m = stats.cumulative
    return RunningMoments(m.count, m.mean[..., cols], m.m2[..., cols])


def half_width(m: RunningMoments) -> float:
    """Largest 95% half-width ``z * sem`` over the tracked means (inf below 2 sequences)."""
    if m.count < 2:
        return float("inf")
    return float(Z95 * m.sem().max())


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
    checkpoint: Callable[[list[SpectrumStats], int], None] | None = None,
    checkpoint_due: Callable[[int], bool] | None = None,
    warn: Callable[[str], None] = lambda message: None,
    team: Team | None = None,
    auto_batch: bool = False,
    keep_per_sequence: bool = False,
) -> PipelineResult:
    """Spectra of every (layer, head) for every sequence, accumulated into statistics.

    Args:
        loaded: the model in eval mode.
        sequences: (N, n) tokens and valid lengths; every rank passes the whole list.
        index: 1-based heatmap index.
        precision: stop once the 95% half-width of every tracked mean c value is below it
            (checked after each round, from ``min_sequences`` on, on the statistics of all
            ranks); None runs all sequences.
        precision_indices: 1-based curve points tracked by ``precision`` (default: index).
        progress: called with the number of sequences finished (by all ranks) after a round.
        start: this rank's statistics and the index of the next sequence, to resume a run.
        checkpoint: called (on rank 0) with every rank's statistics, in rank order, and the
            next index when ``checkpoint_due(sequences done since the last checkpoint)``
            says so (rank 0's answer counts).
        warn: receives one-line warnings (e.g. a batch retried after running out of memory).
        team: the ranks of a torchrun launch; rank r analyses the batches :func:`deal`
            gives it, and one collective per round keeps the ranks in step. None: one process.
        keep_per_sequence: also keep every sequence's singular values (float32, in sequence
            order) in ``result.per_sequence``; one process and no resumed start only.

    Raises:
        Interrupted: on KeyboardInterrupt, with the statistics of the finished batches.
        PeerFailure: (with a team) when a collective fails because another rank stopped.
    """
    device = device or torch.device("cpu")
    n = sequences.input_ids.shape[1]
    total = len(sequences.lengths)
    stats, first = start or (SpectrumStats.empty(loaded.num_layers, loaded.num_heads, n, index), 0)
    indices = precision_indices or [index]
    padding: PaddingSide | None = (
        getattr(sequences, "padding_side", "right") if (sequences.lengths < n).any() else None
    )
    rank, world = (team.rank, team.world) if team is not None else (0, 1)
    began = time.perf_counter()
    result = PipelineResult(stats, 0, 0.0)
    since = 0
    next_index = first  # every sequence before it is in the statistics of some rank
    if keep_per_sequence and (team is not None or first > 0):
        raise LowrankError(
            f"{flag('keep_per_sequence')} keeps the spectra of one uninterrupted process: run "
            "it without torchrun and without resuming"
        )
    kept: list[np.ndarray] = []
    view = None  # tracked moments of all ranks, for the stopping rule

    if first < total:
        check_first(loaded, sequences, first, padding, device)

    def exchange(due: bool) -> tuple[bool, RunningMoments | None]:
        mine = tracked(stats, indices) if precision is not None else None
        if team is None:
            return due, mine
        reports = team.all_gather((due, mine))
        merged = merge_in_order([m for _, m in reports]) if precision is not None else None
        return reports[0][0], merged

    try:
        for lo, hi, end in deal(first, total, batch_size, rank, world):
            if hi > lo:
                tick = time.perf_counter()
                ids, lengths = sequences.input_ids[lo:hi], sequences.lengths[lo:hi]
                for part in _spectra_retrying(
                    loaded, ids, lengths, padding, device, warn, auto_batch
                ):
                    stats = stats.add(part)
                    if keep_per_sequence:
                        kept.append(part.astype(np.float32))
                result.compute_seconds += time.perf_counter() - tick
                result.batches += 1
                result.own_sequences += hi - lo
            done, next_index = end - next_index, end
            since += done
            due = checkpoint is not None and checkpoint_due is not None and checkpoint_due(since)
            due, view = exchange(due)
            if progress is not None:
                progress(done)
            if due and checkpoint is not None:
                parts = team.gather(stats) if team is not None else [stats]
                if parts is not None:
                    checkpoint(parts, next_index)
                since = 0
            if precision is not None and view is not None and view.count >= min_sequences:
                result.half_width = half_width(view)
                if result.half_width < precision:
                    result.stopped_early = next_index < total
                    break
        if precision is not None and view is None:  # no round left to run
            _, view = exchange(False)
    except KeyboardInterrupt:
        raise Interrupted(stats, next_index) from None
    result.stats = stats
    result.sequences_used = next_index
    if keep_per_sequence:
        n_l_h = (loaded.num_layers, loaded.num_heads, n)
        result.per_sequence = np.concatenate(kept) if kept else np.zeros((0, *n_l_h), np.float32)
    result.seconds = time.perf_counter() - began
    if precision is not None and view is not None:
        result.half_width = half_width(view)
        if not math.isfinite(result.half_width) or result.half_width >= precision:
            result.notes.append(
                f"precision target {precision} not reached with {view.count} sequences "
                f"(half-width {result.half_width:.4g}): raise {flag('num_sequences')}"
            )
    return result


PROBE_TOKENS = 64
"""Tokens of the sequence :func:`check_first` runs twice (the computation of P does not
depend on n, and two passes of 64 tokens cost little beside a run's batches)."""


def check_first(
    loaded: LoadedModel,
    sequences: Sequences,
    first: int,
    padding: PaddingSide | None,
    device: torch.device,
) -> None:
    """Is the captured P the model's own? The first sequence to analyse, cut to its first
    :data:`PROBE_TOKENS` valid tokens, through the capture and through the model's eager
    attention (:func:`lowrank.hooks.check.check_capture`), before any work: a difference is
    one line naming the layer."""
    side: PaddingSide = padding or "right"
    length = int(sequences.lengths[first])
    n = sequences.input_ids.shape[1]
    ids = sequences.input_ids[first]
    ids = ids[:length] if side == "right" else ids[n - length :]
    probe = torch.from_numpy(ids[:PROBE_TOKENS][None, :]).to(device)
    valid = torch.tensor([probe.shape[1]])
    check_capture(loaded.model, padded_inputs(loaded.model, probe, valid, "right"))


def per_layer_table(stats: SpectrumStats) -> np.ndarray:
    """(L, 2): mean over heads and std across heads of mean c at the heatmap index."""
    c = stats.summaries.mean[..., 0]  # (L, H)
    std = c.std(axis=1, ddof=1) if c.shape[1] > 1 else np.zeros(c.shape[0])
    return np.stack([c.mean(axis=1), std], axis=1)
