"""`lowrank spectrum`: the paper's Figure 1 statistics."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, get_args

import click

from lowrank.cli.common import _model_help, command_line, handle_errors, main
from lowrank.inputs.config import (
    PAPER_NUM_SEQUENCES,
    PAPER_SEQ_LEN,
    DatasetName,
    Device,
    DType,
    Policy,
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
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Sequences per forward pass (it changes c only by float32 rounding, ~1e-7). "
    "Checked against the "
    "free memory before the first batch.",
)
@click.option(
    "--auto-batch",
    is_flag=True,
    help="Out of memory: cut the batch to what fits (and halve one that still fails) instead "
    "of stopping with the batch size to use.",
)
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
    "CUDA). See docs/long-runs.md, 'Running on a cluster'.",
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
    compare one to one with an encoder's (docs/spectrum.md, "Causal attention").
    """
    from lowrank.spectra.api import spectrum as run
    from lowrank.spectra.workflow import RunInterrupted, default_out

    out = opts.pop("out") or default_out(opts["model"], opts["dataset"], opts["data"])
    model, data = opts.pop("model"), opts.pop("data")
    try:
        res = run(
            model, None, data, out=out, command=command_line(click.get_current_context()), **opts
        )
    except RunInterrupted as stop:
        click.echo(str(stop), err=True)
        sys.exit(130)
    if lead_rank():
        click.echo(res.report())


def lead_rank() -> bool:
    """False on the ranks of a torchrun launch other than rank 0 (only rank 0 prints)."""
    from lowrank.runs.distributed import launch_from_env

    launch = launch_from_env()
    return launch is None or launch.rank == 0
