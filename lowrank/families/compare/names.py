"""The names ``lowrank compare`` chooses between: families, pseudo-inverses, supports, metrics.

Torch-free, so that the option declarations (and ``lowrank --help``) list them without
loading the approximations themselves (:mod:`lowrank.families.compare.methods`).
"""

from __future__ import annotations

from typing import Literal, get_args

from lowrank.maths.names import BASELINES

Family = Literal[
    "lowrank-oracle",
    "linformer",
    "sparse-oracle",
    "lsh",
    "local-global",
    "performer",
    "nystrom",
    "scatterbrain",
]
FAMILIES: tuple[str, ...] = get_args(Family)
ORACLES: tuple[str, ...] = ("lowrank-oracle", "linformer", "sparse-oracle", "sparse-oracle-renorm")
# Families whose P~ has no entry above the diagonal once the causal mask is applied to what
# they attend; the others need every key for every row.
CAUSAL_OK: tuple[str, ...] = (
    "sparse-oracle",
    "sparse-oracle-renorm",
    "lsh",
    "local-global",
    "performer",
    "scatterbrain",
    *BASELINES,
)
PinvMethod = Literal["exact", "iterative"]
SupportMethod = Literal["lsh", "topk"]
# The error that picks the winner: head output, attention matrix, or scale-free output.
Metric = Literal["output", "probs", "output-scaled"]
