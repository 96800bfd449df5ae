"""`lowrank scaling`: rank against sequence length, encoders and decoders."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import click

from lowrank.cli.common import CommaList, _model_help, command_line, handle_errors, main
from lowrank.inputs.config import DatasetName, Device, DType


@main.command()
@click.option("--model", default="minilm", show_default=True, help=_model_help())
@click.option(
    "--dataset",
    type=click.Choice(get_args(DatasetName)),
    default=None,
    help="Corpus (see `lowrank spectrum --help`); default sample-wiki. Its documents "
    "(articles or reviews) are the units: each long enough for the largest n is cut to its "
    "first n tokens for every n.",
)
@click.option(
    "--data", type=click.Path(path_type=str), default=None, help="Local corpus file or folder."
)
@click.option("--split", default="test", show_default=True)
@click.option(
    "--seq-len",
    "ns",
    type=CommaList(int),
    default="32,64,128,256,512",
    show_default=True,
    help="The lengths n, comma-separated, at least three (special tokens included).",
)
@click.option(
    "--num-sequences",
    type=int,
    default=16,
    show_default=True,
    help="Documents to analyse, each at every n (capped by those long enough).",
)
@click.option(
    "--seed",
    type=int,
    default=None,
    help="A seeded sample of the documents (default: corpus order).",
)
@click.option(
    "--tau",
    type=float,
    default=0.1,
    show_default=True,
    help="Output error of output_rank: the smallest k with ||PV - (PV)_k|| / ||PV|| <= tau.",
)
@click.option(
    "--fixed-index",
    type=int,
    default=None,
    help="Index of c_at_fixed (default: the smallest n, the largest index every n has).",
)
@click.option(
    "--bootstrap",
    type=int,
    default=1000,
    show_default=True,
    help="Resamples of documents behind every interval and verdict.",
)
@click.option("--bootstrap-seed", type=int, default=0, show_default=True)
@click.option(
    "--precision",
    type=float,
    default=None,
    help="Per n: stop once the 95% half-width of every mean c value the spectrum figures "
    "read is below this; the fits use the documents every n analysed.",
)
@click.option(
    "--batch-size",
    type=int,
    default=None,
    help="Fixed batch (default: the largest that the memory estimate fits in --memory-budget).",
)
@click.option(
    "--memory-budget",
    type=float,
    default=None,
    help="GiB of working memory above the model that chooses the batch at every n "
    "(default: a quarter of the free memory).",
)
@click.option("--device", type=click.Choice(get_args(Device)), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(get_args(DType)), default="float32", show_default=True)
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("runs/scaling"), show_default=True
)
@click.option("--overwrite", is_flag=True)
@click.option("--plot", is_flag=True, help="Draw the scaling figures into <out>/figures.")
@handle_errors
def scaling(**opts: Any) -> None:
    """Does the rank of attention grow like log n? One spectrum run per n, on the same text.

    Every document long enough for the largest n is cut to its first n tokens for every n,
    and each n is a normal spectrum run in <out>/n<n>/ (open it with `lowrank figures`).
    Per n, layer and head: the ranks for 90% and 99% of the normalized cumulative sum,
    effective and stable rank, c at n/4 and at a fixed index, and the rank k that the head
    output needs, ||PV - (PV)_k|| / ||PV|| <= tau (float64 singular values of PV; at most the
    head dimension d). Each rank measure is fitted with a + b ln n and a n^beta per layer and
    for the whole model; the fits are compared by AIC and by their error on the largest n,
    held out. A verdict ('logarithmic', 'power law, beta = 0.41 ± 0.05') is printed only
    when both comparisons agree, each in 95% of bootstrap resamples of documents, and the
    preferred model predicts the held-out n within 10%; else 'cannot tell with these n'.
    Writes <out>/scaling.npz and <out>/run.json.
    """
    from lowrank.lengths.api import scaling as run

    opts["seq_len"] = opts.pop("ns")
    res = run(
        opts.pop("model"),
        None,
        opts.pop("data"),
        **opts,
        command=command_line(click.get_current_context()),
    )
    click.echo(res.report())
