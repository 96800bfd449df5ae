"""`lowrank compare`: low-rank against sparse, LSH, kernel and Nystrom attention."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from lowrank.cli.common import command_line, corpus_options, handle_errors, main


class _Numbers(click.ParamType):
    """``16,32,64``: comma-separated numbers (whole ones as ints); ``lowrank.compare`` checks
    their values, so the CLI and the API refuse the same inputs in the same words."""

    name = "numbers"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        out: list[int | float] = []
        for item in (t.strip() for t in str(value).split(",") if t.strip()):
            try:
                out.append(int(item))
            except ValueError:
                try:
                    out.append(float(item))
                except ValueError:
                    self.fail(f"{item!r} is not a number", param, ctx)
        return tuple(out)


@main.command()
@corpus_options
@click.option("--num-sequences", type=int, default=16, show_default=True)
@click.option(
    "--budget",
    type=_Numbers(),
    metavar="B[,B...]",
    default="16,32,64,128",
    show_default=True,
    help="Budgets b, comma-separated, each in 1..n: about n b stored numbers or score "
    "evaluations per n x n attention (the exact accounting is in run.json).",
)
@click.option(
    "--families",
    metavar="NAME[,NAME...]",
    default="all",
    show_default=True,
    help="Comma-separated: lowrank-oracle, linformer, sparse-oracle, lsh, local-global, "
    "performer, nystrom, scatterbrain (the zero and uniform baselines always run).",
)
@click.option("--lsh-rounds", type=int, default=2, show_default=True, help="LSH hash rounds.")
@click.option(
    "--globals",
    "globals",
    type=int,
    default=2,
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
    type=float,
    default=0.5,
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
    "--focus-budget",
    type=int,
    default=None,
    help="Budget of the printed finding (default: the second).",
)
@click.option(
    "--draw-seed", type=int, default=0, show_default=True, help="Seed of E, rotations and features."
)
@click.option(
    "--workers",
    type=int,
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
    from lowrank.comparisons.api import compare as run

    ctx = click.get_current_context()
    res = run(opts.pop("model"), None, opts.pop("data"), **opts, command=command_line(ctx))
    click.echo(res.report())
