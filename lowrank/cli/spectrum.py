"""`lowrank spectrum`: the paper's Figure 1 statistics."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import click

from lowrank.cli.common import (
    _model_help,
    _versions,
    command_line,
    handle_errors,
    main,
    parse_shard,
)
from lowrank.errors import LowrankError, require_finite_positive
from lowrank.spectra.config import (
    PAPER_NUM_SEQUENCES,
    PAPER_SEQ_LEN,
    DatasetName,
    Device,
    DType,
    Policy,
    SpectrumConfig,
)


@main.command()
@click.option("--model", default="minilm", show_default=True, help=_model_help())
@click.option(
    "--dataset",
    type=click.Choice(get_args(DatasetName)),
    default=None,
    help="Corpus: embedded samples (sample-wiki, the default; sample-imdb), WikiText-103 "
    "(wiki103) or IMDB (imdb) from the hub or from --data, or a plain text file (text). "
    "Inferred from --data when omitted.",
)
@click.option(
    "--data",
    type=click.Path(path_type=str),
    default=None,
    help="Local corpus: wiki.{split}.raw/.tokens or their folder, an aclImdb folder, a "
    ".csv/.jsonl/.parquet with a 'text' or 'review' column, or a .txt file.",
)
@click.option("--split", default="test", show_default=True, help="Corpus split.")
@click.option(
    "--seq-len",
    type=int,
    default=PAPER_SEQ_LEN,
    show_default=True,
    help="n: tokens per sequence, special tokens included (the paper: 512).",
)
@click.option(
    "--num-sequences",
    type=click.IntRange(min=1),
    default=PAPER_NUM_SEQUENCES,
    show_default=True,
    help="Sequences to analyse (the paper: 10k), capped by what the corpus holds.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True)
@click.option(
    "--seed",
    type=int,
    default=None,
    help="Analyse a seeded random sample of the sequences instead of the first ones.",
)
@click.option(
    "--policy",
    type=click.Choice(get_args(Policy)),
    default="auto",
    show_default=True,
    help="pack: windows of the token stream (articles); document: one sequence per "
    "document (reviews); auto: by corpus kind.",
)
@click.option(
    "--keep-short",
    is_flag=True,
    help="Document policy: pad documents shorter than n instead of skipping them "
    "(their spectra are those of the valid block, padded with zeros, which biases the means "
    "toward short documents; the run warns and records how many are short).",
)
@click.option(
    "--precision",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop once the 95% half-width of every mean c value the figures use is below "
    "this (e.g. 0.005); --num-sequences stays the cap. Use with --seed for a random order.",
)
@click.option("--device", type=click.Choice(get_args(Device)), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(get_args(DType)), default="float32", show_default=True)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Run folder (default: runs/<model>-<dataset>).",
)
@click.option("--overwrite", is_flag=True, help="Replace a run folder from another configuration.")
@click.option("--plot", is_flag=True, help="Draw the run's figures into <out>/figures.")
@click.option(
    "--shard",
    type=str,
    default=None,
    help="i/N: analyse the i-th (1-based) of N contiguous, disjoint parts of the sequence "
    "list; combine the parts with `lowrank merge`.",
)
@click.option("--resume", is_flag=True, help="Continue the partial run saved in --out.")
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=1),
    default=None,
    help="Save the accumulators every N sequences (default: after each minute of work).",
)
@click.option(
    "--backend",
    type=click.Choice(["gloo", "nccl"]),
    default=None,
    help="Under torchrun: the torch.distributed backend (default: gloo on the CPU, nccl on "
    "CUDA). See 'Running on a cluster' in the README.",
)
@click.option(
    "--verbose",
    is_flag=True,
    help="Under torchrun: every rank prints its messages (default: only rank 0).",
)
@handle_errors
def spectrum(**opts: Any) -> None:
    """Singular-value spectra of every attention matrix P (the paper's Figure 1).

    For each sequence, layer and head: the singular values s of P (n x n), the normalized
    cumulative curve c_i = sum_{j<=i} s_j / sum_j s_j, and summaries (c at index 128, ranks
    for 90% and 99%, effective and stable rank); means and standard deviations over
    sequences go to <out>/spectrum.npz and the configuration to <out>/run.json.

    Decoder models (GPT-2, Llama, Mistral, Qwen2; run.json records causal: true) have a
    causal P: lower-triangular, each row attending to the past only. Such a P is always
    invertible (its eigenvalues are its diagonal entries, all positive), its first rows are
    sharp because they have few keys, and its best rank-k approximation reaches into the
    future, which a causal model may not use. So its c and ranks are bounds: a causal
    rank-k attention captures at most c_k and needs at least these ranks. They do not
    compare one to one with an encoder's (README, "Causal attention").
    """
    from lowrank.spectra.workflow import run_spectrum

    precision = opts.pop("precision")
    if precision is not None:
        require_finite_positive("--precision", precision)
    out, overwrite, plot = opts.pop("out"), opts.pop("overwrite"), opts.pop("plot")
    shard, resume, every = (
        parse_shard(opts.pop("shard")),
        opts.pop("resume"),
        opts.pop("checkpoint_every"),
    )
    backend, verbose = opts.pop("backend"), opts.pop("verbose")
    config = SpectrumConfig(**opts)
    if config.seq_len < 2:
        raise LowrankError(f"--seq-len {config.seq_len} is too short: use at least 2 tokens")
    run_spectrum(
        config,
        out=out,
        overwrite=overwrite,
        plot=plot,
        precision=precision,
        command=command_line(click.get_current_context()),
        versions=_versions(),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        clock=time.perf_counter,
        shard=shard,
        resume=resume,
        checkpoint_every=every,
        backend=backend,
        verbose=verbose,
    )
