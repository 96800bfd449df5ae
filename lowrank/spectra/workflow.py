"""Workflows behind the CLI commands: load, analyse, save, summarise.

Each function takes a config, does the whole job, and reports through ``click.echo``; the
CLI only parses options.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from lowrank.errors import LowrankError
from lowrank.inputs.prepared import Prepared, prepare
from lowrank.runs.folders import (
    FORMAT,
    FORMAT_VERSION,
    check_out_dir,
    clear_checkpoint,
    read_checkpoint,
    stats_arrays,
    write_checkpoint,
    write_run,
)
from lowrank.spectra.config import SpectrumConfig, heatmap_index

log = logging.getLogger(__name__)


def default_out(config: SpectrumConfig) -> Path:
    model = Path(config.model).name or "model"
    dataset = config.dataset or (Path(config.data).stem if config.data else "sample-wiki")
    return Path("runs") / f"{model}-{dataset}"


@dataclass
class _Job:
    """One ``lowrank spectrum`` invocation: its options, and the checkpoint it last saved."""

    config: SpectrumConfig
    out: Path
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
    started: float
    saved: int = 0  # sequences in the last checkpoint written (0: none)
    resumed_from: dict[str, int] | None = None


def run_spectrum(
    config: SpectrumConfig,
    out: Path | None,
    overwrite: bool,
    plot: bool,
    precision: float | None,
    command: str,
    versions: dict[str, str],
    created: str,
    clock: Callable[[], float],
    shard: tuple[int, int] | None = None,
    resume: bool = False,
    checkpoint_every: int | None = None,
    backend: str | None = None,
    verbose: bool = False,
) -> Path:
    """``lowrank spectrum``: the whole job, from model and corpus to a run folder.

    Long runs save their accumulators to ``<out>/checkpoint.{npz,json}`` every
    ``checkpoint_every`` sequences (default: after each minute of work) and on Ctrl-C or
    SIGTERM; ``resume`` continues from there. ``shard = (i, N)`` analyses the i-th of N
    contiguous, disjoint parts of the sequence list (``lowrank merge`` combines them).

    Launched by torchrun (the torch.distributed variables set), every rank runs this
    function: the ranks split the batches round-robin and rank 0 writes the run folder
    (:func:`_run_team`). ``backend`` overrides gloo (CPU) or nccl (CUDA); ``verbose`` lets
    every rank print its messages, not only rank 0.
    """
    from lowrank.runs.distributed import launch_from_env
    from lowrank.spectra.pipeline import Interrupted

    out = out or default_out(config)
    identity = config.identity() | ({"shard": list(shard)} if shard else {})
    job = _Job(
        config, out, identity, overwrite, resume, precision, command, checkpoint_every,
        clock, versions, created, plot, clock(),
    )  # fmt: skip
    launch = launch_from_env()
    if launch is not None:
        return _run_team(job, launch, shard, backend, verbose)
    if backend is not None:
        log.warning(
            f"--backend {backend} has no effect: this is one process, not a torchrun launch"
        )
    check_out_dir(out, identity, overwrite, resume=resume)
    prep = prepare(config)
    if shard is not None:
        prep.sequences = select_shard(prep.sequences, *shard)
        click.echo(
            f"shard {shard[0]}/{shard[1]}: {len(prep.sequences.lengths)} sequences", err=True
        )
    begin = _start_states(job, prep, 1, read_checkpoint(out, identity) if resume else None)
    _warn_index(config.seq_len)
    with _sigterm_as_interrupt(), _bar(job, prep, begin) as bar:
        try:
            result = _analyse(job, prep, begin[0] if begin else None, bar.update, None)
        except Interrupted as stop:
            bar.close()
            _interrupted(job, prep, stop)
    meta = {"world_size": 1, "backend": None, "ranks": [_share(0, prep, result)]}
    _finish(job, prep, result.stats, result, meta)
    return out


def _run_team(
    job: _Job, launch: Any, shard: tuple[int, int] | None, backend: Any, verbose: bool
) -> Path:
    """``lowrank spectrum`` on one rank of a torchrun launch.

    Problems every rank finds alike (bad options, a refused --out, a missing model) are one
    line from rank 0, exit 2. When a rank fails, dies, hangs or is interrupted, the others
    leave within the collective timeout and rank 0 names the rank and the cause in one line;
    the run folder keeps its earlier run and its last checkpoint.
    """
    import torch

    from lowrank.runs.distributed import Team, choose_backend, collective_timeout, cpu_threads
    from lowrank.spectra.pipeline import resolve_device

    try:
        if shard is not None:
            raise LowrankError(
                "--shard splits a run into separate jobs, and torchrun's ranks split it "
                "already: drop --shard, or launch without torchrun"
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
        team = Team.start(launch, chosen, timeout)
    except LowrankError:
        if launch.rank == 0 or verbose:
            raise
        sys.exit(2)  # every rank meets the same problem; rank 0 says it
    import signal

    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with _quiet(not (team.lead or verbose)):
            _team_body(job, team, verbose)
    except (Exception, KeyboardInterrupt) as exc:
        _team_failure(job, team, exc, verbose)
    signal.signal(signal.SIGTERM, previous)
    team.close()
    return job.out


def _team_body(job: _Job, team: Any, verbose: bool) -> None:
    """Set up, analyse this rank's batches, then merge every rank's statistics on rank 0."""
    from lowrank.runs.distributed import merge_in_order

    prep, starts, start = _team_setup(job, team)
    each = "one GPU" if prep.device.type == "cuda" else f"{_cpu_threads()} CPU thread(s)"
    click.echo(
        f"{team.world} ranks ({team.backend}; {each} each): rank r analyses batches r, "
        f"r + {team.world}, r + {2 * team.world}, ... of {job.config.batch_size} sequences",
        err=True,
    )
    _warn_index(job.config.seq_len)
    batches = -(-len(prep.sequences.lengths) // job.config.batch_size)
    if team.lead and batches < team.world:
        log.warning(
            f"{len(prep.sequences.lengths)} sequences make {batches} batch(es) of "
            f"{job.config.batch_size} for {team.world} ranks: {team.world - batches} rank(s) "
            "will idle; a smaller --batch-size spreads them"
        )
    with _bar(job, prep, starts, disable=not team.lead) as bar:
        result = _analyse(job, prep, start, bar.update, team)
    share = _share(team.rank, prep, result)
    tick = job.clock()  # the ranks left the last round's collective together
    parts = team.gather((result.stats, share))
    if verbose and not team.lead:
        click.echo(_share_line(share), err=True)
    if parts is None:
        return
    merged = merge_in_order([stats for stats, _ in parts])
    meta = {
        "world_size": team.world,
        "backend": team.backend,
        "ranks": [s for _, s in parts],
        "merge_seconds": round(job.clock() - tick, 6),
    }
    _finish(job, prep, merged, result, meta)


def _team_setup(job: _Job, team: Any) -> tuple[Prepared, Any, Any]:
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
        if team.lead:
            check_out_dir(job.out, job.identity, job.overwrite, resume=job.resume)

    step(check)  # before every rank loads the model for nothing
    prep = step(lambda: prepare(job.config))
    seqs = prep.sequences
    digest = hashlib.sha256(seqs.input_ids.tobytes() + seqs.lengths.tobytes()).hexdigest()
    for rank, other in enumerate(team.all_gather(digest)):
        if other != digest:
            raise SharedError(
                f"rank {rank} cut other sequences than rank 0: every node needs the same "
                "--data, model and tokenizer files"
            )
    found = step(
        lambda: read_checkpoint(job.out, job.identity) if team.lead and job.resume else None
    )
    starts = _start_states(job, prep, team.world, found) if team.lead else None
    start = team.scatter(starts if starts is not None else [None] * team.world)
    return prep, starts, start


def _team_failure(job: _Job, team: Any, exc: BaseException, verbose: bool) -> None:
    """Stop this rank after ``exc``: the rank that reports prints one line; never returns."""
    from lowrank.runs.distributed import PeerFailure, SharedError
    from lowrank.spectra.pipeline import Interrupted

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
        kept += " (a checkpoint there continues with --resume)"
    elif job.saved:
        kept += (
            f"; its checkpoint holds the first {job.saved} sequences: the same command with "
            "--resume continues them, on any number of ranks"
        )
    if line == "interrupted":
        click.echo(f"\ninterrupted: {kept}", err=True)
        sys.exit(130)
    click.echo(f"error: {line}; {kept}", err=True)
    sys.exit(2)


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
    click.echo(f"resuming at sequence {next_index + 1} of {n_seq}", err=True)
    if len(parts) != world:
        click.echo(
            f"the checkpoint was written by {len(parts)} rank(s), this run has {world}: rank 0 "
            "takes its merged statistics and the remaining sequences are dealt anew",
            err=True,
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


def _analyse(
    job: _Job, prep: Prepared, start: Any, progress: Callable[[int], Any], team: Any
) -> Any:
    from lowrank.spectra.pipeline import analyse

    n_seq = len(prep.sequences.lengths)
    index = heatmap_index(job.config.seq_len)

    def save(parts: list[Any], next_index: int) -> None:
        write_checkpoint(job.out, job.identity, parts, next_index, n_seq, job.command)
        job.saved = next_index

    return analyse(
        prep.loaded,
        prep.sequences,
        index,
        job.config.batch_size,
        prep.device,
        precision=job.precision,
        precision_indices=figure_indices(job.config.seq_len),
        progress=progress,
        start=start,
        checkpoint=save,
        checkpoint_due=_checkpoint_policy(job.checkpoint_every, job.clock),
        warn=log.warning,
        team=team,
    )


def _interrupted(job: _Job, prep: Prepared, stop: Any) -> None:
    """Ctrl-C or SIGTERM in one process: save what is done, say how to resume, exit 130."""
    n_seq = len(prep.sequences.lengths)
    if stop.stats.count:
        write_checkpoint(job.out, job.identity, [stop.stats], stop.next_index, n_seq, job.command)
        command = job.command if "--resume" in job.command else job.command + " --resume"
        click.echo(
            f"\ninterrupted after {stop.next_index} of {n_seq} sequences; partial results are "
            f"in {job.out / 'checkpoint.npz'}.\nresume with: {command}",
            err=True,
        )
    else:
        click.echo("\ninterrupted before the first batch finished: nothing saved", err=True)
    sys.exit(130)


def _finish(job: _Job, prep: Prepared, stats: Any, result: Any, ranks: dict[str, Any]) -> None:
    """Write the run folder (arrays, then run.json), drop the checkpoint, print the summary."""
    from lowrank.spectra.pipeline import per_layer_table

    config, out, precision = job.config, job.out, job.precision
    for note in result.notes:
        log.warning(note)
    used = result.sequences_used
    sequences = prep.sequences
    arrays = stats_arrays(stats) | {"input_ids": sequences.input_ids[:used]}
    if (sequences.lengths[:used] < config.seq_len).any():
        arrays["attention_mask"] = sequences.attention_mask[:used]
    shard = sequences.policy.get("shard")
    index = heatmap_index(config.seq_len)
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "command": job.command,
        "created": job.created,
        "identity": job.identity,
        "config": config.to_json(),
        **prep.meta(config),
        "num_sequences": used,
        "heatmap_index": index,
        "shard": None if shard is None else {"index": shard[0], "count": shard[1]},
        **ranks,
        "resumed_from": job.resumed_from,
        "precision": precision_record(precision, result, config.seq_len),
        "versions": job.versions,
        "analysis_seconds": round(result.seconds, 3),
        "elapsed_seconds": round(job.clock() - job.started, 3),
    }
    write_run(out, meta, arrays)
    clear_checkpoint(out)
    _summary(per_layer_table(stats), index, used, result.seconds, out, precision, result)
    if ranks["world_size"] > 1:
        for share in ranks["ranks"]:
            click.echo(_share_line(share))
    if job.plot:
        from lowrank.plots.spectrum import plot_run_folder

        for path in plot_run_folder(out):
            click.echo(f"figure: {path}")


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


def _share_line(share: dict[str, Any]) -> str:
    return (
        f"rank {share['rank']} ({share['host']}, {share['device']}): {share['num_sequences']} "
        f"sequences in {share['batches']} batches, {share['compute_seconds']:.1f} s of compute"
    )


def _device_name(prep: Prepared) -> str:
    import torch

    if prep.device.type == "cuda":
        return f"cuda:{torch.cuda.current_device()}"
    return str(prep.device)


def _cpu_threads() -> int:
    import torch

    return torch.get_num_threads()


def _bar(job: _Job, prep: Prepared, starts: Any, disable: bool = False) -> Any:
    """The progress bar over all ranks' sequences (rank 0's only)."""
    from tqdm import tqdm

    return tqdm(
        total=len(prep.sequences.lengths),
        initial=starts[0][1] if starts else 0,
        unit="seq",
        desc="spectrum",
        file=sys.stderr,
        disable=disable,
    )


@contextmanager
def _quiet(on: bool) -> Iterator[None]:
    """Send this rank's messages to /dev/null (tracebacks still reach the terminal)."""
    if not on:
        yield
        return
    with (
        Path(os.devnull).open("w") as sink,
        redirect_stdout(sink),
        redirect_stderr(sink),
    ):
        yield


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


def _summary(
    table: np.ndarray,
    index: int,
    used: int,
    seconds: float,
    out: Path,
    precision: float | None,
    result: Any,
) -> None:
    click.echo(f"\nmean normalized cumulative singular value at index {index} (over heads):")
    click.echo("  layer   mean c   std across heads")
    for layer, (mean, std) in enumerate(table, 1):
        click.echo(f"  {layer:>5}   {mean:.4f}   {std:.4f}")
    rate = used / seconds if seconds > 0 else float("nan")
    click.echo(f"{used} sequences in {seconds:.1f} s ({rate:.2f} seq/s)")
    if precision is not None:
        click.echo(
            f"precision: 95% half-width {result.half_width:.4g} (target {precision}) "
            f"after {used} sequences"
        )
    click.echo(f"run folder: {out}  ({out / 'run.json'}, {out / 'spectrum.npz'})")
