"""The options of ``lowrank project`` / ``lowrank.project``, declared once."""

from __future__ import annotations

import logging

from lowrank.core.options import Option, Options, check_seed, flag, merge
from lowrank.inputs.options import API_ONLY, model_and_corpus, output
from lowrank.maths.names import ESTIMATORS, METHODS, SHARINGS

log = logging.getLogger(__name__)

DEFAULT_K = (32, 64, 128, 256)
"""The k grid when none is given: the part of it that fits n (see :func:`k_grid`)."""


def k_grid(given: tuple[int, ...] | None, n: int, grid: tuple[int, ...] = DEFAULT_K) -> list[int]:
    """The ks of a run at sequence length n: ``given`` as checked (each in 1..n, checked by
    the caller), or the default ``grid`` cut to k < n, logged at INFO (``seq_len=128`` runs
    k = 32, 64 instead of failing on 256). k = n is left out of the default: at k = n the
    projector and pooling reproduce P exactly (errors of 1e-9 that flatten every other
    curve on a log axis); ask for it with ``k``. Where no value of the grid fits, the four
    largest powers of two below n.

    Why ``k=None`` and not the tuple filtered when "not given": a caller who writes the
    grid out (``k=(32, 64, 128, 256)`` at n = 128) asked for 256 and is told it does not
    fit; only the default adapts, and ``None`` says which is which.
    """
    if given is not None:
        return list(given)
    ks = [k for k in grid if k < n]
    if not ks:
        ks = [2**i for i in range(n.bit_length()) if 2**i < n][-4:] or [n]
    if len(ks) < len(grid):
        log.info(f"{flag('k')}: the default grid below n = {n}: {', '.join(map(str, ks))}")
    return ks


HELP = """How well JL and Linformer projections approximate real attention, against k.

From one forward pass per batch, for every method, k and (layer, head): the Theorem 1
error ||P R^T R w - P w|| / ||P w|| over the columns w of the value matrix, and the
Theorem 2 error of the Linformer head output softmax(Q (E K)^T / sqrt(d)) F V against the
exact head output PV, ||O~ - O||_F / ||O||_F. Each comes with the scale-free error (after
the best scalar rescale) and the cosine, and beside the references every run carries: the
output floor ||PV - (PV)_k|| / ||PV||, zero attention and uniform attention. Mean, median
and 95th percentile over sequences x draws go to <out>/projection.npz; the printed
intervals are over sequences and stay inside each quantity's range (none below 3
sequences), and each method is tested against both baselines (paired, Holm-corrected).
With --model-effect, every layer's keys and values are projected (each sharing strategy),
or its attention replaced by a baseline, and the final hidden states (and masked-LM loss,
for models with an MLM head) are compared with the exact model.
"""

OPTIONS = Options(
    "project",
    HELP,
    merge(
        model_and_corpus(num_sequences=16, batch_size=4),
        (
            Option(
                "k",
                None,
                "Projected dimensions, comma-separated, each in 1..n. Default: "
                f"{','.join(map(str, DEFAULT_K))}, those < n (where none is, the four "
                "largest powers of two below n).",
                "ints",
                optional=True,
            ),
            Option(
                "method",
                ("gaussian", "rademacher", "sparse", "mean-pool", "svd"),
                f"Projections: {', '.join(METHODS)} (svd = best rank-k approximation of P, "
                "Eckart-Young: the optimum for ||P~ - P||, not a floor for the output error).",
                "choices",
                choices=METHODS,
            ),
            Option(
                "estimator",
                ESTIMATORS,
                "Theorem 1 estimators of P from a projection E: paper = P R^T R (Theorem 1's "
                "construction; n E^T E / tr(E^T E) for pooling), projector = P E^+ E. Both see "
                "the same R.",
                "choices",
                choices=ESTIMATORS,
            ),
            Option("draws", 3, "Draws of R per sequence for the random methods.", low=1),
            Option(
                "delta",
                1.0,
                "E = delta R, F = exp(-delta) R (proof of Theorem 2, which gives delta as 1/2^n "
                "in one place and Theta(1/n) in another; both make the projected scores "
                "vanish). Finite, > 0.",
                "float",
                low=0.0,
                open_low=True,
            ),
            Option("proj_seed", 0, "Seed of the projection draws.", check=check_seed),
            Option(
                "sharing",
                SHARINGS,
                "Sharing strategies for the model-level effect: the paper's none, headwise, "
                "key-value, layerwise, and none-same-R / layerwise-separate, which separate the "
                "level of sharing from drawing E and F from one R.",
                "choices",
                choices=SHARINGS,
            ),
            Option(
                "model_effect",
                True,
                "Also replace every layer's K and V by projections and compare outputs.",
                "bool",
                negatable=True,
            ),
            Option(
                "heatmap_k",
                None,
                "k of the layer x head heatmap (one of --k; default the middle one).",
                low=1,
                optional=True,
            ),
        ),
        output(
            "project", plot="Draw error-vs-k, the model effect and the heatmap into <out>/figures."
        ),
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
