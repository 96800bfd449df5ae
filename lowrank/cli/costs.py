"""`lowrank efficiency`: time and memory of exact against Linformer attention."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import click

from lowrank.cli.common import CommaList, command_line, handle_errors, main
from lowrank.inputs.config import Device, DType


@main.command()
@click.option(
    "--n",
    "ns",
    type=CommaList(int),
    default="512,1024,2048,4096",
    show_default=True,
    help="Sequence lengths.",
)
@click.option(
    "--k",
    "ks",
    type=CommaList(int),
    default="64,128,256",
    show_default=True,
    help="Linformer projected lengths.",
)
@click.option("--device", type=click.Choice(get_args(Device)), default="auto", show_default=True)
@click.option("--dtype", type=click.Choice(get_args(DType)), default="float32", show_default=True)
@click.option(
    "--batch-size",
    type=int,
    default=None,
    help="Fixed batch (default 1, or the largest that fits --memory-budget).",
)
@click.option(
    "--memory-budget",
    type=float,
    default=None,
    help="GiB: time each stack at the largest power-of-two batch whose peak memory fits, and "
    "report the ratio of those batches as the memory saving (the paper's setting).",
)
@click.option(
    "--layers", type=int, default=2, show_default=True, help="Encoder blocks in each stack."
)
@click.option(
    "--hidden",
    type=int,
    default=256,
    show_default=True,
    help="Model width D (a multiple of --heads).",
)
@click.option("--heads", type=int, default=4, show_default=True, help="Attention heads.")
@click.option("--ffn", type=int, default=1024, show_default=True, help="Width of each block's MLP.")
@click.option(
    "--warmup",
    type=int,
    default=2,
    show_default=True,
    help="Untimed rounds before the timed ones.",
)
@click.option(
    "--repeats",
    type=int,
    default=5,
    show_default=True,
    help="Timed rounds, one forward pass per stack each, in an order reversed every round; "
    "the median and the min-max spread are reported.",
)
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("runs/efficiency"), show_default=True
)
@click.option("--overwrite", is_flag=True)
@click.option("--plot", is_flag=True, help="Draw speed-up and memory saving against n.")
@handle_errors
def efficiency(**opts: Any) -> None:
    """Linformer's speed and memory against standard attention (paper Table 3).

    For each n and k: forward time per token and peak memory of a small encoder stack with
    Linformer attention (layerwise sharing) against the same stack with standard attention
    (explicit softmax, and PyTorch's fused scaled_dot_product_attention), same weights, dtype
    and threads. The stacks take turns in --repeats interleaved rounds after --warmup ones;
    speed-ups are the median [min, max] over the rounds. Memory saving: the ratio of peak
    memory per sequence at equal batch, and with --memory-budget also the ratio of the largest
    batches that fit (the paper's measure). Prints one table per measure (rows n, columns k)
    and writes efficiency.csv/json/npz, run.json.
    """
    from lowrank.costs.api import efficiency as run

    opts["n"], opts["k"] = opts.pop("ns"), opts.pop("ks")
    res = run(**opts, command=command_line(click.get_current_context()))
    click.echo(res.report())
