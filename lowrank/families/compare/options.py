"""The options of ``lowrank compare`` / ``lowrank.compare``, declared once."""

from __future__ import annotations

from typing import Any, get_args

from lowrank.core.options import Option, Options, as_list, check_choices, check_seed, merge
from lowrank.families.compare.names import FAMILIES, Metric, PinvMethod, SupportMethod
from lowrank.inputs.options import API_ONLY, model_and_corpus, output

MAX_LSH_ROUNDS = 64
"""The most LSH hash rounds: each costs a sort of every head's keys; Reformer used 1-8."""


def _families(option: str, value: Any) -> tuple[str, ...]:
    """``"all"``, ``"lsh,performer"`` or a list of names -> names in the order given."""
    if isinstance(value, str) and value.strip() == "all":
        return FAMILIES
    return check_choices(option, [str(v) for v in as_list(value)], FAMILIES)


HELP = """Low-rank against sparse, LSH, local, kernel and Nystrom attention, head by head.

For every family at every budget b (about n b numbers per n x n attention) and every
(layer, head): ||P~ - P||_F / ||P||_F, the head-output error ||P~V - PV|| / ||PV||, the
scale-free output error and the output cosine, built from the real captured Q, K, V and
P (all maths in float64, whatever --dtype the model runs in); means and spreads over
sequences go to <out>/compare.npz, with each head's entropy, sink mass, c at b, effective
rank and output floor. Prints the winner per head and how well entropy separates the heads
where the sparse oracle beats the low-rank oracle, on both metrics (AUC and rank correlation
with intervals over sequences and layers; Scatterbrain, Chen et al. 2021), and the two at
equal stored numbers and equal scores computed.
"""

OPTIONS = Options(
    "compare",
    HELP,
    merge(
        model_and_corpus(num_sequences=16, batch_size=4),
        (
            Option(
                "budget",
                (16, 32, 64, 128),
                "Budgets b, comma-separated, each in 1..n: about n b stored numbers or score "
                "evaluations per n x n attention (the exact accounting is in run.json).",
                "ints",
                low=1,
                metavar="B[,B...]",
            ),
            Option(
                "families",
                "all",
                f"all, or comma-separated: {', '.join(FAMILIES)} (the zero and uniform "
                "baselines always run).",
                "any",
                check=_families,
                metavar="NAME[,NAME...]",
            ),
            Option("lsh_rounds", 2, "LSH hash rounds.", low=1, high=MAX_LSH_ROUNDS),
            Option(
                "globals",
                2,
                "Global tokens of local-global (special tokens first, then the first "
                "positions); at most n.",
                low=0,
            ),
            Option(
                "nystrom_pinv",
                "iterative",
                "Nystromformer's pseudo-inverse: the paper's 6 iterations, or exact (pinv).",
                "choice",
                choices=get_args(PinvMethod),
            ),
            Option(
                "scatterbrain_sparse",
                "lsh",
                "Scatterbrain's sparse part: LSH (the paper's) or the top scores.",
                "choice",
                choices=get_args(SupportMethod),
            ),
            Option(
                "scatterbrain_split",
                0.5,
                "Share of Scatterbrain's budget spent on its sparse part, in [0, 1].",
                "float",
                low=0.0,
                high=1.0,
            ),
            Option(
                "metric",
                "output",
                "The error that picks the winner: head output ||P~V - PV|| / ||PV||, attention "
                "||P~ - P||_F / ||P||_F, or the scale-free output error.",
                "choice",
                choices=get_args(Metric),
            ),
            Option(
                "focus_budget",
                None,
                "Budget of the printed finding (default: the second).",
                low=1,
                optional=True,
            ),
            Option("draw_seed", 0, "Seed of E, rotations and features.", check=check_seed),
            Option(
                "workers",
                None,
                "Threads for each layer's work (default: one per core); does not change the "
                "numbers.",
                low=1,
                optional=True,
            ),
        ),
        output("compare", plot="Draw the comparison figures into <out>/figures."),
        API_ONLY,
    ),
)
