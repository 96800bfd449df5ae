"""How the rank of attention grows with n: nested windows, rank measures, fits, verdicts.

Pure functions on arrays. The question (Linformer, Wang et al. 2020, Sec. 3 and Theorem 2:
a projected length k = O(d log d / eps^2) suffices, independent of n) is whether the rank
that real attention needs grows like ``a + b ln n`` or like a power ``a n^beta``. Every n
sees the same text: each qualifying document is cut to its first n tokens for every n
(:func:`nested_windows`), so the documents are clusters shared by all n, and every interval
here is a bootstrap over documents (:func:`bootstrap_indices`): resample documents, recompute
the means at every n, refit.

Rank measures per (document, layer, head), in :data:`MEASURES` order: the ranks for 90% and
99% of the normalised cumulative sum of singular values, the effective and stable ranks of P,
and the rank that the head output needs, the smallest k with
``||PV - (PV)_k||_F / ||PV||_F <= tau`` (Eckart-Young on PV, from its float64 singular
values; at most d, the head dimension). :data:`C_MEASURES` are read off the same curve but
not fitted: c at n/4 and c at a fixed index.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from lowrank.errors import LowrankError
from lowrank.spectra.maths import cumulative, effective_rank, rank_for, stable_rank

MEASURES = ("rank90", "rank99", "effective_rank", "stable_rank", "output_rank")
C_MEASURES = ("c_at_quarter", "c_at_fixed")
ALL_MEASURES = MEASURES + C_MEASURES
MEASURE_LABELS = {
    "rank90": "rank for 90% of sum s",
    "rank99": "rank for 99% of sum s",
    "effective_rank": "effective rank exp H(s / sum s)",
    "stable_rank": "stable rank sum s^2 / s_1^2",
    "output_rank": "rank k for ||PV - (PV)_k|| / ||PV|| <= tau",
    "c_at_quarter": "c at index n/4",
    "c_at_fixed": "c at a fixed index",
}
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
# nested windows


@dataclass(frozen=True)
class NestedWindows:
    """The same documents cut to every n.

    Attributes:
        ns: the lengths, ascending.
        documents: (D,) indices (into the tokenised corpus) of the documents analysed.
        windows: per n, (D, n) int64 token ids: the model's start tokens, the document's
            first ``n - specials`` tokens, its end tokens. Row i of every n holds a prefix of
            the same document.
        qualified: how many documents have enough tokens for the largest n.
        longest: tokens of the longest document (without special tokens).
    """

    ns: tuple[int, ...]
    documents: np.ndarray
    windows: dict[int, np.ndarray]
    qualified: int
    longest: int


def nested_windows(
    token_docs: Sequence[Sequence[int]],
    ns: Sequence[int],
    prefix: Sequence[int],
    suffix: Sequence[int],
    wanted: int,
    seed: int | None = None,
) -> NestedWindows:
    """Cut every document long enough for the largest n to its first n tokens, for each n.

    Args:
        token_docs: documents as token ids, without special tokens.
        ns: sequence lengths, special tokens included.
        prefix, suffix: the model's start and end tokens, wrapped around every window.
        wanted: documents to keep (the first ones, or a seeded sample without replacement).

    Raises:
        LowrankError: when no document has enough tokens for the largest n (naming the
            longest one found), or an n leaves no room for text.
    """
    ns = tuple(sorted(set(int(n) for n in ns)))
    specials = len(prefix) + len(suffix)
    if ns[0] - specials < 1:
        raise LowrankError(f"--seq-len {ns[0]} leaves no room for text after special tokens")
    body = ns[-1] - specials
    longest = max((len(d) for d in token_docs), default=0)
    qualified = [i for i, d in enumerate(token_docs) if len(d) >= body]
    if not qualified:
        raise LowrankError(
            f"no document has the {body} tokens (+{specials} special) that n = {ns[-1]} needs: "
            f"the longest has {longest}; use a smaller largest --seq-len or a corpus of longer "
            "documents"
        )
    if seed is None or wanted >= len(qualified):
        chosen = np.array(qualified[:wanted], dtype=np.int64)
    else:
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(len(qualified), size=wanted, replace=False))
        chosen = np.array(qualified, dtype=np.int64)[pick]
    windows = {}
    for n in ns:
        rows = [[*prefix, *token_docs[i][: n - specials], *suffix] for i in chosen]
        windows[n] = np.array(rows, dtype=np.int64).reshape(len(chosen), n)
    return NestedWindows(ns, chosen, windows, len(qualified), longest)


# ---------------------------------------------------------------------------------------------
# rank measures


def output_rank(s: torch.Tensor, tau: float) -> torch.Tensor:
    """Smallest k with ``||X - X_k||_F / ||X||_F <= tau`` from the singular values of X.

    By Eckart-Young ``||X - X_k||_F^2 = sum_{i>k} s_i^2``, so k needs only s. Applied to
    X = PV (n x d) it is the rank that any approximation of the head output needs.

    Args:
        s: (..., r) singular values, descending (computed in float64).
        tau: relative error in [0, 1).

    Returns:
        (...,) float64 in [0, r]; 0 for an all-zero X.
    """
    s = s.to(torch.float64)
    sq = s**2
    tail = sq.flip(-1).cumsum(-1).flip(-1)  # tail[..., k] = sum_{i>=k} s_i^2 (0-based)
    total = tail[..., :1]
    # relative error after keeping k values, k = 0..r (k = r leaves no tail)
    zero = torch.zeros_like(total)
    rel = torch.sqrt(torch.cat([tail, zero], dim=-1) / torch.where(total > 0, total, 1.0))
    hit = rel <= tau + 1e-12  # slack against rounding in the sums
    k = hit.to(torch.int64).argmax(dim=-1).to(torch.float64)
    return torch.where(total[..., 0] > 0, k, torch.zeros_like(k))


def rank_measures(
    s_p: torch.Tensor, s_pv: torch.Tensor, n: int, fixed_index: int, tau: float
) -> torch.Tensor:
    """Every measure of :data:`ALL_MEASURES` for a batch of attention matrices.

    Args:
        s_p: (..., n) singular values of P, descending.
        s_pv: (..., r) float64 singular values of PV, descending.
        n: the sequence length (c at n/4 reads index ``max(1, n // 4)``).
        fixed_index: 1-based index read by ``c_at_fixed`` (at most n).

    Returns:
        (..., 7) float64 in :data:`ALL_MEASURES` order.
    """
    if not 1 <= fixed_index <= n:
        raise LowrankError(f"fixed index {fixed_index} is outside 1..{n}")
    c = cumulative(s_p)
    return torch.stack(
        [
            rank_for(c, 0.90),
            rank_for(c, 0.99),
            effective_rank(s_p),
            stable_rank(s_p),
            output_rank(s_pv, tau),
            c[..., max(1, n // 4) - 1],
            c[..., fixed_index - 1],
        ],
        dim=-1,
    )


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
