"""Format 1's fits and verdicts: ``a + b ln n`` against ``a n^beta``, by AIC and the held-out
largest n. Kept to explain format-1 folders, and because the corrected verdicts
(:mod:`lowrank.families.scaling.verdicts`, three models, :mod:`lowrank.maths.growth`) are
tested against the cases this rule got wrong: it tests no saturating model, cannot answer
"none fits", and names verdicts from three lengths. The command no longer calls
:func:`verdict`; :func:`bootstrap_indices` and :func:`group_values` serve both.

The question (Linformer, Wang et al. 2020, Sec. 3 and Theorem 2: a projected length
k = O(d log d / eps^2) suffices, independent of n) is whether the rank that real attention
needs grows like ``a + b ln n`` or like a power ``a n^beta``. Every n sees the same text
(:func:`lowrank.families.scaling.measures.document_windows`), so the documents are clusters
shared by all n, and every interval here is a bootstrap over documents
(:func:`bootstrap_indices`): resample documents, recompute the means at every n, refit.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from lowrank.errors import LowrankError

Model = Literal["log", "power"]
VerdictLabel = Literal["logarithmic", "power law", "cannot tell"]

# The verdict rule (see :func:`verdict`). Burnham & Anderson (2002, Sec. 2.6): a difference
# in AIC below 2 leaves both models substantial support.
AIC_MARGIN = 2.0
# Share of bootstrap resamples (over documents) that must agree with the full data.
SUPPORT = 0.95
# The preferred model, fitted to the smaller n, must predict the largest n within this
# relative error: a curve that saturates (the output rank is capped by d) is neither law.
HELDOUT_TOLERANCE = 0.10
LEVEL = 0.95


# ---------------------------------------------------------------------------------------------
# fits


def log_model(n: np.ndarray, a: float, b: float) -> np.ndarray:
    return a + b * np.log(n)


def power_model(n: np.ndarray, a: float, beta: float) -> np.ndarray:
    return a * np.power(n, beta)


@dataclass(frozen=True)
class Fit:
    """A least-squares fit of one model to the points (n, y).

    Attributes:
        model: ``log`` (``a + b ln n``) or ``power`` (``a n^beta``).
        params: (a, b) or (a, beta); NaN when the fit failed.
        rss: residual sum of squares.
        points: number of points fitted.
    """

    model: Model
    params: tuple[float, float]
    rss: float
    points: int

    @property
    def aic(self) -> float:
        return aic(self.rss, self.points)

    def predict(self, n: Any) -> np.ndarray:
        f = log_model if self.model == "log" else power_model
        return f(np.asarray(n, dtype=np.float64), *self.params)


def aic(rss: float, points: int, params: int = 2) -> float:
    """Akaike's criterion for least squares with Gaussian errors of unknown variance:
    ``m ln(RSS / m) + 2 (p + 1)`` (the variance counts as a parameter).

    Both models here have two parameters, so their difference is ``m ln(RSS_1 / RSS_2)``.
    """
    return points * math.log(rss / points) + 2 * (params + 1)


def _rss_floor(y: np.ndarray) -> float:
    # residuals below 1e-9 of the data's scale are rounding: a perfect fit must not give
    # an AIC of -inf
    return len(y) * (1e-9 * max(float(np.abs(y).mean()), 1e-300)) ** 2


def fit(model: Model, n: np.ndarray, y: np.ndarray) -> Fit:
    """Least-squares fit of ``a + b ln n`` or ``a n^beta`` to the points (n, y).

    The logarithm is linear in (a, b): :func:`scipy.linalg.lstsq` solves it exactly. The
    power law is fitted with :func:`scipy.optimize.curve_fit` (Levenberg-Marquardt),
    started from the straight line through (ln n, ln y). Both fit y itself, with the same
    additive errors, so their residuals (and AICs) are comparable.

    Args:
        n: (m,) sequence lengths; y: (m,) the measure at each.
    """
    from scipy.linalg import lstsq
    from scipy.optimize import curve_fit

    n = np.asarray(n, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x = np.log(n)
    if model == "log":
        coef = lstsq(np.stack([np.ones_like(x), x], axis=1), y)[0]
        rss = float(((log_model(n, *coef) - y) ** 2).sum())
        return Fit("log", (float(coef[0]), float(coef[1])), max(rss, _rss_floor(y)), len(y))
    positive = y > 0
    if positive.sum() >= 2:
        beta0, lna0 = np.polyfit(x[positive], np.log(y[positive]), 1)
        p0 = (math.exp(lna0), beta0)
    else:
        p0 = (max(float(y.mean()), 1e-3), 0.0)
    f = power_model
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # covariance warnings: we use no covariance
            params, _ = curve_fit(f, n, y, p0=p0, maxfev=2000)
    except (RuntimeError, ValueError):
        return Fit(model, (math.nan, math.nan), math.inf, len(y))
    rss = float(((f(n, *params) - y) ** 2).sum())
    return Fit(model, (float(params[0]), float(params[1])), max(rss, _rss_floor(y)), len(y))


# ---------------------------------------------------------------------------------------------
# bootstrap over documents and the verdict


def bootstrap_indices(documents: int, draws: int, seed: int) -> np.ndarray:
    """(draws, documents) documents drawn with replacement: the documents are the clusters
    (every n and every head of a document share its text), so they are what is resampled."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, documents, size=(draws, documents))


@dataclass(frozen=True)
class Verdict:
    """Which model a measure follows, for one layer (or the whole model).

    Attributes:
        measure, group: the measure and ``layer <l>`` or ``model``.
        ns: (S,) the lengths; mean: (S,) the measure's mean over documents and heads;
        interval: (S, 2) 95% bootstrap percentile interval of each mean.
        log, power: the fits to all S means.
        delta_aic: AIC(power) - AIC(log): > 0 favours the logarithm.
        aic_support: share of resamples whose AIC prefers the same model as the full data.
        heldout_n: the largest n, left out; heldout_log, heldout_power: |prediction - mean|
            there, of each model fitted to the smaller n.
        heldout_support: share of resamples in which the model preferred by AIC also
            predicts the held-out n better.
        beta_interval: 95% bootstrap percentile interval of beta.
        label: ``logarithmic``, ``power law`` or ``cannot tell``.
        documents, draws: documents behind each mean, bootstrap resamples.
    """

    measure: str
    group: str
    ns: np.ndarray
    mean: np.ndarray
    interval: np.ndarray
    log: Fit
    power: Fit
    delta_aic: float
    aic_support: float
    heldout_n: int
    heldout_log: float
    heldout_power: float
    heldout_support: float
    beta_interval: tuple[float, float]
    label: VerdictLabel
    documents: int
    draws: int

    @property
    def preferred(self) -> Model:
        """The model AIC prefers on the full data."""
        return "log" if self.delta_aic > 0 else "power"

    @property
    def beta(self) -> float:
        return self.power.params[1]

    @property
    def beta_half_width(self) -> float:
        lo, hi = self.beta_interval
        return (hi - lo) / 2

    @property
    def heldout_relative(self) -> float:
        """The preferred model's held-out error relative to the observed mean there."""
        held = self.heldout_log if self.preferred == "log" else self.heldout_power
        return held / abs(self.mean[-1]) if self.mean[-1] else math.inf

    def text(self) -> str:
        """The printed verdict: ``logarithmic``, ``power law, beta = 0.41 ± 0.05`` or
        ``cannot tell with these n``."""
        if self.label == "logarithmic":
            return "logarithmic"
        if self.label == "power law":
            return f"power law, beta = {plus_minus(self.beta, self.beta_half_width)}"
        return "cannot tell with these n"

    def evidence(self) -> str:
        """What the verdict rests on, in one line."""
        name = {"log": "a + b ln n", "power": "a n^beta"}
        better = self.preferred
        other: Model = "power" if better == "log" else "log"
        held = {"log": self.heldout_log, "power": self.heldout_power}
        return (
            f"AIC favours {name[better]} by {abs(self.delta_aic):.1f} "
            f"({self.aic_support:.0%} of resamples agree); held-out n = {self.heldout_n}: "
            f"|error| {held[better]:.3g} ({self.heldout_relative:.0%} of the mean) vs "
            f"{held[other]:.3g} for {name[other]} ({self.heldout_support:.0%} agree)"
        )


def plus_minus(value: float, half: float) -> str:
    """``0.41 ± 0.05``: two decimals, more when the half-width needs them (``1.020 ± 0.004``)."""
    if not math.isfinite(half) or half <= 0:
        return f"{value:.2f} ± {half:.2f}"
    decimals = max(2, -math.floor(math.log10(half)))
    return f"{value:.{decimals}f} ± {half:.{decimals}f}"


def _means(values: np.ndarray, index: np.ndarray | None = None) -> np.ndarray:
    """(S,) means over documents of (S, D) per-document values (resampled rows ``index``)."""
    return values.mean(axis=1) if index is None else values[:, index].mean(axis=1)


def verdict(
    measure: str,
    group: str,
    ns: Sequence[int],
    values: np.ndarray,
    resamples: np.ndarray,
    level: float = LEVEL,
) -> Verdict:
    """Fit ``a + b ln n`` and ``a n^beta`` to the means of one measure and decide.

    Args:
        ns: (S,) lengths, ascending, S >= 3.
        values: (S, D) the measure per n and document (already averaged over the heads of
            the group), the same D documents at every n.
        resamples: (B, D) document indices from :func:`bootstrap_indices`.

    The rule: a model is named only when the data separate the two, i.e. (1) AIC prefers
    it by at least :data:`AIC_MARGIN`, and at least :data:`SUPPORT` of the resamples prefer
    it too; (2) fitted to the smaller n it predicts the largest n better than the other
    model does, on the full data and in at least :data:`SUPPORT` of the resamples; and (3)
    that prediction is within :data:`HELDOUT_TOLERANCE` of the observed mean, relative (a
    model preferred to a worse one but unable to extrapolate describes neither law).
    Otherwise the verdict is ``cannot tell``. The beta interval is the bootstrap percentile
    interval of the refitted beta.
    """
    n = np.asarray(ns, dtype=np.float64)
    if len(n) < 3:
        raise LowrankError("a verdict needs at least three lengths n")
    values = np.asarray(values, dtype=np.float64)
    mean = _means(values)
    log, power = fit("log", n, mean), fit("power", n, mean)
    delta = power.aic - log.aic
    small_log, small_power = fit("log", n[:-1], mean[:-1]), fit("power", n[:-1], mean[:-1])
    held_log = abs(float(small_log.predict(n[-1])) - mean[-1])
    held_power = abs(float(small_power.predict(n[-1])) - mean[-1])
    prefers_log = delta > 0
    boot_means = np.empty((len(resamples), len(n)))
    betas = np.empty(len(resamples))
    aic_agree = held_agree = 0
    for b, index in enumerate(resamples):
        m = _means(values, index)
        boot_means[b] = m
        bl, bp = fit("log", n, m), fit("power", n, m)
        betas[b] = bp.params[1]
        aic_agree += (bp.aic - bl.aic > 0) == prefers_log
        sl, sp = fit("log", n[:-1], m[:-1]), fit("power", n[:-1], m[:-1])
        err_log = abs(float(sl.predict(n[-1])) - m[-1])
        err_power = abs(float(sp.predict(n[-1])) - m[-1])
        held_agree += (err_log < err_power) == prefers_log
    draws = max(len(resamples), 1)
    aic_support, held_support = aic_agree / draws, held_agree / draws
    q = (100 * (1 - level) / 2, 100 * (1 + level) / 2)
    interval = (
        np.percentile(boot_means, q, axis=0).T if len(resamples) else np.full((len(n), 2), np.nan)
    )
    finite = betas[np.isfinite(betas)]
    beta_interval = (
        (float(np.percentile(finite, q[0])), float(np.percentile(finite, q[1])))
        if finite.size
        else (math.nan, math.nan)
    )
    held_better = held_log < held_power if prefers_log else held_power < held_log
    held_winner = held_log if prefers_log else held_power
    separated = (
        abs(delta) >= AIC_MARGIN
        and aic_support >= SUPPORT
        and held_better
        and held_support >= SUPPORT
        and held_winner <= HELDOUT_TOLERANCE * abs(mean[-1])
        and math.isfinite(delta)
    )
    label: VerdictLabel = "cannot tell"
    if separated:
        label = "logarithmic" if prefers_log else "power law"
    return Verdict(
        measure,
        group,
        n,
        mean,
        interval,
        log,
        power,
        float(delta),
        aic_support,
        int(n[-1]),
        held_log,
        held_power,
        held_support,
        beta_interval,
        label,
        values.shape[1],
        len(resamples),
    )


def group_values(per_doc: np.ndarray, layer: int | None) -> np.ndarray:
    """(S, D) a measure averaged over the heads of one layer (0-based), or over every layer
    and head (``None``: the whole model).

    Args:
        per_doc: (S, D, L, H) one measure per n, document, layer and head.
    """
    if layer is None:
        return per_doc.mean(axis=(2, 3))
    return per_doc[:, :, layer].mean(axis=-1)


def verdicts(
    per_doc: dict[str, np.ndarray], ns: Sequence[int], draws: int, seed: int
) -> dict[str, list[Verdict]]:
    """Per measure, one :class:`Verdict` per layer and a last one for the whole model.

    Args:
        per_doc: measure -> (S, D, L, H), the same D documents at every n.
    """
    any_values = next(iter(per_doc.values()))
    _, docs, layers, _ = any_values.shape
    resamples = bootstrap_indices(docs, draws, seed)
    out: dict[str, list[Verdict]] = {}
    for measure, values in per_doc.items():
        groups: list[tuple[str, int | None]] = [(f"layer {i + 1}", i) for i in range(layers)]
        groups.append(("model", None))
        out[measure] = [
            verdict(measure, name, ns, group_values(values, layer), resamples)
            for name, layer in groups
        ]
    return out
