"""The options of ``lowrank verify`` / ``lowrank.verify``, declared once."""

from __future__ import annotations

import logging

from lowrank.core.options import Option, Options, check_seed, flag, merge, named
from lowrank.errors import LowrankError
from lowrank.inputs.options import API_ONLY, model_and_corpus, output

log = logging.getLogger(__name__)

MIN_EPS = 1e-6
"""The smallest eps checked: below it the bounds' k = 5 ln n / (eps^2 - eps^3) exceeds 10^13
(and eps^2 underflows to 0 near 1e-162, which would divide by zero)."""


def check_eps(eps: float, option: str = "eps") -> None:
    """The statements need 0 < eps < 1 (and gap(eps) > 0); eps >= :data:`MIN_EPS`."""
    if not 0 < eps < 1:
        raise LowrankError(f"{named(option, eps)} is outside (0, 1): the theorems need 0 < eps < 1")
    if eps < MIN_EPS:
        raise LowrankError(
            f"{named(option, eps)} is too small: the bounds need k = 5 ln n / (eps^2 - eps^3), "
            f"over 10^13 below eps = {MIN_EPS:g}; use eps in [{MIN_EPS:g}, 1)"
        )


DEFAULT_K = (16, 32, 64, 128, 256, 512)
"""The k grid when none is given: the part of it that fits n (see :func:`k_grid`)."""


def k_grid(given: tuple[int, ...] | None, n: int, grid: tuple[int, ...] = DEFAULT_K) -> list[int]:
    """The ks of a run at sequence length n: ``given`` as checked (each in 1..n, checked by
    the caller), or the default ``grid`` cut to k <= n, logged at INFO (``seq_len=128``
    runs k = 16, 32, 64, 128 instead of failing on 256 and 512). Where no value of the grid
    fits, the four largest powers of two up to n."""
    if given is not None:
        return list(given)
    ks = [k for k in grid if k <= n]
    if not ks:
        powers = [2**i for i in range(n.bit_length()) if 2**i <= n]
        ks = powers[-4:]
    if len(ks) < len(grid):
        log.info(f"{flag('k')}: the default grid up to n = {n}: {', '.join(map(str, ks))}")
    return ks


def _levels(option: str, values: tuple[float, ...]) -> tuple[float, ...]:
    for eps in values:
        check_eps(eps, option)
    return values


HELP = """Check Theorems 1 and 2 numerically: bounds against measured failure rates.

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

OPTIONS = Options(
    "verify",
    HELP,
    merge(
        model_and_corpus(
            num_sequences=2,
            batch_size=4,
            num_sequences_help="Sequences of real attention (each gives layers x heads "
            "matrices P).",
        ),
        (
            Option(
                "eps",
                (0.1, 0.2, 0.3, 0.5),
                f"Error levels, each in (0, 1) and at least {MIN_EPS:g}.",
                "floats",
                low=0.0,
                high=1.0,
                open_low=True,
                open_high=True,
                check=_levels,
            ),
            Option(
                "k",
                None,
                "Projected dimensions, each in 1..n. Default: "
                f"{','.join(map(str, DEFAULT_K))}, those <= n (where none is, the four "
                "largest powers of two up to n).",
                "ints",
                optional=True,
            ),
            Option(
                "inverse_temperatures",
                (0.1, 1.0, 4.0, 16.0),
                "Inverse temperatures beta of synthetic attention softmax(beta X Y^T / "
                "sqrt(d)): small beta is near-uniform, large beta near one-hot. Each finite "
                "and > 0.",
                "floats",
                low=0.0,
                open_low=True,
            ),
            Option(
                "temperatures",
                None,
                "Deprecated name of --inverse-temperatures (the values were always inverse).",
                "floats",
                low=0.0,
                open_low=True,
                optional=True,
                hidden=True,
            ),
            Option(
                "delta",
                1.0,
                "Theorem 2's E = delta R, F = exp(-delta) R; finite and > 0.",
                "float",
                low=0.0,
                open_low=True,
            ),
            Option("synthetic_count", 24, "Synthetic matrices P per temperature.", low=1),
            Option("jl_trials", 2000, "Random vector pairs for the JL sanity rows.", low=1),
            Option(
                "target",
                0.05,
                "Target failure rate for the 'k needed' table, in (0, 1).",
                "float",
                low=0.0,
                high=1.0,
                open_low=True,
                open_high=True,
            ),
            Option(
                "theorem2",
                True,
                "Also measure Theorem 2's statement on real attention.",
                "bool",
                negatable=True,
            ),
            Option(
                "verify_seed",
                0,
                "Seed of the projection draws and synthetic matrices.",
                check=check_seed,
            ),
        ),
        output("verify", plot="Draw failure rate against k into <out>/figures."),
        (
            Option(
                "attention_mask",
                None,
                "[N, n] 0/1 mask for token ids given as a bare tensor or array.",
                "any",
                cli=False,
            ),
        ),
        API_ONLY,
    ),
)
