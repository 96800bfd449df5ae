"""Workflows behind the CLI commands: load, analyse, save, summarise.

Each function takes a config, does the whole job, and reports through ``click.echo``; the
CLI only parses options.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np

from lowrank.config import SpectrumConfig, heatmap_index
from lowrank.errors import LowrankError
from lowrank.runs import (
    FORMAT,
    FORMAT_VERSION,
    check_out_dir,
    clear_checkpoint,
    read_checkpoint,
    stats_arrays,
    write_checkpoint,
    write_run,
)


def default_out(config: SpectrumConfig) -> Path:
    model = Path(config.model).name or "model"
    dataset = config.dataset or (Path(config.data).stem if config.data else "sample-wiki")
    return Path("runs") / f"{model}-{dataset}"


def _warn(message: str) -> None:
    click.echo(f"warning: {message}", err=True)


@dataclass
class Prepared:
    """Model, corpus and sequences of a run, with the metadata every run records."""

    corpus: Any
    loaded: Any
    sequences: Any
    device: Any

    def meta(self, config: SpectrumConfig) -> dict[str, Any]:
        src = self.loaded.source
        return {
            "model": {
                "name": src.name,
                "kind": src.kind,
                "path": src.location,
                "revision": src.revision,
                "model_type": self.loaded.model_type,
            },
            "corpus": {
                "dataset": self.corpus.name,
                "kind": self.corpus.kind,
                "source": self.corpus.source,
                "split": self.corpus.split,
            },
            "sequence_policy": self.sequences.policy,
            "seq_len": config.seq_len,
            "num_layers": self.loaded.num_layers,
            "num_heads": self.loaded.num_heads,
            "seed": config.seed,
            "device": str(self.device),
            "dtype": config.dtype,
            "batch_size": config.batch_size,
        }


def prepare(config: SpectrumConfig) -> Prepared:
    """Load the corpus and model and cut the sequences, checking every option on the way."""
    from lowrank.corpora import build_sequences, load_corpus
    from lowrank.models import load_model
    from lowrank.pipeline import resolve_device

    device = resolve_device(config.device)
    if config.dtype != "float32" and device.type == "cpu":
        raise LowrankError(f"--dtype {config.dtype} needs --device cuda; use float32 on the CPU")
    corpus = load_corpus(config.dataset, config.data, config.split)
    loaded = load_model(config.model, str(device), config.dtype)
    loaded.check_seq_len(config.seq_len)
    sequences = build_sequences(
        corpus,
        loaded.tokenizer,
        config.seq_len,
        config.num_sequences,
        config.seed,
        config.policy,
        config.keep_short,
    )
    policy = sequences.policy
    n_seq = len(sequences.lengths)
    if n_seq < config.num_sequences:
        _warn(
            f"corpus '{corpus.name}' yields {policy['available']} sequences of {config.seq_len} "
            f"tokens, fewer than --num-sequences {config.num_sequences}: analysing {n_seq}"
        )
    if policy.get("skipped_short"):
        click.echo(
            f"skipped {policy['skipped_short']} documents shorter than {config.seq_len} tokens "
            "(--keep-short keeps them)",
            err=True,
        )
    short = policy.get("short_sequences", 0)
    if short:
        _warn(
            f"--keep-short: {short} of {n_seq} sequences ({short / n_seq:.0%}) are shorter than "
            f"n = {config.seq_len} and padded; their spectra are those of shorter matrices and "
            "bias the means toward short documents"
        )
    click.echo(
        f"{loaded.source.name}: {loaded.num_layers} layers x {loaded.num_heads} heads, "
        f"{n_seq} sequences of {config.seq_len} tokens from {corpus.name} on {device}",
        err=True,
    )
    return Prepared(corpus, loaded, sequences, device)


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
) -> Path:
    """``lowrank spectrum``: the whole job, from model and corpus to a run folder.

    Long runs save their accumulators to ``<out>/checkpoint.{npz,json}`` every
    ``checkpoint_every`` sequences (default: after each minute of work) and on Ctrl-C or
    SIGTERM; ``resume`` continues from there. ``shard = (i, N)`` analyses the i-th of N
    contiguous, disjoint parts of the sequence list (``lowrank merge`` combines them).
    """
    from tqdm import tqdm

    from lowrank.pipeline import Interrupted, analyse, per_layer_table

    start = clock()
    out = out or default_out(config)
    identity = config.identity() | ({"shard": list(shard)} if shard else {})
    check_out_dir(out, identity, overwrite, resume=resume)
    prep = prepare(config)
    loaded, device = prep.loaded, prep.device
    sequences = prep.sequences
    if shard is not None:
        sequences = select_shard(sequences, *shard)
        prep.sequences = sequences
        click.echo(f"shard {shard[0]}/{shard[1]}: {len(sequences.lengths)} sequences", err=True)
    n_seq = len(sequences.lengths)
    index = heatmap_index(config.seq_len)
    if index != 128:
        _warn(f"n = {config.seq_len} < 512: the heatmap reads c at index n/4 = {index}, not 128")
    begin = read_checkpoint(out, identity) if resume else None
    if resume and begin is None:
        _warn(f"--resume: no checkpoint in '{out}', starting from the first sequence")
    if begin is not None:
        click.echo(f"resuming at sequence {begin[1] + 1} of {n_seq}", err=True)
    due = _checkpoint_policy(checkpoint_every, clock)

    def save(stats: Any, next_index: int) -> None:
        write_checkpoint(out, identity, stats, next_index, n_seq, command)

    with (
        _sigterm_as_interrupt(),
        tqdm(
            total=n_seq,
            initial=begin[1] if begin else 0,
            unit="seq",
            desc="spectrum",
            file=sys.stderr,
        ) as bar,
    ):
        try:
            result = analyse(
                loaded,
                sequences,
                index,
                config.batch_size,
                device,
                precision=precision,
                precision_indices=figure_indices(config.seq_len),
                progress=bar.update,
                start=begin,
                checkpoint=save,
                checkpoint_due=due,
                warn=_warn,
            )
        except Interrupted as stop:
            bar.close()
            if stop.stats.count:
                save(stop.stats, stop.next_index)
                click.echo(
                    f"\ninterrupted after {stop.next_index} of {n_seq} sequences; partial "
                    f"results are in {out / 'checkpoint.npz'}.\nresume with: "
                    f"{command if '--resume' in command else command + ' --resume'}",
                    err=True,
                )
            else:
                click.echo("\ninterrupted before the first batch finished: nothing saved", err=True)
            sys.exit(130)
    for note in result.notes:
        _warn(note)
    used = result.sequences_used
    arrays = stats_arrays(result.stats) | {"input_ids": sequences.input_ids[:used]}
    if (sequences.lengths[:used] < config.seq_len).any():
        arrays["attention_mask"] = sequences.attention_mask[:used]
    meta: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "command": command,
        "created": created,
        "identity": identity,
        "config": config.to_json(),
        **prep.meta(config),
        "num_sequences": used,
        "heatmap_index": index,
        "shard": None if shard is None else {"index": shard[0], "count": shard[1]},
        "precision": None
        if precision is None
        else {
            "target": precision,
            "achieved_half_width": result.half_width,
            "indices": figure_indices(config.seq_len),
            "stopped_early": result.stopped_early,
        },
        "versions": versions,
        "analysis_seconds": round(result.seconds, 3),
        "elapsed_seconds": round(clock() - start, 3),
    }
    write_run(out, meta, arrays)
    clear_checkpoint(out)
    _summary(per_layer_table(result.stats), index, used, result.seconds, out, precision, result)
    if plot:
        from lowrank.figures import plot_run_folder

        for path in plot_run_folder(out):
            click.echo(f"figure: {path}")
    return out


def select_shard(sequences: Any, index: int, count: int) -> Any:
    """The ``index``-th (1-based) of ``count`` contiguous, disjoint parts of the sequences."""
    from lowrank.corpora import Sequences

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
