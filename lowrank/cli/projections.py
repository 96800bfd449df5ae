"""`lowrank project` and `lowrank verify`: projections against real attention."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from lowrank.cli.common import CommaList, command_line, corpus_options, handle_errors, main

# The choices, as lowrank.projections.sketches defines them (a test checks they agree; the
# library is not imported here, so `lowrank --help` does not load torch).
METHODS = (
    "gaussian",
    "rademacher",
    "sparse",
    "very-sparse",
    "mean-pool",
    "max-pool",
    "conv",
    "svd",
)
SHARINGS = ("none", "none-same-R", "headwise", "key-value", "layerwise-separate", "layerwise")
ESTIMATORS = ("paper", "projector")


@main.command()
@corpus_options
@click.option("--num-sequences", type=click.IntRange(min=1), default=16, show_default=True)
@click.option(
    "--k",
    "ks",
    type=CommaList(int),
    default="32,64,128,256",
    show_default=True,
    help="Projected dimensions, comma-separated, each in 1..n.",
)
@click.option(
    "--method",
    "methods",
    type=CommaList(str, METHODS),
    default="gaussian,rademacher,sparse,mean-pool,svd",
    show_default=True,
    help=f"Projections: {', '.join(METHODS)} (svd = best rank-k approximation of P, "
    "Eckart-Young: the optimum for ||P~ - P||, not a floor for the output error).",
)
@click.option(
    "--estimator",
    "estimators",
    type=CommaList(str, ESTIMATORS),
    default="paper,projector",
    show_default=True,
    help="Theorem 1 estimators of P from a projection E: paper = P R^T R (Theorem 1's "
    "construction; n E^T E / tr(E^T E) for pooling), projector = P E^+ E. Both see the same R.",
)
@click.option(
    "--draws",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Draws of R per sequence for the random methods.",
)
@click.option(
    "--delta",
    type=float,
    default=1.0,
    show_default=True,
    help="E = delta R, F = exp(-delta) R (proof of Theorem 2, which gives delta as 1/2^n in one "
    "place and Theta(1/n) in another; both make the projected scores vanish). Finite, > 0.",
)
@click.option(
    "--proj-seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed of the projection draws.",
)
@click.option(
    "--sharing",
    "sharings",
    type=CommaList(str, SHARINGS),
    default="none,none-same-R,headwise,key-value,layerwise-separate,layerwise",
    show_default=True,
    help="Sharing strategies for the model-level effect: the paper's none, headwise, "
    "key-value, layerwise, and none-same-R / layerwise-separate, which separate the level of "
    "sharing from drawing E and F from one R.",
)
@click.option(
    "--model-effect/--no-model-effect",
    default=True,
    show_default=True,
    help="Also replace every layer's K and V by projections and compare outputs.",
)
@click.option("--heatmap-k", type=int, default=None, help="k of the layer x head heatmap.")
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("runs/project"), show_default=True
)
@click.option("--overwrite", is_flag=True)
@click.option(
    "--plot",
    is_flag=True,
    help="Draw error-vs-k, the model effect and the heatmap into <out>/figures.",
)
@handle_errors
def project(**opts: Any) -> None:
    """How well JL and Linformer projections approximate real attention, against k.

    From one forward pass per batch, for every method, k and (layer, head): the Theorem 1
    error ||P R^T R w - P w|| / ||P w|| over the columns w of the value matrix, and the
    Theorem 2 error of the Linformer head output softmax(Q (E K)^T / sqrt(d)) F V against the
    exact head output PV, ||O~ - O||_F / ||O||_F. Each comes with the scale-free error (after
    the best scalar rescale) and the cosine, and beside the references every run carries: the
    output floor ||PV - (PV)_k|| / ||PV||, zero attention and uniform attention. Mean, median
    and 95th percentile over sequences x draws go to <out>/projection.npz; the printed
    intervals are t-intervals over sequences, and each method is tested against both
    baselines (paired, Holm-corrected). With --model-effect, every layer's keys and values are
    projected (each sharing strategy), or its attention replaced by a baseline, and the final
    hidden states (and masked-LM loss, for models with an MLM head) are compared with the
    exact model.
    """
    from lowrank.projections.api import project as run

    ctx = click.get_current_context()
    res = run(
        opts.pop("model"),
        None,
        opts.pop("data"),
        k=opts.pop("ks"),
        method=opts.pop("methods"),
        estimator=opts.pop("estimators"),
        sharing=opts.pop("sharings"),
        **opts,
        command=command_line(ctx),
    )
    click.echo(res.report())


@main.command()
@corpus_options
@click.option(
    "--num-sequences",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Sequences of real attention (each gives layers x heads matrices P).",
)
@click.option(
    "--eps",
    "eps",
    type=CommaList(float),
    default="0.1,0.2,0.3,0.5",
    show_default=True,
    help="Error levels, each in (0, 1).",
)
@click.option(
    "--k",
    "ks",
    type=CommaList(int),
    default="16,32,64,128,256,512",
    show_default=True,
    help="Projected dimensions, each in 1..n.",
)
@click.option(
    "--inverse-temperatures",
    "inverse_temperatures",
    type=CommaList(float),
    default="0.1,1,4,16",
    show_default=True,
    help="Inverse temperatures beta of synthetic attention softmax(beta X Y^T / sqrt(d)): "
    "small beta is near-uniform, large beta near one-hot. Each finite and > 0.",
)
@click.option(
    "--temperatures",
    "temperatures",
    type=CommaList(float),
    default=None,
    hidden=True,
    help="Deprecated name of --inverse-temperatures (the values were always inverse).",
)
@click.option(
    "--delta",
    type=float,
    default=1.0,
    show_default=True,
    help="Theorem 2's E = delta R, F = exp(-delta) R; finite and > 0.",
)
@click.option(
    "--synthetic-count",
    type=click.IntRange(min=1),
    default=24,
    show_default=True,
    help="Synthetic matrices P per temperature.",
)
@click.option(
    "--jl-trials",
    type=click.IntRange(min=1),
    default=2000,
    show_default=True,
    help="Random vector pairs for the JL sanity rows.",
)
@click.option(
    "--target",
    type=float,
    default=0.05,
    show_default=True,
    help="Target failure rate for the 'k needed' table, in (0, 1).",
)
@click.option(
    "--theorem2/--no-theorem2",
    default=True,
    show_default=True,
    help="Also measure Theorem 2's statement on real attention.",
)
@click.option(
    "--verify-seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Seed of the projection draws and synthetic matrices.",
)
@click.option(
    "--out", type=click.Path(path_type=Path), default=Path("runs/verify"), show_default=True
)
@click.option("--overwrite", is_flag=True)
@click.option("--plot", is_flag=True, help="Draw failure rate against k into <out>/figures.")
@handle_errors
def verify(**opts: Any) -> None:
    """Check Theorems 1 and 2 numerically: bounds against measured failure rates.

    Theorem 1 is measured as four statements, each named: "paper" (P R^T R w within
    eps ||Pw||, the paper's wording, which no proof covers), "jl-rows" (every row within
    eps ||p_i|| ||w||: the event the proof's union bound 2n exp(-(eps^2-eps^3)k/4) covers),
    "jl-consistent" (within eps ||P||_F ||w||, implied by jl-rows) and "witness" (the best
    rank-k approximation). On real attention with five kinds of vectors w: value columns,
    Gaussian, those aligned with P (top singular vectors, rows of P: the easy case for the
    paper's bound) and against it (bottom singular vectors: the hard case); and on synthetic
    attention at several inverse temperatures. The JL lemma itself is checked on norms (the
    paper's form) and squared norms (the source lemma), beside its exact chi-square
    probability. Rates carry cluster-robust 95% intervals (cluster = one draw of R); only
    statements a proof bounds get holds/violated, Holm-corrected. Per series and eps, the
    smallest k that reaches --target is set beside the k at which the bound reaches the same
    level. Writes verify.csv, verify.json, verify.npz and run.json.
    """
    from lowrank.projections.api import verify as run

    ctx = click.get_current_context()
    res = run(
        opts.pop("model"),
        None,
        opts.pop("data"),
        k=opts.pop("ks"),
        **opts,
        command=command_line(ctx),
    )
    click.echo(res.report())
