"""`lowrank compare`: low-rank against sparse, LSH, kernel and Nystrom attention."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from lowrank.cli.common import (
    _config,
    _versions,
    command_line,
    corpus_options,
    handle_errors,
    main,
)


@main.command()
@corpus_options
@click.option("--num-sequences", type=click.IntRange(min=1), default=16, show_default=True)
@click.option(
    "--budget",
    default="16,32,64,128",
    show_default=True,
    help="Budgets b, comma-separated, each in 1..n: about n b stored numbers or score "
    "evaluations per n x n attention (the exact accounting is in run.json).",
)
@click.option(
    "--families",
    default="all",
    show_default=True,
    help="Comma-separated: lowrank-oracle, linformer, sparse-oracle, lsh, local-global, "
    "performer, nystrom, scatterbrain (the zero and uniform baselines always run).",
)
@click.option("--lsh-rounds", default="2", show_default=True, help="LSH hash rounds.")
@click.option(
    "--globals",
    "globals_",
    default="2",
    show_default=True,
    help="Global tokens of local-global (special tokens first, then the first positions).",
)
@click.option(
    "--nystrom-pinv",
    type=click.Choice(["iterative", "exact"]),
    default="iterative",
    show_default=True,
    help="Nystromformer's pseudo-inverse: the paper's 6 iterations, or exact (pinv).",
)
@click.option(
    "--scatterbrain-sparse",
    type=click.Choice(["lsh", "topk"]),
    default="lsh",
    show_default=True,
    help="Scatterbrain's sparse part: LSH (the paper's) or the top scores.",
)
@click.option(
    "--scatterbrain-split",
    default="0.5",
    show_default=True,
    help="Share of Scatterbrain's budget spent on its sparse part, in [0, 1].",
)
@click.option(
    "--metric",
    type=click.Choice(["output", "probs", "output-scaled"]),
    default="output",
    show_default=True,
    help="The error that picks the winner: head output ||P~V - PV|| / ||PV||, attention "
    "||P~ - P||_F / ||P||_F, or the scale-free output error.",
)
@click.option(
    "--focus-budget", default=None, help="Budget of the printed finding (default: the second)."
)
@click.option(
    "--draw-seed", default="0", show_default=True, help="Seed of E, rotations and features."
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Threads for each layer's work (default: one per core); does not change the numbers.",
)
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("runs/compare"), show_default=True
)
@click.option("--overwrite", is_flag=True)
@click.option("--plot", is_flag=True, help="Draw the comparison figures into <out>/figures.")
@handle_errors
def compare(**opts: Any) -> None:
    """Low-rank against sparse, LSH, local, kernel and Nystrom attention, head by head.

    For every family at every budget b (about n b numbers per n x n attention) and every
    (layer, head): ||P~ - P||_F / ||P||_F, the head-output error ||P~V - PV|| / ||PV||, the
    scale-free output error and the output cosine, built from the real captured Q, K, V and
    P; means and spreads over sequences go to <out>/compare.npz, with each head's entropy,
    sink mass, c at b and effective rank. Prints the winner per head and whether the
    advantage of low-rank over sparse rises with entropy (Scatterbrain, Chen et al. 2021).
    """
    from lowrank.comparisons.methods import FAMILIES
    from lowrank.comparisons.sink import CompareSpec
    from lowrank.comparisons.workflow import (
        parse_families,
        parse_float,
        parse_number_list,
        run_compare,
    )

    ctx = click.get_current_context()
    config = _config(opts, opts.pop("num_sequences"))
    families = FAMILIES if opts["families"] == "all" else parse_families(opts["families"])
    focus = opts["focus_budget"]
    spec = CompareSpec(
        budgets=tuple(sorted(parse_number_list(opts["budget"], "--budget"))),
        families=families,
        rounds=parse_number_list(opts["lsh_rounds"], "--lsh-rounds")[0],
        globals_=parse_number_list(opts["globals_"], "--globals")[0],
        pinv=opts["nystrom_pinv"],
        support=opts["scatterbrain_sparse"],
        split=parse_float(opts["scatterbrain_split"], "--scatterbrain-split"),
        metric=opts["metric"],
        focus=None if focus is None else parse_number_list(focus, "--focus-budget")[0],
        seed=parse_number_list(opts["draw_seed"], "--draw-seed")[0],
    )
    run_compare(
        config,
        spec,
        opts["out"],
        opts["overwrite"],
        opts["plot"],
        command_line(ctx),
        _versions(),
        datetime.now(UTC).isoformat(timespec="seconds"),
        workers=opts["workers"],
    )
