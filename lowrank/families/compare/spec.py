"""What ``lowrank compare`` measures (:class:`CompareSpec`), and how closely the captured P must
match the P rebuilt from Q and K (:func:`parity_tolerance`)."""

from __future__ import annotations

from dataclasses import dataclass

from lowrank.core.options import flag, named
from lowrank.errors import LowrankError
from lowrank.families.compare.methods import (
    BASELINES,
    FAMILIES,
    ORACLES,
    PinvMethod,
    SupportMethod,
    variants,
)
from lowrank.families.compare.names import Metric

PARITY_TOLERANCE = 1e-4  # captured float32 P against softmax(Q K^T scale) in float64
# Unit roundoff of the half-precision formats a model may run in on CUDA (2^-11, 2^-8).
_ROUNDOFF = {"float16": 2.0**-11, "bfloat16": 2.0**-8}


def parity_tolerance(dtype: str, max_score: float) -> float:
    """The largest gap allowed between the captured P and softmax(Q K^T / sqrt(d)) rebuilt in
    float64 from the captured Q and K.

    float32: :data:`PARITY_TOLERANCE`. A half-precision model (CUDA only) rounds each score
    s to s (1 + delta), |delta| <= u (unit roundoff), and P to P (1 + delta'): a softmax
    entry moves by at most about ``u (2 |s|_max + 1)``, since a score error e changes
    exp(s) by a factor exp(e) and the row's normaliser by at most the same; twice that
    bound is allowed (float32 accumulation and the final rounding of P).

    Args:
        dtype: the captured tensors' dtype name (``float32``, ``float16``, ``bfloat16``).
        max_score: the largest |Q K^T / sqrt(d)| of the layer.
    """
    u = _ROUNDOFF.get(dtype)
    if u is None:
        return PARITY_TOLERANCE
    return max(PARITY_TOLERANCE, 2 * u * (2 * abs(max_score) + 1))


@dataclass(frozen=True)
class CompareSpec:
    """What ``lowrank compare`` measures."""

    budgets: tuple[int, ...] = (16, 32, 64, 128)  # b: about n b numbers per attention
    families: tuple[str, ...] = FAMILIES
    rounds: int = 2  # LSH hash rounds
    globals_: int = 2  # global tokens of local-global (special tokens, then the first)
    pinv: PinvMethod = "iterative"  # Nystrom's pseudo-inverse: the paper's 6 iterations
    support: SupportMethod = "lsh"  # Scatterbrain's sparse part: LSH (the paper's) or top-b
    split: float = 0.5  # share of Scatterbrain's budget spent on its sparse part
    metric: Metric = "output"  # the error that picks the winner
    focus: int | None = None  # budget of the finding and heatmaps (None: the second)
    seed: int = 0  # seed of the random draws: E, rotations, features (and the bootstrap)

    @property
    def rows(self) -> tuple[str, ...]:
        """Names along the family axis of the results: the families' variants, baselines."""
        return tuple(v for f in FAMILIES if f in self.families for v in variants(f)) + BASELINES

    @property
    def oracles(self) -> tuple[str, ...]:
        """Rows that read more than Q and K: P itself, or (Scatterbrain with a top-b
        support) every score of the row."""
        extra = ("scatterbrain",) if self.support == "topk" else ()
        return tuple(r for r in self.rows if r in ORACLES + extra)

    @property
    def focus_budget(self) -> int:
        return self.focus if self.focus is not None else self.budgets[min(1, len(self.budgets) - 1)]

    def check(self, n: int) -> None:
        """The options against each other and against n (``--seq-len``); each option alone
        is checked by its declaration (:mod:`lowrank.families.compare.options`)."""
        for b in self.budgets:
            if b > n:
                raise LowrankError(
                    f"{named('budget', b)} exceeds n = {n}: choose budgets <= {flag('seq_len')}"
                )
        if self.focus is not None and self.focus not in self.budgets:
            raise LowrankError(
                f"{named('focus_budget', self.focus)} is not one of {flag('budget')}"
            )
        if self.globals_ > n:
            raise LowrankError(
                f"{named('globals', self.globals_)} exceeds n = {n}: local-global has at most n "
                "global tokens"
            )
