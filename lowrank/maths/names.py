"""The names of the shared projection methods, sharing strategies, estimators and baselines.

Torch-free, so that option declarations (and ``lowrank --help``) can list them without
loading the maths that implements them (:mod:`lowrank.maths.sketches`).
"""

from __future__ import annotations

from typing import Literal, get_args

Method = Literal[
    "gaussian", "rademacher", "sparse", "very-sparse", "mean-pool", "max-pool", "conv", "svd"
]
METHODS: tuple[str, ...] = get_args(Method)
JL_METHODS: tuple[str, ...] = ("gaussian", "rademacher", "sparse", "very-sparse")
LINEAR_METHODS: tuple[str, ...] = (*JL_METHODS, "mean-pool", "conv")  # P~ = P M exists
Estimator = Literal["paper", "projector"]
# Sharing strategies (paper Sec. 4) and the two that separate "how widely a matrix is
# shared" from "E and F drawn from one R": see ProjectionBank.
Sharing = Literal["none", "none-same-R", "headwise", "key-value", "layerwise", "layerwise-separate"]
# (level at which a matrix is shared, whether E and F come from one R)
SHARING_DESIGN: dict[str, tuple[str, bool]] = {
    "none": ("head", False),
    "none-same-R": ("head", True),
    "headwise": ("layer", False),
    "key-value": ("layer", True),
    "layerwise-separate": ("model", False),
    "layerwise": ("model", True),
}
SHARINGS: tuple[str, ...] = tuple(SHARING_DESIGN)  # the CLI's order
Baseline = Literal["zero", "uniform"]
BASELINES: tuple[str, ...] = ("zero", "uniform")
ESTIMATORS: tuple[str, ...] = get_args(Estimator)
