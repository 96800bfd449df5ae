"""The ``lowrank spectrum`` job: inputs -> statistics -> a :class:`SpectrumResult`.

:func:`run_spectrum` does the whole job for the API function :func:`lowrank.spectrum` (and so
for the CLI): it prepares model and sequences, runs the pipeline with checkpoints, resumes,
shards or torchrun ranks, and returns the result, writing the run folder when given one. It
never prints: status lines go to ``logging``, progress to a ``tqdm.auto`` bar, and the
summary text is the result's :meth:`~SpectrumResult.report`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from lowrank.errors import LowrankError
from lowrank.inputs.config import SpectrumConfig, heatmap_index
from lowrank.inputs.prepared import Prepared
from lowrank.runs.checkpoints import clear_checkpoint, read_checkpoint, write_checkpoint
from lowrank.runs.folders import FORMAT, FORMAT_VERSION, stats_arrays
from lowrank.runs.provenance import package_versions
from lowrank.runs.writing import check_out_dir, write_run
from lowrank.spectra.result import SpectrumResult

if TYPE_CHECKING:
    from lowrank.inputs.memory import DataInput, ModelInput

log = logging.getLogger(__name__)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped a run; ``str(exc)`` says what was kept and how to resume.

    Attributes:
        checkpoint: the checkpoint file holding the finished sequences, or None.
    """

    def __init__(self, message: str, checkpoint: Path | None = None) -> None:
        super().__init__(message)
        self.checkpoint = checkpoint

    def __str__(self) -> str:
        return str(self.args[0])


def default_out(model: str, dataset: str | None, data: str | None) -> Path:
    """The CLI's default run folder, ``runs/<model>-<dataset>``."""
    name = Path(model).name or "model"
    corpus = dataset or (Path(data).stem if data else "sample-wiki")
    return Path("runs") / f"{name}-{corpus}"


@dataclass
class Inputs:
    """Model and data as the user gave them (names, paths or objects; see
    :mod:`lowrank.inputs.memory`)."""

    model: ModelInput = "minilm"
    tokenizer: Any = None
    data: DataInput = None
    attention_mask: Any = None

    @property
    def in_memory(self) -> bool:
        from lowrank.inputs.memory import is_memory_data, is_memory_model

        return is_memory_model(self.model) or is_memory_data(self.data)

    def prepare(self, config: SpectrumConfig) -> Prepared:
        from lowrank.inputs.memory import prepare_any

        return prepare_any(
            self.model, self.tokenizer, self.data, config, attention_mask=self.attention_mask
        )

    def identity(self, prep: Prepared) -> dict[str, Any]:
        from lowrank.inputs.memory import memory_identity

        return memory_identity(self.model, self.data, prep)


@dataclass
class _Job:
    """One spectrum run: its options, and the checkpoint it last saved."""

    config: SpectrumConfig
    inputs: Inputs
    out: Path | None
    identity: dict[str, Any]
    overwrite: bool
    resume: bool
    precision: float | None
    command: str
    checkpoint_every: int | None
    clock: Callable[[], float]
    versions: dict[str, str]
    created: str
    plot: bool
    progress: bool
    started: float
    auto_batch: bool = False  # out of memory: halve the batch instead of stopping
    batch: int | None = None  # the batch size that fits, once decided (fitted_batch)
    saved: int = 0  # sequences in the last checkpoint written (0: none)
    resumed_from: dict[str, int] | None = None
    figures: list[Path] = field(default_factory=list)


def run_spectrum(
    config: SpectrumConfig,
    inputs: Inputs,
    *,
    out: Path | None,
    command: str,
    created: str,
    overwrite: bool = False,
    plot: bool = False,
    precision: float | None = None,
    versions: dict[str, str] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    shard: tuple[int, int] | None = None,
    resume: bool = False,
    checkpoint_every: int | None = None,
    backend: str | None = None,
    verbose: bool = False,
    progress: bool = True,
    auto_batch: bool = False,
) -> SpectrumResult:
    """The whole spectrum job, from model and corpus to a result (and a run folder at
    ``out``; None writes nothing).

    Long runs save their accumulators to ``<out>/checkpoint.{npz,json}`` every
    ``checkpoint_every`` sequences (default: after each minute of work) and on Ctrl-C or
    SIGTERM (then :class:`RunInterrupted` is raised); ``resume`` continues from there.
    ``shard = (i, N)`` analyses the i-th of N contiguous, disjoint parts of the sequence
    list (:func:`lowrank.merge` combines them).

    Launched by torchrun (the torch.distributed variables set), every rank runs this
    function: the ranks split the batches round-robin, rank 0 writes the run folder and
    every rank returns the merged result (:func:`lowrank.spectra.team.run_team`).
    ``backend`` overrides gloo (CPU) or nccl (CUDA); ``verbose`` lets every rank log its
    messages, not only rank 0.
    The batch size is checked against the free memory before the first batch
    (:func:`lowrank.spectra.memory.fit_batch`); ``auto_batch`` cuts a batch that does not fit,
    and halves one that still runs out of memory, instead of stopping with one line.
    An in-memory model is restored as found when the job ends, also on error.
    """
    from lowrank.inputs.memory import preserved
    from lowrank.runs.distributed import launch_from_env

    identity = config.identity() | ({"shard": list(shard)} if shard else {})
    job = _Job(
        config, inputs, out, identity, overwrite, resume, precision, command, checkpoint_every,
        clock, versions or package_versions(), created, plot, progress, clock(), auto_batch,
    )  # fmt: skip
    launch = launch_from_env()
    with preserved(inputs.model):
        if launch is not None:
            from lowrank.spectra.team import run_team

            return run_team(job, launch, shard, backend, verbose)
        return _run_alone(job, shard, backend)


def _run_alone(job: _Job, shard: tuple[int, int] | None, backend: str | None) -> SpectrumResult:
    from lowrank.spectra.pipeline import Interrupted

    if backend is not None:
        log.warning(
            f"--backend {backend} has no effect: this is one process, not a torchrun launch"
        )
    found = None
    if job.out is not None and not job.inputs.in_memory:  # before the model loads for nothing
        check_out_dir(job.out, job.identity, job.overwrite, resume=job.resume)
        if job.resume:  # a damaged checkpoint is refused before the model loads
            found = read_checkpoint(job.out, job.identity)
    prep = job.inputs.prepare(job.config)
    if job.inputs.in_memory:
        job.identity |= job.inputs.identity(prep)
        if job.out is not None:
            check_out_dir(job.out, job.identity, job.overwrite, resume=job.resume)
            if job.resume:
                found = read_checkpoint(job.out, job.identity)
    if shard is not None:
        prep.sequences = select_shard(prep.sequences, *shard)
        log.info(f"shard {shard[0]}/{shard[1]}: {len(prep.sequences.lengths)} sequences")
    if found is not None and found[1] > len(prep.sequences.lengths):
        raise LowrankError(
            f"'{job.out}/checkpoint.json' says {found[1]} sequences were done, but this run has "
            f"{len(prep.sequences.lengths)}: pass --overwrite (not --resume) to start again"
        )
    begin = _start_states(job, prep, 1, found)
    _warn_index(job.config.seq_len)
    fitted_batch(job, prep)  # refused before the progress bar starts
    with _sigterm_as_interrupt(), _bar(job, prep, begin) as bar:
        try:
            result = _analyse(job, prep, begin[0] if begin else None, bar.update, None)
        except Interrupted as stop:
            bar.close()
            _interrupted(job, prep, stop)
    meta = {"world_size": 1, "backend": None, "ranks": [_share(0, prep, result)]}
    return _finish(job, prep, result.stats, result, meta, lead=True)


def _start_states(
    job: _Job, prep: Prepared, world: int, found: tuple[list[Any], int] | None
) -> list[tuple[Any, int]] | None:
    """Each rank's statistics and the next sequence, from a checkpoint of any world size.

    The same world size continues each rank's own accumulators (the run ends as if never
    stopped); another one merges them onto rank 0 and deals the rest anew (exact to float64
    rounding).
    """
    from lowrank.runs.distributed import merge_in_order
    from lowrank.runs.stats import SpectrumStats

    if found is None:
        if job.resume:
            log.warning(f"--resume: no checkpoint in '{job.out}', starting from the first sequence")
        return None
    parts, next_index = found
    job.resumed_from = {"next_index": next_index, "world_size": len(parts)}
    n_seq = len(prep.sequences.lengths)
    log.info(f"resuming at sequence {next_index + 1} of {n_seq}")
    if len(parts) != world:
        log.info(
            f"the checkpoint was written by {len(parts)} rank(s), this run has {world}: rank 0 "
            "takes its merged statistics and the remaining sequences are dealt anew"
        )
        merged = merge_in_order(parts)
        layers, heads, n = merged.cumulative.shape
        empty = SpectrumStats.empty(layers, heads, n, merged.index)
        parts = [merged] + [empty] * (world - 1)
    return [(stats, next_index) for stats in parts]


def _warn_index(n: int) -> None:
    index = heatmap_index(n)
    if index != 128:
        log.warning(f"n = {n} < 512: the heatmap reads c at index n/4 = {index}, not 128")


def fitted_batch(job: _Job, prep: Prepared) -> int:
    """The batch size that fits the free memory (:func:`lowrank.spectra.memory.fit_batch`),
    decided once per job: a batch larger than the run's sequences counts as that many."""
    from lowrank.spectra.memory import fit_batch

    if job.batch is None:
        wanted = max(1, min(job.config.batch_size, len(prep.sequences.lengths)))
        job.batch = fit_batch(
            wanted, prep.loaded.num_heads, job.config.seq_len, prep.device, job.auto_batch
        )
    return job.batch


def _analyse(
    job: _Job, prep: Prepared, start: Any, progress: Callable[[int], Any], team: Any
) -> Any:
    from lowrank.spectra.pipeline import analyse

    n_seq = len(prep.sequences.lengths)
    index = heatmap_index(job.config.seq_len)
    out = job.out

    def save(parts: list[Any], next_index: int) -> None:
        if out is not None:
            write_checkpoint(out, job.identity, parts, next_index, n_seq, job.command)
            job.saved = next_index

    # torchrun ranks deal the batches by --batch-size, so they keep it (a rank's batch that
    # runs out of memory is still halved inside the rank with --auto-batch)
    batch = job.config.batch_size if team is not None else fitted_batch(job, prep)
    return analyse(
        prep.loaded,
        prep.sequences,
        index,
        batch,
        prep.device,
        precision=job.precision,
        precision_indices=figure_indices(job.config.seq_len),
        progress=progress,
        start=start,
        checkpoint=save if out is not None else None,
        checkpoint_due=_checkpoint_policy(job.checkpoint_every, job.clock),
        warn=log.warning,
        team=team,
        auto_batch=job.auto_batch,
    )


def _interrupted(job: _Job, prep: Prepared, stop: Any) -> NoReturn:
    """Ctrl-C or SIGTERM in one process: save what is done and raise
    :class:`RunInterrupted`, whose message says how to resume."""
    n_seq = len(prep.sequences.lengths)
    if stop.stats.count and job.out is not None:
        write_checkpoint(job.out, job.identity, [stop.stats], stop.next_index, n_seq, job.command)
        command = job.command if "--resume" in job.command else job.command + " --resume"
        checkpoint = job.out / "checkpoint.npz"
        raise RunInterrupted(
            f"\ninterrupted after {stop.next_index} of {n_seq} sequences; partial results are "
            f"in {checkpoint}.\nresume with: {command}",
            checkpoint,
        )
    if stop.stats.count:
        raise RunInterrupted(
            f"\ninterrupted after {stop.next_index} of {n_seq} sequences: nothing saved "
            "(give out= to keep partial results)"
        )
    raise RunInterrupted("\ninterrupted before the first batch finished: nothing saved")


def _finish(
    job: _Job, prep: Prepared, stats: Any, result: Any, ranks: dict[str, Any], lead: bool
) -> SpectrumResult:
    """The result; on the lead rank with an ``out``, also the run folder (arrays, then
    run.json), the checkpoint dropped and the figures drawn."""
    config, out, precision = job.config, job.out, job.precision
    if lead:
        for note in result.notes:
            log.warning(note)
    used = result.sequences_used
    sequences = prep.sequences
    arrays = stats_arrays(stats) | {"input_ids": sequences.input_ids[:used]}
    if (sequences.lengths[:used] < config.seq_len).any():
        arrays["attention_mask"] = sequences.attention_mask[:used]
    shard = sequences.policy.get("shard")
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "command": job.command,
        "created": job.created,
        "identity": job.identity,
        "config": config.to_json(),
        **prep.meta(config),
        "num_sequences": used,
        "heatmap_index": heatmap_index(config.seq_len),
        "shard": None if shard is None else {"index": shard[0], "count": shard[1]},
        **ranks,
        "resumed_from": job.resumed_from,
        "precision": precision_record(precision, result, config.seq_len),
        "versions": job.versions,
        "analysis_seconds": round(result.seconds, 3),
        "elapsed_seconds": round(job.clock() - job.started, 3),
    }
    res = SpectrumResult(meta, arrays, None, seconds=result.seconds)
    if out is None or not lead:
        return res
    write_run(out, meta, arrays)
    clear_checkpoint(out)
    res.path = out
    if job.plot:
        from lowrank.plots.spectrum import plot_run_folder

        res.figures = plot_run_folder(out)
    return res


def _share(rank: int, prep: Prepared, result: Any) -> dict[str, Any]:
    """What one rank did, for run.json's ``ranks``."""
    import socket

    return {
        "rank": rank,
        "host": socket.gethostname(),
        "device": _device_name(prep),
        "threads": None if prep.device.type == "cuda" else _cpu_threads(),
        "batches": result.batches,
        "num_sequences": result.own_sequences,
        "compute_seconds": round(result.compute_seconds, 3),
    }


def _device_name(prep: Prepared) -> str:
    import torch

    if prep.device.type == "cuda":
        return f"cuda:{torch.cuda.current_device()}"
    return str(prep.device)


def _cpu_threads() -> int:
    import torch

    return torch.get_num_threads()


def _bar(job: _Job, prep: Prepared, starts: Any, disable: bool = False) -> Any:
    """The progress bar over all ranks' sequences (rank 0's only; none with progress off)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=len(prep.sequences.lengths),
        initial=starts[0][1] if starts else 0,
        unit="seq",
        desc="spectrum",
        disable=disable or not job.progress,
    )


def select_shard(sequences: Any, index: int, count: int) -> Any:
    """The ``index``-th (1-based) of ``count`` contiguous, disjoint parts of the sequences."""
    from lowrank.inputs.corpora import Sequences

    if not 1 <= index <= count:
        raise LowrankError(f"--shard {index}/{count}: the index must be between 1 and {count}")
    total = len(sequences.lengths)
    if count > total:
        raise LowrankError(f"--shard {index}/{count}: only {total} sequences to split")
    part = np.array_split(np.arange(total), count)[index - 1]
    policy = sequences.policy | {
        "shard": [index, count],
        "shard_rows": [int(part[0]), int(part[-1]) + 1],
    }
    return Sequences(sequences.input_ids[part], sequences.lengths[part], policy)


def _checkpoint_policy(every: int | None, clock: Callable[[], float]) -> Callable[[int], bool]:
    """Due after ``every`` sequences, or (default) after each minute of work."""
    if every is not None:
        return lambda done: done >= every
    last = [clock()]

    def due(done: int) -> bool:
        if clock() - last[0] >= 60:
            last[0] = clock()
            return True
        return False

    return due


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (schedulers, `kill`) like Ctrl-C, so partial results are saved."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def precision_record(precision: float | None, result: Any, n: int) -> dict[str, Any] | None:
    """run.json's ``precision``: the target, the 95% half-width reached over the mean c
    values the figures read, those indices, and whether the run stopped early."""
    if precision is None:
        return None
    return {
        "target": precision,
        "achieved_half_width": result.half_width,
        "indices": figure_indices(n),
        "stopped_early": result.stopped_early,
    }


def figure_indices(n: int) -> list[int]:
    """1-based curve points the figures read: the heatmap index and n/8, n/4, n/2."""
    return sorted({heatmap_index(n), *(max(1, n // d) for d in (8, 4, 2))})
