"""Curves of a rank measure against n: the logarithmic, power-law and saturating models of
:mod:`lowrank.maths.growth`, fitted by least squares on y itself (comparable residuals), with
AIC(c) and the curvature test of each model's linearising scale.

* ``log``: ``y = a + b ln n``;
* ``power``: ``y = a n^beta``;
* ``saturating``: ``y = C - c n^(-gamma)`` (c, gamma >= 0), levelling off at C, given or
  fitted between max y and a bound.

``power`` and ``saturating`` are linear once their exponent is fixed, so the exponent is
profiled on a grid refined by Brent's method and the rest solved exactly: no starting values,
no local optimiser to fail on a resample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

ModelName = Literal["log", "power", "saturating"]
MODELS: tuple[str, ...] = get_args(ModelName)


@dataclass(frozen=True)
class ModelFit:
    """A least-squares fit of one model to (n, y), on y itself (comparable residuals).

    Attributes:
        model: ``log``, ``power`` or ``saturating``.
        params: (a, b), (a, beta) or (C, c, gamma); NaN when the fit failed.
        rss: residual sum of squares (inf when the fit failed).
        points: points fitted; free: free parameters (the cap counts when fitted).
    """

    model: str  # a ModelName
    params: tuple[float, ...]
    rss: float
    points: int
    free: int

    def predict(self, n: Any) -> np.ndarray:
        x = np.log(np.asarray(n, dtype=np.float64))
        p = self.params
        if self.model == "log":
            return p[0] + p[1] * x
        if self.model == "power":
            return p[0] * np.exp(p[1] * x)
        return p[0] - p[1] * np.exp(-p[2] * x)

    def formula(self) -> str:
        if self.model == "log":
            return "a + b ln n"
        if self.model == "power":
            return "a n^beta"
        return f"C - c n^-gamma (C = {self.params[0]:.4g})"


def information(rss: float, points: int, free: int) -> tuple[float, float]:
    """(AIC, AICc) of a least-squares fit with Gaussian errors of unknown variance:
    ``m ln(RSS / m) + 2k`` with k = free + 1 (the variance), and AICc = AIC +
    ``2k(k + 1) / (m - k - 1)`` (Hurvich & Tsai 1989; inf when m <= k + 1)."""
    k = free + 1
    base = points * math.log(rss / points) + 2 * k
    room = points - k - 1
    return base, base + 2 * k * (k + 1) / room if room > 0 else math.inf


def _floor(y: np.ndarray) -> float:
    # residuals below 1e-9 of the data's scale are rounding: an exact fit must not give -inf
    return len(y) * (1e-9 * max(float(np.abs(y).mean()), 1e-300)) ** 2


def _profile(rss_at: Any, lo: float, hi: float) -> float:
    """The t in [lo, hi] minimising ``rss_at(t)``: a grid of 25, then Brent's method between
    the best grid point's neighbours (the models are linear given their exponent)."""
    from scipy.optimize import minimize_scalar

    grid = np.linspace(lo, hi, 25)
    i = int(np.argmin([rss_at(t) for t in grid]))
    left, right = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    found = minimize_scalar(
        rss_at, bounds=(left, right), method="bounded", options={"xatol": 1e-10}
    )
    return float(found.x) if found.fun <= rss_at(grid[i]) else float(grid[i])


def _power_at(beta: float, x: np.ndarray, y: np.ndarray) -> tuple[float, tuple[float, ...]]:
    """RSS and (a, beta) of the best ``a e^(beta x)`` for a given beta (a by least squares)."""
    e = np.exp(beta * (x - x[0]))  # centred on the first x for conditioning
    a = float(y @ e) / float(e @ e)
    return float(((a * e - y) ** 2).sum()), (a * math.exp(-beta * x[0]), beta)


def _saturating_at(
    gamma: float, x: np.ndarray, y: np.ndarray, cap: float | None, upper: float
) -> tuple[float, tuple[float, ...]]:
    """RSS and (C, c, gamma) of the best ``C - c e^(-gamma x)`` for a given gamma, with c >= 0
    and C fixed to ``cap`` or in [max y, upper]: a convex problem in (C, c), solved exactly
    by comparing its interior optimum with the optimum on each face of the constraints."""
    e = np.exp(-gamma * (x - x[0]))
    ee = float(e @ e)

    def c_for(level: float) -> float:
        return max(0.0, float((level - y) @ e) / ee)

    if cap is not None:
        options = [(cap, c_for(cap))]
    else:
        lower = float(y.max())
        options = [(lower, c_for(lower)), (float(np.clip(y.mean(), lower, upper)), 0.0)]
        if math.isfinite(upper):
            options.append((upper, c_for(upper)))
        level, c = np.linalg.lstsq(np.stack([np.ones_like(e), -e], 1), y, rcond=None)[0]
        if lower <= level <= upper and c >= 0:
            options.append((float(level), float(c)))
    rss = [float(((level - c * e - y) ** 2).sum()) for level, c in options]
    level, c = options[int(np.argmin(rss))]
    return min(rss), (level, c * math.exp(gamma * x[0]), gamma)


def fit_model(
    model: str,
    n: np.ndarray,
    y: np.ndarray,
    cap: float | None = None,
    bound: float | None = None,
) -> ModelFit:
    """Least-squares fit of one model to the points (n, y), on y itself.

    ``log`` is linear; ``power`` and ``saturating`` are linear once their exponent is fixed,
    so the exponent is profiled (:func:`_profile`: beta in [-3, 3], gamma in [1e-3, 5] on a
    log scale) and the rest solved exactly for each (c >= 0; a fitted C in [max y, bound]).

    Args:
        n, y: (m,) lengths and the measure's mean at each.
        cap: the saturating model's level C, fixed; None fits C (a third parameter).
        bound: the largest C a fit may take (d for the output rank: rank(PV) <= d).

    Returns:
        the fit; rss inf (and NaN parameters) where the model cannot apply, e.g. a
        saturating model whose data reach its bound.
    """
    x, y = np.log(np.asarray(n, dtype=np.float64)), np.asarray(y, dtype=np.float64)
    m = len(y)
    free = 2 if model != "saturating" or cap is not None else 3
    failed = ModelFit(model, (math.nan,) * (2 if model != "saturating" else 3), math.inf, m, free)
    if not np.isfinite(y).all():
        return failed
    if model == "log":
        params: tuple[float, ...] = tuple(float(p) for p in np.polyfit(x, y, 1)[::-1])
    elif model == "power":
        beta = _profile(lambda t: _power_at(t, x, y)[0], -3.0, 3.0)
        params = _power_at(beta, x, y)[1]
    else:
        upper = math.inf if bound is None else float(bound)
        if float(y.max()) >= (upper if cap is None else cap):
            return failed  # the data reach the level: no curve levels off below it

        def rss_at(u: float) -> float:
            return _saturating_at(math.exp(u), x, y, cap, upper)[0]

        gamma = math.exp(_profile(rss_at, math.log(1e-3), math.log(5.0)))
        params = _saturating_at(gamma, x, y, cap, upper)[1]
    fitted = ModelFit(model, params, 0.0, m, free)
    rss = float(((fitted.predict(np.exp(x)) - y) ** 2).sum())
    return ModelFit(model, params, max(rss, _floor(y)), m, free) if math.isfinite(rss) else failed


def curvature(model: str, n: np.ndarray, y: np.ndarray, cap: float | None) -> float:
    """Quadratic coefficient q of g(y) regressed on (x, x^2), x = ln n centred: 0 when the
    model's scale is linear in ln n. NaN where g is undefined (y <= 0 for ``power``, y >= C
    for ``saturating``)."""
    x = np.log(np.asarray(n, dtype=np.float64))
    x = x - x.mean()
    y = np.asarray(y, dtype=np.float64)
    if model == "power":
        if (y <= 0).any():
            return math.nan
        y = np.log(y)
    elif model == "saturating":
        if cap is None or (y >= cap).any():
            return math.nan
        y = np.log(cap - y)
    return float(np.polyfit(x, y, 2)[0])
