"""How a rank grows with n: logarithmic, power-law and saturating models, and a verdict that
can answer "none fits".

The question (Linformer, Wang et al. 2020, Sec. 3, Theorem 2: k = O(d log d / eps^2) suffices,
whatever n) is how a rank measure y grows with the sequence length n. Three models:

* ``log``: ``y = a + b ln n``;
* ``power``: ``y = a n^beta``;
* ``saturating``: ``y = C - c n^(-gamma)`` (c, gamma > 0), levelling off at C: C given, or
  fitted (a third parameter) between max y and a known bound (the head dimension d for the
  output rank, since rank(PV) <= d). Why this form: as gamma -> 0 it tends to
  ``(C - c) + c gamma ln n``, so the logarithm is its limit and the comparison asks only
  whether the curve bends toward a level. (A logistic in ln n is a power law at small n and
  does not contain the logarithm; with C = d it bends too late for lowrank's output ranks.)

Each model is linear in x = ln n on its own scale g(y): y, ln y, ln(C - y). A model *fits*
when (1) fitted to all but the largest n it predicts the largest within
:data:`HELDOUT_TOLERANCE` (relative), and (2) its residuals show no pattern: the quadratic
coefficient of g(mean y) on (x, x^2) has a bootstrap interval (documents resampled) that
contains 0. (A runs test on five residuals cannot reject at 5%, so curvature is the test.)
The verdict (:func:`growth_verdict`): "none fits" when no model fits; the fitting model when
one fits; the one AIC(c) prefers by :data:`AIC_MARGIN` in :data:`SUPPORT` of the resamples
when several fit; else "cannot tell". Fewer than :data:`MIN_LENGTHS` lengths: refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from lowrank.errors import LowrankError
from lowrank.maths.curves import MODELS, ModelFit, curvature, fit_model, information

Label = Literal["logarithmic", "power law", "saturating", "none fits", "cannot tell"]
LABELS: dict[str, Label] = {"log": "logarithmic", "power": "power law", "saturating": "saturating"}
MIN_LENGTHS = 5  # two free parameters, a held-out n and a curvature: 5 lengths at least
AIC_MARGIN = 2.0  # Burnham & Anderson (2002, Sec. 2.6): below 2 both models keep support
SUPPORT = 0.95  # share of document resamples that must agree with the full data
HELDOUT_TOLERANCE = 0.10  # relative error at the largest n of a model fitted to the others
LEVEL = 0.95


# --- the verdict -------------------------------------------------------------------------------


def margin_text(value: float, cut: float) -> str:
    """``9.96% vs the 10% cut (0.04 points inside)``: a relative error against its cut."""
    side = "inside" if value <= cut else "outside"
    return (
        f"{100 * value:.2f}% vs the {100 * cut:g}% cut ({100 * abs(cut - value):.2f} points {side})"
    )


@dataclass(frozen=True)
class Assessment:
    """One model judged on one measure.

    Attributes:
        fit: the fit to every mean.
        heldout: |prediction - mean| / |mean| at the largest n, fitted to the others.
        heldout_support: share of resamples with ``heldout`` within the tolerance.
        curvature, curvature_interval: q of :func:`curvature` and its bootstrap percentile
            interval (the saturating model's cap held at the full data's).
        criterion, delta: AIC(c) and its excess over the best model's.
        best_support: share of resamples in which this model has the least criterion among
            the models that fit (0 for a model that does not fit).
        tolerance: the held-out cut.
    """

    fit: ModelFit
    heldout: float
    heldout_support: float
    curvature: float
    curvature_interval: tuple[float, float]
    criterion: float
    delta: float
    best_support: float = 0.0
    tolerance: float = HELDOUT_TOLERANCE
    param_intervals: tuple[tuple[float, float], ...] = ()

    def param_text(self, i: int, digits: int = 3) -> str:
        """``1.029 [1.021, 1.037]``: parameter i with its bootstrap percentile interval."""
        value = self.fit.params[i]
        if i >= len(self.param_intervals):
            return f"{value:.{digits}g}"
        lo, hi = self.param_intervals[i]
        return f"{value:.{digits}g} [{lo:.{digits}g}, {hi:.{digits}g}]"

    @property
    def patterned(self) -> bool:
        """The curvature interval excludes 0 (beyond rounding), or g is undefined."""
        lo, hi = self.curvature_interval
        tiny = 1e-9 * (1 + abs(self.curvature)) if math.isfinite(self.curvature) else 0
        return not (math.isfinite(lo) and math.isfinite(hi) and lo <= tiny and hi >= -tiny)

    @property
    def adequate(self) -> bool:
        """Fitted, predicts the held-out n within the tolerance, residuals unpatterned."""
        return bool(
            math.isfinite(self.fit.rss) and self.heldout <= self.tolerance and not self.patterned
        )

    def line(self, criterion: str) -> str:
        """What the model rests on, with every margin to its cut."""
        lo, hi = self.curvature_interval
        shape = "excludes 0: residuals patterned" if self.patterned else "contains 0"
        return (
            f"{self.fit.formula()}: held-out error {margin_text(self.heldout, self.tolerance)}, "
            f"within it in {self.heldout_support:.0%} of resamples; curvature q = "
            f"{self.curvature:.3g} [{lo:.3g}, {hi:.3g}] {shape}; {criterion} +{self.delta:.1f} "
            f"over the best -> {'fits' if self.adequate else 'does not fit'}"
        )


@dataclass(frozen=True)
class GrowthVerdict:
    """Which model a measure follows (documents resampled for every interval and support).

    Attributes:
        label: ``logarithmic``, ``power law``, ``saturating``, ``none fits``, ``cannot tell``.
        ns: (S,) lengths; mean: (S,) means over documents; interval: (S, 2) their percentile
            intervals; models: name -> :class:`Assessment`; criterion: ``AICc`` (``AIC`` where
            a free cap leaves AICc undefined); named: the model named, if any.
        documents, draws, cap: documents per mean, resamples, the saturating model's cap.
    """

    label: Label
    ns: np.ndarray
    mean: np.ndarray
    interval: np.ndarray
    models: dict[str, Assessment]
    criterion: str
    named: str | None
    documents: int
    draws: int
    cap: float | None
    rule: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        """The printed verdict: ``saturating toward C = 32``, ``power law, beta = 1.03``,
        ``none fits (...)`` or ``cannot tell (log, saturating fit)``."""
        fits = [name for name, a in self.models.items() if a.adequate]
        if self.label == "none fits":
            return "none fits: no model predicts the largest n within the cut without a pattern"
        if self.label == "cannot tell":
            return f"cannot tell: {' and '.join(fits)} fit and the data do not separate them"
        a = self.models[str(self.named)]
        if self.label == "power law":
            return f"power law, beta = {a.param_text(1)}"
        if self.label == "saturating":
            return f"saturating toward C = {a.param_text(0)}"
        return f"logarithmic, b = {a.param_text(1)} per unit of ln n"

    def evidence(self) -> list[str]:
        """One line per model with its margins, then what the verdict rests on."""
        lines = [f"{name}: {a.line(self.criterion)}" for name, a in self.models.items()]
        lines.append(
            f"rests on: means over {self.documents} documents at n = "
            f"{', '.join(str(int(n)) for n in self.ns)}; {self.draws} resamples of documents"
        )
        return lines

    def record(self) -> dict[str, Any]:
        """The run.json entry: label, text, per-model numbers and the rule."""
        return {
            "verdict": self.label,
            "text": self.text(),
            "criterion": self.criterion,
            "cap": self.cap,
            "models": {
                name: {
                    "formula": a.fit.formula(),
                    "params": list(a.fit.params),
                    "rss": a.fit.rss,
                    "criterion": a.criterion,
                    "delta": a.delta,
                    "heldout_relative": a.heldout,
                    "heldout_support": a.heldout_support,
                    "curvature": a.curvature,
                    "curvature_interval": list(a.curvature_interval),
                    "patterned": a.patterned,
                    "fits": a.adequate,
                    "best_support": a.best_support,
                    "param_intervals": [list(iv) for iv in a.param_intervals],
                }
                for name, a in self.models.items()
            },
            "rule": self.rule,
            "documents": self.documents,
            "draws": self.draws,
        }


def _heldout(
    model: str, n: np.ndarray, y: np.ndarray, cap: float | None, bound: float | None
) -> float:
    small = fit_model(model, n[:-1], y[:-1], cap, bound)
    if not math.isfinite(small.rss) or y[-1] == 0:
        return math.inf
    return abs(float(small.predict(n[-1])) - y[-1]) / abs(y[-1])


def growth_verdict(
    ns: Sequence[int] | np.ndarray,
    values: np.ndarray,
    resamples: np.ndarray,
    cap: float | None = None,
    bound: float | None = None,
    tolerance: float = HELDOUT_TOLERANCE,
    level: float = LEVEL,
) -> GrowthVerdict:
    """Fit the log, power and saturating models to a measure's means and decide.

    Args:
        ns: (S,) lengths, ascending, S >= :data:`MIN_LENGTHS`.
        values: (S, D) the measure per n and document (averaged over a group's heads), the
            same D documents at every n.
        resamples: (B, D) document indices drawn with replacement (documents are the clusters:
            every n and head of a document share its text).
        cap: the saturating model's level C if known; None fits C (a third parameter).
        bound: the largest fitted C allowed (d for the output rank, rank(PV) <= d).

    Raises:
        LowrankError: fewer than :data:`MIN_LENGTHS` lengths, lengths not ascending, or
            values that do not match them.
    """
    n = np.asarray(ns, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    if len(n) < MIN_LENGTHS:
        raise LowrankError(
            f"a growth verdict needs at least {MIN_LENGTHS} lengths n, got {len(n)}: two "
            "parameters, a held-out n and a curvature test leave no room with fewer"
        )
    if (np.diff(n) <= 0).any() or values.ndim != 2 or values.shape[0] != len(n):
        raise LowrankError(f"values {values.shape} do not match {len(n)} ascending lengths")
    mean = values.mean(axis=1)
    fits: dict[str, ModelFit] = {m: fit_model(m, n, mean, cap, bound) for m in MODELS}
    sat = fits["saturating"]
    caps = {m: None for m in MODELS} | {"saturating": sat.params[0] if sat.rss < math.inf else cap}
    info = {m: information(f.rss, f.points, f.free) for m, f in fits.items()}
    use_c = all(math.isfinite(v[1]) for v in info.values())  # else AIC for all
    crit = {m: v[1] if use_c else v[0] for m, v in info.items()}
    boot, params, means = _bootstrap(n, values, resamples, cap, bound, caps, use_c)
    q = (100 * (1 - level) / 2, 100 * (1 + level) / 2)
    assessed = {
        m: Assessment(
            f,
            _heldout(m, n, mean, cap, bound),
            float(np.mean(boot[m][:, 1] <= tolerance)) if len(resamples) else math.nan,
            curvature(m, n, mean, caps[m]),
            _intervals(boot[m][:, 2:], q)[0],
            crit[m],
            crit[m] - min(crit.values()),
            tolerance=tolerance,
            param_intervals=_intervals(params[m][:, : len(f.params)], q),
        )
        for m, f in fits.items()
    }
    good = [m for m, a in assessed.items() if a.adequate]
    if good:  # how often each model that fits has the least criterion among them
        table = np.stack([boot[m][:, 0] for m in good], axis=1)
        winners = np.argmin(np.where(np.isfinite(table), table, np.inf), axis=1)
        for i, m in enumerate(good):
            assessed[m] = replace(assessed[m], best_support=float(np.mean(winners == i)))
    label, named = _decide(assessed, good)
    rule = {
        "models": {m: assessed[m].fit.formula() for m in MODELS},
        "fits_when": f"held-out relative error at the largest n <= {tolerance} and the "
        f"{100 * level:g}% bootstrap interval of the curvature q contains 0",
        "named_when": f"the only model that fits, or {'AICc' if use_c else 'AIC'} lower by >= "
        f"{AIC_MARGIN} than every other model that fits, in >= {SUPPORT:.0%} of resamples",
        "resampled": "documents, with replacement (the same documents at every n)",
        "min_lengths": MIN_LENGTHS,
    }
    interval = np.array(_intervals(means, q)) if len(resamples) else np.full((len(n), 2), np.nan)
    criterion = "AICc" if use_c else "AIC"
    documents, draws = values.shape[1], len(resamples)
    return GrowthVerdict(
        label, n, mean, interval, assessed, criterion, named, documents, draws, cap, rule
    )


def _bootstrap(
    n: np.ndarray,
    values: np.ndarray,
    resamples: np.ndarray,
    cap: float | None,
    bound: float | None,
    caps: dict[str, float | None],
    use_c: bool,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """Every model refitted on the means of each resample of documents.

    Returns:
        per model (B, 3) criterion, held-out error and curvature; per model (B, 3) the
        parameters (NaN-padded); (B, S) the resampled means.
    """
    draws = len(resamples)
    boot = {m: np.full((draws, 3), np.nan) for m in MODELS}
    params = {m: np.full((draws, 3), np.nan) for m in MODELS}
    means = np.empty((draws, len(n)))
    for b, index in enumerate(resamples):
        means[b] = mb = values[:, index].mean(axis=1)
        for m in MODELS:
            fb = fit_model(m, n, mb, cap, bound)
            params[m][b, : len(fb.params)] = fb.params
            ib = information(fb.rss, fb.points, fb.free)
            crit = ib[1] if use_c else ib[0]
            boot[m][b] = (crit, _heldout(m, n, mb, cap, bound), curvature(m, n, mb, caps[m]))
    return boot, params, means


def _intervals(draws: np.ndarray, q: tuple[float, float]) -> tuple[tuple[float, float], ...]:
    """Percentile interval of each column over its finite draws (NaN where none)."""
    out = []
    for col in draws.T:
        ok = col[np.isfinite(col)]
        lo, hi = np.percentile(ok, q) if ok.size else (math.nan, math.nan)
        out.append((float(lo), float(hi)))
    return tuple(out)


def _decide(assessed: dict[str, Assessment], good: list[str]) -> tuple[Label, str | None]:
    """The label from the models that fit (see the module docstring)."""
    if not good:
        return "none fits", None
    top = min(good, key=lambda m: assessed[m].criterion)
    others = [assessed[m].criterion - assessed[top].criterion for m in good if m != top]
    if len(good) == 1 or (min(others) >= AIC_MARGIN and assessed[top].best_support >= SUPPORT):
        return LABELS[top], top
    return "cannot tell", None
