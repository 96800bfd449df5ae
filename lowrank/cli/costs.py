"""`lowrank efficiency`: time and memory of exact against Linformer attention."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import click

from lowrank.cli.common import (
    CommaList,
    _versions,
    command_line,
    handle_errors,
    main,
)
from lowrank.errors import LowrankError
from lowrank.spectra.config import (
    Device,
    DType,
)


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
    type=click.IntRange(min=1),
    default=None,
    help="Fixed batch (default 1, or the largest that fits --memory-budget).",
)
@click.option(
    "--memory-budget",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="GiB: time each stack at the largest power-of-two batch whose peak memory fits, and "
    "report the ratio of those batches as the memory saving (the paper's setting).",
)
@click.option("--layers", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--hidden", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--heads", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--ffn", type=click.IntRange(min=1), default=1024, show_default=True)
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
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
    from lowrank.costs.timing import StackShape
    from lowrank.costs.workflow import run_efficiency
    from lowrank.spectra.pipeline import resolve_device

    if opts["batch_size"] is not None and opts["memory_budget"] is not None:
        raise LowrankError("give either --batch-size or --memory-budget, not both")
    shape = StackShape(opts["layers"], opts["hidden"], opts["heads"], opts["ffn"])
    run_efficiency(
        sorted(set(opts["ns"])),
        sorted(set(opts["ks"])),
        shape,
        resolve_device(opts["device"]),
        opts["dtype"],
        opts["batch_size"],
        opts["memory_budget"],
        opts["warmup"],
        opts["repeats"],
        opts["out"],
        opts["overwrite"],
        opts["plot"],
        command_line(click.get_current_context()),
        _versions(),
        datetime.now(UTC).isoformat(timespec="seconds"),
    )
