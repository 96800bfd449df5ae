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
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from lowrank.core.options import named, switch
from lowrank.errors import LowrankError
from lowrank.families.spectrum.job import (
    Inputs,
    Job,
    analyse_job,
    check_inputs,
    finish,
    fitted_batch,
    progress_bar,
    select_shard,
    share,
    start_states,
    warn_index,
)
from lowrank.families.spectrum.result import SpectrumResult
from lowrank.families.spectrum.stats import CODEC
from lowrank.families.spectrum.team import run_team
from lowrank.inputs.config import InputConfig
from lowrank.inputs.prepared import Prepared
from lowrank.inputs.state import preserved
from lowrank.runs.checkpoints import (
    RunInterrupted,
    read_checkpoint,
    sigterm_as_interrupt,
    write_checkpoint,
)
from lowrank.runs.distributed import launch_from_env
from lowrank.runs.locks import hold
from lowrank.runs.writing import check_out_dir

log = logging.getLogger(__name__)

__all__ = ["Inputs", "RunInterrupted", "run_spectrum"]


def run_spectrum(
    config: InputConfig,
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
    label: str | None = None,
    keep_per_sequence: bool = False,
) -> SpectrumResult:
    """The whole spectrum job, from model and corpus to a result (and a run folder at
    ``out``; None writes nothing).

    Long runs save their accumulators to ``<out>/checkpoint.{npz,json}`` every
    ``checkpoint_every`` sequences (default: after each minute of work) and on Ctrl-C or
    SIGTERM (then :class:`RunInterrupted` is raised); ``resume`` continues from there.
    ``shard = (i, N)`` analyses the i-th of N contiguous, disjoint parts of the sequence
    list (:func:`lowrank.merge` combines them).

    Launched by torchrun (the torch.distributed variables set), every rank runs this function: the
    ranks split the batches round-robin, rank 0 writes the run folder and every rank returns the
    merged result (:func:`lowrank.families.spectrum.team.run_team`). ``backend`` overrides gloo
    (CPU) or nccl (CUDA); ``verbose`` lets every rank log its messages, not only rank 0. The batch
    size is checked against the free memory before the first batch
    (:func:`lowrank.families.spectrum.batching.fit_batch`); ``auto_batch`` cuts a batch that does
    not fit, and halves one that still runs out of memory, instead of stopping with one line. An
    in-memory model is restored as found when the job ends, also on error.

    The process that writes ``out`` holds its lock (:mod:`lowrank.runs.locks`) for the whole
    job, so a second writer is refused; the inputs are fingerprinted once prepared, and a
    resume, or the replacement of a complete run of these options, from other inputs is
    refused (:func:`lowrank.families.spectrum.job.check_inputs`); the run folder is committed
    whole, in one step (:mod:`lowrank.runs.commit`).
    """
    identity = config.identity() | ({"shard": list(shard)} if shard else {})
    job = Job(
        config, inputs, out, identity, overwrite, resume, precision, command, checkpoint_every,
        clock, versions, created, plot, progress, clock(), auto_batch, label=label,
        keep_per_sequence=keep_per_sequence,
    )  # fmt: skip
    launch = launch_from_env()
    with preserved(inputs.model):
        if launch is not None:
            return run_team(job, launch, shard, backend, verbose)
        with hold(job.out):  # one writer per run folder, from the first check to the commit
            return _run_alone(job, shard, backend)


def _run_alone(job: Job, shard: tuple[int, int] | None, backend: str | None) -> SpectrumResult:
    from lowrank.families.spectrum.pipeline import Interrupted

    if backend is not None:
        log.warning(
            f"{named('backend', backend)} has no effect: this is one process, not a torchrun launch"
        )
    found = None
    if job.out is not None and not job.inputs.in_memory:  # before the model loads for nothing
        check_out_dir(job.out, job.identity, job.overwrite, resume=job.resume)
        if job.resume:  # a damaged checkpoint is refused before the model loads
            found = read_checkpoint(job.out, job.identity, CODEC)
    prep = job.inputs.prepare(job.config)
    if job.inputs.in_memory:
        job.identity |= job.inputs.identity(prep)
        if job.out is not None:
            check_out_dir(job.out, job.identity, job.overwrite, resume=job.resume)
            if job.resume:
                found = read_checkpoint(job.out, job.identity, CODEC)
    if shard is not None:
        prep.sequences = select_shard(prep.sequences, *shard)
        log.info(f"shard {shard[0]}/{shard[1]}: {len(prep.sequences.lengths)} sequences")
    if found is not None and found[1] > len(prep.sequences.lengths):
        raise LowrankError(
            f"'{job.out}/checkpoint.json' says {found[1]} sequences were done, but this run has "
            f"{len(prep.sequences.lengths)}: pass {switch('overwrite')} (not "
            f"{switch('resume')}) to start again"
        )
    check_inputs(job, prep, found)  # a checkpoint or a run of other inputs is not continued
    begin = start_states(job, prep, 1, found)
    warn_index(job.config.seq_len)
    fitted_batch(job, prep)  # refused before the progress bar starts
    with sigterm_as_interrupt(), progress_bar(job, prep, begin) as bar:
        try:
            result = analyse_job(job, prep, begin[0] if begin else None, bar.update, None)
        except Interrupted as stop:
            bar.close()
            _interrupted(job, prep, stop)
    meta = {"world_size": 1, "backend": None, "ranks": [share(0, prep, result)]}
    return finish(job, prep, result.stats, result, meta, lead=True)


def _interrupted(job: Job, prep: Prepared, stop: Any) -> NoReturn:
    """Ctrl-C or SIGTERM in one process: save what is done and raise
    :class:`RunInterrupted`, whose message says how to resume."""
    n_seq = len(prep.sequences.lengths)
    if stop.stats.count and job.out is not None:
        write_checkpoint(
            job.out,
            job.identity,
            [stop.stats],
            stop.next_index,
            n_seq,
            job.command,
            CODEC,
            job.fingerprint,
        )
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
