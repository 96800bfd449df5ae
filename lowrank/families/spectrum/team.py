"""The spectrum job on the ranks of a torchrun launch (see :func:`run_team`).

Every rank runs :func:`lowrank.families.spectrum.workflow.run_spectrum`; when the torch.distributed
variables are set it comes here. The ranks deal the batches round-robin, agree after each
set-up step, merge their statistics in rank order on rank 0, which writes the run folder,
and all return the merged result. Only rank 0 logs (``verbose``: every rank).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, NoReturn

from lowrank.core.options import flag, switch
from lowrank.errors import LowrankError
from lowrank.families.spectrum.job import (
    Job,
    analyse_job,
    check_inputs,
    cpu_threads,
    finish,
    progress_bar,
    share,
    start_states,
    warn_index,
)
from lowrank.families.spectrum.result import SpectrumResult, share_line
from lowrank.families.spectrum.stats import CODEC
from lowrank.inputs.prepared import Prepared
from lowrank.runs import locks
from lowrank.runs.checkpoints import RunInterrupted, read_checkpoint
from lowrank.runs.writing import check_out_dir

log = logging.getLogger(__name__)


def run_team(
    job: Job, launch: Any, shard: tuple[int, int] | None, backend: Any, verbose: bool
) -> SpectrumResult:
    """The spectrum job on one rank of a torchrun launch.

    Problems every rank finds alike (bad options, a refused --out, a missing model) are
    raised on rank 0; the other ranks exit with code 2 without a word. When a rank fails,
    dies, hangs or is interrupted, the others leave within the collective timeout and rank
    0 raises one line naming the rank and the cause; the run folder keeps its earlier run
    and its last checkpoint.
    """
    import torch

    from lowrank.core.device import resolve_device
    from lowrank.runs.distributed import (
        Team,
        check_rendezvous,
        choose_backend,
        collective_timeout,
        cpu_threads,
    )

    try:
        if shard is not None:
            raise LowrankError(
                f"{flag('shard')} splits a run into separate jobs, and torchrun's ranks split it "
                f"already: drop {flag('shard')}, or launch without torchrun"
            )
        device = resolve_device(job.config.device)
        chosen = choose_backend(backend, device.type == "cuda")
        timeout = collective_timeout()
        if device.type == "cuda":
            if launch.local_rank >= torch.cuda.device_count():
                raise LowrankError(
                    f"LOCAL_RANK {launch.local_rank}, but {torch.cuda.device_count()} GPUs are "
                    "visible: start at most one rank per GPU (--nproc-per-node)"
                )
            torch.cuda.set_device(launch.local_rank)
        else:
            torch.set_num_threads(cpu_threads(launch.local_world))
        check_rendezvous(launch)  # a bad MASTER_ADDR is one line, not minutes of retries
        team = Team.start(launch, chosen, timeout)
    except LowrankError:
        if launch.rank == 0 or verbose:
            raise
        sys.exit(2)  # every rank meets the same problem; rank 0 says it
    import signal

    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with _quiet(not (team.lead or verbose)):
            result = _body(job, team, verbose)
    except (Exception, KeyboardInterrupt) as exc:
        _failure(job, team, exc, verbose)
    finally:
        if job.locked and job.out is not None:
            locks.release(job.out)  # taken in _setup's first step
    signal.signal(signal.SIGTERM, previous)
    team.close()
    return result


def _body(job: Job, team: Any, verbose: bool) -> SpectrumResult:
    """Set up, analyse this rank's batches, merge every rank's statistics on rank 0, and
    hand the merged statistics to every rank."""
    from lowrank.runs.distributed import merge_in_order

    prep, starts, start = _setup(job, team)
    each = "one GPU" if prep.device.type == "cuda" else f"{cpu_threads()} CPU thread(s)"
    log.info(
        f"{team.world} ranks ({team.backend}; {each} each): rank r analyses batches r, "
        f"r + {team.world}, r + {2 * team.world}, ... of {job.config.batch_size} sequences"
    )
    warn_index(job.config.seq_len)
    batches = -(-len(prep.sequences.lengths) // job.config.batch_size)
    if team.lead and batches < team.world:
        log.warning(
            f"{len(prep.sequences.lengths)} sequences make {batches} batch(es) of "
            f"{job.config.batch_size} for {team.world} ranks: {team.world - batches} rank(s) "
            f"will idle; a smaller {flag('batch_size')} spreads them"
        )
    with progress_bar(job, prep, starts, disable=not team.lead) as bar:
        result = analyse_job(job, prep, start, bar.update, team)
    mine = share(team.rank, prep, result)
    tick = job.clock()  # the ranks left the last round's collective together
    parts = team.gather((result.stats, mine))
    if verbose and not team.lead:
        log.info(share_line(mine))
    merged: Any = None
    meta: dict[str, Any] | None = None
    if parts is not None:
        merged = merge_in_order([stats for stats, _ in parts])
        meta = {
            "world_size": team.world,
            "backend": team.backend,
            "ranks": [s for _, s in parts],
            "merge_seconds": round(job.clock() - tick, 6),
        }
    merged, meta = team.broadcast((merged, meta) if team.lead else None)
    return finish(job, prep, merged, result, meta or {}, lead=team.lead)


def _setup(job: Job, team: Any) -> tuple[Prepared, Any, Any]:
    """Check --out (rank 0), prepare (every rank) and read the checkpoint (rank 0), the
    ranks agreeing after each step; then hand each rank its starting statistics."""
    import hashlib

    from lowrank.runs.distributed import SharedError

    def step(work: Callable[[], Any]) -> Any:
        value, error = None, None
        try:
            value = work()
        except LowrankError as exc:
            error = str(exc)
        team.agree(error)
        return value

    def check() -> None:
        if team.lead and job.out is not None:
            if not job.locked:  # rank 0 writes: it holds the lock for the run
                locks.acquire(job.out)
                job.locked = True
            check_out_dir(job.out, job.identity, job.overwrite, resume=job.resume)

    if not job.inputs.in_memory:
        step(check)  # before every rank loads the model for nothing
    prep = step(lambda: job.inputs.prepare(job.config))
    seqs = prep.sequences
    digest = hashlib.sha256(seqs.input_ids.tobytes() + seqs.lengths.tobytes()).hexdigest()
    for rank, other in enumerate(team.all_gather(digest)):
        if other != digest:
            raise SharedError(
                f"rank {rank} cut other sequences than rank 0: every node needs the same "
                f"{flag('data')}, model and tokenizer files"
            )
    if job.inputs.in_memory:
        job.identity |= job.inputs.identity(prep)
        step(check)
    found = step(
        lambda: (
            read_checkpoint(job.out, job.identity, CODEC)
            if team.lead and job.resume and job.out is not None
            else None
        )
    )
    step(lambda: check_inputs(job, prep, found, check=team.lead))
    starts = start_states(job, prep, team.world, found) if team.lead else None
    start = team.scatter(starts if starts is not None else [None] * team.world)
    return prep, starts, start


def _failure(job: Job, team: Any, exc: BaseException, verbose: bool) -> NoReturn:
    """Stop this rank after ``exc``: the rank that reports raises one line (LowrankError,
    or RunInterrupted); the others exit with code 2 or 130 without a word. Never returns."""
    from lowrank.families.spectrum.pipeline import Interrupted
    from lowrank.runs.distributed import PeerFailure, SharedError

    reports = team.lead or verbose
    if isinstance(exc, SharedError):  # every rank raised it: no one to wait for
        team.close()
        if reports:
            raise exc
        sys.exit(2)
    if isinstance(exc, PeerFailure):
        kind, cause = "lost", str(exc)
    elif isinstance(exc, KeyboardInterrupt | Interrupted):
        kind, cause = "interrupted", "interrupted"
    elif isinstance(exc, LowrankError):
        kind, cause = "failed", str(exc)
    else:
        kind, cause = "failed", f"{type(exc).__name__}: {exc}"
    line = team.stop(kind, cause)
    if kind == "failed":
        if reports or not isinstance(exc, LowrankError):
            raise exc  # a bug keeps its traceback on its own rank
        sys.exit(2)
    if line is None:
        sys.exit(130 if kind == "interrupted" else 2)
    kept = f"no run was written to '{job.out}'"
    if not team.lead:  # rank 0 is gone: it alone knew its checkpoints
        kept += f" (a checkpoint there continues with {switch('resume')})"
    elif job.saved:
        kept += (
            f"; its checkpoint holds the first {job.saved} sequences: the same command with "
            f"{flag('resume')} continues them, on any number of ranks"
        )
    if line == "interrupted":
        raise RunInterrupted(f"\ninterrupted: {kept}")
    raise LowrankError(f"{line}; {kept}") from None


@contextmanager
def _quiet(on: bool) -> Iterator[None]:
    """Silence this rank: lowrank's log records, and what other libraries write to the
    terminal (tracebacks still reach it)."""
    if not on:
        yield
        return
    logger = logging.getLogger("lowrank")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with (
            Path(os.devnull).open("w") as sink,
            redirect_stdout(sink),
            redirect_stderr(sink),
        ):
            yield
    finally:
        logger.setLevel(level)
